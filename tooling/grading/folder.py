"""`workbook.py grade DIR`: every submission under a folder, one sandboxed worker each, the grades
rewritten after every notebook so that a crash or a kill loses at most the one being graded."""

from collections.abc import Callable
from pathlib import Path

import nbformat

from tooling.grading.catalogue import EXERCISES, ROOT, exercises_of
from tooling.grading.report import write_grades
from tooling.grading.session import grade_notebook
from tooling.grading.similarity import flag_similar, reference_routes, solution_similarity
from tooling.grading.submissions import Submission, find_submissions
from tooling.grading.verdicts import NOT_RUN, SubmissionResult, Verdict


def _flags(notebook: nbformat.NotebookNode, part: str, catalogue: Path) -> list[str]:
    """What the instructor should look at: routes towards the reference, and answers close to the solution's."""
    flags = [f"reaches outside the exercise: {finding}" for finding in reference_routes(notebook, part, catalogue)]
    if catalogue == EXERCISES and (ROOT / "solutions" / f"{part}.ipynb").is_file():
        flags += flag_similar(solution_similarity(notebook, part))
    return flags


def grade_submission(
    submission: Submission, *, time_limit: float, catalogue: Path, sandboxed: bool
) -> SubmissionResult:
    exercises = exercises_of(submission.part, catalogue)
    try:
        notebook = nbformat.read(submission.path, as_version=4)
        result = grade_notebook(
            submission.path,
            submission.part,
            time_limit=time_limit,
            catalogue=catalogue,
            sandboxed=sandboxed,
            notebook=notebook,
        )
        result.problems += _flags(notebook, submission.part, catalogue)
    except Exception as error:  # noqa: BLE001  (one bad notebook never stops the others)
        result = SubmissionResult(submission.path, submission.part, exercises)
        result.verdicts = [
            Verdict(call, NOT_RUN, "the notebook could not be graded")
            for exercise in exercises
            for call in exercise.checks
        ]
        result.problems.append(f"could not be graded: {type(error).__name__}: {str(error)[:200]}")
    return result


def grade_folder(
    folder: Path,
    out_dir: Path,
    *,
    time_limit: float = 300.0,
    catalogue: Path = EXERCISES,
    sandboxed: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, list[SubmissionResult]]:
    submissions, problems = find_submissions(folder, catalogue)
    exercises = {
        part: exercises_of(part, catalogue) for part in sorted({submission.part for submission in submissions})
    }
    graded: dict[str, list[SubmissionResult]] = {learner: [] for learner in problems}
    write_grades(graded, problems, out_dir, exercises)
    for learner, items in problems.items():
        for problem in items:
            log(f"  {learner[:40]:<20} {problem[:200]}")
    for submission in submissions:
        result = grade_submission(submission, time_limit=time_limit, catalogue=catalogue, sandboxed=sandboxed)
        graded.setdefault(submission.learner, []).append(result)
        write_grades(graded, problems, out_dir, exercises)
        note = f" ({'; '.join(result.problems)[:300]})" if result.problems else ""
        score = f"{result.passed}/{result.total} in {result.seconds:.0f} s"
        log(f"  {submission.learner[:40]:<20} {submission.part:<24} {score}{note}")
    return graded
