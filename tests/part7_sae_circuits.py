"""Checks for Part 7 (SAE circuits). Call them from the notebook, e.g. `test_jacobian_loop(jacobian_loop)`.

Every size differs from every other (d_model 6, d_mlp 11, 13 input and 17 output latents,
k_in 3 and k_out 4), so a transposed weight, a gather along the wrong axis or a transposed
result fails instead of passing by accident. A second case has k_in = k_out, as in practice,
where a transposed result keeps its shape and has to be caught by its values.

The checks run on the CPU: an index past the end of an axis raises a clear IndexError there,
where on CUDA it would be an asynchronous device assertion that poisons the session.
"""

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.functional import jacobian as autograd_jacobian

from part_utils.reference import part7_sae_circuits as reference
from tests.checking import (
    CheckFailure,
    NotImplementedYet,
    _learner_location,
    call_learner,
    check,
    close,
    diagnose,
    expect_tensor,
)

D_MODEL, D_MLP, D_SAE_IN, D_SAE_OUT = 6, 11, 13, 17
SHAPES = "W_dec_in [d_sae_in, d_model], W_in [d_model, d_mlp], W_out [d_mlp, d_model], W_enc_out [d_model, d_sae_out]"
Case = tuple[reference.CircuitWeights, Tensor, Tensor, Tensor]


def random_case(n_tokens: int, k_in: int, k_out: int) -> Case:
    """Random weights, pre-activations of both signs, and distinct active latents per token."""
    weights = reference.CircuitWeights(
        W_dec_in=F.normalize(torch.randn(D_SAE_IN, D_MODEL), dim=-1),
        W_in=torch.randn(D_MODEL, D_MLP),
        W_out=torch.randn(D_MLP, D_MODEL),
        W_enc_out=torch.randn(D_MODEL, D_SAE_OUT),
    )
    mlp_pre = torch.randn(n_tokens, D_MLP)
    active_in = torch.rand(n_tokens, D_SAE_IN).topk(k_in, dim=-1).indices
    active_out = torch.rand(n_tokens, D_SAE_OUT).topk(k_out, dim=-1).indices
    return weights, mlp_pre, active_in, active_out


def expected_jacobian(case: Case, relu_derivative: Tensor | None = None) -> Tensor:
    """The Jacobian in float64, with the ReLU derivative (or a wrong stand-in for it) given explicitly."""
    weights, mlp_pre, active_in, active_out = case
    derivative = (mlp_pre > 0).double() if relu_derivative is None else relu_derivative.double()
    written = weights.W_dec_in.double() @ weights.W_in.double()  # [d_sae_in, d_mlp]
    read = (weights.W_out.double() @ weights.W_enc_out.double()).T  # [d_sae_out, d_mlp]
    return torch.einsum("tom,tm,tim->toi", read[active_out], derivative, written[active_in])


def _call(function: Callable[..., Any], case: Case, what: str) -> Any:
    """Call the learner's Jacobian, naming the likely mistake behind an indexing or shape error."""
    try:
        return call_learner(function, *case, what=what)
    except NotImplementedYet:
        raise
    except CheckFailure as failure:
        cause = failure.__cause__
        where = _learner_location(cause) if cause is not None else "your code"
        if isinstance(cause, IndexError):
            raise CheckFailure(
                f"`{what}` indexed past the end of an axis ({cause}, at {where}): the active indices are latent numbers, so they "
                "select rows of W_dec_in and columns of W_enc_out (rows of both LatentProducts); check which axis you gather along."
            ) from cause
        if isinstance(cause, RuntimeError) and any(word in str(cause) for word in ("shape", "size", "dimension")):
            raise CheckFailure(
                f"`{what}` combined tensors whose shapes do not fit ({cause}, at {where}): check for a transposed weight; "
                f"here {SHAPES}."
            ) from cause
        raise


