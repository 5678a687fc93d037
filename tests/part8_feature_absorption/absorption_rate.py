"""Check of Exercise 3, `absorption_rate`: exact, on designed latents and features (see `_common`),
with the parent latents the text would choose and with others."""

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from part_utils.device import get_device
from part_utils.reference import part8_feature_absorption as reference
from tests.checking import CheckFailure, call_learner, check, diagnose_among, expect_tensor, learner_function
from tests.part8_feature_absorption._common import (
    AbsorptionCase,
    _candidates,
    _choose_parent_latents,
    _edge_case,
    _events,
    _main_case,
    _no_candidate_case,
    _prefix,
    _single_family_case,
)


@dataclass(frozen=True)
class AbsorptionCount:
    """One way of computing the absorption rate: the text's (the defaults) or a misreading of it."""

    counted_over: str = "with child"  # the inputs that can be absorbed: with child, parent, all
    divided_by: str = "with child"  # the inputs the count is divided by; also silent (eligible, ℓ_p silent)
    children: str = "own"  # which children make an input eligible: own, any family, child major, every child
    main_latent: str = "own"  # own, first instance (ℓ_p of instance 0 used for every instance)
    parent_silent: bool = True
    carrier_fires: bool = True
    carriers: str = ">="  # >=, >, abs, all
    threshold: float | None = None
    count_carriers: bool = False
    fires: str = ">"
    pooled: bool = False
    per_child: bool = False
    report: str = "absorbed"  # absorbed, parent fires


def _absorption(case: AbsorptionCase, count: AbsorptionCount = AbsorptionCount()) -> Tensor:
    assert case.parent_latent is not None
    if count.per_child:
        _, child_on = reference.family_presence(case.features, case.n_parents)
        single = replace(count, per_child=False)
        rates = [
            _absorption(replace(case, features=reference.only_child(case.features, case.n_parents, c)), single)
            for c in range(child_on.shape[-1])
        ]
        return torch.stack(rates).mean(dim=0)
    threshold = case.threshold if count.threshold is None else count.threshold
    fires = (case.acts >= 0) if count.fires == ">=" else (case.acts > 0)
    parent_latent = case.parent_latent
    if count.main_latent == "first instance":
        parent_latent = parent_latent[:1].expand_as(parent_latent)
    parent_fires = fires.gather(-1, parent_latent.expand(case.acts.shape[0], -1, -1))
    latent = torch.arange(case.acts.shape[-1])
    not_parent = latent[None, :, None] != parent_latent[:, None, :]
    carriers = _candidates(case.parent_cosine, threshold, count.carriers) & not_parent
    carrier_count = torch.einsum("bis,isp->bip", fires.double(), carriers.double())
    absorbed = _events(case, count.counted_over, count.children).clone()
    if count.report == "parent fires":
        absorbed &= parent_fires
    else:
        if count.parent_silent:
            absorbed &= ~parent_fires
        if count.carrier_fires:
            absorbed &= carrier_count > 0
    if count.divided_by == "silent":
        eligible = _events(case, "with child", count.children) & ~parent_fires
    else:
        eligible = _events(case, count.divided_by, count.children)
    numerator = (absorbed.double() * (carrier_count if count.count_carriers else 1.0)).sum(dim=0)
    denominator = eligible.sum(dim=0).double()
    if count.pooled:
        numerator = numerator.sum(dim=0).expand_as(numerator)
        denominator = denominator.sum(dim=0).expand_as(denominator)
    return numerator / denominator.clamp_min(1)


ABSORPTION_MISTAKES: dict[str, list[AbsorptionCount]] = {
    "The rate is counted over inputs where no child is active too: absorption is measured only on inputs where the "
    "parent and one of its children are active.": [
        AbsorptionCount(divided_by="parent"),
        AbsorptionCount(divided_by="parent", counted_over="parent"),
        AbsorptionCount(counted_over="parent"),
    ],
    "The rate is a fraction of all inputs; divide by the number of inputs where the parent and one of its children "
    "are active.": [
        AbsorptionCount(divided_by="all"),
        AbsorptionCount(divided_by="all", counted_over="all"),
    ],
    "The rate is divided by the eligible inputs on which ℓ_p is silent; divide by every eligible input (parent and "
    "one of its children active), whether ℓ_p fires or not.": [AbsorptionCount(divided_by="silent")],
    "An input counts as eligible when a child of any family is active (`.any` over every child): it needs one of "
    "the parent's own children, `family_presence`'s children [batch, inst, parents, children] reduced over the last "
    "axis.": [AbsorptionCount(children="any family")],
    "The children are read in the wrong layout ([children, parents]): child c of parent p is feature n_parents + p · "
    "n_children + c, so unflatten them as [parents, children] (as `family_presence` does).": [
        AbsorptionCount(children="child major")
    ],
    "No input is eligible: an input is eligible when the parent and one of its children are active "
    "(`.any` over the children axis), not all of them (`.all`).": [AbsorptionCount(children="every child")],
    "ℓ_p of the first instance is used for every instance: gather each instance's own parent_latent[inst, parent] "
    "(parent_latent.expand(batch, -1, -1) with gather on the latent axis).": [
        AbsorptionCount(main_latent="first instance")
    ],
    "Inputs on which ℓ_p fires are counted as absorbed: an input is absorbed only when the parent's own latent is "
    "silent.": [AbsorptionCount(parent_silent=False)],
    "Inputs where ℓ_p is silent count as absorbed even when no other latent carrying the parent fires: that is a "
    "missing parent, not absorption.": [AbsorptionCount(carrier_fires=False)],
    "Any other latent firing counts as a carrier; a carrier must have decoder cosine ≥ threshold with the parent.": [
        AbsorptionCount(carriers="all")
    ],
    "Carriers are compared strictly (cosine > threshold); a latent with cosine exactly at the threshold carries the "
    "parent (≥).": [AbsorptionCount(carriers=">")],
    "Latents whose decoder points against the parent count as carriers (|cosine| ≥ threshold); use the signed "
    "cosine.": [AbsorptionCount(carriers="abs")],
    "The function uses τ = 0.5 whatever `threshold` is passed: compare with the `threshold` argument.": [
        AbsorptionCount(threshold=reference.CARRIES_PARENT_AT)
    ],
    "The numerator counts carrier latents, not inputs: an absorbed input counts once however many carriers fire.": [
        AbsorptionCount(count_carriers=True)
    ],
    "A latent with activation 0 counts as firing (acts >= 0): a latent fires when its activation is > 0.": [
        AbsorptionCount(fires=">=")
    ],
    "The counts are pooled over instances: compute the rate of every instance from its own inputs.": [
        AbsorptionCount(pooled=True)
    ],
    "The rate is the mean of the children's rates; count all eligible inputs of a parent together, whichever child "
    "is active.": [AbsorptionCount(per_child=True)],
    "This is how often ℓ_p fires on the eligible inputs; absorption is how often it is silent while another latent "
    "carrying the parent fires.": [AbsorptionCount(report="parent fires")],
}


