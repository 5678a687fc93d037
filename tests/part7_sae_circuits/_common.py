"""What both Jacobian checks share: the sizes, the random cases, copies of them, and calling learner code.

Every size differs from every other (d_model 6, d_mlp 11, 13 input and 17 output latents,
k_in 3 and k_out 4), so a transposed weight, a gather along the wrong axis or a transposed
result fails instead of passing by accident. Further cases have k_in = k_out, as in
practice, where a transposed result keeps its shape and has to be caught by its values; a
single token with one latent on each side (where a `.squeeze()` loses axes); and float64.
Some pre-activations are exactly 0, where the ReLU derivative is 0 (as autograd has it).
"""

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from part_utils.reference import part7_sae_circuits as reference
from tests.checking import CheckFailure, NotImplementedYet, call_learner, globals_hint, learner_line

D_MODEL, D_MLP, D_SAE_IN, D_SAE_OUT = 6, 11, 13, 17
SHAPES = "W_dec_in [d_sae_in, d_model], W_in [d_model, d_mlp], W_out [d_mlp, d_model], W_enc_out [d_model, d_sae_out]"
Case = tuple[reference.CircuitWeights, Tensor, Tensor, Tensor]


def random_case(n_tokens: int, k_in: int, k_out: int, dtype: torch.dtype = torch.float32) -> Case:
    """Random weights, pre-activations of both signs (a few exactly 0), and distinct active latents per token."""
    weights = reference.CircuitWeights(
        W_dec_in=F.normalize(torch.randn(D_SAE_IN, D_MODEL, dtype=dtype), dim=-1),
        W_in=torch.randn(D_MODEL, D_MLP, dtype=dtype),
        W_out=torch.randn(D_MLP, D_MODEL, dtype=dtype),
        W_enc_out=torch.randn(D_MODEL, D_SAE_OUT, dtype=dtype),
    )
    mlp_pre = torch.randn(n_tokens, D_MLP, dtype=dtype)
    mlp_pre[torch.rand(n_tokens, D_MLP) < 0.2] = 0.0  # a neuron exactly at the kink
    active_in = torch.rand(n_tokens, D_SAE_IN).topk(k_in, dim=-1).indices
    active_out = torch.rand(n_tokens, D_SAE_OUT).topk(k_out, dim=-1).indices
    return weights, mlp_pre, active_in, active_out


def check_cases() -> list[Case]:
    return [
        random_case(n_tokens=5, k_in=3, k_out=4),
        random_case(n_tokens=7, k_in=4, k_out=4),  # k_in = k_out: a transposed result keeps its shape
        random_case(n_tokens=1, k_in=1, k_out=1),  # every axis of length 1
        random_case(n_tokens=3, k_in=2, k_out=1, dtype=torch.float64),
    ]


def copy_weights(weights: reference.CircuitWeights) -> reference.CircuitWeights:
    return reference.CircuitWeights(
        *(tensor.clone() for tensor in (weights.W_dec_in, weights.W_in, weights.W_out, weights.W_enc_out))
    )


def copy_case(case: Case) -> Case:
    weights, *tensors = case
    return copy_weights(weights), *(tensor.clone() for tensor in tensors)


def _call(function: Callable[..., Any], arguments: tuple[Any, ...], what: str) -> Any:
    """Call the learner's function, naming the likely mistake behind an indexing or shape error."""
    try:
        return call_learner(function, *arguments, what=what)
    except NotImplementedYet:
        raise
    except CheckFailure as failure:
        cause = failure.__cause__
        where = learner_line(cause, function) if cause is not None else "your code"
        hint = globals_hint(function, what)
        if isinstance(cause, IndexError):
            raise CheckFailure(
                f"`{what}` indexed past the end of an axis ({cause}, at {where}): the active indices are latent "
                "numbers, so they select rows of W_dec_in and columns of W_enc_out (rows of both LatentProducts): "
                "check which axis you gather along, and that input latents come from active_in, output latents "
                "from active_out; J itself is [tokens, k_out, k_in], filled as J[t, o, i] with o < k_out and "
                f"i < k_in.{hint}"
            ) from cause
        if isinstance(cause, RuntimeError) and any(word in str(cause) for word in ("shape", "size", "dimension")):
            raise CheckFailure(
                f"`{what}` combined tensors whose shapes do not fit ({cause}, at {where}): check for a transposed "
                f"weight (here {SHAPES}) or a row of mlp_pre [tokens, d_mlp] taken along the wrong axis.{hint}"
            ) from cause
        raise


def _function(thing: object, name: str) -> Callable[..., Any]:
    if not callable(thing) or isinstance(thing, type):
        raise CheckFailure(f"Pass your `{name}` function itself, e.g. `test_{name}({name})`.")
    return thing
