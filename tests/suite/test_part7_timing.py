"""The benchmark helper (part_utils/timing.py): warm-up, synchronisation, statistics, memory."""

import sys

import pytest
import torch

from part_utils import timing
from part_utils.timing import Timing, format_bytes, format_seconds, measure


class FakeDevice:
    """A fake clock and a fake device whose work only 'finishes' when synchronised."""

    def __init__(self, durations: list[float]) -> None:
        self.now = 0.0
        self.durations = iter(durations)
        self.pending = 0.0
        self.events: list[str] = []

    def clock(self) -> float:
        self.events.append("clock")
        return self.now

    def sync(self) -> None:
        self.events.append("sync")
        self.now += self.pending  # waiting for queued work takes its time
        self.pending = 0.0

    def launch(self) -> None:
        self.events.append("call")
        self.pending += next(self.durations)  # asynchronous: returns at once

    def measure(self, **options: object) -> Timing:
        """`measure` on this device's work, clock and synchronisation (`sync=None`: a benchmark that forgets it)."""
        sync = options.pop("sync", self.sync) or (lambda: None)
        settings = {"warmup": 1, "budget_seconds": 0.0, "memory": False, **options}
        return measure(self.launch, torch.device("cpu"), clock=self.clock, sync=sync, **settings)


def test_every_timed_run_is_fenced_by_synchronisation():
    fake = FakeDevice([9.0, 9.0] + [1.0, 2.0, 3.0, 4.0, 5.0])
    result = fake.measure(warmup=2, min_runs=5)
    assert fake.events[:2] == ["call", "call"]  # warm-up, untimed
    assert fake.events[2:] == ["sync", "clock", "call", "sync", "clock"] * 5
    assert result.seconds == (1.0, 2.0, 3.0, 4.0, 5.0)  # the queued work is timed, warm-up excluded
    assert result.median == 3.0 and result.quartiles == (2.0, 4.0)


def test_without_synchronisation_an_asynchronous_device_looks_free():
    fake = FakeDevice([0.0] + [1.0] * 5)
    result = fake.measure(min_runs=5, sync=None)
    assert result.median == 0.0  # what a benchmark that forgets to synchronise would report


def test_the_default_synchronisation_is_the_devices(monkeypatch):
    calls = []
    monkeypatch.setattr(timing, "synchronize", lambda device: calls.append(device))
    device = torch.device("cpu")
    measure(lambda: None, device, warmup=0, min_runs=3, budget_seconds=0.0, memory=False)
    assert calls == [device] * 6


def test_runs_continue_until_the_budget_and_stop_at_max_runs():
    fake = FakeDevice([0.0] + [0.125] * 100)
    result = fake.measure(min_runs=2, budget_seconds=1.0)
    assert len(result.seconds) == 8  # 0.125 s each: eight runs reach the 1 s budget
    fake = FakeDevice([0.0] + [0.125] * 100)
    result = fake.measure(min_runs=2, max_runs=4, budget_seconds=1.0)
    assert len(result.seconds) == 4


def test_timing_statistics_and_formatting():
    result = Timing(seconds=(0.004, 0.001, 0.003, 0.002, 0.1), peak_bytes=3 * 2**20)
    assert result.median == 0.003
    assert result.quartiles == (0.002, 0.004)
    assert str(result) == "3 ms (IQR 2 ms to 4 ms, 5 runs), peak +3.0 MB"
    assert Timing(seconds=(0.5,), peak_bytes=None).quartiles == (0.5, 0.5)
    assert [format_seconds(s) for s in (2.5, 0.0123, 4.5e-5, 3e-9)] == ["2.5 s", "12.3 ms", "45 µs", "3 ns"]
    assert [format_bytes(n) for n in (512, 2048, 5 * 2**20, 3 * 2**30)] == ["512 B", "2.0 kB", "5.0 MB", "3.0 GB"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="peak resident memory is read from /proc on Linux")
def test_cpu_peak_memory_sees_a_large_temporary():
    size = 64 * 2**20

    def allocate() -> None:
        torch.ones(size // 4)  # filled, so its pages are really touched

    peak = timing.peak_memory(allocate, torch.device("cpu"), sync=lambda: None)
    if peak is None:
        pytest.skip("this kernel refuses to reset the peak resident size")
    assert 0.9 * size <= peak <= 1.5 * size


def test_cuda_peak_memory_resets_the_counter_and_synchronises(monkeypatch):
    events = []
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device: events.append("reset"))
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device: 100)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device: 350)
    peak = timing.peak_memory(lambda: events.append("call"), torch.device("cuda"), sync=lambda: events.append("sync"))
    assert peak == 250
    assert events == ["sync", "reset", "call", "sync"]


def test_mps_reports_memory_still_held_by_the_result(monkeypatch):
    allocated = [1_000]
    monkeypatch.setattr(torch.mps, "current_allocated_memory", lambda: allocated[0])

    def call() -> str:
        allocated[0] += 400
        return "result"

    assert timing.peak_memory(call, torch.device("mps"), sync=lambda: None) == 400
