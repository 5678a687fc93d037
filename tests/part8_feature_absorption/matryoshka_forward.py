"""Check of Exercise 4, `MatryoshkaToySAE.forward`: values, gradients and the SAE's counters compared with a
float64 reimplementation (`_matryoshka_model`), on inputs kept clear of every top-k tie."""

import copy
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor

from part_utils.reference import part5_sae_variants as part5
from tests.checking import (
    CheckFailure,
    call_learner,
    check,
    close,
    diagnose_among,
    expect_tensor,
    first_gradient_mismatch,
    gradients,
    handed_in,
)
from tests.fixtures import own_method
from tests.part8_feature_absorption._common import _prefix
from tests.part8_feature_absorption._matryoshka_model import (
    M_PARAMETERS,
    MatryoshkaCase,
    MatryoshkaTerms,
    MatryoshkaVariant,
    _float64_parameters,
    _matryoshka_cases,
    _matryoshka_terms,
)
from tests.sae_output import require_named_fields

MATRYOSHKA = "MatryoshkaToySAE.forward"
Outputs = tuple[dict[str, Tensor], Tensor, Tensor, Tensor]
"""What the learner's forward returned: (loss_dict, loss, acts, h_reconstructed)."""

VARIANT_MISTAKES: dict[str, MatryoshkaVariant] = {
    # Misreadings that change the returned values ...
    "Each prefix reconstructs from every latent, so all prefix losses are the same: prefix m uses only the latents "
    "before prefix_sizes[m].": MatryoshkaVariant(prefixes="all latents"),
    "Every prefix's loss is the full dictionary's: if you build the reconstruction by adding groups to one tensor in "
    "place (`+=`) and keep it in a list, every entry is that same tensor, so each loss computed from the list sees "
    "the last reconstruction. Write `reconstruction = reconstruction + ...` (a new tensor), or take each prefix's "
    "loss as soon as it is built.": MatryoshkaVariant(prefixes="aliased"),
    "Each prefix leaves out its last latent: prefix m uses the latents 0 .. prefix_sizes[m] - 1, acts[..., :m] "
    "(a slice's end is exclusive).": MatryoshkaVariant(prefixes="one short"),
    "Each group of latents reconstructs alone; the prefixes are nested: prefix m uses all latents up to "
    "prefix_sizes[m], the earlier groups included.": MatryoshkaVariant(prefixes="groups"),
    "prefix_sizes are read as the sizes of successive groups; they are where each nested prefix ends (the last is "
    "d_sae).": MatryoshkaVariant(prefixes="group sizes"),
    "b_dec is added only to the full reconstruction: every prefix's reconstruction is b_dec plus its latents' decoded "
    "sum.": MatryoshkaVariant(bias="last"),
    "b_dec is left out of the reconstructions: add it back to every prefix's reconstruction (b_dec plus the decoded "
    "latents).": MatryoshkaVariant(bias="none"),
    "b_dec is added with every group, so prefix m holds it m times: start from b_dec once and add only decoded "
    "latents for each group.": MatryoshkaVariant(bias="per group"),
    "The prefix losses are averaged; L_matryoshka is their sum.": MatryoshkaVariant(reduce="mean"),
    "The empty prefix (b_dec alone) has a loss term too; sum only the prefixes listed in prefix_sizes.": (
        MatryoshkaVariant(empty_prefix=True)
    ),
    "This is Bussmann et al.'s loss (a term for b_dec alone, the sum divided by the number of prefixes plus one); "
    "the text's L_matryoshka is the plain sum of the listed prefixes' losses.": MatryoshkaVariant(
        empty_prefix=True, reduce="mean"
    ),
    "Each prefix picks its own top-k among its latents; the BatchTopK is applied once, to all latents, and each "
    "prefix uses those activations.": MatryoshkaVariant(topk="per prefix"),
    "The top-k is taken within each group of latents; apply self.activation once, to all pre-activations.": (
        MatryoshkaVariant(topk="per group")
    ),
    "The activations are a plain ReLU: use self.activation(pre_acts), BatchTopK's activation.": MatryoshkaVariant(
        topk="none"
    ),
    "The activations keep the top k of each input (TopK); BatchTopK keeps the top k·batch of the whole batch: use "
    "self.activation.": MatryoshkaVariant(topk="per input"),
    "The squared error is summed over d_in; each prefix's loss is its mean over d_in.": MatryoshkaVariant(
        squared="sum"
    ),
    "The decoder is used unnormalised: decode with self.W_dec_normalized.": MatryoshkaVariant(decoder="raw"),
    "AuxK reconstructs the residual of the first prefix; it uses the full reconstruction's residual, h - "
    "h_reconstructed.": MatryoshkaVariant(aux_from="first"),
    "The dead mask is read after self.record_firing(acts) has counted this batch: read it first, then record the "
    "firing.": MatryoshkaVariant(dead_after_counting=True),
    "The dead mask compares strictly (steps_since_fired > dead_after_steps): a latent is dead from exactly "
    "dead_after_steps steps without firing on (>=).": MatryoshkaVariant(dead=">"),
    "AuxK is given the activations: it ranks the dead latents by their pre-activations, which BatchTopK has set "
    "to 0 for most of them; pass pre_acts.": MatryoshkaVariant(aux_input="acts"),
    # ... and those that change only the loss.
    "The loss has no AuxK term: add aux_coeff · L_aux.": MatryoshkaVariant(with_aux=False),
    "L_aux enters the loss without its coefficient: add self.cfg.aux_coeff · L_aux.": MatryoshkaVariant(
        aux_coefficient=False
    ),
    "The loss trains only the full reconstruction: use L_matryoshka, the sum of every prefix's loss.": (
        MatryoshkaVariant(loss_terms="full only")
    ),
    "loss_dict[\"L_matryoshka\"] leaves out the full dictionary's loss: it sums every prefix's loss, the last "
    "(all latents) included.": MatryoshkaVariant(dict_matryoshka="before last"),
    'loss_dict["L_aux"] is already multiplied by aux_coeff: keep L_aux itself there, and weight it only in the '
    "loss.": MatryoshkaVariant(aux_in_dict="weighted"),
    "aux_coeff multiplies L_matryoshka; it weights L_aux: loss = L_matryoshka + aux_coeff · L_aux.": (
        MatryoshkaVariant(coefficient_on="matryoshka")
    ),
    "The loss adds L_reconstruction on top of L_matryoshka, counting the full dictionary twice: L_matryoshka already "
    "contains it.": MatryoshkaVariant(loss_terms="both"),
    "The loss is summed over the batch; average it over the batch (and sum over instances).": MatryoshkaVariant(
        batch="sum"
    ),
    "The loss is averaged over instances; sum it over instances (after the mean over the batch).": MatryoshkaVariant(
        instances="mean"
    ),
}
GRADIENT_MISTAKES = {
    "acts": "`acts` is detached in the smaller prefixes' reconstructions, so their losses cannot train the encoder: "
    "use acts itself everywhere.",
    "decoder": "The decoder is detached in the smaller prefixes' reconstructions, so their losses cannot train it: use "
    "W_dec_normalized itself everywhere.",
    "b_dec": "b_dec is detached in the smaller prefixes' reconstructions: it must receive gradient from every prefix.",
    "prefixes": "The smaller prefixes' losses carry no gradient (.detach(), .item() or torch.no_grad()), so only the "
    "full dictionary trains.",
}
PIECES = {
    "acts": "`acts` are not the BatchTopK activations of (h - b_dec) W_enc + b_enc: call self.activation(pre_acts) "
    "once, on all latents.",
    "h_reconstructed": "h_reconstructed is not the full dictionary's reconstruction, b_dec plus every latent decoded "
    "with W_dec_normalized.",
    "L_reconstruction": 'loss_dict["L_reconstruction"] should be the full dictionary\'s loss alone: the mean over '
    "d_in of (h_reconstructed - h)².",
    "L_matryoshka": 'loss_dict["L_matryoshka"] is wrong: it is the sum over the prefixes of each prefix\'s mean '
    "squared error, each prefix reconstructing b_dec plus its own latents.",
    "L_aux": 'loss_dict["L_aux"] should be self.auxk_loss(pre_acts, h, h_reconstructed, dead), with the dead mask '
    "read before this batch is counted.",
    "loss": "The loss should be L_matryoshka + aux_coeff · L_aux, averaged over the batch and summed over instances.",
}
"""Every returned value, in the order they are compared, with what to say when it matches no known mistake."""


