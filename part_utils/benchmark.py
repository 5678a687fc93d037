"""Benchmarks (not tests): `python workbook.py bench [--skip-full] [--parts 01 04] [--sae] [--circuits]`.

Prints the wall time of executing each solution notebook in full and fast mode, the
training throughput of the toy model (16 instances, 5 features, d_hidden 2, batch 1024)
for several CPU thread counts, with --sae, Part 4's feature recovery for each
resampling method and training recipe and, with --circuits, Part 7's targets: the
Jacobian between SAEs (loop against vectorised) and the three sparse decoders.
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


def toy_sae_recovery(*, steps: int = 20_000) -> None:
    """Part 4's setting: per recipe, instances recovering all 5 features at cos >= 0.99 with no dead latent."""
    from part_utils.reference.part4_toy_sae import ToySAE, ToySAEConfig, init_encoder_as_decoder_transpose, recovery_report
    from part_utils.sae_training import train_sae
    from part_utils.training import constant_lr, cosine_decay_lr

    seed_everything(0)
    device = get_device()
    single = ToyModel(ToyModelConfig(n_inst=1, n_features=5, d_hidden=2), feature_probability=0.025, device=device)
    train_self_supervised(single, steps=6_000, lr=3e-3, lr_schedule=cosine_decay_lr)
    model = ToyModel(ToyModelConfig(n_inst=16, n_features=5, d_hidden=2), feature_probability=0.025, device=device)
    with torch.no_grad():
        model.W.copy_(single.W.expand_as(model.W))
        model.b_final.copy_(single.b_final.expand_as(model.b_final))
    features = model.W.detach().transpose(1, 2)
    recipes = {
        "classroom": (False, False, False),
        "+ encoder = decoder transpose": (True, False, False),
        "+ cosine lr decay": (False, True, False),
        "+ redundant latents resampled": (False, False, True),
        "all three": (True, True, True),
    }
    print(f"\nToy SAE (16 inst, 5 feats in 2D, p 0.025, d_sae 5, lambda 0.2, batch 1024, lr 1e-3, {steps} steps):")
    print(f"  {'resampling':<12}{'recipe':<32}{'all 5 & 0 dead':>15}{'dead':>6}{'MMCS':>8}{'seconds':>9}{'steps/s':>9}")
    for method in (None, "simple", "advanced"):
        for name, (encoder_init, decay, redundant) in recipes.items():
            if method is None and name not in ("classroom", "all three"):
                continue
            seed_everything(1)
            sae = ToySAE(ToySAEConfig(n_inst=16, d_in=2, d_sae=5, sparsity_coeff=0.2), model)
            if encoder_init:
                init_encoder_as_decoder_transpose(sae)
            synchronize(device)
            start = time.perf_counter()
            train_sae(
                sae,
                steps=steps,
                batch_size=1024,
                lr=1e-3,
                lr_schedule=cosine_decay_lr if decay else constant_lr,
                resample_method=method,
                resample_every=2_500,
                resample_window=500,
                resample_redundant_above=0.99 if redundant else None,
                log_every=steps // 200,
            )
            synchronize(device)
            seconds = time.perf_counter() - start
            report = recovery_report(sae, features)
            complete = int(((report["recovered"] == 5) & (report["dead"] == 0)).sum())
            print(
                f"  {str(method):<12}{name:<32}{complete:>12}/16{int(report['dead'].sum()):>6}{report['mmcs'].mean():>8.4f}"
                f"{seconds:>9.1f}{steps / seconds:>9.0f}",
                flush=True,
            )


def circuit_benchmarks() -> None:
    """Part 7's targets on the default device, for each CPU thread count: the vectorised Jacobian
    against the loop (64 tokens, k 32), and the three decoders (d_in 768, d_sae 49,152, k 32, 64 tokens)."""
    from part_utils.activations import collect_activations
    from part_utils.palindromes import load_palindrome_model, mlp_weights, palindrome_dataset
    from part_utils.reference import part7_sae_circuits as part7
    from part_utils.timing import format_bytes, measure

    device = get_device()
    model = load_palindrome_model(device=device)
    W_in, b_in, W_out, _ = mlp_weights(model)
    x = collect_activations(model, palindrome_dataset().train_tokens[:8], "blocks.0.mlp.hook_in").flatten(0, 1)[:64]
    weights, mlp_pre, active_in, active_out = part7.random_circuit_case(W_in, b_in, W_out, x, d_sae=32 * W_in.shape[0], k=32)
    products = part7.latent_products(weights)
    default_threads = torch.get_num_threads()
    for threads in sorted({1, default_threads}):
        torch.set_num_threads(threads)
        print(f"\nPart 7 on {device}, {threads} thread(s)")
        loop = measure(lambda: part7.jacobian_loop(weights, mlp_pre, active_in, active_out), device, warmup=1, min_runs=5, budget_seconds=0.0)
        vectorised = measure(lambda: part7.jacobian_vectorised(products, mlp_pre, active_in, active_out), device, min_runs=50)
        once = measure(lambda: part7.latent_products(weights), device, min_runs=50)
        print(f"  Jacobian, 64 tokens, k 32, d_sae {32 * W_in.shape[0]}: loop {loop}")
        print(f"  {'':<40}vectorised {vectorised}")
        print(f"  {'':<40}latent_products {once}")
        print(f"  speed-up {loop.median / vectorised.median:.0f}x ({loop.median / (vectorised.median + once.median):.0f}x counting latent_products)")
        rows = part7.decoder_benchmark(device, d_in=768, d_sae=49_152, settings=[(64, 32)], warmup=3, min_runs=20, budget_seconds=2.0)
        for row in rows:
            memory = "n/a" if row["peak_bytes"] is None else format_bytes(row["peak_bytes"])
            print(f"  decode, d_sae 49,152, k 32, 64 tokens, {row['decoder']:<24} median {row['median'] * 1e3:8.3f} ms"
                  f" (IQR {row['q1'] * 1e3:.3f} to {row['q3'] * 1e3:.3f}, {row['runs']} runs), peak +{memory}")
        medians = {row["decoder"]: row["median"] for row in rows}
        print(f"  gather is {medians['dense scatter + matmul'] / medians['gather k rows']:.0f}x faster than dense", flush=True)
    torch.set_num_threads(default_threads)


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
    parser.add_argument("--sae", action="store_true", help="also run Part 4's SAE recovery benchmark (about 6 minutes)")
    parser.add_argument("--circuits", action="store_true", help="also run Part 7's Jacobian and sparse-decoding benchmarks (about a minute)")
    args = parser.parse_args()
    os.environ["TQDM_DISABLE"] = "1"
    print(f"torch {torch.__version__}, device {get_device()}, {os.cpu_count()} CPUs")

    print("\nToy model training throughput (16 inst, 5 feats, d_hidden 2, batch 1024):")
    default_threads = torch.get_num_threads()
    for threads in sorted({1, 2, default_threads}):
        torch.set_num_threads(threads)
        print(f"  {threads} thread(s): {toy_training_steps_per_second():7.0f} steps/s")
    torch.set_num_threads(default_threads)
    if args.sae:
        toy_sae_recovery()
    if args.circuits:
        circuit_benchmarks()

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
