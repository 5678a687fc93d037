"""Mutation suite for Part 8's learner-facing checks (tests/part8_feature_absorption.py).

Each check must pass the reference and correct implementations written differently, and fail
each plausible mistake with a message that names it.
"""

import itertools
import random
import re
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from einops import einsum
from torch import nn

import tests.part8_feature_absorption as part8
from part_utils.reference import part8_feature_absorption as reference
from part_utils.reference.part5_sae_variants import batch_topk_activation, topk_activation
from part_utils.sae_interface import SAEOutput
from tests.checking import binomial_tolerance
from tests.suite.conftest import notebook_function, stub, with_extra_draws

Data = reference.HierarchicalToyData
SAMPLER = "generate_hierarchical_batch"


def sampler(function: Any) -> type:
    """A HierarchicalToyData subclass whose sampler is `function`."""
    return type("LearnerData", (Data,), {"generate_hierarchical_batch": function})


# generate_hierarchical_batch -----------------------------------------------------------------


def _families(self, batch_size):
    return (batch_size, self.cfg.n_inst, self.cfg.n_parents)


def _values(self, active, magnitudes=None):
    cfg = self.cfg
    if magnitudes is None:
        magnitudes = cfg.min_magnitude + (cfg.max_magnitude - cfg.min_magnitude) * torch.rand(
            active.shape, device=self.W.device
        )
    return torch.where(active, magnitudes, 0.0)


def _join(parent_on, child_on):
    return torch.cat([parent_on, child_on.flatten(-2)], dim=-1)


def make_sampler(
    *,
    parent_probability=None,
    child_probability=None,
    reversed_parent=False,
    reversed_child=False,
    child_given_parent=True,
    force_parent=False,
    children="one",  # one, independent q, independent q/C
    has_child_probability="q",  # q, pq, q/C, one, notebook
    which="randint",  # randint, randint from 1, randint C+1
    presence_shape="full",  # full, shared instances, shared batch
    which_shape="full",  # full, shared families, shared instances, shared batch
    magnitudes="range",  # range, unit, no offset, max scale, randn, ones, shared family, shared instances
    layout="ours",  # ours, tree, child major
    output="values",  # values, bool, squeezed
):
    """A sampler with one deliberate change (the defaults give the text's sampler)."""

    def generate(self, batch_size):
        cfg, device = self.cfg, self.W.device
        p = cfg.parent_probability if parent_probability is None else parent_probability
        q = cfg.child_probability if child_probability is None else child_probability
        P, C = cfg.n_parents, cfg.n_children
        shape = _families(self, batch_size)
        draw_shape = {"full": shape, "shared instances": (batch_size, 1, P), "shared batch": (1, cfg.n_inst, P)}[
            presence_shape
        ]
        u = torch.rand(draw_shape, device=device).expand(shape)
        parent_on = (u > p) if reversed_parent else (u < p)
        q_family = {"q": q, "pq": p * q, "q/C": q / C, "one": 1.0, "notebook": 0.8}[has_child_probability]
        if children == "one":
            v = torch.rand(shape, device=device)
            has_child = (v > q_family) if reversed_child else (v < q_family)
            if child_given_parent:
                has_child = has_child & parent_on
            which_draw_shape = {
                "full": shape,
                "shared families": (batch_size, cfg.n_inst, 1),
                "shared instances": (batch_size, 1, P),
                "shared batch": (1, cfg.n_inst, P),
            }[which_shape]
            if which == "randint":
                chosen = torch.randint(C, which_draw_shape, device=device).expand(shape)
                child_on = F.one_hot(chosen, C).bool() & has_child[..., None]
            elif which == "randint from 1":
                chosen = torch.randint(1, C, which_draw_shape, device=device).expand(shape)
                child_on = F.one_hot(chosen, C).bool() & has_child[..., None]
            else:
                chosen = torch.randint(C + 1, which_draw_shape, device=device).expand(shape)
                child_on = F.one_hot(chosen, C + 1)[..., :C].bool() & has_child[..., None]
        else:
            per_child = q if children == "independent q" else q / C
            child_on = (torch.rand(*shape, C, device=device) < per_child) & parent_on[..., None]
        if force_parent:
            parent_on = parent_on | child_on.any(dim=-1)
        active = _join(parent_on, child_on)
        low, high = cfg.min_magnitude, cfg.max_magnitude
        draw = torch.rand(active.shape, device=device)
        magnitude = {
            "range": low + (high - low) * draw,
            "unit": draw,
            "no offset": (high - low) * draw,
            "max scale": low + high * draw,
            "randn": torch.randn(active.shape, device=device),
            "ones": torch.ones_like(draw),
        }.get(magnitudes)
        if magnitudes == "shared family":
            per_family = low + (high - low) * torch.rand(shape, device=device)
            magnitude = torch.cat([per_family, per_family.repeat_interleave(C, dim=-1)], dim=-1)
        if magnitudes == "shared instances":
            magnitude = (low + (high - low) * torch.rand(batch_size, 1, active.shape[-1], device=device)).expand(
                active.shape
            )
        values = torch.where(active, magnitude, 0.0)
        if layout == "tree":
            order = [f for parent in range(P) for f in (parent, *(P + parent * C + c for c in range(C)))]
            values = values[..., order]
        elif layout == "child major":
            order = list(range(P)) + [P + parent * C + c for c in range(C) for parent in range(P)]
            values = values[..., order]
        if output == "squeezed":
            return values.squeeze()
        return values != 0 if output == "bool" else values

    return generate


def sampler_loop_over_families_float64(self, batch_size):
    cfg, device = self.cfg, self.W.device
    parents, children = [], []
    for _ in range(cfg.n_parents):  # another order of draws: one family at a time
        on = torch.rand(batch_size, cfg.n_inst, device=device, dtype=torch.float64) < cfg.parent_probability
        which = torch.randint(cfg.n_children, (batch_size, cfg.n_inst), device=device)
        has = on & (torch.rand(batch_size, cfg.n_inst, device=device, dtype=torch.float64) < cfg.child_probability)
        parents.append(on)
        children.append(torch.stack([has & (which == c) for c in range(cfg.n_children)], dim=-1))
    active = torch.cat([torch.stack(parents, dim=-1), torch.stack(children, dim=-2).flatten(-2)], dim=-1)
    magnitudes = torch.empty(active.shape, device=device, dtype=torch.float64).uniform_(
        cfg.min_magnitude, cfg.max_magnitude
    )
    return magnitudes * active


