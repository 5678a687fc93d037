"""The Pareto plot of Parts 5 and 8: each architecture's metrics against L0 over its sparsity settings,
one line per architecture, every point labelled with its setting on the side where the label is
least in the way."""

import math
from collections.abc import Mapping, Sequence
from typing import Any

import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

ARCHITECTURE_COLOURS = qualitative.Plotly

LABEL_SIDES = {  # plotly's textposition: the label's offset from its marker, in x and y
    "middle right": (1, 0),
    "middle left": (-1, 0),
    "top center": (0, 1),
    "bottom center": (0, -1),
    "top right": (1, 1),
    "top left": (-1, 1),
    "bottom right": (1, -1),
    "bottom left": (-1, -1),
}
CHARACTER_WIDTH, LABEL_HEIGHT = 6, 13  # pixels, at font size 10

Box = tuple[float, float, float, float]
"""left, bottom, right, top, in pixels."""


def label_sides(
    points: Sequence[tuple[float, float]], labels: Sequence[str], joined: Sequence[int], plot_size: tuple[float, float]
) -> list[str]:
    """For each point (in pixels from the plot's lower left corner), the side of its marker where its label
    covers least of the plot's edges, the markers, the lines between consecutive points of the same group
    (`joined` gives each point's group) and the labels already placed. Crowded points choose first."""

    def box(i: int, side: str) -> Box:
        (dx, dy), width = LABEL_SIDES[side], CHARACTER_WIDTH * len(labels[i])
        x, y = points[i]
        left = x + (6 if dx > 0 else -6 - width if dx < 0 else -width / 2)
        bottom = y + (5 if dy > 0 else -5 - LABEL_HEIGHT if dy < 0 else -LABEL_HEIGHT / 2)
        return left, bottom, left + width, bottom + LABEL_HEIGHT

    def overlap(a: Box, b: Box) -> float:
        return max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))

    width, height = plot_size
    edges = [(-1e9, -1e9, 0, 1e9), (width, -1e9, 1e9, 1e9), (-1e9, -1e9, 1e9, 0), (-1e9, height, 1e9, 1e9)]
    obstacles = edges * 10  # a label cut off at the edge is the worst outcome
    obstacles += [(x - 5, y - 5, x + 5, y + 5) for x, y in points]
    for i in range(len(points) - 1):
        if joined[i] == joined[i + 1]:
            obstacles += _line_squares(points[i], points[i + 1])
    crowding = [
        sum(math.exp(-math.dist(points[i], points[j]) / 40) for j in range(len(points)) if j != i)
        for i in range(len(points))
    ]
    chosen: dict[int, str] = {}
    for i in sorted(range(len(points)), key=lambda i: -crowding[i]):
        chosen[i] = min(LABEL_SIDES, key=lambda side: sum(overlap(box(i, side), other) for other in obstacles))
        obstacles.append(box(i, chosen[i]))
    return [chosen[i] for i in range(len(points))]


def _line_squares(start: tuple[float, float], end: tuple[float, float]) -> list[Box]:
    """A line between two points as small squares every 4 pixels."""
    (x0, y0), (x1, y1) = start, end
    steps = max(1, int(math.dist(start, end) / 4))
    along = [s / steps for s in range(steps + 1)]
    centres = [(x0 + t * (x1 - x0), y0 + t * (y1 - y0)) for t in along]
    return [(x - 2, y - 2, x + 2, y + 2) for x, y in centres]


PARETO_SIZE, PARETO_MARGIN, PARETO_GAP = (1000, 500), {"l": 70, "r": 170, "t": 90, "b": 60}, 0.1
PARETO_PANELS = (("fvu", True, "fraction of variance unexplained"), ("absorption", False, "mean absorption rate"))


