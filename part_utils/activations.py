"""Activations of a TransformerLens model at one hook point, with checks on what goes in."""

import difflib

import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens import TransformerBridge


def validate_hook_name(model: TransformerBridge, hook_name: str) -> None:
    if hook_name not in model.hook_dict:
        similar = difflib.get_close_matches(hook_name, list(model.hook_dict), n=3)
        hint = f" Did you mean one of {similar}?" if similar else " `model.hook_dict` lists the names."
        raise KeyError(f"the model has no hook named {hook_name!r}.{hint}")


def validate_tokens(model: TransformerBridge, tokens: Tensor) -> None:
    if tokens.dtype not in (torch.int64, torch.int32) or tokens.ndim != 2:
        raise TypeError(
            f"tokens must be an integer tensor of shape [batch, pos]; "
            f"got dtype {tokens.dtype}, shape {tuple(tokens.shape)}"
        )
    d_vocab, n_ctx = model.cfg.d_vocab, model.cfg.n_ctx
    if tokens.numel() and (tokens.min() < 0 or tokens.max() >= d_vocab):
        raise ValueError(
            f"token ids must lie in [0, {d_vocab - 1}] (the model's vocabulary); "
            f"got {tokens.min().item()}…{tokens.max().item()}"
        )
    if tokens.shape[1] > n_ctx:
        raise ValueError(f"sequences are {tokens.shape[1]} tokens long; the model's context is {n_ctx}")


@torch.no_grad()
def collect_activations(
    model: TransformerBridge, tokens: Int[Tensor, "batch pos"], hook_name: str, batch_size: int = 4_096
) -> Float[Tensor, "batch pos d"]:
    """Run the model over `tokens` in chunks and keep only the activation at `hook_name`."""
    validate_hook_name(model, hook_name)
    validate_tokens(model, tokens)
    device = next(model.parameters()).device
    chunks = []
    for start in range(0, len(tokens), batch_size):
        _, cache = model.run_with_cache(tokens[start : start + batch_size].to(device), names_filter=hook_name)
        chunks.append(cache[hook_name])
    return torch.cat(chunks)
