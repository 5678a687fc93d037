"""Checks for Part 8 (feature absorption). Call them from the notebook, e.g.
`test_generate_hierarchical_batch(HierarchicalToyData)`.

The sampler check compares counts with bounds that a correct sampler exceeds with probability
below 1e-9 (`binomial_tolerance`), so its verdict never depends on how many random numbers the
learner's code draws, or in which order; the hierarchy itself (no child without its parent, at
most one child per family) is checked exactly. The absorption checks are exact: they run the
learner's function on designed latents and features where every plausible misreading of the
definition gives another answer. The Matryoshka check compares values, gradients and the SAE's
counters with a float64 reimplementation, on inputs kept clear of every top-k tie.
"""

import copy
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from part_utils.device import get_device
from part_utils.reference import part5_sae_variants as part5
from part_utils.reference import part8_feature_absorption as reference
from tests.checking import (
    KINK_MARGIN,
    CheckFailure,
    binomial_tolerance,
    call_learner,
    check,
    close,
    diagnose_among,
    expect_tensor,
    first_gradient_mismatch,
    gradients,
    handed_in,
    learner_callable,
    learner_function,
)
from tests.sampling import (
    FALSE_ALARM_PER_TEST,
    check_examples_vary,
    check_fresh_draws,
    check_magnitudes_vary,
    check_presence_frequencies,
    check_presence_independent,
    check_uniform,
    check_values_not_shared,
    draw_twice,
    independence_messages,
    neighbour_comparisons,
    sample_values,
)

# generate_hierarchical_batch ------------------------------------------------------------------

SAMPLER = "generate_hierarchical_batch"
SAMPLER_BATCH = 100_000
# Numbers unlike the notebook's (0.15, 0.8, 3 children, [0.8, 1.2]), so that hard-coded ones fail,
# and far enough apart that, at this batch size, every two of the probabilities a mistake can give
# differ by more than the sum of their tolerances (the suite proves it): no mistake can pass for
# the right sampler, nor be named as another.
SAMPLER_CONFIG = {
    "n_inst": 4, "n_parents": 3, "n_children": 4, "d_hidden": 6, "parent_probability": 0.1,
    "child_probability": 0.45, "min_magnitude": 0.5, "max_magnitude": 2.0, "direction_seed": 3,
}
NOTEBOOK_CONFIG = reference.HierarchyConfig(n_inst=1)
MAGNITUDE_EXAMPLES = 20_000  # plenty for the magnitude tests, whose tolerances follow the count they get


def _sampler_data() -> reference.HierarchicalToyData:
    return reference.HierarchicalToyData(reference.HierarchyConfig(**SAMPLER_CONFIG), device=get_device())


def _marginals(cfg: reference.HierarchyConfig) -> Tensor:
    """P(feature active) for every instance and feature, [inst, feats]."""
    child = cfg.parent_probability * cfg.child_probability / cfg.n_children
    per_feature = [cfg.parent_probability] * cfg.n_parents + [child] * (cfg.n_parents * cfg.n_children)
    return torch.tensor(per_feature, dtype=torch.float64).expand(cfg.n_inst, -1)


def _same_family(cfg: reference.HierarchyConfig) -> Tensor:
    """[feats, feats]: True for two features of one family (a parent and its children), whose presence is linked."""
    family = torch.cat([torch.arange(cfg.n_parents), torch.arange(cfg.n_parents).repeat_interleave(cfg.n_children)])
    return family[:, None] == family[None, :]


def _layouts(cfg: reference.HierarchyConfig) -> dict[str, list[int]]:
    """Other orders a learner might put the features in, as the permutation that would bring them to ours."""
    P, C = cfg.n_parents, cfg.n_children
    tree = [f for p in range(P) for f in (p, *(P + p * C + c for c in range(C)))]
    child_major = list(range(P)) + [P + c * P + p for p in range(P) for c in range(C)]
    return {
        "each parent followed by its own children": [tree.index(f) for f in range(P * (1 + C))],
        "the children ordered by child number first (child 0 of every parent, then child 1, ...)": child_major,
    }


def _violations(present: Tensor, cfg: reference.HierarchyConfig) -> tuple[int, int]:
    """(children active without their parent, families with more than one child active)."""
    parent_on = present[..., : cfg.n_parents]
    children = present[..., cfg.n_parents :].unflatten(-1, (cfg.n_parents, cfg.n_children))
    orphans = int((children.any(dim=-1) & ~parent_on).sum())
    crowded = int((children.sum(dim=-1) > 1).sum())
    return orphans, crowded


def _check_magnitude_range(values: Tensor, cfg: reference.HierarchyConfig) -> None:
    low, high = cfg.min_magnitude, cfg.max_magnitude
    present = values[values != 0]
    if present.numel() == 0:
        raise CheckFailure(f"`{SAMPLER}` returned only zeros: parents must be active with probability parent_probability.")
    smallest, largest = float(present.min()), float(present.max())
    if smallest < 0:
        raise CheckFailure(f"`{SAMPLER}` returned negative values: magnitudes must be uniform on [min_magnitude, max_magnitude] (torch.rand, not torch.randn).")
    slack = 1e-5 * high
    if smallest >= low - slack and largest <= high + slack:
        return
    if largest <= 1 + slack:
        raise CheckFailure(
            f"The magnitudes from `{SAMPLER}` lie in [0, 1], not in [min_magnitude, max_magnitude]: rescale the uniform draw u "
            "to min_magnitude + (max_magnitude - min_magnitude) · u."
        )
    if largest <= high + slack:
        raise CheckFailure(
            f"Some magnitudes from `{SAMPLER}` fall below min_magnitude: the draw must start at min_magnitude, "
            "min_magnitude + (max_magnitude - min_magnitude) · u."
        )
    if smallest >= low - slack:
        raise CheckFailure(
            f"Some magnitudes from `{SAMPLER}` exceed max_magnitude: scale the uniform draw u by the width of the range, "
            "min_magnitude + (max_magnitude - min_magnitude) · u, not by max_magnitude."
        )
    raise CheckFailure(f"The magnitudes from `{SAMPLER}` are not confined to [min_magnitude, max_magnitude]: draw them uniformly on that range.")


def _check_hierarchy(present: Tensor, cfg: reference.HierarchyConfig) -> None:
    """Exact: no child without its parent, never two children of one parent; a wrong layout is named as such."""
    orphans, crowded = _violations(present, cfg)
    if orphans == 0 and crowded == 0:
        return
    for description, permutation in _layouts(cfg).items():
        if _violations(present[..., permutation], cfg) == (0, 0):
            raise CheckFailure(
                f"The features from `{SAMPLER}` are in another order ({description}): put the parents first, then the "
                "children of parent 0, then those of parent 1, and so on, so that child c of parent p is feature "
                "n_parents + p · n_children + c."
            )
    if orphans:
        raise CheckFailure(
            f"A child from `{SAMPLER}` is active without its parent: decide whether a family has a child only where "
            "the parent is active (parent_on & (draw < child_probability))."
        )
    raise CheckFailure(
        f"Two children of one parent from `{SAMPLER}` are active at once: exactly one child is active when the parent has "
        "one; pick which with a single draw (torch.randint over the children) instead of a draw per child."
    )


def parent_alternatives(cfg: reference.HierarchyConfig) -> dict[str, float]:
    """The probability of an active parent that each plausible mistake gives, with the sentence naming it."""
    p, q = cfg.parent_probability, cfg.child_probability
    alternatives = {
        f"Parents from `{SAMPLER}` are active with probability 1 - parent_probability: the comparison is reversed (active when the draw is below p).": 1 - p,
        f"Parents from `{SAMPLER}` are switched on by children drawn without looking at them: draw the parent first, then a child only for an active parent.": p
        + (1 - p) * q,
    }
    if p != NOTEBOOK_CONFIG.parent_probability:
        alternatives[f"`{SAMPLER}` uses the notebook's parent probability (0.15) instead of self.cfg.parent_probability."] = NOTEBOOK_CONFIG.parent_probability
    return alternatives


