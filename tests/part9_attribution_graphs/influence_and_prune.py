"""Checks of Exercise 5.1, `influence` and `prune`, on random graphs whose edges all point forward.

The graphs are signed, have input nodes (rows with no incoming edges) first and one more such row later,
so that a division by a zero row sum shows. `prune` gets the influence of such a graph and two or three
logit rows, and every misreading of "keep the fewest nodes that carry the share" gives another mask on
these graphs (the mutation suite holds them to that).
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from tests.checking import CheckFailure, call_learner, check, diagnose_among, expect_tensor, learner_function


def random_graph(n: int, n_inputs: int, empty_row: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """adjacency[t, s]: signed edges from earlier to later nodes, some missing; inputs and `empty_row` get none."""
    weights = torch.randn(n, n) * (torch.rand(n, n) < 0.6) * torch.rand(n, 1).add(0.2)
    adjacency = weights.tril(diagonal=-1)
    adjacency[:n_inputs] = 0.0
    adjacency[empty_row] = 0.0
    return adjacency.to(dtype)


def row_normalised(adjacency: Tensor) -> Tensor:
    magnitude = adjacency.abs()
    return magnitude / magnitude.sum(dim=1, keepdim=True).clamp_min(1e-300)


def series(normalised: Tensor, with_identity: bool = False) -> Tensor:
    eye = torch.eye(len(normalised), dtype=normalised.dtype)
    return torch.linalg.solve(eye - normalised, eye) - (0 if with_identity else eye)


def influence_mistakes(adjacency: Tensor) -> dict[str, list[Tensor]]:
    a = adjacency.double()
    normalised = row_normalised(a)
    column = a.abs() / a.abs().sum(dim=0, keepdim=True).clamp_min(1e-300)
    signed = a / a.abs().sum(dim=1, keepdim=True).clamp_min(1e-300)
    signed_sum = a / a.sum(dim=1, keepdim=True).where(a.sum(dim=1, keepdim=True) != 0, torch.ones(1, dtype=a.dtype))
    return {
        "This is Â itself, the direct edges: influence adds every longer path, Â + Â² + Â³ + ... = (I - Â)⁻¹ - I.": [
            normalised
        ],
        "The edges are not normalised: take absolute values and divide each row by its sum before the series.": [
            series(a.abs())
        ],
        "The edges keep their signs: normalise their absolute values, |A| divided by each row's sum of |A|.": [
            series(signed),
            series(signed_sum),
        ],
        "Each column is divided by its sum; Â[t, s] is the share of t's attribution from s: divide each row by its "
        "sum.": [series(column)],
        "The result includes the identity (paths of length 0): subtract I, (I - Â)⁻¹ - I.": [
            series(normalised, with_identity=True)
        ],
        "The result is transposed: B[t, s] is the influence of source s on target t, like adjacency[t, s].": [
            series(normalised).T
        ],
    }


def _check_influence_case(function: Callable[..., object], adjacency: Tensor) -> None:
    result = call_learner(function, adjacency.clone(), what="influence")
    n = len(adjacency)
    if isinstance(result, Tensor) and result.shape == (n, n) and torch.isnan(result).any():
        raise CheckFailure(
            "`influence` returned NaN: a row with no incoming edges (an embedding, say) has sum 0, and dividing by "
            "it gives NaN; leave such rows at 0 (divide by the sum clamped away from 0)."
        )
    actual = expect_tensor(result, (n, n), what="influence", axes="target, source")
    diagnose_among(
        actual,
        series(row_normalised(adjacency.double())),
        influence_mistakes(adjacency),
        otherwise="`influence` does not match (I - Â)⁻¹ - I with Â = |adjacency|, each row divided by its sum.",
    )


@check("influence")
def test_influence(learner: object) -> str:
    function = learner_function(learner, "influence")
    graphs = [random_graph(12, 3, 7), random_graph(9, 2, 5, torch.float64), random_graph(1, 1, 0)]
    for adjacency in graphs:
        _check_influence_case(function, adjacency)
    return "normalised, every path length, rows without edges left at 0, float64"


@dataclass(frozen=True)
class PruneVariant:
    """The text's pruning (the defaults), or one misreading of it."""

    per_logit: bool = True  # else: one ranking of the logit rows' sum
    crossing: str = "kept"  # kept, dropped
    ranking: str = "cumulative"  # cumulative, raw (threshold on each node's own share)
    descending: bool = True
    keep_logits: bool = True
    union: bool = True  # else: only the last logit's nodes


