"""Side-by-side throughput: variants run in alternating blocks in one process, so that a change
in the machine's load affects all of them alike, and the result is a ratio."""

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

Block = Callable[[], int]
"""Runs one block of work and returns how many steps it did."""


@dataclass(frozen=True)
class Rates:
    steps_per_second: dict[str, float]
    baseline: str

    def ratio(self, name: str) -> float:
        return self.steps_per_second[name] / self.steps_per_second[self.baseline]

    def lines(self) -> list[str]:
        return [
            f"{name:<34}{rate:>9.0f} steps/s   ×{self.ratio(name):.2f} the {self.baseline}"
            for name, rate in self.steps_per_second.items()
        ]


def interleaved_rates(blocks: Mapping[str, Block], *, rounds: int, baseline: str, warmup_rounds: int = 1) -> Rates:
    """Steps per second of each variant over `rounds` rounds; each round runs every variant's block
    once, in an order rotated from round to round so that none always runs first."""
    names = list(blocks)
    for _ in range(warmup_rounds):
        for name in names:
            blocks[name]()
    seconds = dict.fromkeys(names, 0.0)
    steps = dict.fromkeys(names, 0)
    for round_index in range(rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            steps[name] += blocks[name]()
            seconds[name] += time.perf_counter() - start
    return Rates({name: steps[name] / seconds[name] for name in names}, baseline)
