"""Reference implementation for 01_toy_models, generated from source/01_toy_models.py.

Do not edit: change the source and run `python workbook.py build`."""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import einsum
from jaxtyping import Float
from torch import Tensor, nn

from part_utils.device import get_device
from part_utils.methods import add_to_class


@dataclass
class ToyModelConfig:
    n_inst: int
    n_features: int = 5
    d_hidden: int = 2
    n_correlated_pairs: int = 0
    n_anticorrelated_pairs: int = 0


class ToyModel(nn.Module):
    """`n_inst` independent models `x' = ReLU(Wᵀ W x + b_final)`, trained in parallel."""

    W: Float[Tensor, "inst d_hidden feats"]
    b_final: Float[Tensor, "inst feats"]
    feature_probability: Float[Tensor, "inst feats"]
    importance: Float[Tensor, "inst feats"]

    def __init__(
        self,
        cfg: ToyModelConfig,
        feature_probability: float | Tensor = 0.01,
        importance: float | Tensor = 1.0,
        device: torch.device | None = None,
    ) -> None:
        """`feature_probability` and `importance` are scalars or anything that broadcasts to
        [inst, feats]: shape [inst, 1] varies them by instance, [feats] by feature."""
        super().__init__()
        self.cfg = cfg
        device = device if device is not None else get_device()
        shape = (cfg.n_inst, cfg.n_features)
        self.feature_probability = torch.broadcast_to(
            torch.as_tensor(feature_probability, dtype=torch.float32), shape
        ).to(device)
        self.importance = torch.broadcast_to(torch.as_tensor(importance, dtype=torch.float32), shape).to(device)
        # Xavier-normal scale for each instance's [d_hidden, feats] matrix on its own.
        std = (2.0 / (cfg.d_hidden + cfg.n_features)) ** 0.5
        self.W = nn.Parameter(torch.randn(cfg.n_inst, cfg.d_hidden, cfg.n_features, device=device) * std)
        self.b_final = nn.Parameter(torch.zeros(cfg.n_inst, cfg.n_features, device=device))


@add_to_class(ToyModel)
def forward(self, features: Float[Tensor, "batch inst feats"]) -> Float[Tensor, "batch inst feats"]:
    hidden = einsum(self.W, features, "inst d_hidden feats, batch inst feats -> batch inst d_hidden")
    out = einsum(self.W, hidden, "inst d_hidden feats, batch inst d_hidden -> batch inst feats")
    return F.relu(out + self.b_final)


@add_to_class(ToyModel)
def generate_batch(self, batch_size: int) -> Float[Tensor, "batch inst feats"]:
    draws = torch.rand(batch_size, self.cfg.n_inst, self.cfg.n_features, device=self.W.device)
    present = draws < self.feature_probability
    return torch.where(present, draws / self.feature_probability, 0.0)


@add_to_class(ToyModel)
def calculate_loss(
    self,
    out: Float[Tensor, "batch inst feats"],
    batch: Float[Tensor, "batch inst feats"],
) -> Float[Tensor, ""]:
    weighted_error = self.importance * (batch - out).pow(2)
    return weighted_error.mean(dim=(0, 2)).sum()


def generate_correlated_features(
    batch_size: int, feature_probability: Float[Tensor, "inst pairs"]
) -> Float[Tensor, "batch inst 2*pairs"]:
    n_inst, n_pairs = feature_probability.shape
    device = feature_probability.device
    pair_present = torch.rand(batch_size, n_inst, n_pairs, device=device) < feature_probability
    magnitudes = torch.rand(batch_size, n_inst, n_pairs, 2, device=device)
    return (magnitudes * pair_present[..., None]).flatten(-2)


def generate_anticorrelated_features(
    batch_size: int, feature_probability: Float[Tensor, "inst pairs"]
) -> Float[Tensor, "batch inst 2*pairs"]:
    assert (feature_probability <= 0.5).all(), "anticorrelated pairs need p <= 1/2"
    n_inst, n_pairs = feature_probability.shape
    device = feature_probability.device
    pair_active = torch.rand(batch_size, n_inst, n_pairs, device=device) < 2 * feature_probability
    first_chosen = torch.rand(batch_size, n_inst, n_pairs, device=device) < 0.5
    which = torch.stack([first_chosen, ~first_chosen], dim=-1)
    magnitudes = torch.rand(batch_size, n_inst, n_pairs, 2, device=device)
    return (magnitudes * (pair_active[..., None] & which)).flatten(-2)
