"""Views of one SAE latent on a token sequence model: top examples in context, and a dashboard."""

import html
from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go
from jaxtyping import Float, Int
from plotly.subplots import make_subplots
from torch import Tensor

from part_utils.plotting.features import MAX_FIGURE_WIDTH

Example = tuple[str, int, float]
"""(text, position of the activation in it, activation)."""


def _highlighted(text: str, position: int, shade: float) -> str:
    cells = []
    for i, character in enumerate(text):
        style = "padding:1px 3px;font-family:monospace;font-size:15px;"
        if i == position:
            style += (
                f"background:rgba(230,57,70,{0.25 + 0.75 * shade:.2f});color:white;border-radius:3px;font-weight:bold;"
            )
        cells.append(f'<span style="{style}">{html.escape(character)}</span>')
    return "".join(cells)


def max_activating_html(texts: Sequence[str], examples: Sequence[tuple[int, int, float]], *, title: str) -> str:
    """An inline-styled HTML table (no scripts, renders offline) of a latent's top examples."""
    top = max((value for _, _, value in examples), default=1.0) or 1.0
    rows = []
    for text_index, position, value in examples:
        text = texts[text_index]
        following = html.escape(text[position + 1]) if position + 1 < len(text) else "—"
        rows.append(
            f"<tr><td style='text-align:right;padding:2px 10px'>{value:.3f}</td>"
            f"<td style='padding:2px 10px'>{_highlighted(text, position, value / top)}</td>"
            f"<td style='text-align:center;padding:2px 10px'>{position}</td>"
            f"<td style='text-align:center;padding:2px 10px;font-family:monospace'>{following}</td></tr>"
        )
    header = "<tr><th>activation</th><th>string (position highlighted)</th><th>position</th><th>next token</th></tr>"
    return (
        f"<div><b>{html.escape(title)}</b><table style='border-collapse:collapse'>{header}{''.join(rows)}</table></div>"
    )


def latent_dashboard(
    latent: int,
    activations: Float[Tensor, "strings pos"],
    next_tokens: Int[Tensor, "strings pos"],
    vocabulary: Sequence[str],
    logit_effect: Float[Tensor, " d_vocab"],
    examples: Sequence[Example],
    *,
    n_logits: int = 8,
) -> go.Figure:
    """Firing frequency, activation histogram, where it fires, direct-path logits and top examples."""
    acts = activations.numpy()
    fired = acts > 0
    frequency = fired.mean()
    figure = make_subplots(
        rows=2,
        cols=3,
        specs=[[{}, {}, {}], [{"type": "table", "colspan": 3}, None, None]],
        subplot_titles=[
            "non-zero activations",
            "where it fires: position, next token",
            f"direct path: top {n_logits} logits raised",
        ],
        row_heights=[0.55, 0.45],
        vertical_spacing=0.12,
        horizontal_spacing=0.14,  # room for the heatmap's colour bar between it and the logits
    )
    figure.add_trace(go.Histogram(x=acts[fired], nbinsx=30, marker_color="#457b9d", showlegend=False), row=1, col=1)

    mass = np.zeros((acts.shape[1], len(vocabulary)))
    np.add.at(mass, (np.broadcast_to(np.arange(acts.shape[1]), acts.shape), next_tokens.numpy()), acts)
    figure.add_trace(
        go.Heatmap(
            z=mass / max(mass.sum(), 1e-12),
            x=list(vocabulary),
            y=[f"pos {p}" for p in range(acts.shape[1])],
            colorscale="Reds",
            colorbar={
                "title": {"text": "share of<br>activation"},
                "len": 0.5,
                "y": 1.0,
                "yanchor": "top",
                "x": figure.layout.xaxis2.domain[1] + 0.01,
                "thickness": 10,
            },
            hovertemplate="%{y}, next token %{x}: %{z:.1%}<extra></extra>",
        ),
        row=1,
        col=2,
    )
    # Every next token labelled (plotly thins crowded category labels), small and upright.
    figure.update_xaxes(
        tickmode="array",
        tickvals=list(vocabulary),
        ticktext=list(vocabulary),
        tickangle=0,
        tickfont={"size": 8},
        title_text="next token",
        row=1,
        col=2,
    )

    order = logit_effect.argsort(descending=True)[:n_logits].tolist()
    figure.add_trace(
        go.Bar(
            x=[vocabulary[t] for t in order], y=logit_effect[order].numpy(), marker_color="#2a9d8f", showlegend=False
        ),
        row=1,
        col=3,
    )
    figure.add_trace(
        go.Table(
            header={"values": ["activation", "string", "position", "next token"]},
            cells={
                "values": [
                    [f"{value:.3f}" for _, _, value in examples],
                    [f"{text[:position]}[{text[position]}]{text[position + 1 :]}" for text, position, _ in examples],
                    [position for _, position, _ in examples],
                    [text[position + 1] if position + 1 < len(text) else "—" for text, position, _ in examples],
                ]
            },
        ),
        row=2,
        col=1,
    )
    figure.update_layout(
        title=f"Latent {latent}: fires on {frequency:.2%} of tokens",
        height=620,
        width=min(MAX_FIGURE_WIDTH, 1000),
        margin={"t": 80, "b": 10},
    )
    return figure
