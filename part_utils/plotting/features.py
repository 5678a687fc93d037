"""Pictures of how a toy model stores its features."""

from collections.abc import Sequence
from typing import TypedDict, Unpack

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


class FeaturePlotOptions(TypedDict, total=False):
    """The keywords of plot_features_in_2d and animate_features_in_2d; FEATURE_PLOT_DEFAULTS has their defaults."""

    colours: FeatureColours
    title: str | None
    subplot_titles: Sequence[str] | None
    n_cols: int | None
    """Subplots per row; by default as many as fit MAX_FIGURE_WIDTH."""
    subplot_size: int
    """Pixels per subplot."""
    colour_title: str
    """The colour bar's title, when colours are values (or None: by feature index)."""


FEATURE_PLOT_DEFAULTS: FeaturePlotOptions = {
    "colours": None,
    "title": None,
    "subplot_titles": None,
    "n_cols": None,
    "subplot_size": 160,
    "colour_title": "importance",
}


def plot_features_in_2d(W: Float[Tensor, "inst d_hidden=2 feats"], **options: Unpack[FeaturePlotOptions]) -> go.Figure:
    """One subplot per instance; each feature is a line from the origin to its 2D embedding.

    Colours given as values (or None: by feature index) get a colour bar titled `colour_title`."""
    expect_shape("W", W, "inst d_hidden feats", where="plot_features_in_2d", fixed={"d_hidden": 2})
    snapshot = W.detach().float().cpu().numpy()[None]
    figure, frames, resolved = _features_figure(snapshot, options, where="plot_features_in_2d")
    figure.add_traces(frames[0])
    _add_colour_key(figure, resolved["colours"], snapshot.shape[-1], resolved["colour_title"])
    return figure


def animate_features_in_2d(
    W_history: Float[Tensor, "snapshots inst d_hidden=2 feats"],
    steps: Sequence[int],
    *,
    slider_prefix: str = "step ",
    **options: Unpack[FeaturePlotOptions],
) -> go.Figure:
    """Like plot_features_in_2d, with a slider over snapshots (training steps, or any labels)."""
    sizes = expect_shape(
        "W_history", W_history, "snapshots inst d_hidden feats", where="animate_features_in_2d", fixed={"d_hidden": 2}
    )
    if len(steps) != sizes["snapshots"]:
        raise ValueError(f"animate_features_in_2d: got {sizes['snapshots']} snapshots but {len(steps)} steps.")
    history = W_history.detach().float().cpu().numpy()
    figure, frames, resolved = _features_figure(history, options, where="animate_features_in_2d")
    _add_colour_key(figure, resolved["colours"], sizes["feats"], resolved["colour_title"])
    return build_animation(figure, frames, [str(step) for step in steps], fix_axes=False, slider_prefix=slider_prefix)


def _features_figure(
    history: Float[np.ndarray, "snapshots inst 2 feats"], options: FeaturePlotOptions, *, where: str
) -> tuple[go.Figure, list[list[BaseTraceType]], FeaturePlotOptions]:
    """The grid of square subplots, each snapshot's traces, and the options with their defaults filled in."""
    unknown = options.keys() - FEATURE_PLOT_DEFAULTS.keys()
    if unknown:
        raise TypeError(f"{where}() got an unexpected keyword argument {sorted(unknown)[0]!r}")
    resolved: FeaturePlotOptions = {**FEATURE_PLOT_DEFAULTS, **options}
    n_inst, n_feats = history.shape[1], history.shape[3]
    figure, n_cols = _grid_of_instances(
        n_inst, resolved["title"], resolved["subplot_titles"], resolved["n_cols"], resolved["subplot_size"]
    )
    colour_grid = _colour_grid(resolved["colours"], n_inst, n_feats, where=where)
    frames = [
        [
            trace
            for inst in range(n_inst)
            for trace in _feature_traces_2d(snapshot[inst], colour_grid[inst], inst, n_cols)
        ]
        for snapshot in history
    ]
    _square_axes(figure, n_inst, max(1.5, 1.1 * float(np.abs(history).max(initial=0.0))))
    return figure, frames, resolved


