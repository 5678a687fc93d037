"""The feature tree of Part 8's hierarchical toy data: layout, labels, tree order, and a census
of which latents belong to which parent.

Features are laid out parents first, then children grouped by parent: with P parents of C
children each, feature p < P is parent p, and feature P + p·C + c is child c of parent p.
The tree order lists each parent followed by its own children, as a reader draws the tree.
"""

from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor


def child_index(parent: int, child: int, n_parents: int, n_children: int) -> int:
    """Where child `child` of parent `parent` sits among the features."""
    return n_parents + parent * n_children + child


def parent_of_feature(n_parents: int, n_children: int) -> Int[Tensor, " feats"]:
    """For every feature, the parent of its family (a parent is its own)."""
    return torch.cat([torch.arange(n_parents), torch.arange(n_parents).repeat_interleave(n_children)])


def tree_order(n_parents: int, n_children: int) -> list[int]:
    """Feature indices with each parent followed by its children."""
    return [
        feature
        for parent in range(n_parents)
        for feature in (parent, *(child_index(parent, child, n_parents, n_children) for child in range(n_children)))
    ]


def feature_labels(n_parents: int, n_children: int) -> list[str]:
    """A name for every feature, in the features' own order: "P2" is parent 2, "P2.c1" its child 1."""
    return [f"P{p}" for p in range(n_parents)] + [f"P{p}.c{c}" for p in range(n_parents) for c in range(n_children)]


def latent_order(cosine: Float[Tensor, "d_sae feats"], n_parents: int, n_children: int) -> list[int]:
    """Latents sorted by the tree position of the feature their decoder matches best, best matches first."""
    position = torch.empty(cosine.shape[1], dtype=torch.long)
    position[tree_order(n_parents, n_children)] = torch.arange(cosine.shape[1])
    best_cosine, best_feature = cosine.max(dim=1)
    return sorted(
        range(cosine.shape[0]), key=lambda latent: (int(position[best_feature[latent]]), -float(best_cosine[latent]))
    )


def decompose_latents(
    cosine: Float[Tensor, "d_sae feats"], live: Bool[Tensor, " d_sae"], n_parents: int, n_children: int
) -> dict[str, list[Any]]:
    """Every live latent placed in its family (that of the feature its decoder matches best): its largest
    cosine with the family's children (x), its cosine with the family's parent (y), and whether its best
    match is the parent itself."""
    cosine = cosine.detach().double().cpu()
    best = cosine.argmax(dim=1)
    labels = feature_labels(n_parents, n_children)
    points: dict[str, list[Any]] = {"latent": [], "family": [], "x": [], "y": [], "parent_best": [], "label": []}
    for latent in live.cpu().nonzero().flatten().tolist():
        feature = int(best[latent])
        family = feature if feature < n_parents else (feature - n_parents) // n_children
        children = [child_index(family, child, n_parents, n_children) for child in range(n_children)]
        points["latent"].append(latent)
        points["family"].append(family)
        points["x"].append(round(float(cosine[latent, children].max()), 4))
        points["y"].append(round(float(cosine[latent, family]), 4))
        points["parent_best"].append(feature < n_parents)
        points["label"].append(labels[feature])
    return points


def count_child_latents(
    points: dict[str, list[Any]], *, carries_at: float = 0.3, clean_at: float = 0.8
) -> tuple[int, int]:
    """Of the latents whose best match is a child: how many carry the child's parent (cosine ≥ `carries_at`
    with it), and how many are clean (cosine ≥ `clean_at` with the child, below `carries_at` with the parent)."""
    children = [(x, y) for x, y, parent in zip(points["x"], points["y"], points["parent_best"]) if not parent]
    return sum(y >= carries_at for _, y in children), sum(x >= clean_at and y < carries_at for x, y in children)


def splitting_census(
    cosine: Float[Tensor, "inst d_sae feats"],
    live: Bool[Tensor, "inst d_sae"],
    n_parents: int,
    *,
    belongs_at: float = 0.5,
    foreign_below: float = 0.3,
) -> dict[str, Float[Tensor, " inst"]]:
    """How many live latents each parent has, per instance (averaged over parents).

    A latent belongs to parent p when its decoder has cosine ≥ `belongs_at` with p and below
    `foreign_below` with every other parent; a live latent with cosine ≥ `belongs_at` with one
    parent and ≥ `foreign_below` with another mixes families.
    """
    with_parents = cosine[..., :n_parents]  # [inst, d_sae, parents]
    strong = with_parents >= belongs_at
    # For each parent, the decoder's largest cosine with any *other* parent (-inf with one parent only).
    itself = torch.eye(n_parents, dtype=torch.bool, device=cosine.device)
    others = (
        with_parents[..., None, :].expand(*with_parents.shape, n_parents).masked_fill(itself, -torch.inf).amax(dim=-1)
    )
    belongs = strong & (others < foreign_below) & live[..., None]
    mixes = (strong & (others >= foreign_below) & live[..., None]).any(dim=-1)
    return {
        "latents_per_parent": belongs.sum(dim=1).float().mean(dim=-1),
        "mixed_latents": mixes.sum(dim=-1).float(),
    }
