"""Numbers in the prose, bound to the results files that full-mode runs write.

A source's markdown never states a measured number literally. It writes a placeholder that
`workbook.py build` fills in from `section_data/results/partN.json` (see part_utils.results):

    {{name}}            the value (a list: mean ± standard deviation over its seeds)
    {{name:.3f}}        with a format spec, applied to each number shown
    {{name|mean:.3f}}   one statistic of a per-seed list: mean, sd, min, max, range, n, pm;
                        `all` lists every value, a number `i` gives the i-th
    {{=0.2}}            a number quoted from a paper or a definition, not measured here

`python3 workbook.py claims --check` (seconds, no training) verifies that every placeholder has
a results entry, that no decimal, percentage or ratio is written into the prose by hand, and
that the generated notebooks say what the sources and results say. `python3 workbook.py claims
[--part N]` re-runs parts in full mode, rewrites their results and lists every sentence whose
numbers changed.
"""

import argparse
import os
import re
import shutil
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from part_utils.results import Value, load_results, results_path

PLACEHOLDER = re.compile(
    r"\{\{\s*(?:=(?P<literal>[^}]+?)|(?P<name>[\w.\-]+)\s*(?:\|\s*(?P<stat>\w+))?\s*(?::(?P<fmt>[^}]*?))?)\s*\}\}"
)
STATISTICS: dict[str, Callable[[list[float]], float]] = {
    "mean": statistics.fmean,
    "sd": lambda values: statistics.stdev(values) if len(values) > 1 else 0.0,
    "min": min,
    "max": max,
    "n": lambda values: float(len(values)),
}
# What the prose may not state literally: decimals, percentages and ratios (counts are left to review).
HAND_WRITTEN_NUMBER = re.compile(r"(?<![\w.])\d+(?:\.\d+)?\s?(?:%|×)|(?<![\w.\-^])\d+\.\d+(?!\w|\.\d)")
NOT_PROSE = [
    re.compile(r"```.*?```", re.DOTALL),  # code fences
    re.compile(r"`[^`\n]*`"),  # code spans
    re.compile(r"\$\$.+?\$\$", re.DOTALL),  # display maths
    re.compile(r"(?<![\\$])\$[^$\n]+\$"),  # inline maths
    re.compile(r"<[^>\n]+>"),  # HTML tags and their attributes
    re.compile(r"\]\([^)\s]+\)"),  # link targets
    re.compile(r"Exercises? \d+\.\d+(?:(?:,| and| or|–) ?\d+\.\d+)*"),  # exercise numbers
]


class ClaimError(ValueError):
    pass


@dataclass(frozen=True)
class Problem:
    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


def render_value(value: Value, stat: str | None, fmt: str | None, name: str) -> str:
    fmt = fmt or ".3g"
    if isinstance(value, float):
        if stat not in (None, "value"):
            raise ClaimError(f"{{{{{name}|{stat}}}}}: {name} is one number, not a list over seeds")
        return format(value, fmt)
    stat = stat or "pm"
    if stat.isdigit():  # one seed's or one setting's value, by position
        return format(value[int(stat)], fmt)
    if stat == "all":
        return ", ".join(format(item, fmt) for item in value)
    if stat == "pm":
        return f"{format(statistics.fmean(value), fmt)} ± {format(STATISTICS['sd'](value), fmt)}"
    if stat == "range":
        return f"{format(min(value), fmt)}–{format(max(value), fmt)}"
    if stat == "n":
        return str(len(value))
    if stat not in STATISTICS:
        raise ClaimError(f"{{{{{name}|{stat}}}}}: unknown statistic (use {', '.join([*STATISTICS, 'pm', 'range'])})")
    return format(STATISTICS[stat](value), fmt)


def render(markdown: str, results: dict[str, Value], *, strict: bool = True) -> str:
    """The markdown with every placeholder filled in. A missing result raises ClaimError, or (not `strict`,
    as the build does so that a new placeholder's notebook can run to produce it) shows as ⟨missing: name⟩."""

    def fill(match: re.Match[str]) -> str:
        if match.group("literal") is not None:
            return match.group("literal").strip()
        name = match.group("name")
        if name not in results:
            if not strict:
                return f"⟨missing: {name}⟩"
            raise ClaimError(f"{{{{{name}}}}} has no entry in the results file")
        return render_value(results[name], match.group("stat"), match.group("fmt"), name)

    return PLACEHOLDER.sub(fill, markdown)


def hand_written_numbers(markdown: str) -> list[str]:
    """Decimals, percentages and ratios stated in the prose without a placeholder."""
    text = PLACEHOLDER.sub(" ", markdown)
    for pattern in NOT_PROSE:
        text = pattern.sub(" ", text)
    return [match.group(0) for match in HAND_WRITTEN_NUMBER.finditer(text)]


def part_number(source: Path) -> int:
    return int(source.stem[:2])