def sampler_multinomial_outcomes(self, batch_size):
    cfg, device = self.cfg, self.W.device
    shape = _families(self, batch_size)
    parent_on = torch.bernoulli(torch.full(shape, cfg.parent_probability, device=device)).bool()
    # One categorical draw per family over "child 0 .. child C-1, or none".
    weights = torch.tensor(
        [cfg.child_probability / cfg.n_children] * cfg.n_children + [1 - cfg.child_probability], device=device
    )
    outcome = torch.multinomial(weights, parent_on.numel(), replacement=True).reshape(shape)
    child_on = (outcome[..., None] == torch.arange(cfg.n_children, device=device)) & parent_on[..., None]
    return _values(self, _join(parent_on, child_on))


def sampler_one_uniform_per_family(self, batch_size):
    cfg, device = self.cfg, self.W.device
    u = torch.rand(_families(self, batch_size), device=device)
    parent_on = u < cfg.parent_probability
    has_child = u < cfg.parent_probability * cfg.child_probability  # P(has | on) = q, from the same draw
    which = (torch.rand(u.shape, device=device) * cfg.n_children).long()
    child_on = torch.zeros(*u.shape, cfg.n_children, dtype=torch.bool, device=device)
    child_on.scatter_(-1, which[..., None], has_child[..., None])  # in place on our own tensor
    return _values(self, _join(parent_on, child_on))


def sampler_child_by_argmax_of_uniforms(self, batch_size):
    cfg, device = self.cfg, self.W.device
    shape = _families(self, batch_size)
    parent_on = torch.rand(shape, device=device) < cfg.parent_probability
    has_child = parent_on & (torch.rand(shape, device=device) < cfg.child_probability)
    # Which child: the largest of n_children uniforms, equally likely to be any of them.
    which = torch.rand(*shape, cfg.n_children, device=device).argmax(dim=-1)
    child_on = (which[..., None] == torch.arange(cfg.n_children, device=device)) & has_child[..., None]
    return _values(self, _join(parent_on, child_on))


SAMPLER_WITH_NOTEBOOK_SIZES = """
def generate_hierarchical_batch(self, batch_size):
    cfg, device = self.cfg, self.W.device
    families = (batch_size, cfg.n_inst, n_parents)
    parent_on = torch.rand(families, device=device) < cfg.parent_probability
    has_child = parent_on & (torch.rand(families, device=device) < cfg.child_probability)
    child_on = F.one_hot(torch.randint(n_children, families, device=device), n_children).bool() & has_child[..., None]
    active = torch.cat([parent_on, child_on.flatten(-2)], dim=-1)
    return torch.where(active, cfg.min_magnitude + 0.5 * torch.rand(active.shape, device=device), 0.0)
"""


def sampler_scales_W_in_place(self, batch_size):
    self.W.mul_(1.0 + 1e-3)  # "normalise" the directions in place
    return Data.generate_hierarchical_batch(self, batch_size)


def sampler_reseeded(self, batch_size):
    torch.manual_seed(0)
    return Data.generate_hierarchical_batch(self, batch_size)


def sampler_on_meta(self, batch_size):
    return Data.generate_hierarchical_batch(self, batch_size).to("meta")


def sampler_grouped_shape(self, batch_size):
    values = Data.generate_hierarchical_batch(self, batch_size)
    return values[..., : self.cfg.n_parents]


SAMPLER_REWRITES = [
    sampler_loop_over_families_float64,
    sampler_multinomial_outcomes,
    sampler_one_uniform_per_family,
    sampler_child_by_argmax_of_uniforms,
]


def test_sampler_accepts_the_reference_and_rewrites(checks):
    checks.passes(part8.test_generate_hierarchical_batch, Data)
    for rewrite in SAMPLER_REWRITES:
        checks.passes(part8.test_generate_hierarchical_batch, sampler(rewrite))


@pytest.mark.parametrize("draws", range(0, 40, 4))
def test_sampler_verdict_does_not_depend_on_the_draw_order(checks, draws):
    checks.passes(
        part8.test_generate_hierarchical_batch, sampler(with_extra_draws(Data.generate_hierarchical_batch, draws))
    )


SAMPLER_MISTAKES = [
    ({"reversed_parent": True}, "probability 1 - parent_probability"),
    ({"child_given_parent": False}, "child .* is active without its parent"),
    ({"child_given_parent": False, "force_parent": True}, "switched on by children drawn without looking at them"),
    ({"children": "independent q"}, "Two children of one parent .* are active at once"),
    ({"children": "independent q/C"}, "Two children of one parent .* are active at once"),
    (
        {"has_child_probability": "pq"},
        "parent_probability · child_probability: child_probability is already conditional",
    ),
    ({"has_child_probability": "q/C"}, "child_probability / n_children: that is each child's share"),
    ({"has_child_probability": "one"}, "Every active parent .* has a child"),
    ({"reversed_child": True}, "1 - child_probability: the comparison is reversed"),
    ({"which": "randint C+1"}, r"n_children \+ 1"),
    ({"which": "randint from 1"}, "children .* are not equally likely.*upper bound is exclusive"),
    ({"parent_probability": 0.15}, "notebook's parent probability"),
    ({"has_child_probability": "notebook"}, "notebook's child probability"),
    ({"magnitudes": "unit"}, r"lie in \[0, 1\], not in \[min_magnitude, max_magnitude\]"),
    ({"magnitudes": "no offset"}, "fall below min_magnitude"),
    ({"magnitudes": "max scale"}, "exceed max_magnitude.*not by max_magnitude"),
    ({"magnitudes": "randn"}, "negative values"),
    ({"magnitudes": "ones"}, "magnitude 1"),
    ({"magnitudes": "shared family"}, "A parent and its child .* share one magnitude"),
    ({"magnitudes": "shared instances"}, "share one magnitude across instances"),
    ({"presence_shape": "shared instances"}, "correlated across instances"),
    ({"presence_shape": "shared batch"}, "same features present"),
    ({"which_shape": "shared families"}, "Which child is active is shared by the families"),
    ({"which_shape": "shared instances"}, "Which child is active is shared across instances"),
    ({"which_shape": "shared batch"}, "Which child is active is shared by every example of the batch"),
    ({"which_shape": "shared batch", "which": "randint from 1"}, "shared by every example of the batch"),
    ({"output": "squeezed"}, r"With one instance and one parent .* Keep every axis, even those of length 1"),
    ({"layout": "tree"}, "another order \\(each parent followed by its own children\\)"),
    ({"layout": "child major"}, "another order \\(the children ordered by child number first"),
    ({"output": "bool"}, "boolean tensor"),
]


@pytest.mark.parametrize(("options", "message"), SAMPLER_MISTAKES)
def test_sampler_names_each_mistake(checks, options, message):
    checks.fails(part8.test_generate_hierarchical_batch, sampler(make_sampler(**options)), message)


