"""Wall time of each solution notebook in a fresh kernel, quiet and beside a busy process, with
its slowest cell (`bench` without `--skip-notebooks`)."""

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import nbformat

from tooling.bench.neighbour import busy_neighbour
from tooling.notebook_runner import execute_notebook

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class NotebookTiming:
    seconds: float
    slowest_cell: int
    slowest_seconds: float
    long_cells: tuple[tuple[int, float, str], ...]
    """Cells over LONG_CELL seconds: (index among code cells, seconds, first line)."""


LONG_CELL = 5.0  # seconds: a cell that runs longer shows a progress bar


def cell_seconds(cell: nbformat.NotebookNode) -> float:
    """How long a cell ran, from the timestamps the kernel client records."""
    timing = cell.get("metadata", {}).get("execution", {})
    start, end = timing.get("iopub.execute_input"), timing.get("shell.execute_reply")
    if not (start and end):
        return 0.0
    return (
        datetime.fromisoformat(end.replace("Z", "+00:00")) - datetime.fromisoformat(start.replace("Z", "+00:00"))
    ).total_seconds()


def time_notebook(part: str, *, fast: bool, busy: bool = False) -> NotebookTiming:
    path = ROOT / "solutions" / f"{part}.ipynb"
    if busy:
        with busy_neighbour():
            result = execute_notebook(path, fast=fast)
    else:
        result = execute_notebook(path, fast=fast)
    if result.error is not None:
        raise RuntimeError(f"{part} failed in {'fast' if fast else 'full'} mode:\n{result.error}")
    code_cells = [cell for cell in result.notebook.cells if cell.cell_type == "code"]
    seconds = [cell_seconds(cell) for cell in code_cells]
    slowest = max(range(len(seconds)), key=seconds.__getitem__)
    long_cells = tuple(
        (i, s, code_cells[i].source.strip().splitlines()[0][:70]) for i, s in enumerate(seconds) if s > LONG_CELL
    )
    return NotebookTiming(result.seconds, slowest, seconds[slowest], long_cells)


def solution_parts(prefixes: list[str] | None = None) -> list[str]:
    parts = sorted(path.stem for path in (ROOT / "solutions").glob("[0-9][0-9]_*.ipynb"))
    return [part for part in parts if not prefixes or part[:2] in prefixes]


def print_notebook_timings(parts: list[str], *, full: bool, contended: bool) -> None:
    header = f"  {'notebook':<24}{'mode':<6}{'quiet':>9}{'slowest cell':>16}" + (
        f"{'busy':>9}{'ratio':>7}" if contended else ""
    )
    print(header)
    total = 0.0
    for part in parts:
        for fast in [False, True] if full else [True]:
            quiet = time_notebook(part, fast=fast)
            total += quiet.seconds if not fast else 0.0
            slowest = f"cell {quiet.slowest_cell}: {quiet.slowest_seconds:.1f}s"
            line = f"  {part:<24}{'fast' if fast else 'full':<6}{quiet.seconds:>8.1f}s{slowest:>16}"
            if contended:
                busy = time_notebook(part, fast=fast, busy=True)
                line += f"{busy.seconds:>8.1f}s{busy.seconds / quiet.seconds:>7.2f}"
            print(line, flush=True)
            for index, cell_time, first_line in quiet.long_cells:
                print(f"      cell {index:>3} {cell_time:6.1f}s  {first_line}")
    if full:
        print(f"  all notebooks in full mode, quiet: {total:.0f} s")
