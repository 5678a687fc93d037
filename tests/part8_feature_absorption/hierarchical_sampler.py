"""Check of Exercise 1, `HierarchicalToyData.generate_hierarchical_batch`.

It compares counts with bounds that a correct sampler exceeds with probability below 1e-9
(`binomial_tolerance`), so its verdict never depends on how many random numbers the learner's code
draws, or in which order; the hierarchy itself (no child without its parent, at most one child per
family) is checked exactly.
"""

from collections.abc import Callable

import torch
from torch import Tensor

from part_utils.device import get_device
from part_utils.reference import part8_feature_absorption as reference
from part_utils.tracebacks import notebook_globals
from tests.checking import CheckFailure, binomial_tolerance, call_learner, check, learner_callable
from tests.fixtures import fresh_sample
from tests.sampling import (
    FALSE_ALARM_PER_TEST,
    check_examples_vary,
    check_magnitudes_vary,
    check_presence_frequencies,
    check_presence_independent,
    check_uniform,
    check_values_not_shared,
    independence_messages,
    neighbour_comparisons,
    sample_values,
)

SAMPLER = "generate_hierarchical_batch"
SAMPLER_BATCH = 100_000
# Numbers unlike the notebook's (0.15, 0.8, 3 children, [0.8, 1.2]), so that hard-coded ones fail,
# and far enough apart that, at this batch size, every two of the probabilities a mistake can give
# differ by more than the sum of their tolerances (the suite proves it): no mistake can pass for
# the right sampler, nor be named as another.
SAMPLER_CONFIG = {
    "n_inst": 4,
    "n_parents": 3,
    "n_children": 4,
    "d_hidden": 6,
    "parent_probability": 0.1,
    "child_probability": 0.45,
    "min_magnitude": 0.5,
    "max_magnitude": 2.0,
    "direction_seed": 3,
}
NOTEBOOK_CONFIG = reference.HierarchyConfig(n_inst=1)
MAGNITUDE_EXAMPLES = 20_000  # plenty for the magnitude tests, whose tolerances follow the count they get
SMALL_CONFIG = {"n_inst": 1, "n_parents": 1, "n_children": 2, "parent_probability": 0.5, "child_probability": 0.5}
"""Length-1 axes, as the notebook's own data has (n_inst = 1), to catch code that squeezes or hard-codes axes."""
SMALL_BATCHES = (1, 300)


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
        raise CheckFailure(
            f"`{SAMPLER}` returned only zeros: parents must be active with probability parent_probability."
        )
    smallest, largest = float(present.min()), float(present.max())
    if smallest < 0:
        raise CheckFailure(
            f"`{SAMPLER}` returned negative values: magnitudes must be uniform on [min_magnitude, max_magnitude] "
            "(torch.rand, not torch.randn)."
        )
    slack = 1e-5 * high
    if smallest >= low - slack and largest <= high + slack:
        return
    if largest <= 1 + slack:
        raise CheckFailure(
            f"The magnitudes from `{SAMPLER}` lie in [0, 1], not in [min_magnitude, max_magnitude]: rescale the "
            "uniform draw u to min_magnitude + (max_magnitude - min_magnitude) · u."
        )
    if largest <= high + slack:
        raise CheckFailure(
            f"Some magnitudes from `{SAMPLER}` fall below min_magnitude: the draw must start at min_magnitude, "
            "min_magnitude + (max_magnitude - min_magnitude) · u."
        )
    if smallest >= low - slack:
        raise CheckFailure(
            f"Some magnitudes from `{SAMPLER}` exceed max_magnitude: scale the uniform draw u by the width of the "
            "range, min_magnitude + (max_magnitude - min_magnitude) · u, not by max_magnitude."
        )
    raise CheckFailure(
        f"The magnitudes from `{SAMPLER}` are not confined to [min_magnitude, max_magnitude]: draw them uniformly "
        "on that range."
    )


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
        f"Two children of one parent from `{SAMPLER}` are active at once: exactly one child is active when the parent "
        "has one; pick which with a single draw (torch.randint over the children) instead of a draw per child."
    )


