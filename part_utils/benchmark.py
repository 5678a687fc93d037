"""Benchmarks (not tests): `python workbook.py bench [--skip-full] [--parts 01 04]`.

Prints the wall time of executing each solution notebook in full and fast mode, and the
training throughput of the toy model (16 instances, 5 features, d_hidden 2, batch 1024)
for several CPU thread counts.
"""

import argparse
import os
import time
from pathlib import Path

import torch

from part_utils.device import get_device, synchronize
from part_utils.notebook_runner import execute_notebook
from part_utils.reference.part1_toy_models import ToyModel, ToyModelConfig
from part_utils.seeding import seed_everything
from part_utils.training import train_self_supervised

ROOT = Path(__file__).resolve().parent.parent


def toy_training_steps_per_second(steps: int = 3_000, warmup: int = 300) -> float:
    """Steps/s of the shared training loop on the Part 1 five-feature setting."""
    seed_everything(0)
    device = get_device()
    model = ToyModel(
        ToyModelConfig(n_inst=16, n_features=5, d_hidden=2),
        feature_probability=50 ** -torch.linspace(0, 1, 16)[:, None],
        importance=0.9 ** torch.arange(5),
        device=device,
    )
    train_self_supervised(model, steps=warmup, batch_size=1024, lr=1e-3)
    synchronize(device)
    start = time.perf_counter()
    train_self_supervised(model, steps=steps, batch_size=1024, lr=1e-3, log_every=steps)
    synchronize(device)
    return steps / (time.perf_counter() - start)


def notebook_seconds(part: str, *, fast: bool) -> float:
    result = execute_notebook(ROOT / "solutions" / f"{part}.ipynb", fast=fast)
    if result.error is not None:
        raise RuntimeError(f"{part} failed in {'fast' if fast else 'full'} mode:\n{result.error}")
    return result.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip-full", action="store_true", help="time fast mode only")
    parser.add_argument("--parts", nargs="*", help="notebook number prefixes, e.g. 01 04 (default: all)")
    parser.add_argument("--skip-notebooks", action="store_true")
    args = parser.parse_args()
    os.environ["TQDM_DISABLE"] = "1"
    print(f"torch {torch.__version__}, device {get_device()}, {os.cpu_count()} CPUs")

    print("\nToy model training throughput (16 inst, 5 feats, d_hidden 2, batch 1024):")
    default_threads = torch.get_num_threads()
    for threads in sorted({1, 2, default_threads}):
        torch.set_num_threads(threads)
        print(f"  {threads} thread(s): {toy_training_steps_per_second():7.0f} steps/s")
    torch.set_num_threads(default_threads)

    if args.skip_notebooks:
        return
    parts = sorted(path.stem for path in (ROOT / "solutions").glob("[0-9][0-9]_*.ipynb"))
    if args.parts:
        parts = [part for part in parts if part[:2] in args.parts]
    print("\nSolution notebooks, wall time of a full execution in a fresh kernel:")
    print(f"  {'notebook':<28}{'full':>10}{'fast':>10}")
    for part in parts:
        full = "skipped" if args.skip_full else f"{notebook_seconds(part, fast=False):9.1f}s"
        fast = f"{notebook_seconds(part, fast=True):9.1f}s"
        print(f"  {part:<28}{full:>10}{fast:>10}", flush=True)


if __name__ == "__main__":
    main()
