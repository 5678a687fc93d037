"""The check of `GatedToySAE.encode_with_gate` and `forward`: gate, magnitudes, the three losses, the gradients."""

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from part_utils.device import get_device
from part_utils.reference import part4_toy_sae as part4
from part_utils.reference import part5_sae_variants as reference
from tests.checking import (
    CheckFailure,
    call_learner,
    check,
    close,
    diagnose,
    diagnose_among,
    expect_tensor,
    first_gradient_mismatch,
    gradients,
)
from tests.fixtures import own_method, toy_model
from tests.part5_sae_variants._common import (
    D_IN,
    D_SAE,
    N_INST,
    _as_float64,
    _decode,
    _encode,
    _gradient_dict,
    _randomise,
    _scalar,
)
from tests.sae_output import require_named_fields

GATED_COEFFICIENTS = (0.3, 0.6, 0.15)  # one per instance, as in the comparison at the end of Part 5
PLAIN_COEFFICIENT = 0.4  # the text allows one number too
GATED_PARAMETERS = {
    "W_enc": "W_gate (W_enc)",
    "b_enc": "b_gate (b_enc)",
    "r_mag": "r_mag",
    "b_mag": "b_mag",
    "_W_dec": "W_dec",
    "b_dec": "b_dec",
}
AUX_DECODER = ("aux W_dec", "aux b_dec")  # what the text detaches: the decoder inside L_aux, nothing else


def _with_learner_encode(sae: reference.GatedToySAE, encode: Callable[..., Any]) -> reference.GatedToySAE:
    """The same SAE, whose `self.encode_with_gate` is the learner's: their forward may call it."""
    # Named as the class it extends, so that a grader's sandbox binds the learner's own methods by that name.
    sae.__class__ = type("GatedToySAE", (reference.GatedToySAE,), {"encode_with_gate": encode})
    return sae


def _check_encode_with_gate(
    encode: Callable[..., Any], sae: reference.GatedToySAE, h: Tensor, e: "_GatedExpectation"
) -> None:
    """`encode_with_gate(h)` returns the gated activations and π_gate, in that order."""
    what = "encode_with_gate"
    result = call_learner(encode, sae, h.clone(), what=what)
    if not isinstance(result, tuple) or len(result) != 2:
        raise CheckFailure(
            f"`{what}` should return two tensors, (acts, pi_gate): `forward` needs π_gate for its losses."
        )
    acts, pi_gate = result
    batch, _, d_sae = e.pi_gate.shape
    actual_gate = expect_tensor(
        pi_gate, (batch, N_INST, d_sae), what=f"π_gate from `{what}`", axes="batch, inst, d_sae"
    )
    if close(actual_gate, e.acts) and not close(e.acts, e.pi_gate):
        raise CheckFailure(f"`{what}` returns (pi_gate, acts): return the activations first, (acts, pi_gate).")
    diagnose(
        actual_gate,
        e.pi_gate,
        {
            "π_gate uses h without subtracting b_dec: centre h for both paths.": _encode(
                e.x, e.p["W_enc"], e.p["b_enc"]
            ),
            (
                "`encode_with_gate` returns ReLU(π_gate); return π_gate itself (forward applies the ReLU for its "
                "losses)."
            ): F.relu(e.pi_gate),
            "`encode_with_gate` returns π_mag as the gate; return π_gate = (h - b_dec) W_gate + b_gate.": e.pi_mag,
        },
        otherwise="π_gate should be (h - b_dec) W_gate + b_gate, with W_gate = W_enc and b_gate = b_enc.",
    )
    _check_gated_acts(acts, e, what=f"the activations from `{what}`")


def _gated_sae(coefficients: Tensor | float) -> reference.GatedToySAE:
    sae = reference.GatedToySAE(
        part4.ToySAEConfig(n_inst=N_INST, d_in=D_IN, d_sae=D_SAE, sparsity_coeff=coefficients), toy_model()
    )
    _randomise(sae)
    return sae


def _gated_loss(
    p: Mapping[str, Tensor], x: Tensor, coefficients: Tensor, eps: float, detached: Collection[str]
) -> Tensor:
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
    per_input = (
        (h_reconstructed - x).pow(2).mean(-1)
        + coefficients * d(gate, "gate in L_sparsity").sum(-1)
        + (via_gate - x).pow(2).mean(-1)
    )
    return per_input.mean(0).sum()