def _check_parent_frequencies(parent_on: Tensor, cfg: reference.HierarchyConfig) -> None:
    probability = torch.full(parent_on.shape[1:], cfg.parent_probability, dtype=torch.float64)
    check_presence_frequencies(
        parent_on,
        probability,
        what=SAMPLER,
        alternatives={message: torch.full_like(probability, value) for message, value in parent_alternatives(cfg).items()},
        otherwise=f"Parents from `{SAMPLER}` are active with the wrong probability: each parent must be active with self.cfg.parent_probability, independently.",
    )


def _conditional_frequencies_match(events: Tensor, given: Tensor, probability: Tensor, false_alarm: float) -> bool:
    """Among the cells where `given` holds, each cell's frequency of `events` within its binomial tolerance
    (conditioned on how many times `given` held, which the learner's sample decided)."""
    n = given.sum(dim=0).double().clamp_min(1)
    frequency = (events & given).sum(dim=0).double() / n
    tolerance = binomial_tolerance(probability.expand_as(n), n, false_alarm=false_alarm / max(1, n.numel()))
    return bool(((frequency - probability).abs() <= tolerance).all())


def child_alternatives(cfg: reference.HierarchyConfig) -> dict[str, float]:
    """P(the parent has a child | it is active) that each plausible mistake gives, with the sentence naming it."""
    p, q, C = cfg.parent_probability, cfg.child_probability, cfg.n_children
    alternatives = {
        f"Given an active parent, `{SAMPLER}` gives it a child with probability 1 - child_probability: the comparison is reversed.": 1 - q,
        f"Every active parent from `{SAMPLER}` has a child: with probability 1 - child_probability the parent must appear alone.": 1.0,
        f"Given an active parent, `{SAMPLER}` gives it a child with probability parent_probability · child_probability: child_probability is "
        "already conditional on the parent (the `&` with parent_on does the conditioning), so compare the draw with child_probability alone.": p * q,
        f"Given an active parent, `{SAMPLER}` gives it a child with probability child_probability / n_children: that is each child's "
        "share; some child is active with child_probability itself.": q / C,
        f"Given an active parent, `{SAMPLER}` gives it a child with probability n_children / (n_children + 1) · child_probability: "
        "draw which child from n_children outcomes, not n_children + 1.": q * C / (C + 1),
    }
    if q != NOTEBOOK_CONFIG.child_probability:
        alternatives[f"`{SAMPLER}` uses the notebook's child probability (0.8) instead of self.cfg.child_probability."] = NOTEBOOK_CONFIG.child_probability
    return alternatives


CONDITIONAL_FALSE_ALARM = FALSE_ALARM_PER_TEST / 4
"""The two conditional tests (some child, which child) share half of one test's budget; the choice test takes the rest."""


def _check_child_frequencies(parent_on: Tensor, children: Tensor, cfg: reference.HierarchyConfig) -> None:
    q, C = cfg.child_probability, cfg.n_children
    has_child = children.any(dim=-1)
    shape = parent_on.shape[1:]
    full = lambda value: torch.full(shape, float(value), dtype=torch.float64)  # noqa: E731
    if not _conditional_frequencies_match(has_child, parent_on, full(q), CONDITIONAL_FALSE_ALARM):
        alternatives = child_alternatives(cfg)
        message = next((m for m, a in alternatives.items() if _conditional_frequencies_match(has_child, parent_on, full(a), CONDITIONAL_FALSE_ALARM)), None)
        raise CheckFailure(
            message
            or f"Given an active parent, `{SAMPLER}` gives it a child with the wrong probability: exactly one child is active with probability child_probability."
        )
    each = torch.full((*shape, C), q / C, dtype=torch.float64)
    if _conditional_frequencies_match(children, parent_on[..., None].expand_as(children), each, CONDITIONAL_FALSE_ALARM):
        return
    raise CheckFailure(
        f"The children from `{SAMPLER}` are not equally likely: `torch.randint(n_children, ...)` draws 0 to n_children - 1 "
        "with equal probability (its upper bound is exclusive), and each of them must be chosen with the same chance."
    )


def _check_child_choice_independent(children: Tensor, cfg: reference.HierarchyConfig) -> None:
    """Where two families (of one example), or one family in two instances, both have a child, the two
    children's numbers agree with probability 1/n_children: a shared "which child" draw makes them always agree."""
    has_child = children.any(dim=-1)
    which = children.double().argmax(dim=-1)
    pairs = {
        "families": [(slice(None), a, slice(None), b) for a in range(cfg.n_parents) for b in range(a + 1, cfg.n_parents)],
        "instances": [(a, p, b, p) for p in range(cfg.n_parents) for a in range(cfg.n_inst) for b in range(a + 1, cfg.n_inst)],
    }
    messages = {
        "families": f"Which child is active is shared by the families of an example from `{SAMPLER}`: draw the child of every family separately (one draw per example, instance and parent).",
        "instances": f"Which child is active is shared across instances in `{SAMPLER}`: draw it separately for every instance.",
    }
    n_tests = sum(len(cells) for cells in pairs.values())
    for axis, cells in pairs.items():
        for cell in cells:
            if axis == "families":
                _, a, _, b = cell
                both, same = has_child[:, :, a] & has_child[:, :, b], which[:, :, a] == which[:, :, b]
            else:
                a, p, b, _ = cell
                both, same = has_child[:, a, p] & has_child[:, b, p], which[:, a, p] == which[:, b, p]
            n = int(both.sum())
            if n == 0:
                continue
            agree = float((same & both).sum()) / n
            tolerance = float(binomial_tolerance(1 / cfg.n_children, n, false_alarm=FALSE_ALARM_PER_TEST / 2 / n_tests))
            if agree - 1 / cfg.n_children > tolerance:
                raise CheckFailure(messages[axis])


def _family_magnitude_comparison(values: Tensor, cfg: reference.HierarchyConfig) -> dict[str, tuple[Tensor, Tensor]]:
    """Each parent's value next to the value of its active child (the sum over its children: at most one is non-zero)."""
    parents = values[..., : cfg.n_parents]
    child = values[..., cfg.n_parents :].unflatten(-1, (cfg.n_parents, cfg.n_children)).sum(dim=-1)
    return {f"A parent and its child from `{SAMPLER}` share one magnitude: draw a magnitude for every feature.": (parents, child)}


def _check_magnitudes(values: Tensor, cfg: reference.HierarchyConfig) -> None:
    check_magnitudes_vary(values, what=SAMPLER, advice="draw magnitudes uniformly on [min_magnitude, max_magnitude]")
    check_values_not_shared(values, {**_family_magnitude_comparison(values, cfg), **neighbour_comparisons(values, SAMPLER)})
    present = values[values != 0]
    unit = (present - cfg.min_magnitude) / (cfg.max_magnitude - cfg.min_magnitude)
    check_uniform(unit.clamp(0, 1), what=SAMPLER, otherwise=f"The magnitudes from `{SAMPLER}` are not uniform on [min_magnitude, max_magnitude]: use torch.rand, rescaled.")


@check(SAMPLER)
def test_generate_hierarchical_batch(learner: object) -> str:
    generate = learner_callable(learner, SAMPLER, owner_hint="HierarchicalToyData")
    data = _sampler_data()
    cfg = data.cfg
    first, second = draw_twice(generate, data, SAMPLER_BATCH, what=SAMPLER)
    values = sample_values(first, (SAMPLER_BATCH, cfg.n_inst, cfg.n_features), device=data.W.device, what=SAMPLER, axes="batch, inst, feats")
    check_fresh_draws(first, second, what=SAMPLER)
    _check_magnitude_range(values, cfg)
    present = values != 0
    _check_hierarchy(present, cfg)
    check_examples_vary(values, _marginals(cfg), what=SAMPLER)
    check_examples_vary(values[..., : cfg.n_parents], _marginals(cfg)[:, : cfg.n_parents], what=SAMPLER)
    parent_on = present[..., : cfg.n_parents]
    children = present[..., cfg.n_parents :].unflatten(-1, (cfg.n_parents, cfg.n_children))
    _check_parent_frequencies(parent_on, cfg)
    _check_child_frequencies(parent_on, children, cfg)
    _check_child_choice_independent(children, cfg)
    check_presence_independent(present, _marginals(cfg), messages=independence_messages(SAMPLER, "families"), same_group=_same_family(cfg))
    _check_magnitudes(values[:MAGNITUDE_EXAMPLES], cfg)
    return f"no orphans, one child at most, marginal and conditional frequencies and magnitudes match on {SAMPLER_BATCH} samples"


