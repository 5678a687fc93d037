"""Checks for Part 7 (SAE circuits). Call them from the notebook, e.g. `test_jacobian_loop(jacobian_loop)`.

Every size differs from every other (d_model 6, d_mlp 11, 13 input and 17 output latents,
k_in 3 and k_out 4), so a transposed weight, a gather along the wrong axis or a transposed
result fails instead of passing by accident. Further cases have k_in = k_out, as in
practice, where a transposed result keeps its shape and has to be caught by its values; a
single token with one latent on each side (where a `.squeeze()` loses axes); and float64,
which must come back as float64 (a float32 result is close enough to pass on values alone).
Some pre-activations are exactly 0, where the ReLU derivative is 0 (as autograd has it).
Learner code gets copies of every input; the expected values come from the originals.

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
    return reference.CircuitWeights(*(tensor.clone() for tensor in (weights.W_dec_in, weights.W_in, weights.W_out, weights.W_enc_out)))


def copy_case(case: Case) -> Case:
    weights, *tensors = case
    return copy_weights(weights), *(tensor.clone() for tensor in tensors)


def expected_jacobian(case: Case, relu_derivative: Tensor | None = None, *, written: Tensor | None = None, read: Tensor | None = None, read_by: str = "out") -> Tensor:
    """The Jacobian in float64, with the ReLU derivative, the products or the gathering of `read` replaced by a wrong stand-in."""
    weights, mlp_pre, active_in, active_out = case
    derivative = (mlp_pre > 0).double() if relu_derivative is None else relu_derivative.double()
    written = weights.W_dec_in.double() @ weights.W_in.double() if written is None else written.double()  # [d_sae_in, d_mlp]
    read = (weights.W_out.double() @ weights.W_enc_out.double()).T if read is None else read.double()  # [d_sae_out, d_mlp]
    read_indices = active_out if read_by == "out" else active_in
    return torch.einsum("tom,tm,tim->toi", read[read_indices], derivative, written[active_in])


def _call(function: Callable[..., Any], arguments: tuple[Any, ...], what: str) -> Any:
    """Call the learner's function, naming the likely mistake behind an indexing or shape error."""
    try:
        return call_learner(function, *arguments, what=what)
    except NotImplementedYet:
        raise
    except CheckFailure as failure:
        cause = failure.__cause__
        where = _learner_location(cause) if cause is not None else "your code"
        if isinstance(cause, IndexError):
            raise CheckFailure(
                f"`{what}` indexed past the end of an axis ({cause}, at {where}): the active indices are latent numbers, so they "
                "select rows of W_dec_in and columns of W_enc_out (rows of both LatentProducts): check which axis you gather along, "
                "and that input latents come from active_in, output latents from active_out."
            ) from cause
        if isinstance(cause, RuntimeError) and any(word in str(cause) for word in ("shape", "size", "dimension")):
            raise CheckFailure(
                f"`{what}` combined tensors whose shapes do not fit ({cause}, at {where}): check for a transposed weight "
                f"(here {SHAPES}) or a row of mlp_pre [tokens, d_mlp] taken along the wrong axis."
            ) from cause
        raise


def _jacobian_result(result: object, case: Case, what: str) -> Tensor:
    """The learner's Jacobian as float64, naming the shapes that betray a mistake."""
    _, mlp_pre, active_in, active_out = case
    n_tokens, k_in, k_out = len(mlp_pre), active_in.shape[1], active_out.shape[1]
    if isinstance(result, Tensor) and k_in != k_out:
        if tuple(result.shape) == (n_tokens, k_in, k_out):
            raise CheckFailure(f"`{what}` returned shape [tokens, k_in, k_out]; the Jacobian is [tokens, k_out, k_in]: one row per output latent.")
        if tuple(result.shape) == (n_tokens, k_in, k_in):
            raise CheckFailure(f"`{what}` returned [tokens, k_in, k_in]: the output latents' rows (of `read`, or columns of W_enc_out) are chosen with active_out, not active_in.")
    if isinstance(result, Tensor) and result.numel() == n_tokens * k_out * k_in and tuple(result.shape) != (n_tokens, k_out, k_in):
        raise CheckFailure(
            f"`{what}` returned shape {tuple(result.shape)} where [tokens, k_out, k_in] is {(n_tokens, k_out, k_in)}: keep every axis, "
            "even one of length 1 (no .squeeze()), in that order."
        )
    actual = expect_tensor(result, (n_tokens, k_out, k_in), what=what, axes="tokens, k_out, k_in")
    _expect_float64_kept(result, mlp_pre.dtype, f"`{what}` returned")
    return actual


