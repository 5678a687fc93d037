"""Reference implementation for 02_privileged_basis, generated from source/02_privileged_basis.py.

Do not edit: change the source and run `python workbook.py build`."""

from typing import Any

import torch
import torch.nn.functional as F
from einops import einsum
from jaxtyping import Float
from torch import Tensor, nn

from part_utils.methods import add_to_class
from part_utils.reference.part1_toy_models import ToyModel, ToyModelConfig


class NeuronModel(ToyModel):
    """A toy model whose hidden layer has a ReLU: its neurons form a privileged basis."""


@add_to_class(NeuronModel)
def forward(self, features: Float[Tensor, "batch inst feats"]) -> Float[Tensor, "batch inst feats"]:
    hidden = F.relu(einsum(self.W, features, "inst d_hidden feats, batch inst feats -> batch inst d_hidden"))
    out = einsum(self.W, hidden, "inst d_hidden feats, batch inst d_hidden -> batch inst feats")
    return F.relu(out + self.b_final)


class NeuronComputationModel(ToyModel):
    """`x' = ReLU(W2 ReLU(W1 x) + b_final)`, trained to output |x|."""

    W1: Float[Tensor, "inst d_hidden feats"]
    W2: Float[Tensor, "inst feats d_hidden"]

    def __init__(self, cfg: ToyModelConfig, *args: Any, **kwargs: Any) -> None:
        """ToyModel's arguments; its `W` is replaced by `W1` and `W2`."""
        super().__init__(cfg, *args, **kwargs)
        del self.W
        std = (2.0 / (cfg.d_hidden + cfg.n_features)) ** 0.5
        device = self.b_final.device
        self.W1 = nn.Parameter(torch.randn(cfg.n_inst, cfg.d_hidden, cfg.n_features, device=device) * std)
        self.W2 = nn.Parameter(torch.randn(cfg.n_inst, cfg.n_features, cfg.d_hidden, device=device) * std)


@add_to_class(NeuronComputationModel)
def forward(self, features: Float[Tensor, "batch inst feats"]) -> Float[Tensor, "batch inst feats"]:
    hidden = F.relu(einsum(self.W1, features, "inst d_hidden feats, batch inst feats -> batch inst d_hidden"))
    out = einsum(self.W2, hidden, "inst feats d_hidden, batch inst d_hidden -> batch inst feats")
    return F.relu(out + self.b_final)


@add_to_class(NeuronComputationModel)
def generate_batch(self, batch_size: int) -> Float[Tensor, "batch inst feats"]:
    shape = (batch_size, self.cfg.n_inst, self.cfg.n_features)
    present = torch.rand(shape, device=self.b_final.device) < self.feature_probability
    values = 2 * torch.rand(shape, device=self.b_final.device) - 1
    return values * present


@add_to_class(NeuronComputationModel)
def calculate_loss(
    self, out: Float[Tensor, "batch inst feats"], batch: Float[Tensor, "batch inst feats"]
) -> Float[Tensor, ""]:
    return (self.importance * (batch.abs() - out).pow(2)).mean(dim=(0, 2)).sum()