@pytest.mark.parametrize(
    ("mutant", "message"),
    [
        (sampler_scales_W_in_place, r"changed `self\.W` in place"),
        (sampler_reseeded, "same sample on two calls"),
        (sampler_on_meta, "on meta"),
        (sampler_grouped_shape, r"\[batch, inst, feats\]"),
        (
            notebook_function(SAMPLER_WITH_NOTEBOOK_SIZES, SAMPLER, n_parents=5, n_children=3),
            r"reads the notebook's `n_children`, `n_parents` rather than self\.cfg",
        ),
    ],
)
def test_sampler_names_side_effects_and_wrong_outputs(checks, mutant, message):
    checks.fails(part8.test_generate_hierarchical_batch, sampler(mutant), message)


@pytest.mark.parametrize(
    ("alternatives", "expected", "n", "cells", "false_alarm"),
    [
        (
            part8.parent_alternatives,
            lambda cfg: cfg.parent_probability,
            lambda cfg: part8.SAMPLER_BATCH,
            lambda cfg: cfg.n_inst * cfg.n_parents,
            part8.FALSE_ALARM_PER_TEST,
        ),
        (
            part8.child_alternatives,
            lambda cfg: cfg.child_probability,
            lambda cfg: int(part8.SAMPLER_BATCH * cfg.parent_probability * 0.98),
            lambda cfg: cfg.n_inst * cfg.n_parents,
            part8.CONDITIONAL_FALSE_ALARM,
        ),
    ],
)
def test_sampler_alternatives_are_separated_beyond_their_tolerances(alternatives, expected, n, cells, false_alarm):
    """Every two probabilities (the right one and each mistake's) differ by more than the sum of their
    tolerances, with the number of draws the check has (for the child test: the active parents, taken
    2% below their expected number)."""
    cfg = part8._sampler_data().cfg
    values = [expected(cfg), *alternatives(cfg).values()]
    tolerance = [float(binomial_tolerance(value, n(cfg), false_alarm=false_alarm / cells(cfg))) for value in values]
    for (a, ta), (b, tb) in itertools.combinations(zip(values, tolerance), 2):
        assert abs(a - b) > ta + tb, (a, b)


def test_the_sampler_default_options_are_the_reference():
    checks_data = part8._sampler_data()
    torch.manual_seed(3)
    ours = make_sampler()(checks_data, 50)
    torch.manual_seed(3)
    assert torch.equal(ours, Data.generate_hierarchical_batch(checks_data, 50))


# parent_latents --------------------------------------------------------------------------------


def _masks(features, parent_cosine):
    parent_on, child_on = reference.family_presence(features, parent_cosine.shape[-1])
    return parent_on, child_on.any(dim=-1)


def parents_by_single_score_float64(acts, features, parent_cosine, threshold=0.5):
    parent_on, with_child = _masks(features, parent_cosine)
    fires = (acts > 0).double()
    alone = einsum((parent_on & ~with_child).double(), fires, "b i p, b i s -> i s p")
    active = einsum(parent_on.double(), fires, "b i p, b i s -> i s p")
    score = alone * (acts.shape[0] + 1) + active  # one more parent-alone input outweighs any second count
    return torch.where(parent_cosine >= threshold, score, -1.0).argmax(dim=1)


def parents_in_loops_with_rates(acts, features, parent_cosine, threshold=0.5):
    parent_on, with_child = _masks(features, parent_cosine)
    alone = parent_on & ~with_child
    n_inst, d_sae, n_parents = parent_cosine.shape
    result = torch.zeros(n_inst, n_parents, dtype=torch.long)
    for inst in range(n_inst):
        for parent in range(n_parents):
            best, best_key = 0, None
            for latent in range(d_sae):
                if parent_cosine[inst, latent, parent] < threshold:
                    continue
                fires = acts[:, inst, latent] > 0
                key = (
                    (fires & alone[:, inst, parent]).float().mean().item(),
                    (fires & parent_on[:, inst, parent]).float().mean().item(),
                )
                if best_key is None or key > best_key:
                    best, best_key = latent, key
            result[inst, parent] = best
    return result


def parents_sorted_stably(acts, features, parent_cosine, threshold=0.5):
    parent_on, with_child = _masks(features, parent_cosine)
    fires = acts > 0
    alone = ((parent_on & ~with_child)[:, :, None, :] & fires[..., None]).sum(dim=0)  # [inst, d_sae, parents]
    active = (parent_on[:, :, None, :] & fires[..., None]).sum(dim=0)
    key = torch.where(parent_cosine >= threshold, alone * 10**6 + active, -1)
    return key.sort(dim=1, descending=True, stable=True).indices[:, 0]


def make_parent_latents(
    *,
    events="alone",
    score="count",
    candidates=">=",
    threshold=None,
    fires=">",
    pooled=False,
    tie="active",
    layout="ok",
    children="own",  # own, any family, child major
    non_candidates=-1.0,
):
    """A parent_latents with one deliberate change (the defaults give the text's)."""

    def parent_latents(acts, features, parent_cosine, threshold_argument=0.5):
        tau = threshold_argument if threshold is None else threshold
        parent_on, with_child = _masks(features, parent_cosine)
        n_parents = parent_cosine.shape[-1]
        if children == "any family":
            with_child = (features[..., n_parents:] != 0).any(dim=-1, keepdim=True).expand_as(parent_on)
        elif children == "child major":
            with_child = (features[..., n_parents:] != 0).unflatten(-1, (-1, n_parents)).any(dim=-2)
        selected = {
            "alone": parent_on & ~with_child,
            "parent": parent_on,
            "with child": parent_on & with_child,
            "all": torch.ones_like(parent_on),
        }[events]
        firing = ((acts >= 0) if fires == ">=" else (acts > 0)).float()
        counts = einsum(selected.float(), acts if score == "activation" else firing, "b i p, b i s -> i s p")
        if score == "cosine":
            counts = parent_cosine
        if pooled:
            counts = counts.sum(dim=0, keepdim=True).expand_as(counts)
        allowed = {
            ">=": parent_cosine >= tau,
            ">": parent_cosine > tau,
            "abs": parent_cosine.abs() >= tau,
            "all": torch.ones_like(parent_cosine, dtype=torch.bool),
        }[candidates]
        scored = torch.where(allowed, counts, non_candidates)
        if tie == "lowest":
            chosen = scored.argmax(dim=1)
        elif tie == "highest":
            best = scored == scored.amax(dim=1, keepdim=True)
            second = torch.where(best, einsum(parent_on.float(), firing, "b i p, b i s -> i s p"), -2.0)
            chosen = second.shape[1] - 1 - second.flip(1).argmax(dim=1)
        else:
            best = scored == scored.amax(dim=1, keepdim=True)
            second = parent_cosine if tie == "cosine" else einsum(parent_on.float(), firing, "b i p, b i s -> i s p")
            chosen = torch.where(best, second, -2.0).argmax(dim=1)
        if layout == "transposed":
            return chosen.T
        if layout == "float":
            return chosen.float()
        if layout == "squeezed":
            return chosen.squeeze(-1)  # collapses a parents axis of length 1
        return chosen

    return parent_latents