def _forward_output(result: object, case: MatryoshkaCase) -> Outputs:
    if not isinstance(result, tuple) or len(result) != 4:
        raise CheckFailure(
            f"`{MATRYOSHKA}` should return four things, (loss_dict, loss, acts, h_reconstructed), as every SAE's "
            "forward."
        )
    loss_dict, loss, acts, h_reconstructed = result
    if not isinstance(loss_dict, Mapping):
        raise CheckFailure(
            f"The first thing `{MATRYOSHKA}` returns should be the dictionary of loss terms, but it is "
            f"{type(loss_dict).__name__}."
        )
    missing = [key for key in ("L_reconstruction", "L_matryoshka", "L_aux") if key not in loss_dict]
    if missing:
        raise CheckFailure(
            f"`loss_dict` from `{MATRYOSHKA}` has no {', '.join(repr(key) for key in missing)}: it needs "
            "L_reconstruction, L_matryoshka and L_aux."
        )
    return dict(loss_dict), loss, acts, h_reconstructed


def _compare(
    actual: Tensor, expected: Tensor, mistakes: Sequence[tuple[str, Tensor]], case: MatryoshkaCase, otherwise: str
) -> None:
    try:
        diagnose_among(actual, expected, mistakes, otherwise=otherwise, rtol=1e-4, atol=1e-5)
    except CheckFailure as failure:
        raise CheckFailure(_prefix(case, str(failure))) from None


