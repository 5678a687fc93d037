"""The nodes of a local replacement model, and the dictionaries whose latents they are.

A dictionary *reads* an MLP's input (latent pre-activations) and *writes* its output (the decoded
latents). A transcoder does both directly. An SAE on the MLP's output reads through the MLP, which
for one prompt we linearise by freezing its ReLU pattern: exact at that prompt, but the map from
the residual stream to the SAE's latents then depends on the input.
"""

from dataclasses import dataclass
from typing import Literal, NamedTuple, Protocol

import torch
from jaxtyping import Float
from torch import Tensor

from part_utils.attribution.transformer import RecordedPrompt, TransformerWeights
from part_utils.reference.part5_sae_variants import topk_activation


class Dictionary(Protocol):
    def read(self, layer: int, mlp_in: Float[Tensor, "*batch pos d_model"]) -> Float[Tensor, "*batch pos d_latent"]:
        """Latent pre-activations from the MLP's input: linear."""
        ...

    def activation(
        self, layer: int, pre: Float[Tensor, "*batch pos d_latent"]
    ) -> Float[Tensor, "*batch pos d_latent"]: ...

    def write(self, layer: int, acts: Float[Tensor, "*batch pos d_latent"]) -> Float[Tensor, "*batch pos d_model"]:
        """What the latents add to the residual stream in the MLP's place."""
        ...


@dataclass
class TopKDictionary:
    """Per-layer access to a stacked TopK dictionary (one instance per layer) with W_enc, b_enc, W_dec, b_dec.

    A dataclass, so that it crosses the grader's sandbox boundary by value."""

    sae: torch.nn.Module

    def encoder_input(self, layer: int, mlp_in: Float[Tensor, "*batch pos d_model"]) -> Tensor:
        return mlp_in

    def read(self, layer: int, mlp_in: Float[Tensor, "*batch pos d_model"]) -> Float[Tensor, "*batch pos d_latent"]:
        return self.encoder_input(layer, mlp_in) @ self.sae.W_enc[layer] + self.sae.b_enc[layer]

    def activation(self, layer: int, pre: Float[Tensor, "*batch pos d_latent"]) -> Float[Tensor, "*batch pos d_latent"]:
        return topk_activation(pre, int(self.sae.cfg.k))

    def write(self, layer: int, acts: Float[Tensor, "*batch pos d_latent"]) -> Float[Tensor, "*batch pos d_model"]:
        return acts @ self.sae.W_dec_normalized[layer] + self.sae.b_dec[layer]


@dataclass
class TranscoderDictionary(TopKDictionary):
    """A transcoder per layer: reads the MLP's input, writes its output."""


@dataclass
class MLPOutputSAEDictionary(TopKDictionary):
    """An SAE per layer on the MLP's output, read through the MLP with one prompt's ReLU pattern frozen."""

    weights: TransformerWeights
    relu_pattern: Float[Tensor, "layer pos d_mlp"]

    @classmethod
    def at_prompt(
        cls, sae: torch.nn.Module, weights: TransformerWeights, recorded: RecordedPrompt
    ) -> "MLPOutputSAEDictionary":
        return cls(sae, weights, (recorded.mlp_pre > 0).to(recorded.mlp_pre.dtype))

    def encoder_input(self, layer: int, mlp_in: Float[Tensor, "*batch pos d_model"]) -> Tensor:
        w = self.weights
        hidden = (mlp_in @ w.W_in[layer] + w.b_in[layer]) * self.relu_pattern[layer]
        return hidden @ w.W_out[layer] + w.b_out[layer]


@dataclass(frozen=True)
class Nodes:
    """The replacement model's sources on one prompt."""

    embeddings: Float[Tensor, "pos d_model"]
    latents: Float[Tensor, "layer pos d_latent"]
    errors: Float[Tensor, "layer pos d_model"]
    """What each MLP wrote that its dictionary did not: MLP output minus the dictionary's write."""


def prompt_nodes(recorded: RecordedPrompt, dictionary: Dictionary) -> Nodes:
    layers = range(recorded.mlp_in.shape[0])
    with torch.no_grad():
        latents = torch.stack([dictionary.activation(n, dictionary.read(n, recorded.mlp_in[n])) for n in layers])
        errors = torch.stack([recorded.mlp_out[n] - dictionary.write(n, latents[n]) for n in layers])
    return Nodes(recorded.embeddings, latents, errors)


class Target(NamedTuple):
    """A node that receives edges: a logit (`index` = token) or a latent's pre-activation (at `layer`)."""

    kind: Literal["logit", "latent"]
    pos: int
    index: int
    layer: int = 0


@dataclass(frozen=True)
class Edges:
    """The edges into one target (or, with a leading axis, into each of several) from every source."""

    embeddings: Float[Tensor, "*targets pos"]
    latents: Float[Tensor, "*targets layer pos d_latent"]
    errors: Float[Tensor, "*targets layer pos"]

    def total(self) -> Float[Tensor, "*targets"]:
        return self.embeddings.sum(-1) + self.latents.sum(dim=(-3, -2, -1)) + self.errors.sum(dim=(-2, -1))