def parents_tied_by_firing_with_a_child(acts, features, parent_cosine, threshold=0.5):
    """Ties broken by firing with a child: among candidates tied on the parent-alone count, the same order."""
    parent_on, with_child = _masks(features, parent_cosine)
    fires = (acts > 0).float()
    alone = einsum((parent_on & ~with_child).float(), fires, "b i p, b i s -> i s p")
    with_a_child = einsum((parent_on & with_child).float(), fires, "b i p, b i s -> i s p")
    alone = alone.masked_fill(parent_cosine < threshold, -1.0)
    tied = alone == alone.amax(dim=1, keepdim=True)
    return with_a_child.masked_fill(~tied, -1.0).argmax(dim=1)


def test_parent_latents_accepts_the_reference_and_rewrites(checks):
    for function in (
        reference.parent_latents,
        make_parent_latents(),
        parents_by_single_score_float64,
        parents_in_loops_with_rates,
        parents_sorted_stably,
        parents_tied_by_firing_with_a_child,
    ):
        checks.passes(part8.test_parent_latents, function)


PARENT_MISTAKES = [
    ({"score": "cosine", "candidates": "all"}, "highest decoder cosine with the parent"),
    ({"events": "parent"}, "count includes inputs where a child is active too"),
    ({"events": "with child"}, "count is over the inputs with a child"),
    ({"events": "all"}, "count is over all inputs"),
    ({"score": "activation"}, "score sums activations"),
    ({"candidates": "all"}, "cosine below the threshold compete too"),
    ({"candidates": ">"}, "compared strictly"),
    ({"candidates": "abs"}, r"\|cosine\| ≥ threshold"),
    ({"threshold": 0.5}, "τ = 0.5 whatever `threshold` is passed"),
    ({"fires": ">="}, r"acts >= 0"),
    ({"pooled": True}, "pooled over instances"),
    ({"tie": "lowest"}, "Ties in the parent-alone count go to the lowest-numbered candidate"),
    ({"tie": "cosine"}, "Ties in the parent-alone count go to the candidate with the higher cosine"),
    ({"layout": "transposed"}, r"returned \[parents, inst\]"),
    ({"layout": "float"}, "floating-point or boolean tensor"),
    ({"children": "any family"}, "no child of any family is active"),
    ({"children": "child major"}, r"children are read in the wrong layout \(\[children, parents\]\)"),
    ({"non_candidates": 0.0}, "(?i)non-candidates get a score of 0"),
    ({"tie": "highest"}, "still tied after both counts go to the highest-numbered"),
    (
        {"layout": "squeezed"},
        r"With one instance and one parent: `parent_latents` returned shape \(1,\).*even one of length 1",
    ),
]

PARENT_LATENTS_WITH_NOTEBOOK_SIZES = """
def parent_latents(acts, features, parent_cosine, threshold=0.5):
    parent_on, child_on = reference.family_presence(features, n_parents)
    alone = parent_on & ~child_on.any(dim=-1)
    fires = (acts > 0).float()
    alone_count = einsum(alone.float(), fires, "b i p, b i s -> i s p")
    return torch.where(parent_cosine >= threshold, alone_count, -1.0).argmax(dim=1)
"""


@pytest.mark.parametrize(("options", "message"), PARENT_MISTAKES)
def test_parent_latents_names_each_mistake(checks, options, message):
    checks.fails(part8.test_parent_latents, make_parent_latents(**options), message)


def parents_returning_scores(acts, features, parent_cosine, threshold=0.5):
    parent_on, with_child = _masks(features, parent_cosine)
    return einsum((parent_on & ~with_child).float(), (acts > 0).float(), "b i p, b i s -> i s p")


def parents_zeroing_acts_in_place(acts, features, parent_cosine, threshold=0.5):
    acts[acts < 0.2] = 0.0  # "clean up" small activations in the caller's tensor
    return reference.parent_latents(acts, features, parent_cosine, threshold)


@pytest.mark.parametrize(
    ("mutant", "message"),
    [
        (parents_returning_scores, r"returned \[inst, d_sae, parents\]"),
        (parents_zeroing_acts_in_place, r"changed `acts` in place"),
        (
            notebook_function(PARENT_LATENTS_WITH_NOTEBOOK_SIZES, "parent_latents", n_parents=5, reference=reference),
            r"raised RuntimeError.*reads the notebook's `n_parents`",
        ),
    ],
)
def test_parent_latents_names_wrong_outputs_and_side_effects(checks, mutant, message):
    checks.fails(part8.test_parent_latents, mutant, message)


def test_tie_case_separates_the_two_tie_rules():
    case = part8._tie_case()
    right = part8._choose_parent_latents(case)
    lowest = part8._choose_parent_latents(case, part8.ParentChoice(tie="lowest"))
    cosine = part8._choose_parent_latents(case, part8.ParentChoice(tie="highest cosine"))
    assert not torch.equal(right, lowest) and not torch.equal(right, cosine) and not torch.equal(lowest, cosine)


# absorption_rate -------------------------------------------------------------------------------


def absorption_in_loops(acts, features, parent_cosine, parent_latent, threshold=0.5):
    parent_on, with_child = _masks(features, parent_cosine)
    n_inst, d_sae, n_parents = parent_cosine.shape
    rates = torch.zeros(n_inst, n_parents, dtype=torch.float64)
    for inst in range(n_inst):
        for parent in range(n_parents):
            main = int(parent_latent[inst, parent])
            carriers = [s for s in range(d_sae) if s != main and parent_cosine[inst, s, parent] >= threshold]
            eligible = parent_on[:, inst, parent] & with_child[:, inst, parent]
            silent = acts[:, inst, main] <= 0
            carried = (acts[:, inst, carriers] > 0).any(dim=-1) if carriers else torch.zeros_like(silent)
            if eligible.any():
                rates[inst, parent] = (eligible & silent & carried).double().sum() / eligible.double().sum()
    return rates