def _expect_float64_kept(result: Tensor, input_dtype: torch.dtype, returned: str) -> None:
    """Float64 in, float64 out: a float32 result passes the value tolerance, so the dtype is checked itself."""
    if input_dtype == torch.float64 and result.dtype != torch.float64:
        raise CheckFailure(
            f"{returned} {result.dtype} for float64 inputs: keep the inputs' dtype (no .float(), and tensors "
            "you create made with it, e.g. torch.zeros(..., dtype=mlp_pre.dtype)): float64 in, float64 out."
        )


def _diagnose(actual: Tensor, case: Case, what: str) -> None:
    weights, mlp_pre, active_in, active_out = case
    expected = expected_jacobian(case)
    step = (mlp_pre > 0).double()
    mistakes = {
        "The ReLU derivative is missing (or is 1 everywhere, as ReLU(pre) >= 0 is): multiply by 1[pre > 0] at each token, since a neuron that is off passes no change on.": expected_jacobian(
            case, torch.ones_like(mlp_pre)
        ),
        "You multiplied by ReLU(pre); the derivative of ReLU is the step 1[pre > 0].": expected_jacobian(case, F.relu(mlp_pre)),
        "The ReLU derivative is 1 where pre > 0, not where pre < 0.": expected_jacobian(case, (mlp_pre < 0).double()),
        "The ReLU derivative counts neurons with pre exactly 0 as on (>= 0): it is 1[pre > 0], 0 at the kink, as autograd's ReLU has it.": expected_jacobian(
            case, (mlp_pre >= 0).double()
        ),
        "The ReLU derivative is 0.5 where pre is exactly 0 (torch.heaviside(pre, 0.5)?): it is 1[pre > 0], 0 at the kink, as autograd's ReLU has it.": expected_jacobian(
            case, step + 0.5 * (mlp_pre == 0).double()
        ),
        "Every token uses the first token's ReLU derivative; each token needs its own, from its own row of mlp_pre.": expected_jacobian(
            case, step[:1].expand_as(step)
        ),
        "The result is transposed: J[t, o, i] has output latents along axis 1 and input latents along axis 2.": expected.transpose(1, 2),
        "What an input latent writes into the neurons uses W_out transposed; it is its decoder row times W_in.": expected_jacobian(
            case, written=weights.W_dec_in.double() @ weights.W_out.double().T
        ),
        "What an output latent reads from the neurons uses W_in transposed; it is W_out times its encoder column.": expected_jacobian(
            case, read=(weights.W_in.double().T @ weights.W_enc_out.double()).T
        ),
        "W_enc_out's columns were normalised: only the input SAE's decoder rows are unit-norm; use the output SAE's encoder as it is.": expected_jacobian(
            case, read=(weights.W_out.double() @ F.normalize(weights.W_enc_out.double(), dim=0)).T
        ),
    }
    if active_in.shape == active_out.shape:  # otherwise the shape has told already
        mistakes["The output latents are chosen with active_in: what output latent o reads (a row of `read`, a column of W_enc_out) is picked by active_out."] = expected_jacobian(
            case, read_by="in"
        )
    diagnose(actual, expected, mistakes, otherwise=f"`{what}` differs from the Jacobian W_dec_in[i] · W_in · diag(1[pre > 0]) · W_out · W_enc_out[:, o]; re-read the formula.")


def _check_jacobian(function: Callable[..., Any], arguments_for: Callable[[Case], tuple[Any, ...]], what: str) -> None:
    """Run the learner's Jacobian on every case (on copies) and name what differs."""
    for case in check_cases():
        result = _call(function, arguments_for(copy_case(case)), what)
        _diagnose(_jacobian_result(result, case, what), case, what)


@check("jacobian_loop")
def test_jacobian_loop(learner: object) -> str:
    function = _function(learner, "jacobian_loop")
    _check_jacobian(function, lambda case: case, "jacobian_loop")
    return "random cases with distinct sizes, k_in = k_out, a single token with k = 1, and float64 in, float64 out"


@check("latent_products and jacobian_vectorised")
def test_jacobian_vectorised(products_function: object, vectorised: object, loop: object | None = None) -> str:
    products_function = _function(products_function, "latent_products")
    vectorised = _function(vectorised, "jacobian_vectorised")
    _check_products(products_function)
    # The reference products go in, so that a mistake in jacobian_vectorised is named as such.
    _check_jacobian(vectorised, lambda case: (reference.latent_products(case[0]), *case[1:]), "jacobian_vectorised")
    largest = _autograd_difference(products_function, vectorised)
    summary = f"the reference, and autograd through the whole chain to {largest:.0e}"
    if loop is not None:
        loop_function = _function(loop, "jacobian_loop")
        case = random_case(n_tokens=9, k_in=4, k_out=3)
        fast = _jacobian_result(_learner_chain(products_function, vectorised, copy_case(case)), case, "jacobian_vectorised")
        slow = _jacobian_result(_call(loop_function, copy_case(case), "jacobian_loop"), case, "jacobian_loop")
        if not close(fast, slow):
            raise CheckFailure(f"jacobian_vectorised and jacobian_loop disagree (largest difference {(fast - slow).abs().max():.2e}); run test_jacobian_loop again.")
        summary = "your loop, " + summary
    return f"agrees with {summary}; float64 in, float64 out"