# Each known slip in where a Gated forward detaches: the message, and what it detaches.
GATED_GRADIENT_MISTAKES: dict[str, tuple[str, ...]] = {
    "L_aux sends gradient into the decoder: decode ReLU(π_gate) with W_dec_normalized.detach() and b_dec.detach().": (),
    "L_aux sends gradient into W_dec: detach W_dec_normalized there as well as b_dec.": ("aux b_dec",),
    "L_aux sends gradient into b_dec: detach b_dec there as well as W_dec_normalized.": ("aux W_dec",),
    (
        "The decoder is detached in the main reconstruction too: h_reconstructed "
        "must train W_dec and b_dec; only L_aux uses detached copies."
    ): (
        *AUX_DECODER,
        "main W_dec",
        "main b_dec",
    ),
    "W_dec_normalized is detached in the main reconstruction too: only L_aux uses the detached decoder.": (
        *AUX_DECODER,
        "main W_dec",
    ),
    "b_dec is detached where it is added back to the reconstruction: only L_aux uses a detached b_dec.": (
        *AUX_DECODER,
        "main b_dec",
    ),
    "b_dec is detached where h is centred: h - b_dec must pass its gradient to b_dec.": (
        *AUX_DECODER,
        "centring b_dec",
    ),
    "W_mag is built from a detached W_gate: the magnitude path shares W_gate's weights and must train them too.": (
        *AUX_DECODER,
        "W_gate in W_mag",
    ),
    "r_mag gets no gradient: do not detach it when you build W_mag = exp(r_mag) ⊙ W_gate.": (*AUX_DECODER, "r_mag"),
    "b_mag gets no gradient: do not detach it in the magnitude path.": (*AUX_DECODER, "b_mag"),
    (
        "ReLU(π_gate) is detached in L_aux and L_sparsity, so nothing "
        "trains the gate: detach only the decoder inside L_aux."
    ): (
        *AUX_DECODER,
        "gate in L_aux",
        "gate in L_sparsity",
    ),
    (
        "ReLU(π_gate) is detached in L_aux (or L_aux is computed under no_grad): detach "
        "only the decoder there, since L_aux is what trains the gate."
    ): (
        *AUX_DECODER,
        "gate in L_aux",
    ),
    "ReLU(π_gate) is detached in L_sparsity: the penalty must reach the gate's weights.": (
        *AUX_DECODER,
        "gate in L_sparsity",
    ),
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
        x,
        coefficients,
        centred,
        _encode(centred, p["W_enc"], p["b_enc"]),
        _encode(centred, W_mag, p["b_mag"]),
        W_mag,
        W_dec_unit,
        p,
    )