def _check_against_reference(function: Callable[..., Any], what: str) -> None:
    distinct = random_case(n_tokens=5, k_in=3, k_out=4)
    result = _call(function, distinct, what)
    if isinstance(result, Tensor) and tuple(result.shape) == (5, 3, 4):
        raise CheckFailure(f"`{what}` returned shape [tokens, k_in, k_out]; the Jacobian is [tokens, k_out, k_in]: one row per output latent.")
    _diagnose(expect_tensor(result, (5, 4, 3), what=what, axes="tokens, k_out, k_in"), distinct, what)

    square = random_case(n_tokens=7, k_in=4, k_out=4)
    result = expect_tensor(_call(function, square, what), (7, 4, 4), what=what, axes="tokens, k_out, k_in")
    _diagnose(result, square, what)


def _diagnose(actual: Tensor, case: Case, what: str) -> None:
    mlp_pre = case[1]
    expected = expected_jacobian(case)
    mistakes = {
        "The ReLU derivative is missing: multiply by 1[pre > 0] at each token, since a neuron that is off passes no change on.": expected_jacobian(
            case, torch.ones_like(mlp_pre)
        ),
        "You multiplied by ReLU(pre); the derivative of ReLU is the step 1[pre > 0].": expected_jacobian(case, F.relu(mlp_pre)),
        "The ReLU derivative is 1 where pre > 0, not where pre < 0.": expected_jacobian(case, (mlp_pre < 0).double()),
        "Every token uses the first token's ReLU derivative; each token needs its own, from its own row of mlp_pre.": expected_jacobian(
            case, (mlp_pre[:1] > 0).expand_as(mlp_pre)
        ),
        "The result is transposed: J[t, o, i] has output latents along axis 1 and input latents along axis 2.": expected.transpose(1, 2),
    }
    diagnose(actual, expected, mistakes, otherwise=f"`{what}` differs from the Jacobian W_dec_in[i] · W_in · diag(1[pre > 0]) · W_out · W_enc_out[:, o]; re-read the formula.")


@check("jacobian_loop")
def test_jacobian_loop(learner: object) -> str:
    function = _function(learner, "jacobian_loop")
    _check_against_reference(function, "jacobian_loop")
    return "random cases with distinct sizes, and with k_in = k_out"


@check("latent_products and jacobian_vectorised")
def test_jacobian_vectorised(products_function: object, vectorised: object, loop: object | None = None) -> str:
    products_function = _function(products_function, "latent_products")
    vectorised = _function(vectorised, "jacobian_vectorised")
    _check_products(products_function)
    # The reference products go in, so that a mistake in jacobian_vectorised is named as such.
    _check_against_reference(lambda weights, *rest: vectorised(reference.latent_products(weights), *rest), "jacobian_vectorised")
    learner = lambda weights, *rest: vectorised(products_function(weights), *rest)
    largest = _autograd_difference(learner, "jacobian_vectorised")
    summary = f"the reference, and autograd through the whole chain to {largest:.0e}"
    if loop is not None:
        loop_function = _function(loop, "jacobian_loop")
        case = random_case(n_tokens=9, k_in=4, k_out=3)
        fast = expect_tensor(_call(learner, case, "jacobian_vectorised"), (9, 3, 4), what="jacobian_vectorised", axes="tokens, k_out, k_in")
        slow = expect_tensor(_call(loop_function, case, "jacobian_loop"), (9, 3, 4), what="jacobian_loop", axes="tokens, k_out, k_in")
        if not close(fast, slow):
            raise CheckFailure(f"jacobian_vectorised and jacobian_loop disagree (largest difference {(fast - slow).abs().max():.2e}); run test_jacobian_loop again.")
        summary = "your loop, " + summary
    return f"agrees with {summary}"


