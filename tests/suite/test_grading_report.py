"""The grader's reports, submission finder and static checks, on hand-made results and folders:
nothing is executed.

grades.md and grades.csv must survive hostile learner names and messages (no forged rows, no
formatting, no spreadsheet formulas); every learner is scored out of the same exercises; a folder
of submissions with links, FIFOs, duplicates and broken files is sorted out without raising; a
copied solution is told from a rewrite; routes to the reference are found in cheats and never in
the workbook's own solutions."""

import copy
import csv
import os
import re
from pathlib import Path

import nbformat
import pytest

from tooling.grading import report
from tooling.grading.choose import choose_parts
from tooling.grading.report import progress_table, write_grades
from tooling.grading.similarity import flag_similar, reference_routes, solution_similarity
from tooling.grading.submissions import LINK, NO_PART, find_submissions
from tooling.grading.verdicts import (
    ERROR,
    FAIL,
    MISSING,
    PASS,
    STUB,
    SYMBOL,
    CheckCall,
    Exercise,
    SubmissionResult,
    Verdict,
)

ROOT = Path(__file__).resolve().parents[2]
PARTS = sorted(path.stem for path in (ROOT / "solutions").glob("[0-9][0-9]_*.ipynb"))


def exercise(part: str, title: str, *checks: str) -> Exercise:
    return Exercise(
        part, title, tuple(CheckCall(f"tests.{part}", check, ("x",), (), f"checks.{check}(x)") for check in checks)
    )


EXERCISES = {
    "01_toy_models": [
        exercise("01_toy_models", "Exercise 1: `forward`", "test_forward"),
        exercise("01_toy_models", "Exercise 2: `loss`", "test_loss"),
    ],
    "02_privileged_basis": [exercise("02_privileged_basis", "Exercise 1: `neurons`", "test_a", "test_b")],
}


def result(part: str, statuses: list[str], message: str = "", problems: list[str] | None = None) -> SubmissionResult:
    checks = [check for item in EXERCISES[part] for check in item.checks]
    verdicts = [Verdict(check, status, "" if status == PASS else message) for check, status in zip(checks, statuses)]
    return SubmissionResult(Path(f"{part}.ipynb"), part, EXERCISES[part], verdicts, problems or [], 3.0)


def cells(row: str) -> list[str]:
    """A markdown table row's cells, split only at pipes that are not escaped."""
    found, current, escaped = [], "", False
    for character in row.strip().removeprefix("|").removesuffix("|"):
        if character == "|" and not escaped:
            found, current = [*found, current], ""
            continue
        current += character
        escaped = character == "\\" and not escaped
    return [cell.strip() for cell in [*found, current]]


def unescaped(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text)


def table_rows(markdown: str) -> list[list[str]]:
    return [cells(line) for line in markdown.splitlines() if line.startswith("|")]


def legend_symbols(line: str) -> list[str]:
    return [entry.split(" ", 1)[0] for entry in line.removeprefix("Key: ").split(", ")]


HOSTILE = "eve | ✔ | ✔ | `code` <b>*x*</b> [a](b) \\"


def test_markdown_cannot_be_forged_or_formatted(tmp_path):
    graded = {
        HOSTILE: [
            result("01_toy_models", [PASS, FAIL], message="| ✔ | ✔ |\n# heading\n<script>", problems=["- item | ✔"])
        ],
        "1. alice": [result("01_toy_models", [PASS, PASS]), result("02_privileged_basis", [PASS, PASS])],
    }
    _, markdown_path = write_grades(graded, {HOSTILE: ["`x` | ✔ *bold*"]}, tmp_path, EXERCISES)
    markdown = markdown_path.read_text()
    header, _, *rows = table_rows(markdown)
    assert header == ["learner", "01 Ex 1", "01 Ex 2", "02 Ex 1", "passed", "problems"]
    assert all(len(row) == len(header) for row in rows)
    by_learner = {unescaped(row[0]): row for row in rows}
    assert set(by_learner) == {HOSTILE, "1. alice"}
    assert by_learner[HOSTILE][1:5] == [SYMBOL[PASS], SYMBOL[FAIL], "", "1/3"]
    assert by_learner["1. alice"][1:5] == [SYMBOL[PASS]] * 3 + ["3/3"]
    assert by_learner["1. alice"][0] == "1\\. alice"
    problems = by_learner[HOSTILE][5]
    assert "\n" not in problems and "<" not in problems.replace("\\<", "") and "`" not in problems.replace("\\`", "")
    assert unescaped(problems) == "`x` | ✔ *bold*; 01: - item | ✔"
    assert not re.search(r"(?<!\\)[`*_<>\[\]]", by_learner[HOSTILE][0].replace("\\\\", ""))
    markdown_it = pytest.importorskip("markdown_it")
    html = markdown_it.MarkdownIt("commonmark").enable("table").render(markdown)
    assert html.count("<tr>") == 3 and html.count("<td>") == 2 * len(header)
    assert not re.search(r"<(em|strong|code|a|b|script|h[2-6]|li)\b", html.split("</table>")[0])


