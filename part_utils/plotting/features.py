"""Pictures of how a toy model stores its features."""

from collections.abc import Sequence

import numpy as np
import plotly.express as px
import plotly.graph_objects as go
import torch
from jaxtyping import Float
from plotly.basedatatypes import BaseTraceType
from plotly.subplots import make_subplots
from torch import Tensor

from part_utils.plotting.animation import build_animation
from part_utils.shapes import expect_shape

FeatureColours = str | Sequence[str] | Tensor | None
"""None (shade by feature index, like decaying importance), one colour for all, one colour
per feature, or values of shape [feats] or [inst, feats] (e.g. importance) mapped to Viridis."""
MAX_FIGURE_WIDTH = 1000  # pixels: wider figures get clipped in a JupyterLab or Colab output area


def plot_features_in_2d(
    W: Float[Tensor, "inst d_hidden=2 feats"],
    *,
    colours: FeatureColours = None,
    title: str | None = None,
    subplot_titles: Sequence[str] | None = None,
    n_cols: int | None = None,
    subplot_size: int = 160,
) -> go.Figure:
    """One subplot per instance; each feature is a line from the origin to its 2D embedding."""
    sizes = expect_shape("W", W, "inst d_hidden feats", where="plot_features_in_2d", fixed={"d_hidden": 2})
    weights = W.detach().float().cpu().numpy()
    figure, n_cols = _grid_of_instances(sizes["inst"], title, subplot_titles, n_cols, subplot_size)
    colour_grid = _colour_grid(colours, sizes["inst"], sizes["feats"], where="plot_features_in_2d")
    limit = max(1.5, 1.1 * float(np.abs(weights).max(initial=0.0)))
    for inst in range(sizes["inst"]):
        figure.add_traces(_feature_traces_2d(weights[inst], colour_grid[inst], inst, n_cols))
    _square_axes(figure, sizes["inst"], limit)
    return figure


def animate_features_in_2d(
    W_history: Float[Tensor, "snapshots inst d_hidden=2 feats"],
    steps: Sequence[int],
    *,
    colours: FeatureColours = None,
    title: str | None = None,
    subplot_titles: Sequence[str] | None = None,
    n_cols: int | None = None,
    subplot_size: int = 160,
) -> go.Figure:
    """Like plot_features_in_2d, with a slider over training snapshots."""
    sizes = expect_shape("W_history", W_history, "snapshots inst d_hidden feats", where="animate_features_in_2d", fixed={"d_hidden": 2})
    if len(steps) != sizes["snapshots"]:
        raise ValueError(f"animate_features_in_2d: got {sizes['snapshots']} snapshots but {len(steps)} steps.")
    history = W_history.detach().float().cpu().numpy()
    figure, n_cols = _grid_of_instances(sizes["inst"], title, subplot_titles, n_cols, subplot_size)
    colour_grid = _colour_grid(colours, sizes["inst"], sizes["feats"], where="animate_features_in_2d")
    frames = [
        [trace for inst in range(sizes["inst"]) for trace in _feature_traces_2d(snapshot[inst], colour_grid[inst], inst, n_cols)]
        for snapshot in history
    ]
    limit = max(1.5, 1.1 * float(np.abs(history).max(initial=0.0)))
    _square_axes(figure, sizes["inst"], limit)
    return build_animation(figure, frames, [str(step) for step in steps], fix_axes=False)


def plot_features_in_Nd(
    W: Float[Tensor, "inst d_hidden feats"],
    *,
    title: str | None = None,
    subplot_titles: Sequence[str] | None = None,
    row_height: int = 300,
) -> go.Figure:
    """Per instance: the WᵀW heatmap, and each feature's norm coloured by how much it shares its dimensions.

    The colour of feature i is Σ_{j≠i} (Ŵ_i · W_j)²: 0 when no other feature overlaps it
    (it has a dimension to itself), 1 or more when it shares its direction.
    """
    sizes = expect_shape("W", W, "inst d_hidden feats", where="plot_features_in_Nd")
    n_inst, n_feats = sizes["inst"], sizes["feats"]
    weights = W.detach().float().cpu()
    gram = torch.einsum("ihf,ihg->ifg", weights, weights)
    norms = weights.norm(dim=1)
    unit = weights / norms.clamp_min(1e-6)[:, None, :]
    overlap = torch.einsum("ihf,ihg->ifg", unit, weights).pow(2)
    sharing = overlap.sum(-1) - overlap.diagonal(dim1=1, dim2=2)
    titles = list(subplot_titles) if subplot_titles is not None else [f"instance {i}" for i in range(n_inst)]
    figure = make_subplots(
        rows=n_inst,
        cols=2,
        column_widths=[0.55, 0.45],
        horizontal_spacing=0.12,
        vertical_spacing=min(0.3 / max(n_inst - 1, 1), 0.08),
        subplot_titles=[text for name in titles for text in (f"{name}: WᵀW", f"{name}: ‖W_i‖")],
    )
    feature_labels = [str(f) for f in range(n_feats)]
    for inst in range(n_inst):
        figure.add_trace(
            go.Heatmap(
                z=gram[inst].numpy(),
                x=feature_labels,
                y=feature_labels,
                colorscale="RdBu",
                zmin=-1,
                zmax=1,
                showscale=inst == 0,
                colorbar={"title": "WᵀW", "len": 0.4, "y": 1.0, "yanchor": "top", "x": 0.5},
                hovertemplate="features %{y}, %{x}: %{z:.2f}<extra></extra>",
            ),
            row=inst + 1,
            col=1,
        )
        figure.add_trace(
            go.Bar(
                x=norms[inst].numpy(),
                y=feature_labels,
                orientation="h",
                marker={
                    "color": sharing[inst].numpy(),
                    "colorscale": "Viridis",
                    "cmin": 0,
                    "cmax": 1,
                    "showscale": inst == 0,
                    "colorbar": {"title": "shared", "len": 0.4, "y": 1.0, "yanchor": "top"},
                },
                customdata=sharing[inst].numpy(),
                hovertemplate="feature %{y}: norm %{x:.2f}, shared %{customdata:.2f}<extra></extra>",
                showlegend=False,
            ),
            row=inst + 1,
            col=2,
        )
        figure.update_yaxes(autorange="reversed", row=inst + 1, col=1)
        figure.update_yaxes(autorange="reversed", row=inst + 1, col=2)
        figure.update_xaxes(range=[0, max(1.1, float(norms.max()) * 1.05)], row=inst + 1, col=2)
    figure.update_layout(height=row_height * n_inst + 80, title=title, margin={"t": 80})
    return figure