def _check_products(function: Callable[..., Any]) -> None:
    weights = random_case(n_tokens=1, k_in=1, k_out=1)[0]
    products = _call(lambda weights, *_: function(weights), (weights, None, None, None), "latent_products")
    if not (hasattr(products, "written") and hasattr(products, "read")):
        raise CheckFailure(f"`latent_products` should return LatentProducts(written=..., read=...), but returned {type(products).__name__}.")
    expected = reference.latent_products(weights)
    if isinstance(products.read, Tensor) and tuple(products.read.shape) == (D_MLP, D_SAE_OUT):
        raise CheckFailure("`read` is [d_mlp, d_sae_out]; store it transposed, [d_sae_out, d_mlp], one row per output latent, so it is gathered like `written`.")
    written = expect_tensor(products.written, (D_SAE_IN, D_MLP), what="LatentProducts.written", axes="d_sae_in, d_mlp")
    read = expect_tensor(products.read, (D_SAE_OUT, D_MLP), what="LatentProducts.read", axes="d_sae_out, d_mlp")
    diagnose(written, expected.written, {}, otherwise="`written` should be W_dec_in @ W_in.")
    diagnose(read, expected.read, {}, otherwise="`read` should be (W_out @ W_enc_out) transposed.")


def _function(thing: object, name: str) -> Callable[..., Any]:
    if not callable(thing) or isinstance(thing, type):
        raise CheckFailure(f"Pass your `{name}` function itself, e.g. `test_{name}({name})`.")
    return thing


def _autograd_difference(function: Callable[..., Any], what: str, n_tokens: int = 3, k: int = 3) -> float:
    """Compare with autograd through the full chain (biases included) on real TopK codes; return the largest difference."""
    W_enc_in, b_enc_in, b_dec_in = torch.randn(D_MODEL, D_SAE_IN, dtype=torch.float64), torch.randn(D_SAE_IN, dtype=torch.float64), torch.randn(D_MODEL, dtype=torch.float64)
    W_dec_in = F.normalize(torch.randn(D_SAE_IN, D_MODEL, dtype=torch.float64), dim=-1)
    W_in, b_in = torch.randn(D_MODEL, D_MLP, dtype=torch.float64), torch.randn(D_MLP, dtype=torch.float64)
    W_out, b_out = torch.randn(D_MLP, D_MODEL, dtype=torch.float64), torch.randn(D_MODEL, dtype=torch.float64)
    W_enc_out, b_enc_out, b_dec_out = torch.randn(D_MODEL, D_SAE_OUT, dtype=torch.float64), torch.randn(D_SAE_OUT, dtype=torch.float64), torch.randn(D_MODEL, dtype=torch.float64)
    x = torch.randn(n_tokens, D_MODEL, dtype=torch.float64)
    mlp = lambda inputs: F.relu(inputs @ W_in + b_in) @ W_out + b_out

    top_in = ((x - b_dec_in) @ W_enc_in + b_enc_in).topk(k, dim=-1)
    values_in, active_in = F.relu(top_in.values), top_in.indices
    x_hat = torch.einsum("tk,tkd->td", values_in, W_dec_in[active_in]) + b_dec_in
    active_out = ((mlp(x_hat) - b_dec_out) @ W_enc_out + b_enc_out).topk(k, dim=-1).indices
    weights = reference.CircuitWeights(W_dec_in, W_in, W_out, W_enc_out)
    learner = expect_tensor(_call(function, (weights, x_hat @ W_in + b_in, active_in, active_out), what), (n_tokens, k, k), what=what, axes="tokens, k_out, k_in")

    largest = 0.0
    for t in range(n_tokens):
        rest = x_hat[t] - values_in[t] @ W_dec_in[active_in[t]]  # b_dec_in: what the active latents do not write

        def chain(active_values: Tensor, t: int = t, rest: Tensor = rest) -> Tensor:
            y = mlp(active_values @ W_dec_in[active_in[t]] + rest)
            return (y - b_dec_out) @ W_enc_out[:, active_out[t]] + b_enc_out[active_out[t]]

        expected = autograd_jacobian(chain, values_in[t])
        largest = max(largest, float((learner[t] - expected).abs().max()))
    if largest > 1e-5 * max(1.0, float(learner.abs().max())):
        raise CheckFailure(f"`{what}` differs from torch.autograd.functional.jacobian through the whole chain by {largest:.2e}; re-read the formula.")
    return max(largest, 1e-16)