def absorption_with_scatter_float64(acts, features, parent_cosine, parent_latent, threshold=0.5):
    acts, parent_cosine = acts.double(), parent_cosine.double()
    parent_on, with_child = _masks(features, parent_cosine)
    eligible = (parent_on & with_child).double()
    fires = (acts > 0).double()
    carriers = (parent_cosine >= threshold).double()
    carriers.scatter_(1, parent_latent[:, None, :], 0.0)  # in place on our own tensor: ℓ_p is not its own carrier
    carried = torch.einsum("bis,isp->bip", fires, carriers).clamp(max=1.0)
    silent = 1.0 - torch.take_along_dim(fires, parent_latent[None].expand(acts.shape[0], -1, -1), dim=-1)
    absorbed = (eligible * silent * carried).sum(dim=0)
    count = eligible.sum(dim=0)
    return torch.where(count > 0, absorbed / count.clamp_min(1), torch.zeros_like(count))


def make_absorption(
    *,
    counted_over="with child",
    divided_by="with child",
    parent_silent=True,
    carrier_fires=True,
    carriers=">=",
    threshold=None,
    count_carriers=False,
    fires=">",
    pooled=False,
    report="absorbed",
    division="clamped",
    output="rate",
    children="own",  # own, any family, child major, every child
    main_latent="own",  # own, first instance
):
    """An absorption_rate with one deliberate change (the defaults give the text's)."""

    def absorption_rate(acts, features, parent_cosine, parent_latent, threshold_argument=0.5):
        tau = threshold_argument if threshold is None else threshold
        parent_on, child_on = reference.family_presence(features, parent_cosine.shape[-1])
        with_child = {
            "own": lambda: child_on.any(dim=-1),
            "any family": lambda: child_on.flatten(-2).any(dim=-1, keepdim=True).expand_as(parent_on),
            "child major": lambda: child_on.flatten(-2).unflatten(-1, (-1, parent_on.shape[-1])).any(dim=-2),
            "every child": lambda: child_on.all(dim=-1),
        }[children]()
        firing = (acts >= 0) if fires == ">=" else (acts > 0)
        if main_latent == "first instance":
            parent_fires = acts[:, :, parent_latent[0]] > 0  # [batch, inst, parents], instance 0's ℓ_p everywhere
            parent_latent = parent_latent[:1].expand_as(parent_latent)
        else:
            parent_fires = firing.gather(-1, parent_latent.expand(acts.shape[0], -1, -1))
        sets = {
            "with child": parent_on & with_child,
            "parent": parent_on,
            "all": torch.ones_like(parent_on),
            "silent": parent_on & with_child & ~parent_fires,
        }
        allowed = {
            ">=": parent_cosine >= tau,
            ">": parent_cosine > tau,
            "abs": parent_cosine.abs() >= tau,
            "all": torch.ones_like(parent_cosine, dtype=torch.bool),
        }[carriers]
        allowed = allowed & (torch.arange(acts.shape[-1])[None, :, None] != parent_latent[:, None, :])
        carrier_count = einsum(firing.float(), allowed.float(), "b i s, i s p -> b i p")
        absorbed = sets[counted_over]
        if report == "parent fires":
            absorbed = absorbed & parent_fires
        else:
            if parent_silent:
                absorbed = absorbed & ~parent_fires
            if carrier_fires:
                absorbed = absorbed & (carrier_count > 0)
        numerator = (absorbed.float() * (carrier_count if count_carriers else 1.0)).sum(dim=0)
        denominator = sets[divided_by].sum(dim=0)
        if pooled:
            numerator, denominator = numerator.sum(0).expand_as(numerator), denominator.sum(0).expand_as(denominator)
        if output == "counts":
            return absorbed.sum(dim=0)
        return numerator / (denominator if division == "plain" else denominator.clamp_min(1))

    return absorption_rate


def absorption_mean_of_children(acts, features, parent_cosine, parent_latent, threshold=0.5):
    n_parents = parent_cosine.shape[-1]
    n_children = features.shape[-1] // n_parents - 1
    rates = [
        reference.absorption_rate(
            acts, reference.only_child(features, n_parents, c), parent_cosine, parent_latent, threshold
        )
        for c in range(n_children)
    ]
    return torch.stack(rates).mean(dim=0)


def absorption_with_l_p_among_the_carriers(acts, features, parent_cosine, parent_latent, threshold=0.5):
    """ℓ_p left among the carriers: harmless, since an input counts only where ℓ_p is silent."""
    parent_on, with_child = _masks(features, parent_cosine)
    fires = acts > 0
    silent = ~torch.take_along_dim(fires, parent_latent[None].expand(acts.shape[0], -1, -1), dim=-1)
    carried = einsum(fires.float(), (parent_cosine >= threshold).float(), "b i s, i s p -> b i p") > 0
    eligible = parent_on & with_child
    return (eligible & silent & carried).float().sum(0) / eligible.float().sum(0).clamp_min(1)


def test_absorption_rate_accepts_the_reference_and_rewrites(checks):
    for function in (
        reference.absorption_rate,
        make_absorption(),
        absorption_in_loops,
        absorption_with_scatter_float64,
        absorption_with_l_p_among_the_carriers,
    ):
        checks.passes(part8.test_absorption_rate, function)


ABSORPTION_MISTAKES = [
    ({"divided_by": "parent"}, "counted over inputs where no child is active too"),
    ({"divided_by": "parent", "counted_over": "parent"}, "counted over inputs where no child is active too"),
    ({"counted_over": "parent"}, "counted over inputs where no child is active too"),
    ({"divided_by": "all"}, "fraction of all inputs"),
    ({"parent_silent": False}, "Inputs on which ℓ_p fires are counted as absorbed"),
    ({"carrier_fires": False}, "missing parent, not absorption"),
    ({"carriers": "all"}, "Any other latent firing counts as a carrier"),
    ({"carriers": ">"}, "Carriers are compared strictly"),
    ({"carriers": "abs"}, r"\|cosine\| ≥ threshold"),
    ({"threshold": 0.5}, "τ = 0.5 whatever `threshold` is passed"),
    ({"count_carriers": True}, "counts carrier latents, not inputs"),
    ({"fires": ">="}, r"acts >= 0"),
    ({"pooled": True}, "pooled over instances"),
    ({"report": "parent fires"}, "how often ℓ_p fires on the eligible inputs"),
    ({"division": "plain"}, "NaN or inf for a parent with no eligible input"),
    ({"output": "counts"}, "integer counts"),
    ({"divided_by": "silent"}, "divided by the eligible inputs on which ℓ_p is silent"),
    ({"children": "any family"}, "eligible when a child of any family is active"),
    ({"children": "child major"}, r"children are read in the wrong layout \(\[children, parents\]\)"),
    ({"children": "every child"}, r"No input is eligible.*not all of them \(`\.all`\)"),
    ({"main_latent": "first instance"}, "ℓ_p of the first instance is used for every instance"),
]

