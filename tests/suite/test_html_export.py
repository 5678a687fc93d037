"""The offline HTML export keeps each hint's markdown inside its folded `<details>` block, with maths as
MathML and images embedded. (The browser test in test_notebooks.py checks the real notebooks.)"""

from html.parser import HTMLParser
from pathlib import Path

import nbformat
import pytest

from tooling.html_export import export_offline_html

HINT = """Before the hint.

<details><summary>Hint: squares</summary>

Square it: $x^2$, or `x.pow(2)` in torch.

- first step
- second step
</details>

After the hint."""

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class Nesting(HTMLParser):
    """The elements open around each piece of text, closing them as a browser would at an end tag."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.open: list[str] = []
        self.texts: list[tuple[str, tuple[str, ...]]] = []
        self.details: list[dict[str, str | None]] = []
        self.image_sources: list[str | None] = []
        self.feed(html)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "details":
            self.details.append(dict(attrs))
        if tag == "img":
            self.image_sources.append(dict(attrs).get("src"))
        if tag not in VOID:
            self.open.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in self.open:  # a stray end tag closes nothing
            while self.open.pop() != tag:
                pass

    def handle_data(self, data: str) -> None:
        if data.strip():
            self.texts.append((data.strip(), tuple(self.open)))

    def around(self, text: str) -> set[str]:
        """The elements open around the first piece of text that is exactly `text`."""
        return next(set(tags) for data, tags in self.texts if data == text)


def exported(markdown: str) -> Nesting:
    return Nesting(export_offline_html(nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(markdown)])))


def test_a_hint_keeps_its_paragraph_list_maths_and_code_inside_its_closed_details_block():
    page = exported(HINT)
    assert page.details == [{}], "one fold, closed at load (no open attribute)"
    assert "summary" in page.around("Hint: squares")
    assert {"details", "p"} <= page.around("Square it:")
    assert {"details", "p", "math", "msup", "mi"} <= page.around("x"), "the maths left the fold or lost its content"
    assert {"details", "p", "math", "msup", "mn"} <= page.around("2")
    assert {"details", "p", "code"} <= page.around("x.pow(2)")
    assert {"details", "ul", "li"} <= page.around("second step")
    assert "details" not in page.around("Before the hint.") | page.around("After the hint.")


def test_images_in_markdown_and_in_raw_html_are_embedded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    (tmp_path / "dot.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    monkeypatch.chdir(tmp_path)  # an in-memory notebook's images are found from the working folder
    page = exported('![a dot](dot.png)\n\n<details><summary>Figure</summary>\n\n<img src="dot.png">\n</details>')
    assert page.image_sources == ["data:image/png;base64,iVBORw0KGgo="] * 2
    assert page.details == [{}]
