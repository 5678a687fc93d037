"""The plotting helpers: shapes named in errors, figure structure, offline rendering."""

import re

import plotly.graph_objects as go
import plotly.io as pio
import pytest
import torch
from plotly.subplots import make_subplots

from part_utils.plotting import animate_features_in_2d, build_animation, plot_features_in_2d, plot_features_in_Nd
from part_utils.plotting.animation import subplot_axes
from part_utils.plotting.pareto import label_sides, plot_pareto
from part_utils.plotting.renderer import RENDERER_NAME, OfflineRenderer
from part_utils.plotting.tables import mean_sd, rows_table


def test_plot_features_in_2d_draws_a_line_and_marker_per_feature():
    W = torch.randn(3, 2, 5)
    figure = plot_features_in_2d(W, colours=torch.rand(3, 5))
    # Per instance a line per feature and one trace of tip markers, then the colour key.
    assert len(figure.data) == 3 * (5 + 1) + 1
    key = figure.data[-1]
    assert key.marker.showscale and key.marker.colorbar.title.text == "importance" and list(key.x) == [None]
    lines = [trace for trace in figure.data if trace.mode == "lines"]
    assert [list(line.x) for line in lines[:1]] == [[0.0, pytest.approx(W[0, 0, 0].item())]]
    assert {trace.xaxis for trace in figure.data} == {"x", "x2", "x3"}


def test_named_colours_get_no_colour_key():
    assert not any(
        getattr(trace.marker, "showscale", False)
        for trace in plot_features_in_2d(torch.randn(2, 2, 4), colours="red").data
    )


def test_plot_features_in_2d_accepts_one_colour_or_a_list():
    assert plot_features_in_2d(torch.randn(2, 2, 4), colours="red").data[0].line.color == "red"
    colours = ["red", "green", "blue", "black"]
    figure = plot_features_in_2d(torch.randn(2, 2, 4), colours=colours)
    assert [trace.line.color for trace in figure.data if trace.mode == "lines"][:4] == colours


@pytest.mark.parametrize(
    ("call", "pattern"),
    [
        (
            lambda: plot_features_in_2d(torch.randn(3, 5)),
            r"plot_features_in_2d: `W` must have shape \[inst, d_hidden=2, feats\], got \(3, 5\)",
        ),
        (lambda: plot_features_in_2d(torch.randn(3, 3, 5)), r"\[inst, d_hidden=2, feats\], got \(3, 3, 5\)"),
        (lambda: plot_features_in_2d([[1.0, 2.0]]), r"must be a torch.Tensor of shape \[inst, d_hidden=2, feats\]"),
        (lambda: plot_features_in_2d(torch.randn(2, 2, 4), colours=torch.rand(3, 4)), r"colours"),
        (lambda: animate_features_in_2d(torch.randn(4, 2, 5), [0, 1, 2, 3]), r"\[snapshots, inst, d_hidden=2, feats\]"),
        (lambda: animate_features_in_2d(torch.randn(4, 1, 2, 5), [0, 1]), r"4 snapshots but 2 steps"),
        (lambda: plot_features_in_Nd(torch.randn(20, 100)), r"\[inst, d_hidden, feats\]"),
    ],
)
def test_wrong_shapes_name_the_expected_shape(call, pattern):
    with pytest.raises((ValueError, TypeError), match=pattern):
        call()


