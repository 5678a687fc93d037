"""The float64 local replacement model that `replacement_forward` is checked against, and each misreading of it.

`outputs` gives the values (logits, latent pre-activations) and their vector-Jacobian products with a fixed
random upstream gradient, with respect to the three node tensors: a LayerNorm scale or an attention pattern
recomputed from the residual stream gives the right values on the prompt's own nodes, and only the
gradients tell.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from part_utils.attribution.nodes import Nodes
from part_utils.attribution.transformer import attention_output, attention_pattern, layer_norm_scale
from tests.part9_attribution_graphs._common import Prompt

NODE_NAMES = ("embeddings", "latents", "errors")
Forward = Callable[[Nodes], tuple[Tensor, Tensor]]


@dataclass(frozen=True)
class ForwardVariant:
    """The text's replacement model (the defaults), or one misreading of it."""

    errors: bool = True
    mlp: str = "dictionary"  # dictionary, recorded (recorded.mlp_out in the MLP's place)
    read_from: str = "mlp_in"  # mlp_in, after write (post-MLP residual), ln1 (attention's input)
    latent_pre: str = "pre"  # pre, post (through dictionary.activation)
    scales: str = "recorded"  # recorded, swapped (ln1 <-> ln2), live (ln1 and ln2 recomputed)
    final_scale: str = "recorded"  # recorded, live
    pattern: str = "recorded"  # recorded, live (recomputed from W_Q and W_K)
    ln2_weights: str = "ln2"  # ln2, ln1
    attention_input: str = "ln1"  # ln1, residual (no LayerNorm before attention)
    b_U: bool = True


def _layer_norm(x: Tensor, scale: Tensor | None, w: Tensor, b: Tensor, eps: float) -> Tensor:
    """LayerNorm with a given divisor [pos], or (None) the live one recomputed from x."""
    divisor = layer_norm_scale(x, eps) if scale is None else scale
    return (x - x.mean(dim=-1, keepdim=True)) / divisor[..., None] * w + b


def replacement_model(prompt: Prompt, nodes: Nodes, v: ForwardVariant = ForwardVariant()) -> tuple[Tensor, Tensor]:
    """What `v` computes from `nodes` (any extra leading axes after the layer axis) on a float64 prompt."""
    weights, recorded, dictionary = prompt.weights, prompt.recorded, prompt.dictionary
    eps = weights.eps
    resid = nodes.embeddings
    latent_pre = []
    for layer in range(weights.n_layers):
        first, second = recorded.ln1_scale[layer], recorded.ln2_scale[layer]
        if v.scales == "swapped":
            first, second = second, first
        if v.scales == "live":
            first = second = None
        x = _layer_norm(resid, first, weights.ln1_w[layer], weights.ln1_b[layer], eps)
        x = resid if v.attention_input == "residual" else x
        pattern = attention_pattern(weights, layer, x) if v.pattern == "live" else recorded.patterns[layer]
        resid = resid + attention_output(weights, layer, pattern, x)
        ln2 = "ln1" if v.ln2_weights == "ln1" else "ln2"
        w, b = getattr(weights, f"{ln2}_w")[layer], getattr(weights, f"{ln2}_b")[layer]
        mlp_in = _layer_norm(resid, second, w, b, eps)
        if v.mlp == "recorded":
            written = recorded.mlp_out[layer].expand_as(resid)
        else:
            written = dictionary.write(layer, nodes.latents[layer]) + (nodes.errors[layer] if v.errors else 0.0)
        read_from = {"mlp_in": mlp_in, "ln1": x, "after write": _layer_norm(resid + written, second, w, b, eps)}
        pre = dictionary.read(layer, read_from[v.read_from])
        latent_pre.append(dictionary.activation(layer, pre) if v.latent_pre == "post" else pre)
        resid = resid + written
    final_scale = None if v.final_scale == "live" else recorded.ln_final_scale
    final = _layer_norm(resid, final_scale, weights.ln_final_w, weights.ln_final_b, eps)
    logits = final @ weights.W_U + (weights.b_U if v.b_U else 0.0)
    return logits, torch.stack(latent_pre)


def upstream_for(prompt: Prompt, generator_seed: int) -> tuple[Tensor, Tensor]:
    """Fixed random upstream gradients for the logits and the latent pre-activations, in float64."""
    generator = torch.Generator().manual_seed(generator_seed)
    n_pos, vocab = prompt.recorded.logits.shape
    n_layers, _, d_latent = prompt.nodes.latents.shape
    logits = torch.randn(n_pos, vocab, generator=generator, dtype=torch.float64)
    return logits, torch.randn(n_layers, n_pos, d_latent, generator=generator, dtype=torch.float64)


