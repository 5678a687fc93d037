"""Shared fixtures for the workbook's own test suite."""

import functools
import itertools
import linecache
import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from einops import einsum

from part_utils.threads import threads_for
from tests.checking import CheckFailure

torch.set_num_threads(threads_for("toy"))  # the same policy as the notebooks' setup cell

ROOT = Path(__file__).resolve().parents[2]
TEST_OUTPUT = ROOT / "test-output"


def stub(*args: object, **kwargs: object) -> None:
    """What an exercise looks like before the learner writes it."""
    raise NotImplementedError("Exercise: write this part, run the cell, then run the check below.")


def notebook_cells(*cells: str, **variables: object) -> dict[str, object]:
    """Run source as a notebook does: each cell its own file, known to linecache, all in one `__main__` namespace
    that also holds `variables` (the notebook's own numbers and tensors, say)."""
    namespace: dict[str, object] = {"__name__": "__main__", "torch": torch, "F": F, "einsum": einsum, **variables}
    for source in cells:
        filename = f"<notebook cell {next(_cell_numbers)}>"
        linecache.cache[filename] = (len(source), None, source.splitlines(keepends=True), filename)
        exec(compile(source, filename, "exec"), namespace)
    return namespace


def notebook_function(source: str, name: str, **variables: object) -> Any:
    """The function `name` that one notebook cell defines, beside the notebook's `variables`."""
    return notebook_cells(source, **variables)[name]


_cell_numbers = itertools.count()


def with_extra_draws(function: Any, draws: int) -> Any:
    """A correct function that first draws `draws` random numbers, keeping its signature."""

    @functools.wraps(function)
    def drawing(*args: Any, **kwargs: Any) -> Any:
        torch.rand(draws)
        return function(*args, **kwargs)

    return drawing


class CheckRunner:
    """Runs a learner-facing check and reports its pass line or its failure message."""

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self.capsys = capsys

    def passes(self, check: Callable[[object], None], learner: object) -> str:
        self.capsys.readouterr()
        check(learner)
        lines = self.capsys.readouterr().out.strip().splitlines()
        assert lines and lines[-1].startswith("✔"), f"no pass line, got {lines!r}"
        return lines[-1]

    def fails(self, check: Callable[[object], None], learner: object, expected: str) -> str:
        """The check must fail, print nothing, and its message must contain `expected` (a regex)."""
        self.capsys.readouterr()
        with pytest.raises(CheckFailure) as failure:
            check(learner)
        message = str(failure.value)
        assert re.search(expected, message), f"expected a message matching {expected!r}, got {message!r}"
        assert "✔" not in self.capsys.readouterr().out
        return message


@pytest.fixture
def checks(capsys: pytest.CaptureFixture[str]) -> CheckRunner:
    return CheckRunner(capsys)


@pytest.fixture
def test_output_dir(request: pytest.FixtureRequest) -> Path:
    """A folder under test-output/ named after the test, kept after the run (screenshots, HTML)."""
    folder = TEST_OUTPUT / re.sub(r"[^\w.-]+", "_", request.node.name)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


class OfflinePage:
    """A headless-Chromium page that refuses every network request and records page errors."""

    def __init__(self, page) -> None:
        self.page = page
        self.errors: list[str] = []
        self.refused: list[str] = []
        page.on("pageerror", lambda error: self.errors.append(str(error)))
        page.route("**/*", self._refuse_network)

    def _refuse_network(self, route) -> None:
        if route.request.url.startswith(("file:", "data:", "blob:")):
            route.continue_()
        else:
            self.refused.append(route.request.url)
            route.abort()


@pytest.fixture
def offline_page() -> Iterator[OfflinePage]:
    executable = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        if os.environ.get("WORKBOOK_REQUIRE_BROWSER") == "1":
            pytest.fail("Chromium is required (WORKBOOK_REQUIRE_BROWSER=1) but not installed: apt-get install chromium")
        pytest.skip("Chromium is not installed (apt-get install chromium); CI runs this test")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS)
        try:
            yield OfflinePage(browser.new_page(viewport={"width": 1300, "height": 900}))
        finally:
            browser.close()
