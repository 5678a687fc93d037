"""Check of Exercise 2.1, `Transcoder.forward`: values, gradients and the dead-latent counters.

The learner's forward runs on a reference `Transcoder` (same class name) with random weights, so that
`self.pre_activations`, `self.activation`, `self.decode` and `self.auxk_loss` are the given ones; it is
compared with a float64 model (`_transcoder_model`) on inputs kept clear of every top-k tie. The main
case has d_in = d_out, as in the notebook, so that a transcoder trained to reconstruct its input is told
by its numbers; another has d_in ≠ d_out.
"""

from collections.abc import Callable, Mapping

import torch
from torch import Tensor

from part_utils.reference import part9_attribution_graphs as reference
from tests.checking import (
    CheckFailure,
    call_learner,
    check,
    diagnose_among,
    expect_tensor,
    first_gradient_mismatch,
    gradients,
    handed_in,
    learner_callable,
)
from tests.part9_attribution_graphs._common import prefixed
from tests.part9_attribution_graphs._transcoder_model import (
    PARAMETERS,
    TranscoderCase,
    TranscoderTerms,
    TranscoderVariant,
    counted,
    float64_copy,
    transcoder_cases,
    transcoder_terms,
)
from tests.sae_output import require_named_fields

WHAT = "Transcoder.forward"
VARIANT_MISTAKES: dict[str, TranscoderVariant] = {
    "The transcoder is trained to reconstruct its input instead of the MLP's output: compare the prediction with "
    "`target`, in L_reconstruction and in AuxK's residual `target - prediction`.": TranscoderVariant(compared_with="x"),
    "AuxK is given the residual `x - prediction`: the dead latents reconstruct what the prediction misses of the "
    "target, `target - prediction`.": TranscoderVariant(aux_residual="x - prediction"),
    "AuxK is given `target + prediction`: its residual is `target - prediction`.": TranscoderVariant(
        aux_residual="target + prediction"
    ),
    "AuxK is given `prediction - target`: its residual is `target - prediction` (what the dead latents should add).": (
        TranscoderVariant(aux_residual="prediction - target")
    ),
    "The pre-activations subtract b_dec from x first (Part 4's pre-encoder bias): a transcoder has none, since its "
    "input and output live in different spaces; use `self.pre_activations(x)`.": TranscoderVariant(
        encoder_input="x - b_dec"
    ),
    "The squared error is summed over d_out; L_reconstruction is its mean over d_out.": TranscoderVariant(
        squared="sum"
    ),
    "The dead latents are read after `self.record_firing(acts)` has counted this batch: call "
    "`self.dead_latents()` first, then record the firing.": TranscoderVariant(dead="after"),
    "AuxK is given the activations: it ranks the dead latents by their pre-activations, which TopK has set to 0; pass "
    "pre_acts.": TranscoderVariant(aux_input="acts"),
    "The loss has no AuxK term: add aux_coeff · L_aux.": TranscoderVariant(aux="none"),
    "L_aux enters the loss without its coefficient: add self.cfg.aux_coeff · L_aux.": TranscoderVariant(
        aux="unweighted"
    ),
    "The AuxK coefficient is 1/32 whatever the config says: use self.cfg.aux_coeff.": TranscoderVariant(aux="default"),
    "aux_coeff multiplies L_reconstruction; it weights L_aux: loss = L_reconstruction + aux_coeff · L_aux.": (
        TranscoderVariant(aux="on reconstruction")
    ),
    'loss_dict["L_aux"] is already multiplied by aux_coeff: keep L_aux itself there, and weight it only in the '
    "loss.": TranscoderVariant(aux_in_dict="weighted"),
    "The loss is summed over the batch; average it over the batch (and sum over instances).": TranscoderVariant(
        batch="sum"
    ),
    "The loss is averaged over instances; sum it over instances (after the mean over the batch).": TranscoderVariant(
        instances="mean"
    ),
}
PIECES = {
    "acts": "`acts` are not the TopK latents of `self.pre_activations(x)`: use `self.activation(pre_acts)`.",
    "h_reconstructed": "h_reconstructed is not the prediction, `self.decode(acts)`.",
    "L_reconstruction": 'loss_dict["L_reconstruction"] should be the mean over d_out of (prediction - target)², '
    "[batch, inst].",
    "L_aux": 'loss_dict["L_aux"] should be self.auxk_loss(pre_acts, target - prediction, self.dead_latents()), with '
    "the dead latents read before this batch is counted.",
    "loss": "The loss should be L_reconstruction + aux_coeff · L_aux, averaged over the batch and summed over "
    "instances.",
}