def _variant_terms(
    case: MatryoshkaCase, p: Mapping[str, Tensor], mistakes: Mapping[str, MatryoshkaVariant]
) -> dict[str, MatryoshkaTerms]:
    with torch.no_grad():
        return {
            message: _matryoshka_terms(case.before, p, case.h, case.training, variant)
            for message, variant in mistakes.items()
        }


def _returned_values(case: MatryoshkaCase, outputs: Outputs) -> dict[str, Tensor]:
    """Every returned value as a float64 CPU tensor, after naming a wrong type or shape."""
    loss_dict, loss, acts, h_reconstructed = outputs
    batch, sae_cfg = case.h.shape[0], case.sae.cfg
    shape = (batch, sae_cfg.n_inst)
    values = {
        "acts": expect_tensor(
            acts, (batch, sae_cfg.n_inst, sae_cfg.d_sae), what=f"acts from {MATRYOSHKA}", axes="batch, inst, d_sae"
        ),
        "h_reconstructed": expect_tensor(
            h_reconstructed, tuple(case.h.shape), what=f"h_reconstructed from {MATRYOSHKA}", axes="batch, inst, d_in"
        ),
        **{
            key: expect_tensor(loss_dict[key], shape, what=f'loss_dict["{key}"]', axes="batch, inst")
            for key in ("L_reconstruction", "L_matryoshka", "L_aux")
        },
    }
    if not isinstance(loss, Tensor) or loss.numel() != 1:
        raise CheckFailure(
            f"The loss from `{MATRYOSHKA}` should be one number, a 0-dimensional tensor (mean over the batch, sum over "
            "instances)."
        )
    values["loss"] = expect_tensor(loss.reshape(()), (), what=f"the loss from {MATRYOSHKA}", axes="a scalar")
    return values


def _first_prefix_mistakes(
    case: MatryoshkaCase, expected: MatryoshkaTerms, p: Mapping[str, Tensor]
) -> dict[str, list[tuple[str, Tensor]]]:
    """Mistakes that return the wrong prefix's values, by the name of the value they are in."""
    with torch.no_grad():
        first = _matryoshka_terms(case.before, p, case.h, case.training, MatryoshkaVariant(returned="first"))
    first_prefix = first.h_reconstructed
    first_loss = (first_prefix - case.h.detach().cpu().double()).pow(2).mean(dim=-1)
    return {
        "h_reconstructed": [
            ("h_reconstructed is the first prefix's reconstruction; return the full dictionary's.", first_prefix)
        ],
        "L_reconstruction": [
            (
                'loss_dict["L_reconstruction"] holds the sum of the prefix losses; keep that in L_matryoshka and give '
                "the full dictionary's loss here.",
                expected.L_matryoshka.detach(),
            ),
            ("loss_dict[\"L_reconstruction\"] is the first prefix's loss; it is the full dictionary's.", first_loss),
        ],
    }


def _check_matryoshka_values(
    case: MatryoshkaCase, outputs: Outputs, expected: MatryoshkaTerms, p: Mapping[str, Tensor]
) -> None:
    values = _returned_values(case, outputs)
    wrong = _variant_terms(case, p, VARIANT_MISTAKES)
    extra = _first_prefix_mistakes(case, expected, p)
    for name, otherwise in PIECES.items():
        as_wrong = [(message, getattr(terms, name).detach()) for message, terms in wrong.items()]
        _compare(values[name], getattr(expected, name).detach(), extra.get(name, []) + as_wrong, case, otherwise)