ABSORPTION_WITH_NOTEBOOK_SIZES = """
def absorption_rate(acts, features, parent_cosine, parent_latent, threshold=0.5):
    parent_on, child_on = reference.family_presence(features, n_parents)
    eligible = parent_on & child_on.any(dim=-1)
    parent_fires = (acts > 0).gather(-1, parent_latent.expand(acts.shape[0], -1, -1))
    carriers = reference.carrier_fires(acts, parent_cosine, parent_latent, threshold)
    return (eligible & ~parent_fires & carriers).sum(0) / eligible.sum(0).clamp_min(1)
"""


@pytest.mark.parametrize(("options", "message"), ABSORPTION_MISTAKES)
def test_absorption_rate_names_each_mistake(checks, options, message):
    checks.fails(part8.test_absorption_rate, make_absorption(**options), message)


def absorption_flattening_acts_in_place(acts, features, parent_cosine, parent_latent, threshold=0.5):
    acts.clamp_(max=1.0)
    return reference.absorption_rate(acts, features, parent_cosine, parent_latent, threshold)


@pytest.mark.parametrize(
    ("mutant", "message"),
    [
        (absorption_mean_of_children, "mean of the children's rates"),
        (absorption_flattening_acts_in_place, r"changed `acts` in place"),
        (
            notebook_function(ABSORPTION_WITH_NOTEBOOK_SIZES, "absorption_rate", n_parents=5, reference=reference),
            r"raised RuntimeError.*reads the notebook's `n_parents`",
        ),
    ],
)
def test_absorption_rate_names_other_mistakes(checks, mutant, message):
    checks.fails(part8.test_absorption_rate, mutant, message)


# MatryoshkaToySAE.forward ----------------------------------------------------------------------


def make_forward(
    *,
    prefixes="nested",  # nested, groups, all latents, group sizes
    bias="every",  # every, last, none
    reduce="sum",
    topk="once",  # once, per prefix, per group, none, per input
    empty_prefix=False,
    squared="mean",
    decoder="normalised",
    aux_from="full",
    dead_after_counting=False,
    with_aux=True,
    aux_coefficient=True,
    loss_terms="matryoshka",
    batch="mean",
    instances="sum",
    returned="full",
    cut=None,  # acts, decoder, b_dec, prefixes
    record=True,
    own_counter=False,  # counts firing itself, in evaluation too
    activation_calls=1,
    reconstruction_key="full",  # full, sum
    in_place="none",  # none, h
    start="expand",  # expand, in place, aliased
    dead_compare=">=",
    aux_input="pre_acts",
    aux_in_dict=False,
    coefficient_on="aux",
    dict_matryoshka="every prefix",
):
    """A Matryoshka forward with one deliberate change (the defaults give the text's)."""

    def forward(self, h):
        if in_place == "h":
            h -= self.b_dec  # centres the caller's batch
            x = h
        else:
            x = h - self.b_dec
        W_enc, b_enc, b_dec, W_dec = (
            self.W_enc,
            self.b_enc,
            self.b_dec,
            self.W_dec_normalized if decoder == "normalised" else self.W_dec,
        )
        target = h if in_place != "h" else h + self.b_dec
        pre_acts = einsum(x, W_enc, "b i d, i d s -> b i s") + b_enc
        sizes = list(self.cfg.prefix_sizes)
        if topk == "none":
            acts = F.relu(pre_acts)
        elif topk == "per input":
            acts = self._per_k(pre_acts, lambda group, k: topk_activation(group, int(k)))
        elif topk == "by hand":  # right values, but the inference threshold never moves
            acts = (
                self._per_k(pre_acts, batch_topk_activation)
                if self.training
                else pre_acts * (pre_acts > self.threshold[:, None])
            )
        elif topk == "per group":
            acts = torch.cat([self.activation(pre_acts[..., a:b]) for a, b in zip([0, *sizes[:-1]], sizes)], dim=-1)
        else:
            acts = self.activation(pre_acts)
            for _ in range(activation_calls - 1):
                acts = self.activation(pre_acts)
        if prefixes == "group sizes":
            ends = [min(e, sizes[-1]) for e in torch.tensor(sizes).cumsum(0).tolist()]
        elif prefixes == "one short":
            ends = [e - 1 for e in sizes]
        else:
            ends = sizes
        starts = [0, *ends[:-1]]
        reconstructions = []
        for index, (a, b) in enumerate(zip(starts, ends)):
            last = index == len(ends) - 1
            keep = lambda t, place, last=last: t.detach() if cut == place and not last else t  # noqa: E731
            lo = a if prefixes == "groups" else 0
            hi = sizes[-1] if prefixes == "all latents" else b
            latents = acts[..., lo:hi]
            if topk == "per prefix" and not last and self.training:
                latents = self.activation(pre_acts[..., lo:hi])
            with_bias = bias == "every" or (bias == "last" and last)
            decoded = einsum(keep(latents, "acts"), keep(W_dec[:, lo:hi], "decoder"), "b i s, i s d -> b i d")
            if bias == "per group":  # b_dec added again with every group: prefix m holds it m times
                with_bias, decoded = False, decoded + (index + 1) * b_dec
            reconstructions.append(decoded + (keep(b_dec, "b_dec") if with_bias else 0.0))
        if start == "in place":  # the same reconstructions, accumulated in place on a temporary of our own
            running = torch.zeros_like(target) + b_dec
            rebuilt = []
            for a, b in zip(starts, ends):
                running += einsum(acts[..., a:b], W_dec[:, a:b], "b i s, i s d -> b i d")
                rebuilt.append(running.clone())
            reconstructions = rebuilt
        if start == "aliased":  # accumulated in place and kept without a copy: every entry is the last one
            running = torch.zeros_like(target) + b_dec
            rebuilt = []
            for a, b in zip(starts, ends):
                running += einsum(acts[..., a:b], W_dec[:, a:b], "b i s, i s d -> b i d")
                rebuilt.append(running)
            reconstructions = rebuilt
        error = (
            (lambda r: (r - target).pow(2).mean(-1)) if squared == "mean" else (lambda r: (r - target).pow(2).sum(-1))
        )
        losses = [error(r) for r in reconstructions]
        if cut == "prefixes":
            losses = [loss.detach() for loss in losses[:-1]] + losses[-1:]
        if empty_prefix:
            losses.insert(0, error(b_dec.expand_as(target)))
        stacked = torch.stack(losses)
        L_matryoshka = stacked.sum(0) if reduce == "sum" else stacked.mean(0)
        full = reconstructions[-1]
        if dead_after_counting and record:
            self.record_firing(acts)
        if dead_compare == ">":
            dead = self.steps_since_fired > self.cfg.dead_after_steps
        else:
            dead = self.steps_since_fired >= self.cfg.dead_after_steps
        aux_target = reconstructions[0] if aux_from == "first" else full
        L_aux = self.auxk_loss(acts if aux_input == "acts" else pre_acts, target, aux_target, dead)
        if record and not dead_after_counting:
            if own_counter:
                self.steps_since_fired.add_(1).masked_fill_((acts > 0).any(dim=0), 0)
            else:
                self.record_firing(acts)
        L_full = error(full)
        main = {"matryoshka": L_matryoshka, "full only": L_full, "both": L_matryoshka + L_full}[loss_terms]
        coefficient = self.cfg.aux_coeff if aux_coefficient else 1.0
        if coefficient_on == "matryoshka":
            main, coefficient = self.cfg.aux_coeff * main, 1.0
        per_input = main + coefficient * L_aux * float(with_aux)
        per_instance = per_input.mean(0) if batch == "mean" else per_input.sum(0)
        loss = per_instance.sum() if instances == "sum" else per_instance.mean()
        loss_dict = {
            "L_reconstruction": L_full if reconstruction_key == "full" else L_matryoshka,
            "L_matryoshka": stacked[:-1].sum(0) if dict_matryoshka == "before last" else L_matryoshka,
            "L_aux": self.cfg.aux_coeff * L_aux if aux_in_dict else L_aux,
        }
        return SAEOutput(loss_dict, loss, acts, reconstructions[0] if returned == "first" else full)

    return forward


