"""Per-neuron stacked bars: which features each neuron of a privileged basis reads."""

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go
from jaxtyping import Float
from plotly.subplots import make_subplots
from torch import Tensor

from part_utils.plotting.features import MAX_FIGURE_WIDTH, FeatureColours, _colour_grid
from part_utils.shapes import expect_shape


def plot_features_in_neurons(
    W: Float[Tensor, "inst neurons feats"],
    *,
    colours: FeatureColours = None,
    title: str | None = None,
    subplot_titles: Sequence[str] | None = None,
    row_height: int = 170,
) -> go.Figure:
    """One row per instance: for each neuron, a bar stacked from |W[neuron, feature]|, one colour per feature.

    Positive weights stack upwards and negative ones downwards. A monosemantic neuron is a
    bar of one colour; a polysemantic one mixes several.
    """
    sizes = expect_shape("W", W, "inst neurons feats", where="plot_features_in_neurons")
    n_inst, n_neurons, n_feats = sizes["inst"], sizes["neurons"], sizes["feats"]
    if subplot_titles is not None and len(subplot_titles) != n_inst:
        raise ValueError(f"plot_features_in_neurons: got {len(subplot_titles)} subplot titles for {n_inst} instances.")
    weights = W.detach().float().cpu().numpy()
    colour_grid = _colour_grid(colours, n_inst, n_feats, where="plot_features_in_neurons")
    figure = make_subplots(
        rows=n_inst,
        cols=1,
        subplot_titles=list(subplot_titles) if subplot_titles else None,
        vertical_spacing=0.4 / n_inst,
    )
    neurons = np.arange(n_neurons)
    for inst in range(n_inst):
        for feature in range(n_feats):
            figure.add_trace(
                go.Bar(
                    x=neurons,
                    y=weights[inst, :, feature],
                    marker_color=colour_grid[inst][feature],
                    name=f"feature {feature}",
                    legendgroup=f"feature {feature}",
                    showlegend=inst == 0 and n_feats <= 20,
                    hovertemplate=f"feature {feature}<br>neuron %{{x}}: %{{y:.2f}}<extra></extra>",
                ),
                row=inst + 1,
                col=1,
            )
    figure.update_layout(
        barmode="relative",
        title=title,
        height=row_height * n_inst + 100,
        width=MAX_FIGURE_WIDTH,
        margin={"t": 70},
        bargap=0.15,
    )
    figure.update_xaxes(tickmode="array", tickvals=neurons.tolist(), title_text="neuron", row=n_inst, col=1)
    return figure
