"""What grading produces: exercises, per-check verdicts, one result per submitted notebook."""

from dataclasses import dataclass, field
from pathlib import Path

PASS, FAIL, STUB, ERROR, NOT_RUN = "pass", "fail", "not implemented", "error", "not run"
MISSING = "missing"
"""A learner handed in no notebook for the part (grades.md only)."""
SYMBOL = {PASS: "✔", FAIL: "✘", STUB: "○", ERROR: "!", NOT_RUN: "–", MISSING: " "}
MEANING = {
    PASS: "passes",
    FAIL: "fails its check",
    STUB: "not implemented",
    ERROR: "raised an error",
    NOT_RUN: "not run",
    MISSING: "no notebook handed in",
}
WORST_FIRST = (ERROR, FAIL, STUB, NOT_RUN, PASS)


@dataclass(frozen=True)
class CheckCall:
    """One `checks.test_x(a, b, key=c)` line of the workbook's exercise notebook."""

    module: str
    """The checks module, e.g. `tests.part1_toy_models`."""
    check: str
    arguments: tuple[str, ...]
    """Names in the learner's notebook handed to the check, in order."""
    keywords: tuple[tuple[str, str], ...]
    cell_source: str
    """The check cell's source, stripped: how the learner's copy of the cell is found."""


@dataclass(frozen=True)
class Exercise:
    part: str
    title: str
    """The exercise heading above its checks, e.g. "Exercise 4: `forward`"."""
    checks: tuple[CheckCall, ...]


@dataclass
class Verdict:
    check: CheckCall
    status: str
    message: str = ""


@dataclass
class SubmissionResult:
    path: Path
    part: str
    exercises: list[Exercise]
    verdicts: list[Verdict] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    """Crash, time limit, routes to the reference, similarity: what the grader noticed beyond the checks."""
    seconds: float = 0.0

    def status_of(self, exercise: Exercise) -> str:
        """An exercise passes when every one of its checks passes; otherwise its worst verdict."""
        found = {verdict.status for verdict in self.verdicts if verdict.check in exercise.checks}
        if len(found) == 0:
            return NOT_RUN
        return next(status for status in WORST_FIRST if status in found)

    @property
    def passed(self) -> int:
        return sum(self.status_of(exercise) == PASS for exercise in self.exercises)

    @property
    def total(self) -> int:
        return len(self.exercises)
