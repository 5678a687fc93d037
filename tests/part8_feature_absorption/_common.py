"""What the checks of `parent_latents` and `absorption_rate` share: designed latents and features
where every plausible misreading of the definitions gives another answer, and the text's choice
of each parent's latent (which the absorption cases take as their ℓ_p)."""

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from part_utils.reference import part8_feature_absorption as reference


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
    cfg = reference.HierarchyConfig(
        n_inst=n_inst,
        n_parents=n_parents,
        n_children=n_children,
        parent_probability=0.6,
        child_probability=0.6,
        min_magnitude=0.5,
        max_magnitude=1.5,
    )
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
            # The third carries minus the parent.
            cosine[inst, picked[2], parent] = -(threshold + 0.1 + 0.5 * torch.rand(()).item())
    # Keep clear of the threshold, except where a case puts a cosine on it.
    near = (cosine.abs() - threshold).abs() < 1e-3
    return torch.where(near, cosine + 0.01, cosine).clamp(-1, 1)


def _favour(case: AbsorptionCase, inst: int, parent: int, latent: int) -> None:
    """Make `latent` fire on every parent-alone input of (inst, parent)."""
    parent_on, child_on = reference.family_presence(case.features, case.n_parents)
    alone = parent_on[:, inst, parent] & ~child_on[:, inst, parent].any(dim=-1)
    firing = torch.tensor(0.7, dtype=torch.float64)
    case.acts[alone, inst, latent] = torch.maximum(case.acts[alone, inst, latent], firing)


def _main_case(
    batch: int = 61, n_inst: int = 3, d_sae: int = 8, n_parents: int = 4, n_children: int = 2
) -> AbsorptionCase:
    features = _design_features(batch, n_inst, n_parents, n_children)
    acts = _design_acts(batch, n_inst, d_sae)  # drawn before the cosines
    cosine = _design_cosine(n_inst, d_sae, n_parents, DESIGN_THRESHOLD)
    case = AbsorptionCase(None, acts, features, cosine, DESIGN_THRESHOLD)
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


def _edge_case() -> AbsorptionCase:
    """One instance; a parent never alone (every candidate ties at 0), a parent with no eligible input and one
    candidate."""
    features = torch.zeros(6, 1, 3 * 3, dtype=torch.float64)  # 3 parents of 2 children: children of parent p at 3 + 2p
    features[:, 0, 0] = 1.0  # parent 0 in every example, with child 0 in half of them
    features[[0, 2, 4], 0, 3] = 0.9
    features[:, 0, 1] = 1.2  # parent 1 in every example, always with a child
    features[[0, 1, 2], 0, 5] = 0.8
    features[[3, 4, 5], 0, 6] = 1.1
    features[[1, 3], 0, 2] = 0.7  # parent 2 twice, alone
    acts = _design_acts(6, 1, 5, firing=0.6)
    acts[[1, 3, 5], 0, 2] = 1.0  # latent 2 fires whenever parent 0 is alone
    acts[:, 0, 4] = 0.6  # and latent 4, no candidate of parent 1, always: it wins there if non-candidates score 0
    cosine = torch.full((1, 5, 3), -0.3, dtype=torch.float64)
    cosine[0, [1, 2, 3], 0] = torch.tensor([0.5, 0.8, 0.4], dtype=torch.float64)
    cosine[0, [0, 3], 1] = torch.tensor([0.6, 0.9], dtype=torch.float64)
    cosine[0, 4, 2] = 0.95
    description = "With one instance, a parent always with a child and one never with a child"
    return AbsorptionCase(description, acts, features, cosine, DESIGN_THRESHOLD)


def _single_family_case() -> AbsorptionCase:
    """One instance and one parent (length-1 axes, as in the notebook's own data)."""
    features = _design_features(24, 1, 1, 2)
    acts = _design_acts(24, 1, 4)
    cosine = _design_cosine(1, 4, 1, DESIGN_THRESHOLD)
    case = AbsorptionCase("With one instance and one parent", acts, features, cosine, DESIGN_THRESHOLD)
    _favour(case, 0, 0, int(cosine[0, :, 0].argmax()))
    return case


