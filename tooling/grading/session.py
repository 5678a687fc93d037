"""Grading one notebook: its cells run in a worker (sandboxed unless trusted), its checks run here.

Cells run in order up to the last check cell (later cells cannot change a verdict). At a check
cell the grader looks up the names the workbook's own check call hands over (`ToyModel`...),
which arrive as stand-ins whose methods call into the worker, and runs the real check in this
process, with inputs from a seed that is secret to this run. The verdict is whatever the check
function raises or returns here: nothing the submission prints or writes is read.
"""

import ast
import contextlib
import functools
import importlib
import inspect
import io
import secrets
import tempfile
import time
from pathlib import Path

import nbformat
import torch

from tooling.grading.bridge import Peer, _MethodCaller
from tooling.grading.catalogue import EXERCISES, code_of, exercises_of, imported_modules, part_of
from tooling.grading.sandbox import own_reference_module, start_worker
from tooling.grading.verdicts import ERROR, FAIL, NOT_RUN, PASS, STUB, CheckCall, SubmissionResult, Verdict
from tooling.grading.wire import Channel, ChannelClosed, Deadline

STUB_MARK = "raise NotImplementedError"
CHECK_PREFIXES = ("tests.", "part_utils.")
"""Where the checks' callables live; `tooling.` (the grader, builds, benchmarks) is outside."""
NOT_CHECKS = ("tests.suite", "tests.oracles", "part_utils.results", "part_utils.section_artefacts", "part_utils.colab")
"""Under those prefixes, but none of the checks'."""


def exercise_method_names(exercise_notebook: nbformat.NotebookNode) -> frozenset[str]:
    """Functions the learner writes in this part (those whose stub raises NotImplementedError)."""
    names = set()
    for cell in exercise_notebook.cells:
        if cell.cell_type == "code" and STUB_MARK in cell.source:
            try:
                tree = ast.parse(code_of(cell.source))
            except SyntaxError:
                continue
            names.update(
                node.name for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            )
    return frozenset(names)


def trusted_resolvable(part: str) -> "callable":
    """Which class names the grader resolves to its own classes: never the part's own reference, the checks
    (`tests.`) or the grader and the rest of the tooling (`tooling.`), which are outside the prefixes below."""
    own = f"part_utils.reference.{own_reference_module(part)}"

    def resolvable(path: str) -> bool:
        module = path.partition(":")[0]
        if module == own or module.startswith(own + "."):
            return False
        library = ("torch.", "part_utils.", "transformer_lens.")
        return module in ("builtins", "collections", "torch") or module.startswith(library)

    return resolvable


def trusted_exportable(value: object) -> bool:
    """What the grader hands to learner code by handle: the checks' own callables, nothing else."""
    if isinstance(value, _MethodCaller):
        return True
    if isinstance(value, type) or not callable(value):
        return False
    plain = inspect.isfunction(value) or inspect.ismethod(value) or isinstance(value, functools.partial)
    module = (
        getattr(value if not isinstance(value, functools.partial) else value.func, "__module__", None)
        if plain
        else type(value).__module__
    )
    return isinstance(module, str) and module.startswith(CHECK_PREFIXES) and not module.startswith(NOT_CHECKS)


class Run:
    """One submission's worker and the bridge to it, under one deadline."""

    def __init__(
        self, part: str, exercise_notebook: nbformat.NotebookNode, *, time_limit: float, sandboxed: bool
    ) -> None:
        self.scratch = tempfile.TemporaryDirectory(prefix="workbook-grading-")
        self.worker = start_worker(
            part,
            imported_modules(exercise_notebook),
            sandboxed=sandboxed,
            cpu_seconds=int(time_limit) + 30,
            scratch=Path(self.scratch.name),
        )
        self.channel = Channel(self.worker.from_worker, self.worker.to_worker)
        self.channel.deadline = time.monotonic() + time_limit
        self.peer = Peer(self.channel, resolvable=trusted_resolvable(part), exportable=trusted_exportable)
        self.peer.exercise_names = exercise_method_names(exercise_notebook)
        self.stopped: str | None = None
        """Why the worker can no longer be used (time limit, crash)."""

    def request(self, op: str, **payload: object) -> object:
        if self.stopped:
            raise ChannelClosed(self.stopped)
        try:
            return self.peer.request(op, **payload)
        except Deadline:
            self.stopped = "time limit"
            raise
        except ChannelClosed:
            self.stopped = "crash"
            raise

    def close(self) -> None:
        self.worker.kill()
        self.scratch.cleanup()


