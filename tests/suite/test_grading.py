"""`workbook.py progress` / `grade`: verdicts per exercise for correct, wrong, stubbed, crashing,
endless and cheating submissions, in a CSV and a markdown table; nothing stops the grading.

A tiny two-exercise part (the real checks of Part 3's dimensionality and Part 1's correlated
features) keeps this fast; one real solution notebook is graded too."""

import csv
from pathlib import Path

import nbformat
import pytest

from part_utils.grading import FAIL, NOT_RUN, PASS, STUB, exercises_of, grade_folder, grade_notebook
from notebook_build import ROOT, STUB as STUB_LINE

PART = "09_mini"
SETUP = (
    f"import sys\nsys.path.insert(0, {str(ROOT)!r})\nimport torch\n"
    "import tests.part3_feature_geometry as checks\nimport tests.part1_toy_models as checks_part1"
)
DIMENSIONALITY = (
    "def compute_dimensionality(W):\n"
    "    norms = W.norm(dim=1)\n"
    "    overlaps = torch.einsum('ihf,ihg->ifg', W / norms[:, None, :], W)\n"
    "    return norms.pow(2) / overlaps.pow(2).sum(-1)"
)
CORRELATED = (
    "def generate_correlated_features(batch_size, feature_probability):\n"
    "    n_inst, n_pairs = feature_probability.shape\n"
    "    present = torch.rand(batch_size, n_inst, n_pairs) < feature_probability\n"
    "    return (torch.rand(batch_size, n_inst, n_pairs, 2) * present[..., None]).flatten(-2)"
)

UNCORRELATED = (  # each feature of a pair drawn on its own: not correlated
    "def generate_correlated_features(batch_size, feature_probability):\n"
    "    probability = feature_probability.repeat_interleave(2, dim=-1)\n"
    "    return torch.rand(batch_size, *probability.shape) * (torch.rand(batch_size, *probability.shape) < probability)"
)


def mini_notebook(dimensionality: str, correlated: str, *, extra: str | None = None, extra_at: int = 2) -> nbformat.NotebookNode:
    cells = [
        nbformat.v4.new_markdown_cell("# Mini part"),
        nbformat.v4.new_code_cell(SETUP),
        nbformat.v4.new_markdown_cell("### Exercise 1: `compute_dimensionality`"),
        nbformat.v4.new_code_cell(dimensionality),
        nbformat.v4.new_code_cell("checks.test_compute_dimensionality(compute_dimensionality)"),
        nbformat.v4.new_markdown_cell("### Exercise 2: `generate_correlated_features`"),
        nbformat.v4.new_code_cell(correlated),
        nbformat.v4.new_code_cell("checks_part1.test_generate_correlated_features(generate_correlated_features)"),
        nbformat.v4.new_code_cell("print('after the last check: never run')"),
    ]
    if extra is not None:
        cells.insert(extra_at, nbformat.v4.new_code_cell(extra))
    return nbformat.v4.new_notebook(cells=cells)


@pytest.fixture(scope="module")
def graded(tmp_path_factory) -> tuple[dict, Path]:
    catalogue = tmp_path_factory.mktemp("catalogue")
    stub = f"def compute_dimensionality(W):\n    {STUB_LINE}"
    nbformat.write(mini_notebook(stub, f"def generate_correlated_features(batch_size, feature_probability):\n    {STUB_LINE}"), catalogue / f"{PART}.ipynb")
    folder = tmp_path_factory.mktemp("submissions")
    submissions = {
        "correct": mini_notebook(DIMENSIONALITY, CORRELATED),
        "wrong": mini_notebook(DIMENSIONALITY.replace("norms.pow(2) /", "norms /"), UNCORRELATED),
        "stubbed": nbformat.read(catalogue / f"{PART}.ipynb", as_version=4),
        "crashing": mini_notebook(DIMENSIONALITY, CORRELATED, extra="import os\nos._exit(3)", extra_at=5),
        "endless": mini_notebook(DIMENSIONALITY, CORRELATED, extra="while True:\n    pass", extra_at=5),
        "cheating": mini_notebook("from part_utils.reference.part3_feature_geometry import compute_dimensionality", CORRELATED),
    }
    for learner, notebook in submissions.items():
        (folder / learner).mkdir()
        nbformat.write(notebook, folder / learner / f"{PART}.ipynb")
    results = grade_folder(folder, folder / "grades", time_limit=25.0, catalogue=catalogue)
    return results, folder / "grades"


def statuses(results: dict, learner: str) -> list[str]:
    (result,) = results[learner]
    return [verdict.status for verdict in result.verdicts]


def test_each_kind_of_submission_gets_its_verdicts(graded):
    results, _ = graded
    assert statuses(results, "correct") == [PASS, PASS]
    assert statuses(results, "wrong") == [FAIL, FAIL]
    assert statuses(results, "stubbed") == [STUB, STUB]
    # The crash and the endless loop come after the first check: that verdict stands, the rest is not run.
    assert statuses(results, "crashing") == [PASS, NOT_RUN]
    assert statuses(results, "endless") == [PASS, NOT_RUN]
    assert statuses(results, "cheating") == [PASS, PASS]


def test_problems_are_reported_and_messages_kept(graded):
    results, _ = graded
    assert "kernel died" in results["crashing"][0].problems[0]
    assert "time limit" in results["endless"][0].problems[0]
    assert results["cheating"][0].problems == ["imports part_utils.reference.part3_feature_geometry"]
    assert not results["correct"][0].problems
    wrong = results["wrong"][0].verdicts
    assert "squared norm" in wrong[0].message and "✘" not in wrong[0].message
    assert results["endless"][0].seconds < 60


def test_grades_are_written_as_csv_and_markdown(graded):
    results, out = graded
    rows = list(csv.DictReader((out / "grades.csv").open()))
    assert len(rows) == 2 * len(results)
    assert {row["status"] for row in rows if row["learner"] == "stubbed"} == {STUB}
    table = (out / "grades.md").read_text()
    assert "| learner | 09 compute_dimensionality | 09 generate_correlated_features | passed | problems |" in table
    assert "| correct | ✔ | ✔ | 2/2 |  |" in table


def test_the_last_check_ends_the_run(graded):
    # "after the last check" is never executed: grading stops at the last check cell.
    results, _ = graded
    assert results["correct"][0].seconds < 25


def test_a_real_solution_notebook_passes_every_exercise():
    exercises = exercises_of("03_feature_geometry")
    assert [exercise.check for exercise in exercises] == ["test_compute_dimensionality"]
    result = grade_notebook(ROOT / "solutions" / "03_feature_geometry.ipynb", time_limit=300)
    assert [verdict.status for verdict in result.verdicts] == [PASS] and not result.problems