# Absorption: designed latents and features ------------------------------------------------------


@dataclass
class AbsorptionCase:
    """Latents and features of a few instances, with the decoder cosines and a threshold."""

    description: str | None
    acts: Tensor  # [batch, inst, d_sae]
    features: Tensor  # [batch, inst, feats]
    parent_cosine: Tensor  # [inst, d_sae, parents]
    threshold: float
    parent_latent: Tensor | None = None  # [inst, parents], for absorption_rate

    @property
    def n_parents(self) -> int:
        return self.parent_cosine.shape[-1]


DESIGN_THRESHOLD = 0.375  # not the notebook's 0.5, so that a hard-coded τ fails; exact in float32 and float64


def _design_features(batch: int, n_inst: int, n_parents: int, n_children: int) -> Tensor:
    """Hierarchical features with every situation common: parents often alone and often with a child."""
    cfg = reference.HierarchyConfig(n_inst=n_inst, n_parents=n_parents, n_children=n_children, parent_probability=0.6, child_probability=0.6, min_magnitude=0.5, max_magnitude=1.5)
    return reference.HierarchicalToyData(cfg).generate_batch(batch).double()


def _design_acts(batch: int, n_inst: int, d_sae: int, firing: float = 0.5) -> Tensor:
    fires = torch.rand(batch, n_inst, d_sae) < firing
    return torch.where(fires, 0.1 + 2 * torch.rand(batch, n_inst, d_sae), 0.0).double()


def _design_cosine(n_inst: int, d_sae: int, n_parents: int, threshold: float) -> Tensor:
    """Cosines spread over [-1, 1], with at least two candidates per parent and one exactly at the threshold."""
    cosine = 2 * torch.rand(n_inst, d_sae, n_parents, dtype=torch.float64) - 1
    for inst in range(n_inst):
        for parent in range(n_parents):
            picked = torch.randperm(d_sae)[:3]
            cosine[inst, picked[0], parent] = threshold + 0.1 + 0.5 * torch.rand(()).item()
            cosine[inst, picked[1], parent] = threshold + 0.05 + 0.5 * torch.rand(()).item()
            cosine[inst, picked[2], parent] = -(threshold + 0.1 + 0.5 * torch.rand(()).item())  # carries minus the parent
    near = (cosine.abs() - threshold).abs() < 1e-3  # keep clear of the threshold, except where a case puts a cosine on it
    return torch.where(near, cosine + 0.01, cosine).clamp(-1, 1)


def _favour(case: AbsorptionCase, inst: int, parent: int, latent: int) -> None:
    """Make `latent` fire on every parent-alone input of (inst, parent)."""
    parent_on, child_on = reference.family_presence(case.features, case.n_parents)
    alone = parent_on[:, inst, parent] & ~child_on[:, inst, parent].any(dim=-1)
    case.acts[alone, inst, latent] = torch.maximum(case.acts[alone, inst, latent], torch.tensor(0.7, dtype=torch.float64))


def _main_case(batch: int = 61, n_inst: int = 3, d_sae: int = 8, n_parents: int = 4, n_children: int = 2) -> AbsorptionCase:
    features = _design_features(batch, n_inst, n_parents, n_children)
    case = AbsorptionCase(None, _design_acts(batch, n_inst, d_sae), features, _design_cosine(n_inst, d_sae, n_parents, DESIGN_THRESHOLD), DESIGN_THRESHOLD)
    # Instance 0, parent 0: the latent that fires on every parent-alone input sits exactly at the threshold,
    # so that a strict comparison picks another one.
    at_threshold = int(case.parent_cosine[0, :, 0].argmin())
    case.parent_cosine[0, at_threshold, 0] = DESIGN_THRESHOLD
    _favour(case, 0, 0, at_threshold)
    # Instance 1, parent 1: the latent firing most on parent-alone inputs carries minus the parent.
    negative = int(case.parent_cosine[1, :, 1].argmin())
    _favour(case, 1, 1, negative)
    if n_inst > 2 and n_parents > 2:  # instance 2, parent 2: ... and here it is no candidate, cosine 0.1
        bystander = int(case.parent_cosine[2, :, 2].abs().argmin())
        case.parent_cosine[2, bystander, 2] = 0.1
        _favour(case, 2, 2, bystander)
    return case


def _tie_case() -> AbsorptionCase:
    """Two candidates fire on every parent-alone input. Parent 0: the higher-numbered, lower-cosine one also fires
    with the children; parent 1: the higher-numbered, higher-cosine one does; parent 2: neither, so the lower-numbered wins."""
    case = _main_case(batch=40, n_inst=2, d_sae=6, n_parents=3, n_children=3)
    case.description = "When two candidates fire on every parent-alone input"
    parent_on, child_on = reference.family_presence(case.features, case.n_parents)
    designs = {0: ((0, 0.9), (3, 0.6), 3), 1: ((1, 0.6), (4, 0.9), 4), 2: ((2, 0.6), (5, 0.9), 2)}  # (low, cos), (high, cos), right
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


def _edge_case() -> AbsorptionCase:
    """One instance; a parent never alone (every candidate ties at 0), a parent with no eligible input and one candidate."""
    features = torch.zeros(6, 1, 3 * 3, dtype=torch.float64)  # 3 parents of 2 children: children of parent p at 3 + 2p
    features[:, 0, 0] = 1.0  # parent 0 in every example, with child 0 in half of them
    features[[0, 2, 4], 0, 3] = 0.9
    features[:, 0, 1] = 1.2  # parent 1 in every example, always with a child
    features[[0, 1, 2], 0, 5] = 0.8
    features[[3, 4, 5], 0, 6] = 1.1
    features[[1, 3], 0, 2] = 0.7  # parent 2 twice, alone
    acts = _design_acts(6, 1, 5, firing=0.6)
    acts[[1, 3, 5], 0, 2] = 1.0  # latent 2 fires whenever parent 0 is alone
    cosine = torch.full((1, 5, 3), -0.3, dtype=torch.float64)
    cosine[0, [1, 2, 3], 0] = torch.tensor([0.5, 0.8, 0.4], dtype=torch.float64)
    cosine[0, [0, 3], 1] = torch.tensor([0.6, 0.9], dtype=torch.float64)
    cosine[0, 4, 2] = 0.95
    return AbsorptionCase("With one instance, a parent always with a child and one never with a child", acts, features, cosine, DESIGN_THRESHOLD)


def _no_candidate_case() -> AbsorptionCase:
    case = _main_case(batch=33, n_inst=2, d_sae=5, n_parents=3, n_children=2)
    case.description = "With a parent that no latent carries"
    case.parent_cosine[1, :, 2] = case.parent_cosine[1, :, 2].clamp(max=DESIGN_THRESHOLD - 0.05)
    return case


def _prefix(case: AbsorptionCase, message: str) -> str:
    return message if case.description is None else f"{case.description}: {message[0].lower()}{message[1:]}"


# parent_latents ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParentChoice:
    """One way of choosing the parent's latent: the text's (the defaults) or a misreading of it."""

    events: str = "alone"  # alone, parent, with child, all
    score: str = "count"  # count, activation, precision, cosine
    candidates: str = ">="  # >=, >, abs, all
    threshold: float | None = None  # None: the case's
    fires: str = ">"  # >, >=
    pooled: bool = False
    tie: str = "most active"  # most active (on every input with the parent), lowest, highest cosine


def _events(case: AbsorptionCase, which: str) -> Tensor:
    parent_on, child_on = reference.family_presence(case.features, case.n_parents)
    with_child = child_on.any(dim=-1)
    return {"alone": parent_on & ~with_child, "parent": parent_on, "with child": parent_on & with_child, "all": torch.ones_like(parent_on)}[which]


def _candidates(cosine: Tensor, threshold: float, how: str) -> Tensor:
    return {">=": cosine >= threshold, ">": cosine > threshold, "abs": cosine.abs() >= threshold, "all": torch.ones_like(cosine, dtype=torch.bool)}[how]