def matryoshka(forward: Any) -> type:
    return type("LearnerMatryoshka", (reference.MatryoshkaToySAE,), {"forward": forward})


def forward_recomputing_each_prefix(self, h):
    pre_acts = (h - self.b_dec).transpose(0, 1) @ self.W_enc + self.b_enc[:, None, :]  # [inst, batch, d_sae]
    acts = self.activation(pre_acts.transpose(0, 1))
    W = self.W_dec_normalized
    losses = []
    for end in self.cfg.prefix_sizes:  # each prefix from scratch: the first `end` latents and b_dec
        reconstruction = torch.bmm(acts[..., :end].transpose(0, 1), W[:, :end]).transpose(0, 1) + self.b_dec
        losses.append(((reconstruction - h) ** 2).mean(dim=-1))
    dead = self.steps_since_fired >= self.cfg.dead_after_steps
    L_aux = self.auxk_loss(pre_acts.transpose(0, 1), h, reconstruction, dead)
    self.record_firing(acts)
    L_matryoshka = sum(losses)
    loss = (L_matryoshka + self.cfg.aux_coeff * L_aux).mean(dim=0).sum()
    return SAEOutput(
        {"L_reconstruction": losses[-1], "L_matryoshka": L_matryoshka, "L_aux": L_aux}, loss, acts, reconstruction
    )


def forward_with_cumulative_sums(self, h):
    """Correct: every group decoded at once, the nested prefixes as a cumulative sum over groups."""
    pre_acts = self.pre_activations(h)
    acts = self.activation(pre_acts)
    W_dec = self.W_dec_normalized
    ends = self.cfg.prefix_sizes
    groups = [einsum(acts[..., a:b], W_dec[:, a:b], "b i g, i g d -> b i d") for a, b in zip([0, *ends[:-1]], ends)]
    prefixes = torch.stack(groups).cumsum(dim=0) + self.b_dec  # [prefix, batch, inst, d_in]
    losses = (prefixes - h).pow(2).mean(dim=-1)
    dead = self.steps_since_fired >= self.cfg.dead_after_steps
    loss_dict = {
        "L_reconstruction": losses[-1],
        "L_matryoshka": losses.sum(dim=0),
        "L_aux": self.auxk_loss(pre_acts, h, prefixes[-1], dead),
    }
    self.record_firing(acts)
    loss = (loss_dict["L_matryoshka"] + self.cfg.aux_coeff * loss_dict["L_aux"]).mean(dim=0).sum()
    return SAEOutput(loss_dict, loss, acts, prefixes[-1])


MATRYOSHKA_REWRITES = [
    make_forward(),
    make_forward(start="in place"),
    forward_recomputing_each_prefix,
    forward_with_cumulative_sums,
]


@pytest.mark.parametrize("forward", MATRYOSHKA_REWRITES)
def test_matryoshka_accepts_rewrites(checks, forward):
    checks.passes(part8.test_matryoshka_forward, matryoshka(forward))


def test_matryoshka_accepts_the_reference(checks):
    checks.passes(part8.test_matryoshka_forward, reference.MatryoshkaToySAE)


MATRYOSHKA_MISTAKES = [
    ({"prefixes": "all latents"}, "Each prefix reconstructs from every latent"),
    ({"prefixes": "groups"}, "Each group of latents reconstructs alone"),
    ({"prefixes": "group sizes"}, "read as the sizes of successive groups"),
    ({"bias": "last"}, "b_dec is added only to the full reconstruction"),
    ({"bias": "none"}, "b_dec is left out of the reconstructions"),
    ({"reduce": "mean"}, "prefix losses are averaged"),
    ({"empty_prefix": True}, "empty prefix"),
    ({"topk": "per prefix"}, "Each prefix picks its own top-k"),
    ({"topk": "per group"}, "top-k is taken within each group"),
    ({"topk": "none"}, "plain ReLU"),
    ({"topk": "per input"}, "top k of each input"),
    ({"squared": "sum"}, "summed over d_in"),
    ({"decoder": "raw"}, "unnormalised"),
    ({"aux_from": "first"}, "AuxK reconstructs the residual of the first prefix"),
    ({"dead_after_counting": True}, "dead mask is read after self.record_firing"),
    ({"with_aux": False}, "no AuxK term"),
    ({"aux_coefficient": False}, "without its coefficient"),
    ({"loss_terms": "full only"}, "trains only the full reconstruction"),
    ({"loss_terms": "both"}, "counting the full dictionary twice"),
    ({"batch": "sum"}, "summed over the batch"),
    ({"instances": "mean"}, "averaged over instances"),
    ({"returned": "first"}, "first prefix's reconstruction"),
    ({"reconstruction_key": "sum"}, "holds the sum of the prefix losses"),
    ({"cut": "acts"}, "`acts` is detached in the smaller prefixes"),
    ({"cut": "decoder"}, "decoder is detached in the smaller prefixes"),
    ({"cut": "b_dec"}, "b_dec is detached in the smaller prefixes"),
    ({"cut": "prefixes"}, "smaller prefixes' losses carry no gradient"),
    ({"record": False}, "steps_since_fired did not change"),
    ({"own_counter": True}, "steps_since_fired changed although the SAE is evaluating"),
    ({"activation_calls": 2}, "threshold moved more than once"),
    ({"in_place": "h"}, r"changed `h` in place"),
    ({"start": "aliased"}, r"Each prefix reconstructs from every latent.*or else.*one tensor in place \(`\+=`\)"),
    ({"prefixes": "one short"}, "Each prefix leaves out its last latent"),
    ({"bias": "per group"}, "b_dec is added with every group"),
    ({"empty_prefix": True, "reduce": "mean"}, "Bussmann et al.'s loss"),
    ({"dead_compare": ">"}, r"dead mask compares strictly \(steps_since_fired > dead_after_steps\)"),
    ({"aux_input": "acts"}, "AuxK is given the activations"),
    ({"aux_in_dict": True}, r'loss_dict\["L_aux"\] is already multiplied by aux_coeff'),
    ({"coefficient_on": "matryoshka"}, "aux_coeff multiplies L_matryoshka"),
    ({"dict_matryoshka": "before last"}, r'loss_dict\["L_matryoshka"\] leaves out the full dictionary'),
]