def _values(result: object, case: TranscoderCase) -> dict[str, Tensor]:
    """Every returned value as a float64 CPU tensor, after naming a wrong type, a missing key or a wrong shape."""
    if not isinstance(result, tuple) or len(result) != 4:
        raise CheckFailure(
            f"`{WHAT}` should return four things, SAEOutput(loss_dict, loss, acts, h_reconstructed), as every SAE's "
            "forward."
        )
    loss_dict, loss, acts, h_reconstructed = result
    if not isinstance(loss_dict, Mapping) or {"L_reconstruction", "L_aux"} - set(loss_dict):
        raise CheckFailure(f'`loss_dict` from `{WHAT}` should hold "L_reconstruction" and "L_aux".')
    cfg, batch = case.transcoder.cfg, case.x.shape[0]
    acts_shape, prediction_shape = (batch, cfg.n_inst, cfg.d_latent), (batch, cfg.n_inst, cfg.d_out)
    shapes = [tuple(getattr(value, "shape", ())) for value in (acts, h_reconstructed)]
    if shapes == [prediction_shape, acts_shape]:
        raise CheckFailure(
            f"`{WHAT}` returns acts and h_reconstructed swapped: SAEOutput's order is (loss_dict, "
            "loss, acts, h_reconstructed)."
        )
    if not isinstance(loss, Tensor) or loss.numel() != 1:
        raise CheckFailure(
            f"The loss from `{WHAT}` should be one number, a 0-dimensional tensor (mean over the batch, sum over "
            "instances)."
        )
    return {
        "acts": expect_tensor(acts, acts_shape, what=f"acts from {WHAT}", axes="batch, inst, d_latent"),
        "h_reconstructed": expect_tensor(
            h_reconstructed, prediction_shape, what=f"h_reconstructed from {WHAT}", axes="batch, inst, d_out"
        ),
        **{
            key: expect_tensor(loss_dict[key], (batch, cfg.n_inst), what=f'loss_dict["{key}"]', axes="batch, inst")
            for key in ("L_reconstruction", "L_aux")
        },
        "loss": expect_tensor(loss.reshape(()), (), what=f"the loss from {WHAT}", axes="a scalar"),
    }


def _check_values(values: dict[str, Tensor], case: TranscoderCase, expected: TranscoderTerms, steps: Tensor) -> None:
    wrong: dict[str, TranscoderTerms] = {}
    with torch.no_grad():
        for message, variant in VARIANT_MISTAKES.items():
            try:
                wrong[message] = transcoder_terms(float64_copy(case.transcoder), steps, case, variant)
            except RuntimeError:  # this misreading cannot run at these sizes (x - b_dec with d_in ≠ d_out)
                continue
    for name, otherwise in PIECES.items():
        mistakes = [(message, getattr(terms, name).detach()) for message, terms in wrong.items()]
        try:
            diagnose_among(values[name], getattr(expected, name).detach(), mistakes, otherwise=otherwise)
        except CheckFailure as failure:
            raise CheckFailure(prefixed(case.description, str(failure))) from None


def _check_counters(case: TranscoderCase, acts: Tensor, before: Tensor, expected: TranscoderTerms) -> None:
    now = case.transcoder.steps_since_fired.detach().cpu()
    if torch.equal(now, expected.steps_since_fired):
        return
    if torch.equal(now, before):
        message = (
            "self.steps_since_fired did not change: call self.record_firing(acts) once, after reading the dead "
            "latents, so that AuxK knows which latents have stopped firing."
        )
    elif not case.training:
        message = (
            "steps_since_fired changed although the transcoder is evaluating: count firing only through "
            "self.record_firing(acts), which skips evaluation."
        )
    elif torch.equal(now, counted(before, acts, 2)):
        message = "self.record_firing(acts) ran twice in one forward: call it once."
    else:
        message = (
            "self.steps_since_fired was not updated as self.record_firing(acts) does it (once per forward, from the "
            "returned acts)."
        )
    raise CheckFailure(prefixed(case.description, message))


def _check_gradients(case: TranscoderCase, loss: Tensor, expected_loss: Tensor, twin: reference.Transcoder) -> None:
    leaves = {name: getattr(case.transcoder, name) for name in PARAMETERS}
    actual = gradients(loss.reshape(()), leaves, what=f"the loss from {WHAT}")
    expected = dict(zip(PARAMETERS, torch.autograd.grad(expected_loss, [getattr(twin, n) for n in PARAMETERS])))
    scale = max(float(grad.abs().max()) for grad in expected.values())
    name = first_gradient_mismatch(actual, expected, rtol=1e-4, atol=1e-5 * scale)
    if name is not None:
        raise CheckFailure(
            prefixed(
                case.description,
                f"The values from `{WHAT}` are right, but the gradient of `{name}` is not: part of the loss is "
                "computed from detached tensors (.detach(), .data or torch.no_grad()), so training would see only "
                "part of it.",
            )
        )


def _check_case(forward: Callable[..., object], case: TranscoderCase) -> None:
    transcoder = case.transcoder
    transcoder.train(case.training)
    before = transcoder.steps_since_fired.detach().cpu().clone()
    twin = float64_copy(transcoder)
    expected = transcoder_terms(twin, before, case)
    _, x = handed_in(case.x)
    grad_mode = torch.enable_grad() if case.training else torch.no_grad()
    with grad_mode:
        result = call_learner(
            forward, transcoder, x, case.target.clone(), what=WHAT, may_change={"self.steps_since_fired"}
        )
    values = _values(result, case)
    _check_values(values, case, expected, before)
    _check_counters(case, values["acts"], before, expected)
    if case.training:
        _check_gradients(case, result[1], expected.loss, twin)
    require_named_fields(result, what=WHAT)


def _with_learner_forward(forward: Callable[..., object], case: TranscoderCase) -> None:
    """The case's transcoder, whose forward is the learner's; the same class name, for a grader's sandbox."""
    case.transcoder.__class__ = type("Transcoder", (reference.Transcoder,), {"forward": forward})


@check(WHAT)
def test_transcoder_forward(learner: object) -> str:
    forward = learner_callable(learner, "forward", owner_hint="Transcoder")
    cases = transcoder_cases()  # drawn before the learner's code runs
    for case in cases:
        _with_learner_forward(forward, case)
        _check_case(forward, case)
    return "TopK latents, the prediction of the target, both loss terms, the total, its gradients, the counters"
