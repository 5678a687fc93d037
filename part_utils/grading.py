"""Which exercises of a notebook pass their checks: for a learner (`workbook.py progress`) and for
an instructor over a folder of submissions (`workbook.py grade DIR`).

A notebook is executed in fast mode in a fresh kernel, from its first cell to its last check
cell (later cells cannot change a verdict), with errors allowed so that one failing exercise
does not hide the next. Every check call in the workbook's own exercise notebook
(`checks.test_...(...)` lines) is an exercise; its verdict is read from the cell's output: the
pass line, or the check's one-line message. A submission runs in a scratch folder, under a
time limit, with network connections refused, and its own code is scanned for imports of the
reference implementation; a crash, a hang or such an import is reported, never stops the grading.
"""

import ast
import csv
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
from nbclient.exceptions import CellTimeoutError, DeadKernelError

from part_utils.notebook_runner import HeadlessClient

ROOT = Path(__file__).resolve().parent.parent
EXERCISES = ROOT / "notebooks"
"""The workbook's own exercise notebooks: which checks each part has, and what it imports."""
CHECK_CALL = re.compile(r"^checks\w*\.(test_\w+)\(", re.MULTILINE)
ANSI = re.compile(r"\x1b\[[0-9;]*m")
PASS, FAIL, STUB, ERROR, NOT_RUN = "pass", "fail", "not implemented", "error", "not run"
FORBIDDEN_IMPORTS = ("part_utils.reference", "solutions", "socket", "urllib", "requests", "http")
NETWORK_GUARD = '''
import socket as _socket
def _refuse(*args, **kwargs):
    raise OSError("network access is disabled while grading")
_socket.socket.connect = _refuse
_socket.create_connection = _refuse
del _socket, _refuse
'''


@dataclass(frozen=True)
class Exercise:
    part: str
    check: str
    """The check function, e.g. `test_forward`."""
    title: str
    """The exercise heading above it, e.g. "Exercise 4: `forward`"."""
    cell_source: str
    position: int
    """Which check call of its cell this is (a cell may call two checks)."""


@dataclass
class Verdict:
    exercise: Exercise
    status: str
    message: str = ""


@dataclass
class SubmissionResult:
    path: Path
    part: str
    verdicts: list[Verdict]
    problems: list[str] = field(default_factory=list)
    """Crash, time limit, forbidden imports: what the grader noticed beyond the checks."""
    seconds: float = 0.0

    @property
    def passed(self) -> int:
        return sum(verdict.status == PASS for verdict in self.verdicts)


def exercises_of(part: str, catalogue: Path = EXERCISES) -> list[Exercise]:
    """The checked exercises of a part, read from the workbook's own exercise notebook."""
    notebook = nbformat.read(catalogue / f"{part}.ipynb", as_version=4)
    exercises, title = [], ""
    for cell in notebook.cells:
        if cell.cell_type == "markdown":
            heading = re.search(r"^#+\s*(Exercise[^\n]*)", cell.source, re.MULTILINE)
            title = heading.group(1).strip() if heading else title
            continue
        for position, match in enumerate(CHECK_CALL.finditer(cell.source)):
            exercises.append(Exercise(part, match.group(1), title or match.group(1), cell.source.strip(), position))
    return exercises


def part_of(path: Path, catalogue: Path = EXERCISES) -> str | None:
    """The part a notebook belongs to, from the `NN_name` in its file name."""
    parts = {source.stem for source in catalogue.glob("[0-9][0-9]_*.ipynb")}
    return next((part for part in sorted(parts) if part in path.name), None)


def imported_modules(notebook: nbformat.NotebookNode) -> set[str]:
    """Every module the notebook's code cells import (shell and magic lines skipped)."""
    found = set()
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        try:
            tree = ast.parse("\n".join(line for line in cell.source.splitlines() if not line.lstrip().startswith(("%", "!"))))
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                found.add(node.module)
    return found