def _no_candidate_case() -> AbsorptionCase:
    case = _main_case(batch=33, n_inst=2, d_sae=5, n_parents=3, n_children=2)
    case.description = "With a parent that no latent carries"
    case.parent_cosine[1, :, 2] = case.parent_cosine[1, :, 2].clamp(max=DESIGN_THRESHOLD - 0.05)
    return case


class Described(Protocol):
    """A check's case, which may say what is special about it."""

    description: str | None


def _prefix(case: Described, message: str) -> str:
    """The message, after the case's description where it has one."""
    return message if case.description is None else f"{case.description}: {message[0].lower()}{message[1:]}"


@dataclass(frozen=True)
class ParentChoice:
    """One way of choosing the parent's latent: the text's (the defaults) or a misreading of it."""

    events: str = "alone"  # alone, parent, with child, all
    children: str = "own"  # own, any family, child major, every child: which children make a parent not alone
    score: str = "count"  # count, activation, precision, cosine
    candidates: str = ">="  # >=, >, abs, all, zero (non-candidates scored 0, not below every count)
    threshold: float | None = None  # None: the case's
    fires: str = ">"  # >, >=
    pooled: bool = False
    tie: str = "most active"  # most active (on every input with the parent), lowest, highest, highest cosine


def _events(case: AbsorptionCase, which: str, children: str = "own") -> Tensor:
    """A [batch, inst, parents] mask of inputs; `children` says which children count as the parent's: its own,
    those of every family (`.any` over all children), or its own read in the child-major layout."""
    parent_on, child_on = reference.family_presence(case.features, case.n_parents)
    if children == "any family":
        with_child = child_on.flatten(-2).any(dim=-1, keepdim=True).expand_as(parent_on)
    elif children == "child major":
        with_child = child_on.flatten(-2).unflatten(-1, (child_on.shape[-1], case.n_parents)).any(dim=-2)
    elif children == "every child":
        with_child = child_on.all(dim=-1)
    else:
        with_child = child_on.any(dim=-1)
    return {
        "alone": parent_on & ~with_child,
        "parent": parent_on,
        "with child": parent_on & with_child,
        "all": torch.ones_like(parent_on),
    }[which]


def _candidates(cosine: Tensor, threshold: float, how: str) -> Tensor:
    return {
        ">=": cosine >= threshold,
        ">": cosine > threshold,
        "abs": cosine.abs() >= threshold,
        "all": torch.ones_like(cosine, dtype=torch.bool),
    }[how]


def _choose_parent_latents(case: AbsorptionCase, choice: ParentChoice = ParentChoice()) -> Tensor:
    threshold = case.threshold if choice.threshold is None else choice.threshold
    fires = (case.acts >= 0) if choice.fires == ">=" else (case.acts > 0)
    events = _events(case, choice.events, choice.children).double()
    counts = torch.einsum("bip,bis->isp", events, fires.double())
    if choice.score == "activation":
        counts = torch.einsum("bip,bis->isp", events, case.acts)
    elif choice.score == "precision":
        counts = counts / fires.double().sum(dim=0)[..., None].clamp_min(1)
    elif choice.score == "cosine":
        counts = case.parent_cosine.clone()
    if choice.pooled:
        counts = counts.sum(dim=0, keepdim=True).expand_as(counts)
    if choice.candidates == "zero":
        score = torch.where(_candidates(case.parent_cosine, threshold, ">="), counts, 0.0)
    else:
        score = torch.where(_candidates(case.parent_cosine, threshold, choice.candidates), counts, -torch.inf)
    tied_best = score == score.amax(dim=1, keepdim=True)
    if choice.tie == "lowest":
        return tied_best.double().argmax(dim=1)
    if choice.tie == "highest":
        return tied_best.shape[1] - 1 - tied_best.flip(1).double().argmax(dim=1)
    if choice.tie == "highest cosine":
        second = case.parent_cosine
    else:
        second = torch.einsum("bip,bis->isp", _events(case, "parent").double(), fires.double())
    return torch.where(tied_best, second, -torch.inf).argmax(dim=1)
