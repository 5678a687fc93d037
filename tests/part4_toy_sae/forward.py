"""Exercise 4, `pre_activations`, `decode` and `forward`: pre-activations, activations, reconstruction, both loss
terms, the total and its gradients, on an untied SAE, a tied one and one with a single instance, a batch of one
and d_in = d_sae."""

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from part_utils.reference import part4_toy_sae as reference
from tests.checking import (
    CheckFailure,
    call_learner,
    check,
    check_output_gradients,
    diagnose,
    expect_tensor,
    first_gradient_mismatch,
    inputs_clear_of_kinks,
    learner_callable,
    reference_with_gradients,
)
from tests.part4_toy_sae._common import (
    D_IN,
    D_SAE,
    N_INST,
    SAETerms,
    _backpropagate,
    _case,
    _expect_axes_kept,
    _float64,
    _naming_tied_decoder,
    _normalised,
    _reference_sae,
    _sae_parameters,
    _sae_terms,
)
from tests.sae_output import require_named_fields


@dataclass(frozen=True)
class ForwardCase:
    description: str | None
    tied: bool = False
    n_inst: int = N_INST
    d_in: int = D_IN
    d_sae: int = D_SAE
    batch: int = 32


FORWARD_CASES = (
    ForwardCase(None),
    ForwardCase("For a tied SAE", tied=True),
    ForwardCase("With one instance, a batch of one and d_in = d_sae = 5", n_inst=1, d_in=5, d_sae=5, batch=1),
)
# Where `_sae_terms` can cut the graph, and the sentence naming a loss whose gradient matches that cut.
GRADIENT_CUTS = {
    "decoder": "No gradient reaches the decoder: W_dec_normalized is detached (.detach() or .data) where you decode "
    "with it.",
    "encoder": "No gradient reaches W_enc: it is detached (.detach() or .data) where you encode with it.",
    "acts when decoding": "`acts` is detached where you decode it, so the reconstruction error cannot train the "
    "encoder: decode acts itself.",
    "b_dec when centring": "b_dec is detached where you subtract it from h: it must receive gradient there too.",
    "b_dec when adding back": "b_dec is detached where you add it back after decoding: it must receive gradient there "
    "too.",
    "sparsity": "The sparsity term carries no gradient (.detach(), .item() or torch.no_grad() around it), so the L1 "
    "penalty trains nothing.",
    "reconstruction": "The reconstruction term carries no gradient (.detach(), .item() or torch.no_grad() around it), "
    "so the SAE cannot learn to reconstruct.",
}


def _reference_gradients(
    p: Mapping[str, Tensor], x: Tensor, *, coeff: float, eps: float, cut: str | None = None
) -> dict[str, Tensor]:
    leaves = {name: value.clone().requires_grad_(True) for name, value in p.items()}
    loss = _sae_terms(leaves, x, coeff=coeff, eps=eps, cut=cut).loss
    grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
    return {name: torch.zeros_like(leaf) if grad is None else grad for (name, leaf), grad in zip(leaves.items(), grads)}


def _forward_inputs(case: ForwardCase) -> tuple[reference.ToySAE, Tensor]:
    """An SAE and a batch h whose every pre-activation is clear of the ReLU's kink, so that float32 and
    float64 code agree on which latents fire and get the same gradients."""
    sae = _reference_sae(tied=case.tied, n_inst=case.n_inst, d_in=case.d_in, d_sae=case.d_sae)
    p = {name: _float64(value) for name, value in _sae_parameters(sae).items()}
    device = sae.W_enc.device
    h = inputs_clear_of_kinks(
        lambda: torch.randn(case.batch, case.n_inst, case.d_in),
        lambda h: [_sae_terms(p, h.double(), coeff=0.0, eps=sae.cfg.weight_normalize_eps).pre_acts],
    )
    return sae, h.to(device)


