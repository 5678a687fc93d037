"""Exercise notebooks run up to their first stub, whose check says "not implemented";
every executed solution notebook, exported to HTML, draws all its figures in headless
Chromium with the network refused. (nbval runs the solution notebooks themselves.)"""

import functools

import nbformat
import pytest

import notebook_build
from tests.suite.nbval_outputs import nbval_run
from tooling.html_export import export_offline_html
from tooling.notebook_runner import ExecutionResult, execute_notebook

SOURCES = notebook_build.source_files()
PARTS = [source.stem for source in SOURCES]


def _until_first_check_after_a_stub(notebook: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """The notebook cut after the first code cell that follows the first stub."""
    code_cells = [i for i, cell in enumerate(notebook.cells) if cell.cell_type == "code"]
    first_stub = next(i for i in code_cells if notebook_build.STUB in notebook.cells[i].source)
    check_cell = next(i for i in code_cells if i > first_stub)
    cut = nbformat.from_dict(notebook)
    cut.cells = notebook.cells[: check_cell + 1]
    return cut


@pytest.mark.parametrize("part", PARTS)
def test_exercise_notebook_runs_to_its_first_check_which_reports_not_implemented(part, tmp_path):
    exercise = notebook_build.ROOT / "notebooks" / f"{part}.ipynb"
    cut = _until_first_check_after_a_stub(nbformat.read(exercise, as_version=4))
    path = exercise.parent / f".{part}.until-first-check.ipynb"  # beside the original, so setup finds the root
    nbformat.write(cut, path)
    try:
        result = execute_notebook(path, fast=True, stop_on_error=False)
    finally:
        path.unlink()
    errors = [
        (index, output)
        for index, cell in enumerate(result.notebook.cells)
        if cell.cell_type == "code"
        for output in cell.outputs
        if output.output_type == "error"
    ]
    assert errors, "the first check did not fail on a stub"
    index, error = errors[0]
    assert index == len(cut.cells) - 1, f"cell {index} failed before the first check: {error.ename}: {error.evalue}"
    assert error.ename == "NotImplementedYet" and "is not implemented yet" in error.evalue
    shown = "\n".join(error.traceback)
    assert "Traceback" not in shown and len(error.traceback) == 1, "the learner should see one line, not a traceback"


@functools.cache
def executed_solution(part: str) -> ExecutionResult:
    result = execute_notebook(notebook_build.ROOT / "solutions" / f"{part}.ipynb", fast=True)
    assert result.error is None, result.error
    return result


TIMING_CELL = "# Timings vary from run to run."


def _figure_data_and_text(notebook: nbformat.NotebookNode) -> list[object]:
    """What a learner sees, minus plotly's random div ids: printed text (joined per cell, since the
    kernel may flush one cell's prints in several pieces), figure data, and HTML tables. Cells that start with
    TIMING_CELL show measured times, which differ between runs by nature, and are left out."""
    seen = []
    for cell in notebook.cells:
        if cell.cell_type != "code" or cell.source.startswith(TIMING_CELL):
            continue
        outputs = cell.get("outputs", [])
        text = "".join(output.text for output in outputs if output.output_type == "stream")
        if text:
            seen.append(text)
        for output in outputs:
            data = output.get("data", {})
            if "application/vnd.plotly.v1+json" in data:
                seen.append(data["application/vnd.plotly.v1+json"]["data"])
            elif "text/html" in data:  # tables and example lists (plotly's own HTML carries random ids)
                seen.append(data["text/html"])
    return seen


@pytest.mark.parametrize("part", PARTS)
def test_fast_mode_is_deterministic(part):
    """Two runs in fresh kernels show the same: nbval's run (when this session made one) and ours."""
    path = notebook_build.ROOT / "solutions" / f"{part}.ipynb"
    first = nbval_run(path)
    if first is None:
        again = execute_notebook(path, fast=True)
        assert again.error is None, again.error
        first = again.notebook
    assert _figure_data_and_text(first) == _figure_data_and_text(executed_solution(part).notebook)


ANIMATIONS_AT_FIRST_FRAME = """() => [...document.querySelectorAll('.plotly-graph-div')]
    .filter(d => d._transitionData && d._transitionData._frames && d._transitionData._frames.length > 1)
    .map(d => (d._fullLayout.sliders && d._fullLayout.sliders.length ? d._fullLayout.sliders[0].active : 0))"""


EXPLORER = """() => [...document.querySelectorAll('.plotly-graph-div')].findIndex(d =>
    d._fullLayout.sliders && d._fullLayout.sliders.length
    && (d._fullLayout.sliders[0].currentvalue.prefix || '').startsWith('feature probability'))"""
SLIDER_STATE = """i => { const d = document.querySelectorAll('.plotly-graph-div')[i];
    return [d._fullLayout.sliders[0].active, JSON.stringify(d.data.map(trace => [trace.x, trace.y]))] }"""


def move_explorer_slider(page) -> tuple[list, list]:
    """Click three quarters along the Part 1 explorer's slider rail, as a reader would; the
    slider's state and the plotted data before and after."""
    index = page.evaluate(EXPLORER)
    assert index >= 0, "the kernel-free explorer figure is missing"
    figure = page.query_selector_all(".plotly-graph-div")[index]
    figure.scroll_into_view_if_needed()
    before = page.evaluate(SLIDER_STATE, index)
    rail = figure.query_selector(".slider-rail-rect").bounding_box()
    page.mouse.click(rail["x"] + 0.75 * rail["width"], rail["y"] + rail["height"] / 2)
    page.wait_for_timeout(800)
    return before, page.evaluate(SLIDER_STATE, index)


VISIBLE_TEXT = "element => element.innerText.trim()"  # innerText leaves out what is not rendered
IS_OPEN = "details => details.open"


def check_fold(fold) -> None:
    """One <details>: closed at load, hiding rendered markdown with text besides its summary; a click on
    the summary opens it and shows that text."""
    summary, content = fold.locator(":scope > summary"), fold.locator(":scope > :not(summary)")
    label = summary.evaluate(VISIBLE_TEXT)
    assert not fold.evaluate(IS_OPEN), f"{label!r} is open at load"
    assert content.count() and "".join(content.all_text_contents()).strip(), f"{label!r} holds nothing"
    assert fold.evaluate(VISIBLE_TEXT) == label and not content.first.is_visible(), f"{label!r} shows its content"
    summary.click()
    assert fold.evaluate(IS_OPEN), f"{label!r} did not open"
    assert content.first.is_visible() and fold.evaluate(VISIBLE_TEXT) != label, f"{label!r} shows nothing when open"


@pytest.mark.parametrize("part", PARTS)
def test_solution_figures_render_offline_in_headless_chromium(part, test_output_dir, offline_page):
    """Every figure draws with the network refused; animations wait at their first frame; maths is
    typeset (MathML, no script); hints and answers stay folded until clicked; one screenshot per figure
    lands in the test's output folder."""
    result = executed_solution(part)
    html_path = test_output_dir / f"{part}.html"
    html_path.write_text(export_offline_html(result.notebook))
    expected_figures = sum(
        "application/vnd.plotly.v1+json" in output.get("data", {})
        for cell in result.notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
    )
    assert expected_figures > 0

    page = offline_page.page
    page.goto(html_path.as_uri(), wait_until="load", timeout=120_000)
    page.wait_for_function(
        "n => document.querySelectorAll('.plotly-graph-div').length >= n "
        "&& [...document.querySelectorAll('.plotly-graph-div')].every(d => d.querySelector('svg.main-svg'))",
        arg=expected_figures,
        timeout=120_000,
    )
    drawn = page.eval_on_selector_all(".plotly-graph-div", "divs => divs.map(d => !!d.querySelector('svg.main-svg'))")
    assert len(drawn) == expected_figures and all(drawn)
    page.wait_for_timeout(2_000)
    assert all(active == 0 for active in page.evaluate(ANIMATIONS_AT_FIRST_FRAME)), "an animation started by itself"
    maths_in_source = any("$" in cell.source for cell in result.notebook.cells if cell.cell_type == "markdown")
    if maths_in_source:
        assert page.locator("math").count() > 0, "no maths was typeset"
        assert "$$" not in page.inner_text("body"), "raw TeX is left in the page"
        assert page.eval_on_selector_all("math", "ms => ms.every(m => m.textContent.trim())"), "a formula is empty"
    for index, figure in enumerate(page.query_selector_all(".plotly-graph-div")):
        figure.screenshot(path=str(test_output_dir / f"{part}-figure-{index:02d}.png"))
    page.screenshot(path=str(test_output_dir / f"{part}.png"), full_page=True)
    if part == "01_toy_models":  # the explorer works without a kernel: its slider changes the plot
        (active_before, data_before), (active_after, data_after) = move_explorer_slider(page)
        assert active_before == 0 and active_after > 0 and data_after != data_before
    markdown = "".join(cell.source for cell in result.notebook.cells if cell.cell_type == "markdown")
    folds = page.locator("details")
    assert folds.count() == markdown.count("<details"), "a hint or answer is missing"
    for index in range(folds.count()):
        check_fold(folds.nth(index))
    assert not offline_page.errors, offline_page.errors
    assert not offline_page.refused, f"the page tried to reach the network: {offline_page.refused[:3]}"
