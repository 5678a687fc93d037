"""Judging a learner's Jacobian: its shape and dtype, then its values against the mistakes that explain them.

Float64 inputs must come back as float64: a float32 result is close enough to pass on values alone.
"""

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from tests.checking import CheckFailure, close, diagnose_among, expect_tensor, globals_hint
from tests.part7_sae_circuits._common import Case, _call, check_cases, copy_case


def expected_jacobian(
    case: Case,
    relu_derivative: Tensor | None = None,
    *,
    written: Tensor | None = None,
    read: Tensor | None = None,
    read_by: str = "out",
) -> Tensor:
    """The Jacobian in float64, with the ReLU derivative, the products or the gathering of `read` replaced by a
    wrong stand-in."""
    weights, mlp_pre, active_in, active_out = case
    derivative = (mlp_pre > 0).double() if relu_derivative is None else relu_derivative.double()
    # written: [d_sae_in, d_mlp], read: [d_sae_out, d_mlp]
    written = weights.W_dec_in.double() @ weights.W_in.double() if written is None else written.double()
    read = (weights.W_out.double() @ weights.W_enc_out.double()).T if read is None else read.double()
    read_indices = active_out if read_by == "out" else active_in
    return torch.einsum("tom,tm,tim->toi", read[read_indices], derivative, written[active_in])


def _factors(case: Case) -> tuple[Tensor, Tensor, Tensor]:
    """The three factors of J in float64: gathered `read` rows [tokens, k_out, d_mlp], the ReLU derivative
    [tokens, d_mlp] and gathered `written` rows [tokens, k_in, d_mlp]."""
    weights, mlp_pre, active_in, active_out = case
    written = weights.W_dec_in.double() @ weights.W_in.double()
    read = (weights.W_out.double() @ weights.W_enc_out.double()).T
    return read[active_out], (mlp_pre > 0).double(), written[active_in]


