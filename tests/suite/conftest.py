"""Shared fixtures for the workbook's own test suite."""

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.checking import CheckFailure

ROOT = Path(__file__).resolve().parents[2]
TEST_OUTPUT = ROOT / "test-output"


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
