"""Timing a function honestly: warm-up, device synchronisation, many runs, median and spread, peak memory.

    timing = measure(lambda: decode(values, indices, W_dec), device)
    print(timing)  # 1.23 ms (IQR 1.20 to 1.31 ms, 42 runs), peak +12.0 MB

- Warm-up runs come first and are not timed: the first calls pay for lazy initialisation,
  kernel selection and cold caches.
- GPUs run asynchronously: a call returns once its kernels are *queued*. Every timed run
  is therefore fenced by a synchronisation before the clock starts and before it stops.
- One run says little on a shared machine, so we keep every run and report the median
  (robust to the occasional slow outlier) with the interquartile range as the spread.
- Peak memory is measured in one extra, untimed run, since the instruments themselves
  cost time: the CUDA allocator's peak counter, the peak resident set size on Linux CPUs,
  and on MPS (which has no peak counter) the memory still held when the call returns.

The clock and the synchronisation are parameters, so tests can drive `measure` with a fake
clock and check that it synchronises.
"""

import ctypes
import ctypes.util
import re
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from part_utils.device import synchronize

PROC_STATUS = Path("/proc/self/status")
PROC_CLEAR_REFS = Path("/proc/self/clear_refs")


@dataclass(frozen=True)
class Timing:
    seconds: tuple[float, ...]
    """Every timed run, in order."""
    peak_bytes: int | None
    """Extra memory at the peak of one run (None where the device gives no way to measure it)."""

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def quartiles(self) -> tuple[float, float]:
        if len(self.seconds) < 2:
            return self.seconds[0], self.seconds[0]
        q1, _, q3 = statistics.quantiles(self.seconds, n=4, method="inclusive")
        return q1, q3

    def __str__(self) -> str:
        q1, q3 = self.quartiles
        memory = "" if self.peak_bytes is None else f", peak +{format_bytes(self.peak_bytes)}"
        spread = f"IQR {format_seconds(q1)} to {format_seconds(q3)}, {len(self.seconds)} runs"
        return f"{format_seconds(self.median)} ({spread}){memory}"


def measure(
    function: Callable[[], object],
    device: torch.device,
    *,
    warmup: int = 3,
    min_runs: int = 10,
    max_runs: int = 200,
    budget_seconds: float = 1.0,
    memory: bool = True,
    clock: Callable[[], float] = time.perf_counter,
    sync: Callable[[], None] | None = None,
) -> Timing:
    """Time `function()` on `device`: `warmup` untimed calls, then at least `min_runs` timed
    ones, more (up to `max_runs`) while the timed runs total less than `budget_seconds`."""
    sync = sync if sync is not None else (lambda: synchronize(device))
    for _ in range(warmup):
        function()
    seconds: list[float] = []
    while len(seconds) < max_runs and (len(seconds) < min_runs or sum(seconds) < budget_seconds):
        sync()
        start = clock()
        function()
        sync()
        seconds.append(clock() - start)
    return Timing(tuple(seconds), peak_memory(function, device, sync) if memory else None)


def peak_memory(function: Callable[[], object], device: torch.device, sync: Callable[[], None]) -> int | None:
    """Bytes allocated at the peak of one call, above what was allocated before it."""
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        function()
        sync()
        return torch.cuda.max_memory_allocated(device) - before
    if device.type == "mps":
        before = torch.mps.current_allocated_memory()
        result = function()  # kept alive so that its memory still counts
        sync()
        held = torch.mps.current_allocated_memory() - before
        del result
        return held
    return _peak_resident_growth(function) if sys.platform.startswith("linux") else None


def _peak_resident_growth(function: Callable[[], object]) -> int | None:
    """Linux: growth of the peak resident set size during one call (None if the kernel refuses).

    Freed memory first goes back to the operating system (glibc's `malloc_trim`), so that
    memory the call allocates must be faulted in again and shows up in the peak; then the
    kernel's peak counter (VmHWM) is reset to the current size.
    """
    libc_name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(libc_name) if libc_name is not None else None
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)
    try:
        PROC_CLEAR_REFS.write_text("5")
        before = _status_bytes("VmRSS")
    except OSError:
        return None
    function()
    return max(0, _status_bytes("VmHWM") - before)


def _status_bytes(key: str) -> int:
    match = re.search(rf"^{key}:\s+(\d+) kB", PROC_STATUS.read_text(), flags=re.MULTILINE)
    assert match is not None, f"{key} missing from {PROC_STATUS}"
    return int(match.group(1)) * 1024


def format_seconds(seconds: float) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def format_bytes(n_bytes: int) -> str:
    for unit, scale in (("GB", 2**30), ("MB", 2**20), ("kB", 2**10)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:.1f} {unit}"
    return f"{n_bytes} B"