def test_csv_cells_never_start_a_formula(tmp_path):
    graded = {'=HYPERLINK("http://x")': [result("01_toy_models", [FAIL, ERROR], message="+1+2", problems=["@SUM(A1)"])]}
    csv_path, _ = write_grades(graded, {"-2": ["\tx"]}, tmp_path, EXERCISES)
    rows = list(csv.DictReader(csv_path.open(encoding="utf-8")))
    assert {row["learner"] for row in rows} == {'\'=HYPERLINK("http://x")', "'-2"}
    assert {row["message"] for row in rows if row["part"] == "01_toy_models" and row["learner"].startswith("'=")} == {
        "'+1+2"
    }
    assert all(not row[column].startswith(("=", "+", "-", "@", "\t", "\r")) for row in rows for column in row)
    assert {row["problems"] for row in rows if row["learner"] == "'-2"} == {"'\tx"}


def test_every_learner_is_scored_on_the_same_exercises(tmp_path):
    graded = {
        "alice": [result("01_toy_models", [PASS, PASS]), result("02_privileged_basis", [PASS, PASS])],
        "bob": [result("01_toy_models", [PASS, STUB])],
    }
    unreadable = {"carol": ["carol.ipynb: not a readable notebook (NotJSONError)"]}
    csv_path, markdown_path = write_grades(graded, unreadable, tmp_path, EXERCISES)
    rows = {row[0]: row for row in table_rows(markdown_path.read_text())[2:]}
    assert [rows[name][4] for name in ("alice", "bob", "carol")] == ["3/3", "1/3", "0/3"]
    assert rows["bob"][3] == SYMBOL[MISSING].strip() and rows["carol"][1:4] == [""] * 3
    rows_csv = list(csv.DictReader(csv_path.open(encoding="utf-8")))
    statuses = [(row["learner"], row["part"], row["check"], row["status"]) for row in rows_csv]
    assert [status for learner, part, _, status in statuses if (learner, part) == ("bob", "02_privileged_basis")] == [
        MISSING
    ] * 2
    assert len(statuses) == 3 * 4  # every learner × every check, learners sorted
    assert [learner for learner, *_ in statuses[::4]] == ["alice", "bob", "carol"]


def test_columns_follow_the_notebooks_and_the_key_names_them(tmp_path):
    exercises = {"02_privileged_basis": EXERCISES["02_privileged_basis"], "01_toy_models": EXERCISES["01_toy_models"]}
    _, markdown_path = write_grades({"alice": [result("02_privileged_basis", [PASS, FAIL])]}, {}, tmp_path, exercises)
    markdown = markdown_path.read_text()
    assert table_rows(markdown)[0][1:4] == ["01 Ex 1", "01 Ex 2", "02 Ex 1"]
    assert "- `01 Ex 2`: 01_toy_models, Exercise 2: `loss`" in markdown
    assert "- `02 Ex 1`: 02_privileged_basis, Exercise 1: `neurons`" in markdown
    assert table_rows(markdown)[2][1:5] == ["", "", SYMBOL[FAIL], "0/3"]


def test_legends_use_each_symbol_once(tmp_path):
    _, markdown_path = write_grades({"alice": [result("01_toy_models", [PASS, FAIL])]}, {}, tmp_path, EXERCISES)
    for text in (markdown_path.read_text(), progress_table([result("01_toy_models", [PASS, FAIL])])):
        line = next(line for line in text.splitlines() if line.startswith("Key: "))
        symbols = legend_symbols(line)
        assert len(symbols) == len(set(symbols)) and len(set(SYMBOL.values())) == len(SYMBOL)
        assert not any(symbol in ", " for symbol in SYMBOL.values() if symbol.strip())


