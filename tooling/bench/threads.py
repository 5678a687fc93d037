"""Measure throughput per kind of work for each thread count and OpenMP wait policy, quiet and
with a busy neighbour: the evidence behind `part_utils.threads.THREADS`.

OpenMP reads its wait policy when torch loads, so each setting runs in its own process:
`python -m tooling.bench.threads KIND THREADS` prints that process's steps per second.
"""

import json
import os
import subprocess
import sys
import time

import torch

from tooling.bench import workloads
from tooling.bench.neighbour import busy_neighbour

KINDS = {
    "toy model (Parts 1-3)": (workloads.workbook_toy_model, 200),
    "toy SAE (Parts 4-5)": (workloads.workbook_toy_sae, 200),
    "transformer training (Part 6)": (workloads.transformer_training, 20),
    "SAE on activations (Part 6)": (workloads.activation_sae, 50),
    "dense decoding (Part 7)": (workloads.dense_decoding, 10),
}
WAIT_POLICIES = ("ACTIVE", "PASSIVE")


def measure_here(kind: str, threads: int, rounds: int = 5) -> float:
    torch.set_num_threads(threads)
    factory, steps = KINDS[kind]
    block = factory(steps)
    block()
    start = time.perf_counter()
    done = sum(block() for _ in range(rounds))
    return done / (time.perf_counter() - start)


def measure_in_process(kind: str, threads: int, wait_policy: str) -> float:
    environment = {**os.environ, "OMP_WAIT_POLICY": wait_policy, "TQDM_DISABLE": "1", "WORKBOOK_THREADS": str(threads)}
    output = subprocess.run(
        [sys.executable, "-m", "tooling.bench.threads", kind, str(threads)],
        env=environment,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(output.strip().splitlines()[-1])["steps_per_second"]


def thread_table(kinds: list[str] | None = None) -> list[dict[str, object]]:
    """Every kind × threads (1, 2) × wait policy, quiet and beside one busy process."""
    rows = []
    for kind in kinds or list(KINDS):
        for threads in (1, 2):
            for policy in WAIT_POLICIES:
                quiet = measure_in_process(kind, threads, policy)
                with busy_neighbour():
                    busy = measure_in_process(kind, threads, policy)
                rows.append({"kind": kind, "threads": threads, "wait policy": policy, "quiet": quiet, "busy": busy})
                print(
                    f"  {kind:<32}{threads:>3} thread(s)  {policy:<8}{quiet:>9.1f} quiet {busy:>9.1f} busy steps/s",
                    flush=True,
                )
    return rows


if __name__ == "__main__":
    print(json.dumps({"steps_per_second": measure_here(sys.argv[1], int(sys.argv[2]))}))
