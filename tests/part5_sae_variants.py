"""Checks for Part 5 (SAE variants). Call them from the notebook, e.g. `test_gated_forward(GatedToySAE)`.

Shapes differ from each other (3 instances, d_in 4, 7 latents) so that a transposed weight or a
reduction over the wrong axis fails instead of passing by accident. Every check hands the learner's
code copies of its inputs and computes what to expect from its own originals (in float64), and
wherever training depends on the exercise it backpropagates through the learner's code and compares
the gradients too.
"""

import inspect
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from part_utils import jumprelu_numpy
from part_utils.device import get_device
from part_utils.reference import part4_toy_sae as part4
from part_utils.reference import part5_sae_variants as reference
from tests.checking import (
    call_learner,
    check,
    CheckFailure,
    close,
    diagnose,
    diagnose_among,
    expect_tensor,
    first_gradient_mismatch,
    gradients,
    handed_in,
    learner_callable,
    learner_function,
    require_gradient,
)
from tests.part4_toy_sae import _toy_model

N_INST, D_IN, D_SAE = 3, 4, 7

# Google DeepMind's published regression values for its JumpReLU reference (CURRICULUM.md).
PUBLISHED = {
    "dataset[::13001]": [-0.26036463, 0.07950339, -0.10517059, 0.11135695],
    "reconstruction[::5001]": [-0.34825447, -0.12089294, -0.20722952, 1.4071178],
    "pre-activations[::40001]": [0.6627157, -0.2485388, 0.52095324, -0.01966003],
    "loss": [81.98928],
    "grad b_dec[::7]": [-1.7614671, -2.9526186, 0.99276465],
    "grad b_enc[::37]": [0.29240608, 0.9655949, 0.20811056, 1.051967],
    "grad log θ[::37]": [-0.01634991, -0.00306892, -0.00966095, -0.0034949],
    "grad W_dec[::601]": [0.02478151, -0.01372844, 0.00353589, 0.10577872],
    "grad W_enc[::601]": [0.02030803, 0.02437474, -0.01442294, 0.01866631],
}
PUBLISHED_TOLERANCE = 1e-5
TRAINING_TOLERANCE = 1e-8


def _randomise(sae: part4.ToySAE) -> None:
    """Random weights with varied decoder norms and non-zero biases (the frozen toy model is left alone)."""
    with torch.no_grad():
        for name, parameter in sae.named_parameters():
            if name.startswith("model."):
                continue
            if name == "_W_dec":
                norms = torch.rand(*parameter.shape[:-1], 1, device=parameter.device) * 3 + 0.1
                parameter.copy_(torch.randn_like(parameter) * norms)
            elif name == "W_enc":
                parameter.normal_()
            else:
                parameter.normal_(0.0, 0.5)


def _float64(tensor: Tensor | None, like: Tensor) -> Tensor:
    return torch.zeros_like(like, dtype=torch.float64, device="cpu") if tensor is None else tensor.detach().to("cpu", torch.float64)


