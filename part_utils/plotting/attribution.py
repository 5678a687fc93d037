"""Figures of Part 9: an attribution graph, interactive and offline, and the truth scores per position."""

from collections.abc import Sequence

import plotly.graph_objects as go
import torch
from jaxtyping import Bool
from plotly.subplots import make_subplots
from torch import Tensor

from part_utils.attribution.graph import AttributionGraph, Node
from part_utils.attribution.truth import LetterMatch
from part_utils.palindromes.language import PalindromeTokenizer

LETTERS = "abcdefghijklmnopqrstuvwxyz"
KIND_ROW = {"embedding": 0.0, "error": 0.35, "latent": 0.0, "logit": 0.0}
KIND_COLOUR = {"embedding": "#6c757d", "error": "#adb5bd", "latent": "#2a9d8f", "logit": "#e76f51"}


def node_labels(graph: AttributionGraph, match: LetterMatch, tokenizer: PalindromeTokenizer) -> list[str]:
    """Hover text: what each node is, with the letter a latent was matched to and how well."""
    labels = []
    for node in graph.nodes:
        if node.kind == "embedding":
            labels.append(f"token {tokenizer.vocabulary[node.index]!r} at position {node.pos}")
        elif node.kind == "error":
            labels.append(f"error node, MLP {node.layer}, position {node.pos}")
        elif node.kind == "logit":
            labels.append(f"logit of {tokenizer.vocabulary[node.index]!r} at position {node.pos}")
        else:
            letters = (match.latent[node.layer, node.pos] == node.index).nonzero().flatten().tolist()
            described = ", ".join(
                f"letter {LETTERS[letter]} (F1 {match.f1[node.layer, node.pos, letter]:.2f})" for letter in letters
            )
            labels.append(
                f"latent {node.index}, MLP {node.layer}, position {node.pos}, activation {node.activation:.2f}"
                f"<br>matched to {described or 'no letter'}"
            )
    return labels


def _layout_position(node: Node, n_layers: int, offset: float) -> tuple[float, float]:
    """x: the token position (spread a little within it); y: the layer (embeddings at the bottom, logits on top)."""
    y = {"embedding": 0.0, "logit": 2.0 * n_layers + 1.0}.get(node.kind, 2.0 * node.layer + 1.0 + KIND_ROW[node.kind])
    return node.pos + offset, y


def plot_attribution_graph(
    graph: AttributionGraph, kept: Bool[Tensor, " node"], labels: Sequence[str], max_edges: int = 300
) -> go.Figure:
    """The pruned graph: nodes by layer and position, edges by attribution (width ∝ |edge|, blue + / red −)."""
    n_layers = max(node.layer for node in graph.nodes if node.kind == "logit")
    shown = kept.nonzero().flatten().tolist()
    per_slot: dict[tuple[float, int], int] = {}
    coordinates = {}
    for i in shown:
        node = graph.nodes[i]
        slot = (_layout_position(node, n_layers, 0.0)[1], node.pos)
        rank = per_slot.get(slot, 0)
        per_slot[slot] = rank + 1
        coordinates[i] = _layout_position(node, n_layers, 0.12 * rank)
    sub = graph.adjacency[shown][:, shown]
    order = sub.abs().flatten().argsort(descending=True)[:max_edges]
    order = order[sub.abs().flatten()[order] > 0]
    largest = sub.abs().max().clamp_min(1e-12).item()
    figure = go.Figure()
    for flat in order.tolist():
        target, source = shown[flat // len(shown)], shown[flat % len(shown)]
        weight = graph.adjacency[target, source].item()
        (x0, y0), (x1, y1) = coordinates[source], coordinates[target]
        figure.add_trace(
            go.Scatter(
                x=[x0, x1],
                y=[y0, y1],
                mode="lines",
                line={"width": 0.5 + 6 * abs(weight) / largest, "color": "#1d70b8" if weight > 0 else "#d62828"},
                opacity=0.6,
                hoverinfo="text",
                text=f"edge {weight:+.3f}",
                showlegend=False,
            )
        )
    for kind, colour in KIND_COLOUR.items():
        members = [i for i in shown if graph.nodes[i].kind == kind]
        if not members:  # no empty legend entry for a kind that pruning removed
            continue
        figure.add_trace(
            go.Scatter(
                x=[coordinates[i][0] for i in members],
                y=[coordinates[i][1] for i in members],
                mode="markers",
                marker={"size": 12, "color": colour, "line": {"width": 1, "color": "white"}},
                name=kind,
                hovertext=[labels[i] for i in members],
                hoverinfo="text",
            )
        )
    rows = ["embeddings"] + [name for layer in range(n_layers) for name in (f"MLP {layer}", "")] + ["logits"]
    figure.update_layout(
        title="Attribution graph of one prompt (pruned; hover for what each node is)",
        xaxis={"title": "position", "dtick": 1},
        yaxis={"tickvals": list(range(len(rows))), "ticktext": rows, "range": [-0.5, len(rows) - 0.5]},
        height=520,
        legend={"orientation": "h", "y": -0.15},
    )
    return figure


def plot_truth_scores(
    truth: dict[tuple[str, int], dict[str, list[float]]], seeds: Sequence[int], positions: Sequence[int]
) -> go.Figure:
    """Share through the ground-truth path and top-path accuracy per output position, mean over seeds ± sd."""
    measures = {"share": "share of influence through the truth path", "top_path": "top path is the truth path"}
    figure = make_subplots(rows=1, cols=2, subplot_titles=list(measures.values()))
    for column, measure in enumerate(measures, start=1):
        for kind, colour in (("transcoder", "#2a9d8f"), ("sae", "#e9c46a")):
            per_seed = torch.tensor(
                [
                    [_mean(truth[kind, seed][measure][j :: len(positions)]) for j in range(len(positions))]
                    for seed in seeds
                ]
            )
            figure.add_trace(
                go.Bar(
                    x=[f"position {p}" for p in positions],
                    y=per_seed.mean(dim=0).tolist(),
                    error_y={
                        "type": "data",
                        "array": (per_seed.std(dim=0) if len(seeds) > 1 else 0 * per_seed[0]).tolist(),
                    },
                    name="transcoder" if kind == "transcoder" else "SAE on MLP output",
                    marker_color=colour,
                    showlegend=column == 1,
                ),
                row=1,
                col=column,
            )
    figure.update_yaxes(range=[0, 1.05])
    figure.update_layout(title="Graphs scored against the planted circuit (held-out prompts)", height=400)
    return figure


def _mean(values: Sequence[float]) -> float:
    return sum(values) / max(len(values), 1)