def outputs(forward: Forward, nodes: Nodes, upstream: tuple[Tensor, Tensor]) -> dict[str, Tensor]:
    """The values of `forward` on float64 leaf copies of `nodes`, and their gradients weighted by `upstream`."""
    leaves = [getattr(nodes, name).detach().double().clone().requires_grad_(True) for name in NODE_NAMES]
    logits, latent_pre = forward(Nodes(*leaves))
    total = (logits * upstream[0]).sum() + (latent_pre * upstream[1]).sum()
    grads = torch.autograd.grad(total, leaves, allow_unused=True)
    return {
        "logits": logits.detach(),
        "latent_pre": latent_pre.detach(),
        **{name: torch.zeros_like(leaf) if g is None else g for name, leaf, g in zip(NODE_NAMES, leaves, grads)},
    }


LIVE_LAYER_NORM = (
    "A LayerNorm's scale is recomputed from the residual stream (a live LayerNorm): on the prompt's own nodes the "
    "values agree, but the gradients do not. Divide by the recorded scales (`layer_norm_with_scale` with "
    "`recorded.ln1_scale[layer]`, `recorded.ln2_scale[layer]`, `recorded.ln_final_scale`), so that the replacement "
    "model is linear in its nodes."
)
VARIANT_MISTAKES: list[tuple[str, ForwardVariant]] = [
    (
        "The error nodes are omitted: add `nodes.errors[layer]` with the dictionary's write, so that the replacement "
        "model makes up for what the dictionary misses.",
        ForwardVariant(errors=False),
    ),
    (
        "The MLP's place holds the recorded MLP output (`recorded.mlp_out`): add what the dictionary writes from the "
        "nodes, `dictionary.write(layer, nodes.latents[layer])`, plus `nodes.errors[layer]`; the recorded output "
        "gives no edges from latents or error nodes.",
        ForwardVariant(mlp="recorded"),
    ),
    (
        "The latents' pre-activations are read after the MLP's replacement is added (the post-MLP residual stream): "
        "read them from the MLP's input, ln2 of the residual stream after attention, before adding the write and the "
        "errors.",
        ForwardVariant(read_from="after write"),
    ),
    (
        "The latents' pre-activations are read from ln1's output (attention's input): read them from the MLP's "
        "input, ln2 of the residual stream after attention.",
        ForwardVariant(read_from="ln1"),
    ),
    (
        "The second output holds the latents after `dictionary.activation` (TopK), the post-activations: return the "
        "pre-activations, `dictionary.read(layer, mlp_in)`.",
        ForwardVariant(latent_pre="post"),
    ),
    (
        "ln1 and ln2 use each other's recorded scales: ln1 (attention's input) divides by "
        "`recorded.ln1_scale[layer]`, ln2 (the MLP's input) by `recorded.ln2_scale[layer]`.",
        ForwardVariant(scales="swapped"),
    ),
    (LIVE_LAYER_NORM, ForwardVariant(scales="live", final_scale="live")),
    (LIVE_LAYER_NORM, ForwardVariant(scales="live")),
    (
        "The final LayerNorm's scale is recomputed from the residual stream (not frozen): on the prompt's own nodes "
        "the values agree, but the gradients do not. Divide by `recorded.ln_final_scale`.",
        ForwardVariant(final_scale="live"),
    ),
    (
        "The attention pattern is recomputed live from W_Q and W_K: on the prompt's own nodes the values agree, but "
        "the gradients do not. Use the recorded pattern, `recorded.patterns[layer]`, so that attention is linear in "
        "the residual stream.",
        ForwardVariant(pattern="live"),
    ),
    (
        "The MLP's LayerNorm uses ln1's weights: ln2 is `weights.ln2_w[layer]`, `weights.ln2_b[layer]`.",
        ForwardVariant(ln2_weights="ln1"),
    ),
    (
        "Attention reads the residual stream itself: its input is ln1 of it, `layer_norm_with_scale(resid, "
        "recorded.ln1_scale[layer], weights.ln1_w[layer], weights.ln1_b[layer])`.",
        ForwardVariant(attention_input="residual"),
    ),
    ("The logits leave out b_U: they are `final @ weights.W_U + weights.b_U`.", ForwardVariant(b_U=False)),
]
"""Each misreading with the sentence that names it (live LayerNorms twice: with the final one, or without)."""