def _learner_chain(products_function: Callable[..., Any], vectorised: Callable[..., Any], case: Case) -> Any:
    """The learner's latent_products, then the learner's jacobian_vectorised on them."""
    weights, mlp_pre, active_in, active_out = case
    products = _call(products_function, (weights,), "latent_products")
    for name in ("written", "read"):
        product = getattr(products, name, None)
        if isinstance(product, Tensor):
            _expect_float64_kept(product, weights.W_in.dtype, f"`latent_products` returned a `{name}` of")
    return _call(vectorised, (products, mlp_pre, active_in, active_out), "jacobian_vectorised")


def _products_mistakes(weights: reference.CircuitWeights) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Wrong `written` and wrong `read` matrices, each under the sentence that names it."""
    W_dec_in, W_in, W_out, W_enc_out = (tensor.double() for tensor in (weights.W_dec_in, weights.W_in, weights.W_out, weights.W_enc_out))
    written = {
        "`written` uses W_out transposed; it is W_dec_in @ W_in, what each input latent writes into the MLP's neurons.": W_dec_in @ W_out.T,
        "`written`'s rows were normalised; it is W_dec_in @ W_in as it is (the decoder rows are already unit-norm).": F.normalize(W_dec_in @ W_in, dim=-1),
    }
    read = {
        "`read` uses W_in transposed; it is (W_out @ W_enc_out) transposed, what each output latent reads from the neurons.": (W_in.T @ W_enc_out).T,
        "W_enc_out's columns were normalised: only the input SAE's decoder rows are unit-norm; use the output SAE's encoder as it is.": (W_out @ F.normalize(W_enc_out, dim=0)).T,
    }
    return written, read


def _check_products(function: Callable[..., Any]) -> None:
    weights = random_case(n_tokens=1, k_in=1, k_out=1)[0]
    products = _call(function, (copy_weights(weights),), "latent_products")
    if not (hasattr(products, "written") and hasattr(products, "read")):
        raise CheckFailure(f"`latent_products` should return LatentProducts(written=..., read=...), but returned {type(products).__name__}.")
    shapes = tuple(tuple(getattr(products, name).shape) if isinstance(getattr(products, name), Tensor) else None for name in ("written", "read"))
    if shapes == ((D_SAE_OUT, D_MLP), (D_SAE_IN, D_MLP)):
        raise CheckFailure("`written` and `read` are swapped: `written` is W_dec_in @ W_in (one row per input latent), `read` the output side.")
    if shapes[0] == (D_MLP, D_SAE_IN):
        raise CheckFailure("`written` is [d_mlp, d_sae_in]: store it as W_dec_in @ W_in, [d_sae_in, d_mlp], one row per input latent.")
    if shapes[1] == (D_MLP, D_SAE_OUT):
        raise CheckFailure("`read` is [d_mlp, d_sae_out]; store it transposed, [d_sae_out, d_mlp], one row per output latent, so it is gathered like `written`.")
    expected = reference.latent_products(weights)
    written_mistakes, read_mistakes = _products_mistakes(weights)
    written = expect_tensor(products.written, (D_SAE_IN, D_MLP), what="LatentProducts.written", axes="d_sae_in, d_mlp")
    read = expect_tensor(products.read, (D_SAE_OUT, D_MLP), what="LatentProducts.read", axes="d_sae_out, d_mlp")
    diagnose(written, expected.written, written_mistakes, otherwise="`written` should be W_dec_in @ W_in.")
    diagnose(read, expected.read, read_mistakes, otherwise="`read` should be (W_out @ W_enc_out) transposed.")


def _function(thing: object, name: str) -> Callable[..., Any]:
    if not callable(thing) or isinstance(thing, type):
        raise CheckFailure(f"Pass your `{name}` function itself, e.g. `test_{name}({name})`.")
    return thing


def _autograd_difference(products_function: Callable[..., Any], vectorised: Callable[..., Any], n_tokens: int = 3, k: int = 3) -> float:
    """Compare with autograd through the full chain (biases included) on real TopK codes; return the largest difference."""
    what = "jacobian_vectorised"
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
    case = (reference.CircuitWeights(W_dec_in, W_in, W_out, W_enc_out), x_hat @ W_in + b_in, active_in, active_out)
    learner = _jacobian_result(_learner_chain(products_function, vectorised, copy_case(case)), case, what)

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
