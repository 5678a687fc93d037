"""Reference implementation for 06_sae_transformer, generated from source/06_sae_transformer.py.

Do not edit: change the source and run `python workbook.py build`."""

from collections.abc import Callable
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens import TransformerBridge

from part_utils.activations import validate_hook_name, validate_tokens
from part_utils.reference.part4_toy_sae import ToySAE


def fraction_variance_explained(x: Float[Tensor, "tokens d"], x_hat: Float[Tensor, "tokens d"]) -> Float[Tensor, ""]:
    residual = (x - x_hat).pow(2).sum()
    total = (x - x.mean(dim=0)).pow(2).sum()
    return 1 - residual / total


def l0_norm(latents: Float[Tensor, "tokens d_sae"]) -> Float[Tensor, ""]:
    return (latents > 0).float().sum(dim=-1).mean()


def firing_frequency(latents: Float[Tensor, "tokens d_sae"]) -> Float[Tensor, " d_sae"]:
    return (latents > 0).float().mean(dim=0)


def spliced_loss(
    model: TransformerBridge,
    tokens: Int[Tensor, "batch pos"],
    hook_name: str,
    replace: Callable[[Float[Tensor, "batch pos d"]], Float[Tensor, "batch pos d"]],
) -> float:
    validate_hook_name(model, hook_name)
    validate_tokens(model, tokens)

    def hook_fn(act: Float[Tensor, "batch pos d"], hook: Any) -> Float[Tensor, "batch pos d"]:
        return replace(act)

    return model.run_with_hooks(tokens, return_type="loss", fwd_hooks=[(hook_name, hook_fn)]).item()


def loss_recovered(clean: float, spliced: float, ablated: float) -> float:
    return (ablated - spliced) / (ablated - clean)


def sae_replacement(
    sae: ToySAE, instance: int, scale: float
) -> Callable[[Float[Tensor, "batch pos d"]], Float[Tensor, "batch pos d"]]:
    """Replace every position but the first with SAE instance `instance`'s reconstruction."""

    def replace(act: Float[Tensor, "batch pos d"]) -> Float[Tensor, "batch pos d"]:
        if act.shape[-1] != sae.cfg.d_in:
            raise ValueError(
                f"this SAE reads vectors of size d_in={sae.cfg.d_in}, but the activation here has size "
                f"{act.shape[-1]}: was it trained on another hook?"
            )
        h = (act[:, 1:] / scale).unsqueeze(2).expand(-1, -1, sae.cfg.n_inst, -1).flatten(0, 1)
        reconstruction = sae.decode(sae.encode(h))[:, instance].reshape(act[:, 1:].shape) * scale
        return torch.cat([act[:, :1], reconstruction], dim=1)

    return replace


def constant_replacement(
    value: Float[Tensor, " d"],
) -> Callable[[Float[Tensor, "batch pos d"]], Float[Tensor, "batch pos d"]]:
    """Ablate every position but the first to `value` (zeros, or the mean activation)."""
    return lambda act: torch.cat([act[:, :1], value.expand_as(act[:, 1:])], dim=1)