def _choose_parent_latents(case: AbsorptionCase, choice: ParentChoice = ParentChoice()) -> Tensor:
    threshold = case.threshold if choice.threshold is None else choice.threshold
    fires = (case.acts >= 0) if choice.fires == ">=" else (case.acts > 0)
    events = _events(case, choice.events).double()
    counts = torch.einsum("bip,bis->isp", events, fires.double())
    if choice.score == "activation":
        counts = torch.einsum("bip,bis->isp", events, case.acts)
    elif choice.score == "precision":
        counts = counts / fires.double().sum(dim=0)[..., None].clamp_min(1)
    elif choice.score == "cosine":
        counts = case.parent_cosine.clone()
    if choice.pooled:
        counts = counts.sum(dim=0, keepdim=True).expand_as(counts)
    candidate = _candidates(case.parent_cosine, threshold, choice.candidates)
    score = torch.where(candidate, counts, -torch.inf)
    tied_best = score == score.amax(dim=1, keepdim=True)
    if choice.tie == "lowest":
        return tied_best.double().argmax(dim=1)
    second = case.parent_cosine if choice.tie == "highest cosine" else torch.einsum("bip,bis->isp", _events(case, "parent").double(), fires.double())
    return torch.where(tied_best, second, -torch.inf).argmax(dim=1)


PARENT_CHOICE_MISTAKES: list[tuple[str, ParentChoice]] = [
    ("ℓ_p is the latent with the highest decoder cosine with the parent; the text picks, among the candidates, the one that fires on the most inputs where the parent is alone.", ParentChoice(score="cosine", candidates="all")),
    ("The count includes inputs where a child is active too: count only the inputs where the parent is active alone.", ParentChoice(events="parent")),
    ("The count is over the inputs with a child; count the inputs where the parent is active alone, with none of its children.", ParentChoice(events="with child")),
    ("The count is over all inputs; count only the inputs where the parent is active alone.", ParentChoice(events="all")),
    ("The score sums activations; count the parent-alone inputs on which the latent fires (activation > 0).", ParentChoice(score="activation")),
    ("The score divides by how often the latent fires overall; count the parent-alone inputs on which it fires.", ParentChoice(score="precision")),
    ("Latents with cosine below the threshold compete too: only candidates (cosine ≥ threshold) can be the parent's latent.", ParentChoice(candidates="all")),
    ("The candidates are compared strictly (cosine > threshold); a latent with cosine exactly at the threshold is a candidate (≥).", ParentChoice(candidates=">")),
    ("The candidates include latents whose decoder points against the parent (|cosine| ≥ threshold); use the signed cosine.", ParentChoice(candidates="abs")),
    ("The function uses τ = 0.5 whatever `threshold` is passed: compare with the `threshold` argument.", ParentChoice(threshold=reference.CARRIES_PARENT_AT)),
    ("A latent with activation 0 counts as firing (acts >= 0): a latent fires when its activation is > 0.", ParentChoice(fires=">=")),
    ("The counts are pooled over instances, so every instance gets the same latent: count per instance.", ParentChoice(pooled=True)),
    ("Ties in the parent-alone count go to the lowest-numbered candidate; the text gives them to the one that fires on the most inputs where the parent is active, alone or not.", ParentChoice(tie="lowest")),
    ("Ties in the parent-alone count go to the candidate with the higher cosine; the text gives them to the one that fires on the most inputs where the parent is active, alone or not.", ParentChoice(tie="highest cosine")),
]


def _decided(case: AbsorptionCase) -> Tensor:
    """[inst, parents]: where the choice matters (some latent is a candidate)."""
    return (case.parent_cosine >= case.threshold).any(dim=1)


def _check_parent_latents_case(function: Callable[..., object], case: AbsorptionCase, device: torch.device) -> None:
    acts, features, cosine = (tensor.float().to(device) for tensor in (case.acts, case.features, case.parent_cosine))
    result = call_learner(function, acts, features, cosine, case.threshold, what="parent_latents")
    n_inst, n_parents = case.parent_cosine.shape[0], case.n_parents
    if not isinstance(result, Tensor):
        raise CheckFailure(f"`parent_latents` should return a tensor of latent indices, [inst, parents], but returned {type(result).__name__}.")
    if result.shape == (n_inst, case.acts.shape[-1], n_parents):
        raise CheckFailure(_prefix(case, "`parent_latents` returned [inst, d_sae, parents] (a mask or the scores?): return one latent index per instance and parent, [inst, parents]."))
    if result.shape == (n_parents, n_inst) and n_parents != n_inst:
        raise CheckFailure(_prefix(case, "`parent_latents` returned [parents, inst]: the result is [inst, parents] (take the argmax over the latent axis, dim=1)."))
    if result.shape != (n_inst, n_parents):
        raise CheckFailure(_prefix(case, f"`parent_latents` returned shape {tuple(result.shape)}, but [inst, parents] here is {(n_inst, n_parents)}: take the argmax over the latent axis."))
    if torch.is_floating_point(result) or result.dtype == torch.bool:
        raise CheckFailure("`parent_latents` returned a floating-point or boolean tensor: return integer latent indices (argmax gives int64), so that they can index the latents.")
    actual = result.detach().cpu().long()
    decided = _decided(case)
    expected = _choose_parent_latents(case)
    if torch.equal(actual[decided], expected[decided]):
        return
    if ((actual < 0) | (actual >= case.acts.shape[-1])).any():
        raise CheckFailure(_prefix(case, "`parent_latents` returned indices outside 0 .. d_sae - 1: return latent numbers."))
    matching = [message for message, choice in PARENT_CHOICE_MISTAKES if torch.equal(actual[decided], _choose_parent_latents(case, choice)[decided])]
    if matching:
        raise CheckFailure(_prefix(case, matching[0]))
    raise CheckFailure(
        _prefix(
            case,
            "`parent_latents` picks other latents: for each instance and parent, among the latents with cosine ≥ threshold, take the "
            "one that fires (activation > 0) on the most inputs where the parent is active and none of its children is.",
        )
    )


@check("parent_latents")
def test_parent_latents(learner: object) -> str:
    function = learner_function(learner, "parent_latents")
    cases = [_main_case(), _tie_case(), _edge_case(), _no_candidate_case()]  # drawn before the learner's code runs
    device = get_device()
    for case in cases:
        _check_parent_latents_case(function, case, device)
    return "chosen by parent-alone firing among the candidates, ties broken by firing with the parent, edge cases"


# absorption_rate -----------------------------------------------------------------------------


@dataclass(frozen=True)
class AbsorptionCount:
    """One way of computing the absorption rate: the text's (the defaults) or a misreading of it."""

    counted_over: str = "with child"  # the inputs that can be absorbed: with child, parent, all
    divided_by: str = "with child"  # the inputs the count is divided by
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
        rates = [_absorption(replace(case, features=reference.only_child(case.features, case.n_parents, c)), replace(count, per_child=False)) for c in range(child_on.shape[-1])]
        return torch.stack(rates).mean(dim=0)
    threshold = case.threshold if count.threshold is None else count.threshold
    fires = (case.acts >= 0) if count.fires == ">=" else (case.acts > 0)
    parent_fires = fires.gather(-1, case.parent_latent.expand(case.acts.shape[0], -1, -1))
    latent = torch.arange(case.acts.shape[-1])
    carriers = _candidates(case.parent_cosine, threshold, count.carriers) & (latent[None, :, None] != case.parent_latent[:, None, :])
    carrier_count = torch.einsum("bis,isp->bip", fires.double(), carriers.double())
    absorbed = _events(case, count.counted_over).clone()
    if count.report == "parent fires":
        absorbed &= parent_fires
    else:
        if count.parent_silent:
            absorbed &= ~parent_fires
        if count.carrier_fires:
            absorbed &= carrier_count > 0
    eligible = _events(case, count.divided_by)
    numerator = (absorbed.double() * (carrier_count if count.count_carriers else 1.0)).sum(dim=0)
    denominator = eligible.sum(dim=0).double()
    if count.pooled:
        numerator, denominator = numerator.sum(dim=0).expand_as(numerator), denominator.sum(dim=0).expand_as(denominator)
    return numerator / denominator.clamp_min(1)


