"""Tables as plain HTML: they size to their content (a plotly table reserves a fixed height and
leaves blank space below short ones), render in JupyterLab, Colab and exported HTML alike, and
need no script."""

import html
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from IPython.display import display

STYLE = (
    "border-collapse:collapse;font-family:sans-serif;font-size:13px;margin:4px 0 12px 0",
    "text-align:left;padding:3px 10px;border-bottom:1px solid #999;background:#f3f3f3",
    "text-align:left;padding:3px 10px;border-bottom:1px solid #e4e4e4",
)


class HtmlTable:
    """A titled table; `.show()` displays it, and a notebook displays it as the cell's value too."""

    def __init__(self, columns: Mapping[str, Sequence[Any]], *, title: str | None = None) -> None:
        lengths = {len(values) for values in columns.values()}
        if len(lengths) > 1:
            raise ValueError(f"every column needs the same number of rows, got lengths {sorted(lengths)}")
        self.columns = {name: list(values) for name, values in columns.items()}
        self.title = title

    @property
    def n_rows(self) -> int:
        return len(next(iter(self.columns.values()), []))

    def _repr_html_(self) -> str:
        table_style, header_style, cell_style = STYLE
        header = "".join(f"<th style='{header_style}'>{html.escape(str(name))}</th>" for name in self.columns)
        rows = "".join(
            "<tr>"
            + "".join(
                f"<td style='{cell_style}'>{html.escape(str(values[row]))}</td>" for values in self.columns.values()
            )
            + "</tr>"
            for row in range(self.n_rows)
        )
        caption = (
            f"<div style='font-family:sans-serif;font-size:15px;margin-top:8px'><b>{html.escape(self.title)}</b></div>"
            if self.title
            else ""
        )
        return (
            f"{caption}<table class='workbook-table' style='{table_style}'>"
            f"<thead><tr>{header}</tr></thead><tbody>{rows}</tbody></table>"
        )

    def show(self) -> None:
        display(self)


def html_table(columns: Mapping[str, Sequence[Any]], *, title: str | None = None) -> HtmlTable:
    return HtmlTable(columns, title=title)


Column = tuple[str, str, str]
"""(header, key, format) of a column that shows each row's mean over seeds ± their standard deviation."""


def mean_sd(row: Mapping[str, Any], key: str, fmt: str = ".3f") -> str:
    """A table cell: row[key], a mean over seeds, ± row[key + "_sd"], their standard deviation."""
    return f"{row[key]:{fmt}} ± {row[key + '_sd']:{fmt}}"


def rows_table(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[Column],
    *,
    title: str,
    labels: Sequence[str] = ("architecture", "setting", "d_sae"),
    after: Mapping[str, Callable[[Mapping[str, Any]], Any]] | None = None,
) -> HtmlTable:
    """One line per row: the row's `labels` as they are, each (header, key, format) column as mean ± spread,
    then the `after` columns, each cell computed from its row."""
    return html_table(
        {
            **{label: [row[label] for row in rows] for label in labels},
            **{header: [mean_sd(row, key, fmt) for row in rows] for header, key, fmt in columns},
            **{header: [cell(row) for row in rows] for header, cell in (after or {}).items()},
        },
        title=title,
    )
