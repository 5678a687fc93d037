"""Generated notebooks and reference modules must match a fresh generation from source/."""

import re

import nbformat

import notebook_build


def test_generated_files_match_their_sources():
    stale = notebook_build.stale_files()
    assert not stale, (
        f"regenerate with `python workbook.py build`: {[str(p.relative_to(notebook_build.ROOT)) for p in stale]}"
    )


def test_every_source_produces_both_notebooks_and_a_reference_module():
    for source in notebook_build.source_files():
        for path in notebook_build.output_paths(source).values():
            assert path.exists(), path


def test_exercise_notebooks_hide_every_solution():
    for source in notebook_build.source_files():
        paths = notebook_build.output_paths(source)
        exercise = nbformat.read(paths["exercise_notebook"], as_version=4)
        solution = nbformat.read(paths["solution_notebook"], as_version=4)
        stubs = [cell for cell in exercise.cells if notebook_build.STUB in cell.source]
        assert stubs, f"{source.name} has no exercises"
        assert not any(notebook_build.STUB in cell.source for cell in solution.cells)
        assert not any(
            marker in cell.source
            for cell in exercise.cells + solution.cells
            for marker in (notebook_build.BEGIN, notebook_build.END)
        )


def test_solution_markers_become_stubs_at_the_right_indent(tmp_path):
    source = tmp_path / "source" / "09_demo.py"
    source.parent.mkdir()
    source.write_text(
        '# %% [markdown]\n# Demo\n\n# %% tags=["reference"]\ndef f(x):\n    y = 1\n'
        "    # BEGIN SOLUTION\n    return x + y\n    # END SOLUTION\n"
    )
    outputs = notebook_build.generate(source)
    exercise = nbformat.reads(outputs.exercise_notebook, as_version=4)
    assert exercise.cells[1].source == f"def f(x):\n    y = 1\n    {notebook_build.STUB}"
    assert "return x + y" in outputs.reference_module and "BEGIN" not in outputs.reference_module


def test_unbalanced_markers_are_refused(tmp_path):
    source = tmp_path / "09_demo.py"
    source.write_text("# %%\ndef f(x):\n    # BEGIN SOLUTION\n    return x\n")
    try:
        notebook_build.generate(source)
    except ValueError as error:
        assert "unbalanced" in str(error)
    else:
        raise AssertionError("unbalanced markers were accepted")


PACING = re.compile(
    r"^\*\*Difficulty\*\* [●○]{5} · \*\*Importance\*\* [●○]{5} · \*\*Plan for\*\* \d+ minutes$", re.MULTILINE
)
HINT = re.compile(r"<details><summary>Hint (\d): [^<]+</summary>")


def test_every_exercise_has_a_pacing_line_hints_and_a_pointer_to_its_solution():
    """Each exercise cell is introduced by markdown with its difficulty, importance and time, one or
    two progressive hints (Hint 1 before Hint 2), and where the solution is."""
    for source in notebook_build.source_files():
        notebook = nbformat.read(notebook_build.output_paths(source)["exercise_notebook"], as_version=4)
        introduction: list[str] = []
        for cell in notebook.cells:
            if cell.cell_type == "markdown":
                introduction.append(cell.source)
                continue
            if notebook_build.STUB in cell.source:
                text = "\n".join(introduction)
                where = f"{source.stem}: the exercise before `{cell.source.splitlines()[0][:50]}`"
                assert PACING.search(text), f"{where} has no pacing line"
                numbers = [int(n) for n in HINT.findall(text)]
                assert numbers in ([1], [1, 2]), f"{where} has hints {numbers}"
                assert f"solutions/{source.stem}.ipynb" in text, f"{where} does not say where its solution is"
            introduction = []
