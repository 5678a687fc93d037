"""What the Heaviside and JumpReLU checks share: the cases, the expected forward and pseudo-derivatives,
and each slip's diagnosis, for an autograd.Function that is a step (Heaviside) or a jump (JumpReLU)."""

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from tests.checking import CheckFailure, call_learner, close, diagnose_among, expect_tensor
from tests.part5_sae_variants._common import D_SAE, N_INST, _fitting, _float64, _Narrowing

Fit = tuple[list[str] | None, str]  # the messages that fit a wrong result (None: right), and the fallback sentence
# Bandwidths a learner may write into backward instead of reading ctx.bandwidth: the paper's, the toy SAE's, the
# hand-checkable case's, round numbers, and those of the other cases here.
FIXED_BANDWIDTHS = (0.001, 0.01, 0.05, 0.1, 0.2, 0.25, 0.3, 0.5, 1.0)


def _apply(function: type[torch.autograd.Function]) -> Callable[[Tensor, Tensor, float], Tensor]:
    def forward(z: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:  # named like the learner's, for the snapshot
        return function.apply(z, threshold, bandwidth)

    return forward


def _autograd_refusal(error: RuntimeError, name: str) -> str | None:
    """What autograd refused in the learner's backward, in one sentence; None for anything else."""
    text = str(error)
    if "returned a gradient different than None at position 3" in text:
        return (
            f"`{name}.backward` returns a gradient for bandwidth, which is a plain number: "
            "return None in its place (autograd accepts nothing else there)."
        )
    if "incorrect number of gradients" in text:
        return (
            f"`{name}.backward` must return one gradient per input of forward, three "
            "in all: for z, for threshold, and None for bandwidth."
        )
    shape = re.search(
        r"invalid gradient at index (\d+) - got \[(.*?)\] but expected shape compatible with \[(.*?)\]", text
    )
    if shape:
        argument = {"0": "z", "1": "threshold"}.get(shape.group(1), "an input")
        return (
            f"`{name}.backward` returns a gradient for {argument} of shape [{shape.group(2)}], "
            f"which autograd cannot sum to {argument}'s shape [{shape.group(3)}]: sum over the "
            "batch dimensions only (e.g. `.sum_to_size(threshold.shape)`)."
        )
    return None


def _run_backward(outputs: list[Tensor], upstreams: list[Tensor], inputs: dict[str, Tensor], name: str) -> None:
    """Backpropagate through the learner's function, with the inputs it saved snapshotted too."""

    def backward(grad_output: Tensor | list[Tensor], **saved: Tensor) -> None:
        try:
            torch.autograd.backward(outputs, grad_output if isinstance(grad_output, list) else [grad_output])
        except RuntimeError as error:
            refusal = _autograd_refusal(error, name)
            if refusal is None:
                raise
            raise CheckFailure(refusal) from error

    call_learner(backward, upstreams[0] if len(upstreams) == 1 else upstreams, **inputs, what=f"{name}.backward")


@dataclass
class _StepCase:
    description: str
    z: Tensor
    threshold: Tensor
    bandwidth: float
    upstream: Tensor


def _step_cases() -> list[_StepCase]:
    """The hand-checkable case, exact edges, then the shapes the SAEs use, each with many z near θ."""
    f64 = {"dtype": torch.float64}
    hand = _StepCase(
        "the hand-checkable case",
        torch.tensor([1.0, 1.4, 1.6, 2.0], **f64),
        torch.tensor(1.5, **f64),
        0.5,
        torch.ones(4, **f64),
    )
    # Sums of powers of two, so that u = (z - θ)/ε is exactly -1/2, 0 and 1/2 at the first three inputs; the others
    # (u = -2, -1/4, 3/4, 1, 3) tell a kernel twice too wide from one evaluated at z - θ instead of (z - θ)/ε.
    edges = _StepCase(
        "inputs exactly at θ and exactly ε/2 from it",
        torch.tensor([1.375, 1.5, 1.625, 1.0, 1.4375, 1.6875, 1.75, 2.25], **f64),
        torch.tensor(1.5, **f64),
        0.25,
        torch.tensor([0.7, -1.3, 1.1, 0.4, 2.0, -0.6, 0.9, 1.7], **f64),
    )
    threshold = torch.rand(N_INST, D_SAE, **f64) * 0.4 + 0.2
    per_latent = _near_threshold("a batch with one θ per latent and instance", threshold, 10, 0.2, spread=0.8)
    single = torch.rand(5, **f64) * 0.4 + 0.2
    one_sae = _near_threshold("one SAE without instances (θ of shape [d_sae])", single, 12, 0.25, spread=1.0)
    one_input = _near_threshold("a batch of one input", threshold, 1, 0.2, spread=0.8)
    return [hand, edges, per_latent, one_sae, one_input, _close_to_threshold()]


def _close_to_threshold() -> _StepCase:
    """One input whose z lie from 1e-5 to 0.5 from θ (log-uniform, either side), with θ near 1 in one latent.

    However small a bandwidth written into backward, some z fall inside its window, so it gives numbers of its
    own and not those of no gradient at all; with one input, each latent's gradient shows the bandwidth used.
    θ near 1 lets a kernel computed from Heaviside's output, K((H - θ)/ε), open its window.
    """
    threshold = torch.rand(N_INST, D_SAE, dtype=torch.float64) * 0.4 + 0.2
    threshold[:, -1] = 1.0 + (torch.rand(N_INST, dtype=torch.float64) - 0.5) * 0.2
    distance = 10 ** (torch.rand(N_INST, D_SAE, dtype=torch.float64) * 4.7 - 5.0)
    side = torch.where(torch.rand(N_INST, D_SAE) < 0.5, -1.0, 1.0).double()
    z = (threshold + side * distance)[None]
    return _StepCase("one input with z very close to θ", z, threshold, 0.3, torch.randn(z.shape, dtype=torch.float64))


def _near_threshold(description: str, threshold: Tensor, batch: int, bandwidth: float, *, spread: float) -> _StepCase:
    """A batch of z spread uniformly over θ ± spread/2 (drawn first), then a random grad_output."""
    shape = (batch, *threshold.shape)
    z = threshold + (torch.rand(shape, dtype=torch.float64) - 0.5) * spread
    return _StepCase(description, z, threshold, bandwidth, torch.randn(shape, dtype=torch.float64))


def _kernel(z: Tensor, threshold: Tensor, bandwidth: float, *, half_width: float = 0.5, closed: bool = False) -> Tensor:
    u = (z - threshold).abs() / bandwidth
    return (u <= half_width if closed else u < half_width).double()


def _reduce_to(tensor: Tensor, threshold: Tensor) -> Tensor:
    return tensor.sum_to_size(threshold.shape)


@dataclass
class _StepExpectation:
    output: Tensor
    grad_z: Tensor
    grad_threshold: Tensor


def _step_expectation(
    z: Tensor, threshold: Tensor, bandwidth: float, upstream: Tensor, *, jump: bool
) -> _StepExpectation:
    active = (z > threshold).double()
    scale = threshold if jump else torch.ones_like(threshold)
    grad_threshold = _reduce_to(-(scale / bandwidth) * _kernel(z, threshold, bandwidth) * upstream, threshold)
    grad_z = active * upstream if jump else torch.zeros_like(z)
    return _StepExpectation(z * active if jump else active, grad_z, grad_threshold)


def _step_forward_fit(output: Tensor, case: _StepCase, name: str, *, jump: bool) -> Fit:
    z, threshold = case.z, case.threshold
    active, at_or_above = (z > threshold).double(), (z >= threshold).double()
    at_theta = f"{name} fires at z = θ; the step is 1 only where z > θ (strictly), so use > rather than >=."
    if jump:
        mistakes = {
            f"{name} returns H(z - θ); it should return z · H(z - θ).": active,
            at_theta: z * at_or_above,
            (
                f"{name} zeroes only negative pre-activations, as a ReLU would; "
                "it should zero every z that is not above θ."
            ): F.relu(z),
            f"{name} subtracts θ from the values it keeps; it should pass z unchanged where z > θ.": (z - threshold)
            * active,
        }
    else:
        mistakes = {
            f"{name} returns z · H(z - θ); the Heaviside step returns just H(z - θ) (0 or 1).": z * active,
            at_theta: at_or_above,
            f"{name} is 1 below θ; H(z - θ) is 1 where z > θ.": (z < threshold).double(),
        }
    expected = _step_expectation(z, threshold, case.bandwidth, case.upstream, jump=jump).output
    otherwise = f"{name}'s forward is wrong on {case.description}: it should be {'z · ' if jump else ''}1[z > θ]."
    return _fitting(output, expected, list(mistakes.items())), otherwise


def _step_grad_z_fit(grad_z: Tensor, case: _StepCase, name: str, *, jump: bool) -> Fit:
    z, threshold, bandwidth, upstream = case.z, case.threshold, case.bandwidth, case.upstream
    kernel = _kernel(z, threshold, bandwidth)
    active = (z > threshold).double()
    if not jump:
        mistakes = [
            (
                "Heaviside passes grad_output through to z; its pseudo-derivative in z is 0 (return None or zeros "
                "for z).",
                upstream,
            ),
            (
                "Heaviside passes the kernel's pseudo-derivative to z; in this method "
                "∂H/∂z = 0 and only θ gets one (return None or zeros for z).",
                kernel / bandwidth * upstream,
            ),
        ]
        otherwise = "Heaviside passes a gradient to z; its pseudo-derivative in z is 0 (return None or zeros)."
        return _fitting(grad_z, torch.zeros_like(z), mistakes), otherwise
    kernel_term = (
        "JumpReLU adds a kernel term to ∂/∂z; in this method ∂JumpReLU/∂z is H(z - θ) alone (the kernel is for θ)."
    )
    mistakes = [
        ("JumpReLU passes the gradient to z everywhere; ∂/∂z is H(z - θ): only where z > θ.", upstream),
        (
            "JumpReLU passes no gradient to z; ∂/∂z is H(z - θ), so grad_output goes through where z > θ.",
            torch.zeros_like(z),
        ),
        ("JumpReLU's gradient for z ignores grad_output: multiply H(z - θ) by it.", active),
        (
            "JumpReLU lets the gradient through wherever z > 0, as a ReLU would; ∂/∂z is H(z - θ), only where z > θ.",
            (z > 0).double() * upstream,
        ),
        (
            "JumpReLU lets the gradient to z through at z = θ; H(0) = 0, so use z > θ rather than >=.",
            (z >= threshold).double() * upstream,
        ),
        *((kernel_term, (active + factor / bandwidth * kernel) * upstream) for factor in (z, threshold)),
    ]
    return _fitting(grad_z, active * upstream, mistakes), "JumpReLU's gradient for z should be H(z - θ) · grad_output."


def _batch_divisors(z: Tensor, threshold: Tensor) -> set[int]:
    """Every count a learner might average θ's gradient over instead of summing."""
    return {n for n in (z.shape[0] if z.dim() else 1, z.numel() // max(1, threshold.numel()), z.numel()) if n > 1}


def _implied_bandwidth(grad_threshold: Tensor, case: _StepCase, scale: Tensor) -> float | None:
    """With one input, each latent's gradient is -(scale/c)·K((z - θ)/c)·grad_output: the c that explains
    every non-zero one, if a single c does."""
    if case.z.numel() != case.threshold.numel():
        return None
    pull = (-scale * case.upstream).reshape(grad_threshold.shape)
    inside = grad_threshold.abs() > 1e-12
    if not inside.any():
        return None
    implied = pull[inside] / grad_threshold[inside]
    bandwidth = float(implied.median())
    return bandwidth if bandwidth > 0 and torch.allclose(implied, torch.full_like(implied, bandwidth)) else None


def _bandwidth_used(
    function: type[torch.autograd.Function], case: _StepCase, name: str, *, jump: bool
) -> tuple[float | None, tuple[Tensor, Tensor, Tensor] | None]:
    """The bandwidth the learner's backward shows on a case of one input, if one explains every latent, and that
    case's results; (None, None) when it fails there (the cases in order then report how)."""
    try:
        results = _run_step(function, case, name)
    except CheckFailure:
        return None, None
    return _implied_bandwidth(results[2], case, case.threshold if jump else torch.ones_like(case.threshold)), results


def _check_step_grad_threshold(grad_threshold: Tensor, case: _StepCase, name: str, *, jump: bool) -> None:
    narrowing = _Narrowing()
    narrowing.add(*_step_grad_threshold_fit(grad_threshold, case, name, jump=jump))
    narrowing.finish()


def _step_grad_threshold_fit(
    grad_threshold: Tensor, case: _StepCase, name: str, *, jump: bool, implied: float | None = None
) -> Fit:
    """`implied`: the bandwidth the learner's backward showed on a case of one input, if a single one explains it."""
    z, threshold, bandwidth, upstream = case.z, case.threshold, case.bandwidth, case.upstream
    scale = threshold if jump else torch.ones_like(threshold)
    expected = _step_expectation(z, threshold, bandwidth, upstream, jump=jump).grad_threshold
    formula = "-(θ/ε)·K((z-θ)/ε)" if jump else "-(1/ε)·K((z-θ)/ε)"
    otherwise = (
        f"{name}'s threshold gradient is wrong on {case.description}: it "
        f"should be {formula} · grad_output, summed over the batch."
    )
    if close(grad_threshold, expected):
        return None, otherwise

    def pseudo(factor: Tensor | float, kernel: Tensor, grad: Tensor = upstream) -> Tensor:
        return _reduce_to(-factor * kernel * grad, threshold)

    kernel = _kernel(z, threshold, bandwidth)
    mistakes = {
        f"The threshold gradient has the wrong sign: it is {formula}, negative inside the window.": -expected,
        "The kernel is twice too wide: K(u) is 1 for -1/2 < u < 1/2 with u = (z - θ)/ε, i.e. |z - θ| < ε/2.": pseudo(
            scale / bandwidth, _kernel(z, threshold, bandwidth, half_width=1.0)
        ),
        "The kernel is evaluated at z - θ; its argument is u = (z - θ)/ε, so it is 1 where |z - θ| < ε/2.": pseudo(
            scale / bandwidth, _kernel(z, threshold, 1.0)
        ),
        (
            "K is 1 only on the open interval -1/2 < u < 1/2: an input "
            "exactly ε/2 from θ gets no gradient (use <, not <=)."
        ): pseudo(scale / bandwidth, _kernel(z, threshold, bandwidth, closed=True)),
        "The threshold gradient is missing the 1/ε factor.": pseudo(scale, kernel),
        "The threshold gradient multiplies by ε; the factor is 1/ε.": pseudo(scale * bandwidth, kernel),
        "The threshold gradient ignores grad_output: multiply by the gradient flowing in.": pseudo(
            scale / bandwidth, kernel, torch.ones_like(upstream)
        ),
        (
            f"{name} returns no gradient for threshold; it should be {formula} · grad_output, summed over the batch."
        ): torch.zeros_like(expected),
    }
    averaged = (
        "The threshold gradient is averaged over the batch; sum over the batch "
        "instead (θ is shared by every input, so each one adds its pull)."
    )
    mistakes_by_divisor = [(averaged, expected / divisor) for divisor in sorted(_batch_divisors(z, threshold))]
    output = z * (z > threshold).double() if jump else (z > threshold).double()
    mistakes[
        f"{name}.backward computes the kernel from forward's output, {'z · ' if jump else ''}H(z - θ), rather than "
        "from z: save z itself (ctx.save_for_backward(z, threshold)) and take u = (z - θ)/ε."
    ] = pseudo(scale / bandwidth, _kernel(output, threshold, bandwidth))
    for fixed in (*FIXED_BANDWIDTHS, *([implied] if implied else [])):
        if not math.isclose(fixed, bandwidth):
            mistakes[
                f"{name}.backward uses a bandwidth of {fixed:.3g}, not the ε each forward call receives: "
                "store it in forward (ctx.bandwidth = bandwidth) and read it back in backward, "
                "rather than writing a number there."
            ] = pseudo(scale / fixed, _kernel(z, threshold, fixed))
    if jump:
        mistakes[
            "JumpReLU's threshold gradient has θ twice (θ²/ε); the factor is θ/ε: autograd applies the chain rule "
            "through θ = exp(log θ) itself."
        ] = pseudo(threshold**2 / bandwidth, kernel)
        mistakes["JumpReLU's threshold gradient uses 1/ε; it is -(θ/ε)·K((z-θ)/ε)."] = pseudo(1 / bandwidth, kernel)
        mistakes["JumpReLU's threshold gradient uses z/ε; the factor is θ/ε: -(θ/ε)·K((z-θ)/ε)."] = pseudo(
            z / bandwidth, kernel
        )
    else:
        mistakes[
            "The Heaviside threshold gradient has a θ factor, which belongs to JumpReLU; ∂H/∂θ is -(1/ε)·K((z-θ)/ε)."
        ] = pseudo(threshold / bandwidth, kernel)
    # Averaging first: where a slip gives the same numbers on every case, it is the likelier.
    return _fitting(grad_threshold, expected, [*mistakes_by_divisor, *mistakes.items()]), otherwise


def _run_step(function: type[torch.autograd.Function], case: _StepCase, name: str) -> tuple[Tensor, Tensor, Tensor]:
    z = case.z.clone().requires_grad_(True)
    threshold = case.threshold.clone().requires_grad_(True)
    output = call_learner(_apply(function), z, threshold, case.bandwidth, what=f"{name}.forward")
    output_64 = expect_tensor(output, tuple(case.z.shape), what=f"{name}.forward", axes="the shape of z")
    if output.dtype != z.dtype:
        raise CheckFailure(
            f"`{name}.forward` returns {output.dtype} for {z.dtype} z: return the step in z's dtype "
            "(.to(z.dtype)); the reference parity below runs in float64."
        )
    if not output.requires_grad:
        raise CheckFailure(
            f"`{name}.apply` returns a tensor without a gradient: do not mark forward's output non-differentiable."
        )
    _run_backward([output], [case.upstream.clone()], {"z": z, "threshold": threshold}, name)
    return output_64, _float64(z.grad, z), _float64(threshold.grad, threshold)


def _two_calls() -> list[_StepCase]:
    f64 = {"dtype": torch.float64}
    calls = []
    for bandwidth in (0.2, 0.3):
        threshold = torch.rand(N_INST, D_SAE, **f64) * 0.4 + 0.2
        calls.append(_near_threshold("two calls", threshold, 6, bandwidth, spread=0.8))
    return calls


def _check_two_calls(function: type[torch.autograd.Function], calls: list[_StepCase], name: str, *, jump: bool) -> None:
    """Two forward calls before one backward, as when an SAE uses the function twice: each call's own values count."""
    leaves = [(case.z.clone().requires_grad_(True), case.threshold.clone().requires_grad_(True)) for case in calls]
    outputs = [
        call_learner(_apply(function), z, threshold, case.bandwidth, what=f"{name}.forward")
        for (z, threshold), case in zip(leaves, calls)
    ]
    inputs = {
        "z": leaves[0][0],
        "threshold": leaves[0][1],
        "z of the second call": leaves[1][0],
        "threshold of the second call": leaves[1][1],
    }
    _run_backward(outputs, [case.upstream.clone() for case in calls], inputs, name)
    first, second = calls
    actual = {"z": _float64(leaves[0][0].grad, first.z), "threshold": _float64(leaves[0][1].grad, first.threshold)}

    def gradients_of_first(z: Tensor, threshold: Tensor, bandwidth: float) -> dict[str, Tensor]:
        e = _step_expectation(z, threshold, bandwidth, first.upstream, jump=jump)
        return {"z": e.grad_z, "threshold": e.grad_threshold}

    stale = (
        f"`{name}.backward` used what a later forward call stored: keep what backward needs on ctx "
        "(ctx.save_for_backward, ctx.bandwidth), not on the class or in a global."
    )
    diagnose_among(
        actual,
        gradients_of_first(first.z, first.threshold, first.bandwidth),
        [
            (stale, gradients_of_first(second.z, second.threshold, first.bandwidth)),
            (stale, gradients_of_first(second.z, second.threshold, second.bandwidth)),
            (
                f"`{name}.backward` used the bandwidth of a later forward call: store it on ctx "
                "(ctx.bandwidth = bandwidth), not on the class or in a global.",
                gradients_of_first(first.z, first.threshold, second.bandwidth),
            ),
        ],
        otherwise=(
            f"{name} gives the first call the wrong gradients when forward runs twice "
            "before backward: keep each call's values on its own ctx."
        ),
    )


def _check_autograd_function(function: type[torch.autograd.Function], name: str, *, jump: bool) -> None:
    cases, calls = _step_cases(), _two_calls()  # drawn before the learner's code runs
    implied, last = _bandwidth_used(function, cases[-1], name, jump=jump)
    narrowing = _Narrowing()
    for case in cases:
        output, grad_z, grad_threshold = last if case is cases[-1] and last else _run_step(function, case, name)
        narrowing.add(*_step_forward_fit(output, case, name, jump=jump))
        narrowing.add(*_step_grad_z_fit(grad_z, case, name, jump=jump))
        narrowing.add(*_step_grad_threshold_fit(grad_threshold, case, name, jump=jump, implied=implied))
    narrowing.finish()
    _check_two_calls(function, calls, name, jump=jump)
