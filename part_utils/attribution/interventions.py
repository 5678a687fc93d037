"""What the attribution graph predicts an intervention on latents will do.

Editing latents at one layer changes the pre-activations of later latents; in the graph's linear
picture an active latent passes that change on one for one (TopK's slope where it fires) and an
inactive latent stays off. Iterating the replacement model once per layer settles every later
layer, and the change in the logits is the graph's prediction: the sum over all paths of the
edited latents' signed effects.
"""

from collections.abc import Callable

import torch
from jaxtyping import Float
from torch import Tensor

from part_utils.attribution.nodes import Dictionary, Nodes
from part_utils.attribution.transformer import RecordedPrompt, TransformerWeights

ReplacementForward = Callable[[TransformerWeights, RecordedPrompt, Dictionary, Nodes], tuple[Tensor, Tensor]]


@torch.no_grad()
def predicted_logit_change(
    forward: ReplacementForward,
    weights: TransformerWeights,
    recorded: RecordedPrompt,
    dictionary: Dictionary,
    nodes: Nodes,
    edits: dict[tuple[int, int, int], float],
) -> Float[Tensor, "pos vocab"]:
    """Change in the logits when latents (layer, pos, latent) take the given values, in the graph's linear model."""
    clean_logits, clean_pre = forward(weights, recorded, dictionary, nodes)
    active = nodes.latents != 0
    edited_layers = {layer for layer, _, _ in edits}
    latents = nodes.latents.clone()
    for _ in range(weights.n_layers):
        for (layer, pos, latent), value in edits.items():
            latents[layer, pos, latent] = value
        _, pre = forward(weights, recorded, dictionary, Nodes(nodes.embeddings, latents, nodes.errors))
        downstream = active.clone()
        downstream[: min(edited_layers) + 1] = False
        latents = torch.where(downstream, nodes.latents + (pre - clean_pre), latents)
    for (layer, pos, latent), value in edits.items():
        latents[layer, pos, latent] = value
    logits, _ = forward(weights, recorded, dictionary, Nodes(nodes.embeddings, latents, nodes.errors))
    return logits - clean_logits
