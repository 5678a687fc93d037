"""Reference implementation for 04_toy_sae, generated from source/04_toy_sae.py.

Do not edit: change the source and run `python workbook.py build`."""

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from einops import einsum
from jaxtyping import Bool, Float
from torch import Tensor, nn

from part_utils.matching import hungarian_match, matched_recall
from part_utils.methods import add_to_class
from part_utils.reference.part1_toy_models import ToyModel
from part_utils.sae_interface import SAEOutput
from part_utils.sae_training import SAETrainingLog, train_sae
from part_utils.training import make_adam


@dataclass
class ToySAEConfig:
    n_inst: int
    d_in: int
    d_sae: int
    sparsity_coeff: float = 0.2
    weight_normalize_eps: float = 1e-8
    tied_weights: bool = False


class ToySAE(nn.Module):
    """`n_inst` independent SAEs on the hidden vectors of a frozen toy model."""

    W_enc: Float[Tensor, "inst d_in d_sae"]
    _W_dec: Float[Tensor, "inst d_sae d_in"] | None
    b_enc: Float[Tensor, "inst d_sae"]
    b_dec: Float[Tensor, "inst d_in"]

    @property
    def W_dec(self) -> Float[Tensor, "inst d_sae d_in"]:
        return self._W_dec if self._W_dec is not None else self.W_enc.transpose(-1, -2)

    def latent_axes(self) -> dict[str, int]:
        """Which axis of each parameter indexes latents (used to reset optimiser state)."""
        axes = {"W_enc": 2, "b_enc": 1}
        if self._W_dec is not None:
            axes["_W_dec"] = 1
        return axes

    def activation(self, pre_acts: Float[Tensor, "batch inst d_sae"]) -> Float[Tensor, "batch inst d_sae"]:
        """ReLU here; Part 5's architectures replace it."""
        return F.relu(pre_acts)

    def encode(self, h: Float[Tensor, "batch inst d_in"]) -> Float[Tensor, "batch inst d_sae"]:
        """The latent activations `acts` for inputs `h`."""
        return self.activation(self.pre_activations(h))

    def optimize(self, **training: Any) -> SAETrainingLog:
        """Train with Adam and optional resampling: see `part_utils.sae_training.train_sae` for the options."""
        return train_sae(self, **training)


@add_to_class(ToySAE)
def __init__(self, cfg: ToySAEConfig, model: ToyModel) -> None:
    nn.Module.__init__(self)
    assert cfg.d_in == model.cfg.d_hidden, "the SAE reads the model's hidden layer"
    self.cfg = cfg
    self.model = model.requires_grad_(False)
    device = model.W.device
    self.W_enc = nn.Parameter(nn.init.kaiming_uniform_(torch.empty(cfg.n_inst, cfg.d_in, cfg.d_sae, device=device)))
    self._W_dec = (
        None
        if cfg.tied_weights
        else nn.Parameter(nn.init.kaiming_uniform_(torch.empty(cfg.n_inst, cfg.d_sae, cfg.d_in, device=device)))
    )
    self.b_enc = nn.Parameter(torch.zeros(cfg.n_inst, cfg.d_sae, device=device))
    self.b_dec = nn.Parameter(torch.zeros(cfg.n_inst, cfg.d_in, device=device))


@add_to_class(ToySAE)
@property
def W_dec_normalized(self) -> Float[Tensor, "inst d_sae d_in"]:
    return self.W_dec / (self.W_dec.norm(dim=-1, keepdim=True) + self.cfg.weight_normalize_eps)


@add_to_class(ToySAE)
def generate_batch(self, batch_size: int) -> Float[Tensor, "batch inst d_in"]:
    features = self.model.generate_batch(batch_size)
    return einsum(self.model.W, features, "inst d_in feats, batch inst feats -> batch inst d_in")


@add_to_class(ToySAE)
def pre_activations(self, h: Float[Tensor, "batch inst d_in"]) -> Float[Tensor, "batch inst d_sae"]:
    return einsum(h - self.b_dec, self.W_enc, "batch inst d_in, inst d_in d_sae -> batch inst d_sae") + self.b_enc


@add_to_class(ToySAE)
def decode(self, acts: Float[Tensor, "batch inst d_sae"]) -> Float[Tensor, "batch inst d_in"]:
    return einsum(acts, self.W_dec_normalized, "batch inst d_sae, inst d_sae d_in -> batch inst d_in") + self.b_dec


@add_to_class(ToySAE)
def forward(self, h: Float[Tensor, "batch inst d_in"]) -> SAEOutput:
    acts = self.encode(h)
    h_reconstructed = self.decode(acts)
    loss_dict = {
        "L_reconstruction": (h_reconstructed - h).pow(2).mean(dim=-1),
        "L_sparsity": acts.abs().sum(dim=-1),
    }
    loss = (loss_dict["L_reconstruction"] + self.cfg.sparsity_coeff * loss_dict["L_sparsity"]).mean(dim=0).sum()
    return SAEOutput(loss_dict=loss_dict, loss=loss, acts=acts, h_reconstructed=h_reconstructed)


def max_cosine_similarity(
    W_dec: Float[Tensor, "inst d_sae d_in"], feature_directions: Float[Tensor, "inst feats d_in"]
) -> Float[Tensor, "inst feats"]:
    decoder_unit = F.normalize(W_dec, dim=-1)
    features_unit = F.normalize(feature_directions, dim=-1)
    cosine = einsum(features_unit, decoder_unit, "inst feats d_in, inst d_sae d_in -> inst feats d_sae")
    return cosine.max(dim=-1).values


