"""Export an executed notebook to a single HTML file that needs no network.

Figures carry plotly.js inline (see part_utils.plotting.renderer); the template drops the
CDN scripts nbconvert adds by default. Markdown maths stays as TeX source.
"""

from pathlib import Path

import nbformat
from nbconvert import HTMLExporter

TEMPLATE = Path(__file__).resolve().parent / "templates" / "offline.html.j2"


def export_offline_html(notebook: nbformat.NotebookNode) -> str:
    notebook = nbformat.from_dict(notebook)
    notebook.metadata.pop("widgets", None)
    exporter = HTMLExporter(template_file=str(TEMPLATE), embed_images=True)
    html, _ = exporter.from_notebook_node(notebook)
    return html
