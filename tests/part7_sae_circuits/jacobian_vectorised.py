"""Exercise 3.1's check: `latent_products` and `jacobian_vectorised`, the Jacobian for every token at once.

The products are checked on their own first, on two sets of weights in turn (a result kept from
an earlier call shows) and in float64; `jacobian_vectorised` then gets the reference's products,
so that a mistake in it is named as such, and finally the learner's chain is compared with
autograd through the whole chain (biases included) and, when given, with the learner's loop.
Last, the promise of no Python loops: the number of torch operations it runs must not grow with
the number of tokens or of active latents.
"""

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.functional import jacobian as autograd_jacobian
from torch.overrides import TorchFunctionMode

from part_utils.reference import part7_sae_circuits as reference
from part_utils.seeding import forked_rng
from tests.checking import CheckFailure, check, close, diagnose, expect_tensor
from tests.part7_sae_circuits._common import (
    D_MLP,
    D_MODEL,
    D_SAE_IN,
    D_SAE_OUT,
    Case,
    _call,
    _function,
    copy_case,
    copy_weights,
    random_case,
)
from tests.part7_sae_circuits._jacobian import _check_jacobian, _expect_float64_kept, _jacobian_result


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
        fast_result = _learner_chain(products_function, vectorised, copy_case(case))
        fast = _jacobian_result(fast_result, case, "jacobian_vectorised")
        slow = _jacobian_result(_call(loop_function, copy_case(case), "jacobian_loop"), case, "jacobian_loop")
        if not close(fast, slow):
            raise CheckFailure(
                f"jacobian_vectorised and jacobian_loop disagree (largest difference {(fast - slow).abs().max():.2e}); "
                "run test_jacobian_loop again."
            )
        summary = "your loop, " + summary
    _expect_no_python_loops(vectorised)
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
    W_dec_in, W_in, W_out, W_enc_out = (
        tensor.double() for tensor in (weights.W_dec_in, weights.W_in, weights.W_out, weights.W_enc_out)
    )
    written = {
        (
            "`written` uses W_out transposed; it is W_dec_in @ W_in, "
            "what each input latent writes into the MLP's neurons."
        ): W_dec_in @ W_out.T,
        "`written`'s rows were normalised; it is W_dec_in @ W_in as it is (the decoder rows are already unit-norm).": (
            F.normalize(W_dec_in @ W_in, dim=-1)
        ),
        (
            "W_dec_in was normalised along its columns (dim=0): its rows, one per latent, are unit-norm already; "
            "use it as it is."
        ): F.normalize(W_dec_in, dim=0) @ W_in,
    }
    read = {
        (
            "`read` uses W_in transposed; it is (W_out @ W_enc_out) transposed, "
            "what each output latent reads from the neurons."
        ): (W_in.T @ W_enc_out).T,
        (
            "W_enc_out's columns were normalised: only the input SAE's decoder rows are unit-norm; "
            "use the output SAE's encoder as it is."
        ): (W_out @ F.normalize(W_enc_out, dim=0)).T,
        (
            "W_enc_out's rows were normalised: only the input SAE's decoder rows are unit-norm; "
            "use the output SAE's encoder as it is."
        ): (W_out @ F.normalize(W_enc_out, dim=1)).T,
    }
    return written, read


def _check_products(function: Callable[..., Any]) -> None:
    """Two sets of float32 weights in turn, then float64 ones: right values each time, and the dtype kept.

    The extra weights come from a seed of their own, taken from the first weights without a draw, so that
    every later case is drawn as before."""
    weights = random_case(n_tokens=1, k_in=1, k_out=1)[0]
    with forked_rng(seed=int(weights.W_in.abs().sum() * 1e4) % 2**31):
        earlier = random_case(n_tokens=1, k_in=1, k_out=1)[0]
        weights_64 = random_case(n_tokens=1, k_in=1, k_out=1, dtype=torch.float64)[0]
    _check_products_on(function, earlier)
    products = _call(function, (copy_weights(weights),), "latent_products")
    stale = reference.latent_products(earlier)
    if all(
        isinstance(getattr(products, name, None), Tensor) and close(getattr(products, name), getattr(stale, name))
        for name in ("written", "read")
    ):
        raise CheckFailure(
            "`latent_products` returned the products of the weights of an earlier call: compute them from the "
            "weights it is given, on every call (keeping them for a pair of SAEs is the caller's job)."
        )
    _check_products_on(function, weights, products)
    products_64 = _check_products_on(function, weights_64)
    for name in ("written", "read"):
        _expect_float64_kept(getattr(products_64, name), torch.float64, f"`latent_products` returned a `{name}` of")