def _put_carrier_on_threshold(case: AbsorptionCase, inst: int, parent: int) -> None:
    """Give (inst, parent) a carrier with cosine exactly at the threshold that alone absorbs one eligible input."""
    assert case.parent_latent is not None
    main = int(case.parent_latent[inst, parent])
    parent_on, child_on = reference.family_presence(case.features, case.n_parents)
    eligible = (parent_on[:, inst, parent] & child_on[:, inst, parent].any(dim=-1)).nonzero().flatten()
    others = [
        s for s in range(case.acts.shape[-1]) if s != main and case.parent_cosine[inst, s, parent] < case.threshold
    ]
    if len(eligible) == 0 or not others:
        return
    carrier, example = others[0], int(eligible[0])
    case.parent_cosine[inst, carrier, parent] = case.threshold
    carries = case.parent_cosine[inst, :, parent] >= case.threshold
    case.acts[example, inst] = torch.where(carries, 0.0, case.acts[example, inst])
    case.acts[example, inst, carrier] = 1.0


def _absorption_cases() -> list[AbsorptionCase]:
    cases = [_main_case(), _edge_case(), _no_candidate_case(), _single_family_case()]
    for case in cases:
        case.parent_latent = _choose_parent_latents(case)
    _put_carrier_on_threshold(cases[0], inst=1, parent=0)
    # The parent latent as given, not necessarily the best: a candidate chosen at random for every cell.
    shuffled = _main_case(batch=47, n_inst=2, d_sae=7, n_parents=3, n_children=3)
    shuffled.description = "With another choice of parent latents"
    candidates = shuffled.parent_cosine >= shuffled.threshold
    draws = torch.rand(candidates.shape, dtype=torch.float64)
    shuffled.parent_latent = torch.where(candidates, draws, -1.0).argmax(dim=1)
    return [*cases, shuffled]


def _check_absorption_case(function: Callable[..., object], case: AbsorptionCase, device: torch.device) -> None:
    assert case.parent_latent is not None
    acts, features, cosine = (tensor.float().to(device) for tensor in (case.acts, case.features, case.parent_cosine))
    parent_latent = case.parent_latent.to(device)
    result = call_learner(function, acts, features, cosine, parent_latent, case.threshold, what="absorption_rate")
    n_inst, n_parents = case.parent_cosine.shape[0], case.n_parents
    right_shape = isinstance(result, Tensor) and result.shape == (n_inst, n_parents)
    if right_shape and result.dtype in (torch.int64, torch.int32, torch.long):
        raise CheckFailure(
            "`absorption_rate` returned integer counts: divide the absorbed count by the eligible count (as floats) to "
            "get a rate."
        )
    if right_shape and torch.is_floating_point(result) and not torch.isfinite(result).all():
        raise CheckFailure(
            _prefix(
                case,
                "`absorption_rate` gives NaN or inf for a parent with no eligible input: divide by the count clamped "
                "to at least 1 (clamp_min(1)), which gives 0 there.",
            )
        )
    actual = expect_tensor(result, (n_inst, n_parents), what="absorption_rate", axes="inst, parents")
    expected = _absorption(case)
    mistakes = {
        message: [_absorption(case, count) for count in counts] for message, counts in ABSORPTION_MISTAKES.items()
    }
    diagnose_among(
        actual,
        expected,
        mistakes,
        otherwise=_prefix(
            case,
            "`absorption_rate` is wrong: among the inputs where the parent and one of its children are active, count "
            "those on which ℓ_p is silent (activation 0) while another latent with cosine ≥ threshold fires, and "
            "divide by their number.",
        ),
        rtol=1e-5,
        atol=1e-6,
    )


@check("absorption_rate")
def test_absorption_rate(learner: object) -> str:
    function = learner_function(learner, "absorption_rate")
    cases = _absorption_cases()  # drawn before the learner's code runs
    device = get_device()
    for case in cases:
        _check_absorption_case(function, case, device)
    return "eligible inputs, silent parent latent, firing carriers, 0 where nothing is eligible"
