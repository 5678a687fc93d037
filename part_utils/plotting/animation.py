"""A general animation builder: one figure, one frame per logged training snapshot.

Frames only replace trace data, so every snapshot must produce the same list of traces
(same count, same types, same axes). A frame may carry only what changes (say x and y):
plotly.js merges it into the trace, so colours and names set in the first frame persist.
The builder adds a slider and play/pause buttons and fixes every axis to the range it
needs over the whole animation, so nothing jumps.

Traces may be plotly objects or plain dicts. Frames are assembled as plain data and the
figure is built without plotly's per-property validation, which would otherwise take tens
of seconds for a few thousand animated traces.
"""

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.basedatatypes import BaseTraceType

Trace = BaseTraceType | Mapping[str, Any]


def build_animation(
    figure: go.Figure,
    frame_traces: Sequence[Sequence[Trace]],
    frame_labels: Sequence[str],
    *,
    frame_duration_ms: int = 80,
    slider_prefix: str = "step ",
    fix_axes: bool = True,
    axis_padding: float = 0.05,
) -> go.Figure:
    """Turn `figure` (layout, subplots and any static traces) into an animation over `frame_traces`.

    Traces already in `figure` stay fixed (e.g. reference lines); frames replace the rest.
    """
    if len(frame_traces) == 0:
        raise ValueError("build_animation: `frame_traces` is empty; log at least one snapshot.")
    if len(frame_traces) != len(frame_labels):
        raise ValueError(
            f"build_animation: got {len(frame_traces)} frames but {len(frame_labels)} labels; give one label per frame."
        )
    trace_counts = {len(traces) for traces in frame_traces}
    if len(trace_counts) != 1:
        raise ValueError(
            f"build_animation: every frame must have the same number of traces, got counts {sorted(trace_counts)}."
        )
    frames = [[_as_dict(trace) for trace in traces] for traces in frame_traces]
    if fix_axes:
        _fix_axis_ranges(figure, frames, axis_padding)
    _add_controls(figure, frame_labels, frame_duration_ms, slider_prefix)
    first_animated = len(figure.data)
    animated = list(range(first_animated, first_animated + len(frames[0])))
    spec = figure.to_dict()
    spec["data"] = spec["data"] + frames[0]
    animation = go.Figure(spec, _validate=False)
    animation.frames = [go.Frame(name=label, traces=animated) for label in frame_labels]
    for frame, traces in zip(animation.frames, frames, strict=True):
        frame._props["data"] = traces  # plain dicts: plotly serialises `_props` as they are
    return animation


def _as_dict(trace: Trace) -> dict[str, Any]:
    if isinstance(trace, BaseTraceType):
        return trace.to_plotly_json()
    return dict(trace)


def _add_controls(figure: go.Figure, frame_labels: Sequence[str], frame_duration_ms: int, slider_prefix: str) -> None:
    play_args = {
        "frame": {"duration": frame_duration_ms, "redraw": True},
        "fromcurrent": True,
        "transition": {"duration": 0},
    }
    pause_args = {"frame": {"duration": 0, "redraw": False}, "mode": "immediate", "transition": {"duration": 0}}
    figure.update_layout(
        updatemenus=[
            {
                "type": "buttons",
                "direction": "left",
                "x": 0.0,
                "y": 0.0,
                "xanchor": "right",
                "yanchor": "top",
                "pad": {"r": 10, "t": 40},
                "buttons": [
                    {"label": "▶ play", "method": "animate", "args": [None, play_args]},
                    {"label": "❚❚ pause", "method": "animate", "args": [[None], pause_args]},
                ],
            }
        ],
        sliders=[
            {
                "active": 0,
                "x": 0.0,
                "y": 0.0,
                "len": 1.0,
                "pad": {"t": 30},
                "currentvalue": {"prefix": slider_prefix},
                "steps": [
                    {
                        "label": label,
                        "method": "animate",
                        "args": [[label], {**pause_args, "frame": {"duration": 0, "redraw": True}}],
                    }
                    for label in frame_labels
                ],
            }
        ],
    )


def _fix_axis_ranges(figure: go.Figure, frames: Sequence[Sequence[Mapping[str, Any]]], padding: float) -> None:
    """Give every axis that has no explicit range the span of its data over all frames."""
    spans: dict[str, tuple[float, float]] = {}
    for traces in frames:
        for trace in traces:
            if trace.get("type", "scatter") not in ("scatter", "scattergl", "bar"):
                continue
            for letter in ("x", "y"):
                values = trace.get(letter)
                if values is None:
                    continue
                numeric = np.asarray([v for v in values if v is not None], dtype=float)
                numeric = numeric[np.isfinite(numeric)]
                if numeric.size == 0:
                    continue
                axis = _layout_axis_name(trace.get(f"{letter}axis") or letter)
                low, high = spans.get(axis, (np.inf, -np.inf))
                spans[axis] = (min(low, float(numeric.min())), max(high, float(numeric.max())))
    for axis, (low, high) in spans.items():
        if figure.layout[axis].range is not None:
            continue
        margin = padding * max(high - low, 1e-9)
        figure.layout[axis].update(range=[low - margin, high + margin], autorange=False)


def _layout_axis_name(trace_axis: str) -> str:
    """'x' -> 'xaxis', 'y3' -> 'yaxis3'."""
    return f"{trace_axis[0]}axis{trace_axis[1:]}"


def subplot_axes(figure: go.Figure, row: int, column: int) -> tuple[str, str]:
    """The axis names a trace uses to sit in a subplot ("x3", "y3"): frames given as plain dicts need them."""
    subplot = figure.get_subplot(row, column)
    return subplot.xaxis.plotly_name.replace("axis", ""), subplot.yaxis.plotly_name.replace("axis", "")