def plot_pareto(
    rows: Sequence[Mapping[str, Any]],
    *,
    panels: Sequence[tuple[str, bool, str]] = PARETO_PANELS,
    log_x: bool = False,
    title: str | None = None,
) -> go.Figure:
    """Each panel's metric against L0, one line per architecture through its settings, each point labelled
    with its setting. `rows` need architecture, setting, l0 and each panel's key; a `<key>_sd` (and `l0_sd`)
    entry, the spread over seeds, is drawn as an error bar. `panels`: (key, log scale, axis title)."""
    architectures = list(dict.fromkeys(row["architecture"] for row in rows))
    ordered = [
        row
        for name in architectures
        for row in sorted((r for r in rows if r["architecture"] == name), key=lambda r: r["l0"])
    ]
    group = [architectures.index(row["architecture"]) for row in ordered]
    gap = PARETO_GAP if len(panels) > 1 else 0.0
    figure = make_subplots(
        rows=1,
        cols=len(panels),
        horizontal_spacing=gap or None,
        subplot_titles=[title for _, _, title in panels] if len(panels) > 1 else None,
    )
    width = PARETO_SIZE[0] if len(panels) > 1 else PARETO_SIZE[0] * 0.75
    panel_width = (width - PARETO_MARGIN["l"] - PARETO_MARGIN["r"]) * (1 - gap) / len(panels)
    panel_height = PARETO_SIZE[1] - PARETO_MARGIN["t"] - PARETO_MARGIN["b"]
    x = [math.log10(row["l0"]) if log_x else row["l0"] for row in ordered]
    x_range = _padded([min(x), max(x)], panel_width)
    for column, (key, log, axis_title) in enumerate(panels, start=1):
        y = [math.log10(row[key]) if log else row[key] for row in ordered]
        y_range = _padded([min(y), max(y)] if log else [0.0, max(max(y), 0.05)], panel_height, vertical=True)
        pixels = [
            (
                (xi - x_range[0]) / (x_range[1] - x_range[0]) * panel_width,
                (yi - y_range[0]) / (y_range[1] - y_range[0]) * panel_height,
            )
            for xi, yi in zip(x, y)
        ]
        sides = label_sides(pixels, [row["setting"] for row in ordered], group, (panel_width, panel_height))
        for index, name in enumerate(architectures):
            members = [i for i, g in enumerate(group) if g == index]
            rows_here, sides_here = [ordered[i] for i in members], [sides[i] for i in members]
            trace = _architecture_trace(name, rows_here, key, sides_here, index, in_legend=column == 1)
            figure.add_trace(trace, row=1, col=column)
        x_title = "L0 (mean active latents per input)"
        figure.update_xaxes(range=x_range, type="log" if log_x else "linear", title_text=x_title, row=1, col=column)
        figure.update_yaxes(range=y_range, type="log" if log else "linear", title_text=axis_title, row=1, col=column)
    figure.update_layout(title=title, width=width, height=PARETO_SIZE[1], margin=PARETO_MARGIN)
    return figure


def _architecture_trace(
    name: str, rows: Sequence[Mapping[str, Any]], key: str, sides: Sequence[str], index: int, *, in_legend: bool
) -> go.Scatter:
    """One architecture's settings in one panel, in order of L0, each labelled on its chosen side."""
    colour = ARCHITECTURE_COLOURS[index % len(ARCHITECTURE_COLOURS)]
    return go.Scatter(
        x=[row["l0"] for row in rows],
        y=[row[key] for row in rows],
        error_x=_error_bar(rows, "l0_sd"),
        error_y=_error_bar(rows, f"{key}_sd"),
        mode="lines+markers+text",
        name=name,
        legendgroup=name,
        showlegend=in_legend,
        line={"color": colour},
        marker={"size": 8},
        text=[row["setting"] for row in rows],
        textposition=list(sides),
        textfont={"size": 10, "color": colour},
        hovertext=[f"<b>{name}</b>, {row['setting']}" for row in rows],
        hovertemplate="%{hovertext}<br>L0 %{x:.3f}, " + key + " %{y:.4f}<extra></extra>",
    )


def _error_bar(rows: Sequence[Mapping[str, Any]], key: str) -> dict[str, Any] | None:
    """One standard deviation over seeds either side, where the rows carry it."""
    if not all(key in row for row in rows):
        return None
    return {"type": "data", "array": [row[key] for row in rows], "thickness": 1, "width": 3}


def _padded(span: list[float], pixels: float, *, vertical: bool = False) -> list[float]:
    """The span widened to leave room for a label on each side (45 pixels across, 20 up and down)."""
    low, high = span
    room = 20 if vertical else 45
    pad = (high - low or 1.0) * room / max(pixels - 2 * room, 1.0)
    return [low - pad, high + pad]
