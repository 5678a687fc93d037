"""What Part 9's checks share: a small random transformer, prompts, dictionaries, float64 copies, comparisons.

Every size differs from every other (2 layers, 2 heads, d_model 12, d_head 5, d_mlp 20, 16 latents,
vocabulary 29, context 9, prompts of 7 tokens), so a transposed weight or an axis confused with another
fails instead of passing by accident. Biases are non-zero and LayerNorm weights are not 1. Learner code
gets float32 copies, as in the notebook; what to expect is computed in float64 from the originals.
"""

import copy
import dataclasses
from collections.abc import Mapping
from typing import TypeVar

import torch
from torch import Tensor

from part_utils.attribution.nodes import MLPOutputSAEDictionary, Nodes, TranscoderDictionary, prompt_nodes
from part_utils.attribution.transformer import RecordedPrompt, TransformerWeights, run_and_record
from part_utils.reference import part9_attribution_graphs as reference
from tests.checking import KINK_MARGIN, close

N_LAYERS, N_HEADS, D_MODEL, D_HEAD, D_MLP, D_LATENT, VOCAB, N_CTX, N_POS, K = 2, 2, 12, 5, 20, 16, 29, 9, 7, 3
Dictionary = TranscoderDictionary | MLPOutputSAEDictionary
T = TypeVar("T")


def random_weights() -> TransformerWeights:
    """A random pre-LayerNorm transformer whose attention patterns spread over several keys."""

    def normal(*shape: int, scale: float) -> Tensor:
        return torch.randn(*shape) * scale

    L, H, d, h, m = N_LAYERS, N_HEADS, D_MODEL, D_HEAD, D_MLP
    return TransformerWeights(
        W_E=normal(VOCAB, d, scale=1.0),
        W_pos=normal(N_CTX, d, scale=0.5),
        ln1_w=1 + normal(L, d, scale=0.3),
        ln1_b=normal(L, d, scale=0.2),
        W_Q=normal(L, H, d, h, scale=d**-0.5),
        b_Q=normal(L, H, h, scale=0.2),
        W_K=normal(L, H, d, h, scale=d**-0.5),
        b_K=normal(L, H, h, scale=0.2),
        W_V=normal(L, H, d, h, scale=d**-0.5),
        b_V=normal(L, H, h, scale=0.2),
        W_O=normal(L, H, h, d, scale=h**-0.5),
        b_O=normal(L, d, scale=0.2),
        ln2_w=1 + normal(L, d, scale=0.3),
        ln2_b=normal(L, d, scale=0.2),
        W_in=normal(L, d, m, scale=d**-0.5),
        b_in=normal(L, m, scale=0.2),
        W_out=normal(L, m, d, scale=m**-0.5),
        b_out=normal(L, d, scale=0.2),
        ln_final_w=1 + normal(d, scale=0.3),
        ln_final_b=normal(d, scale=0.2),
        W_U=normal(d, VOCAB, scale=d**-0.5),
        b_U=normal(VOCAB, scale=0.3),
    )


def random_transcoder(d_latent: int = D_LATENT, k: int = K) -> reference.Transcoder:
    """A transcoder per layer with random encoder and decoder (rows of varied norms) and non-zero biases."""
    cfg = reference.TranscoderConfig(n_inst=N_LAYERS, d_in=D_MODEL, d_out=D_MODEL, d_latent=d_latent, k=k)
    transcoder = reference.Transcoder(cfg)
    with torch.no_grad():
        transcoder.W_enc.copy_(torch.randn_like(transcoder.W_enc) * D_MODEL**-0.5)
        transcoder.W_dec.copy_(torch.randn_like(transcoder.W_dec) * (torch.rand(N_LAYERS, d_latent, 1) + 0.5))
        transcoder.b_enc.copy_(torch.randn_like(transcoder.b_enc) * 0.3)
        transcoder.b_dec.copy_(torch.randn_like(transcoder.b_dec) * 0.3)
    return transcoder


def topk_margins(pre: Tensor, k: int) -> Tensor:
    """How far each row's k-th largest value is from the next one and from 0: a TopK choice float32 shares."""
    ordered = pre.sort(dim=-1, descending=True).values
    return torch.stack([ordered[..., k - 1] - ordered[..., k], ordered[..., k - 1]])