def _run_check(run: Run, call: CheckCall, secret: int) -> Verdict:
    from tests import checking

    module = importlib.import_module(call.module)
    check = getattr(module, call.check)
    run.peer.proxies.clear()  # classes gain methods between checks (add_to_class): describe them afresh
    try:
        args = [run.request("lookup", name=name) for name in call.arguments]
        kwargs = {key: run.request("lookup", name=name) for key, name in call.keywords}
    except (Deadline, ChannelClosed):
        raise
    except NameError as error:
        return Verdict(call, ERROR, f"NameError: {error}")
    checking.GRADING_SEED = secret
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            check(*args, **kwargs)
        verdict = Verdict(call, PASS)
    except checking.NotImplementedYet as failure:
        verdict = Verdict(call, STUB, str(failure))
    except checking.CheckFailure as failure:
        verdict = Verdict(call, FAIL, str(failure))
    except Exception as error:  # noqa: BLE001  (a check that cannot run on what it got is an error, not a crash)
        verdict = Verdict(call, ERROR, f"{type(error).__name__}: {error}")
    finally:
        checking.GRADING_SEED = None
    if run.stopped:
        raise Deadline() if run.stopped == "time limit" else ChannelClosed()
    with contextlib.suppress(Deadline, ChannelClosed):
        run.request("release")
    return verdict


def grade_notebook(
    path: Path,
    part: str | None = None,
    *,
    time_limit: float = 300.0,
    catalogue: Path = EXERCISES,
    sandboxed: bool = True,
    notebook: nbformat.NotebookNode | None = None,
) -> SubmissionResult:
    part = part or part_of(path, catalogue)
    if part is None:
        raise ValueError(f"{path.name}: cannot tell which part it is (its name should contain e.g. 04_toy_sae)")
    exercise_notebook = nbformat.read(catalogue / f"{part}.ipynb", as_version=4)
    exercises = exercises_of(part, catalogue)
    notebook = notebook if notebook is not None else nbformat.read(path, as_version=4)
    result = SubmissionResult(path, part, exercises)
    calls_by_cell: dict[str, list[CheckCall]] = {}
    for exercise in exercises:
        for call in exercise.checks:
            calls_by_cell.setdefault(call.cell_source, []).append(call)
    cells = [cell.source for cell in notebook.cells if cell.cell_type == "code" and isinstance(cell.source, str)]
    last = max((index for index, source in enumerate(cells) if source.strip() in calls_by_cell), default=-1)
    verdicts: dict[CheckCall, Verdict] = {}
    secret = secrets.randbelow(2**62)
    start = time.perf_counter()
    run = None
    reason = ""
    try:
        torch.set_grad_enabled(True)
        run = Run(part, exercise_notebook, time_limit=time_limit, sandboxed=sandboxed)
        run.request("ready")
        for source in cells[: last + 1]:
            calls = calls_by_cell.get(source.strip())
            if calls is None:
                run.request("run_cell", source=source)
                continue
            for call in calls:
                if call not in verdicts:
                    current = call
                    verdicts[call] = _run_check(run, call, secret)
    except Deadline:
        reason = f"the time limit ({time_limit:.0f} s) ran out"
        result.problems.append(f"stopped at the time limit ({time_limit:.0f} s)")
    except ChannelClosed:
        reason = "the notebook's Python process died"
        result.problems.append("the notebook's Python process died (it crashed or exited)")
    except Exception as error:  # noqa: BLE001  (a broken notebook must not stop the grading of the others)
        reason = "the grader could not run it"
        result.problems.append(f"could not run: {type(error).__name__}: {error}")
    finally:
        if run is not None:
            run.close()
    running = locals().get("current")
    for exercise in exercises:
        for call in exercise.checks:
            if call in verdicts:
                result.verdicts.append(verdicts[call])
            elif reason and call == running:
                result.verdicts.append(Verdict(call, ERROR, f"{reason} while this check ran your code"))
            elif reason:
                result.verdicts.append(Verdict(call, NOT_RUN, f"not reached: {reason} before this check"))
            else:
                result.verdicts.append(Verdict(call, NOT_RUN, "its check cell was changed or removed"))
    result.seconds = time.perf_counter() - start
    return result
