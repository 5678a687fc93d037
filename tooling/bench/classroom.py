"""The plain classroom training loops the workbook's loops are measured against.

Written the way most course material writes them: two random draws per batch (one for
presence, one for magnitude), `einops.einsum`, a default `torch.optim.Adam`, the learning
rate set every step, and for SAEs the firing frequencies of the batch recorded at every
step (for dead-latent detection). Nothing here is deliberately slow; it is what a careful
but unoptimised implementation looks like.
"""

from collections.abc import Callable

import torch
import torch.nn.functional as F
from einops import einsum
from torch import Tensor, nn


class ClassroomToyModel(nn.Module):
    def __init__(
        self, n_inst: int, n_features: int, d_hidden: int, feature_probability: Tensor, importance: Tensor
    ) -> None:
        super().__init__()
        self.n_inst, self.n_features = n_inst, n_features
        self.feature_probability = feature_probability.expand(n_inst, n_features)
        self.importance = importance.expand(n_inst, n_features)
        self.W = nn.Parameter(nn.init.xavier_normal_(torch.empty(n_inst, d_hidden, n_features)))
        self.b_final = nn.Parameter(torch.zeros(n_inst, n_features))

    def generate_batch(self, batch_size: int) -> Tensor:
        shape = (batch_size, self.n_inst, self.n_features)
        magnitude = torch.rand(shape)
        seeds = torch.rand(shape)
        return torch.where(seeds <= self.feature_probability, magnitude, 0.0)

    def forward(self, features: Tensor) -> Tensor:
        hidden = einsum(features, self.W, "batch inst feats, inst hidden feats -> batch inst hidden")
        out = einsum(hidden, self.W, "batch inst hidden, inst hidden feats -> batch inst feats")
        return F.relu(out + self.b_final)

    def calculate_loss(self, out: Tensor, batch: Tensor) -> Tensor:
        error = self.importance * ((batch - out) ** 2)
        return einsum(error, "batch inst feats -> inst").sum() / (batch.shape[0] * self.n_features)


class ClassroomToySAE(nn.Module):
    def __init__(self, model: ClassroomToyModel, d_sae: int, sparsity_coeff: float = 0.2) -> None:
        super().__init__()
        d_in = model.W.shape[1]
        self.model = model.requires_grad_(False)
        self.sparsity_coeff = sparsity_coeff
        self.W_enc = nn.Parameter(nn.init.kaiming_uniform_(torch.empty(model.n_inst, d_in, d_sae)))
        self._W_dec = nn.Parameter(nn.init.kaiming_uniform_(torch.empty(model.n_inst, d_sae, d_in)))
        self.b_enc = nn.Parameter(torch.zeros(model.n_inst, d_sae))
        self.b_dec = nn.Parameter(torch.zeros(model.n_inst, d_in))

    @property
    def W_dec_normalized(self) -> Tensor:
        return self._W_dec / (self._W_dec.norm(dim=-1, keepdim=True) + 1e-8)

    def generate_batch(self, batch_size: int) -> Tensor:
        return einsum(
            self.model.generate_batch(batch_size), self.model.W, "batch inst feats, inst d_in feats -> batch inst d_in"
        )

    def forward(self, h: Tensor) -> tuple[dict[str, Tensor], Tensor, Tensor, Tensor]:
        acts = F.relu(
            einsum(h - self.b_dec, self.W_enc, "batch inst d_in, inst d_in d_sae -> batch inst d_sae") + self.b_enc
        )
        h_reconstructed = (
            einsum(acts, self.W_dec_normalized, "batch inst d_sae, inst d_sae d_in -> batch inst d_in") + self.b_dec
        )
        loss_dict = {"L_reconstruction": (h_reconstructed - h).pow(2).mean(-1), "L_sparsity": acts.abs().sum(-1)}
        loss = (loss_dict["L_reconstruction"] + self.sparsity_coeff * loss_dict["L_sparsity"]).mean(0).sum()
        return loss_dict, loss, acts, h_reconstructed


def classroom_toy_step(model: ClassroomToyModel, lr: float = 1e-3, batch_size: int = 1024) -> Callable[[], None]:
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)

    def step() -> None:
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.zero_grad()
        batch = model.generate_batch(batch_size)
        loss = model.calculate_loss(model(batch), batch)
        loss.backward()
        optimizer.step()

    return step


def classroom_sae_step(sae: ClassroomToySAE, lr: float = 1e-3, batch_size: int = 1024) -> Callable[[], None]:
    optimizer = torch.optim.Adam(sae.parameters(), lr=lr)
    frac_active: list[Tensor] = []

    def step() -> None:
        for group in optimizer.param_groups:
            group["lr"] = lr
        h = sae.generate_batch(batch_size)
        _, loss, acts, _ = sae(h)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        frac_active.append((acts.abs() > 1e-8).float().mean(0))
        del frac_active[:-500]  # the window the dead-latent check looks at

    return step