def _check_products_on(
    function: Callable[..., Any], weights: reference.CircuitWeights, products: Any = None
) -> reference.LatentProducts:
    """The learner's products for `weights` (computed here unless given), judged against the reference's."""
    if products is None:
        products = _call(function, (copy_weights(weights),), "latent_products")
    if not (hasattr(products, "written") and hasattr(products, "read")):
        raise CheckFailure(
            "`latent_products` should return LatentProducts(written=..., read=...), "
            f"but returned {type(products).__name__}."
        )
    shapes = tuple(
        tuple(getattr(products, name).shape) if isinstance(getattr(products, name), Tensor) else None
        for name in ("written", "read")
    )
    if shapes == ((D_SAE_OUT, D_MLP), (D_SAE_IN, D_MLP)):
        raise CheckFailure(
            "`written` and `read` are swapped: `written` is W_dec_in @ W_in (one row per input latent), "
            "`read` the output side."
        )
    if shapes[0] == (D_MLP, D_SAE_IN):
        raise CheckFailure(
            "`written` is [d_mlp, d_sae_in]: store it as W_dec_in @ W_in, [d_sae_in, d_mlp], one row per input latent."
        )
    if shapes[1] == (D_MLP, D_SAE_OUT):
        raise CheckFailure(
            "`read` is [d_mlp, d_sae_out]; store it transposed, [d_sae_out, d_mlp], one row per output latent, "
            "so it is gathered like `written`."
        )
    expected = reference.latent_products(weights)
    written_mistakes, read_mistakes = _products_mistakes(weights)
    written = expect_tensor(products.written, (D_SAE_IN, D_MLP), what="LatentProducts.written", axes="d_sae_in, d_mlp")
    read = expect_tensor(products.read, (D_SAE_OUT, D_MLP), what="LatentProducts.read", axes="d_sae_out, d_mlp")
    diagnose(written, expected.written, written_mistakes, otherwise="`written` should be W_dec_in @ W_in.")
    diagnose(read, expected.read, read_mistakes, otherwise="`read` should be (W_out @ W_enc_out) transposed.")
    return products


def _autograd_difference(
    products_function: Callable[..., Any], vectorised: Callable[..., Any], n_tokens: int = 3, k: int = 3
) -> float:
    """Compare with autograd through the full chain (biases included) on real TopK codes; return the largest
    difference."""
    what = "jacobian_vectorised"
    W_enc_in, b_enc_in, b_dec_in = (
        torch.randn(D_MODEL, D_SAE_IN, dtype=torch.float64),
        torch.randn(D_SAE_IN, dtype=torch.float64),
        torch.randn(D_MODEL, dtype=torch.float64),
    )
    W_dec_in = F.normalize(torch.randn(D_SAE_IN, D_MODEL, dtype=torch.float64), dim=-1)
    W_in, b_in = torch.randn(D_MODEL, D_MLP, dtype=torch.float64), torch.randn(D_MLP, dtype=torch.float64)
    W_out, b_out = torch.randn(D_MLP, D_MODEL, dtype=torch.float64), torch.randn(D_MODEL, dtype=torch.float64)
    W_enc_out, b_enc_out, b_dec_out = (
        torch.randn(D_MODEL, D_SAE_OUT, dtype=torch.float64),
        torch.randn(D_SAE_OUT, dtype=torch.float64),
        torch.randn(D_MODEL, dtype=torch.float64),
    )
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
        raise CheckFailure(
            f"`{what}` differs from torch.autograd.functional.jacobian through the whole chain by {largest:.2e}; "
            "re-read the formula."
        )
    return max(largest, 1e-16)


class _CountTorchCalls(TorchFunctionMode):
    """Counts the torch functions and tensor methods called inside it."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        self.calls += 1
        return func(*args, **(kwargs or {}))


def _torch_calls(vectorised: Callable[..., Any], n_tokens: int, k: int) -> int:
    case = random_case(n_tokens=n_tokens, k_in=k, k_out=k)
    arguments = (reference.latent_products(case[0]), *copy_case(case)[1:])
    with _CountTorchCalls() as counter:
        _call(vectorised, arguments, "jacobian_vectorised")
    return counter.calls


def _expect_no_python_loops(vectorised: Callable[..., Any]) -> None:
    """Vectorised code runs the same torch operations whatever the sizes; a Python loop runs more for more
    tokens (or active latents), at least one per extra pass."""
    few = _torch_calls(vectorised, n_tokens=2, k=2)
    more_tokens, more_latents = _torch_calls(vectorised, n_tokens=8, k=2), _torch_calls(vectorised, n_tokens=2, k=5)
    if more_tokens - few >= 6 or more_latents - few >= 3:
        over = "tokens" if more_tokens - few >= 6 else "active latents"
        raise CheckFailure(
            f"`jacobian_vectorised` gives the right values, but loops in Python over the {over}: it runs more "
            "torch operations the more there are. Gather every token's rows at once (products.written[active_in], "
            "products.read[active_out]) and combine them with one einsum, with no for loop or comprehension."
        )
