"""Shared inputs of the tests of Part 9's machinery: the shipped mirror model, held-out prompts, random dictionaries.

Everything is cached per process: the model loads once, and each prompt's replacement model is set up once.
"""

import copy
import functools
from dataclasses import dataclass
from typing import Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens import TransformerBridge

from part_utils.attribution.nodes import (
    Dictionary,
    MLPOutputSAEDictionary,
    Nodes,
    TranscoderDictionary,
    prompt_nodes,
)
from part_utils.attribution.transformer import RecordedPrompt, TransformerWeights, run_and_record
from part_utils.mirror import load_mirror_model, mirror_dataset
from part_utils.reference.part9_attribution_graphs import Transcoder, TranscoderConfig, replacement_forward

CPU = torch.device("cpu")
D_LATENT, K = 32, 4
DictionaryKind = Literal["transcoder", "mlp_output_sae", "silent_layer_1"]


@functools.cache
def mirror_model() -> TransformerBridge:
    return load_mirror_model(device=CPU)


@functools.cache
def held_out_prompts() -> Int[Tensor, "prompts pos"]:
    return mirror_dataset().test_tokens[:4]


@functools.cache
def model_weights(dtype: torch.dtype = torch.float32) -> TransformerWeights:
    return TransformerWeights.from_model(mirror_model()).to(dtype)


@functools.cache
def random_transcoder(dtype: torch.dtype = torch.float32, seed: int = 0) -> Transcoder:
    """An untrained transcoder per layer of the mirror model: its error nodes carry almost everything."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        transcoder = Transcoder(TranscoderConfig(n_inst=2, d_in=64, d_out=64, d_latent=D_LATENT, k=K))
    return transcoder.to(dtype).requires_grad_(False)


@functools.cache
def silent_layer_1_transcoder(dtype: torch.dtype = torch.float64) -> Transcoder:
    """The random transcoder with layer 1's latents switched off by a large negative bias: nothing downstream."""
    silent = copy.deepcopy(random_transcoder(dtype))
    silent.b_enc[1] = -1e6
    return silent


@dataclass(frozen=True)
class PromptSetup:
    """One held-out prompt's local replacement model."""

    weights: TransformerWeights
    recorded: RecordedPrompt
    dictionary: Dictionary
    nodes: Nodes

    def forward(self, nodes: Nodes | None = None) -> tuple[Float[Tensor, "pos vocab"], Tensor]:
        with torch.no_grad():
            return replacement_forward(
                self.weights, self.recorded, self.dictionary, self.nodes if nodes is None else nodes
            )

    @property
    def tokens(self) -> Int[Tensor, " pos"]:
        return self.recorded.tokens


@functools.cache
def prompt_setup(
    index: int = 0, dtype: torch.dtype = torch.float64, kind: DictionaryKind = "transcoder"
) -> PromptSetup:
    weights = model_weights(dtype)
    recorded = run_and_record(weights, held_out_prompts()[index])
    if kind == "mlp_output_sae":
        dictionary: Dictionary = MLPOutputSAEDictionary.at_prompt(random_transcoder(dtype, seed=1), weights, recorded)
    elif kind == "silent_layer_1":
        dictionary = TranscoderDictionary(silent_layer_1_transcoder(dtype))
    else:
        dictionary = TranscoderDictionary(random_transcoder(dtype))
    return PromptSetup(weights, recorded, dictionary, prompt_nodes(recorded, dictionary))


def zero_nodes(nodes: Nodes) -> Nodes:
    return Nodes(*(torch.zeros_like(tensor) for tensor in (nodes.embeddings, nodes.latents, nodes.errors)))


def assert_close(actual: Tensor, expected: Tensor, atol: float, what: str) -> None:
    """Same shape, and no entry further apart than `atol`."""
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    difference = (actual.double() - expected.double()).abs().max().item()
    assert difference <= atol, f"{what}: largest difference {difference:.2e} > {atol:.0e}"