ABSORPTION_MISTAKES: dict[str, list[AbsorptionCount]] = {
    "The rate is counted over inputs where no child is active too: absorption is measured only on inputs where the parent and one of its children are active.": [
        AbsorptionCount(divided_by="parent"),
        AbsorptionCount(divided_by="parent", counted_over="parent"),
        AbsorptionCount(counted_over="parent"),
    ],
    "The rate is a fraction of all inputs; divide by the number of inputs where the parent and one of its children are active.": [
        AbsorptionCount(divided_by="all"),
        AbsorptionCount(divided_by="all", counted_over="all"),
    ],
    "Inputs on which ℓ_p fires are counted as absorbed: an input is absorbed only when the parent's own latent is silent.": [AbsorptionCount(parent_silent=False)],
    "Inputs where ℓ_p is silent count as absorbed even when no other latent carrying the parent fires: that is a missing parent, not absorption.": [AbsorptionCount(carrier_fires=False)],
    "Any other latent firing counts as a carrier; a carrier must have decoder cosine ≥ threshold with the parent.": [AbsorptionCount(carriers="all")],
    "Carriers are compared strictly (cosine > threshold); a latent with cosine exactly at the threshold carries the parent (≥).": [AbsorptionCount(carriers=">")],
    "Latents whose decoder points against the parent count as carriers (|cosine| ≥ threshold); use the signed cosine.": [AbsorptionCount(carriers="abs")],
    "The function uses τ = 0.5 whatever `threshold` is passed: compare with the `threshold` argument.": [AbsorptionCount(threshold=reference.CARRIES_PARENT_AT)],
    "The numerator counts carrier latents, not inputs: an absorbed input counts once however many carriers fire.": [AbsorptionCount(count_carriers=True)],
    "A latent with activation 0 counts as firing (acts >= 0): a latent fires when its activation is > 0.": [AbsorptionCount(fires=">=")],
    "The counts are pooled over instances: compute the rate of every instance from its own inputs.": [AbsorptionCount(pooled=True)],
    "The rate is the mean of the children's rates; count all eligible inputs of a parent together, whichever child is active.": [AbsorptionCount(per_child=True)],
    "This is how often ℓ_p fires on the eligible inputs; absorption is how often it is silent while another latent carrying the parent fires.": [AbsorptionCount(report="parent fires")],
}


def _put_carrier_on_threshold(case: AbsorptionCase, inst: int, parent: int) -> None:
    """Give (inst, parent) a carrier with cosine exactly at the threshold that alone absorbs one eligible input."""
    assert case.parent_latent is not None
    main = int(case.parent_latent[inst, parent])
    parent_on, child_on = reference.family_presence(case.features, case.n_parents)
    eligible = (parent_on[:, inst, parent] & child_on[:, inst, parent].any(dim=-1)).nonzero().flatten()
    others = [s for s in range(case.acts.shape[-1]) if s != main and case.parent_cosine[inst, s, parent] < case.threshold]
    if len(eligible) == 0 or not others:
        return
    carrier, example = others[0], int(eligible[0])
    case.parent_cosine[inst, carrier, parent] = case.threshold
    case.acts[example, inst] = torch.where(case.parent_cosine[inst, :, parent] >= case.threshold, 0.0, case.acts[example, inst])
    case.acts[example, inst, carrier] = 1.0


def _absorption_cases() -> list[AbsorptionCase]:
    cases = [_main_case(), _edge_case(), _no_candidate_case()]
    for case in cases:
        case.parent_latent = _choose_parent_latents(case)
    _put_carrier_on_threshold(cases[0], inst=1, parent=0)
    # The parent latent as given, not necessarily the best: a candidate chosen at random for every cell.
    shuffled = _main_case(batch=47, n_inst=2, d_sae=7, n_parents=3, n_children=3)
    shuffled.description = "With another choice of parent latents"
    candidates = shuffled.parent_cosine >= shuffled.threshold
    shuffled.parent_latent = torch.where(candidates, torch.rand(candidates.shape, dtype=torch.float64), -1.0).argmax(dim=1)
    return [*cases, shuffled]