def _grid_of_instances(
    n_inst: int, title: str | None, subplot_titles: Sequence[str] | None, n_cols: int | None, subplot_size: int
) -> tuple[go.Figure, int]:
    n_cols = n_cols or min(n_inst, max(1, MAX_FIGURE_WIDTH // subplot_size))  # fits a notebook column
    n_rows = -(-n_inst // n_cols)
    if subplot_titles is not None and len(subplot_titles) != n_inst:
        raise ValueError(f"got {len(subplot_titles)} subplot titles for {n_inst} instances.")
    figure = make_subplots(
        rows=n_rows,
        cols=n_cols,
        subplot_titles=list(subplot_titles) if subplot_titles is not None else None,
        horizontal_spacing=0.02,
        vertical_spacing=0.25 / n_rows,
    )
    figure.update_layout(
        title=title,
        showlegend=False,
        width=subplot_size * n_cols + 60,
        height=subplot_size * n_rows + 130,
        margin={"l": 30, "r": 30, "t": 80, "b": 30},
        plot_bgcolor="white",
    )
    return figure, n_cols


def _axis_refs(inst: int) -> tuple[str, str]:
    suffix = "" if inst == 0 else str(inst + 1)
    return f"x{suffix}", f"y{suffix}"


def _feature_traces_2d(weights: np.ndarray, colours: list[str], inst: int, n_cols: int) -> list[BaseTraceType]:
    """Lines from the origin (one trace per feature, so each keeps its colour) and the tip markers."""
    xref, yref = _axis_refs(inst)
    lines = [
        go.Scatter(
            x=[0.0, float(weights[0, f])],
            y=[0.0, float(weights[1, f])],
            mode="lines",
            line={"color": colours[f], "width": 2},
            xaxis=xref,
            yaxis=yref,
            hoverinfo="skip",
        )
        for f in range(weights.shape[1])
    ]
    tips = go.Scatter(
        x=weights[0].tolist(),
        y=weights[1].tolist(),
        mode="markers",
        marker={"color": colours, "size": 9, "line": {"color": "black", "width": 0.5}},
        xaxis=xref,
        yaxis=yref,
        customdata=list(range(weights.shape[1])),
        hovertemplate="feature %{customdata}: (%{x:.2f}, %{y:.2f})<extra></extra>",
    )
    return [*lines, tips]


def _square_axes(figure: go.Figure, n_inst: int, limit: float) -> None:
    for inst in range(n_inst):
        xref, yref = _axis_refs(inst)
        axis_style = {"range": [-limit, limit], "showticklabels": False, "zeroline": True, "zerolinecolor": "#ccc", "showgrid": False}
        figure.layout[f"xaxis{xref[1:]}"].update(**axis_style, constrain="domain")
        figure.layout[f"yaxis{yref[1:]}"].update(**axis_style, scaleanchor=xref, scaleratio=1)


def _colour_grid(colours: FeatureColours, n_inst: int, n_feats: int, *, where: str) -> list[list[str]]:
    """Resolve the `colours` argument into one colour string per (instance, feature)."""
    if colours is None:
        values = torch.linspace(1.0, 0.0, n_feats) if n_feats > 1 else torch.ones(1)
        return _colour_grid(values, n_inst, n_feats, where=where)
    if isinstance(colours, str):
        return [[colours] * n_feats for _ in range(n_inst)]
    if isinstance(colours, Tensor):
        values = colours.detach().float().cpu()
        if values.shape == (n_feats,):
            values = values.expand(n_inst, n_feats)
        if values.shape != (n_inst, n_feats):
            raise ValueError(
                f"{where}: `colours` as values must have shape [feats={n_feats}] or [inst={n_inst}, feats={n_feats}], "
                f"got {tuple(colours.shape)}."
            )
        low, high = float(values.min()), float(values.max())
        scaled = (values - low) / (high - low) if high > low else torch.full_like(values, 0.8)
        return [px.colors.sample_colorscale("Viridis", row.tolist()) for row in scaled]
    colour_list = list(colours)
    if len(colour_list) != n_feats:
        raise ValueError(f"{where}: `colours` as a list needs one colour per feature ({n_feats}), got {len(colour_list)}.")
    return [colour_list for _ in range(n_inst)]
