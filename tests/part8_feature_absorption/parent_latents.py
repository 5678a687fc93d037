"""Check of Exercise 2, `parent_latents`: exact, on designed latents and features (see `_common`)."""

from collections.abc import Callable

import torch
from torch import Tensor

from part_utils.device import get_device
from part_utils.reference import part8_feature_absorption as reference
from tests.checking import CheckFailure, call_learner, check, learner_function
from tests.part8_feature_absorption._common import (
    AbsorptionCase,
    ParentChoice,
    _choose_parent_latents,
    _edge_case,
    _main_case,
    _no_candidate_case,
    _prefix,
    _single_family_case,
)


def _tie_case() -> AbsorptionCase:
    """Two candidates fire on every parent-alone input. Parent 0: the higher-numbered, lower-cosine one also fires
    with the children; parent 1: the higher-numbered, higher-cosine one does; parent 2: neither, so the
    lower-numbered wins."""
    case = _main_case(batch=40, n_inst=2, d_sae=6, n_parents=3, n_children=3)
    case.description = "When two candidates fire on every parent-alone input"
    parent_on, child_on = reference.family_presence(case.features, case.n_parents)
    # parent: ((low, its cosine), (high, its cosine), the right latent)
    designs = {0: ((0, 0.9), (3, 0.6), 3), 1: ((1, 0.6), (4, 0.9), 4), 2: ((2, 0.6), (5, 0.9), 2)}
    for inst in range(2):
        for parent, ((low, low_cos), (high, high_cos), right) in designs.items():
            alone = parent_on[:, inst, parent] & ~child_on[:, inst, parent].any(dim=-1)
            with_child = parent_on[:, inst, parent] & child_on[:, inst, parent].any(dim=-1)
            case.parent_cosine[inst, :, parent] = -0.2
            case.parent_cosine[inst, [low, high], parent] = torch.tensor([low_cos, high_cos], dtype=torch.float64)
            for latent in (low, high):
                case.acts[parent_on[:, inst, parent], inst, latent] = 0.0
                # The right latent has the larger activations, so that summing activations still picks it.
                case.acts[alone, inst, latent] = 1.5 if latent == right else 0.8
            if parent != 2:
                case.acts[with_child, inst, right] = 1.0
    return case


PARENT_CHOICE_MISTAKES: list[tuple[str, ParentChoice]] = [
    (
        "ℓ_p is the latent with the highest decoder cosine with the parent; the text picks, among the candidates, the "
        "one that fires on the most inputs where the parent is alone.",
        ParentChoice(score="cosine", candidates="all"),
    ),
    (
        "The count includes inputs where a child is active too: count only the inputs where the parent is active "
        "alone.",
        ParentChoice(events="parent"),
    ),
    (
        "The count is over the inputs with a child; count the inputs where the parent is active alone, with none of "
        "its children.",
        ParentChoice(events="with child"),
    ),
    (
        "The count is over all inputs; count only the inputs where the parent is active alone.",
        ParentChoice(events="all"),
    ),
    (
        "A parent counts as alone only when no child of any family is active (`.any` over every child): it is "
        "alone when none of its own children is, `family_presence`'s children [batch, inst, parents, children] "
        "reduced over the last axis.",
        ParentChoice(children="any family"),
    ),
    (
        "The children are read in the wrong layout ([children, parents]): child c of parent p is feature "
        "n_parents + p · n_children + c, so unflatten them as [parents, children] (as `family_presence` does).",
        ParentChoice(children="child major"),
    ),
    (
        "Non-candidates get a score of 0, so where no candidate fires on a parent-alone input they tie with the "
        "candidates and can be chosen: give them a score below any count (-1), then break the ties among "
        "candidates only.",
        ParentChoice(candidates="zero"),
    ),
    (
        "The score sums activations; count the parent-alone inputs on which the latent fires (activation > 0).",
        ParentChoice(score="activation"),
    ),
    (
        "The score divides by how often the latent fires overall; count the parent-alone inputs on which it fires.",
        ParentChoice(score="precision"),
    ),
    (
        "Latents with cosine below the threshold compete too: only candidates (cosine ≥ threshold) can be the "
        "parent's latent.",
        ParentChoice(candidates="all"),
    ),
    (
        "The candidates are compared strictly (cosine > threshold); a latent with cosine exactly at the threshold is a "
        "candidate (≥).",
        ParentChoice(candidates=">"),
    ),
    (
        "The candidates include latents whose decoder points against the parent (|cosine| ≥ threshold); use the "
        "signed cosine.",
        ParentChoice(candidates="abs"),
    ),
    (
        "The function uses τ = 0.5 whatever `threshold` is passed: compare with the `threshold` argument.",
        ParentChoice(threshold=reference.CARRIES_PARENT_AT),
    ),
    (
        "A latent with activation 0 counts as firing (acts >= 0): a latent fires when its activation is > 0.",
        ParentChoice(fires=">="),
    ),
    (
        "The counts are pooled over instances, so every instance gets the same latent: count per instance.",
        ParentChoice(pooled=True),
    ),
    (
        "Ties in the parent-alone count go to the lowest-numbered candidate; the text gives them to the one that "
        "fires on the most inputs where the parent is active, alone or not.",
        ParentChoice(tie="lowest"),
    ),
    (
        "Candidates still tied after both counts go to the highest-numbered one; the text gives them to the "
        "lowest-numbered, which `argmax` returns (the first maximum).",
        ParentChoice(tie="highest"),
    ),
    (
        "Ties in the parent-alone count go to the candidate with the higher cosine; the text gives them to the one "
        "that fires on the most inputs where the parent is active, alone or not.",
        ParentChoice(tie="highest cosine"),
    ),
]


