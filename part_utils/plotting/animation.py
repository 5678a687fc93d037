"""A general animation builder: one figure, one frame per logged training snapshot.

Frames only replace trace data, so every snapshot must produce the same list of traces
(same count, same types, same axes). The builder adds a slider and play/pause buttons and
fixes every axis to the range it needs over the whole animation, so nothing jumps.
"""

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.basedatatypes import BaseTraceType


def build_animation(
    figure: go.Figure,
    frame_traces: Sequence[Sequence[BaseTraceType]],
    frame_labels: Sequence[str],
    *,
    frame_duration_ms: int = 80,
    slider_prefix: str = "step ",
    fix_axes: bool = True,
    axis_padding: float = 0.05,
) -> go.Figure:
    """Turn `figure` (layout and subplots, no data yet) into an animation over `frame_traces`."""
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
    figure.add_traces(list(frame_traces[0]))
    figure.frames = [
        go.Frame(data=list(traces), name=label, traces=list(range(len(traces))))
        for traces, label in zip(frame_traces, frame_labels, strict=True)
    ]
    if fix_axes:
        _fix_axis_ranges(figure, frame_traces, axis_padding)
    play_args = {"frame": {"duration": frame_duration_ms, "redraw": True}, "fromcurrent": True, "transition": {"duration": 0}}
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
                    {"label": label, "method": "animate", "args": [[label], {**pause_args, "frame": {"duration": 0, "redraw": True}}]}
                    for label in frame_labels
                ],
            }
        ],
    )
    return figure


def _fix_axis_ranges(figure: go.Figure, frame_traces: Sequence[Sequence[BaseTraceType]], padding: float) -> None:
    """Give every axis that has no explicit range the span of its data over all frames."""
    spans: dict[str, tuple[float, float]] = {}
    for traces in frame_traces:
        for trace in traces:
            if trace.type not in ("scatter", "scattergl", "bar"):
                continue
            for letter in ("x", "y"):
                values = getattr(trace, letter)
                if values is None:
                    continue
                numeric = np.asarray([v for v in values if v is not None], dtype=float)
                numeric = numeric[np.isfinite(numeric)]
                if numeric.size == 0:
                    continue
                axis = _layout_axis_name(getattr(trace, f"{letter}axis") or letter)
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
