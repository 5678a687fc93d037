"""Export an executed notebook to a single HTML file that needs no network.

    python -m tooling.html_export solutions/01_toy_models.ipynb [-o out.html] [--execute]

Figures carry plotly.js inline (see part_utils.plotting.renderer); the template drops the CDN
scripts nbconvert adds by default (MathJax among them). Markdown maths is converted to MathML
at export time by the latex2mathml package, which browsers draw natively, so formulas render
without any script. Raw HTML in markdown (the `<details>` folds of hints and answers, the MathML)
reaches the page as written; embedding images only changes their sources.
"""

import argparse
import re
import sys
from html import unescape
from pathlib import Path

import nbformat
from jinja2 import pass_context
from jinja2.runtime import Context
from latex2mathml.converter import convert as tex_to_mathml
from nbconvert import HTMLExporter
from nbconvert.filters.markdown_mistune import IPythonRenderer, MarkdownWithMath

TEMPLATE = Path(__file__).resolve().parent / "templates" / "offline.html.j2"
CODE = re.compile(r"(```.*?```|`[^`\n]*`)", re.DOTALL)
MATH = re.compile(r"\$\$(?P<display>.+?)\$\$|(?<![\\$])\$(?P<inline>[^\s$](?:[^$\n]*[^\s$])?)\$", re.DOTALL)
IMG_SRC = re.compile(r"(?P<head><img\b[^>]*?\bsrc\s*=\s*)(?P<quote>[\"'])(?P<src>.*?)(?P=quote)", re.I | re.DOTALL)


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


class _SrcOnlyRenderer(IPythonRenderer):
    """nbconvert's markdown renderer, except that embedding images changes `<img src>` and nothing else.

    mistune passes raw HTML on in pieces: a block ends at a blank line, so `<details><summary>…</summary>` comes
    alone, and inline HTML comes one tag at a time (`<math>`, `<mi>`, …). With embed_images, nbconvert rewrites
    each piece through BeautifulSoup, which closes the tags it opens and drops the closing tags it did not see:
    that ends every fold before its contents and empties inline MathML."""

    def _html_embed_images(self, raw_html: str) -> str:
        return IMG_SRC.sub(self._embedded_src, raw_html)

    def _embedded_src(self, match: re.Match[str]) -> str:
        data_url = self._src_to_base64(unescape(match["src"]))
        if data_url is None:  # no such file under the export's folder: the link stays, as nbconvert leaves it
            return match.group(0)
        return f"{match['head']}{match['quote']}{data_url}{match['quote']}"


class OfflineHTMLExporter(HTMLExporter):
    """HTMLExporter whose markdown filter is nbconvert's own with _SrcOnlyRenderer in place of IPythonRenderer."""

    @pass_context
    def markdown2html(self, context: Context, source: str) -> str:
        renderer = _SrcOnlyRenderer(
            escape=False,
            attachments=context.get("cell", {}).get("attachments", {}),
            embed_images=self.embed_images,
            path=context.get("resources", {}).get("metadata", {}).get("path", ""),
            anchor_link_text=self.anchor_link_text,
            exclude_anchor_links=self.exclude_anchor_links,
            **self.lexer_options,
        )
        return MarkdownWithMath(renderer=renderer).render(source)


def export_offline_html(notebook: nbformat.NotebookNode) -> str:
    notebook = nbformat.from_dict(notebook)
    notebook.metadata.pop("widgets", None)
    for cell in notebook.cells:
        if cell.cell_type == "markdown":
            cell.source = markdown_with_mathml(cell.source)
    exporter = OfflineHTMLExporter(template_file=str(TEMPLATE), embed_images=True)
    html, _ = exporter.from_notebook_node(notebook)
    return html


def main(arguments: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Export a notebook to one offline HTML file.")
    parser.add_argument("notebook", type=Path)
    parser.add_argument("-o", "--output", type=Path, help="default: the notebook's name with .html, beside it")
    parser.add_argument(
        "--execute", action="store_true", help="run the notebook first (fast mode with WORKBOOK_FAST=1)"
    )
    args = parser.parse_args(arguments)
    if not args.notebook.is_file():
        parser.error(f"no notebook at {args.notebook}")
    if args.execute:
        import os

        from tooling.notebook_runner import execute_notebook

        result = execute_notebook(args.notebook, fast=os.environ.get("WORKBOOK_FAST", "0") not in ("", "0"))
        if result.error is not None:
            print(f"{args.notebook} failed while running:\n{result.error}", file=sys.stderr)
            return 1
        notebook = result.notebook
    else:
        notebook = nbformat.read(args.notebook, as_version=4)
        if not any(cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code"):
            print(
                f"note: {args.notebook} has no outputs; pass --execute to run it first, or save it after running it.",
                file=sys.stderr,
            )
    output = args.output or args.notebook.with_suffix(".html")
    output.write_text(export_offline_html(notebook))
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
