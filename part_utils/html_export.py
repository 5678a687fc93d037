"""Export an executed notebook to a single HTML file that needs no network.

    python -m part_utils.html_export solutions/01_toy_models.ipynb [-o out.html] [--execute]

Figures carry plotly.js inline (see part_utils.plotting.renderer); the template drops the CDN
scripts nbconvert adds by default (MathJax among them). Markdown maths is converted to MathML
at export time by the latex2mathml package, which browsers draw natively, so formulas render
without any script.
"""

import argparse
import re
import sys
from pathlib import Path

import nbformat
from latex2mathml.converter import convert as tex_to_mathml
from nbconvert import HTMLExporter

TEMPLATE = Path(__file__).resolve().parent / "templates" / "offline.html.j2"
CODE = re.compile(r"(```.*?```|`[^`\n]*`)", re.DOTALL)
MATH = re.compile(r"\$\$(?P<display>.+?)\$\$|(?<![\\$])\$(?P<inline>[^\s$](?:[^$\n]*[^\s$])?)\$", re.DOTALL)


def markdown_with_mathml(markdown: str) -> str:
    """Replace `$…$` and `$$…$$` outside code with MathML; leave code spans and fences untouched."""
    pieces = CODE.split(markdown)
    return "".join(piece if index % 2 else MATH.sub(_mathml, piece) for index, piece in enumerate(pieces))


def _mathml(match: re.Match[str]) -> str:
    display = match.group("display") is not None
    tex = (match.group("display") if display else match.group("inline")).strip()
    try:
        mathml = tex_to_mathml(tex, display="block" if display else "inline")
    except Exception:  # an expression latex2mathml cannot parse stays readable as TeX
        return match.group(0)
    return f'<div class="math-display">{mathml}</div>' if display else mathml


def export_offline_html(notebook: nbformat.NotebookNode) -> str:
    notebook = nbformat.from_dict(notebook)
    notebook.metadata.pop("widgets", None)
    for cell in notebook.cells:
        if cell.cell_type == "markdown":
            cell.source = markdown_with_mathml(cell.source)
    exporter = HTMLExporter(template_file=str(TEMPLATE), embed_images=True)
    html, _ = exporter.from_notebook_node(notebook)
    return html


def main(arguments: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Export a notebook to one offline HTML file.")
    parser.add_argument("notebook", type=Path)
    parser.add_argument("-o", "--output", type=Path, help="default: the notebook's name with .html, beside it")
    parser.add_argument("--execute", action="store_true", help="run the notebook first (fast mode with WORKBOOK_FAST=1)")
    args = parser.parse_args(arguments)
    if not args.notebook.is_file():
        parser.error(f"no notebook at {args.notebook}")
    if args.execute:
        import os

        from part_utils.notebook_runner import execute_notebook

        result = execute_notebook(args.notebook, fast=os.environ.get("WORKBOOK_FAST", "0") not in ("", "0"))
        if result.error is not None:
            print(f"{args.notebook} failed while running:\n{result.error}", file=sys.stderr)
            return 1
        notebook = result.notebook
    else:
        notebook = nbformat.read(args.notebook, as_version=4)
        if not any(cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code"):
            print(f"note: {args.notebook} has no outputs; pass --execute to run it first, or save it after running it.", file=sys.stderr)
    output = args.output or args.notebook.with_suffix(".html")
    output.write_text(export_offline_html(notebook))
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