def parent_alternatives(cfg: reference.HierarchyConfig) -> dict[str, float]:
    """The probability of an active parent that each plausible mistake gives, with the sentence naming it."""
    p, q = cfg.parent_probability, cfg.child_probability
    alternatives = {
        f"Parents from `{SAMPLER}` are active with probability 1 - parent_probability: the comparison is reversed "
        "(active when the draw is below p).": 1 - p,
        f"Parents from `{SAMPLER}` are switched on by children drawn without looking at them: draw the parent first, "
        "then a child only for an active parent.": p + (1 - p) * q,
    }
    if p != NOTEBOOK_CONFIG.parent_probability:
        notebook = f"`{SAMPLER}` uses the notebook's parent probability (0.15) instead of self.cfg.parent_probability."
        alternatives[notebook] = NOTEBOOK_CONFIG.parent_probability
    return alternatives


def _check_parent_frequencies(parent_on: Tensor, cfg: reference.HierarchyConfig) -> None:
    probability = torch.full(parent_on.shape[1:], cfg.parent_probability, dtype=torch.float64)
    check_presence_frequencies(
        parent_on,
        probability,
        what=SAMPLER,
        alternatives={
            message: torch.full_like(probability, value) for message, value in parent_alternatives(cfg).items()
        },
        otherwise=f"Parents from `{SAMPLER}` are active with the wrong probability: each parent must be active with "
        "self.cfg.parent_probability, independently.",
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
        f"Given an active parent, `{SAMPLER}` gives it a child with probability 1 - child_probability: the comparison "
        "is reversed.": 1 - q,
        f"Every active parent from `{SAMPLER}` has a child: with probability 1 - child_probability the parent must "
        "appear alone.": 1.0,
        f"Given an active parent, `{SAMPLER}` gives it a child with probability parent_probability · "
        "child_probability: child_probability is already conditional on the parent (the `&` with parent_on does the "
        "conditioning), so compare the draw with child_probability alone.": p * q,
        f"Given an active parent, `{SAMPLER}` gives it a child with probability child_probability / n_children: that "
        "is each child's share; some child is active with child_probability itself.": q / C,
        f"Given an active parent, `{SAMPLER}` gives it a child with probability n_children / (n_children + 1) · "
        "child_probability: draw which child from n_children outcomes, not n_children + 1.": q * C / (C + 1),
    }
    if q != NOTEBOOK_CONFIG.child_probability:
        notebook = f"`{SAMPLER}` uses the notebook's child probability (0.8) instead of self.cfg.child_probability."
        alternatives[notebook] = NOTEBOOK_CONFIG.child_probability
    return alternatives


CONDITIONAL_FALSE_ALARM = FALSE_ALARM_PER_TEST / 4
"""The two conditional tests (some child, which child) share half of one test's budget; the choice test takes the
rest."""


def _check_child_frequencies(parent_on: Tensor, children: Tensor, cfg: reference.HierarchyConfig) -> None:
    q = cfg.child_probability
    has_child = children.any(dim=-1)
    shape = parent_on.shape[1:]
    full = lambda value: torch.full(shape, float(value), dtype=torch.float64)  # noqa: E731
    if not _conditional_frequencies_match(has_child, parent_on, full(q), CONDITIONAL_FALSE_ALARM):
        alternatives = child_alternatives(cfg)
        matching = (
            m
            for m, a in alternatives.items()
            if _conditional_frequencies_match(has_child, parent_on, full(a), CONDITIONAL_FALSE_ALARM)
        )
        message = next(matching, None)
        raise CheckFailure(
            message
            or f"Given an active parent, `{SAMPLER}` gives it a child with the wrong probability: exactly one child is "
            "active with probability child_probability."
        )


def _check_children_equally_likely(parent_on: Tensor, children: Tensor, cfg: reference.HierarchyConfig) -> None:
    C = cfg.n_children
    each = torch.full((*parent_on.shape[1:], C), cfg.child_probability / C, dtype=torch.float64)
    parent_on_each = parent_on[..., None].expand_as(children)
    if _conditional_frequencies_match(children, parent_on_each, each, CONDITIONAL_FALSE_ALARM):
        return
    raise CheckFailure(
        f"The children from `{SAMPLER}` are not equally likely: `torch.randint(n_children, ...)` draws 0 to "
        "n_children - 1 with equal probability (its upper bound is exclusive), and each of them must be chosen with "
        "the same chance."
    )