def _acts_mistakes(p: Mapping[str, Tensor], x: Tensor, tied: bool) -> dict[str, Tensor]:
    encode = lambda inputs, W=p["W_enc"]: torch.einsum("bid,ids->bis", inputs, W)  # noqa: E731
    centred = x - p["b_dec"]
    mistakes = {
        "`acts` ignores b_dec: subtract b_dec from h before encoding.": F.relu(encode(x) + p["b_enc"]),
        "`acts` has negative values: apply the ReLU after adding b_enc.": encode(centred) + p["b_enc"],
        "`acts` adds b_dec before encoding; it should be subtracted.": F.relu(encode(x + p["b_dec"]) + p["b_enc"]),
        "b_enc is added after the ReLU; it belongs inside it: ReLU((h - b_dec) W_enc + b_enc).": (
            F.relu(encode(centred)) + p["b_enc"]
        ),
        "`acts` leaves out b_enc: ReLU((h - b_dec) W_enc + b_enc).": F.relu(encode(centred)),
        "`acts` subtracts b_enc; add it: ReLU((h - b_dec) W_enc + b_enc).": F.relu(encode(centred) - p["b_enc"]),
    }
    if not tied:
        W_dec_t = p["_W_dec"].transpose(-1, -2)
        mistakes["`acts` encodes with the decoder (W_decᵀ); an untied SAE encodes with W_enc."] = F.relu(
            encode(centred, W_dec_t) + p["b_enc"]
        )
    return mistakes


def _reconstruction_mistakes(p: Mapping[str, Tensor], acts: Tensor, eps: float, tied: bool) -> dict[str, Tensor]:
    W_dec = p["_W_dec"] if not tied else p["W_enc"].transpose(-1, -2)
    decode = lambda W: torch.einsum("bis,isd->bid", acts, W)  # noqa: E731
    W_unit = _normalised(W_dec, eps)
    mistakes = {
        "The reconstruction uses the unnormalised decoder: decode with self.W_dec_normalized.": (
            decode(W_dec) + p["b_dec"]
        ),
        "The reconstruction forgets to add b_dec back after decoding.": decode(W_unit),
        "The reconstruction subtracts b_dec after decoding; add it back.": decode(W_unit) - p["b_dec"],
        "The decoder is normalised over the wrong axis: use self.W_dec_normalized (each latent's row over d_in).": (
            decode(W_dec / (W_dec.norm(dim=-2, keepdim=True) + eps)) + p["b_dec"]
        ),
    }
    if not tied:
        W_enc_t = p["W_enc"].transpose(-1, -2)
        message = (
            "The reconstruction decodes with W_encᵀ; an untied SAE decodes with its own decoder, self.W_dec_normalized."
        )
        mistakes[message] = decode(_normalised(W_enc_t, eps)) + p["b_dec"]
        mistakes[message + " "] = decode(W_enc_t) + p["b_dec"]
    return mistakes


def _reconstruction_terms(p: Mapping[str, Tensor], latents: Tensor, eps: float, tied: bool) -> Tensor:
    W_dec = p["W_enc"].transpose(-1, -2) if tied else p["_W_dec"]
    return torch.einsum("bis,isd->bid", latents, _normalised(W_dec, eps)) + p["b_dec"]


def _loss_term(value: object, shape: tuple[int, int], key: str, *, reduced: str, reduced_size: int) -> Tensor:
    if isinstance(value, Tensor) and value.numel() == 1 and math.prod(shape) > 1:
        raise CheckFailure(
            f'loss_dict["{key}"] is a single number (F.mse_loss or a reduction over everything): keep one value per '
            "input and instance, [batch, inst], reducing only over d_in or d_sae."
        )
    if isinstance(value, Tensor) and tuple(value.shape) == (shape[1], reduced_size) != shape:
        raise CheckFailure(
            f'loss_dict["{key}"] is reduced over the batch (dim 0), leaving [inst, {reduced}]: reduce over {reduced} '
            "(the last axis) instead, keeping one value per input and instance, [batch, inst]."
        )
    return _expect_axes_kept(value, shape, what=f'loss_dict["{key}"]', axes="batch, inst")


def _acts_fallback(acts: Tensor, expected: Tensor, pre_acts: Tensor) -> str:
    """Name a non-ReLU nonlinearity: right wherever the ReLU is on, wrong only where it should give 0."""
    on = pre_acts > 0
    if torch.allclose(acts[on], expected[on], rtol=1e-4, atol=1e-5) and not torch.allclose(
        acts[~on], expected[~on], atol=1e-5
    ):
        return (
            "`acts` is right where the pre-activation is positive but not where it is negative: there it must be "
            "exactly 0 (a ReLU, not a leaky or smooth version)."
        )
    return "`acts` does not match ReLU((h - b_dec) W_enc + b_enc): check the einsum axes and the biases."


def _scalar_loss(loss: object, n_inst: int) -> Tensor:
    if isinstance(loss, float):
        raise CheckFailure(
            "`loss` is a Python float (from .item()?): return the tensor itself, so that training can backpropagate "
            "through it."
        )
    if isinstance(loss, Tensor) and loss.numel() == n_inst > 1:
        raise CheckFailure("`loss` has one value per instance: sum them into a single scalar.")
    if isinstance(loss, Tensor) and loss.numel() == 1:
        loss = loss.reshape(())
    return expect_tensor(loss, (), what="loss", axes="a scalar")


