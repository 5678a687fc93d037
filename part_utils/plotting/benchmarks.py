"""Figures for timing results: a table, and median times with their spread against a swept size."""

from collections.abc import Mapping, Sequence
from typing import Any

import plotly.express as px
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from part_utils.plotting.features import MAX_FIGURE_WIDTH
from part_utils.plotting.tables import HtmlTable, html_table
from part_utils.timing import format_bytes, format_seconds

Row = Mapping[str, Any]
"""One measurement: the fields named by the caller, plus `median`, `q1`, `q3` (seconds),
`runs` and `peak_bytes` (None where it could not be measured)."""


def timing_table(rows: Sequence[Row], keys: Sequence[str], *, title: str) -> HtmlTable:
    """One row per measurement: its `keys`, then median, interquartile range, runs and peak memory."""
    columns: dict[str, list[Any]] = {key: [row[key] for row in rows] for key in keys}
    columns["median"] = [format_seconds(row["median"]) for row in rows]
    columns["IQR"] = [f"{format_seconds(row['q1'])} to {format_seconds(row['q3'])}" for row in rows]
    columns["runs"] = [row["runs"] for row in rows]
    columns["peak memory"] = [
        "n/a" if row["peak_bytes"] is None else f"+{format_bytes(row['peak_bytes'])}" for row in rows
    ]
    return html_table(columns, title=title)


def plot_timings(
    rows: Sequence[Row], *, x: str, series: str, panels: str | None = None, title: str, x_title: str
) -> go.Figure:
    """Median time against `x` on log-log axes, one line per value of `series`, the bars
    spanning the interquartile range; one panel per value of `panels` (e.g. the device)."""
    panel_values = list(dict.fromkeys(row[panels] for row in rows)) if panels else [None]
    series_values = list(dict.fromkeys(row[series] for row in rows))
    colours = dict(zip(series_values, px.colors.qualitative.D3, strict=False))
    figure = make_subplots(
        rows=1, cols=len(panel_values), subplot_titles=[str(panel) for panel in panel_values] if panels else None
    )
    for column, panel in enumerate(panel_values, start=1):
        for name in series_values:
            points = sorted(
                (row for row in rows if row[series] == name and (panels is None or row[panels] == panel)),
                key=lambda row: row[x],
            )
            if not points:
                continue
            medians = [row["median"] * 1e3 for row in points]
            figure.add_trace(
                go.Scatter(
                    x=[row[x] for row in points],
                    y=medians,
                    error_y={
                        "type": "data",
                        "symmetric": False,
                        "array": [row["q3"] * 1e3 - median for row, median in zip(points, medians, strict=True)],
                        "arrayminus": [median - row["q1"] * 1e3 for row, median in zip(points, medians, strict=True)],
                    },
                    mode="lines+markers",
                    name=str(name),
                    legendgroup=str(name),
                    showlegend=column == 1,
                    line={"color": colours[name]},
                    hovertemplate=f"{name}<br>{x} %{{x}}<br>median %{{y:.3g}} ms<extra></extra>",
                ),
                row=1,
                col=column,
            )
    figure.update_xaxes(type="log", title=x_title)
    figure.update_yaxes(type="log", title="median time (ms)", col=1)
    figure.update_yaxes(type="log")
    figure.update_layout(title=title, height=420, width=min(MAX_FIGURE_WIDTH, 150 + 400 * len(panel_values)))
    return figure
