"""The workbook's plotly renderer: offline in JupyterLab, VS Code and exported HTML; light in Colab.

Plotly's stock notebook renderers load plotly.js and MathJax from a CDN, so figures go blank
without a network. Outside Colab this renderer sends two representations of every figure:

- the plotly JSON mimetype, which JupyterLab (through the jupyterlab-plotly extension that
  ships with plotly) and VS Code draw with their own bundled plotly.js;
- HTML with plotly.js inlined, for exported HTML: only the first figure of a kernel session
  carries it, later ones reuse it.

Colab is online by definition and shows each output in its own frame, where an inlined copy
would have to be repeated in every figure (tens of megabytes per notebook). There each
figure is HTML alone that loads plotly.js from its CDN: the browser fetches it once and
serves it from its cache afterwards.

Animations start paused at their first frame everywhere; the play button starts them.
"""

import json
import sys
from typing import Any

import plotly.io as pio
from plotly.io._base_renderers import MimetypeRenderer

RENDERER_NAME = "workbook_offline"
FIGURE_HEIGHT = 525


def running_in_colab() -> bool:
    return "google.colab" in sys.modules


class OfflineRenderer(MimetypeRenderer):
    def __init__(self) -> None:
        # plotly shallow-copies a renderer for every figure, so the flag lives in a shared dict.
        self.session = {"plotlyjs_sent": False}

    def to_mimebundle(self, fig_dict: dict[str, Any]) -> dict[str, Any]:
        if running_in_colab():
            return {"text/html": _figure_html(fig_dict, include_plotlyjs="cdn")}
        html = _figure_html(fig_dict, include_plotlyjs=not self.session["plotlyjs_sent"])
        self.session["plotlyjs_sent"] = True
        figure_json = json.loads(pio.to_json(fig_dict, validate=False))
        return {"application/vnd.plotly.v1+json": figure_json, "text/html": html}


def _figure_html(fig_dict: dict[str, Any], *, include_plotlyjs: bool | str) -> str:
    return pio.to_html(
        fig_dict,
        include_plotlyjs=include_plotlyjs,
        include_mathjax=False,
        full_html=False,
        default_width="100%",
        default_height=FIGURE_HEIGHT,
        validate=False,
        auto_play=False,
    )


def use_offline_renderer() -> None:
    """Make the workbook's renderer plotly's default (idempotent)."""
    if RENDERER_NAME not in pio.renderers:
        pio.renderers[RENDERER_NAME] = OfflineRenderer()
    pio.renderers.default = RENDERER_NAME