def test_plot_features_in_Nd_colours_norms_by_superposition():
    # Feature 0 and 1 share a direction; feature 2 has a dimension to itself.
    W = torch.tensor([[[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]])
    figure = plot_features_in_Nd(W)
    heatmap = next(trace for trace in figure.data if trace.type == "heatmap")
    bars = next(trace for trace in figure.data if trace.type == "bar")
    assert torch.allclose(torch.tensor(heatmap.z, dtype=torch.float32), W[0].T @ W[0])
    assert list(bars.marker.color) == pytest.approx([1.0, 1.0, 0.0])


def test_animation_has_frames_slider_buttons_and_fixed_axes():
    history = torch.stack([torch.randn(2, 2, 5) * scale for scale in (0.1, 1.0, 3.0)])
    figure = animate_features_in_2d(history, [0, 50, 100])
    frames = figure.to_dict()["frames"]  # what plotly.js receives
    assert [frame["name"] for frame in frames] == ["0", "50", "100"]
    static = sum(1 for trace in figure.data if list(trace.x or []) == [None])  # the colour key stays put
    assert all(len(frame["data"]) == len(figure.data) - static for frame in frames) and static == 1
    assert [step.label for step in figure.layout.sliders[0].steps] == ["0", "50", "100"]
    assert [button.label for button in figure.layout.updatemenus[0].buttons] == ["▶ play", "❚❚ pause"]
    limit = figure.layout.xaxis.range[1]
    assert limit >= history.abs().max().item() and figure.layout.xaxis.range[0] == -limit


def test_build_animation_fixes_each_axis_to_its_span_over_all_frames():
    frames = [[go.Scatter(x=[0, 1], y=[0, step])] for step in (1.0, 5.0, -2.0)]
    figure = build_animation(go.Figure(), frames, ["a", "b", "c"], axis_padding=0.0)
    assert tuple(figure.layout.yaxis.range) == (-2.0, 5.0)
    assert tuple(figure.layout.xaxis.range) == (0.0, 1.0)


@pytest.mark.parametrize(
    ("frames", "labels", "pattern"),
    [
        ([], [], "empty"),
        ([[go.Scatter(x=[1], y=[1])]], ["a", "b"], "1 frames but 2 labels"),
        ([[go.Scatter(x=[1], y=[1])], []], ["a", "b"], "same number of traces"),
    ],
)
def test_build_animation_refuses_inconsistent_frames(frames, labels, pattern):
    with pytest.raises(ValueError, match=pattern):
        build_animation(go.Figure(), frames, labels)


def test_offline_renderer_is_the_default_and_inlines_plotly_once(monkeypatch):
    assert pio.renderers.default == RENDERER_NAME
    renderer = OfflineRenderer()
    figure = plot_features_in_2d(torch.randn(1, 2, 3)).to_dict()
    first, second = renderer.to_mimebundle(figure), renderer.to_mimebundle(figure)
    assert set(first) == {"application/vnd.plotly.v1+json", "text/html"}
    assert len(first["text/html"]) > 1_000_000 > len(second["text/html"])  # plotly.js travels once
    for bundle in (first, second):
        assert not re.search(r"<script[^>]+src=[\"']https?://", bundle["text/html"]), "a CDN script slipped in"
        assert not re.search(r"<script[^>]+src=[^>]*mathjax", bundle["text/html"], re.I)
    monkeypatch.setitem(__import__("sys").modules, "google.colab", object())
    colab = renderer.to_mimebundle(figure)  # Colab: HTML alone, loading plotly.js (cached by the browser)
    assert set(colab) == {"text/html"} and len(colab["text/html"]) < 100_000 and "cdn.plot.ly" in colab["text/html"]


def test_animations_do_not_start_by_themselves():
    html = OfflineRenderer().to_mimebundle(animate_features_in_2d(torch.randn(3, 1, 2, 3), [0, 1, 2]).to_dict())[
        "text/html"
    ]
    assert "Plotly.animate(" not in html.split("Plotly.newPlot(", 1)[1]


def test_plotly_show_path_sends_plotlyjs_only_with_the_first_figure():
    installed = pio.renderers[RENDERER_NAME]
    pio.renderers[RENDERER_NAME] = OfflineRenderer()
    try:
        figure = plot_features_in_2d(torch.randn(1, 2, 3)).to_dict()
        sizes = [len(pio.renderers._build_mime_bundle(figure)["text/html"]) for _ in range(3)]
    finally:
        pio.renderers[RENDERER_NAME] = installed
        pio.renderers.default = RENDERER_NAME
    assert sizes[0] > 1_000_000 > max(sizes[1:])


def test_build_animation_keeps_static_traces_out_of_the_frames():
    figure = go.Figure(go.Scatter(x=[0, 1], y=[0, 1], name="static"))
    frames = [[go.Scatter(x=[0], y=[step])] for step in (1.0, 2.0)]
    figure = build_animation(figure, frames, ["a", "b"])
    assert figure.data[0].name == "static" and len(figure.data) == 2
    assert all(list(frame.traces) == [1] for frame in figure.frames)


def test_plot_features_in_neurons_stacks_one_bar_trace_per_feature():
    from part_utils.plotting.neurons import plot_features_in_neurons

    W = torch.randn(2, 5, 3)
    figure = plot_features_in_neurons(W, colours=torch.rand(3))
    assert len(figure.data) == 2 * 3 and figure.layout.barmode == "relative"
    assert list(figure.data[1].y) == pytest.approx(W[0, :, 1].tolist())
    with pytest.raises(ValueError, match=r"\[inst, neurons, feats\]"):
        plot_features_in_neurons(torch.randn(5, 3))


def test_subplot_axes_name_each_subplots_axes_as_traces_do():
    figure = make_subplots(rows=2, cols=2)
    assert subplot_axes(figure, 1, 1) == ("x", "y") and subplot_axes(figure, 2, 1) == ("x3", "y3")


def test_pareto_labels_every_point_with_its_setting_in_order_of_l0():
    rows = [
        {"architecture": name, "setting": f"k={k}", "l0": k + offset, "fvu": 0.1 / k, "absorption": 0.3 / k}
        for name, offset in (("A", 0.0), ("B", 0.1))
        for k in (3, 1, 2)
    ]
    figure = plot_pareto(rows)
    assert isinstance(figure, go.Figure) and len(figure.data) == 4  # two architectures in each of two panels
    assert all(list(trace.text) == ["k=1", "k=2", "k=3"] for trace in figure.data)
    assert [trace.showlegend for trace in figure.data] == [True, True, False, False]


def test_pareto_draws_chosen_panels_log_axes_and_error_bars():
    rows = [
        {"architecture": name, "setting": f"k={k}", "l0": k, "l0_sd": 0.1, "fvu": 0.1 / k, "fvu_sd": 0.01}
        for name in ("A", "B")
        for k in (1, 2, 4)
    ]
    figure = plot_pareto(rows, panels=[("fvu", True, "FVU")], log_x=True)
    assert len(figure.data) == 2 and figure.layout.xaxis.type == "log" and figure.layout.yaxis.type == "log"
    assert list(figure.data[0].error_y.array) == [0.01] * 3 and list(figure.data[0].error_x.array) == [0.1] * 3
    without_spread = [{key: value for key, value in row.items() if not key.endswith("_sd")} for row in rows]
    assert plot_pareto(without_spread, panels=[("fvu", True, "FVU")]).data[0].error_y.array is None


def test_label_sides_move_labels_off_each_other_and_off_the_edges():
    sides = label_sides([(100, 100), (106, 100)], ["λ=0.035", "λ=0.04"], [0, 1], (400, 300))
    assert sides[0] != sides[1]
    assert "left" not in label_sides([(2, 150)], ["k=1"], [0], (400, 300))[0]  # at the left edge: label to the right


def test_rows_table_shows_labels_means_with_spreads_and_computed_columns():
    rows = [
        {"architecture": "TopK", "setting": "k=1", "d_sae": 40, "l0": 1, "l0_sd": 0.25, "fvu": 0.0123, "fvu_sd": 1e-3},
        {"architecture": "L1", "setting": "λ=0.1", "d_sae": 40, "l0": 2.5, "l0_sd": 0.0, "fvu": 0.5, "fvu_sd": 0.05},
    ]
    columns = [("L0", "l0", ".2f"), ("FVU", "fvu", ".4f")]
    table = rows_table(rows, columns, title="t", after={"twice": lambda row: 2 * row["l0"]})
    assert list(table.columns) == ["architecture", "setting", "d_sae", "L0", "FVU", "twice"]
    assert table.columns["L0"] == ["1.00 ± 0.25", "2.50 ± 0.00"] and table.columns["FVU"][0] == "0.0123 ± 0.0010"
    assert table.columns["twice"] == [2.0, 5.0] and table.title == "t"
    assert list(rows_table(rows, [("L0", "l0", ".1f")], title="t", labels=("setting",)).columns) == ["setting", "L0"]
    assert mean_sd(rows[0], "l0") == "1.000 ± 0.250"