def forbidden_imports(notebook: nbformat.NotebookNode, part: str, catalogue: Path = EXERCISES) -> list[str]:
    """Imports of the reference implementation or of network modules that the workbook's own
    exercise notebook does not make (later parts legitimately import earlier parts' references)."""
    allowed = imported_modules(nbformat.read(catalogue / f"{part}.ipynb", as_version=4))
    return sorted(
        name
        for name in imported_modules(notebook) - allowed
        if any(name == bad or name.startswith(bad + ".") for bad in FORBIDDEN_IMPORTS)
    )


def grade_notebook(path: Path, part: str | None = None, *, time_limit: float = 300.0, catalogue: Path = EXERCISES) -> SubmissionResult:
    part = part or part_of(path, catalogue)
    if part is None:
        raise ValueError(f"{path.name}: cannot tell which part it is (its name should contain e.g. 04_toy_sae)")
    exercises = exercises_of(part, catalogue)
    notebook = nbformat.read(path, as_version=4)
    result = SubmissionResult(path, part, [])
    bad = forbidden_imports(notebook, part, catalogue)
    if bad:
        result.problems.append(f"imports {', '.join(bad)}")
    outputs, problem, result.seconds = _execute_until_last_check(notebook, exercises, time_limit)
    if problem:
        result.problems.append(problem)
    result.verdicts = [_verdict(exercise, outputs.get(exercise.cell_source)) for exercise in exercises]
    return result


def _execute_until_last_check(
    notebook: nbformat.NotebookNode, exercises: list[Exercise], time_limit: float
) -> tuple[dict[str, list], str, float]:
    """Run cells up to the last check cell; return each check cell's outputs (by source), a problem, seconds."""
    check_sources = {exercise.cell_source for exercise in exercises}
    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    last = max((i for i, cell in enumerate(code_cells) if cell.source.strip() in check_sources), default=-1)
    guard = nbformat.v4.new_code_cell(NETWORK_GUARD)
    run = nbformat.v4.new_notebook(cells=[guard, *code_cells[: last + 1]], metadata=notebook.metadata)
    outputs: dict[str, list] = {}
    start, problem = time.perf_counter(), ""
    with tempfile.TemporaryDirectory(prefix="workbook-grading-") as scratch:
        client = HeadlessClient(run, timeout=int(time_limit), kernel_name="python3", allow_errors=True, resources={"metadata": {"path": scratch}})
        environment = {"WORKBOOK_FAST": "1", "TQDM_DISABLE": "1", "WORKBOOK_ROOT": str(ROOT), "no_proxy": "*", "http_proxy": "http://0.0.0.0:9", "https_proxy": "http://0.0.0.0:9"}
        try:
            with _environment(environment), client.setup_kernel():
                for index, cell in enumerate(run.cells):
                    remaining = time_limit - (time.perf_counter() - start)
                    if remaining <= 0:
                        problem = f"stopped at the time limit ({time_limit:.0f} s)"
                        break
                    client.timeout = max(1, int(remaining))
                    try:
                        client.execute_cell(cell, index)
                    except CellTimeoutError:
                        problem = f"stopped at the time limit ({time_limit:.0f} s)"
                        break
                    if cell.source.strip() in check_sources:
                        outputs[cell.source.strip()] = cell.outputs
        except DeadKernelError:
            problem = "the kernel died (the notebook crashed Python)"
        except Exception as error:  # a broken notebook must not stop the grading of the others
            problem = f"could not run: {type(error).__name__}: {error}"
    return outputs, problem, time.perf_counter() - start


class _environment:
    """Set environment variables for the kernel the client starts, and restore them after."""

    def __init__(self, values: dict[str, str]) -> None:
        self.values, self.saved = values, {}

    def __enter__(self) -> None:
        import os

        self.saved = {name: os.environ.get(name) for name in self.values}
        os.environ.update(self.values)

    def __exit__(self, *exc: object) -> None:
        import os

        for name, value in self.saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _verdict(exercise: Exercise, outputs: list | None) -> Verdict:
    if outputs is None:
        return Verdict(exercise, NOT_RUN, "its check cell was not reached, or was changed")
    passes = sum(line.startswith("✔") for output in outputs if output.get("output_type") == "stream" for line in output.get("text", "").splitlines())
    if exercise.position < passes:
        return Verdict(exercise, PASS)
    error = next((output for output in outputs if output.get("output_type") == "error"), None)
    if error is None or exercise.position > passes:
        return Verdict(exercise, NOT_RUN, "an earlier check in the same cell failed")
    message = ANSI.sub("", error.get("evalue", "")).strip().lstrip("✘ ").strip()
    if error.get("ename") == "NotImplementedYet":
        return Verdict(exercise, STUB, message)
    if error.get("ename") == "CheckFailure":
        return Verdict(exercise, FAIL, message)
    return Verdict(exercise, ERROR, f"{error.get('ename')}: {message}")