RECOVERED_AT = 0.99


@torch.no_grad()
def recovery_report(
    sae: Any, feature_directions: Float[Tensor, "inst feats d_in"], n_samples: int = 50_000
) -> dict[str, Tensor]:
    """Per-instance feature recovery, dead latents, L0 and fraction of variance unexplained."""
    features = sae.model.generate_batch(n_samples)
    h = einsum(features, sae.model.W, "batch inst feats, inst d_in feats -> batch inst d_in")
    output = sae(h)
    acts, h_reconstructed = output.acts, output.h_reconstructed
    best_cosine = max_cosine_similarity(sae.W_dec_normalized, feature_directions)
    matched_cosine, matched_latent = hungarian_match(decoder_feature_cosines(sae.W_dec_normalized, feature_directions))
    variance = (h - h.mean(dim=0)).pow(2).sum(dim=(0, 2))
    return {
        "mmcs": best_cosine.mean(dim=-1).cpu(),
        "hungarian": matched_cosine.mean(dim=-1),
        "recall": matched_recall(features, acts, matched_latent).mean(dim=-1),
        "recovered": (best_cosine >= RECOVERED_AT).sum(dim=-1).cpu(),
        "dead": ((acts > 0).sum(dim=0) == 0).sum(dim=-1).cpu(),
        "l0": (acts > 0).float().sum(dim=-1).mean(dim=0).cpu(),
        "fvu": ((h_reconstructed - h).pow(2).sum(dim=(0, 2)) / variance).cpu(),
    }


def decoder_feature_cosines(
    W_dec: Float[Tensor, "inst d_sae d_in"], feature_directions: Float[Tensor, "inst feats d_in"]
) -> Float[Tensor, "inst feats d_sae"]:
    return einsum(
        F.normalize(feature_directions, dim=-1),
        F.normalize(W_dec, dim=-1),
        "inst feats d_in, inst d_sae d_in -> inst feats d_sae",
    )


@add_to_class(ToySAE)
def resample_simple(
    self, frac_active_in_window: Float[Tensor, "inst d_sae"], resample_scale: float
) -> Bool[Tensor, "inst d_sae"]:
    dead = frac_active_in_window < 1e-8
    n_dead = int(dead.sum())
    directions = F.normalize(torch.randn(n_dead, self.cfg.d_in, device=self.W_enc.device), dim=-1)
    inst_index, latent_index = dead.nonzero(as_tuple=True)
    self.W_enc.data[inst_index, :, latent_index] = directions * resample_scale
    if self._W_dec is not None:
        self._W_dec.data[inst_index, latent_index] = directions
    self.b_enc.data[dead] = 0.0
    return dead


@add_to_class(ToySAE)
def resample_advanced(
    self, frac_active_in_window: Float[Tensor, "inst d_sae"], resample_scale: float, batch_size: int = 4_096
) -> Bool[Tensor, "inst d_sae"]:
    dead = frac_active_in_window < 1e-8
    h = self.generate_batch(batch_size)
    loss_dict = self.forward(h).loss_dict
    squared_loss = loss_dict["L_reconstruction"].pow(2)  # [batch, inst]
    resampled = torch.zeros_like(dead)
    for inst in range(self.cfg.n_inst):
        dead_latents = dead[inst].nonzero(as_tuple=True)[0]
        weights = squared_loss[:, inst]
        if len(dead_latents) == 0 or weights.sum() < 1e-12:
            continue
        chosen = torch.multinomial(weights, len(dead_latents), replacement=True)
        directions = F.normalize(h[chosen, inst] - self.b_dec[inst], dim=-1)
        live = ~dead[inst]
        live_norm = self.W_enc[inst][:, live].norm(dim=0).mean() if live.any() else torch.tensor(1.0, device=h.device)
        self.W_enc.data[inst][:, dead_latents] = directions.T * live_norm * resample_scale
        if self._W_dec is not None:
            self._W_dec.data[inst][dead_latents] = directions
        self.b_enc.data[inst][dead_latents] = 0.0
        resampled[inst, dead_latents] = True
    return resampled


def adam_step_sizes(reset_at: int, n_steps: int, lr: float) -> list[float]:
    """Adam's updates of one weight with gradient 1, in units of lr, for `n_steps` steps from step `reset_at` on.

    The optimiser first runs `reset_at` steps; then its moments are zeroed, as `train_sae` does for a
    resampled latent, while its step count carries on. `reset_at=0` is a fresh optimiser.
    """
    weight = nn.Parameter(torch.zeros(1))
    optimizer = make_adam([weight], lr)
    sizes = []
    for step in range(reset_at + n_steps):
        if step == reset_at > 0:
            for moment in ("exp_avg", "exp_avg_sq"):
                optimizer.state[weight][moment].zero_()
        weight.data.zero_()  # the update is then the weight itself, with no rounding against a large value
        weight.grad = torch.ones_like(weight)
        optimizer.step()
        if step >= reset_at:
            sizes.append(-weight.item() / lr)
    return sizes


@torch.no_grad()
def init_encoder_as_decoder_transpose(sae: ToySAE) -> None:
    """Point each latent's encoder column along its (normalised) decoder row."""
    if sae._W_dec is not None:
        sae.W_enc.data.copy_(sae.W_dec_normalized.transpose(-1, -2))