def pruned(influence_matrix: Tensor, logit_nodes: Tensor, share: float, v: PruneVariant = PruneVariant()) -> Tensor:
    keep = torch.zeros(len(influence_matrix), dtype=torch.bool)
    rows = [influence_matrix[logit_nodes].sum(0)] if not v.per_logit else list(influence_matrix[logit_nodes])
    for row in rows:
        if not v.union:
            keep[:] = False
        if v.ranking == "raw":
            keep |= row >= share * row.sum()
            continue
        order = row.argsort(descending=v.descending)
        carried = row[order].cumsum(dim=0)
        needed = int((carried < share * row.sum()).sum()) + (1 if v.crossing == "kept" else 0)
        keep[order[:needed]] = True
    if v.keep_logits:
        keep[logit_nodes] = True
    return keep


PRUNE_MISTAKES = {
    "The logits' influence is pooled into one ranking: rank and cut each logit's row on its own, then keep the "
    "union.": PruneVariant(per_logit=False),
    "The node whose influence crosses the threshold is dropped: keep the fewest nodes that carry at least the share, "
    "the crossing one included (the count below the threshold, plus one).": PruneVariant(crossing="dropped"),
    "Nodes are kept by their own influence against the threshold; keep the highest-influence nodes until their "
    "cumulative influence reaches the share of the row's total.": PruneVariant(ranking="raw"),
    "The nodes are sorted by ascending influence: take the largest first (argsort(descending=True)).": PruneVariant(
        descending=False
    ),
    "The logits themselves are not kept: keep every logit node, whatever its influence (its own row has none on it).": (
        PruneVariant(keep_logits=False)
    ),
    "Only the last logit's nodes are kept: keep the union over the logits (start the mask once, before the loop).": (
        PruneVariant(union=False)
    ),
}


def prune_cases() -> list[tuple[Tensor, Tensor, float]]:
    first, second = random_graph(16, 4, 9).double(), random_graph(14, 3, 6).double()
    return [
        (series(row_normalised(first)).float(), torch.tensor([13, 14, 15]), 0.8),
        (series(row_normalised(second)).float(), torch.tensor([12, 13]), 0.5),
    ]


def _check_prune_case(function: Callable[..., object], influence_matrix: Tensor, logits: Tensor, share: float) -> None:
    result = call_learner(function, influence_matrix.clone(), logits.clone(), share, what="prune")
    n = len(influence_matrix)
    if not isinstance(result, Tensor) or result.dtype != torch.bool or result.shape != (n,):
        shape = tuple(result.shape) if isinstance(result, Tensor) else type(result).__name__
        raise CheckFailure(
            f"`prune` should return a boolean mask over the nodes, shape ({n},), True where a node is kept; it "
            f"returned {shape}{f' of {result.dtype}' if isinstance(result, Tensor) else ''}."
        )
    actual = result.cpu()
    expected = pruned(influence_matrix.double(), logits, share)
    if torch.equal(actual, expected):
        return
    fits = [
        m for m, v in PRUNE_MISTAKES.items() if torch.equal(actual, pruned(influence_matrix.double(), logits, share, v))
    ]
    if fits:
        message = fits[0] if len(fits) == 1 else f"{fits[0].rstrip('.')}; or else, as this mask fits both: {fits[1]}"
        raise CheckFailure(f"With share {share}: {message[0].lower()}{message[1:]}")
    raise CheckFailure(
        f"With share {share}, `prune` keeps other nodes: for each logit, sort its row of influence in descending "
        "order and keep nodes until their cumulative influence reaches share · the row's sum (the crossing one "
        "included); keep the union over logits, and the logits."
    )


@check("prune")
def test_prune(learner: object) -> str:
    function = learner_function(learner, "prune")
    for influence_matrix, logits, share in prune_cases():
        _check_prune_case(function, influence_matrix, logits, share)
    return "per-logit cumulative share, the crossing node kept, union over logits, logits kept"
