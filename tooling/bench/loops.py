"""The workbook's training loops against the plain classroom loop, side by side in one process,
quiet and with one busy process beside them (`bench --loops`)."""

import torch

from tooling.bench import workloads
from tooling.bench.compare import Rates, interleaved_rates
from tooling.bench.neighbour import busy_neighbour

SETTINGS = {
    "toy model (16 inst, 5 feats, d_hidden 2, batch 1024)": (
        workloads.workbook_toy_model,
        workloads.classroom_toy_model,
        {},
    ),
    "toy SAE (16 inst, d_in 2, d_sae 5, batch 1024)": (workloads.workbook_toy_sae, workloads.classroom_toy_sae, {}),
    "SAE (16 inst, d_in 64, d_sae 50, batch 1024)": (
        workloads.workbook_toy_sae,
        workloads.classroom_toy_sae,
        {"wide": True},
    ),
}
WORKBOOK, CLASSROOM = "workbook loop", "plain classroom loop"


def compare_loops(*, threads: int, busy: bool, steps: int = 500, rounds: int = 4) -> dict[str, Rates]:
    """Steps/s of both loops for each setting, interleaved in blocks of `steps`."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    results = {}
    try:
        for name, (workbook, classroom, options) in SETTINGS.items():
            blocks = {WORKBOOK: workbook(steps, **options), CLASSROOM: classroom(steps, **options)}
            if busy:
                with busy_neighbour():
                    results[name] = interleaved_rates(blocks, rounds=rounds, baseline=CLASSROOM)
            else:
                results[name] = interleaved_rates(blocks, rounds=rounds, baseline=CLASSROOM)
    finally:
        torch.set_num_threads(previous)
    return results


def print_loop_comparison(thread_counts: tuple[int, ...] = (1, 2)) -> None:
    quiet_rates = {}
    for threads in thread_counts:
        for busy in (False, True):
            print(f"\n{threads} thread(s), {'one busy process beside' if busy else 'quiet'}:")
            for name, rates in compare_loops(threads=threads, busy=busy).items():
                print(f"  {name}")
                for line in rates.lines():
                    print(f"    {line}")
                if busy and (threads, name) in quiet_rates:
                    kept = rates.steps_per_second[WORKBOOK] / quiet_rates[threads, name]
                    print(f"    the workbook loop keeps {kept:.2f} of its quiet speed")
                else:
                    quiet_rates[threads, name] = rates.steps_per_second[WORKBOOK]