@pytest.mark.parametrize(("options", "message"), MATRYOSHKA_MISTAKES)
def test_matryoshka_names_each_mistake(checks, options, message):
    checks.fails(part8.test_matryoshka_forward, matryoshka(make_forward(**options)), message)


def forward_without_loss_dict_key(self, h):
    loss_dict, loss, acts, reconstruction = reference.MatryoshkaToySAE.forward(self, h)
    del loss_dict["L_matryoshka"]
    return SAEOutput(loss_dict, loss, acts, reconstruction)


def forward_with_item_loss(self, h):
    loss_dict, loss, acts, reconstruction = reference.MatryoshkaToySAE.forward(self, h)
    return SAEOutput(loss_dict, loss.detach(), acts, reconstruction)


@pytest.mark.parametrize(
    ("mutant", "message"),
    [
        (forward_without_loss_dict_key, "has no 'L_matryoshka'"),
        (forward_with_item_loss, "carries no gradient"),
        (make_forward(topk="by hand"), "threshold did not move"),
    ],
)
def test_matryoshka_names_structure_and_state_mistakes(checks, mutant, message):
    checks.fails(part8.test_matryoshka_forward, matryoshka(mutant), message)


def test_matryoshka_says_when_forward_was_never_attached(checks):
    checks.fails(
        part8.test_matryoshka_forward, type("MatryoshkaToySAE", (reference.BatchTopKToySAE,), {}), "never attached"
    )


def test_matryoshka_inputs_keep_clear_of_top_k_ties():
    for case in part8._matryoshka_cases():
        distances = part8._kink_distances(case.sae, case.h.cpu(), case.training)
        assert all(bool((distance.abs() > part8.KINK_MARGIN).all()) for distance in distances)


# behaviour every check shares ----------------------------------------------------------------

CHECKS = [
    (part8.test_generate_hierarchical_batch, lambda f: sampler(f), Data, "generate_hierarchical_batch"),
    (part8.test_parent_latents, lambda f: f, reference.parent_latents, "parent_latents"),
    (part8.test_absorption_rate, lambda f: f, reference.absorption_rate, "absorption_rate"),
    (part8.test_matryoshka_forward, lambda f: matryoshka(f), reference.MatryoshkaToySAE, "MatryoshkaToySAE.forward"),
]


@pytest.mark.parametrize(("check", "wrap", "learner", "name"), CHECKS)
def test_a_stub_reports_not_implemented(checks, check, wrap, learner, name):
    checks.fails(check, wrap(stub), rf"`{re.escape(name)}` is not implemented yet")


@pytest.mark.parametrize(("check", "wrap", "learner", "name"), CHECKS)
@pytest.mark.parametrize("wrong_thing", [42, "parent_latents", None])
def test_wrong_kind_of_object_is_named(checks, check, wrap, learner, name, wrong_thing):
    checks.fails(check, wrong_thing, r"Pass (the class that has )?your `")


@pytest.mark.parametrize("check", [part8.test_parent_latents, part8.test_absorption_rate])
def test_a_class_instead_of_a_free_function_is_named(checks, check):
    checks.fails(check, Data, "is a function of its own, not a method")


@pytest.mark.parametrize(("check", "owner"), [(part8.test_generate_hierarchical_batch, "HierarchicalToyData")])
def test_a_class_without_the_method_is_told_it_was_never_attached(checks, check, owner):
    checks.fails(check, type(owner, (nn.Module,), {}), "never attached")


def test_a_crash_is_reported_with_the_learners_line(checks):
    def absorption_with_typo(acts, features, parent_cosine, parent_latent, threshold=0.5):
        return acts.eligible  # no such attribute

    message = checks.fails(part8.test_absorption_rate, absorption_with_typo, "raised AttributeError")
    assert "absorption_with_typo" in message


@pytest.mark.parametrize(
    ("check", "learner", "wrap"),
    [
        (part8.test_parent_latents, reference.parent_latents, lambda f: f),
        (part8.test_absorption_rate, reference.absorption_rate, lambda f: f),
        (part8.test_matryoshka_forward, reference.MatryoshkaToySAE.forward, matryoshka),
    ],
)
@pytest.mark.parametrize("draws", [1, 17])
def test_checks_pass_code_that_draws_random_numbers(checks, check, learner, wrap, draws):
    checks.passes(check, wrap(with_extra_draws(learner, draws)))


@pytest.mark.parametrize(("check", "wrap", "learner", "name"), CHECKS)
def test_checks_leave_every_random_state_and_the_thread_count_as_they_were(checks, check, wrap, learner, name):
    threads = torch.get_num_threads()
    random.seed(123), np.random.seed(123), torch.manual_seed(123)
    expected = (random.random(), np.random.rand(), torch.rand(3))
    random.seed(123), np.random.seed(123), torch.manual_seed(123)
    checks.passes(check, learner)
    assert (random.random(), np.random.rand()) == expected[:2]
    assert torch.equal(torch.rand(3), expected[2])
    assert torch.get_num_threads() == threads


@pytest.mark.parametrize(
    ("check", "learner"),
    [
        (part8.test_absorption_rate, make_absorption(divided_by="parent")),
        (part8.test_matryoshka_forward, matryoshka(make_forward(bias="last"))),
        (part8.test_generate_hierarchical_batch, sampler(make_sampler(has_child_probability="pq"))),
    ],
)
def test_failure_messages_do_not_reveal_reference_values(checks, check, learner):
    text = checks.fails(check, learner, ".")
    assert not re.search(r"\d\.\d{3}", text), text


def test_matryoshka_forward_asks_for_named_fields(checks):
    plain = lambda self, h: tuple(reference.MatryoshkaToySAE.forward(self, h))  # noqa: E731
    checks.fails(
        part8.test_matryoshka_forward, type("M", (reference.MatryoshkaToySAE,), {"forward": plain}), "plain tuple"
    )
