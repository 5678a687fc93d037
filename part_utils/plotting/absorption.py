"""Figures for Part 8: hierarchical features, decoder rows against parents and children, absorption
per parent, decoder heatmaps in tree order, and absorption during training."""

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
from jaxtyping import Bool, Float
from plotly.colors import qualitative
from plotly.subplots import make_subplots
from torch import Tensor

from part_utils.hierarchy import decompose_latents, feature_labels, latent_order, tree_order
from part_utils.plotting.animation import build_animation, subplot_axes
from part_utils.plotting.features import MAX_FIGURE_WIDTH
from part_utils.plotting.pareto import ARCHITECTURE_COLOURS
from part_utils.shapes import expect_shape

FAMILY_COLOURS = qualitative.D3
ALONE_COLOUR, WITH_CHILD_COLOUR = "#1f77b4", "#d62728"
ARC_COLOUR = "#bbbbbb"

Panel = tuple[Float[Tensor, "d_sae feats"], Bool[Tensor, " d_sae"]]
"""One instance's decoder cosines with every true feature, and which of its latents are live."""


def _family_colour(parent: int) -> str:
    return FAMILY_COLOURS[parent % len(FAMILY_COLOURS)]


def plot_cooccurrence(
    features: Float[Tensor, "batch feats"], n_parents: int, n_children: int, *, title: str | None = None
) -> go.Figure:
    """P(column feature active | row feature active), both in tree order."""
    n_features = n_parents * (1 + n_children)
    expect_shape("features", features, "batch feats", where="plot_cooccurrence", fixed={"feats": n_features})
    active = (features != 0).double().cpu().numpy()
    together = active.T @ active  # [feats, feats]
    conditional = together / np.maximum(np.diag(together)[:, None], 1)
    order, labels = tree_order(n_parents, n_children), feature_labels(n_parents, n_children)
    shown = conditional[np.ix_(order, order)]
    names = [labels[i] for i in order]
    figure = go.Figure(
        go.Heatmap(
            z=np.round(shown, 3),
            x=names,
            y=names,
            zmin=0,
            zmax=1,
            colorscale="Blues",
            colorbar={"title": {"text": "P(column | row)"}},
            text=np.round(shown, 2),
            texttemplate="%{text:.2f}",
            textfont={"size": 8},
            hovertemplate="P(%{x} active | %{y} active) = %{z:.3f}<extra></extra>",
        )
    )
    figure.update_yaxes(autorange="reversed", title_text="given this feature is active")
    figure.update_xaxes(tickangle=-45, title_text="how often this one is too")
    figure.update_layout(title=title, width=760, height=700, margin={"t": 80})
    return figure


def _arc() -> go.Scatter:
    """Unit-norm rows in the plane of one parent and one child: cos² + cos² = 1."""
    angle = np.linspace(-math.pi / 2, math.pi / 2, 61)
    return go.Scatter(
        x=np.cos(angle).round(4),
        y=np.sin(angle).round(4),
        mode="lines",
        line={"color": ARC_COLOUR, "dash": "dot"},
        hoverinfo="skip",
        showlegend=False,
    )


def _legend_entries(n_parents: int) -> list[go.Scatter]:
    """Legend-only traces: a colour per family, and the two marker shapes."""
    entries = [
        go.Scatter(
            x=[None],
            y=[None],
            mode="markers",
            name=f"family P{p}",
            legendgroup=f"P{p}",
            marker={"color": _family_colour(p), "size": 9, "symbol": "circle"},
        )
        for p in range(n_parents)
    ]
    for symbol, name in (("circle", "best match: a child"), ("diamond", "best match: the parent")):
        entries.append(
            go.Scatter(
                x=[None], y=[None], mode="markers", name=name, marker={"color": "#555555", "size": 9, "symbol": symbol}
            )
        )
    return entries


def _decomposition_trace(points: Mapping[str, list[Any]]) -> list[go.Scatter]:
    traces = []
    for family in sorted(set(points["family"])):
        chosen = [i for i, f in enumerate(points["family"]) if f == family]
        traces.append(
            go.Scatter(
                x=[points["x"][i] for i in chosen],
                y=[points["y"][i] for i in chosen],
                mode="markers",
                name=f"family P{family}",
                legendgroup=f"P{family}",
                showlegend=False,
                marker={
                    "color": _family_colour(family),
                    "size": 9,
                    "symbol": ["diamond" if points["parent_best"][i] else "circle" for i in chosen],
                    "line": {"width": 0.5, "color": "white"},
                },
                hovertext=[f"latent {points['latent'][i]}: best match {points['label'][i]}" for i in chosen],
                hovertemplate="%{hovertext}<br>cos with child %{x:.2f}, with parent %{y:.2f}<extra></extra>",
            )
        )
    return traces


DECOMPOSITION_RANGES = {"x": [-0.15, 1.08], "y": [-0.7, 1.08]}


