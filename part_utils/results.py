"""A part's measured results, which the notebook text quotes.

Every number the prose states comes from `section_data/results/partN.json`, written by the
notebook's own full-mode run: a code cell calls `results.record("name", value)` and the text
says `{{name:.3f}}` (see `tooling.claims`). A value is a number, or a list with one number
per seed, which the text quotes as its mean and spread.

Recording only happens when `WORKBOOK_RECORD_RESULTS=1` (set by `workbook.py claims`) and
never in fast mode, so a learner running a notebook never rewrites the shipped results.
"""

import json
import math
import os
import tempfile
from collections.abc import Sequence
from numbers import Real
from pathlib import Path

from part_utils.modes import FAST_MODE

RESULTS_DIR = Path(__file__).resolve().parents[1] / "section_data" / "results"
Value = float | list[float]


def results_path(part: int, folder: Path | None = None) -> Path:
    return (folder or Path(os.environ.get("WORKBOOK_RESULTS_DIR", RESULTS_DIR))) / f"part{part}.json"


def load_results(part: int, folder: Path | None = None) -> dict[str, Value]:
    path = results_path(part, folder)
    return json.loads(path.read_text()) if path.exists() else {}


def as_value(value: object) -> Value:
    """A plain float, or a list of floats, from a Python, numpy or torch number or sequence."""
    if hasattr(value, "tolist"):  # numpy arrays and torch tensors, 0-d included
        value = value.tolist()
    if isinstance(value, Real) and not isinstance(value, bool):
        number = float(value)
        if not math.isfinite(number):
            raise ValueError(f"a result must be finite, got {number}")
        return number
    if isinstance(value, Sequence) and not isinstance(value, str) and value:
        flat = [as_value(item) for item in value]
        if all(isinstance(item, float) for item in flat):
            return flat
    raise TypeError(f"a result is a number or a non-empty list of numbers, got {value!r}")


class Results:
    """The results of one part: `record` them as the notebook computes them."""

    def __init__(self, part: int) -> None:
        self.part = part
        self.recording = os.environ.get("WORKBOOK_RECORD_RESULTS", "0") not in ("", "0") and not FAST_MODE

    def record(self, name: str, value: object) -> object:
        """Store `value` under `name` (when recording) and return it unchanged."""
        stored = as_value(value)
        if self.recording:
            path = results_path(self.part)
            entries = load_results(self.part)
            entries[name] = stored
            path.parent.mkdir(parents=True, exist_ok=True)
            # Written whole, then renamed: an interrupted run never leaves half a file.
            with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as handle:
                json.dump(dict(sorted(entries.items())), handle, indent=1)
                handle.write("\n")
            os.chmod(handle.name, 0o644)  # a temporary file is private; the results file is not
            os.replace(handle.name, path)
        return value
