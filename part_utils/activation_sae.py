"""Train the SAEs of Parts 4 and 5 on stored activations instead of a toy model.

Those SAE classes draw batches from a frozen toy model: `model.generate_batch` gives
feature values and the SAE maps them through `model.W` into its input space. An
`ActivationSource` plays that model's part for real activations: its "features" are the
activation vectors themselves and its `W` is the identity, so every SAE class, the training
loop and both resampling methods work unchanged.
"""

from types import SimpleNamespace

import torch
from jaxtyping import Float
from torch import Tensor, nn


class ActivationSource(nn.Module):
    """Serves random rows of an activation buffer, the same rows to every SAE instance."""

    activations: Float[Tensor, "tokens d"]
    W: Float[Tensor, "inst d d"]

    def __init__(self, activations: Float[Tensor, "tokens d"], n_inst: int, seed: int = 0) -> None:
        super().__init__()
        if activations.ndim != 2:
            raise ValueError(f"expected activations of shape [tokens, d]; got {tuple(activations.shape)} (flatten batch and position first)")
        d = activations.shape[1]
        self.cfg = SimpleNamespace(n_inst=n_inst, d_hidden=d)
        self.register_buffer("activations", activations)
        self.register_buffer("W", torch.eye(d, device=activations.device).expand(n_inst, d, d).contiguous())
        self.generator = torch.Generator(device=activations.device).manual_seed(seed)

    def generate_batch(self, batch_size: int) -> Float[Tensor, "batch inst d"]:
        rows = torch.randint(len(self.activations), (batch_size,), generator=self.generator, device=self.activations.device)
        return self.activations[rows].unsqueeze(1).expand(-1, self.cfg.n_inst, -1)