def _check_acts(acts: object, right: SAETerms, p: Mapping[str, Tensor], x: Tensor, case: ForwardCase) -> None:
    """`acts` is ReLU((h - b_dec) W_enc + b_enc), [batch, inst, d_sae]."""
    actual = _expect_axes_kept(acts, (case.batch, case.n_inst, case.d_sae), what="acts", axes="batch, inst, d_sae")
    diagnose(
        actual,
        right.acts,
        _acts_mistakes(p, x, case.tied),
        otherwise=_acts_fallback(actual, right.acts, right.pre_acts),
    )


def _check_reconstruction(
    h_reconstructed: object, right: SAETerms, p: Mapping[str, Tensor], case: ForwardCase, eps: float
) -> None:
    """`h_reconstructed` decodes acts with the normalised decoder and adds b_dec back, [batch, inst, d_in]."""
    shape = (case.batch, case.n_inst, case.d_in)
    diagnose(
        _expect_axes_kept(h_reconstructed, shape, what="h_reconstructed", axes="batch, inst, d_in"),
        right.h_reconstructed,
        {
            **_reconstruction_mistakes(p, right.acts, eps, case.tied),
            "The reconstruction decodes the pre-activations; decode acts, after the ReLU.": _reconstruction_terms(
                p, right.pre_acts, eps, case.tied
            ),
        },
        otherwise="`h_reconstructed` does not match acts @ W_dec_normalized + b_dec.",
    )


def _check_reconstruction_loss(
    value: object, right: SAETerms, p: Mapping[str, Tensor], x: Tensor, case: ForwardCase
) -> None:
    """`L_reconstruction` is the mean over d_in of the squared error, one value per input and instance."""
    squared = (right.h_reconstructed - x).pow(2)
    diagnose(
        _loss_term(value, (case.batch, case.n_inst), "L_reconstruction", reduced="d_in", reduced_size=case.d_in),
        right.reconstruction,
        {
            "L_reconstruction is summed over d_in; average it (mean over d_in).": squared.sum(-1),
            "L_reconstruction compares h_reconstructed with h - b_dec; compare it with h itself.": (
                (right.h_reconstructed - (x - p["b_dec"])).pow(2).mean(-1)
            ),
            "L_reconstruction is the root of the mean squared error; leave out the square root.": (
                squared.mean(-1).sqrt()
            ),
            "L_reconstruction is the norm of the error; use the mean over d_in of its square.": squared.sum(-1).sqrt(),
            "L_reconstruction uses the absolute error; square it: the mean over d_in of (h_reconstructed - h)².": (
                squared.sqrt().mean(-1)
            ),
        },
        otherwise="L_reconstruction should be the mean over d_in of (h_reconstructed - h)².",
    )


def _check_sparsity_loss(value: object, right: SAETerms, case: ForwardCase, coeff: float) -> None:
    """`L_sparsity` is the bare L1 norm of acts, one value per input and instance."""
    z = right.acts
    diagnose(
        _loss_term(value, (case.batch, case.n_inst), "L_sparsity", reduced="d_sae", reduced_size=case.d_sae),
        right.sparsity,
        {
            "L_sparsity is averaged over latents; the L1 norm sums over d_sae.": z.mean(-1),
            "L_sparsity is the L2 norm; use the L1 norm (sum of absolute values).": z.norm(dim=-1),
            "L_sparsity is the sum of squares; use the L1 norm (sum of absolute values).": z.pow(2).sum(-1),
            "L_sparsity includes sparsity_coeff: keep the bare L1 norm in loss_dict and apply the coefficient only in "
            "the total.": coeff * z.sum(-1),
            "L_sparsity uses the pre-activations; take the L1 norm of acts, after the ReLU.": (
                right.pre_acts.abs().sum(-1)
            ),
        },
        otherwise="L_sparsity should be the L1 norm of acts, summed over d_sae.",
    )