def _decided(case: AbsorptionCase) -> Tensor:
    """[inst, parents]: where the choice matters (some latent is a candidate)."""
    return (case.parent_cosine >= case.threshold).any(dim=1)


def _check_parent_latents_form(result: object, case: AbsorptionCase) -> Tensor:
    """The learner's result as int64 latent indices on the CPU, after naming a wrong type, shape or dtype."""
    n_inst, n_parents = case.parent_cosine.shape[0], case.n_parents
    if not isinstance(result, Tensor):
        raise CheckFailure(
            "`parent_latents` should return a tensor of latent indices, [inst, parents], but returned "
            f"{type(result).__name__}."
        )
    if result.shape == (n_inst, case.acts.shape[-1], n_parents):
        raise CheckFailure(
            _prefix(
                case,
                "`parent_latents` returned [inst, d_sae, parents] (a mask or the scores?): return one latent index per "
                "instance and parent, [inst, parents].",
            )
        )
    if result.shape == (n_parents, n_inst) and n_parents != n_inst:
        raise CheckFailure(
            _prefix(
                case,
                "`parent_latents` returned [parents, inst]: the result is [inst, parents] (take the argmax over the "
                "latent axis, dim=1).",
            )
        )
    if result.shape != (n_inst, n_parents) and result.numel() == n_inst * n_parents and 1 in (n_inst, n_parents):
        raise CheckFailure(
            _prefix(
                case,
                f"`parent_latents` returned shape {tuple(result.shape)}, but [inst, parents] here is "
                f"{(n_inst, n_parents)}: keep both axes, even one of length 1 (no .squeeze()).",
            )
        )
    if result.shape != (n_inst, n_parents):
        raise CheckFailure(
            _prefix(
                case,
                f"`parent_latents` returned shape {tuple(result.shape)}, but [inst, parents] here is "
                f"{(n_inst, n_parents)}: take the argmax over the latent axis.",
            )
        )
    if torch.is_floating_point(result) or result.dtype == torch.bool:
        raise CheckFailure(
            "`parent_latents` returned a floating-point or boolean tensor: return integer latent indices (argmax gives "
            "int64), so that they can index the latents."
        )
    return result.detach().cpu().long()


def _check_parent_latents_case(function: Callable[..., object], case: AbsorptionCase, device: torch.device) -> None:
    acts, features, cosine = (tensor.float().to(device) for tensor in (case.acts, case.features, case.parent_cosine))
    result = call_learner(function, acts, features, cosine, case.threshold, what="parent_latents")
    actual = _check_parent_latents_form(result, case)
    decided = _decided(case)
    expected = _choose_parent_latents(case)
    if torch.equal(actual[decided], expected[decided]):
        return
    if ((actual < 0) | (actual >= case.acts.shape[-1])).any():
        raise CheckFailure(
            _prefix(case, "`parent_latents` returned indices outside 0 .. d_sae - 1: return latent numbers.")
        )
    matching = [
        message
        for message, choice in PARENT_CHOICE_MISTAKES
        if torch.equal(actual[decided], _choose_parent_latents(case, choice)[decided])
    ]
    if matching:
        raise CheckFailure(_prefix(case, matching[0]))
    raise CheckFailure(
        _prefix(
            case,
            "`parent_latents` picks other latents: for each instance and parent, among the latents with cosine ≥ "
            "threshold, take the one that fires (activation > 0) on the most inputs where the parent is active and "
            "none of its children is.",
        )
    )


@check("parent_latents")
def test_parent_latents(learner: object) -> str:
    function = learner_function(learner, "parent_latents")
    # Drawn before the learner's code runs.
    cases = [_main_case(), _tie_case(), _edge_case(), _no_candidate_case(), _single_family_case()]
    device = get_device()
    for case in cases:
        _check_parent_latents_case(function, case, device)
    return "chosen by parent-alone firing among the candidates, ties broken by firing with the parent, edge cases"
