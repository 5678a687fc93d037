"""Figures for SAEs trained on toy data: training animation, firing frequencies, recovery tables, Adam step sizes."""

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import plotly.express as px
import plotly.graph_objects as go
from jaxtyping import Bool, Float
from plotly.subplots import make_subplots
from torch import Tensor

from part_utils.plotting.animation import build_animation, subplot_axes
from part_utils.plotting.features import MAX_FIGURE_WIDTH
from part_utils.plotting.tables import HtmlTable, html_table
from part_utils.sae_training import SAETrainingLog
from part_utils.shapes import expect_shape

LATENT_COLOURS = px.colors.qualitative.D3
RESAMPLED_OUTLINE = "#e41a1c"
DATA_POINTS_SHOWN = 32  # per instance: enough to see the shape, small enough for 200 frames


def animate_sae_training(
    log: SAETrainingLog,
    feature_directions: Float[Tensor, "inst feats d_in=2"],
    *,
    instances: Iterable[int] | None = None,
    colour_by_loss: bool = False,
    title: str | None = None,
    subplot_size: int = 150,
) -> go.Figure:
    """Rows: encoder directions, decoder directions, data and reconstruction; one column per instance.

    Latents resampled since the previous frame get a red outline. Directions are drawn at
    unit length (encoder columns normalised), with the true features as grey lines.
    """
    n_inst = log.h_sample.shape[1]
    expect_shape(
        "feature_directions",
        feature_directions,
        "inst feats d_in",
        where="animate_sae_training",
        fixed={"inst": n_inst, "d_in": 2},
    )
    chosen = list(range(n_inst) if instances is None else instances)
    features = feature_directions.detach().float().cpu().numpy()
    features = features / np.linalg.norm(features, axis=-1, keepdims=True).clip(1e-12)
    shown_points = [_nonzero_points(log.h_sample[:, inst].numpy()) for inst in chosen]

    n_cols = len(chosen)
    figure = make_subplots(
        rows=3,
        cols=n_cols,
        row_titles=["encoder", "decoder", "data"],
        column_titles=[f"inst {inst}" for inst in chosen],
        horizontal_spacing=0.01,
        vertical_spacing=0.04,
    )
    data_limit = 1.1 * max(float(np.abs(log.h_sample.numpy()).max()), 1e-6)
    for column, inst in enumerate(chosen, start=1):
        for row in (1, 2):
            figure.add_trace(_lines_from_origin(features[inst], colour="#bbbbbb", width=4), row=row, col=column)
        points = log.h_sample[shown_points[column - 1], inst].numpy()
        figure.add_trace(
            go.Scatter(
                x=points[:, 0], y=points[:, 1], mode="markers", marker={"color": "#cccccc", "size": 7}, hoverinfo="skip"
            ),
            row=3,
            col=column,
        )
    for column in range(1, n_cols + 1):
        for row, limit in ((1, 1.25), (2, 1.25), (3, data_limit)):
            figure.update_xaxes(range=[-limit, limit], visible=False, row=row, col=column)
            figure.update_yaxes(
                range=[-limit, limit],
                visible=False,
                row=row,
                col=column,
                scaleanchor=_axis_name(figure, row, column),
                scaleratio=1,
            )

    axis_refs = {
        (row, column): subplot_axes(figure, row, column) for row in (1, 2, 3) for column in range(1, n_cols + 1)
    }
    max_loss = max(float(snapshot.reconstruction_loss.max()) for snapshot in log.snapshots) or 1.0
    frames = []
    for index, snapshot in enumerate(log.snapshots):
        full = index == 0  # the first frame carries the styling; later frames only what moves
        traces = []
        for column, inst in enumerate(chosen, start=1):
            encoder = snapshot.W_enc[inst].T.numpy()
            encoder = encoder / np.linalg.norm(encoder, axis=-1, keepdims=True).clip(1e-12)
            decoder = snapshot.W_dec_normalized[inst].numpy()
            resampled = snapshot.resampled[inst].numpy()
            for row, directions in ((1, encoder), (2, decoder)):
                traces.append(_latent_star(directions, resampled, axis_refs[(row, column)], full=full))
            rows = shown_points[column - 1]
            reconstruction = np.round(snapshot.h_reconstructed[rows, inst].double().numpy(), 3)
            trace: dict = {"x": reconstruction[:, 0].tolist(), "y": reconstruction[:, 1].tolist()}
            if colour_by_loss:
                trace["marker"] = {
                    "color": np.round(snapshot.reconstruction_loss[rows, inst].double().numpy(), 4).tolist()
                }
            if full:
                xref, yref = axis_refs[(3, column)]
                marker = {"size": 5, "color": "#1f77b4"}
                if colour_by_loss:
                    marker.update(color=trace["marker"]["color"], cmin=0.0, cmax=max_loss, colorscale="Reds")
                trace.update(type="scatter", mode="markers", marker=marker, xaxis=xref, yaxis=yref, hoverinfo="skip")
            traces.append(trace)
        frames.append(traces)
    width = min(MAX_FIGURE_WIDTH, subplot_size * n_cols + 80)
    figure.update_layout(
        title=title,
        showlegend=False,
        width=width,
        height=3 * min(subplot_size, (width - 80) // n_cols) + 220,
        margin={"l": 20, "r": 40, "t": 90, "b": 20},
        plot_bgcolor="white",
    )
    return build_animation(
        figure, frames, [str(snapshot.step) for snapshot in log.snapshots], fix_axes=False, frame_duration_ms=60
    )


def plot_firing_frequencies(
    log: SAETrainingLog, *, instances: Iterable[int] | None = None, title: str | None = None
) -> go.Figure:
    """Each latent's firing frequency (on the logged sample) over training, on a log scale; one subplot per instance.

    A latent that did not fire on the sample sits on the bottom edge."""
    n_inst = log.h_sample.shape[1]
    chosen = list(range(n_inst) if instances is None else instances)
    steps = [snapshot.step for snapshot in log.snapshots]
    frequency = np.stack([snapshot.frac_active.numpy() for snapshot in log.snapshots])  # [snapshots, inst, d_sae]
    floor = 0.5 / log.h_sample.shape[0]  # below one firing in the sample: drawn on the floor, i.e. dead
    frequency = np.maximum(frequency, floor)
    n_cols = min(4, len(chosen))
    n_rows = -(-len(chosen) // n_cols)
    figure = make_subplots(
        rows=n_rows, cols=n_cols, subplot_titles=[f"inst {inst}" for inst in chosen], shared_yaxes=True
    )
    for index, inst in enumerate(chosen):
        row, column = index // n_cols + 1, index % n_cols + 1
        for latent in range(frequency.shape[-1]):
            figure.add_trace(
                go.Scatter(
                    x=steps,
                    y=frequency[:, inst, latent],
                    mode="lines",
                    line={"color": LATENT_COLOURS[latent % len(LATENT_COLOURS)], "width": 1.5},
                    name=f"latent {latent}",
                    legendgroup=f"latent {latent}",
                    showlegend=index == 0,
                ),
                row=row,
                col=column,
            )
    # One tick per decade, as powers of ten: the default log axis labels 2 and 5 of every decade too.
    figure.update_yaxes(
        type="log", range=[np.log10(floor) - 0.1, 0.05], dtick=1, exponentformat="power", showexponent="all"
    )
    figure.update_yaxes(title_text="fraction of inputs", col=1)
    figure.update_xaxes(title_text="training step", row=n_rows)
    figure.update_layout(title=title, height=230 * n_rows + 100, width=MAX_FIGURE_WIDTH)
    return figure


def recovery_table(report: Mapping[str, Tensor], *, title: str | None = None) -> HtmlTable:
    """One row per instance: MMCS, one-to-one (Hungarian) cosine, recall, features recovered, dead latents, L0, FVU."""
    columns = {
        "instance": list(range(len(report["mmcs"]))),
        "mean max cos sim": [f"{value:.4f}" for value in report["mmcs"].tolist()],
        "Hungarian cos sim": [f"{value:.4f}" for value in report["hungarian"].tolist()],
        "recall": [f"{value:.3f}" for value in report["recall"].tolist()],
        "features recovered (cos ≥ 0.99)": report["recovered"].tolist(),
        "dead latents": report["dead"].tolist(),
        "L0": [f"{value:.3f}" for value in report["l0"].tolist()],
        "FVU": [f"{value:.4f}" for value in report["fvu"].tolist()],
    }
    return html_table(columns, title=title)


def complete_instances(report: Mapping[str, Tensor], n_features: int) -> Bool[Tensor, " inst"]:
    """Instances that recover every feature (max cosine ≥ 0.99) and have no dead latent."""
    return (report["recovered"] == n_features) & (report["dead"] == 0)


def recipe_table(
    reports: Mapping[str, Mapping[str, Tensor]], n_features: int, *, title: str | None = None
) -> HtmlTable:
    """One row per training recipe: complete instances, and each metric as mean ± sd over the instances (the seeds)."""

    def spread(key: str, digits: int) -> list[str]:
        values = [report[key].float() for report in reports.values()]
        return [f"{value.mean():.{digits}f} ± {value.std():.{digits}f}" for value in values]

    columns = {
        "recipe": list(reports),
        f"all {n_features} features, no dead latent": [
            f"{int(complete_instances(report, n_features).sum())}/{len(report['mmcs'])}" for report in reports.values()
        ],
        "mean max cos sim": spread("mmcs", 4),
        "Hungarian cos sim": spread("hungarian", 4),
        "recall": spread("recall", 3),
        "dead latents (all instances)": [int(report["dead"].sum()) for report in reports.values()],
        "L0": spread("l0", 3),
        "FVU": spread("fvu", 4),
    }
    return html_table(columns, title=title)


def plot_step_sizes(curves: Mapping[str, Sequence[float]], *, title: str | None = None) -> go.Figure:
    """Each curve's update size (in units of the learning rate) against steps since the optimiser (re)started, log x."""
    figure = go.Figure()
    for (name, sizes), colour in zip(curves.items(), LATENT_COLOURS, strict=False):
        steps = np.arange(1, len(sizes) + 1)
        line = {"color": colour, "width": 2}
        figure.add_trace(go.Scatter(x=steps, y=list(sizes), mode="lines", name=name, line=line))
    figure.add_hline(y=1.0, line={"color": "#999999", "dash": "dot"})
    figure.update_xaxes(type="log", title_text="steps since the moments were zeroed (or since the start)")
    figure.update_yaxes(rangemode="tozero", title_text="update size / learning rate")
    legend = {"x": 0.99, "xanchor": "right", "y": 0.99}
    figure.update_layout(title=title, height=420, width=MAX_FIGURE_WIDTH, legend=legend)
    return figure


def _nonzero_points(h: np.ndarray) -> np.ndarray:
    """Indices of up to DATA_POINTS_SHOWN inputs that are not the zero vector."""
    nonzero = np.flatnonzero(np.abs(h).sum(axis=-1) > 1e-6)
    return nonzero[:DATA_POINTS_SHOWN]


def _lines_from_origin(directions: np.ndarray, *, colour: str, width: float) -> go.Scatter:
    xs, ys = [], []
    for x, y in directions:
        xs += [0.0, float(x), None]
        ys += [0.0, float(y), None]
    return go.Scatter(x=xs, y=ys, mode="lines", line={"color": colour, "width": width}, hoverinfo="skip")


def _latent_star(directions: np.ndarray, resampled: np.ndarray, axes: tuple[str, str], *, full: bool) -> dict:
    """All latents of one instance as one polyline origin → tip → origin → tip ..., tips as markers.

    One trace per instance and row keeps frames small; resampled latents get a larger tip
    with a red outline.
    """
    n_latents = len(directions)
    points = np.zeros((2 * n_latents, 2))
    points[1::2] = np.round(directions.astype(np.float64), 3)
    sizes = np.zeros(2 * n_latents, dtype=int)
    sizes[1::2] = np.where(resampled, 15, 8)
    outline = np.zeros(2 * n_latents, dtype=int)
    outline[1::2] = np.where(resampled, 3, 0)
    trace = {
        "x": points[:, 0].tolist(),
        "y": points[:, 1].tolist(),
        "marker": {"size": sizes.tolist(), "line": {"width": outline.tolist()}},
    }
    if full:
        xref, yref = axes
        colours = [
            "rgba(0,0,0,0)" if i % 2 == 0 else LATENT_COLOURS[(i // 2) % len(LATENT_COLOURS)]
            for i in range(2 * n_latents)
        ]
        trace.update(
            type="scatter",
            mode="lines+markers",
            line={"color": "#555555", "width": 1.5},
            xaxis=xref,
            yaxis=yref,
            hovertext=["" if i % 2 == 0 else f"latent {i // 2}" for i in range(2 * n_latents)],
            hoverinfo="text",
        )
        trace["marker"].update(color=colours, line={"width": outline.tolist(), "color": RESAMPLED_OUTLINE})
    return trace


def _axis_name(figure: go.Figure, row: int, column: int) -> str:
    return subplot_axes(figure, row, column)[0]