SYMBOL = {PASS: "✔", FAIL: "✘", STUB: "·", ERROR: "!", NOT_RUN: "–"}


def progress_table(results: list[SubmissionResult]) -> str:
    """Per part, each exercise's status and, where it fails, the check's one-line message."""
    lines = []
    for result in results:
        lines.append(f"\n{result.part}: {result.passed}/{len(result.verdicts)} exercises pass ({result.seconds:.0f} s)")
        lines += [f"  ! {problem}" for problem in result.problems]
        for verdict in result.verdicts:
            detail = f": {verdict.message}" if verdict.message and verdict.status != PASS else ""
            lines.append(f"  {SYMBOL[verdict.status]} {verdict.exercise.title} ({verdict.exercise.check}){detail}")
    return "\n".join(lines)


def learner_of(path: Path, folder: Path, part: str) -> str:
    """A submission's learner: its subfolder, or its file name without the part's name."""
    relative = path.relative_to(folder)
    if len(relative.parts) > 1:
        return relative.parts[0]
    name = path.stem.replace(part, "").strip(" _-.")
    return name or path.stem


def write_grades(results: dict[str, list[SubmissionResult]], out_dir: Path) -> tuple[Path, Path]:
    """grades.csv (one row per learner and exercise) and grades.md (learners × exercises)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path, markdown_path = out_dir / "grades.csv", out_dir / "grades.md"
    with csv_path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["learner", "part", "exercise", "check", "status", "message", "problems"])
        for learner, submissions in results.items():
            for result in submissions:
                for verdict in result.verdicts:
                    writer.writerow([learner, result.part, verdict.exercise.title, verdict.exercise.check, verdict.status, verdict.message, "; ".join(result.problems)])
    columns = sorted({(r.part, v.exercise.check, v.exercise.position) for rs in results.values() for r in rs for v in r.verdicts})
    header = ["learner", *[f"{part[:2]} {check.removeprefix('test_')}" for part, check, _ in columns], "passed", "problems"]
    rows = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for learner, submissions in sorted(results.items()):
        status = {(r.part, v.exercise.check, v.exercise.position): v.status for r in submissions for v in r.verdicts}
        passed = sum(value == PASS for value in status.values())
        problems = "; ".join(f"{r.part[:2]}: {p}" for r in submissions for p in r.problems) or ""
        cells = [SYMBOL[status[column]] if column in status else " " for column in columns]
        rows.append("| " + " | ".join([learner, *cells, f"{passed}/{len(status)}", problems]) + " |")
    legend = "\n\n✔ passes · ✘ fails its check · · not implemented · ! raised an error · – not run\n"
    markdown_path.write_text("\n".join(rows) + legend)
    return csv_path, markdown_path


def grade_folder(folder: Path, out_dir: Path, *, time_limit: float = 300.0, catalogue: Path = EXERCISES) -> dict[str, list[SubmissionResult]]:
    results: dict[str, list[SubmissionResult]] = {}
    for path in sorted(folder.rglob("*.ipynb")):
        if ".ipynb_checkpoints" in path.parts:
            continue
        part = part_of(path, catalogue)
        if part is None:
            print(f"  skipped {path.relative_to(folder)}: no part name (e.g. 04_toy_sae) in its file name")
            continue
        learner = learner_of(path, folder, part)
        result = grade_notebook(path, part, time_limit=time_limit, catalogue=catalogue)
        results.setdefault(learner, []).append(result)
        note = f" ({'; '.join(result.problems)})" if result.problems else ""
        print(f"  {learner:<20} {part:<24} {result.passed}/{len(result.verdicts)} in {result.seconds:.0f} s{note}", flush=True)
    write_grades(results, out_dir)
    return results
