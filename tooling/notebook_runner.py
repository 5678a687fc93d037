"""Execute a notebook headlessly (used by the benchmark and the test suite)."""

import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError


class HeadlessClient(NotebookClient):
    """An nbclient that does not impersonate a widget frontend.

    nbclient's emulation of the Output widget (it echoes captured outputs back to the kernel)
    intermittently loses a cell's completion message when a widget callback displays a large
    output, which stalls execution until the timeout. Without it, what a callback displays
    lands in the cell's outputs, which is also what a static HTML export should show.
    """

    def on_comm_open_jupyter_widget(self, msg: dict) -> None:
        return None


@contextmanager
def temporary_environment(values: Mapping[str, str]) -> Iterator[None]:
    """Set environment variables (a kernel started meanwhile inherits them); restore the old ones after."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@dataclass
class ExecutionResult:
    notebook: nbformat.NotebookNode
    seconds: float
    error: CellExecutionError | None


def execute_notebook(
    path: Path, *, fast: bool, timeout_per_cell: int = 600, stop_on_error: bool = True
) -> ExecutionResult:
    """Run every cell of `path` in a fresh kernel started in the notebook's folder."""
    notebook = nbformat.read(path, as_version=4)
    with temporary_environment({"WORKBOOK_FAST": "1" if fast else "0", "TQDM_DISABLE": "1"}):
        client = HeadlessClient(
            notebook,
            timeout=timeout_per_cell,
            kernel_name="python3",
            resources={"metadata": {"path": str(path.parent)}},
            allow_errors=not stop_on_error,
        )
        start, error = time.perf_counter(), None
        try:
            client.execute()
        except CellExecutionError as exc:
            error = exc
    return ExecutionResult(notebook, time.perf_counter() - start, error)