def _check_matryoshka_gradients(
    case: MatryoshkaCase, loss: Tensor, leaves: Mapping[str, Tensor], expected_loss: Tensor, p: Mapping[str, Tensor]
) -> None:
    actual = gradients(loss, leaves, what=f"the loss from {MATRYOSHKA}")
    expected = dict(zip(p, torch.autograd.grad(expected_loss, list(p.values()), retain_graph=True)))
    scale = max(float(grad.abs().max()) for grad in expected.values())
    if first_gradient_mismatch(actual, expected, rtol=1e-4, atol=1e-5 * scale) is None:
        return
    for place, message in GRADIENT_MISTAKES.items():
        cut = _matryoshka_terms(case.before, p, case.h, True, MatryoshkaVariant(cut=place)).loss
        if close(actual, dict(zip(p, torch.autograd.grad(cut, list(p.values())))), rtol=1e-4, atol=1e-5 * scale):
            raise CheckFailure(_prefix(case, message))
    name = first_gradient_mismatch(actual, expected, rtol=1e-4, atol=1e-5 * scale)
    raise CheckFailure(
        _prefix(
            case,
            f"The values from `{MATRYOSHKA}` are right, but the gradient of `{name}` is not: part of the loss is "
            "computed from detached tensors (.detach(), .data or torch.no_grad()), so training would see only part of "
            "it.",
        )
    )


def _check_counters(case: MatryoshkaCase, expected: MatryoshkaTerms, before: Mapping[str, Tensor]) -> None:
    sae = case.sae
    counts = sae.steps_since_fired.detach().cpu()
    if not torch.equal(counts, expected.steps_since_fired):
        if torch.equal(counts, before["steps_since_fired"]):
            raise CheckFailure(
                _prefix(
                    case,
                    "self.steps_since_fired did not change: call self.record_firing(acts) after computing L_aux, so "
                    "that AuxK knows which latents are dead.",
                )
            )
        if not case.training:
            raise CheckFailure(
                _prefix(
                    case,
                    "steps_since_fired changed although the SAE is evaluating: count firing only through "
                    "self.record_firing(acts), which skips evaluation.",
                )
            )
        raise CheckFailure(
            _prefix(
                case,
                "self.steps_since_fired was not updated as self.record_firing(acts) does it (once per forward, from "
                "the returned acts).",
            )
        )
    threshold = sae.threshold.detach().cpu().double()
    if close(threshold, expected.threshold, rtol=1e-5, atol=1e-6):
        return
    if close(threshold, before["threshold"], rtol=1e-5, atol=1e-6):
        raise CheckFailure(
            _prefix(
                case,
                "The BatchTopK threshold did not move: use self.activation(pre_acts), which in training also keeps the "
                "threshold used at inference.",
            )
        )
    raise CheckFailure(
        _prefix(
            case,
            "The BatchTopK threshold moved more than once, or with other activations: call self.activation once per "
            "forward, on all pre-activations.",
        )
    )


def _check_matryoshka_case(forward: Callable[..., object], case: MatryoshkaCase) -> None:
    sae = case.sae
    sae.train(case.training)
    before = {
        "steps_since_fired": sae.steps_since_fired.detach().cpu().clone(),
        "threshold": sae.threshold.detach().cpu().double().clone(),
    }
    p = _float64_parameters(sae)
    case.before = copy.deepcopy(sae)  # every expectation reads the counters and the threshold as they were
    expected = _matryoshka_terms(case.before, p, case.h, case.training)
    leaf, h_in = handed_in(case.h)
    grad_mode = torch.enable_grad() if case.training else torch.no_grad()
    with grad_mode:
        may_change = {"self.steps_since_fired", "self.threshold"}
        result = call_learner(forward, sae, h_in, what=MATRYOSHKA, may_change=may_change)
    outputs = _forward_output(result, case)
    _check_matryoshka_values(case, outputs, expected, p)
    _check_counters(case, expected, before)
    if case.training:
        loss = outputs[1]
        leaves = {name: getattr(sae, name) for name in M_PARAMETERS}
        _check_matryoshka_gradients(case, loss.reshape(()), leaves, expected.loss, p)
    require_named_fields(result)


@check(MATRYOSHKA)
def test_matryoshka_forward(learner: object) -> str:
    forward = own_method(
        learner, owner="MatryoshkaToySAE", inherited=part5.TopKToySAE, whose="TopK's, inherited through BatchTopKToySAE"
    )
    cases = _matryoshka_cases()  # drawn before the learner's code runs
    for case in cases:
        _check_matryoshka_case(forward, case)
    return "one BatchTopK, nested prefixes with b_dec, summed losses, AuxK, counters, gradients, inference mode"
