"""What grading shows: a learner's own progress table, and the instructor's grades.csv and grades.md.

Learner names, check messages and problems come from submissions, so they are escaped before
they reach markdown (no forged rows, links or formatting) and neutralised before they reach a
spreadsheet (no formulas), and capped in length."""

import csv
import io
import os
import re
import tempfile
from pathlib import Path

from tooling.grading.verdicts import MEANING, MISSING, NOT_RUN, PASS, SYMBOL, Exercise, SubmissionResult, Verdict

MESSAGE_LIMIT = 500
MARKDOWN_SPECIAL = re.compile(r"([\\|`<>*_\[\]&~])")
LEADING_BLOCK = re.compile(r"^(\s*)([#+\-=]|\d+(?=[.)]))")
"""What would start a heading, a list item or a rule: escaped (for a numbered item, its `.` or `)`)."""
UNSEEN = re.compile(r"[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
"""Control characters, bidirectional overrides and undecodable bytes of file names: they could hide or reorder text."""
FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "＝", "＋", "－", "＠")
COLUMNS = ["learner", "part", "exercise", "check", "status", "message", "problems"]


def legend(statuses: list[str]) -> str:
    """`Key: ✔ passes, ✘ fails its check, ...` for these statuses; a blank symbol is called "blank"."""
    return "Key: " + ", ".join(f"{SYMBOL[status].strip() or 'blank'} {MEANING[status]}" for status in statuses)


def capped(text: str, limit: int = MESSAGE_LIMIT) -> str:
    """The text on one line, at most `limit` characters (the last one "…" when cut)."""
    line = " ".join(text.splitlines())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def failures(result: SubmissionResult, exercise: Exercise) -> list[Verdict]:
    return [verdict for verdict in result.verdicts if verdict.check in exercise.checks and verdict.status != PASS]


def progress_table(results: list[SubmissionResult]) -> str:
    """Per part: how many exercises pass, the problems, each exercise's symbol and title, and each
    failing check's message; then the key to the symbols."""
    lines = []
    for result in results:
        lines.append(f"{result.part}: {result.passed}/{result.total} exercises pass ({result.seconds:.0f} s)")
        lines += [f"  ! {capped(problem)}" for problem in result.problems]
        for exercise in result.exercises:
            status = result.status_of(exercise)
            details = "; ".join(
                f"{verdict.check.check}: {capped(verdict.message)}" if verdict.message else verdict.check.check
                for verdict in failures(result, exercise)
            )
            lines.append(f"  {SYMBOL[status]} {exercise.title}" + (f" — {details}" if details else ""))
    lines.append(legend([status for status in SYMBOL if status != MISSING]))
    return "\n".join(lines)


def markdown_text(text: str) -> str:
    """User-controlled text as literal markdown inline text, safe inside a table cell."""
    text = MARKDOWN_SPECIAL.sub(r"\\\1", UNSEEN.sub("\ufffd", capped(text)))
    match = LEADING_BLOCK.match(text)
    if match is None:
        return text
    if match.group(2).isdigit():
        return text[: match.end()] + "\\" + text[match.end() :]
    return text[: match.start(2)] + "\\" + text[match.start(2) :]


def spreadsheet_text(text: str) -> str:
    """A CSV cell that no spreadsheet runs as a formula."""
    return "'" + text if text.startswith(FORMULA_START) else text


def write_atomically(path: Path, text: str) -> None:
    """Replace `path` in one step, so a crash leaves the old file or the new one, never half of one."""
    handle = tempfile.NamedTemporaryFile(
        "w",
        encoding="utf-8",
        errors="replace",
        newline="",
        dir=path.parent,
        prefix=f".{path.name}.",
        suffix=".tmp",
        delete=False,
    )
    try:
        with handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(handle.name, 0o644)
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise


def csv_rows(
    learner: str, handed_in: dict[str, SubmissionResult], general: list[str], exercises: dict[str, list[Exercise]]
) -> list[list[str]]:
    """A learner's row per check of every part: its status and message, and the problems noticed."""
    rows = []
    for part, items in sorted(exercises.items()):
        result = handed_in.get(part)
        verdicts = {verdict.check: verdict for verdict in (result.verdicts if result else [])}
        noted = "; ".join(general + [capped(problem) for problem in (result.problems if result else [])])
        for exercise in items:
            for check in exercise.checks:
                verdict = verdicts.get(check, Verdict(check, MISSING if result is None else NOT_RUN))
                fields = [learner, part, exercise.title, check.check, verdict.status, capped(verdict.message), noted]
                rows.append([spreadsheet_text(field) for field in fields])
    return rows


def markdown_row(
    learner: str, handed_in: dict[str, SubmissionResult], general: list[str], columns: list[Exercise]
) -> str:
    """`| learner | ✔ | ✘ | ... | passed/total | problems |`, every user-controlled text escaped."""
    statuses = [
        handed_in[exercise.part].status_of(exercise) if exercise.part in handed_in else MISSING for exercise in columns
    ]
    noted = general + [
        f"{result.part[:2]}: {capped(problem)}" for result in handed_in.values() for problem in result.problems
    ]
    cells = [markdown_text(learner), *(SYMBOL[status] for status in statuses), f"{statuses.count(PASS)}/{len(columns)}"]
    return "| " + " | ".join([*cells, "; ".join(markdown_text(problem) for problem in noted)]) + " |"


def write_grades(
    graded: dict[str, list[SubmissionResult]],
    problems: dict[str, list[str]],
    out_dir: Path,
    exercises: dict[str, list[Exercise]],
) -> tuple[Path, Path]:
    """grades.csv (a row per learner and check) and grades.md (learners × exercises), learners by
    name, each scored out of every exercise of every part in `exercises`; a part not handed in is
    missing. Each file is replaced atomically: call it after every learner."""
    out_dir.mkdir(parents=True, exist_ok=True)
    numbered = [
        (f"{part[:2]} Ex {n}", exercise) for part in sorted(exercises) for n, exercise in enumerate(exercises[part], 1)
    ]
    names, columns = [name for name, _ in numbered], [exercise for _, exercise in numbered]
    table = io.StringIO()
    writer = csv.writer(table)
    writer.writerow(COLUMNS)
    header = ["learner", *names, "passed", "problems"]
    rows = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for learner in sorted(set(graded) | set(problems)):
        handed_in = {result.part: result for result in graded.get(learner, [])}
        general = [capped(problem) for problem in problems.get(learner, [])]
        writer.writerows(csv_rows(learner, handed_in, general, exercises))
        rows.append(markdown_row(learner, handed_in, general, columns))
    key = [f"- `{name}`: {exercise.part}, {exercise.title}" for name, exercise in numbered]
    markdown = "\n".join(["# Grades", "", *rows, "", "Columns:", "", *key, "", legend(list(SYMBOL)), ""])
    csv_path, markdown_path = out_dir / "grades.csv", out_dir / "grades.md"
    write_atomically(csv_path, table.getvalue())
    write_atomically(markdown_path, markdown)
    return csv_path, markdown_path