def _check_gated_acts(acts: object, e: _GatedExpectation, *, what: str = "acts") -> None:
    p, x, gate = e.p, e.x, e.gate
    batch, _, d_sae = e.pi_gate.shape
    diagnose(
        expect_tensor(acts, (batch, N_INST, d_sae), what=what, axes="batch, inst, d_sae"),
        e.acts,
        {
            "`acts` ignores b_dec: subtract b_dec from h before both the gate and the magnitude path.": (
                _encode(x, p["W_enc"], p["b_enc"]) > 0
            ).double()
            * F.relu(_encode(x, e.W_mag, p["b_mag"])),
            "The magnitude path uses h without subtracting b_dec: centre h for both paths.": gate
            * F.relu(_encode(x, e.W_mag, p["b_mag"])),
            "The gate uses h without subtracting b_dec: centre h for both paths.": (
                _encode(x, p["W_enc"], p["b_enc"]) > 0
            ).double()
            * F.relu(e.pi_mag),
            "The magnitude path uses W_gate itself: scale each latent's column by exp(r_mag).": gate
            * F.relu(_encode(e.centred, p["W_enc"], p["b_mag"])),
            "The magnitude path multiplies by r_mag; the scale is exp(r_mag).": gate
            * F.relu(_encode(e.centred, p["r_mag"][:, None, :] * p["W_enc"], p["b_mag"])),
            "The magnitude path uses b_gate; it has its own bias, b_mag.": gate
            * F.relu(_encode(e.centred, e.W_mag, p["b_enc"])),
            "b_gate and b_mag are swapped: the gate adds b_gate (b_enc), the magnitude path b_mag.": (
                _encode(e.centred, p["W_enc"], p["b_mag"]) > 0
            ).double()
            * F.relu(_encode(e.centred, e.W_mag, p["b_enc"])),
            "The gate uses b_mag; its bias is b_gate (b_enc), as in pre_activations(h).": (
                _encode(e.centred, p["W_enc"], p["b_mag"]) > 0
            ).double()
            * F.relu(e.pi_mag),
            "The magnitude path has no bias: add b_mag to π_mag.": gate * F.relu(_encode(e.centred, e.W_mag, 0.0)),
            (
                "The magnitude path scales π_gate, b_gate included, by exp(r_mag): scale W_gate's columns only "
                "(W_mag = exp(r_mag) ⊙ W_gate), then add b_mag."
            ): gate * F.relu(p["r_mag"].exp() * e.pi_gate + p["b_mag"]),
            "The magnitudes have no ReLU: acts is 1[π_gate > 0] · ReLU(π_mag).": gate * e.pi_mag,
            "`acts` is not gated: multiply ReLU(π_mag) by the indicator 1[π_gate > 0].": F.relu(e.pi_mag),
            "`acts` multiplies by ReLU(π_gate); the gate is the indicator 1[π_gate > 0].": F.relu(e.pi_gate)
            * F.relu(e.pi_mag),
        },
        otherwise="`acts` should be 1[π_gate > 0] · ReLU(π_mag), both computed from h - b_dec.",
    )


def _check_gated_reconstruction(h_reconstructed: object, e: _GatedExpectation) -> None:
    batch = e.x.shape[0]
    diagnose(
        expect_tensor(h_reconstructed, (batch, N_INST, D_IN), what="h_reconstructed", axes="batch, inst, d_in"),
        e.decode(e.acts),
        {
            "The reconstruction uses the unnormalised decoder: decode with self.W_dec_normalized.": _decode(
                e.acts, e.p["_W_dec"], e.p["b_dec"]
            ),
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
            "L_reconstruction compares with h - b_dec; compare the reconstruction with h itself.": (
                e.decode(e.acts) - e.centred
            )
            .pow(2)
            .mean(-1),
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
            (
                "L_sparsity takes |π_gate|; the penalty is on ReLU(π_gate), so negative gate values cost nothing."
            ): e.pi_gate.abs().sum(-1),
            "L_sparsity penalises the magnitudes ReLU(π_mag); put the penalty on ReLU(π_gate), the gate.": F.relu(
                e.pi_mag
            ).sum(-1),
        }
        mistakes = [
            *unscaled_mistakes.items(),
            *((message, e.coefficients * value) for message, value in unscaled_mistakes.items()),
        ]
        diagnose_among(
            sparsity,
            l1,
            mistakes,
            otherwise="L_sparsity should be the L1 norm of ReLU(π_gate), summed over d_sae (without sparsity_coeff).",
        )
    diagnose(
        expect_tensor(loss_dict["L_aux"], shape, what='loss_dict["L_aux"]', axes="batch, inst"),
        aux.mean(-1),
        {
            "L_aux is summed over d_in; average it.": aux.sum(-1),
            "L_aux decodes the activations; it should decode ReLU(π_gate), the gate alone.": reconstruction.mean(-1),
            "L_aux leaves out b_dec: decode ReLU(π_gate) with W_dec_normalized and add b_dec.": (
                _decode(F.relu(e.pi_gate), e.W_dec_unit) - x
            )
            .pow(2)
            .mean(-1),
            "L_aux uses the unnormalised decoder: decode ReLU(π_gate) with W_dec_normalized.": (
                _decode(F.relu(e.pi_gate), e.p["_W_dec"], e.p["b_dec"]) - x
            )
            .pow(2)
            .mean(-1),
            "L_aux decodes π_gate itself; decode ReLU(π_gate).": (e.decode(e.pi_gate) - x).pow(2).mean(-1),
            "L_aux compares with h - b_dec; compare the gate's reconstruction with h itself.": (
                e.decode(F.relu(e.pi_gate)) - e.centred
            )
            .pow(2)
            .mean(-1),
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
            "The loss weights L_aux by sparsity_coeff too; only L_sparsity is multiplied by it.": (
                reconstruction + e.coefficients * (l1 + aux)
            )
            .mean(0)
            .sum(),
            "The loss leaves out sparsity_coeff.": (reconstruction + l1 + aux).mean(0).sum(),
            "The loss leaves out the sparsity term.": (reconstruction + aux).mean(0).sum(),
            twice: (reconstruction + e.coefficients**2 * l1 + aux).mean(0).sum(),
            "The loss is averaged over instances; sum over instances (they train independently).": per_input.mean(),
            "The loss is summed over the batch; average over the batch.": per_input.sum(),
            (
                "sparsity_coeff multiplies the loss after summing over instances; "
                "each instance has its own, so apply it per instance."
            ): (reconstruction.mean(0).sum() + e.coefficients.mean() * l1.mean(0).sum() + aux.mean(0).sum()),
        },
        otherwise=(
            "The loss should be L_reconstruction + sparsity_coeff · L_sparsity + "
            "L_aux, averaged over the batch, summed over instances."
        ),
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
            f"Every value is right, but the gradient of {GATED_PARAMETERS[mismatch]} is "
            "not: look for a .detach(), .data or torch.no_grad() on a path that should "
            "train it (the text detaches only the decoder inside L_aux)."
        ),
    )