def plot_features_in_Nd(
    W: Float[Tensor, "inst d_hidden feats"],
    *,
    title: str | None = None,
    subplot_titles: Sequence[str] | None = None,
    row_height: int = 470,
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
        column_widths=[0.5, 0.5],
        horizontal_spacing=0.14,
        vertical_spacing=0.12 / max(n_inst - 1, 1) if n_inst > 1 else 0.0,
        subplot_titles=[text for name in titles for text in (f"{name}: WᵀW", f"{name}: ‖W_i‖, coloured by overlap")],
    )
    features = np.arange(n_feats)
    tick_step = 1 if n_feats <= 20 else 10  # upright labels that do not collide, however many features
    for inst in range(n_inst):
        figure.add_trace(
            go.Heatmap(
                z=gram[inst].numpy(),
                x=features,
                y=features,
                colorscale="RdBu",
                zmin=-1,
                zmax=1,
                showscale=inst == 0,
                colorbar={
                    "title": {"text": "WᵀW"},
                    "len": 0.35,
                    "y": 1.0,
                    "yanchor": "top",
                    "x": 0.43,
                    "thickness": 12,
                },
                hovertemplate="features %{y}, %{x}: %{z:.2f}<extra></extra>",
            ),
            row=inst + 1,
            col=1,
        )
        figure.add_trace(
            go.Bar(
                x=norms[inst].numpy(),
                y=features,
                orientation="h",
                marker={
                    "color": sharing[inst].numpy(),
                    "colorscale": "Viridis",
                    "cmin": 0,
                    "cmax": 1,
                    "showscale": inst == 0,
                    "colorbar": {
                        "title": {"text": "overlap<br>Σ_{j≠i} (Ŵ_i·W_j)²"},
                        "len": 0.35,
                        "y": 1.0,
                        "yanchor": "top",
                        "thickness": 12,
                    },
                },
                customdata=sharing[inst].numpy(),
                hovertemplate="feature %{y}: norm %{x:.2f}, shared %{customdata:.2f}<extra></extra>",
                showlegend=False,
            ),
            row=inst + 1,
            col=2,
        )
        axis = {"dtick": tick_step, "tickangle": 0, "tick0": 0}
        figure.update_xaxes(**axis, title_text="feature j", title_standoff=4, constrain="domain", row=inst + 1, col=1)
        heatmap_x = "x" if inst == 0 else f"x{2 * inst + 1}"
        figure.update_yaxes(
            **axis,
            title_text="feature i",
            autorange="reversed",
            scaleanchor=heatmap_x,
            constrain="domain",
            row=inst + 1,
            col=1,
        )
        figure.update_yaxes(**axis, title_text="feature i", autorange="reversed", row=inst + 1, col=2)
        figure.update_xaxes(
            title_text="‖W_i‖", title_standoff=4, range=[0, max(1.1, float(norms.max()) * 1.05)], row=inst + 1, col=2
        )
    figure.update_layout(
        height=row_height * n_inst + 100, width=MAX_FIGURE_WIDTH, title=title, margin={"t": 90, "b": 40}, bargap=0.1
    )
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
        axis_style = {
            "range": [-limit, limit],
            "showticklabels": False,
            "zeroline": True,
            "zerolinecolor": "#ccc",
            "showgrid": False,
        }
        figure.layout[f"xaxis{xref[1:]}"].update(**axis_style, constrain="domain")
        figure.layout[f"yaxis{yref[1:]}"].update(**axis_style, scaleanchor=xref, scaleratio=1)


def _add_colour_key(figure: go.Figure, colours: FeatureColours, n_feats: int, title: str) -> None:
    """A colour bar for colours given as values (by feature index when None); none for named colours.

    It is an invisible marker trace on the first subplot, so animations keep it as a static trace."""
    if colours is None:
        low, high, title = 0.0, float(n_feats - 1), "feature"
        reverse = True  # _colour_grid shades feature 0 brightest, like the largest importance
    elif isinstance(colours, Tensor):
        values = colours.detach().float().cpu()
        low, high, reverse = float(values.min()), float(values.max()), False
        if high <= low:
            return
    else:
        return
    figure.add_trace(
        go.Scatter(
            x=[None],
            y=[None],
            xaxis="x",
            yaxis="y",
            mode="markers",
            hoverinfo="skip",
            showlegend=False,
            marker={
                "color": [low],
                "colorscale": "Viridis",
                "reversescale": reverse,
                "cmin": low,
                "cmax": high,
                "showscale": True,
                "colorbar": {
                    "title": {"text": title},
                    "thickness": 12,
                    "len": min(1.0, 300 / max(1, figure.layout.height or 300)),
                    "y": 1.0,
                    "yanchor": "top",
                },
            },
        )
    )
    figure.update_layout(width=(figure.layout.width or MAX_FIGURE_WIDTH) + 70)


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
        raise ValueError(
            f"{where}: `colours` as a list needs one colour per feature ({n_feats}), got {len(colour_list)}."
        )
    return [colour_list for _ in range(n_inst)]
