"""Numbers in the prose are bound to results files (tooling/claims.py, part_utils/results.py)."""

import json
import re

import nbformat
import pytest

import notebook_build
from part_utils import results
from tooling import claims


def test_placeholders_render_numbers_lists_statistics_and_quoted_literals():
    values = {"fvu": 0.01234, "absorption": [0.2, 0.4, 0.6], "count": 3.0}
    assert claims.render("FVU {{fvu:.3f}}", values) == "FVU 0.012"
    assert claims.render("{{absorption:.2f}}", values) == "0.40 ± 0.20"
    assert (
        claims.render("{{absorption|mean:.1f}}, {{absorption|range:.1f}}, {{absorption|n}}", values)
        == "0.4, 0.2–0.6, 3"
    )
    assert claims.render("{{count:.0f}} of 5, {{=0.2}} in the paper", values) == "3 of 5, 0.2 in the paper"
    with pytest.raises(claims.ClaimError, match="no entry"):
        claims.render("{{missing:.2f}}", values)
    with pytest.raises(claims.ClaimError, match="one number"):
        claims.render("{{fvu|mean}}", values)
    with pytest.raises(claims.ClaimError, match="unknown statistic"):
        claims.render("{{absorption|median}}", values)


def test_hand_written_decimals_percentages_and_ratios_are_found_outside_code_maths_and_exercise_numbers():
    prose = (
        "Exercise 5.1 and `x = 0.5` and $0.9^{250}$ are fine, as is {{fvu:.3f}} and {{=0.2}}; "
        "but FVU 0.0353, a 40% rise, 3.4× less and a cosine of at least 0.99. are not; version 1.2.3 is."
    )
    assert claims.hand_written_numbers(prose) == ["0.0353", "40%", "3.4×", "0.99"]


def test_every_number_in_the_prose_is_bound_to_a_result_and_the_notebooks_say_what_the_results_say():
    problems = claims.check()
    assert not problems, "\n".join(map(str, problems[:20]))


def test_a_number_edited_by_hand_in_a_generated_notebook_is_caught(tmp_path):
    part = next(
        claims.part_number(source)
        for source in notebook_build.source_files()
        if results.load_results(claims.part_number(source))
    )
    written = notebook_build.build(tmp_path, parts=[part])
    solution = next(path for path in written if path.parent.name == "solutions")
    notebook = nbformat.read(solution, as_version=4)
    cell = next(cell for cell in notebook.cells if cell.cell_type == "markdown" and re.search(r"\d\.\d", cell.source))
    cell.source = re.sub(r"(\d\.)(\d)", lambda m: m.group(1) + str((int(m.group(2)) + 1) % 10), cell.source, count=1)
    nbformat.write(notebook, solution)
    problems = claims.check([part], root=tmp_path)
    assert any("edited by hand" in problem.message and solution.name in problem.where for problem in problems)


def test_a_number_written_into_a_source_is_caught(tmp_path):
    source = tmp_path / "09_demo.py"
    source.write_text("# %% [markdown]\n# The FVU was 0.0353 in our run, {{fvu:.2f}} now.\n\n# %%\nx = 1\n")
    problems = claims.problems_in_source(source, {"fvu": 0.5})
    assert [problem.message.split(" is ")[0] for problem in problems] == ["'0.0353'"]


def test_results_are_recorded_only_when_asked_and_never_in_fast_mode(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBOOK_RESULTS_DIR", str(tmp_path))
    monkeypatch.setenv("WORKBOOK_RECORD_RESULTS", "1")
    monkeypatch.setattr(results, "FAST_MODE", False)
    recorder = results.Results(part=9)
    assert recorder.record("x", 0.5) == 0.5
    recorder.record("seeds", [1, 2, 3])
    assert json.loads((tmp_path / "part9.json").read_text()) == {"seeds": [1.0, 2.0, 3.0], "x": 0.5}
    monkeypatch.setattr(results, "FAST_MODE", True)
    results.Results(part=8).record("x", 1.0)
    monkeypatch.setattr(results, "FAST_MODE", False)
    monkeypatch.delenv("WORKBOOK_RECORD_RESULTS")
    results.Results(part=7).record("x", 1.0)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["part9.json"]
    with pytest.raises(ValueError, match="finite"):
        recorder.record("bad", float("nan"))


def test_no_source_keeps_a_placeholder_for_text_still_to_be_written():
    unfinished = [source.name for source in notebook_build.source_files() if "PLACEHOLDER" in source.read_text()]
    assert not unfinished, unfinished
