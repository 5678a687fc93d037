"""A dictionary spliced into the model in an MLP's place, for Part 6's loss-recovered measure."""

from typing import Any, Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens import TransformerBridge

from part_utils.attribution.nodes import Dictionary


def spliced_mlp_loss(
    model: TransformerBridge,
    tokens: Int[Tensor, "batch pos"],
    layer: int,
    dictionary: Dictionary | None,
    reads: Literal["input", "output"] = "input",
    constant: Float[Tensor, "pos d_model"] | None = None,
) -> float:
    """Next-token loss with MLP `layer`'s output replaced: by the dictionary's write of its latents (a
    transcoder reads the MLP's input, an SAE its output), or, with `constant`, by that constant."""
    kept: dict[str, Tensor] = {}

    def keep_input(act: Tensor, hook: Any) -> Tensor:
        kept["input"] = act
        return act

    def replace_output(act: Tensor, hook: Any) -> Tensor:
        if constant is not None:
            return constant.expand_as(act)
        source = kept["input"] if reads == "input" else act
        return dictionary.write(layer, dictionary.activation(layer, dictionary.read(layer, source)))

    hooks = [(f"blocks.{layer}.mlp.hook_in", keep_input), (f"blocks.{layer}.hook_mlp_out", replace_output)]
    with torch.no_grad():
        return model.run_with_hooks(tokens, return_type="loss", fwd_hooks=hooks).item()
