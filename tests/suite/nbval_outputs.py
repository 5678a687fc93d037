"""A pytest plugin that keeps what nbval's run of each solution notebook printed and drew.

nbval executes every solution notebook once (fast mode, fresh kernel). The determinism test
compares a second, independent run with that one, instead of running each notebook twice
more; when nbval did not run a notebook completely (a subset of the suite was selected),
the test runs it twice itself. pyproject.toml loads this plugin and lists `solutions` before
`tests/suite`, so nbval's runs come first.
"""

from pathlib import Path

import nbformat
import pytest

_OUTPUTS: dict[str, dict[int, tuple[str, list]]] = {}
"""Notebook stem -> cell index -> (cell source, outputs) of each cell nbval ran successfully."""


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    if call.when != "call" or not hasattr(item, "test_outputs") or not hasattr(item, "cell"):
        return
    report = outcome.get_result()
    stem = Path(str(item.fspath)).stem
    if report.passed and item.test_outputs is not None:
        _OUTPUTS.setdefault(stem, {})[item.cell_num] = (item.cell.source, list(item.test_outputs))
    else:
        _OUTPUTS.setdefault(stem, {})[item.cell_num] = (item.cell.source, None)


def nbval_run(notebook_path: Path) -> nbformat.NotebookNode | None:
    """nbval's run of the notebook, as a notebook with outputs, if nbval ran every code cell successfully."""
    recorded = _OUTPUTS.get(notebook_path.stem)
    notebook = nbformat.read(notebook_path, as_version=4)
    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    if recorded is None or len(recorded) != len(code_cells) or any(outputs is None for _, outputs in recorded.values()):
        return None
    for cell, (source, outputs) in zip(code_cells, (recorded[index] for index in sorted(recorded))):
        if cell.source != source:
            return None
        cell.outputs = outputs
    return notebook
