"""An offline plotly renderer for JupyterLab, VS Code, Colab and exported HTML.

Plotly's stock renderers either load plotly.js from a CDN (Colab's) or add a MathJax
CDN script, so figures go blank without a network. This renderer sends two
representations of every figure:

- the plotly JSON mimetype, which JupyterLab (through the jupyterlab-plotly extension
  that ships with plotly) and VS Code draw with their own bundled plotly.js;
- HTML with plotly.js inlined, which exported HTML and Colab use. Colab isolates each
  output in its own frame, so there every figure carries plotly.js; elsewhere only the
  first figure of a kernel session does and later ones reuse it.
"""

import json
import sys
from typing import Any

import plotly.io as pio
from plotly.io._base_renderers import MimetypeRenderer

RENDERER_NAME = "workbook_offline"


def _running_in_colab() -> bool:
    return "google.colab" in sys.modules


class OfflineRenderer(MimetypeRenderer):
    def __init__(self) -> None:
        # plotly shallow-copies a renderer for every figure, so the flag lives in a shared dict.
        self.session = {"plotlyjs_sent": False}

    def to_mimebundle(self, fig_dict: dict[str, Any]) -> dict[str, Any]:
        inline_plotlyjs = _running_in_colab() or not self.session["plotlyjs_sent"]
        html = pio.to_html(
            fig_dict,
            include_plotlyjs=inline_plotlyjs,
            include_mathjax=False,
            full_html=False,
            default_width="100%",
            default_height=525,
            validate=False,
        )
        self.session["plotlyjs_sent"] = True
        figure_json = json.loads(pio.to_json(fig_dict, validate=False))
        return {"application/vnd.plotly.v1+json": figure_json, "text/html": html}


def use_offline_renderer() -> None:
    """Make the offline renderer plotly's default (idempotent)."""
    if RENDERER_NAME not in pio.renderers:
        pio.renderers[RENDERER_NAME] = OfflineRenderer()
    pio.renderers.default = RENDERER_NAME