def plot_decoder_decomposition(
    panels: Mapping[str, Panel], n_parents: int, n_children: int, *, title: str | None = None
) -> go.Figure:
    """One panel per SAE: every live latent at (cosine with its best child, cosine with that child's parent)."""
    names = list(panels)
    figure = make_subplots(rows=1, cols=len(names), subplot_titles=names, horizontal_spacing=0.06)
    for column, name in enumerate(names, start=1):
        cosine, live = panels[name]
        expect_shape(
            "cosine",
            cosine,
            "d_sae feats",
            where="plot_decoder_decomposition",
            fixed={"feats": n_parents * (1 + n_children)},
        )
        figure.add_trace(_arc(), row=1, col=column)
        for trace in _decomposition_trace(decompose_latents(cosine, live, n_parents, n_children)):
            figure.add_trace(trace, row=1, col=column)
        figure.update_xaxes(range=DECOMPOSITION_RANGES["x"], title_text="cosine with its best child", row=1, col=column)
        figure.update_yaxes(range=DECOMPOSITION_RANGES["y"], row=1, col=column)
    for entry in _legend_entries(n_parents):
        figure.add_trace(entry, row=1, col=1)
    figure.update_yaxes(title_text="cosine with that child's parent", row=1, col=1)
    width = min(MAX_FIGURE_WIDTH, 300 * len(names) + 190)
    figure.update_layout(title=title, width=width, height=500, margin={"t": 90})
    return figure


def plot_parent_latent_firing(
    panels: Mapping[str, tuple[Float[Tensor, " parents"], Float[Tensor, " parents"]]], *, title: str | None = None
) -> go.Figure:
    """One panel per SAE: how often each parent's latent fires with the parent alone, and with one of its children."""
    names = list(panels)
    figure = make_subplots(rows=1, cols=len(names), subplot_titles=names, shared_yaxes=True, horizontal_spacing=0.04)
    for column, name in enumerate(names, start=1):
        alone, with_child = (values.detach().cpu().double().numpy() for values in panels[name])
        parents = [f"P{p}" for p in range(len(alone))]
        for values, label, colour in (
            (alone, "parent alone", ALONE_COLOUR),
            (with_child, "parent with a child", WITH_CHILD_COLOUR),
        ):
            figure.add_trace(
                go.Bar(
                    x=parents,
                    y=values.round(4),
                    name=label,
                    marker_color=colour,
                    showlegend=column == 1,
                    legendgroup=label,
                    hovertemplate=f"{label}: %{{y:.2f}}<extra>%{{x}}</extra>",
                ),
                row=1,
                col=column,
            )
    figure.update_yaxes(range=[0, 1.05], row=1, col=1, title_text="fraction of those inputs on which it fires")
    figure.update_layout(
        title=title, barmode="group", width=min(MAX_FIGURE_WIDTH, 300 * len(names) + 160), height=400, margin={"t": 90}
    )
    return figure


def plot_absorption_by_parent(rates: Mapping[str, Float[Tensor, " parents"]], *, title: str | None = None) -> go.Figure:
    """Grouped bars: each SAE's absorption rate for each parent, with its mean in the legend."""
    figure = go.Figure()
    for index, (name, values) in enumerate(rates.items()):
        values = values.detach().cpu().double().numpy()
        figure.add_trace(
            go.Bar(
                x=[f"P{p}" for p in range(len(values))],
                y=values.round(4),
                name=f"{name} (mean {values.mean():.2f})",
                marker_color=ARCHITECTURE_COLOURS[index % len(ARCHITECTURE_COLOURS)],
                hovertemplate=f"{name}: %{{y:.3f}}<extra>%{{x}}</extra>",
            )
        )
    figure.update_layout(
        title=title,
        barmode="group",
        yaxis={"range": [0, 1.02], "title": "absorption rate"},
        xaxis={"title": "parent"},
        width=min(MAX_FIGURE_WIDTH, 820),
        height=400,
        margin={"t": 80},
    )
    return figure


def _sorted_live_latents(cosine: Tensor, live: Tensor, n_parents: int, n_children: int) -> list[int]:
    alive = set(np.flatnonzero(live.cpu().numpy()).tolist())
    return [latent for latent in latent_order(cosine.detach().cpu(), n_parents, n_children) if latent in alive]