def test_grades_are_written_atomically(tmp_path, monkeypatch):
    write_grades({"alice": [result("01_toy_models", [PASS, FAIL])]}, {}, tmp_path, EXERCISES)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["grades.csv", "grades.md"]
    before = (tmp_path / "grades.md").read_text()

    def crash(*args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(report.os, "replace", crash)
    with pytest.raises(OSError):
        write_grades({"bob": [result("01_toy_models", [PASS, PASS])]}, {}, tmp_path, EXERCISES)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["grades.csv", "grades.md"]
    assert (tmp_path / "grades.md").read_text() == before


def test_long_messages_are_capped(tmp_path):
    csv_path, _ = write_grades(
        {"alice": [result("01_toy_models", [FAIL, FAIL], message="x" * 2000)]}, {}, tmp_path, EXERCISES
    )
    messages = {row["message"] for row in csv.DictReader(csv_path.open(encoding="utf-8")) if row["status"] == FAIL}
    assert messages == {"x" * 499 + "…"}


def test_progress_table_shows_each_exercise_and_failing_check():
    timed_out = result(
        "02_privileged_basis", [PASS, FAIL], message="wrong sign", problems=["stopped at the time limit"]
    )
    text = progress_table([timed_out])
    lines = text.splitlines()
    assert lines[0] == "02_privileged_basis: 0/1 exercises pass (3 s)"
    assert lines[1] == "  ! stopped at the time limit"
    assert lines[2] == f"  {SYMBOL[FAIL]} Exercise 1: `neurons` — test_b: wrong sign"
    assert lines[3].startswith("Key: ") and len(lines) == 4


def notebook(path: Path, text: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(nbformat.writes(nbformat.v4.new_notebook()) if text is None else text)
    return path


def test_find_submissions_grades_only_what_is_safe(tmp_path):
    alice = notebook(tmp_path / "alice" / "01_toy_models.ipynb")
    notebook(tmp_path / "alice_01_toy_models.ipynb")
    notebook(tmp_path / "alice" / ".ipynb_checkpoints" / "01_toy_models-checkpoint.ipynb")
    bob = notebook(tmp_path / "bob" / "week 2" / "deep" / "02_privileged_basis.ipynb")
    (tmp_path / "bob" / "01_toy_models.ipynb").symlink_to(alice)
    (tmp_path / "carol").symlink_to(tmp_path / "alice", target_is_directory=True)
    (tmp_path / "x_01_toy_models.ipynb").mkdir()
    notebook(tmp_path / "dave" / "03_feature_geometry.ipynb", "this is not JSON")
    os.mkfifo(tmp_path / "erin_04_toy_sae.ipynb")
    notebook(tmp_path / "frank" / "notes.ipynb")
    odd = notebook(tmp_path / "gr`ace|✔ *x*" / "05_sae_variants.ipynb")
    with (tmp_path / "heidi_06_sae_transformer.ipynb").open("wb") as handle:
        handle.truncate(21 * 2**20)
    notebook(tmp_path / "ivan" / "07_sae_circuits.ipynb", "[1, 2]")
    (tmp_path / "grades.csv").write_text("learner\n")

    found, problems = find_submissions(tmp_path)
    assert [(item.learner, item.part, item.path) for item in found] == [
        ("alice", "01_toy_models", alice),
        ("bob", "02_privileged_basis", bob),
        ("gr`ace|✔ *x*", "05_sae_variants", odd),
    ]
    assert problems["alice"] == [
        "01_toy_models handed in 2 times (alice/01_toy_models.ipynb, alice_01_toy_models.ipynb): "
        "graded alice/01_toy_models.ipynb only"
    ]
    assert problems["bob"] == [f"bob/01_toy_models.ipynb: {LINK}"]
    assert problems["carol"] == [f"carol: {LINK}"]
    assert problems["x"] == ["x_01_toy_models.ipynb: a folder, not a notebook"]
    assert problems["dave"] == ["dave/03_feature_geometry.ipynb: not a readable notebook (NotJSONError)"]
    assert problems["erin"] == ["erin_04_toy_sae.ipynb: not a regular file, not graded"]
    assert problems["frank"] == [f"frank/notes.ipynb: {NO_PART}"]
    assert "over the 20 MB limit" in problems["heidi"][0]
    assert problems["ivan"][0].startswith("ivan/07_sae_circuits.ipynb: not a")
    assert set(problems) == {"alice", "bob", "carol", "x", "dave", "erin", "frank", "heidi", "ivan"}


SOLUTION_DIMENSIONALITY = nbformat.read(ROOT / "solutions" / "03_feature_geometry.ipynb", as_version=4).cells[5].source
COPIED_DIMENSIONALITY = '''def compute_dimensionality(W: Float[Tensor, "inst d_hidden feats"]) -> Float[Tensor, "inst feats"]:
    """My own work, honestly."""
    sq = W.pow(2).sum(dim=1)  # squares of the norms

    unit = W / W.norm(dim=1, keepdim=True)
    dots = einsum(unit, W, "inst d_hidden feat_i, inst d_hidden feat_j -> inst feat_i feat_j")
    return sq / dots.pow(2).sum(dim=-1)'''
REWRITTEN_DIMENSIONALITY = """def compute_dimensionality(W: Float[Tensor, "inst d_hidden feats"]) -> Float[Tensor, "inst feats"]:
    norms = W.norm(dim=1)
    overlaps = torch.einsum("ihf,ihg->ifg", W / norms[:, None, :], W)
    return norms.pow(2) / overlaps.pow(2).sum(-1)"""


def exercise_notebook_with(part: str, cells: dict[int, str]) -> nbformat.NotebookNode:
    """The workbook's exercise notebook with some code cells' sources replaced, as a learner hands it in."""
    notebook = copy.deepcopy(nbformat.read(ROOT / "notebooks" / f"{part}.ipynb", as_version=4))
    for index, source in cells.items():
        notebook.cells[index].source = source
    return notebook


def test_a_copied_solution_is_told_from_a_rewrite():
    assert "squared_norms" in SOLUTION_DIMENSIONALITY  # the copy below renames the solution's variables
    part = "03_feature_geometry"
    copied = solution_similarity(exercise_notebook_with(part, {5: COPIED_DIMENSIONALITY}), part)
    rewritten = solution_similarity(exercise_notebook_with(part, {5: REWRITTEN_DIMENSIONALITY}), part)
    stubbed = solution_similarity(exercise_notebook_with(part, {}), part)
    assert copied[0][0] == "compute_dimensionality" and copied[0][1] >= 0.9
    assert rewritten[0][1] < 0.6 and stubbed[0][1] == 0.0
    assert flag_similar(copied) == [f"`compute_dimensionality`: {copied[0][1]:.0%} like the solution"]
    assert flag_similar(rewritten) == []


@pytest.mark.parametrize(
    "code, finding",
    [
        ("from part_utils import reference", "imports part_utils.reference"),
        ("from part_utils.reference.part1_toy_models import ToyModel", "imports part_utils.reference.part1_toy_models"),
        ('toy = __import__("part_utils.refer" + "ence")', "calls __import__"),
        ('toy = __import__("part_utils.refer" + "ence")', "names 'part_utils.reference' in a string"),
        ("ToyModel = checks.reference.ToyModel", "uses checks.reference"),
        ('exec(open("part_utils/reference/part1_toy_models.py").read())', "calls exec"),
        (
            'exec(open("part_utils/reference/part1_toy_models.py").read())',
            "reads 'part_utils/reference/part1_toy_models.py'",
        ),
        ("import tests.part3_feature_geometry as other", "imports tests.part3_feature_geometry"),
        (
            "subprocess.run(['cat', 'x'])",
            "uses subprocess.run",
        ),  # the setup cell imports subprocess; that is no licence
        ("import subprocess", "imports subprocess"),
        ("print(sys.modules['tests.part1_toy_models'])", "uses sys.modules"),
        ("from os import system as run\nrun('ls')", "imports os.system"),
        ("%time exec('x = 1')", "calls exec"),
        ("!cat solutions/01_toy_models.ipynb", "runs a shell command"),
    ],
)
def test_routes_to_the_reference_are_found(code, finding):
    assert finding in reference_routes(exercise_notebook_with("01_toy_models", {7: code}), "01_toy_models")


def test_what_the_exercise_notebook_itself_does_is_no_route():
    allowed = (
        "import tests.part2_privileged_basis as checks\nfrom part_utils.reference.part1_toy_models import ToyModel"
    )
    assert reference_routes(exercise_notebook_with("02_privileged_basis", {5: allowed}), "02_privileged_basis") == []


@pytest.mark.parametrize("part", PARTS)
def test_no_route_is_found_in_the_solutions(part):
    assert PARTS == sorted(source.stem for source in (ROOT / "source").glob("[0-9][0-9]_*.py"))  # none missed
    solution = nbformat.read(ROOT / "solutions" / f"{part}.ipynb", as_version=4)
    assert reference_routes(solution, part) == []
    edited = copy.deepcopy(solution)  # every cell the learner's own: the exercise notebook's routes are allowed
    for cell in edited.cells:
        cell.source += "\n# edited"
    assert reference_routes(edited, part) == []
    scores = [score for _, score in solution_similarity(solution, part)]
    assert scores and scores == pytest.approx([1.0] * len(scores))


def test_parts_are_chosen_by_number_or_name():
    available = PARTS
    chosen = choose_parts(["3", "01", "05_sae_variants", "sae_variants"], available)
    assert chosen == ["01_toy_models", "03_feature_geometry", "05_sae_variants"]
    assert choose_parts([], available) == available
    with pytest.raises(SystemExit, match=r"no part '99'.*01_toy_models, 02_privileged_basis"):
        choose_parts(["99"], available)
    with pytest.raises(SystemExit, match="no part 'toy'"):
        choose_parts(["toy"], available)