def clear_prompt(weights: TransformerWeights, transcoder: reference.Transcoder, *, draws: int = 200) -> Tensor:
    """A prompt on which every layer's TopK choice keeps clear of ties, in float32 and float64 alike."""
    dictionary = TranscoderDictionary(transcoder)
    for _ in range(draws):
        tokens = torch.randint(VOCAB, (N_POS,))
        recorded = run_and_record(weights, tokens)
        with torch.no_grad():
            margins = [topk_margins(dictionary.read(n, recorded.mlp_in[n]), K) for n in range(N_LAYERS)]
        if all(bool((margin.abs() > KINK_MARGIN).all()) for margin in margins):
            return tokens
    raise RuntimeError("could not draw a prompt clear of TopK ties")


def float64(value: T) -> T:
    """A float64 copy of weights, a recorded prompt, nodes or a transcoder; integer tensors stay as they are."""
    if isinstance(value, Tensor):
        return value.detach().double() if torch.is_floating_point(value) else value.clone()
    if isinstance(value, torch.nn.Module):
        return copy.deepcopy(value).double().requires_grad_(False)
    if dataclasses.is_dataclass(value):
        return type(value)(**{field.name: float64(getattr(value, field.name)) for field in dataclasses.fields(value)})
    return value


def copied(value: T) -> T:
    """A copy of weights, a recorded prompt or nodes to hand to learner code (its tensors cloned)."""
    if isinstance(value, Tensor):
        return value.detach().clone()
    if dataclasses.is_dataclass(value):
        return type(value)(**{field.name: copied(getattr(value, field.name)) for field in dataclasses.fields(value)})
    return value


def dictionary_like(dictionary: Dictionary, weights: TransformerWeights, recorded: RecordedPrompt) -> Dictionary:
    """The same kind of dictionary around a copy of its SAE, reading through `weights` and `recorded` if it must."""
    sae = copy.deepcopy(dictionary.sae) if weights.W_E.dtype == dictionary.sae.W_enc.dtype else float64(dictionary.sae)
    if isinstance(dictionary, MLPOutputSAEDictionary):
        return MLPOutputSAEDictionary.at_prompt(sae, weights, recorded)
    return TranscoderDictionary(sae)


@dataclasses.dataclass
class Prompt:
    """One prompt run on random weights, with a dictionary and its nodes."""

    weights: TransformerWeights
    recorded: RecordedPrompt
    dictionary: Dictionary
    nodes: Nodes

    def in_float64(self) -> "Prompt":
        weights, recorded = float64(self.weights), float64(self.recorded)
        return Prompt(weights, recorded, dictionary_like(self.dictionary, weights, recorded), float64(self.nodes))

    def for_learner(self) -> tuple[TransformerWeights, RecordedPrompt, Dictionary, Nodes]:
        weights, recorded = copied(self.weights), copied(self.recorded)
        return weights, recorded, dictionary_like(self.dictionary, weights, recorded), copied(self.nodes)


def random_prompt(*, output_sae: bool = False) -> Prompt:
    """Random weights, a prompt clear of TopK ties, a transcoder (or an SAE on the MLP's output) and its nodes."""
    weights = random_weights()
    transcoder = random_transcoder()
    tokens = clear_prompt(weights, transcoder)
    recorded = run_and_record(weights, tokens)
    dictionary = (
        MLPOutputSAEDictionary.at_prompt(transcoder, weights, recorded)
        if output_sae
        else TranscoderDictionary(transcoder)
    )
    nodes = prompt_nodes(recorded, dictionary)
    return Prompt(weights, recorded, dictionary, nodes)


def prefixed(description: str | None, message: str) -> str:
    """The message, after the case's description where it has one."""
    return message if description is None else f"{description}: {message[0].lower()}{message[1:]}"


def scaled_close(actual: Tensor | Mapping[str, Tensor], expected: Tensor | Mapping[str, Tensor]) -> bool:
    """Equal within float32 rounding, relative to the largest expected magnitude of each tensor."""
    if isinstance(expected, Mapping):
        return isinstance(actual, Mapping) and all(scaled_close(actual[key], expected[key]) for key in expected)
    return close(
        actual, expected, rtol=1e-4, atol=1e-5 * max(1.0, float(expected.abs().amax()) if expected.numel() else 0.0)
    )


def first_fit(
    actual: Tensor | Mapping[str, Tensor], mistakes: list[tuple[str, Tensor | Mapping[str, Tensor]]]
) -> str | None:
    """The message of the first mistake whose result `actual` matches."""
    return next((message for message, wrong in mistakes if scaled_close(actual, wrong)), None)