def plot_decoder_heatmaps(
    panels: Mapping[tuple[str, int], Panel], n_parents: int, n_children: int, *, title: str | None = None
) -> go.Figure:
    """Rows of panels per architecture, columns per width: decoder cosine of each live latent (x) with each
    true feature (y, in tree order), latents sorted by the feature they match best."""
    row_names = list(dict.fromkeys(name for name, _ in panels))
    widths = list(dict.fromkeys(width for _, width in panels))
    order, labels = tree_order(n_parents, n_children), feature_labels(n_parents, n_children)
    shown = {key: _sorted_live_latents(cosine, live, n_parents, n_children) for key, (cosine, live) in panels.items()}
    column_size = [max(len(shown[(name, width)]) for name in row_names if (name, width) in panels) for width in widths]
    figure = make_subplots(
        rows=len(row_names),
        cols=len(widths),
        column_widths=[size / sum(column_size) for size in column_size],
        subplot_titles=[f"{width} latents, {len(shown[(name, width)])} live" for name in row_names for width in widths],
        horizontal_spacing=0.02,
        vertical_spacing=0.12,
    )
    for row, name in enumerate(row_names, start=1):
        for column, width in enumerate(widths, start=1):
            cosine = panels[(name, width)][0].detach().double().cpu().numpy()
            latents = shown[(name, width)]
            z = cosine[np.ix_(latents, order)].T if latents else np.zeros((len(order), 0))
            figure.add_trace(
                go.Heatmap(
                    z=z.round(3),
                    x=[str(latent) for latent in latents],
                    y=[labels[i] for i in order],
                    zmin=-1,
                    zmax=1,
                    colorscale="RdBu",
                    reversescale=True,
                    showscale=row == 1 and column == 1,
                    colorbar={"title": {"text": "cosine"}},
                    hovertemplate="latent %{x}, feature %{y}: cosine %{z:.2f}<extra></extra>",
                ),
                row=row,
                col=column,
            )
            figure.update_yaxes(
                autorange="reversed",
                showticklabels=column == 1,
                tickfont={"size": 9},
                row=row,
                col=column,
                title_text=name if column == 1 else None,
            )
            figure.update_xaxes(showticklabels=False, title_text="live latents", row=row, col=column)
    figure.update_layout(
        title=title, width=MAX_FIGURE_WIDTH, height=330 * len(row_names) + 120, margin={"t": 90, "l": 70}
    )
    return figure


def animate_absorption(
    replays: Mapping[str, Sequence[tuple[Tensor, Tensor, Tensor]]],
    steps: Sequence[int],
    n_parents: int,
    n_children: int,
    *,
    title: str | None = None,
) -> go.Figure:
    """Top: the decomposition of each SAE's live latents at every step; bottom: its absorption per parent."""
    names = list(replays)
    if any(len(frames) != len(steps) for frames in replays.values()):
        raise ValueError("animate_absorption: every replay needs one (cosine, live, absorption) frame per step")
    figure = make_subplots(
        rows=2,
        cols=len(names),
        subplot_titles=names,
        row_heights=[0.62, 0.38],
        vertical_spacing=0.1,
        horizontal_spacing=0.08,
    )
    for column in range(1, len(names) + 1):
        figure.add_trace(_arc(), row=1, col=column)
        figure.update_xaxes(range=DECOMPOSITION_RANGES["x"], title_text="cosine with its best child", row=1, col=column)
        figure.update_yaxes(range=DECOMPOSITION_RANGES["y"], row=1, col=column)
        figure.update_xaxes(title_text="parent", row=2, col=column)
        figure.update_yaxes(range=[0, 1.02], row=2, col=column)
    figure.update_yaxes(title_text="cosine with that child's parent", row=1, col=1)
    figure.update_yaxes(title_text="absorption rate", row=2, col=1)
    axes = {(row, column): subplot_axes(figure, row, column) for row in (1, 2) for column in range(1, len(names) + 1)}
    parents = [f"P{p}" for p in range(n_parents)]
    frames = []
    for index in range(len(steps)):
        traces = []
        for column, name in enumerate(names, start=1):
            cosine, live, absorption = replays[name][index]
            points = decompose_latents(cosine, live, n_parents, n_children)
            scatter = {
                "x": points["x"],
                "y": points["y"],
                "marker": {
                    "color": [_family_colour(family) for family in points["family"]],
                    "symbol": ["diamond" if best else "circle" for best in points["parent_best"]],
                    "size": 9,
                    "line": {"width": 0.5, "color": "white"},
                },
                "hovertext": [
                    f"latent {latent}: best match {label}" for latent, label in zip(points["latent"], points["label"])
                ],
            }
            bars = {"x": parents, "y": absorption.detach().cpu().double().numpy().round(4).tolist()}
            if index == 0:  # the first frame carries the styling; later frames only what moves
                xref, yref = axes[(1, column)]
                scatter.update(
                    type="scatter",
                    mode="markers",
                    xaxis=xref,
                    yaxis=yref,
                    showlegend=False,
                    hovertemplate="%{hovertext}<br>cos with child %{x:.2f}, with parent %{y:.2f}<extra></extra>",
                )
                xref, yref = axes[(2, column)]
                bars.update(
                    type="bar",
                    xaxis=xref,
                    yaxis=yref,
                    showlegend=False,
                    marker={"color": [_family_colour(p) for p in range(n_parents)]},
                    hovertemplate="%{x}: %{y:.2f}<extra></extra>",
                )
            traces += [scatter, bars]
        frames.append(traces)
    figure.update_layout(
        title=title, width=min(MAX_FIGURE_WIDTH, 420 * len(names) + 120), height=720, margin={"t": 90, "b": 110}
    )
    return build_animation(figure, frames, [str(step) for step in steps], fix_axes=False, frame_duration_ms=150)
