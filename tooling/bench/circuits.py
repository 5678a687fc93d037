"""Part 7's targets (`bench --circuits`): the Jacobian between SAEs, loop against vectorised,
and the three sparse decoders at d_sae 49,152."""

import torch

from part_utils.device import get_device


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
    weights, mlp_pre, active_in, active_out = part7.random_circuit_case(
        W_in, b_in, W_out, x, d_sae=32 * W_in.shape[0], k=32
    )
    products = part7.latent_products(weights)
    default_threads = torch.get_num_threads()
    for threads in (1, 2):
        torch.set_num_threads(threads)
        print(f"\nPart 7 on {device}, {threads} thread(s)")
        loop = measure(
            lambda: part7.jacobian_loop(weights, mlp_pre, active_in, active_out),
            device,
            warmup=1,
            min_runs=5,
            budget_seconds=0.0,
        )
        vectorised = measure(
            lambda: part7.jacobian_vectorised(products, mlp_pre, active_in, active_out), device, min_runs=50
        )
        once = measure(lambda: part7.latent_products(weights), device, min_runs=50)
        print(f"  Jacobian, 64 tokens, k 32, d_sae {32 * W_in.shape[0]}: loop {loop}")
        print(f"  {'':<40}vectorised {vectorised}")
        print(f"  {'':<40}latent_products {once}")
        counting_products = loop.median / (vectorised.median + once.median)
        print(f"  speed-up {loop.median / vectorised.median:.0f}x ({counting_products:.0f}x counting latent_products)")
        rows = part7.decoder_benchmark(
            device, d_in=768, d_sae=49_152, settings=[(64, 32)], warmup=3, min_runs=20, budget_seconds=2.0
        )
        for row in rows:
            memory = "n/a" if row["peak_bytes"] is None else format_bytes(row["peak_bytes"])
            print(
                f"  decode, d_sae 49,152, k 32, 64 tokens, {row['decoder']:<24} median {row['median'] * 1e3:8.3f} ms"
                f" (IQR {row['q1'] * 1e3:.3f} to {row['q3'] * 1e3:.3f}, {row['runs']} runs), peak +{memory}"
            )
        medians = {row["decoder"]: row["median"] for row in rows}
        print(
            f"  gather is {medians['dense scatter + matmul'] / medians['gather k rows']:.0f}x faster than dense",
            flush=True,
        )
    torch.set_num_threads(default_threads)