def markdown_cells(source: Path) -> list[str]:
    import jupytext

    notebook = jupytext.reads(source.read_text(), fmt="py:percent")
    return [cell.source for cell in notebook.cells if cell.cell_type == "markdown"]


def problems_in_source(source: Path, results: dict[str, Value]) -> list[Problem]:
    problems = []
    for index, markdown in enumerate(markdown_cells(source)):
        where = f"{source.name}, markdown cell {index + 1}"
        try:
            render(markdown, results)
        except ClaimError as error:
            problems.append(Problem(where, str(error)))
        for number in hand_written_numbers(markdown):
            sentence = sentence_around(markdown, number)
            problems.append(Problem(where, f"{number!r} is written by hand (use a results placeholder): {sentence}"))
    return problems


def sentence_around(text: str, fragment: str) -> str:
    return next((sentence for sentence in sentences(text) if fragment in sentence), fragment)


def check(parts: list[int] | None = None, root: Path | None = None) -> list[Problem]:
    """Every problem with the prose's numbers, in every part or in `parts` (empty when all is well);
    `root` is where the generated notebooks are (the workbook itself by default)."""
    import notebook_build

    problems = []
    for source in notebook_build.source_files():
        if not parts or part_number(source) in parts:
            problems += problems_in_source(source, load_results(part_number(source)))
    if problems:
        return problems  # the notebooks cannot be generated until the sources render
    root = root or notebook_build.ROOT
    stale = [
        path
        for path, content in notebook_build.generated_files(root, parts).items()
        if path.name != "README.md" and (not path.exists() or path.read_text() != content)
    ]
    problems += [
        Problem(
            str(path.relative_to(root)),
            "differs from its source and results: edited by hand, or not rebuilt (`python3 workbook.py build`)",
        )
        for path in stale
    ]
    return problems


def sentences(markdown: str) -> list[str]:
    flat = " ".join(line.lstrip("# ").strip() for line in markdown.splitlines())
    return [sentence.strip() for sentence in re.split(r"(?<=[.!?])\s+", flat) if sentence.strip()]


def changed_sentences(source: Path, before: dict[str, Value], after: dict[str, Value]) -> list[tuple[str, str]]:
    """(old, new) for each sentence of the prose that reads differently with the new results."""
    changes = []
    for markdown in markdown_cells(source):
        if not PLACEHOLDER.search(markdown):
            continue
        old, new = (
            sentences(render(markdown, results)) if _renders(markdown, results) else [] for results in (before, after)
        )
        changes += [(o, n) for o, n in zip(old, new, strict=False) if o != n]
    return changes


def _renders(markdown: str, results: dict[str, Value]) -> bool:
    try:
        render(markdown, results)
    except ClaimError:
        return False
    return True


def rerun(parts: list[int]) -> int:
    """Run each part's solution notebook in full mode, recording its results; report what changed."""
    import nbformat

    import notebook_build
    from tooling.notebook_runner import execute_notebook

    sources = [source for source in notebook_build.source_files() if not parts or part_number(source) in parts]
    failed = False
    for source in sources:
        part = part_number(source)
        path, before = results_path(part), load_results(part)
        backup = path.with_suffix(".json.previous")
        if path.exists():
            shutil.copy(path, backup)
            path.unlink()  # a fresh file: entries the notebook no longer records disappear
        os.environ["WORKBOOK_RECORD_RESULTS"] = "1"
        solution = notebook_build.output_paths(source)["solution_notebook"]
        print(f"part {part}: running {solution.name} in full mode ...", flush=True)
        result = execute_notebook(solution, fast=False, timeout_per_cell=3600)
        if result.error is not None:
            failed = True
            print(f"part {part}: the notebook failed, previous results kept:\n{result.error}", file=sys.stderr)
            if backup.exists():
                shutil.copy(backup, path)
        else:
            # to read its tables and printouts
            executed = notebook_build.ROOT / "test-output" / "claims" / solution.name
            executed.parent.mkdir(parents=True, exist_ok=True)
            nbformat.write(result.notebook, executed)
            print(
                f"part {part}: {result.seconds:.0f} s (executed notebook: {executed.relative_to(notebook_build.ROOT)});"
                " sentences whose numbers changed:"
            )
            for old, new in changed_sentences(source, before, load_results(part)):
                print(f"  - {old}\n  + {new}")
        backup.unlink(missing_ok=True)
    notebook_build.build(parts=parts)
    problems = check(parts)
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if failed or problems else 0


def main(arguments: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="workbook.py claims", description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="verify the prose against the results files (no training)")
    parser.add_argument("--part", type=int, action="append", default=[], help="only this part (repeatable)")
    args = parser.parse_args(arguments)
    if args.check:
        problems = check(args.part)
        for problem in problems:
            print(problem)
        print(
            f"claims: {len(problems)} problem(s)"
            if problems
            else "claims: every number in the prose is bound to a result"
        )
        return 1 if problems else 0
    return rerun(args.part)


if __name__ == "__main__":
    sys.exit(main())