def _check_total_loss(loss: object, right: SAETerms, n_inst: int, coeff: float) -> None:
    """`loss` is one scalar: both terms, weighted, averaged over the batch and summed over instances."""
    rec, sparsity = right.reconstruction, right.sparsity
    diagnose(
        _scalar_loss(loss, n_inst),
        right.loss,
        {
            "The loss is averaged over instances; sum over instances (they train independently).": (
                (rec + coeff * sparsity).mean()
            ),
            "The loss is summed over the batch; average over the batch.": (rec + coeff * sparsity).sum(),
            "The loss is summed over the batch and averaged over instances: the other way round, average over the "
            "batch (dim 0) and sum over instances.": (rec + coeff * sparsity).sum(0).mean(),
            "The loss leaves out sparsity_coeff: total = reconstruction + sparsity_coeff * sparsity.": (
                (rec + sparsity).mean(0).sum()
            ),
            "The loss leaves out the sparsity term.": rec.mean(0).sum(),
            "The loss multiplies the wrong term by sparsity_coeff: total = reconstruction + sparsity_coeff * "
            "sparsity.": (coeff * rec + sparsity).mean(0).sum(),
            "The loss applies sparsity_coeff twice: L_sparsity is the bare L1 norm, and only the total multiplies it "
            "by the coefficient.": (rec + coeff**2 * sparsity).mean(0).sum(),
        },
        otherwise="The loss should be (L_reconstruction + sparsity_coeff * L_sparsity), averaged over the batch and "
        "summed over instances.",
    )


def _pre_activation_mistakes(p: Mapping[str, Tensor], x: Tensor, tied: bool) -> dict[str, Tensor]:
    encode = lambda inputs, W=p["W_enc"]: torch.einsum("bid,ids->bis", inputs, W)  # noqa: E731
    centred = x - p["b_dec"]
    mistakes = {
        "`pre_activations` ignores b_dec: subtract b_dec from h before encoding.": encode(x) + p["b_enc"],
        "`pre_activations` adds b_dec before encoding; it should be subtracted.": encode(x + p["b_dec"]) + p["b_enc"],
        "`pre_activations` leaves out b_enc: (h - b_dec) W_enc + b_enc.": encode(centred),
        "`pre_activations` subtracts b_enc; add it: (h - b_dec) W_enc + b_enc.": encode(centred) - p["b_enc"],
        "`pre_activations` applies the ReLU: return the values before it (`encode` applies `self.activation`).": (
            F.relu(encode(centred) + p["b_enc"])
        ),
    }
    if not tied:
        mistakes["`pre_activations` encodes with the decoder (W_decᵀ); an untied SAE encodes with W_enc."] = (
            encode(centred, p["_W_dec"].transpose(-1, -2)) + p["b_enc"]
        )
    return mistakes


def _check_pre_activations(
    pre_activations: object,
    sae: reference.ToySAE,
    h: Tensor,
    right: SAETerms,
    p: Mapping[str, Tensor],
    case: ForwardCase,
) -> None:
    """`pre_activations(h)` is (h - b_dec) W_enc + b_enc, [batch, inst, d_sae], and trains the encoder."""
    output = call_learner(pre_activations, sae, h.clone(), what="pre_activations")
    shape = (case.batch, case.n_inst, case.d_sae)
    actual = _expect_axes_kept(output, shape, what="pre_activations", axes="batch, inst, d_sae")
    diagnose(
        actual,
        right.pre_acts,
        _pre_activation_mistakes(p, _float64(h), case.tied),
        otherwise="`pre_activations` does not match (h - b_dec) W_enc + b_enc: check the einsum axes and the biases.",
    )
    parameters = {name: getattr(sae, name) for name in ("W_enc", "b_enc", "b_dec")}
    formula = lambda W_enc, b_enc, b_dec: torch.einsum("bid,ids->bis", _float64(h) - b_dec, W_enc) + b_enc  # noqa: E731
    _check_gradients(output, parameters, formula, what="pre_activations")


def _check_decode(
    decode: object, sae: reference.ToySAE, right: SAETerms, p: Mapping[str, Tensor], case: ForwardCase
) -> None:
    """`decode(acts)` is acts times the normalised decoder, plus b_dec, [batch, inst, d_in]."""
    eps = sae.cfg.weight_normalize_eps
    output = call_learner(decode, sae, right.acts.float().to(sae.W_enc.device), what="decode")
    shape = (case.batch, case.n_inst, case.d_in)
    diagnose(
        _expect_axes_kept(output, shape, what="decode", axes="batch, inst, d_in"),
        right.h_reconstructed,
        _reconstruction_mistakes(p, right.acts, eps, case.tied),
        otherwise="`decode(acts)` does not match acts @ W_dec_normalized + b_dec.",
    )
    decoder = "W_enc" if case.tied else "_W_dec"
    parameters = {name: getattr(sae, name) for name in (decoder, "b_dec")}
    formula = lambda b_dec, **W: _reconstruction_terms({**W, "b_dec": b_dec}, right.acts, eps, case.tied)  # noqa: E731
    _check_gradients(output, parameters, formula, what="decode")


