"""An attribution graph for one prompt: its nodes, its signed adjacency, and reading paths out of it.

Rows are targets, columns sources: `adjacency[t, s]` is the edge from node s into node t (source
activation times its direct linear effect on t, in the local replacement model). Token embeddings and
error nodes are inputs (no incoming edges); latents are both; logits only receive.
"""

from dataclasses import dataclass
from typing import Literal

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

NodeKind = Literal["embedding", "error", "latent", "logit"]


@dataclass(frozen=True)
class Node:
    kind: NodeKind
    layer: int
    """The MLP layer an error or latent belongs to; -1 for embeddings, n_layers for logits."""
    pos: int
    index: int
    """Latent index, or token id for embeddings and logits; 0 for errors."""
    activation: float
    """What the node carries on this prompt (a latent's activation; 1 for the others)."""


@dataclass(frozen=True)
class AttributionGraph:
    nodes: list[Node]
    adjacency: Float[Tensor, "target source"]

    def index_of(self, kind: NodeKind, layer: int, pos: int, index: int) -> int:
        for i, node in enumerate(self.nodes):
            if (node.kind, node.layer, node.pos, node.index) == (kind, layer, pos, index):
                return i
        raise KeyError(f"no {kind} node at layer {layer}, position {pos}, index {index} in this graph")

    def mask(self, kind: NodeKind) -> Bool[Tensor, " node"]:
        return torch.tensor([node.kind == kind for node in self.nodes])


def normalized_adjacency(adjacency: Float[Tensor, "target source"]) -> Float[Tensor, "target source"]:
    """|edges|, each row divided by its sum: the share of a node's incoming attribution each source carries."""
    magnitude = adjacency.abs()
    return magnitude / magnitude.sum(dim=1, keepdim=True).clamp_min(torch.finfo(magnitude.dtype).tiny)


def share_through(
    normalized: Float[Tensor, "target source"], target: int, source: int, via: Int[Tensor, " via"]
) -> float:
    """Share of `target`'s influence reaching `source` along paths whose every intermediate node is in `via`
    (at least one): A[t, V] (I - A[V, V])⁻¹ A[V, s]."""
    if len(via) == 0:
        return 0.0
    inner = normalized[via][:, via]
    eye = torch.eye(len(via), dtype=normalized.dtype)
    through = normalized[target, via] @ torch.linalg.solve(eye - inner, normalized[via, source])
    return through.item()


def top_path(normalized: Float[Tensor, "target source"], target: int) -> list[int]:
    """The path from `target` back to an input node with the largest product of normalised edges.

    Nodes are in topological order (every edge goes from a lower to a higher index), so one sweep
    over the nodes in order finds each node's best path back to an input.
    """
    n = normalized.shape[0]
    best = torch.zeros(n, dtype=normalized.dtype)
    previous = torch.full((n,), -1, dtype=torch.long)
    for node in range(n):
        incoming = normalized[node, :node]
        if node == 0 or incoming.sum() == 0:
            best[node] = 1.0  # an input node: its paths start here
            continue
        scores = incoming * best[:node]
        previous[node] = scores.argmax()
        best[node] = scores.max()
    path = [target]
    while previous[path[-1]] >= 0:
        path.append(previous[path[-1]].item())
    return path