def _child_choices(children: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Whether each family has a child and which ([batch, inst, parents]), and how often each child was chosen
    ([inst, parents, children]); counted with bincount, much faster than summing the boolean mask."""
    has_child = children.any(dim=-1)
    which = children.view(torch.uint8).argmax(dim=-1)
    _, n_inst, n_parents, n_children = children.shape
    cell = torch.arange(n_inst * n_parents).reshape(n_inst, n_parents) * n_children
    counts = torch.bincount((cell + which)[has_child], minlength=n_inst * n_parents * n_children)
    return has_child, which, counts.reshape(n_inst, n_parents, n_children)


def _check_child_choice_varies_over_the_batch(counts: Tensor) -> None:
    """A family (of one instance) that has a child in many examples, always the same one, drew "which child" once
    for the whole batch: a correct sampler repeats one child 30 times with probability below n_children^-29."""
    one_child_only = (counts > 0).sum(dim=-1) == 1
    if bool((one_child_only & (counts.sum(dim=-1) >= 30)).any()):
        raise CheckFailure(
            f"Which child is active is shared by every example of the batch from `{SAMPLER}`: each family always "
            "gets the same child. Draw which child with shape [batch, inst, parents], one draw per example, instance "
            "and parent, not one per family broadcast over the batch."
        )


def _choice_pairs(cfg: reference.HierarchyConfig, batch: int) -> dict[str, list[tuple[tuple, tuple]]]:
    """Pairs of cells (index into [batch, inst, parents]) whose two choices of child must be independent, by the
    axis that separates them: neighbouring examples, two families of an example, one family in two instances."""
    every, halves = slice(None), batch // 2
    evens, odds = slice(0, 2 * halves, 2), slice(1, 2 * halves, 2)
    return {
        "examples": [((evens, every, every), (odds, every, every))],
        "families": [
            ((every, every, a), (every, every, b)) for a in range(cfg.n_parents) for b in range(a + 1, cfg.n_parents)
        ],
        "instances": [
            ((every, a, p), (every, b, p))
            for p in range(cfg.n_parents)
            for a in range(cfg.n_inst)
            for b in range(a + 1, cfg.n_inst)
        ],
    }


def _check_child_choice_independent(choices: tuple[Tensor, Tensor, Tensor], cfg: reference.HierarchyConfig) -> None:
    """Where two cells both have a child, their children's numbers agree with the probability that the cells'
    own frequencies of each child give (1/n_children for a right sampler): a shared "which child" draw makes them
    always agree. Expected from the observed frequencies, so that unequal children are named by their own test."""
    has_child, which, counts = choices
    share = counts.double() / counts.sum(dim=-1, keepdim=True).double().clamp_min(1)  # [inst, parents, children]
    messages = {
        "examples": f"Which child is active is shared by neighbouring examples from `{SAMPLER}`: draw it separately "
        "for every example.",
        "families": f"Which child is active is shared by the families of an example from `{SAMPLER}`: draw the child "
        "of every family separately (one draw per example, instance and parent).",
        "instances": f"Which child is active is shared across instances in `{SAMPLER}`: draw it separately for every "
        "instance.",
    }
    pairs = _choice_pairs(cfg, which.shape[0])
    n_tests = sum(len(cells) for cells in pairs.values())
    for axis, cells in pairs.items():
        for a, b in cells:
            both = has_child[a] & has_child[b]
            n = int(both.sum())
            if n == 0:
                continue
            agree = float((both & (which[a] == which[b])).sum()) / n
            chance = (share[a[1:]] * share[b[1:]]).sum(dim=-1).expand_as(both)  # per cell, P(same child)
            expected = float(chance[both].mean())
            tolerance = float(binomial_tolerance(expected, n, false_alarm=FALSE_ALARM_PER_TEST / 2 / n_tests))
            if agree - expected > tolerance + 0.02:  # 0.02: the frequencies' own noise, far below a shared draw's
                raise CheckFailure(messages[axis])


def _family_magnitude_comparison(values: Tensor, cfg: reference.HierarchyConfig) -> dict[str, tuple[Tensor, Tensor]]:
    """Each parent's value next to the value of its active child (the sum over its children: at most one is
    non-zero)."""
    parents = values[..., : cfg.n_parents]
    child = values[..., cfg.n_parents :].unflatten(-1, (cfg.n_parents, cfg.n_children)).sum(dim=-1)
    shared = f"A parent and its child from `{SAMPLER}` share one magnitude: draw a magnitude for every feature."
    return {shared: (parents, child)}


def _check_magnitudes(values: Tensor, cfg: reference.HierarchyConfig) -> None:
    check_magnitudes_vary(values, what=SAMPLER, advice="draw magnitudes uniformly on [min_magnitude, max_magnitude]")
    comparisons = {**_family_magnitude_comparison(values, cfg), **neighbour_comparisons(values, SAMPLER)}
    check_values_not_shared(values, comparisons)
    present = values[values != 0]
    unit = (present - cfg.min_magnitude) / (cfg.max_magnitude - cfg.min_magnitude)
    otherwise = (
        f"The magnitudes from `{SAMPLER}` are not uniform on [min_magnitude, max_magnitude]: use torch.rand, rescaled."
    )
    check_uniform(unit.clamp(0, 1), what=SAMPLER, otherwise=otherwise)


def _with_globals_named(failure: CheckFailure, generate: Callable[..., object]) -> CheckFailure:
    """A wrong shape from code that reads the notebook's sizes (e.g. `n_parents`) names them."""
    used = notebook_globals(generate)
    if not used or "returned shape" not in str(failure):
        return failure
    names = ", ".join(f"`{name}`" for name in used)
    return CheckFailure(
        f"{failure} `{SAMPLER}` reads the notebook's {names} rather than self.cfg, and this check uses other sizes: "
        "take every size from self.cfg."
    )