def _as_float64(tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Float64 CPU leaf copies, to compute expectations (and their gradients) independently of the learner."""
    return {name: tensor.detach().to("cpu", torch.float64).clone().requires_grad_(True) for name, tensor in tensors.items()}


def _gradient_dict(loss: Tensor, leaves: Mapping[str, Tensor]) -> dict[str, Tensor]:
    grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True, retain_graph=True)
    return {name: torch.zeros_like(leaf) if grad is None else grad.detach() for (name, leaf), grad in zip(leaves.items(), grads)}


def _scalar(loss: object) -> object:
    """A one-element tensor as a 0-d tensor, so that expect_tensor reports any other shape."""
    return loss.reshape(()) if isinstance(loss, Tensor) and loss.numel() == 1 else loss


# Gated ------------------------------------------------------------------------------------

GATED_COEFFICIENTS = (0.3, 0.6, 0.15)  # one per instance, as in the comparison at the end of Part 5
GATED_PARAMETERS = {"W_enc": "W_gate (W_enc)", "b_enc": "b_gate (b_enc)", "r_mag": "r_mag", "b_mag": "b_mag", "_W_dec": "W_dec", "b_dec": "b_dec"}
AUX_DECODER = ("aux W_dec", "aux b_dec")  # what the text detaches: the decoder inside L_aux, nothing else


def _own_gated_forward(learner: object) -> Callable[..., Any]:
    forward = learner_callable(learner, "forward", owner_hint="GatedToySAE")
    if forward is inspect.getattr_static(part4.ToySAE, "forward"):
        raise CheckFailure(
            "This class has no `forward` of yours: the one it has is the L1 SAE's, inherited from ToySAE, so the method "
            "was never attached to the class. Run the exercise cell that defines it (with `@add_to_class(GatedToySAE)` "
            "right above `def forward`), then this check."
        )
    return forward


def _gated_sae() -> reference.GatedToySAE:
    coefficients = torch.tensor(GATED_COEFFICIENTS, device=get_device())
    sae = reference.GatedToySAE(part4.ToySAEConfig(n_inst=N_INST, d_in=D_IN, d_sae=D_SAE, sparsity_coeff=coefficients), _toy_model())
    _randomise(sae)
    return sae


def _encode(inputs: Tensor, W: Tensor, b: Tensor) -> Tensor:
    return torch.einsum("bid,ids->bis", inputs, W) + b


def _decode(latents: Tensor, W: Tensor, b: Tensor | float = 0.0) -> Tensor:
    return torch.einsum("bis,isd->bid", latents, W) + b


def _gated_loss(p: Mapping[str, Tensor], x: Tensor, coefficients: Tensor, eps: float, detached: Collection[str]) -> Tensor:
    """The text's total loss, with `.detach()` wherever `detached` names (the text: AUX_DECODER)."""

    def d(tensor: Tensor, where: str) -> Tensor:
        return tensor.detach() if where in detached else tensor

    W_dec_unit = p["_W_dec"] / (p["_W_dec"].norm(dim=-1, keepdim=True) + eps)
    centred = x - d(p["b_dec"], "centring b_dec")
    pi_gate = _encode(centred, p["W_enc"], p["b_enc"])
    W_mag = d(p["r_mag"], "r_mag").exp()[:, None, :] * d(p["W_enc"], "W_gate in W_mag")
    pi_mag = _encode(centred, W_mag, d(p["b_mag"], "b_mag"))
    acts = d((pi_gate > 0).double() * F.relu(pi_mag), "acts")
    h_reconstructed = _decode(acts, d(W_dec_unit, "main W_dec"), d(p["b_dec"], "main b_dec"))
    gate = F.relu(pi_gate)
    via_gate = _decode(d(gate, "gate in L_aux"), d(W_dec_unit, "aux W_dec"), d(p["b_dec"], "aux b_dec"))
    per_input = (h_reconstructed - x).pow(2).mean(-1) + coefficients * d(gate, "gate in L_sparsity").sum(-1) + (via_gate - x).pow(2).mean(-1)
    return per_input.mean(0).sum()


# Each known slip in where a Gated forward detaches: the message, and what it detaches.
GATED_GRADIENT_MISTAKES: dict[str, tuple[str, ...]] = {
    "L_aux sends gradient into the decoder: decode ReLU(π_gate) with W_dec_normalized.detach() and b_dec.detach().": (),
    "L_aux sends gradient into W_dec: detach W_dec_normalized there as well as b_dec.": ("aux b_dec",),
    "L_aux sends gradient into b_dec: detach b_dec there as well as W_dec_normalized.": ("aux W_dec",),
    "The decoder is detached in the main reconstruction too: h_reconstructed must train W_dec and b_dec; only L_aux uses detached copies.": (
        *AUX_DECODER, "main W_dec", "main b_dec"),
    "W_dec_normalized is detached in the main reconstruction too: only L_aux uses the detached decoder.": (*AUX_DECODER, "main W_dec"),
    "b_dec is detached where it is added back to the reconstruction: only L_aux uses a detached b_dec.": (*AUX_DECODER, "main b_dec"),
    "b_dec is detached where h is centred: h - b_dec must pass its gradient to b_dec.": (*AUX_DECODER, "centring b_dec"),
    "W_mag is built from a detached W_gate: the magnitude path shares W_gate's weights and must train them too.": (
        *AUX_DECODER, "W_gate in W_mag"),
    "r_mag gets no gradient: do not detach it when you build W_mag = exp(r_mag) ⊙ W_gate.": (*AUX_DECODER, "r_mag"),
    "b_mag gets no gradient: do not detach it in the magnitude path.": (*AUX_DECODER, "b_mag"),
    "ReLU(π_gate) is detached in L_aux and L_sparsity, so nothing trains the gate: detach only the decoder inside L_aux.": (
        *AUX_DECODER, "gate in L_aux", "gate in L_sparsity"),
    "ReLU(π_gate) is detached in L_aux (or L_aux is computed under no_grad): detach only the decoder there, since L_aux is what trains the gate.": (
        *AUX_DECODER, "gate in L_aux"),
    "ReLU(π_gate) is detached in L_sparsity: the penalty must reach the gate's weights.": (*AUX_DECODER, "gate in L_sparsity"),
    "`acts` is detached: the reconstruction must train the magnitude path through it.": (*AUX_DECODER, "acts"),
}


@dataclass
class _GatedExpectation:
    """What the text's forward gives on one input, in float64, and the pieces its usual mistakes are made of."""

    x: Tensor
    coefficients: Tensor
    centred: Tensor
    pi_gate: Tensor
    pi_mag: Tensor
    W_mag: Tensor
    W_dec_unit: Tensor
    p: dict[str, Tensor]

    @property
    def gate(self) -> Tensor:
        return (self.pi_gate > 0).double()

    @property
    def acts(self) -> Tensor:
        return self.gate * F.relu(self.pi_mag)

    def decode(self, latents: Tensor) -> Tensor:
        return _decode(latents, self.W_dec_unit, self.p["b_dec"])


def _gated_expectation(sae: reference.GatedToySAE, h: Tensor) -> _GatedExpectation:
    p = {name: value.detach().cpu().double() for name, value in sae.named_parameters() if not name.startswith("model.")}
    x = h.detach().cpu().double()
    W_dec_unit = p["_W_dec"] / (p["_W_dec"].norm(dim=-1, keepdim=True) + sae.cfg.weight_normalize_eps)
    centred = x - p["b_dec"]
    W_mag = p["r_mag"].exp()[:, None, :] * p["W_enc"]
    coefficients = torch.as_tensor(sae.cfg.sparsity_coeff).detach().cpu().double()
    return _GatedExpectation(
        x, coefficients, centred, _encode(centred, p["W_enc"], p["b_enc"]), _encode(centred, W_mag, p["b_mag"]), W_mag, W_dec_unit, p
    )


def _check_gated_acts(acts: object, e: _GatedExpectation) -> None:
    p, x, gate = e.p, e.x, e.gate
    batch, _, d_sae = e.pi_gate.shape
    diagnose(
        expect_tensor(acts, (batch, N_INST, d_sae), what="acts", axes="batch, inst, d_sae"),
        e.acts,
        {
            "`acts` ignores b_dec: subtract b_dec from h before both the gate and the magnitude path.": (_encode(x, p["W_enc"], p["b_enc"]) > 0).double()
            * F.relu(_encode(x, e.W_mag, p["b_mag"])),
            "The magnitude path uses h without subtracting b_dec: centre h for both paths.": gate * F.relu(_encode(x, e.W_mag, p["b_mag"])),
            "The gate uses h without subtracting b_dec: centre h for both paths.": (_encode(x, p["W_enc"], p["b_enc"]) > 0).double() * F.relu(e.pi_mag),
            "The magnitude path uses W_gate itself: scale each latent's column by exp(r_mag).": gate * F.relu(_encode(e.centred, p["W_enc"], p["b_mag"])),
            "The magnitude path multiplies by r_mag; the scale is exp(r_mag).": gate * F.relu(_encode(e.centred, p["r_mag"][:, None, :] * p["W_enc"], p["b_mag"])),
            "The magnitude path uses b_gate; it has its own bias, b_mag.": gate * F.relu(_encode(e.centred, e.W_mag, p["b_enc"])),
            "The magnitudes have no ReLU: acts is 1[π_gate > 0] · ReLU(π_mag).": gate * e.pi_mag,
            "`acts` is not gated: multiply ReLU(π_mag) by the indicator 1[π_gate > 0].": F.relu(e.pi_mag),
            "`acts` multiplies by ReLU(π_gate); the gate is the indicator 1[π_gate > 0].": F.relu(e.pi_gate) * F.relu(e.pi_mag),
        },
        otherwise="`acts` should be 1[π_gate > 0] · ReLU(π_mag), both computed from h - b_dec.",
    )


def _check_gated_reconstruction(h_reconstructed: object, e: _GatedExpectation) -> None:
    batch = e.x.shape[0]
    diagnose(
        expect_tensor(h_reconstructed, (batch, N_INST, D_IN), what="h_reconstructed", axes="batch, inst, d_in"),
        e.decode(e.acts),
        {
            "The reconstruction uses the unnormalised decoder: decode with self.W_dec_normalized.": _decode(e.acts, e.p["_W_dec"], e.p["b_dec"]),
            "The reconstruction forgets to add b_dec back after decoding.": _decode(e.acts, e.W_dec_unit),
            "The reconstruction decodes ReLU(π_gate); decode the gated activations acts.": e.decode(F.relu(e.pi_gate)),
        },
        otherwise="`h_reconstructed` should be acts @ W_dec_normalized + b_dec.",
    )


def _check_gated_terms(loss_dict: dict[str, object], e: _GatedExpectation) -> bool:
    """Check the three terms; returns whether L_sparsity already includes sparsity_coeff (both readings are fine)."""
    x, shape = e.x, tuple(e.x.shape[:2])
    reconstruction = (e.decode(e.acts) - x).pow(2)
    aux = (e.decode(F.relu(e.pi_gate)) - x).pow(2)
    diagnose(
        expect_tensor(loss_dict["L_reconstruction"], shape, what='loss_dict["L_reconstruction"]', axes="batch, inst"),
        reconstruction.mean(-1),
        {
            "L_reconstruction is summed over d_in; average it.": reconstruction.sum(-1),
            "L_reconstruction compares with h - b_dec; compare the reconstruction with h itself.": (e.decode(e.acts) - e.centred).pow(2).mean(-1),
        },
        otherwise="L_reconstruction should be the mean over d_in of (h_reconstructed - h)².",
    )
    l1 = F.relu(e.pi_gate).sum(-1)
    sparsity = expect_tensor(loss_dict["L_sparsity"], shape, what='loss_dict["L_sparsity"]', axes="batch, inst")
    scaled = close(sparsity, e.coefficients * l1)
    if not scaled:
        unscaled_mistakes = {
            "L_sparsity is the L1 of the activations; put the penalty on ReLU(π_gate), the gate.": e.acts.sum(-1),
            "L_sparsity averages over latents; the L1 norm sums over d_sae.": F.relu(e.pi_gate).mean(-1),
            "L_sparsity takes |π_gate|; the penalty is on ReLU(π_gate), so negative gate values cost nothing.": e.pi_gate.abs().sum(-1),
            "L_sparsity penalises the magnitudes ReLU(π_mag); put the penalty on ReLU(π_gate), the gate.": F.relu(e.pi_mag).sum(-1),
        }
        mistakes = [*unscaled_mistakes.items(), *((message, e.coefficients * value) for message, value in unscaled_mistakes.items())]
        diagnose_among(sparsity, l1, mistakes, otherwise="L_sparsity should be the L1 norm of ReLU(π_gate), summed over d_sae (without sparsity_coeff).")
    diagnose(
        expect_tensor(loss_dict["L_aux"], shape, what='loss_dict["L_aux"]', axes="batch, inst"),
        aux.mean(-1),
        {
            "L_aux is summed over d_in; average it.": aux.sum(-1),
            "L_aux decodes the activations; it should decode ReLU(π_gate), the gate alone.": reconstruction.mean(-1),
            "L_aux leaves out b_dec: decode ReLU(π_gate) with W_dec_normalized and add b_dec.": (_decode(F.relu(e.pi_gate), e.W_dec_unit) - x).pow(2).mean(-1),
            "L_aux uses the unnormalised decoder: decode ReLU(π_gate) with W_dec_normalized.": (_decode(F.relu(e.pi_gate), e.p["_W_dec"], e.p["b_dec"]) - x).pow(2).mean(-1),
            "L_aux decodes π_gate itself; decode ReLU(π_gate).": (e.decode(e.pi_gate) - x).pow(2).mean(-1),
            "L_aux compares with h - b_dec; compare the gate's reconstruction with h itself.": (e.decode(F.relu(e.pi_gate)) - e.centred).pow(2).mean(-1),
        },
        otherwise="L_aux should be the mean over d_in of (ReLU(π_gate) @ W_dec_normalized + b_dec - h)².",
    )
    return scaled


def _check_gated_total(loss: object, e: _GatedExpectation, *, scaled: bool) -> None:
    reconstruction = (e.decode(e.acts) - e.x).pow(2).mean(-1)
    l1 = F.relu(e.pi_gate).sum(-1)
    aux = (e.decode(F.relu(e.pi_gate)) - e.x).pow(2).mean(-1)
    per_input = reconstruction + e.coefficients * l1 + aux
    twice = (
        'sparsity_coeff is counted twice: loss_dict["L_sparsity"] already includes it, so add that term as it is.'
        if scaled
        else "The loss multiplies the sparsity term by sparsity_coeff twice; count it once."
    )
    diagnose(
        expect_tensor(_scalar(loss), (), what="loss", axes="a scalar"),
        per_input.mean(0).sum(),
        {
            "The loss leaves out L_aux.": (reconstruction + e.coefficients * l1).mean(0).sum(),
            "The loss leaves out sparsity_coeff.": (reconstruction + l1 + aux).mean(0).sum(),
            "The loss leaves out the sparsity term.": (reconstruction + aux).mean(0).sum(),
            twice: (reconstruction + e.coefficients**2 * l1 + aux).mean(0).sum(),
            "The loss is averaged over instances; sum over instances (they train independently).": per_input.mean(),
            "The loss is summed over the batch; average over the batch.": per_input.sum(),
            "sparsity_coeff multiplies the loss after summing over instances; each instance has its own, so apply it per instance.": (
                reconstruction.mean(0).sum() + e.coefficients.mean() * l1.mean(0).sum() + aux.mean(0).sum()
            ),
        },
        otherwise="The loss should be L_reconstruction + sparsity_coeff · L_sparsity + L_aux, averaged over the batch, summed over instances.",
    )


def _check_gated_gradients(sae: reference.GatedToySAE, h: Tensor, loss: Tensor) -> None:
    learner = gradients(loss, {name: getattr(sae, name) for name in GATED_PARAMETERS}, what="loss")
    leaves = _as_float64({name: getattr(sae, name) for name in GATED_PARAMETERS})
    x = h.detach().cpu().double()
    coefficients = torch.as_tensor(sae.cfg.sparsity_coeff).detach().cpu().double()

    def grads(detached: Collection[str]) -> dict[str, Tensor]:
        return _gradient_dict(_gated_loss(leaves, x, coefficients, sae.cfg.weight_normalize_eps, detached), leaves)

    expected = grads(AUX_DECODER)
    mismatch = first_gradient_mismatch(learner, expected, atol=1e-5)
    if mismatch is None:
        return
    diagnose(
        learner,
        expected,
        {message: grads(detached) for message, detached in GATED_GRADIENT_MISTAKES.items()},
        atol=1e-5,
        otherwise=(
            f"Every value is right, but the gradient of {GATED_PARAMETERS[mismatch]} is not: look for a .detach(), .data or "
            "torch.no_grad() on a path that should train it (the text detaches only the decoder inside L_aux)."
        ),
    )


def _check_gated_case(forward: Callable[..., Any], sae: reference.GatedToySAE, h: Tensor) -> None:
    expectation = _gated_expectation(sae, h)
    result = call_learner(forward, sae, h.clone(), what="forward")
    if not isinstance(result, tuple) or len(result) != 4:
        raise CheckFailure("`forward` should return a tuple of four things: (loss_dict, loss, acts, h_reconstructed).")
    loss_dict, loss, acts, h_reconstructed = result
    if not isinstance(loss_dict, dict) or set(loss_dict) != {"L_reconstruction", "L_sparsity", "L_aux"}:
        raise CheckFailure('`loss_dict` should have exactly the keys "L_reconstruction", "L_sparsity" and "L_aux".')
    _check_gated_acts(acts, expectation)
    _check_gated_reconstruction(h_reconstructed, expectation)
    scaled = _check_gated_terms(loss_dict, expectation)
    _check_gated_total(loss, expectation, scaled=scaled)
    _check_gated_gradients(sae, h, loss)


GATE_MARGIN = 1e-3  # far beyond float32 rounding, so no gate opens in one implementation and not another (the suite checks it)


def _gated_cases(batches: tuple[int, ...] = (64, 1)) -> list[tuple[reference.GatedToySAE, Tensor]]:
    """Random SAEs with inputs whose π_gate and π_mag all keep clear of 0 (twice the inputs drawn, the clearest kept)."""
    cases = []
    for batch in batches:
        sae = _gated_sae()
        h = torch.randn(2 * batch, N_INST, D_IN, device=sae.W_enc.device)
        e = _gated_expectation(sae, h)
        margin = torch.minimum(e.pi_gate.abs(), e.pi_mag.abs()).amin(dim=(1, 2))
        clearest = margin.argsort(descending=True)[:batch].sort().values
        cases.append((sae, h[clearest.to(h.device)]))
    return cases


@check("GatedToySAE.forward")
def test_gated_forward(learner: object) -> str:
    forward = _own_gated_forward(learner)
    cases = _gated_cases()  # drawn before the learner's code runs, so random numbers it draws change nothing
    for sae, h in cases:
        _check_gated_case(forward, sae, h)
    return "gate, magnitudes, all three loss terms, and the gradient of every parameter (a batch of one too)"


# JumpReLU ---------------------------------------------------------------------------------


def _autograd_function(thing: object, name: str) -> type[torch.autograd.Function]:
    if isinstance(thing, torch.autograd.Function):
        raise CheckFailure(f"Pass the class `{name}` itself, not an instance of it: `test_{name.lower()}({name})`.")
    if not (isinstance(thing, type) and issubclass(thing, torch.autograd.Function)):
        raise CheckFailure(f"Pass your `{name}` class itself (a torch.autograd.Function subclass), e.g. `test_{name.lower()}({name})`.")
    return thing


def _apply(function: type[torch.autograd.Function]) -> Callable[[Tensor, Tensor, float], Tensor]:
    def forward(z: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:  # named like the learner's, for the snapshot
        return function.apply(z, threshold, bandwidth)

    return forward


def _autograd_refusal(error: RuntimeError, name: str) -> str | None:
    """What autograd refused in the learner's backward, in one sentence; None for anything else."""
    text = str(error)
    if "returned a gradient different than None at position 3" in text:
        return f"`{name}.backward` returns a gradient for bandwidth, which is a plain number: return None in its place (autograd accepts nothing else there)."
    if "incorrect number of gradients" in text:
        return f"`{name}.backward` must return one gradient per input of forward, three in all: for z, for threshold, and None for bandwidth."
    shape = re.search(r"invalid gradient at index (\d+) - got \[(.*?)\] but expected shape compatible with \[(.*?)\]", text)
    if shape:
        argument = {"0": "z", "1": "threshold"}.get(shape.group(1), "an input")
        return (
            f"`{name}.backward` returns a gradient for {argument} of shape [{shape.group(2)}], which autograd cannot sum to "
            f"{argument}'s shape [{shape.group(3)}]: sum over the batch dimensions only (e.g. `.sum_to_size(threshold.shape)`)."
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
    hand = _StepCase("the hand-checkable case", torch.tensor([1.0, 1.4, 1.6, 2.0], **f64), torch.tensor(1.5, **f64), 0.5, torch.ones(4, **f64))
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
    per_latent = _StepCase(
        "a batch with one θ per latent and instance",
        threshold + (torch.rand(10, N_INST, D_SAE, **f64) - 0.5) * 0.8,
        threshold,
        0.2,
        torch.randn(10, N_INST, D_SAE, **f64),
    )
    single = torch.rand(5, **f64) * 0.4 + 0.2
    one_sae = _StepCase(
        "one SAE without instances (θ of shape [d_sae])", single + (torch.rand(12, 5, **f64) - 0.5), single, 0.25, torch.randn(12, 5, **f64)
    )
    one_input = _StepCase(
        "a batch of one input", threshold + (torch.rand(1, N_INST, D_SAE, **f64) - 0.5) * 0.8, threshold, 0.2, torch.randn(1, N_INST, D_SAE, **f64)
    )
    return [hand, edges, per_latent, one_sae, one_input]


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


def _step_expectation(z: Tensor, threshold: Tensor, bandwidth: float, upstream: Tensor, *, jump: bool) -> _StepExpectation:
    active = (z > threshold).double()
    scale = threshold if jump else torch.ones_like(threshold)
    grad_threshold = _reduce_to(-(scale / bandwidth) * _kernel(z, threshold, bandwidth) * upstream, threshold)
    grad_z = active * upstream if jump else torch.zeros_like(z)
    return _StepExpectation(z * active if jump else active, grad_z, grad_threshold)


def _check_step_forward(output: Tensor, case: _StepCase, name: str, *, jump: bool) -> None:
    z, threshold = case.z, case.threshold
    active, at_or_above = (z > threshold).double(), (z >= threshold).double()
    at_theta = f"{name} fires at z = θ; the step is 1 only where z > θ (strictly), so use > rather than >=."
    if jump:
        mistakes = {
            f"{name} returns H(z - θ); it should return z · H(z - θ).": active,
            at_theta: z * at_or_above,
            f"{name} zeroes only negative pre-activations, as a ReLU would; it should zero every z that is not above θ.": F.relu(z),
            f"{name} subtracts θ from the values it keeps; it should pass z unchanged where z > θ.": (z - threshold) * active,
        }
    else:
        mistakes = {
            f"{name} returns z · H(z - θ); the Heaviside step returns just H(z - θ) (0 or 1).": z * active,
            at_theta: at_or_above,
            f"{name} is 1 below θ; H(z - θ) is 1 where z > θ.": (z < threshold).double(),
        }
    diagnose(
        output,
        _step_expectation(z, threshold, case.bandwidth, case.upstream, jump=jump).output,
        mistakes,
        otherwise=f"{name}'s forward is wrong on {case.description}: it should be {'z · ' if jump else ''}1[z > θ].",
    )


def _check_step_grad_z(grad_z: Tensor, case: _StepCase, name: str, *, jump: bool) -> None:
    z, threshold, bandwidth, upstream = case.z, case.threshold, case.bandwidth, case.upstream
    kernel = _kernel(z, threshold, bandwidth)
    active = (z > threshold).double()
    if not jump:
        diagnose(
            grad_z,
            torch.zeros_like(z),
            {
                "Heaviside passes grad_output through to z; its pseudo-derivative in z is 0 (return None or zeros for z).": upstream,
                "Heaviside passes the kernel's pseudo-derivative to z; in this method ∂H/∂z = 0 and only θ gets one (return None or zeros for z).": (
                    kernel / bandwidth * upstream
                ),
            },
            otherwise="Heaviside passes a gradient to z; its pseudo-derivative in z is 0 (return None or zeros).",
        )
        return
    kernel_term = "JumpReLU adds a kernel term to ∂/∂z; in this method ∂JumpReLU/∂z is H(z - θ) alone (the kernel is for θ)."
    diagnose_among(
        grad_z,
        active * upstream,
        [
            ("JumpReLU passes the gradient to z everywhere; ∂/∂z is H(z - θ): only where z > θ.", upstream),
            ("JumpReLU passes no gradient to z; ∂/∂z is H(z - θ), so grad_output goes through where z > θ.", torch.zeros_like(z)),
            ("JumpReLU's gradient for z ignores grad_output: multiply H(z - θ) by it.", active),
            ("JumpReLU lets the gradient through wherever z > 0, as a ReLU would; ∂/∂z is H(z - θ), only where z > θ.", (z > 0).double() * upstream),
            ("JumpReLU lets the gradient to z through at z = θ; H(0) = 0, so use z > θ rather than >=.", (z >= threshold).double() * upstream),
            *((kernel_term, (active + factor / bandwidth * kernel) * upstream) for factor in (z, threshold)),
        ],
        otherwise="JumpReLU's gradient for z should be H(z - θ) · grad_output.",
    )


def _batch_divisors(z: Tensor, threshold: Tensor) -> set[int]:
    """Every count a learner might average θ's gradient over instead of summing."""
    return {n for n in (z.shape[0] if z.dim() else 1, z.numel() // max(1, threshold.numel()), z.numel()) if n > 1}


def _check_step_grad_threshold(grad_threshold: Tensor, case: _StepCase, name: str, *, jump: bool) -> None:
    z, threshold, bandwidth, upstream = case.z, case.threshold, case.bandwidth, case.upstream
    scale = threshold if jump else torch.ones_like(threshold)
    expected = _step_expectation(z, threshold, bandwidth, upstream, jump=jump).grad_threshold

    def pseudo(factor: Tensor | float, kernel: Tensor, grad: Tensor = upstream) -> Tensor:
        return _reduce_to(-factor * kernel * grad, threshold)

    kernel = _kernel(z, threshold, bandwidth)
    formula = "-(θ/ε)·K((z-θ)/ε)" if jump else "-(1/ε)·K((z-θ)/ε)"
    mistakes = {
        f"The threshold gradient has the wrong sign: it is {formula}, negative inside the window.": -expected,
        "The kernel is twice too wide: K(u) is 1 for -1/2 < u < 1/2 with u = (z - θ)/ε, i.e. |z - θ| < ε/2.": pseudo(
            scale / bandwidth, _kernel(z, threshold, bandwidth, half_width=1.0)
        ),
        "The kernel is evaluated at z - θ; its argument is u = (z - θ)/ε, so it is 1 where |z - θ| < ε/2.": pseudo(
            scale / bandwidth, _kernel(z, threshold, 1.0)
        ),
        "K is 1 only on the open interval -1/2 < u < 1/2: an input exactly ε/2 from θ gets no gradient (use <, not <=).": pseudo(
            scale / bandwidth, _kernel(z, threshold, bandwidth, closed=True)
        ),
        "The threshold gradient is missing the 1/ε factor.": pseudo(scale, kernel),
        "The threshold gradient multiplies by ε; the factor is 1/ε.": pseudo(scale * bandwidth, kernel),
        "The threshold gradient ignores grad_output: multiply by the gradient flowing in.": pseudo(scale / bandwidth, kernel, torch.ones_like(upstream)),
        f"{name} returns no gradient for threshold; it should be {formula} · grad_output, summed over the batch.": torch.zeros_like(expected),
    }
    averaged = "The threshold gradient is averaged over the batch; sum over the batch instead (θ is shared by every input, so each one adds its pull)."
    mistakes_by_divisor = [(averaged, expected / divisor) for divisor in sorted(_batch_divisors(z, threshold))]
    if jump:
        mistakes["JumpReLU's threshold gradient uses 1/ε; it is -(θ/ε)·K((z-θ)/ε)."] = pseudo(1 / bandwidth, kernel)
        mistakes["JumpReLU's threshold gradient uses z/ε; the factor is θ/ε: -(θ/ε)·K((z-θ)/ε)."] = pseudo(z / bandwidth, kernel)
    else:
        mistakes["The Heaviside threshold gradient has a θ factor, which belongs to JumpReLU; ∂H/∂θ is -(1/ε)·K((z-θ)/ε)."] = pseudo(threshold / bandwidth, kernel)
    diagnose_among(
        grad_threshold,
        expected,
        [*mistakes_by_divisor, *mistakes.items()],  # averaging first: where a slip gives the same numbers, it is the likelier
        otherwise=f"{name}'s threshold gradient is wrong on {case.description}: it should be {formula} · grad_output, summed over the batch.",
    )


def _run_step(function: type[torch.autograd.Function], case: _StepCase, name: str) -> tuple[Tensor, Tensor, Tensor]:
    z = case.z.clone().requires_grad_(True)
    threshold = case.threshold.clone().requires_grad_(True)
    output = call_learner(_apply(function), z, threshold, case.bandwidth, what=f"{name}.forward")
    output_64 = expect_tensor(output, tuple(case.z.shape), what=f"{name}.forward", axes="the shape of z")
    if not output.requires_grad:
        raise CheckFailure(f"`{name}.apply` returns a tensor without a gradient: do not mark forward's output non-differentiable.")
    _run_backward([output], [case.upstream.clone()], {"z": z, "threshold": threshold}, name)
    return output_64, _float64(z.grad, z), _float64(threshold.grad, threshold)


def _two_calls() -> list[_StepCase]:
    f64 = {"dtype": torch.float64}
    calls = []
    for bandwidth in (0.2, 0.3):
        threshold = torch.rand(N_INST, D_SAE, **f64) * 0.4 + 0.2
        z = threshold + (torch.rand(6, N_INST, D_SAE, **f64) - 0.5) * 0.8
        calls.append(_StepCase("two calls", z, threshold, bandwidth, torch.randn(6, N_INST, D_SAE, **f64)))
    return calls


def _check_two_calls(function: type[torch.autograd.Function], calls: list[_StepCase], name: str, *, jump: bool) -> None:
    """Two forward calls before one backward, as when an SAE uses the function twice: each call's own values count."""
    leaves = [(case.z.clone().requires_grad_(True), case.threshold.clone().requires_grad_(True)) for case in calls]
    outputs = [call_learner(_apply(function), z, threshold, case.bandwidth, what=f"{name}.forward") for (z, threshold), case in zip(leaves, calls)]
    inputs = {"z": leaves[0][0], "threshold": leaves[0][1], "z of the second call": leaves[1][0], "threshold of the second call": leaves[1][1]}
    _run_backward(outputs, [case.upstream.clone() for case in calls], inputs, name)
    first, second = calls
    actual = {"z": _float64(leaves[0][0].grad, first.z), "threshold": _float64(leaves[0][1].grad, first.threshold)}

    def gradients_of_first(z: Tensor, threshold: Tensor, bandwidth: float) -> dict[str, Tensor]:
        e = _step_expectation(z, threshold, bandwidth, first.upstream, jump=jump)
        return {"z": e.grad_z, "threshold": e.grad_threshold}

    stale = (
        f"`{name}.backward` used what a later forward call stored: keep what backward needs on ctx (ctx.save_for_backward, "
        "ctx.bandwidth), not on the class or in a global."
    )
    diagnose_among(
        actual,
        gradients_of_first(first.z, first.threshold, first.bandwidth),
        [
            (stale, gradients_of_first(second.z, second.threshold, first.bandwidth)),
            (stale, gradients_of_first(second.z, second.threshold, second.bandwidth)),
            (
                f"`{name}.backward` used the bandwidth of a later forward call: store it on ctx (ctx.bandwidth = bandwidth), "
                "not on the class or in a global.",
                gradients_of_first(first.z, first.threshold, second.bandwidth),
            ),
        ],
        otherwise=f"{name} gives the first call the wrong gradients when forward runs twice before backward: keep each call's values on its own ctx.",
    )


def _check_autograd_function(function: type[torch.autograd.Function], name: str, *, jump: bool) -> None:
    cases, calls = _step_cases(), _two_calls()  # drawn before the learner's code runs
    for case in cases:
        output, grad_z, grad_threshold = _run_step(function, case, name)
        _check_step_forward(output, case, name, jump=jump)
        _check_step_grad_z(grad_z, case, name, jump=jump)
        _check_step_grad_threshold(grad_threshold, case, name, jump=jump)
    _check_two_calls(function, calls, name, jump=jump)


@check("Heaviside")
def test_heaviside(learner: object) -> str:
    _check_autograd_function(_autograd_function(learner, "Heaviside"), "Heaviside", jump=False)
    return "forward, zero gradient to z, rectangle-kernel gradient to θ summed over the batch, for every shape of θ"


@check("JumpReLU")
def test_jumprelu(learner: object) -> str:
    _check_autograd_function(_autograd_function(learner, "JumpReLU"), "JumpReLU", jump=True)
    return "forward, H(z - θ) gradient to z, -(θ/ε)K gradient to θ summed over the batch, for every shape of θ"


# remove_parallel_component ----------------------------------------------------------------

# The published training normalises each decoder row as v / (‖v‖ + 1e-6) and projects with that; the
# training loop does the normalising and hands the result in, so the exercise uses the rows as given.
PROJECTION_EPS = reference.PUBLISHED_PROJECTION_EPS
PROJECTION_RTOL, PROJECTION_ATOL = 1e-9, 1e-12  # float64: tight enough to tell a second normalisation apart


def _rows_as_handed_in(d_sae: int, d_in: int) -> Tensor:
    """Unit rows (as after each training step) normalised once more the published way."""
    unit = F.normalize(torch.randn(d_sae, d_in, dtype=torch.float64), dim=-1)
    return unit / (unit.norm(dim=-1, keepdim=True) + PROJECTION_EPS)


def _check_projection(project: Callable[..., Any], W_dec: Tensor, grad: Tensor) -> None:
    d_sae, d_in = W_dec.shape
    output = call_learner(project, grad.clone(), W_dec.clone(), what="remove_parallel_component")
    actual = expect_tensor(output, (d_sae, d_in), what="remove_parallel_component", axes="d_sae, d_in")

    def without_parallel(rows: Tensor, times: float = 1.0) -> Tensor:
        return grad - times * (grad * rows).sum(-1, keepdim=True) * rows

    parallel = grad - without_parallel(W_dec)
    unit_rows = W_dec / W_dec.norm(dim=-1, keepdim=True)
    full_product = "You used a full matrix product, (g Wᵀ) W, which mixes every row with every other; take each gradient row's dot product with its own decoder row."
    diagnose_among(
        actual,
        without_parallel(W_dec),
        [
            ("You returned the parallel component; return the gradient minus it.", parallel),
            ("You added the parallel component; subtract it.", grad + parallel),
            ("You returned the gradient unchanged; subtract its component along each decoder row.", grad),
            ("You subtracted the parallel component twice (a reflection); subtract it once.", without_parallel(W_dec, 2.0)),
            (full_product, grad - (grad @ W_dec.T) @ W_dec),
            (full_product, grad - W_dec @ (W_dec.T @ grad)),
            ("The dot product runs over the wrong axis: take g · w along each row (over d_in).", grad - (grad * W_dec).sum(0, keepdim=True) * W_dec),
            ("You subtracted the dot product itself; subtract (g · w) times the row w.", grad - (grad * W_dec).sum(-1, keepdim=True)),
            (
                "You normalise the rows again: they arrive already normalised as v / (‖v‖ + 1e-6), the published way, and "
                "normalising them to exactly 1 changes the result (by about 1e-6): use W_dec as given.",
                without_parallel(unit_rows),
            ),
            (
                "You normalise W_dec over d_sae (its columns); the rows arrive already normalised: use W_dec as given.",
                without_parallel(W_dec / W_dec.norm(dim=0, keepdim=True)),
            ),
        ],
        rtol=PROJECTION_RTOL,
        atol=PROJECTION_ATOL,
        otherwise="Each row should become g - (g · w) w, with w the decoder row as given and g its gradient row.",
    )


@check("remove_parallel_component")
def test_remove_parallel_component(learner: object) -> str:
    project = learner_function(learner, "remove_parallel_component")
    # Square too: there a transpose no longer fails on shape. Inputs are drawn before the learner's code runs.
    cases = [(_rows_as_handed_in(d_sae, D_IN), torch.randn(d_sae, D_IN, dtype=torch.float64)) for d_sae in (D_SAE, D_IN)]
    for W_dec, grad in cases:
        _check_projection(project, W_dec, grad)
    return "each gradient row made orthogonal to its decoder row, as a new tensor"


# Reference parity -------------------------------------------------------------------------


def _to_torch(params: jumprelu_numpy.JumpReLUParams) -> dict[str, Tensor]:
    return {name: torch.from_numpy(np.array(getattr(params, name))) for name in ("W_enc", "b_enc", "W_dec", "b_dec", "log_threshold")}


def build_jumprelu_sae(
    params: jumprelu_numpy.JumpReLUParams,
    *,
    bandwidth: float,
    sparsity_coefficient: float,
    use_pre_encoder_bias: bool,
    jumprelu: type[torch.autograd.Function] = reference.JumpReLU,
    heaviside: type[torch.autograd.Function] = reference.Heaviside,
) -> reference.JumpReLUSAE:
    """The torch JumpReLU SAE (float64) with the given parameters and autograd functions."""
    return reference.JumpReLUSAE(
        **_to_torch(params),
        bandwidth=bandwidth,
        sparsity_coefficient=sparsity_coefficient,
        use_pre_encoder_bias=use_pre_encoder_bias,
        jumprelu=jumprelu,
        heaviside=heaviside,
    )


def published_comparison(jumprelu: type[torch.autograd.Function], heaviside: type[torch.autograd.Function]) -> dict[str, float]:
    """Largest absolute difference from each published value, running the case through the given functions."""
    case = jumprelu_numpy.reference_setup()
    sae = build_jumprelu_sae(case.params, bandwidth=case.bandwidth, sparsity_coefficient=case.sparsity_coefficient, use_pre_encoder_bias=case.use_pre_encoder_bias, jumprelu=jumprelu, heaviside=heaviside)
    loss, reconstruction, pre_acts = sae(torch.from_numpy(case.data[0]))
    loss.backward()
    ours = {
        "dataset[::13001]": torch.from_numpy(case.data).ravel()[::13001],
        "reconstruction[::5001]": reconstruction.detach().ravel()[::5001],
        "pre-activations[::40001]": pre_acts.detach().ravel()[::40001],
        "loss": loss.detach().reshape(1),
        "grad b_dec[::7]": sae.b_dec.grad[::7],
        "grad b_enc[::37]": sae.b_enc.grad[::37],
        "grad log θ[::37]": sae.log_threshold.grad[::37],
        "grad W_dec[::601]": sae.W_dec.grad.ravel()[::601],
        "grad W_enc[::601]": sae.W_enc.grad.ravel()[::601],
    }
    return {key: (ours[key].double() - torch.tensor(PUBLISHED[key], dtype=torch.float64)).abs().max().item() for key in PUBLISHED}


def training_comparison(
    data: np.ndarray,
    params: jumprelu_numpy.JumpReLUParams,
    *,
    lr: float,
    bandwidth: float,
    sparsity_coefficient: float,
    use_pre_encoder_bias: bool,
    fixed_decoder_norms: bool,
    jumprelu: type[torch.autograd.Function] = reference.JumpReLU,
    heaviside: type[torch.autograd.Function] = reference.Heaviside,
    project: Any = reference.remove_parallel_component,
    projection_eps: float = jumprelu_numpy.PROJECTION_EPS,
) -> dict[str, float]:
    """Train one step per batch in torch (autograd) and in NumPy (hand-derived, the published procedure
    with `projection_eps`); the largest difference in each parameter."""
    options = {"bandwidth": bandwidth, "sparsity_coefficient": sparsity_coefficient, "use_pre_encoder_bias": use_pre_encoder_bias}
    sae = build_jumprelu_sae(params, **options, jumprelu=jumprelu, heaviside=heaviside)
    reference.train_jumprelu_sae(sae, torch.from_numpy(data), lr=lr, fixed_decoder_norms=fixed_decoder_norms, project=project)
    independent = jumprelu_numpy.train(params, data, lr=lr, fixed_decoder_norms=fixed_decoder_norms, projection_eps=projection_eps, **options)
    return {name: np.abs(getattr(sae, name).detach().numpy() - getattr(independent, name)).max() for name in ("W_enc", "b_enc", "W_dec", "b_dec", "log_threshold")}


PARITY_HINTS = {
    "reconstruction": "your JumpReLU forward (z · 1[z > θ])",
    "pre-activations": "nothing of yours: check that part_utils is unmodified",
    "loss": "your Heaviside forward (the L0 count)",
    "log θ": "the threshold pseudo-derivatives of JumpReLU and Heaviside",
    "b_enc": "JumpReLU's gradient to z",
    "W_enc": "JumpReLU's gradient to z",
    "W_dec": "your JumpReLU forward",
    "b_dec": "JumpReLU's gradient to z",
}


@check("reference parity (Google DeepMind's JumpReLU)")
def test_reference_parity(jumprelu: object, heaviside: object, project: object) -> str:
    jumprelu_fn = _autograd_function(jumprelu, "JumpReLU")
    heaviside_fn = _autograd_function(heaviside, "Heaviside")
    project_fn = learner_function(project, "remove_parallel_component")
    differences = call_learner(published_comparison, jumprelu_fn, heaviside_fn, what="the JumpReLU SAE with your functions")
    print(f"{'published value':<26} largest |difference|")
    for key, difference in differences.items():
        print(f"{key:<26} {difference:.1e}")
    for key, difference in differences.items():
        if not difference <= PUBLISHED_TOLERANCE:
            hint = next((text for word, text in PARITY_HINTS.items() if word in key), "your functions")
            raise CheckFailure(f"`{key}` differs from the published value by {difference:.2e} (> {PUBLISHED_TOLERANCE:g}); look at {hint}.")
    case = jumprelu_numpy.reference_setup()
    options = {
        "lr": 1e-3,
        "bandwidth": case.bandwidth,
        "sparsity_coefficient": case.sparsity_coefficient,
        "use_pre_encoder_bias": case.use_pre_encoder_bias,
        "fixed_decoder_norms": True,
        "jumprelu": jumprelu_fn,
        "heaviside": heaviside_fn,
        "project": project_fn,
    }
    training = call_learner(training_comparison, case.data, case.params, **options, what="three training steps with fixed decoder norms")
    worst = max(training.values())
    print(f"{'3 training steps vs NumPy':<26} {worst:.1e}")
    if not worst <= TRAINING_TOLERANCE:
        without_eps = call_learner(training_comparison, case.data, case.params, **options, projection_eps=0.0, what="three training steps with fixed decoder norms")
        if max(without_eps.values()) <= TRAINING_TOLERANCE:
            raise CheckFailure(
                "Your training matches the procedure without the published 1e-6 in the row normalisation: "
                "remove_parallel_component must use the rows as given, not normalise them again."
            )
        raise CheckFailure(f"After three training steps with fixed decoder norms the parameters differ from the independent run by {worst:.2e}; look at remove_parallel_component.")
    return f"all {len(PUBLISHED)} published values within {PUBLISHED_TOLERANCE:g}, three training steps within {TRAINING_TOLERANCE:g}"


# TopK and AuxK ----------------------------------------------------------------------------


def _keep_top(values: Tensor, k: int, *, dim: int = -1, largest: bool = True, rank_by: Tensor | None = None) -> Tensor | None:
    """The k entries of `values` ranked highest (by `rank_by`) along `dim`, zeros elsewhere; None if k does not fit."""
    ranking = values if rank_by is None else rank_by
    if not 0 <= k <= values.shape[dim]:
        return None
    indices = ranking.topk(k, dim=dim, largest=largest).indices
    return torch.zeros_like(values).scatter(dim, indices, values.gather(dim, indices))


def _topk_mistakes(x: Tensor, k: int) -> list[tuple[str, Tensor | None]]:
    batch, n_inst, d_sae = x.shape
    across = _keep_top(x.reshape(batch, 1, n_inst * d_sae), k)
    return [
        ("TopK keeps negative values: apply a ReLU to the k kept pre-activations.", _keep_top(x, k)),
        ("TopK keeps k - 1 values per input (a strict > against the k-th largest, or topk(k - 1)): keep exactly k.", F.relu(_keep_top(x, k - 1))),
        ("TopK keeps k + 1 values per input: keep exactly k.", F.relu(_keep_top(x, k + 1)) if k < d_sae else None),
        ("The top k are taken over the batch; take them over d_sae, for each input.", F.relu(_keep_top(x, k, dim=0)) if k <= batch and batch > 1 else None),
        ("The top k are taken over instances; take them over d_sae, for each input and instance.", F.relu(_keep_top(x, k, dim=1)) if k <= n_inst and n_inst > 1 else None),
        (
            "The top k are taken across all instances of an input at once; take them over d_sae within each instance.",
            F.relu(across.reshape(batch, n_inst, d_sae)) if n_inst > 1 and across is not None else None,
        ),
        ("You kept the k smallest values; keep the k largest.", F.relu(_keep_top(x, k, largest=False))),
        ("You ranked by absolute value; rank the pre-activations themselves.", F.relu(_keep_top(x, k, rank_by=x.abs()))),
    ]


def _check_kept_gradient(output: Tensor, leaf: Tensor, expected: Tensor, *, what: str) -> None:
    """The gradient reaching the input must be grad_output at the kept (positive) entries and 0 elsewhere."""
    require_gradient(output, what=what, towards="pre_acts")
    upstream = torch.randn(output.shape, dtype=torch.float64).to(output.device, output.dtype)
    grad = gradients((output * upstream).sum(), {"pre_acts": leaf}, what=f"{what}(...) weighted by a random grad_output")["pre_acts"]
    kept = (expected > 0).double()
    diagnose(
        grad,
        kept * upstream.cpu().double(),
        {
            f"The gradient of `{what}` reaches every pre-activation (a straight-through trick?); it should reach only the kept positive ones.": upstream.cpu().double(),
            f"No gradient reaches pre_acts through `{what}`: build the output from pre_acts itself, not from detached values.": torch.zeros_like(grad),
        },
        otherwise=f"The gradient of `{what}` should be grad_output at the kept positive entries and 0 elsewhere: keep pre_acts' own values there.",
    )


@dataclass
class _TopKCase:
    description: str
    shape: tuple[int, int, int]
    k: int


TOPK_CASES = [
    _TopKCase("", (16, 5, 9), 3),
    _TopKCase(" on a batch of one input with one instance (k = 1)", (1, 1, 6), 1),
    _TopKCase(" with k = d_sae (every positive value kept)", (8, 2, 4), 4),
]


@check("topk_activation")
def test_topk_activation(learner: object) -> str:
    function = learner_function(learner, "topk_activation")
    inputs = [torch.randn(case.shape) - 0.8 for case in TOPK_CASES]  # many inputs have negative values among their top k
    for case, pre_acts in zip(TOPK_CASES, inputs):
        leaf, learner_input = handed_in(pre_acts.to(get_device()))
        output = call_learner(function, learner_input, case.k, what="topk_activation")
        actual = expect_tensor(output, case.shape, what="topk_activation", axes="batch, inst, d_sae")
        x = pre_acts.double()
        expected = F.relu(_keep_top(x, case.k))
        diagnose_among(
            actual,
            expected,
            [(message, wrong) for message, wrong in _topk_mistakes(x, case.k) if wrong is not None],
            otherwise=f"Each input should keep its k largest pre-activations (ReLU applied) and zero the rest{case.description}.",
        )
        _check_kept_gradient(output, leaf, expected, what="topk_activation")
    return "k largest per input, ReLU on the kept values, zeros elsewhere, gradient only through the kept values, input left unchanged"


def _topk_sae() -> reference.TopKToySAE:
    sae = reference.TopKToySAE(reference.TopKToySAEConfig(n_inst=N_INST, d_in=D_IN, d_sae=D_SAE, k=2, k_aux=3), _toy_model())
    _randomise(sae)
    return sae


def _auxk(
    x: Tensor,
    target: Tensor,
    W: Tensor,
    b_dec: Tensor,
    dead: Tensor,
    k_aux: int,
    *,
    select: Tensor | None = None,
    relu: bool = True,
    bias: bool = False,
    clamp: bool = True,
    scale: str = "per instance",
    mean: bool = True,
    dim: int = -1,
) -> Tensor:
    """AuxK as the text defines it (float64, differentiable), or with one deliberate change."""
    pool = dead if select is None else select
    masked = x.masked_fill(~pool, -torch.inf)
    top = masked.topk(min(k_aux, x.shape[dim]), dim=dim)
    values = F.relu(top.values) if relu else torch.where(torch.isinf(top.values), 0.0, top.values)
    latents = torch.zeros_like(x).scatter(dim, top.indices, values)
    error = (_decode(latents, W, b_dec if bias else 0.0) - target).pow(2)
    error = error.mean(-1) if mean else error.sum(-1)
    counts = {"per instance": dead.sum(-1).double(), "over all instances": dead.sum().double().expand(dead.shape[0])}
    if scale == "none":
        return error
    factor = counts[scale] / k_aux
    return error * (factor.clamp(max=1.0) if clamp else factor)


def _auxk_value_mistakes(x: Tensor, target: Tensor, W: Tensor, W_raw: Tensor, b_dec: Tensor, dead: Tensor, k: int, k_aux: int) -> list[tuple[str, Tensor]]:
    def aux(**change: Any) -> Tensor:
        inputs = {"x": x, "target": target, "W": W, "b_dec": b_dec, "dead": dead, "k_aux": k_aux}
        inputs.update({key: change.pop(key) for key in list(change) if key in inputs})
        return _auxk(**inputs, **change).detach()

    return [
        ("AuxK uses live latents too: take the top k_aux among dead latents only.", aux(select=torch.ones_like(dead))),
        ("AuxK uses the live latents instead of the dead ones: pick among latents where `dead` is True.", aux(select=~dead)),
        ("AuxK adds b_dec: decode the residual without the bias.", aux(bias=True)),
        ("AuxK keeps negative pre-activations: apply a ReLU to the chosen values.", aux(relu=False)),
        ("The residual's sign is flipped: AuxK reconstructs e = h - h_reconstructed.", aux(target=-target)),
        ("AuxK decodes with the unnormalised decoder: use self.W_dec_normalized.", aux(W=W_raw)),
        ("AuxK picks cfg.k latents; it picks the top k_aux (self.cfg.k_aux) dead latents.", aux(k_aux=k) if k != k_aux else aux()),
        ("The scale n_dead / k_aux must be capped at 1.", aux(clamp=False)),
        ("The loss is not scaled by min(n_dead / k_aux, 1).", aux(scale="none")),
        ("n_dead is counted over all instances; count the dead latents of each instance separately.", aux(scale="over all instances")),
        ("The error is summed over d_in; average it.", aux(mean=False)),
        ("The top k_aux are taken over the batch; take them over d_sae, for each input.", aux(dim=0)),
    ]


@dataclass
class _AuxKCase:
    description: str
    dead: list[list[int]]  # the dead latents of each instance


AUXK_CASES = [
    _AuxKCase("one dead latent in each of two instances (fewer than k_aux in all)", [[2], [5], []]),
    _AuxKCase("one dead latent, more dead latents than k_aux, and none at all", [[4], [0, 2, 3, 5, 6], []]),
    _AuxKCase("exactly k_aux dead latents, every latent dead, and two dead", [[1, 3, 5], list(range(D_SAE)), [0, 6]]),
]


@dataclass
class _AuxKInputs:
    case: _AuxKCase
    sae: reference.TopKToySAE
    dead: Tensor
    pre_acts: Tensor
    h: Tensor
    h_reconstructed: Tensor


def _auxk_inputs(case: _AuxKCase) -> _AuxKInputs:
    dead = torch.zeros(N_INST, D_SAE, dtype=torch.bool)
    for instance, latents in enumerate(case.dead):
        dead[instance, latents] = True
    sae = _topk_sae()
    return _AuxKInputs(case, sae, dead, torch.randn(32, N_INST, D_SAE) + 0.3, torch.randn(32, N_INST, D_IN), torch.randn(32, N_INST, D_IN))


def _reject_nan_from_placeholders(result: object, dead: Tensor, k_aux: int) -> None:
    """NaN only where topk has to pick masked-out latents (fewer than k_aux dead) comes from the -inf placeholders."""
    if not (isinstance(result, Tensor) and result.shape == (32, N_INST)) or torch.isfinite(result).all():
        return
    enough_dead = (dead.sum(-1) >= k_aux).to(result.device)
    if torch.isfinite(result[:, enough_dead]).all():
        raise CheckFailure(
            "auxk_loss gives NaN or inf for an instance with fewer than k_aux dead latents (or none, where it should be 0): "
            "the -inf placeholders that topk picks there must not reach a product, so ReLU them, or replace them by 0, before decoding."
        )


def _check_auxk_case(function: Callable[..., Any], inputs: _AuxKInputs) -> None:
    sae, dead = inputs.sae, inputs.dead
    device = sae.W_enc.device
    pre_leaf, pre_in = handed_in(inputs.pre_acts.to(device))
    rec_leaf, rec_in = handed_in(inputs.h_reconstructed.to(device))
    result = call_learner(function, sae, pre_in, inputs.h.clone().to(device), rec_in, dead.clone().to(device), what="auxk_loss")
    _reject_nan_from_placeholders(result, dead, sae.cfg.k_aux)
    actual = expect_tensor(result, (32, N_INST), what="auxk_loss", axes="batch, inst")

    k_aux = sae.cfg.k_aux
    leaves = _as_float64({"pre_acts": inputs.pre_acts, "h_reconstructed": inputs.h_reconstructed, "W_dec": sae._W_dec})
    W = leaves["W_dec"] / (leaves["W_dec"].norm(dim=-1, keepdim=True) + sae.cfg.weight_normalize_eps)
    b_dec = sae.b_dec.detach().cpu().double()
    residual = inputs.h.double() - leaves["h_reconstructed"]
    expected = _auxk(leaves["pre_acts"], residual.detach(), W, b_dec, dead, k_aux)
    x, target = leaves["pre_acts"].detach(), residual.detach()
    diagnose_among(
        actual,
        expected.detach(),
        _auxk_value_mistakes(x, target, W.detach(), leaves["W_dec"].detach(), b_dec, dead, int(sae.cfg.k), k_aux),
        otherwise=(
            f"auxk_loss is wrong with {inputs.case.description}: it should be the mean over d_in of (ê - e)², ê decoded from "
            "the top k_aux dead pre-activations (ReLU applied), scaled by min(n_dead / k_aux, 1) per instance."
        ),
    )
    require_gradient(result, what="auxk_loss", towards="the dead latents' pre-activations")
    weights = torch.rand(result.shape, dtype=torch.float64) + 0.5
    learner = gradients(
        (result * weights.to(result.device, result.dtype)).sum(),
        {"pre_acts": pre_leaf, "h_reconstructed": rec_leaf, "W_dec": sae._W_dec},
        what="auxk_loss (weighted)",
    )
    if not all(torch.isfinite(grad).all() for grad in learner.values()):
        raise CheckFailure("auxk_loss's gradient has NaN or inf values (often -inf placeholders multiplied by 0): keep them out of every product.")
    expected_grads = _gradient_dict((expected * weights).sum(), leaves)
    undetached = _auxk(leaves["pre_acts"], residual, W, b_dec, dead, k_aux)
    live = (~dead).expand_as(expected_grads["pre_acts"])
    diagnose_among(
        learner,
        expected_grads,
        [
            ("AuxK sends gradient into h_reconstructed: detach the residual h - h_reconstructed.", _gradient_dict((undetached * weights).sum(), leaves)),
            (
                "AuxK leaves the decoder without a gradient: do not detach W_dec_normalized here; the dead latents' decoder rows learn from AuxK too.",
                {**expected_grads, "W_dec": torch.zeros_like(expected_grads["W_dec"])},
            ),
        ],
        otherwise=(
            "AuxK sends gradient to latents that are not dead."
            if bool((learner["pre_acts"].abs() * live).max() > 0)
            else "The gradient of auxk_loss differs from the reference although its values match: build it from pre_acts and "
            "W_dec_normalized without .detach(), detaching only the residual."
        ),
    )


@check("auxk_loss")
def test_auxk_loss(learner: object) -> str:
    function = learner_callable(learner, "auxk_loss", owner_hint="TopKToySAE")
    cases = [_auxk_inputs(case) for case in AUXK_CASES]  # drawn before the learner's code runs
    for inputs in cases:
        _check_auxk_case(function, inputs)
    return "dead latents only, ReLU, no bias, detached residual, scaled by min(n_dead / k_aux, 1), gradients, instances with 0 to 7 dead latents"


# BatchTopK --------------------------------------------------------------------------------


def _keep_per_instance(values: Tensor, n_keep: int, *, transpose_first: bool = True) -> Tensor:
    batch, n_inst, d_sae = values.shape
    flat = values.transpose(0, 1).reshape(n_inst, -1) if transpose_first else values.reshape(n_inst, -1)
    top = flat.topk(min(n_keep, flat.shape[-1]), dim=-1)
    kept = torch.zeros_like(flat).scatter(-1, top.indices, top.values)
    return kept.reshape(n_inst, batch, d_sae).transpose(0, 1) if transpose_first else kept.reshape(batch, n_inst, d_sae)


@dataclass
class _BatchTopKCase:
    description: str
    batch: int
    n_inst: int
    k: float
    shift: tuple[float, ...]  # per instance: a large shift leaves fewer positive values than are kept


BATCH_TOPK_CASES = [
    _BatchTopKCase("", 40, 3, 0.62, (1.5, 0.5, 0.0)),  # 24.8 values: round gives 25, int 24
    _BatchTopKCase(" on a batch of 10 with k = 0.43", 10, 2, 0.43, (0.0, 0.3)),  # 4.3: round 4, ceil 5
    _BatchTopKCase(" on a batch of one input with one instance", 1, 1, 2.6, (0.0,)),
]


def _batch_topk_mistakes(x: Tensor, k: float) -> list[tuple[str, Tensor]]:
    batch, n_inst, d_sae = x.shape
    n_keep = round(k * batch)
    pooled = _keep_top(x.reshape(1, 1, -1), n_keep * n_inst)
    mistakes = [
        ("Negative values are kept: apply a ReLU.", _keep_per_instance(x, n_keep)),
        ("k · batch is truncated with int(); the text rounds it to the nearest integer, round(k · batch).", F.relu(_keep_per_instance(x, int(k * batch)))),
        ("k · batch is rounded up; the text rounds it to the nearest integer, round(k · batch).", F.relu(_keep_per_instance(x, -int(-k * batch // 1)))),
        ("You kept k values per instance; keep round(k · batch) (k is the average per input).", F.relu(_keep_per_instance(x, max(1, round(k))))),
        ("This is per-input TopK; BatchTopK ranks all batch × d_sae values of an instance together.", F.relu(_keep_top(x, min(d_sae, max(1, round(k)))))),
        (
            "The [batch, inst, d_sae] values were reshaped to [inst, batch · d_sae] without moving inst first, which mixes instances: "
            "transpose (or permute) before flattening.",
            F.relu(_keep_per_instance(x, n_keep, transpose_first=False)),
        ),
    ]
    if n_inst > 1 and pooled is not None:
        mistakes.append(("The top values are pooled across instances; pick them separately for each instance.", F.relu(pooled.reshape_as(x))))
    return [(message, wrong) for message, wrong in mistakes if wrong.shape == x.shape]


def _batch_topk_input(case: _BatchTopKCase) -> Tensor:
    spread = torch.linspace(0.5, 2.0, case.n_inst)[:, None] if case.n_inst > 1 else torch.ones(1, 1)
    return torch.randn(case.batch, case.n_inst, D_SAE) * spread - torch.tensor(case.shift)[:, None]


@check("batch_topk_activation")
def test_batch_topk_activation(learner: object) -> str:
    function = learner_function(learner, "batch_topk_activation")
    inputs = [_batch_topk_input(case) for case in BATCH_TOPK_CASES]  # drawn before the learner's code runs
    for case, pre_acts in zip(BATCH_TOPK_CASES, inputs):
        shape = tuple(pre_acts.shape)
        leaf, learner_input = handed_in(pre_acts.to(get_device()))
        output = call_learner(function, learner_input, case.k, what="batch_topk_activation")
        actual = expect_tensor(output, shape, what="batch_topk_activation", axes="batch, inst, d_sae")
        x = pre_acts.double()
        expected = F.relu(_keep_per_instance(x, round(case.k * case.batch)))
        diagnose_among(
            actual,
            expected,
            _batch_topk_mistakes(x, case.k),
            otherwise=f"For each instance keep the round(k · batch) largest values across the whole batch (ReLU applied) and zero the rest{case.description}.",
        )
        _check_kept_gradient(output, leaf, expected, what="batch_topk_activation")
    return "round(k · batch) largest per instance across the batch, ReLU applied, gradient only through the kept values, input left unchanged"