def _jacobian_result(result: object, case: Case, what: str) -> Tensor:
    """The learner's Jacobian as float64, naming the shapes that betray a mistake."""
    _, mlp_pre, active_in, active_out = case
    n_tokens, k_in, k_out = len(mlp_pre), active_in.shape[1], active_out.shape[1]
    if isinstance(result, Tensor) and k_in != k_out:
        if tuple(result.shape) == (n_tokens, k_in, k_out):
            raise CheckFailure(
                f"`{what}` returned shape [tokens, k_in, k_out]; the Jacobian is [tokens, k_out, k_in]: "
                "one row per output latent."
            )
        if tuple(result.shape) == (n_tokens, k_in, k_in):
            raise CheckFailure(
                f"`{what}` returned [tokens, k_in, k_in]: the output latents' rows (of `read`, or columns of "
                "W_enc_out) are chosen with active_out, not active_in."
            )
    if (
        isinstance(result, Tensor)
        and result.numel() == n_tokens * k_out * k_in
        and tuple(result.shape) != (n_tokens, k_out, k_in)
    ):
        raise CheckFailure(
            f"`{what}` returned shape {tuple(result.shape)} where [tokens, k_out, k_in] is {(n_tokens, k_out, k_in)}: "
            "keep every axis, even one of length 1 (no .squeeze()), in that order."
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


def _relu_mistakes(case: Case) -> dict[str, Tensor]:
    """Jacobians with a wrong ReLU derivative, each under the sentence that names it."""
    mlp_pre = case[1]
    step = (mlp_pre > 0).double()
    return {
        (
            "The ReLU derivative is missing (or is 1 everywhere, as ReLU(pre) >= 0 is): multiply by 1[pre > 0] "
            "at each token, since a neuron that is off passes no change on."
        ): expected_jacobian(case, torch.ones_like(mlp_pre)),
        "You multiplied by ReLU(pre); the derivative of ReLU is the step 1[pre > 0].": expected_jacobian(
            case, F.relu(mlp_pre)
        ),
        "The ReLU derivative is 1 where pre > 0, not where pre < 0.": expected_jacobian(case, (mlp_pre < 0).double()),
        (
            "The ReLU derivative counts neurons with pre exactly 0 as on (>= 0): it is 1[pre > 0], 0 at the kink, "
            "as autograd's ReLU has it."
        ): expected_jacobian(case, (mlp_pre >= 0).double()),
        (
            "The ReLU derivative is 0.5 where pre is exactly 0 (torch.heaviside(pre, 0.5)?): it is 1[pre > 0], "
            "0 at the kink, as autograd's ReLU has it."
        ): expected_jacobian(case, step + 0.5 * (mlp_pre == 0).double()),
        (
            "Every token uses the first token's ReLU derivative; each token needs its own, from its own row of mlp_pre."
        ): expected_jacobian(case, step[:1].expand_as(step)),
        (
            "Every token uses the last token's ReLU derivative (one computed in an earlier loop over the tokens, "
            "left from its last pass?): compute each token's own, from row t of mlp_pre, inside the loop over t."
        ): expected_jacobian(case, step[-1:].expand_as(step)),
        (
            "The ReLU derivative is torch.sign(pre), which is −1 where pre < 0; the derivative is 0 there: "
            "use the step 1[pre > 0]."
        ): expected_jacobian(case, torch.sign(mlp_pre)),
    }


def _index_mistakes(case: Case) -> dict[str, Tensor]:
    """Jacobians whose factors are matched up along the wrong index, each under the sentence that names it."""
    read, step, written = _factors(case)
    n_tokens, k_out, k_in = len(step), read.shape[1], written.shape[1]
    mistakes = {
        (
            "One factor is summed over the tokens instead of matched token by token (in an einsum, its token "
            "axis has another letter than the others'): `tokens` must be the same axis in all three operands "
            "and in the output."
        ): [
            torch.einsum("som,tm,tim->toi", read, step, written),
            torch.einsum("tom,sm,tim->toi", read, step, written),
            torch.einsum("tom,tm,sim->toi", read, step, written),
        ],
    }
    by_latent = []  # row o (or i) of mlp_pre, where the loop variable of a latent took the token's place
    if k_out <= n_tokens:
        by_latent.append(torch.einsum("tom,om,tim->toi", read, step[:k_out], written))
    if k_in <= n_tokens:
        by_latent.append(torch.einsum("tom,im,tim->toi", read, step[:k_in], written))
    mistakes[
        "The ReLU derivative comes from row o (or i) of mlp_pre, a latent's position, not from the token's: "
        "use mlp_pre[t] for every entry of token t."
    ] = by_latent
    return mistakes


def _expect_every_entry_filled(actual: Tensor, expected: Tensor, what: str) -> None:
    """Name entries left at 0 (a loop over too short a range) when every filled entry is right."""
    unfilled = (actual == 0) & (expected.abs() > 1e-6)
    if unfilled.any() and close(actual[~unfilled], expected[~unfilled]):
        t, o, i = (int(index) for index in unfilled.nonzero()[0])
        raise CheckFailure(
            f"`{what}` left some entries of J at 0, e.g. J[{t}, {o}, {i}], while every entry it filled is right: "
            "check your loops' ranges, t over every token, o over range(k_out) = active_out.shape[1] and i over "
            "range(k_in) = active_in.shape[1]."
        )


def _weight_mistakes(case: Case, expected: Tensor) -> dict[str, Tensor]:
    """Jacobians transposed, or with a weight transposed or normalised, each under the sentence that names it."""
    weights = case[0]
    return {
        "The result is transposed: J[t, o, i] has output latents along axis 1 and input latents along axis 2.": (
            expected.transpose(1, 2)
        ),
        "What an input latent writes into the neurons uses W_out transposed; it is its decoder row times W_in.": (
            expected_jacobian(case, written=weights.W_dec_in.double() @ weights.W_out.double().T)
        ),
        "What an output latent reads from the neurons uses W_in transposed; it is W_out times its encoder column.": (
            expected_jacobian(case, read=(weights.W_in.double().T @ weights.W_enc_out.double()).T)
        ),
        (
            "W_enc_out's columns were normalised: only the input SAE's decoder rows are unit-norm; "
            "use the output SAE's encoder as it is."
        ): expected_jacobian(case, read=(weights.W_out.double() @ F.normalize(weights.W_enc_out.double(), dim=0)).T),
    }


def _diagnose(actual: Tensor, case: Case, what: str, function: Callable[..., Any] | None = None) -> None:
    _, _, active_in, active_out = case
    expected = expected_jacobian(case)
    if close(actual, expected):
        return
    _expect_every_entry_filled(actual, expected, what)
    mistakes: dict[str, list[Tensor]] = {
        message: [wrong] for message, wrong in {**_relu_mistakes(case), **_weight_mistakes(case, expected)}.items()
    }
    if active_in.shape == active_out.shape:  # otherwise the shape has told already
        mistakes[
            "The output latents are chosen with active_in: what output latent o reads (a row of `read`, "
            "a column of W_enc_out) is picked by active_out."
        ] = [expected_jacobian(case, read_by="in")]
    diagnose_among(
        actual,
        expected,
        {**mistakes, **_index_mistakes(case)},
        otherwise=(
            f"`{what}` differs from the Jacobian W_dec_in[i] · W_in · diag(1[pre > 0]) · W_out · W_enc_out[:, o]; "
            "re-read the formula." + (globals_hint(function, what) if function is not None else "")
        ),
    )


def _check_jacobian(function: Callable[..., Any], arguments_for: Callable[[Case], tuple[Any, ...]], what: str) -> None:
    """Run the learner's Jacobian on every case (on copies) and name what differs."""
    for case in check_cases():
        result = _call(function, arguments_for(copy_case(case)), what)
        _diagnose(_jacobian_result(result, case, what), case, what, function)