def _check_small_shapes(generate: Callable[..., object]) -> None:
    """One instance, one parent, and a batch of one: the sample keeps every axis and the hierarchy."""
    data = reference.HierarchicalToyData(reference.HierarchyConfig(**SMALL_CONFIG), device=get_device())
    cfg = data.cfg
    for batch in SMALL_BATCHES:
        output = call_learner(generate, data, batch, what=SAMPLER)
        shape = (batch, cfg.n_inst, cfg.n_features)
        try:
            values = sample_values(output, shape, device=data.W.device, what=SAMPLER, axes="batch, inst, feats")
        except CheckFailure as failure:
            raise CheckFailure(
                f"With one instance and one parent (the notebook's data has n_inst = 1) and a batch of {batch}: "
                f"{str(failure)[0].lower()}{str(failure)[1:]} Keep every axis, even those of length 1 (no .squeeze())."
            ) from None
        orphans, crowded = _violations(values != 0, cfg)
        if orphans or crowded:
            raise CheckFailure(
                f"With one instance and one parent, `{SAMPLER}` breaks the hierarchy (a child without its parent, or "
                "two children at once): take every size from self.cfg and keep every axis, even those of length 1."
            )


@check(SAMPLER)
def test_generate_hierarchical_batch(learner: object) -> str:
    generate = learner_callable(learner, SAMPLER, owner_hint="HierarchicalToyData")
    data = _sampler_data()
    cfg = data.cfg
    shape, axes = (SAMPLER_BATCH, cfg.n_inst, cfg.n_features), "batch, inst, feats"
    try:
        values = fresh_sample(generate, data, SAMPLER_BATCH, shape=shape, device=data.W.device, what=SAMPLER, axes=axes)
    except CheckFailure as failure:
        raise _with_globals_named(failure, generate) from None
    _check_magnitude_range(values, cfg)
    present = values != 0
    _check_hierarchy(present, cfg)
    check_examples_vary(values, _marginals(cfg), what=SAMPLER)
    check_examples_vary(values[..., : cfg.n_parents], _marginals(cfg)[:, : cfg.n_parents], what=SAMPLER)
    parent_on = present[..., : cfg.n_parents]
    children = present[..., cfg.n_parents :].unflatten(-1, (cfg.n_parents, cfg.n_children))
    _check_parent_frequencies(parent_on, cfg)
    _check_child_frequencies(parent_on, children, cfg)
    choices = _child_choices(children)
    _check_child_choice_varies_over_the_batch(choices[2])
    _check_child_choice_independent(choices, cfg)
    _check_children_equally_likely(parent_on, children, cfg)
    messages = independence_messages(SAMPLER, "families")
    check_presence_independent(present, _marginals(cfg), messages=messages, same_group=_same_family(cfg))
    _check_magnitudes(values[:MAGNITUDE_EXAMPLES], cfg)
    _check_small_shapes(generate)
    return (
        "no orphans, one child at most, marginal and conditional frequencies and magnitudes match on "
        f"{SAMPLER_BATCH} samples"
    )
