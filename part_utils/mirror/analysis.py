"""Where the mirror model's algorithm lives: which head fetches the mirrored letter, which MLP applies the letter map.

    python -m part_utils.mirror.analysis

prints both measurements for the shipped model.
"""

from collections.abc import Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens import TransformerBridge

from part_utils.mirror.language import END_POSITION, OUTPUT_POSITIONS, mirror_dataset, mirrored_source_position


@torch.no_grad()
def mlp_ablation_accuracy(
    model: TransformerBridge,
    tokens: Int[Tensor, "batch pos"],
    layer: int,
    positions: Sequence[int] | None = None,
) -> dict[int, float]:
    """Next-token accuracy at the output and end positions with MLP `layer`'s output replaced by its mean.

    The mean is taken over `tokens`, separately at each position; `positions` limits the ablation to those positions
    (all positions by default), which tells an MLP acting where the letter is read from one acting where it is written.
    """
    hook_name = f"blocks.{layer}.hook_mlp_out"
    _, cache = model.run_with_cache(tokens, names_filter=hook_name)
    mean: Float[Tensor, "pos d_model"] = cache[hook_name].mean(dim=0)
    ablated = list(range(tokens.shape[1])) if positions is None else list(positions)

    def replace_with_mean(activation: Float[Tensor, "batch pos d_model"], hook) -> Float[Tensor, "batch pos d_model"]:
        activation = activation.clone()
        activation[:, ablated] = mean[ablated]
        return activation

    predictions = model.run_with_hooks(tokens, fwd_hooks=[(hook_name, replace_with_mean)]).argmax(dim=-1)
    correct = (predictions[:, :-1] == tokens[:, 1:]).float().mean(dim=0)
    return {p: correct[p].item() for p in (*OUTPUT_POSITIONS, END_POSITION)}


@torch.no_grad()
def mirrored_attention(model: TransformerBridge, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "layer head out"]:
    """Attention weight from each output position to its mirrored source position, averaged over the prompts."""
    names = [f"blocks.{layer}.attn.hook_pattern" for layer in range(model.cfg.n_layers)]
    _, cache = model.run_with_cache(tokens, names_filter=lambda name: name in names)
    queries = list(OUTPUT_POSITIONS)
    keys = [mirrored_source_position(p) for p in OUTPUT_POSITIONS]
    # pattern: [batch, head, query, key]; pick the (query, mirrored key) pair for every output position
    return torch.stack([cache[name][:, :, queries, keys].mean(dim=0) for name in names])


def report(model: TransformerBridge, tokens: Int[Tensor, "batch pos"]) -> None:
    """Print the ablation accuracies and the mirrored attention, one line per measurement."""
    positions = (*OUTPUT_POSITIONS, END_POSITION)
    print("positions", positions)
    sources = [mirrored_source_position(p) for p in OUTPUT_POSITIONS]
    where = {"everywhere": None, "at output positions": OUTPUT_POSITIONS, "at source positions": sources}
    for layer in range(model.cfg.n_layers):
        for label, ablated in where.items():
            accuracy = mlp_ablation_accuracy(model, tokens, layer, ablated)
            print(f"MLP{layer} mean-ablated {label}:", " ".join(f"{accuracy[p]:.3f}" for p in positions))
    attention = mirrored_attention(model, tokens)
    for layer, head in torch.cartesian_prod(*map(torch.arange, attention.shape[:2])).tolist():
        weights = " ".join(f"{w:.3f}" for w in attention[layer, head].tolist())
        print(f"attention L{layer}H{head} on the mirrored letter at positions {OUTPUT_POSITIONS}: {weights}")


if __name__ == "__main__":
    from part_utils.mirror.model import load_mirror_model

    report(load_mirror_model(device=torch.device("cpu")), mirror_dataset().test_tokens)