def _check_absorption_case(function: Callable[..., object], case: AbsorptionCase, device: torch.device) -> None:
    assert case.parent_latent is not None
    acts, features, cosine = (tensor.float().to(device) for tensor in (case.acts, case.features, case.parent_cosine))
    result = call_learner(function, acts, features, cosine, case.parent_latent.to(device), case.threshold, what="absorption_rate")
    n_inst, n_parents = case.parent_cosine.shape[0], case.n_parents
    if isinstance(result, Tensor) and result.dtype in (torch.int64, torch.int32, torch.long) and result.shape == (n_inst, n_parents):
        raise CheckFailure("`absorption_rate` returned integer counts: divide the absorbed count by the eligible count (as floats) to get a rate.")
    if isinstance(result, Tensor) and result.shape == (n_inst, n_parents) and torch.is_floating_point(result) and not torch.isfinite(result).all():
        raise CheckFailure(_prefix(case, "`absorption_rate` gives NaN or inf for a parent with no eligible input: divide by the count clamped to at least 1 (clamp_min(1)), which gives 0 there."))
    actual = expect_tensor(result, (n_inst, n_parents), what="absorption_rate", axes="inst, parents")
    expected = _absorption(case)
    mistakes = {message: [_absorption(case, count) for count in counts] for message, counts in ABSORPTION_MISTAKES.items()}
    diagnose_among(
        actual,
        expected,
        mistakes,
        otherwise=_prefix(
            case,
            "`absorption_rate` is wrong: among the inputs where the parent and one of its children are active, count those on which ℓ_p "
            "is silent (activation 0) while another latent with cosine ≥ threshold fires, and divide by their number.",
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


# MatryoshkaToySAE.forward ----------------------------------------------------------------------

MATRYOSHKA = "MatryoshkaToySAE.forward"
M_INST, M_D_IN, M_BATCH = 3, 4, 16
M_PARAMETERS = ("W_enc", "_W_dec", "b_enc", "b_dec")


@dataclass
class MatryoshkaCase:
    description: str | None
    sae: Any
    h: Tensor
    training: bool = True
    before: Any = None  # a copy of the SAE as it was before the learner's forward ran (counters, threshold)


@dataclass(frozen=True)
class MatryoshkaVariant:
    """The text's forward (the defaults), or one misreading of it, computed in float64."""

    prefixes: str = "nested"  # nested, groups, all latents, group sizes
    bias: str = "every"  # every, last, none
    reduce: str = "sum"  # sum, mean
    topk: str = "once"  # once, per prefix, per group, none, per input
    empty_prefix: bool = False
    squared: str = "mean"  # mean, sum (over d_in)
    decoder: str = "normalised"  # normalised, raw
    aux_from: str = "full"  # full, first
    dead_after_counting: bool = False
    with_aux: bool = True
    aux_coefficient: bool = True
    loss_terms: str = "matryoshka"  # matryoshka, full only, both
    batch: str = "mean"  # mean, sum
    instances: str = "sum"  # sum, mean
    returned: str = "full"  # full, first (the h_reconstructed returned)
    cut: str | None = None  # where the graph is cut: acts, decoder, b_dec (in the prefixes before the last), prefixes


@dataclass
class MatryoshkaTerms:
    acts: Tensor
    h_reconstructed: Tensor
    L_reconstruction: Tensor
    L_matryoshka: Tensor
    L_aux: Tensor
    loss: Tensor
    steps_since_fired: Tensor
    threshold: Tensor


def _matryoshka_sae(*, n_inst: int = M_INST, d_sae: int = 9, prefix_sizes: Sequence[int] = (2, 5, 9), k: Sequence[float] = (1.5, 2.0, 1.25), dead: Sequence[Sequence[int]] = ((0, 7), (1, 3, 6, 8), ())) -> Any:
    """A reference Matryoshka SAE with random weights, varied decoder norms, non-zero biases, some dead latents and a threshold."""
    data = reference.HierarchicalToyData(reference.HierarchyConfig(n_inst=n_inst, n_parents=1, n_children=M_D_IN - 1), device=get_device())
    cfg = reference.MatryoshkaToySAEConfig(n_inst=n_inst, d_in=M_D_IN, d_sae=d_sae, k=list(k), k_aux=2, prefix_sizes=list(prefix_sizes))
    sae = reference.MatryoshkaToySAE(cfg, data)
    with torch.no_grad():
        sae.W_enc.normal_()
        sae._W_dec.copy_(torch.randn_like(sae._W_dec) * (torch.rand(n_inst, d_sae, 1, device=sae._W_dec.device) * 2 + 0.3))
        sae.b_enc.normal_(0.0, 0.5)
        sae.b_dec.normal_(0.0, 0.5)
        sae.steps_since_fired.copy_(torch.randint(0, 60, sae.steps_since_fired.shape))
        for inst, latents in enumerate(dead):
            sae.steps_since_fired[inst, list(latents)] = sae.cfg.dead_after_steps + torch.randint(0, 50, (len(latents),))
        sae.threshold.copy_(torch.rand(n_inst) * 0.5 + 0.3)
    return sae


def _float64_parameters(sae: Any) -> dict[str, Tensor]:
    return {name: getattr(sae, name).detach().cpu().double().clone().requires_grad_(True) for name in M_PARAMETERS}


def _batch_topk(pre_acts: Tensor, k: float) -> Tensor:
    """BatchTopK of one instance's [batch, latents], keeping at most every value (a small group may hold fewer than k·batch)."""
    flat = F.relu(pre_acts).flatten()
    top = flat.topk(min(round(k * pre_acts.shape[0]), flat.numel()))
    return torch.zeros_like(flat).scatter(0, top.indices, top.values).reshape(pre_acts.shape)


def _per_instance_batch_topk(pre_acts: Tensor, k: Sequence[float]) -> Tensor:
    return torch.stack([_batch_topk(pre_acts[:, i], k_i) for i, k_i in enumerate(k)], dim=1)


def _per_instance_topk(pre_acts: Tensor, k: Sequence[float]) -> Tensor:
    return torch.cat([part5.topk_activation(pre_acts[:, [i]], max(1, int(k_i))) for i, k_i in enumerate(k)], dim=1)


def _k_list(sae: Any) -> list[float]:
    k = sae.cfg.k
    return list(k) if isinstance(k, list) else [k] * sae.cfg.n_inst


def _decode(latents: Tensor, W: Tensor) -> Tensor:
    return torch.einsum("bis,isd->bid", latents, W)


def _auxk(sae: Any, pre_acts: Tensor, residual: Tensor, W: Tensor, dead: Tensor) -> Tensor:
    k_aux = min(sae.cfg.k_aux, pre_acts.shape[-1])
    top = pre_acts.masked_fill(~dead, -torch.inf).topk(k_aux, dim=-1)
    aux_acts = torch.zeros_like(pre_acts).scatter(-1, top.indices, F.relu(top.values))
    scale = (dead.sum(dim=-1).double() / sae.cfg.k_aux).clamp(max=1.0)
    return (_decode(aux_acts, W) - residual).pow(2).mean(dim=-1) * scale


def _threshold_after(sae: Any, acts: Tensor) -> Tensor:
    """BatchTopK's running threshold after one update with `acts` (Part 5's rule)."""
    old = sae.threshold.detach().cpu().double()
    smallest = acts.detach().masked_fill(acts.detach() <= 0, torch.inf).amin(dim=(0, 2))
    smallest = torch.where(torch.isinf(smallest), old, smallest)
    momentum = sae.threshold_momentum
    return torch.where(torch.isnan(old), smallest, momentum * old + (1 - momentum) * smallest)


def _prefix_slices(sizes: Sequence[int], how: str) -> list[tuple[int, int]]:
    """(first latent, end) of every prefix's reconstruction, as each reading of `prefix_sizes` builds it."""
    ends = list(sizes)
    if how == "group sizes":
        ends = [min(end, sizes[-1]) for end in torch.tensor(sizes).cumsum(0).tolist()]
    if how == "groups":
        return list(zip([0, *ends[:-1]], ends))
    if how == "all latents":
        return [(0, sizes[-1])] * len(sizes)
    return [(0, end) for end in ends]


def _matryoshka_terms(sae: Any, p: Mapping[str, Tensor], h: Tensor, training: bool, v: MatryoshkaVariant = MatryoshkaVariant()) -> MatryoshkaTerms:
    """What `v` gives on float64 copies `p` of the SAE's parameters (differentiable in them)."""
    x = h.detach().cpu().double()
    sizes, k = list(sae.cfg.prefix_sizes), _k_list(sae)
    W = p["_W_dec"] if v.decoder == "raw" else p["_W_dec"] / (p["_W_dec"].norm(dim=-1, keepdim=True) + sae.cfg.weight_normalize_eps)
    pre_acts = torch.einsum("bid,ids->bis", x - p["b_dec"], p["W_enc"]) + p["b_enc"]
    if not training:
        threshold = sae.threshold.detach().cpu().double()
        acts = pre_acts * (pre_acts > threshold[:, None]).double()
    elif v.topk == "none":
        acts = F.relu(pre_acts)
    elif v.topk == "per input":
        acts = _per_instance_topk(pre_acts, k)
    elif v.topk == "per group":
        acts = torch.cat([_per_instance_batch_topk(pre_acts[..., start:end], k) for start, end in zip([0, *sizes[:-1]], sizes)], dim=-1)
    else:
        acts = _per_instance_batch_topk(pre_acts, k)
    reconstructions = []
    slices = _prefix_slices(sizes, v.prefixes)
    for index, (start, end) in enumerate(slices):
        last = index == len(slices) - 1
        keep = (lambda tensor, place: tensor.detach() if v.cut == place and not last else tensor)  # noqa: E731
        latents = acts[..., start:end]
        if v.topk == "per prefix" and training and not last:
            latents = _per_instance_batch_topk(pre_acts[..., start:end], k)
        bias = p["b_dec"] if v.bias == "every" or (v.bias == "last" and last) else torch.zeros_like(p["b_dec"])
        reconstructions.append(_decode(keep(latents, "acts"), keep(W[:, start:end], "decoder")) + keep(bias, "b_dec"))
    error = lambda rec: (rec - x).pow(2).mean(dim=-1) if v.squared == "mean" else (rec - x).pow(2).sum(dim=-1)  # noqa: E731
    prefix_losses = [error(rec) for rec in reconstructions]
    if v.cut == "prefixes":
        prefix_losses = [loss.detach() for loss in prefix_losses[:-1]] + prefix_losses[-1:]
    if v.empty_prefix:
        prefix_losses = [error(p["b_dec"].expand_as(x)), *prefix_losses]
    L_matryoshka = torch.stack(prefix_losses).sum(dim=0) if v.reduce == "sum" else torch.stack(prefix_losses).mean(dim=0)
    full = reconstructions[-1]
    fired = (acts > 0).any(dim=0)
    counted = (sae.steps_since_fired.detach().cpu() + 1).masked_fill(fired, 0) if training else sae.steps_since_fired.detach().cpu()
    dead = (counted if v.dead_after_counting else sae.steps_since_fired.detach().cpu()) >= sae.cfg.dead_after_steps
    aux_target = reconstructions[0] if v.aux_from == "first" else full
    L_aux = _auxk(sae, pre_acts, (x - aux_target).detach(), W, dead)
    main = {"matryoshka": L_matryoshka, "full only": error(full), "both": L_matryoshka + error(full)}[v.loss_terms]
    per_input = main + (sae.cfg.aux_coeff if v.aux_coefficient else 1.0) * L_aux * float(v.with_aux)
    per_instance = per_input.mean(dim=0) if v.batch == "mean" else per_input.sum(dim=0)
    loss = per_instance.sum() if v.instances == "sum" else per_instance.mean()
    returned = reconstructions[0] if v.returned == "first" else full
    threshold_after = _threshold_after(sae, acts) if training else sae.threshold.detach().cpu().double()
    return MatryoshkaTerms(acts, returned, error(full), L_matryoshka, L_aux, loss, counted, threshold_after)


def _kink_distances(sae: Any, h: Tensor, training: bool) -> list[Tensor]:
    """Distances that must all exceed KINK_MARGIN for float32 and float64 to fire and pick the same latents."""
    p = {name: tensor.detach() for name, tensor in _float64_parameters(sae).items()}
    pre_acts = torch.einsum("bid,ids->bis", h.double() - p["b_dec"], p["W_enc"]) + p["b_enc"]
    if not training:
        return [pre_acts - sae.threshold.detach().cpu().double()[:, None]]
    distances = [pre_acts]
    sizes, k = list(sae.cfg.prefix_sizes), _k_list(sae)
    for start, end in [(0, sizes[-1]), *zip([0, *sizes[:-1]], sizes), *[(0, size) for size in sizes]]:
        for inst, k_i in enumerate(k):
            kept = round(k_i * h.shape[0])
            ordered = F.relu(pre_acts[:, inst, start:end]).flatten().sort(descending=True).values
            if kept < len(ordered) and ordered[kept - 1] > 0:  # past the positive values every choice keeps zeros
                distances.append((ordered[kept - 1] - ordered[kept]).reshape(1))
    dead = sae.steps_since_fired.detach().cpu() >= sae.cfg.dead_after_steps
    for inst in range(pre_acts.shape[1]):
        among = pre_acts[:, inst, dead[inst]]
        if among.shape[-1] > sae.cfg.k_aux:
            ordered = among.sort(dim=-1, descending=True).values
            distances.append(ordered[:, sae.cfg.k_aux - 1] - ordered[:, sae.cfg.k_aux])
    return distances


def _clear_inputs(sae: Any, batch: int, training: bool) -> Tensor:
    for _ in range(200):
        h = torch.randn(batch, sae.cfg.n_inst, M_D_IN) * 1.5
        if all(bool((distance.abs() > KINK_MARGIN).all()) for distance in _kink_distances(sae, h, training)):
            return h.to(sae.W_enc.device)
    raise RuntimeError("could not draw Matryoshka inputs clear of top-k ties")


def _matryoshka_cases() -> list[MatryoshkaCase]:
    main = _matryoshka_sae()
    evaluation = _matryoshka_sae()
    single = _matryoshka_sae(n_inst=1, d_sae=6, prefix_sizes=(6,), k=(2.0,), dead=((1, 4),))
    first_of_one = _matryoshka_sae(d_sae=7, prefix_sizes=(1, 3, 7), k=(2.0, 1.25, 2.5), dead=((), (2, 5), (0, 1, 6)))
    return [
        MatryoshkaCase(None, main, _clear_inputs(main, M_BATCH, True)),
        MatryoshkaCase("In inference mode (model.eval(), no gradients)", evaluation, _clear_inputs(evaluation, M_BATCH, False), training=False),
        MatryoshkaCase("With one instance, one prefix (the whole dictionary) and a batch of one", single, _clear_inputs(single, 1, True)),
        MatryoshkaCase("With prefix sizes [1, 3, 7]", first_of_one, _clear_inputs(first_of_one, 12, True)),
    ]


VALUE_MISTAKES: dict[str, list[MatryoshkaVariant]] = {
    "Each prefix reconstructs from every latent, so all prefix losses are the same: prefix m uses only the latents before prefix_sizes[m].": [
        MatryoshkaVariant(prefixes="all latents")],
    "Each group of latents reconstructs alone; the prefixes are nested: prefix m uses all latents up to prefix_sizes[m], the earlier groups included.": [
        MatryoshkaVariant(prefixes="groups")],
    "prefix_sizes are read as the sizes of successive groups; they are where each nested prefix ends (the last is d_sae).": [
        MatryoshkaVariant(prefixes="group sizes")],
    "b_dec is added only to the full reconstruction: every prefix's reconstruction is b_dec plus its latents' decoded sum.": [
        MatryoshkaVariant(bias="last")],
    "b_dec is left out of the reconstructions: add it back to every prefix's reconstruction (b_dec plus the decoded latents).": [
        MatryoshkaVariant(bias="none")],
    "The prefix losses are averaged; L_matryoshka is their sum.": [MatryoshkaVariant(reduce="mean")],
    "The empty prefix (b_dec alone) has a loss term too; sum only the prefixes listed in prefix_sizes.": [MatryoshkaVariant(empty_prefix=True)],
    "Each prefix picks its own top-k among its latents; the BatchTopK is applied once, to all latents, and each prefix uses those activations.": [
        MatryoshkaVariant(topk="per prefix")],
    "The top-k is taken within each group of latents; apply self.activation once, to all pre-activations.": [MatryoshkaVariant(topk="per group")],
    "The activations are a plain ReLU: use self.activation(pre_acts), BatchTopK's activation.": [MatryoshkaVariant(topk="none")],
    "The activations keep the top k of each input (TopK); BatchTopK keeps the top k·batch of the whole batch: use self.activation.": [
        MatryoshkaVariant(topk="per input")],
    "The squared error is summed over d_in; each prefix's loss is its mean over d_in.": [MatryoshkaVariant(squared="sum")],
    "The decoder is used unnormalised: decode with self.W_dec_normalized.": [MatryoshkaVariant(decoder="raw")],
    "AuxK reconstructs the residual of the first prefix; it uses the full reconstruction's residual, h - h_reconstructed.": [
        MatryoshkaVariant(aux_from="first")],
    "The dead mask is read after self.record_firing(acts) has counted this batch: read it first, then record the firing.": [
        MatryoshkaVariant(dead_after_counting=True)],
}
LOSS_MISTAKES: dict[str, list[MatryoshkaVariant]] = {
    "The loss has no AuxK term: add aux_coeff · L_aux.": [MatryoshkaVariant(with_aux=False)],
    "L_aux enters the loss without its coefficient: add self.cfg.aux_coeff · L_aux.": [MatryoshkaVariant(aux_coefficient=False)],
    "The loss trains only the full reconstruction: use L_matryoshka, the sum of every prefix's loss.": [MatryoshkaVariant(loss_terms="full only")],
    "The loss adds L_reconstruction on top of L_matryoshka, counting the full dictionary twice: L_matryoshka already contains it.": [
        MatryoshkaVariant(loss_terms="both")],
    "The loss is summed over the batch; average it over the batch (and sum over instances).": [MatryoshkaVariant(batch="sum")],
    "The loss is averaged over instances; sum it over instances (after the mean over the batch).": [MatryoshkaVariant(instances="mean")],
}
GRADIENT_MISTAKES = {
    "acts": "`acts` is detached in the smaller prefixes' reconstructions, so their losses cannot train the encoder: use acts itself everywhere.",
    "decoder": "The decoder is detached in the smaller prefixes' reconstructions, so their losses cannot train it: use W_dec_normalized itself everywhere.",
    "b_dec": "b_dec is detached in the smaller prefixes' reconstructions: it must receive gradient from every prefix.",
    "prefixes": "The smaller prefixes' losses carry no gradient (.detach(), .item() or torch.no_grad()), so only the full dictionary trains.",
}


def _forward_output(result: object, case: MatryoshkaCase) -> tuple[dict[str, Tensor], Tensor, Tensor, Tensor]:
    if not isinstance(result, tuple) or len(result) != 4:
        raise CheckFailure(f"`{MATRYOSHKA}` should return four things, (loss_dict, loss, acts, h_reconstructed), as every SAE's forward.")
    loss_dict, loss, acts, h_reconstructed = result
    if not isinstance(loss_dict, Mapping):
        raise CheckFailure(f"The first thing `{MATRYOSHKA}` returns should be the dictionary of loss terms, but it is {type(loss_dict).__name__}.")
    missing = [key for key in ("L_reconstruction", "L_matryoshka", "L_aux") if key not in loss_dict]
    if missing:
        raise CheckFailure(f"`loss_dict` from `{MATRYOSHKA}` has no {', '.join(repr(key) for key in missing)}: it needs L_reconstruction, L_matryoshka and L_aux.")
    return dict(loss_dict), loss, acts, h_reconstructed


def _compare(actual: Tensor, expected: Tensor, mistakes: Sequence[tuple[str, Tensor]], case: MatryoshkaCase, otherwise: str) -> None:
    try:
        diagnose_among(actual, expected, mistakes, otherwise=otherwise, rtol=1e-4, atol=1e-5)
    except CheckFailure as failure:
        raise CheckFailure(_matryoshka_prefix(case, str(failure))) from None


def _matryoshka_prefix(case: MatryoshkaCase, message: str) -> str:
    return message if case.description is None else f"{case.description}: {message[0].lower()}{message[1:]}"


def _variant_terms(case: MatryoshkaCase, p: Mapping[str, Tensor], mistakes: Mapping[str, list[MatryoshkaVariant]]) -> dict[str, list[MatryoshkaTerms]]:
    with torch.no_grad():
        return {message: [_matryoshka_terms(case.before, p, case.h, case.training, variant) for variant in variants] for message, variants in mistakes.items()}


def _check_matryoshka_values(case: MatryoshkaCase, outputs: tuple[dict[str, Tensor], Tensor, Tensor, Tensor], expected: MatryoshkaTerms, p: Mapping[str, Tensor]) -> None:
    loss_dict, loss, acts, h_reconstructed = outputs
    shape = (case.h.shape[0], case.sae.cfg.n_inst)
    values = {
        "acts": expect_tensor(acts, (case.h.shape[0], case.sae.cfg.n_inst, case.sae.cfg.d_sae), what=f"acts from {MATRYOSHKA}", axes="batch, inst, d_sae"),
        "h_reconstructed": expect_tensor(h_reconstructed, tuple(case.h.shape), what=f"h_reconstructed from {MATRYOSHKA}", axes="batch, inst, d_in"),
        **{key: expect_tensor(loss_dict[key], shape, what=f'loss_dict["{key}"]', axes="batch, inst") for key in ("L_reconstruction", "L_matryoshka", "L_aux")},
    }
    if not isinstance(loss, Tensor) or loss.numel() != 1:
        raise CheckFailure(f"The loss from `{MATRYOSHKA}` should be one number, a 0-dimensional tensor (mean over the batch, sum over instances).")
    values["loss"] = expect_tensor(loss.reshape(()), (), what=f"the loss from {MATRYOSHKA}", axes="a scalar")
    wrong = _variant_terms(case, p, {**VALUE_MISTAKES, **LOSS_MISTAKES})
    with torch.no_grad():
        first_prefix = _matryoshka_terms(case.before, p, case.h, case.training, MatryoshkaVariant(returned="first")).h_reconstructed
    extra = {
        "h_reconstructed": [("h_reconstructed is the first prefix's reconstruction; return the full dictionary's.", first_prefix)],
        "L_reconstruction": [
            ('loss_dict["L_reconstruction"] holds the sum of the prefix losses; keep that in L_matryoshka and give the full dictionary\'s loss here.', expected.L_matryoshka.detach()),
            ('loss_dict["L_reconstruction"] is the first prefix\'s loss; it is the full dictionary\'s.', (first_prefix - case.h.detach().cpu().double()).pow(2).mean(dim=-1)),
        ],
    }
    pieces = {
        "acts": "`acts` are not the BatchTopK activations of (h - b_dec) W_enc + b_enc: call self.activation(pre_acts) once, on all latents.",
        "h_reconstructed": "h_reconstructed is not the full dictionary's reconstruction, b_dec plus every latent decoded with W_dec_normalized.",
        "L_reconstruction": 'loss_dict["L_reconstruction"] should be the full dictionary\'s loss alone: the mean over d_in of (h_reconstructed - h)².',
        "L_matryoshka": 'loss_dict["L_matryoshka"] is wrong: it is the sum over the prefixes of each prefix\'s mean squared error, each prefix reconstructing b_dec plus its own latents.',
        "L_aux": 'loss_dict["L_aux"] should be self.auxk_loss(pre_acts, h, h_reconstructed, dead), with the dead mask read before this batch is counted.',
        "loss": "The loss should be L_matryoshka + aux_coeff · L_aux, averaged over the batch and summed over instances.",
    }
    for name, otherwise in pieces.items():
        mistakes = extra.get(name, []) + [(message, getattr(terms, name).detach()) for message, variants in wrong.items() for terms in variants]
        _compare(values[name], getattr(expected, name).detach(), mistakes, case, otherwise)


def _check_matryoshka_gradients(case: MatryoshkaCase, loss: Tensor, leaves: Mapping[str, Tensor], expected_loss: Tensor, p: Mapping[str, Tensor]) -> None:
    actual = gradients(loss, leaves, what=f"the loss from {MATRYOSHKA}")
    expected = dict(zip(p, torch.autograd.grad(expected_loss, list(p.values()), retain_graph=True)))
    scale = max(float(grad.abs().max()) for grad in expected.values())
    if first_gradient_mismatch(actual, expected, rtol=1e-4, atol=1e-5 * scale) is None:
        return
    for place, message in GRADIENT_MISTAKES.items():
        cut = _matryoshka_terms(case.before, p, case.h, True, MatryoshkaVariant(cut=place)).loss
        if close(actual, dict(zip(p, torch.autograd.grad(cut, list(p.values())))), rtol=1e-4, atol=1e-5 * scale):
            raise CheckFailure(_matryoshka_prefix(case, message))
    name = first_gradient_mismatch(actual, expected, rtol=1e-4, atol=1e-5 * scale)
    raise CheckFailure(
        _matryoshka_prefix(
            case,
            f"The values from `{MATRYOSHKA}` are right, but the gradient of `{name}` is not: part of the loss is computed from "
            "detached tensors (.detach(), .data or torch.no_grad()), so training would see only part of it.",
        )
    )


def _check_counters(case: MatryoshkaCase, expected: MatryoshkaTerms, before: Mapping[str, Tensor]) -> None:
    sae = case.sae
    counts = sae.steps_since_fired.detach().cpu()
    if not torch.equal(counts, expected.steps_since_fired):
        if torch.equal(counts, before["steps_since_fired"]):
            raise CheckFailure(_matryoshka_prefix(case, "self.steps_since_fired did not change: call self.record_firing(acts) after computing L_aux, so that AuxK knows which latents are dead."))
        if not case.training:
            raise CheckFailure(_matryoshka_prefix(case, "steps_since_fired changed although the SAE is evaluating: count firing only through self.record_firing(acts), which skips evaluation."))
        raise CheckFailure(_matryoshka_prefix(case, "self.steps_since_fired was not updated as self.record_firing(acts) does it (once per forward, from the returned acts)."))
    threshold = sae.threshold.detach().cpu().double()
    if close(threshold, expected.threshold, rtol=1e-5, atol=1e-6):
        return
    if close(threshold, before["threshold"], rtol=1e-5, atol=1e-6):
        raise CheckFailure(_matryoshka_prefix(case, "The BatchTopK threshold did not move: use self.activation(pre_acts), which in training also keeps the threshold used at inference."))
    raise CheckFailure(_matryoshka_prefix(case, "The BatchTopK threshold moved more than once, or with other activations: call self.activation once per forward, on all pre-activations."))


def _check_matryoshka_case(forward: Callable[..., object], case: MatryoshkaCase) -> None:
    sae = case.sae
    sae.train(case.training)
    before = {"steps_since_fired": sae.steps_since_fired.detach().cpu().clone(), "threshold": sae.threshold.detach().cpu().double().clone()}
    p = _float64_parameters(sae)
    case.before = copy.deepcopy(sae)  # every expectation reads the counters and the threshold as they were
    expected = _matryoshka_terms(case.before, p, case.h, case.training)
    leaf, h_in = handed_in(case.h)
    grad_mode = torch.enable_grad() if case.training else torch.no_grad()
    with grad_mode:
        result = call_learner(forward, sae, h_in, what=MATRYOSHKA, may_change={"self.steps_since_fired", "self.threshold"})
    outputs = _forward_output(result, case)
    _check_matryoshka_values(case, outputs, expected, p)
    _check_counters(case, expected, before)
    if case.training:
        loss = outputs[1]
        _check_matryoshka_gradients(case, loss.reshape(()), {name: getattr(sae, name) for name in M_PARAMETERS}, expected.loss, p)


def _own_forward(learner: object) -> Callable[..., object]:
    forward = learner_callable(learner, "forward", owner_hint="MatryoshkaToySAE")
    if forward is inspect.getattr_static(part5.TopKToySAE, "forward"):
        raise CheckFailure(
            "This class has no `forward` of yours: the one it has is TopK's, inherited through BatchTopKToySAE, so the method was "
            "never attached to the class. Run the exercise cell that defines it (with `@add_to_class(MatryoshkaToySAE)` right "
            "above `def forward`), then this check."
        )
    return forward


@check("MatryoshkaToySAE.forward")
def test_matryoshka_forward(learner: object) -> str:
    forward = _own_forward(learner)
    cases = _matryoshka_cases()  # drawn before the learner's code runs
    for case in cases:
        _check_matryoshka_case(forward, case)
    return "one BatchTopK, nested prefixes with b_dec, summed losses, AuxK, counters, gradients, inference mode"