def _check_gradients(output: Tensor, parameters: Mapping[str, Tensor], formula: object, *, what: str) -> None:
    """The gradient of the output against a fixed random upstream gradient, into every parameter it reads."""
    upstream = torch.randn(output.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    _, expected = reference_with_gradients(formula, parameters, upstream)
    check_output_gradients(output, upstream, parameters, expected, what=what)


def _with_learner_methods(sae: reference.ToySAE, **methods: object) -> reference.ToySAE:
    """The same SAE, whose `self.pre_activations` and `self.decode` are the learner's: their forward may call them."""
    # The same name as the class it extends: a grader's sandbox then binds the learner's own methods by that name.
    sae.__class__ = type(type(sae).__name__, (type(sae),), methods)
    return sae


def _check_forward_values(
    result: object, p: Mapping[str, Tensor], x: Tensor, case: ForwardCase, coeff: float, eps: float
) -> Tensor:
    """Compare the four outputs with the reference in float64; returns the learner's loss tensor."""
    if not isinstance(result, tuple) or len(result) != 4:
        raise CheckFailure("`forward` should return a tuple of four things: (loss_dict, loss, acts, h_reconstructed).")
    loss_dict, loss, acts, h_reconstructed = result
    if not isinstance(loss_dict, dict) or set(loss_dict) != {"L_reconstruction", "L_sparsity"}:
        raise CheckFailure('`loss_dict` should be a dict with exactly the keys "L_reconstruction" and "L_sparsity".')
    right = _sae_terms(p, x, coeff=coeff, eps=eps)
    _check_acts(acts, right, p, x, case)
    _check_reconstruction(h_reconstructed, right, p, case, eps)
    _check_reconstruction_loss(loss_dict["L_reconstruction"], right, p, x, case)
    _check_sparsity_loss(loss_dict["L_sparsity"], right, case, coeff)
    _check_total_loss(loss, right, case.n_inst, coeff)
    return loss


def _check_forward_gradients(loss: Tensor, sae: reference.ToySAE, p: Mapping[str, Tensor], x: Tensor) -> None:
    """The loss's gradient into every SAE parameter is the reference's; otherwise names where the graph is cut."""
    coeff, eps = sae.cfg.sparsity_coeff, sae.cfg.weight_normalize_eps
    actual = _backpropagate(lambda: loss, _sae_parameters(sae), what="loss")
    expected = _reference_gradients(p, x, coeff=coeff, eps=eps)
    name = first_gradient_mismatch(actual, expected)
    if name is None:
        return
    diagnose(
        actual,
        expected,
        {message: _reference_gradients(p, x, coeff=coeff, eps=eps, cut=cut) for cut, message in GRADIENT_CUTS.items()},
        otherwise=(
            f"The loss has the right value but the wrong gradient for `{name}`: a step on its way to the loss is cut "
            "off from the graph (.detach(), .data, .item() or torch.no_grad())."
        ),
        rtol=1e-4,
        atol=1e-6,
    )


@check("pre_activations, decode and forward")
def test_forward(learner: object) -> str:
    forward = learner_callable(learner, "forward", owner_hint="ToySAE")
    if forward is learner:
        raise CheckFailure(
            "Pass the class, `test_forward(ToySAE)`: the check calls your `pre_activations` and `decode` too."
        )
    pre_activations = learner_callable(learner, "pre_activations", owner_hint="ToySAE")
    decode = learner_callable(learner, "decode", owner_hint="ToySAE")
    for case in FORWARD_CASES:
        with _case(case.description):
            sae, h = _forward_inputs(case)
            p = {name: _float64(value) for name, value in _sae_parameters(sae).items()}
            x = _float64(h)
            right = _sae_terms(p, x, coeff=sae.cfg.sparsity_coeff, eps=sae.cfg.weight_normalize_eps)
            _check_pre_activations(pre_activations, sae, h, right, p, case)
            _check_decode(decode, sae, right, p, case)
            sae = _with_learner_methods(sae, pre_activations=pre_activations, decode=decode)
            call = lambda: call_learner(forward, sae, h.clone(), what="forward")  # noqa: B023, E731  (called at once)
            result = _naming_tied_decoder(call, what="forward")
            loss = _check_forward_values(result, p, x, case, sae.cfg.sparsity_coeff, sae.cfg.weight_normalize_eps)
            _check_forward_gradients(loss, sae, p, x)
            require_named_fields(result)
    return (
        "pre-activations, decoding, activations, reconstruction, both loss terms, the total and its gradients; tied, "
        "one instance, a batch of one"
    )
