"""How many CPU threads torch uses, per kind of work, chosen by measurement.

The workbook's tensors are small. Extra threads then buy little on a quiet machine and cost
a great deal on a shared one: OpenMP threads spin while they wait for each other, so with
one other busy process on a 2-core machine a 2-thread toy loop runs many times slower, where
a 1-thread loop barely slows. `python workbook.py bench --threads` measures every kind of
work at 1 and 2 threads, quiet and beside a busy process; `THREADS` below is what it found.

`WORKBOOK_THREADS=N` (set before the kernel starts, or with `%env` before the setup cell)
overrides the choice for every kind of work.
"""

import contextlib
import os
from collections.abc import Iterator
from typing import Literal

import torch

Work = Literal["toy", "transformer", "decoding"]
THREADS: dict[Work, int] = {"toy": 1, "transformer": 1, "decoding": 2}
"""Toy models and SAEs (Parts 1 to 5, Part 6's SAEs, Part 8), Part 6's transformer, Part 7's
decoding benchmark at d_sae 49,152 (the only work with matrices large enough to share)."""
OVERRIDE = "WORKBOOK_THREADS"


def threads_for(work: Work) -> int:
    override = os.environ.get(OVERRIDE, "").strip()
    if override:
        try:
            return max(1, int(override))
        except ValueError as error:
            raise ValueError(f"{OVERRIDE} must be a whole number of threads, got {override!r}") from error
    return min(THREADS[work], os.cpu_count() or 1)


def use_threads(work: Work = "toy") -> str:
    """Set torch's thread count for `work`; return a one-line description for the notebook's output."""
    count = threads_for(work)
    torch.set_num_threads(count)
    source = (
        f"{OVERRIDE}={os.environ[OVERRIDE]}"
        if os.environ.get(OVERRIDE, "").strip()
        else f"the workbook's choice for {work} work; set {OVERRIDE} to change"
    )
    return f"CPU threads: {count} ({source}), OpenMP wait policy {os.environ.get('OMP_WAIT_POLICY', 'default')}"


@contextlib.contextmanager
def threads(work: Work) -> Iterator[int]:
    """Run a block with the thread count chosen for `work`, then restore the previous count."""
    previous = torch.get_num_threads()
    count = threads_for(work)
    torch.set_num_threads(count)
    try:
        yield count
    finally:
        torch.set_num_threads(previous)