def _check_gated_case(
    encode: Callable[..., Any], forward: Callable[..., Any], sae: reference.GatedToySAE, h: Tensor
) -> None:
    expectation = _gated_expectation(sae, h)
    _check_encode_with_gate(encode, sae, h, expectation)
    result = call_learner(forward, _with_learner_encode(sae, encode), h.clone(), what="forward")
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
    require_named_fields(result)


GATE_MARGIN = (
    1e-3  # far beyond float32 rounding, so no gate opens in one implementation and not another (the suite checks it)
)


def _gated_cases(batches: tuple[int, ...] = (64, 1)) -> list[tuple[reference.GatedToySAE, Tensor]]:
    """Random SAEs with inputs whose π_gate and π_mag all keep clear of 0 (twice the inputs drawn, the clearest
    kept). sparsity_coeff has one value per instance, except in the last case: one number, as the text allows."""
    cases = []
    for index, batch in enumerate(batches):
        per_instance = index < len(batches) - 1
        sae = _gated_sae(torch.tensor(GATED_COEFFICIENTS, device=get_device()) if per_instance else PLAIN_COEFFICIENT)
        h = torch.randn(2 * batch, N_INST, D_IN, device=sae.W_enc.device)
        e = _gated_expectation(sae, h)
        margin = torch.minimum(e.pi_gate.abs(), e.pi_mag.abs()).amin(dim=(1, 2))
        clearest = margin.argsort(descending=True)[:batch].sort().values
        cases.append((sae, h[clearest.to(h.device)]))
    return cases


@check("GatedToySAE.encode_with_gate and forward")
def test_gated_forward(learner: object) -> str:
    inherited = {"owner": "GatedToySAE", "inherited": part4.ToySAE, "whose": "the L1 SAE's, inherited from ToySAE"}
    forward = own_method(learner, **inherited)
    encode = own_method(learner, **inherited, name="encode_with_gate")
    cases = _gated_cases()  # drawn before the learner's code runs, so random numbers it draws change nothing
    for sae, h in cases:
        try:
            _check_gated_case(encode, forward, sae, h)
        except CheckFailure as failure:
            if isinstance(sae.cfg.sparsity_coeff, Tensor) or "raised" not in str(failure):
                raise
            raise CheckFailure(
                f"{failure} This case's sparsity_coeff is one number ({PLAIN_COEFFICIENT}), not a tensor, which the "
                "text allows: write code that works for both (e.g. no .to() or indexing on it)."
            ) from failure
    return "gate and magnitudes, all three loss terms, and the gradient of every parameter (a batch of one too)"
