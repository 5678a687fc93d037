"""Reference implementation for 05_sae_variants, generated from source/05_sae_variants.py.

Do not edit: change the source and run `python workbook.py build`."""

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from einops import einsum
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from part_utils.methods import add_to_class
from part_utils.reference.part1_toy_models import ToyModel
from part_utils.reference.part4_toy_sae import ToySAE, ToySAEConfig, recovery_report
from part_utils.sae_interface import SAEOutput


class GatedToySAE(ToySAE):
    """Gated SAE: `W_enc`/`b_enc` are the gate's weights, `r_mag` and `b_mag` the magnitude path's."""

    r_mag: Float[Tensor, "inst d_sae"]
    b_mag: Float[Tensor, "inst d_sae"]

    def __init__(self, cfg: ToySAEConfig, model: ToyModel) -> None:
        assert not cfg.tied_weights, "a Gated SAE here has an untied decoder"
        super().__init__(cfg, model)
        self.r_mag = nn.Parameter(torch.zeros_like(self.b_enc))
        self.b_mag = nn.Parameter(torch.zeros_like(self.b_enc))

    def latent_axes(self) -> dict[str, int]:
        return {**super().latent_axes(), "r_mag": 1, "b_mag": 1}

    def reset_latent_state(self, resampled: Bool[Tensor, "inst d_sae"]) -> None:
        """A resampled latent starts with W_mag = W_gate and no magnitude bias."""
        self.r_mag.data[resampled] = 0.0
        self.b_mag.data[resampled] = 0.0

    def encode(self, h: Float[Tensor, "batch inst d_in"]) -> Float[Tensor, "batch inst d_sae"]:
        return self.encode_with_gate(h)[0]


@add_to_class(GatedToySAE)
def encode_with_gate(
    self, h: Float[Tensor, "batch inst d_in"]
) -> tuple[Float[Tensor, "batch inst d_sae"], Float[Tensor, "batch inst d_sae"]]:
    h_centred = h - self.b_dec
    pi_gate = einsum(h_centred, self.W_enc, "batch inst d_in, inst d_in d_sae -> batch inst d_sae") + self.b_enc
    W_mag = self.r_mag.exp()[:, None, :] * self.W_enc
    pi_mag = einsum(h_centred, W_mag, "batch inst d_in, inst d_in d_sae -> batch inst d_sae") + self.b_mag
    return (pi_gate > 0).to(h.dtype) * F.relu(pi_mag), pi_gate


@add_to_class(GatedToySAE)
def forward(self, h: Float[Tensor, "batch inst d_in"]) -> SAEOutput:
    acts, pi_gate = self.encode_with_gate(h)
    h_reconstructed = self.decode(acts)
    gate_acts = F.relu(pi_gate)
    via_gate = (
        einsum(gate_acts, self.W_dec_normalized.detach(), "batch inst d_sae, inst d_sae d_in -> batch inst d_in")
        + self.b_dec.detach()
    )
    loss_dict = {
        "L_reconstruction": (h_reconstructed - h).pow(2).mean(dim=-1),
        "L_sparsity": gate_acts.sum(dim=-1),
        "L_aux": (via_gate - h).pow(2).mean(dim=-1),
    }
    per_input = loss_dict["L_reconstruction"] + self.cfg.sparsity_coeff * loss_dict["L_sparsity"] + loss_dict["L_aux"]
    return SAEOutput(loss_dict=loss_dict, loss=per_input.mean(dim=0).sum(), acts=acts, h_reconstructed=h_reconstructed)


def rectangle(u: Tensor) -> Tensor:
    """The kernel K(u) = 1[-1/2 < u < 1/2], as 0.0/1.0 in u's dtype."""
    return ((u > -0.5) & (u < 0.5)).to(u.dtype)


class Heaviside(torch.autograd.Function):
    """H(z - θ), with ∂/∂z = 0 and ∂/∂θ = -(1/ε) K((z - θ)/ε)."""

    @staticmethod
    def forward(ctx: Any, z: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(z, threshold)
        ctx.bandwidth = bandwidth
        return (z > threshold).to(z.dtype)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, Tensor, None]:
        z, threshold = ctx.saved_tensors
        bandwidth = ctx.bandwidth
        grad_threshold = -(1.0 / bandwidth) * rectangle((z - threshold) / bandwidth) * grad_output
        return torch.zeros_like(z), grad_threshold.sum_to_size(threshold.shape), None


class JumpReLU(torch.autograd.Function):
    """z · H(z - θ), with ∂/∂z = H(z - θ) and ∂/∂θ = -(θ/ε) K((z - θ)/ε)."""

    @staticmethod
    def forward(ctx: Any, z: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(z, threshold)
        ctx.bandwidth = bandwidth
        return z * (z > threshold).to(z.dtype)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor, Tensor, None]:
        z, threshold = ctx.saved_tensors
        bandwidth = ctx.bandwidth
        grad_z = (z > threshold).to(z.dtype) * grad_output
        grad_threshold = -(threshold / bandwidth) * rectangle((z - threshold) / bandwidth) * grad_output
        return grad_z, grad_threshold.sum_to_size(threshold.shape), None


@dataclass
class JumpReLUToySAEConfig(ToySAEConfig):
    bandwidth: float = 0.1
    initial_threshold: float = 0.1


class JumpReLUToySAE(ToySAE):
    log_threshold: Float[Tensor, "inst d_sae"]

    def __init__(self, cfg: JumpReLUToySAEConfig, model: ToyModel) -> None:
        super().__init__(cfg, model)
        self.log_threshold = nn.Parameter(torch.full_like(self.b_enc, math.log(cfg.initial_threshold)))

    def latent_axes(self) -> dict[str, int]:
        return {**super().latent_axes(), "log_threshold": 1}

    def activation(self, pre_acts: Float[Tensor, "batch inst d_sae"]) -> Float[Tensor, "batch inst d_sae"]:
        return JumpReLU.apply(pre_acts, self.log_threshold.exp(), self.cfg.bandwidth)

    def forward(self, h: Float[Tensor, "batch inst d_in"]) -> SAEOutput:
        pre_acts = self.pre_activations(h)
        threshold = self.log_threshold.exp()  # once: the threshold's gradient gathers from both uses
        acts = JumpReLU.apply(pre_acts, threshold, self.cfg.bandwidth)
        h_reconstructed = self.decode(acts)
        loss_dict = {
            "L_reconstruction": (h_reconstructed - h).pow(2).mean(dim=-1),
            "L_sparsity": self.l0(pre_acts, threshold),
        }
        per_input = loss_dict["L_reconstruction"] + self.cfg.sparsity_coeff * loss_dict["L_sparsity"]
        return SAEOutput(
            loss_dict=loss_dict, loss=per_input.mean(dim=0).sum(), acts=acts, h_reconstructed=h_reconstructed
        )

    def l0(
        self, pre_acts: Float[Tensor, "batch inst d_sae"], threshold: Float[Tensor, "inst d_sae"]
    ) -> Float[Tensor, "batch inst"]:
        return Heaviside.apply(pre_acts, threshold, self.cfg.bandwidth).sum(dim=-1)

    def reset_latent_state(self, resampled: Bool[Tensor, "inst d_sae"]) -> None:
        """A resampled latent starts from the initial threshold, not the dead latent's."""
        self.log_threshold.data[resampled] = math.log(self.cfg.initial_threshold)


def remove_parallel_component(
    grad: Float[Tensor, "d_sae d_in"], W_dec: Float[Tensor, "d_sae d_in"]
) -> Float[Tensor, "d_sae d_in"]:
    parallel = (grad * W_dec).sum(dim=-1, keepdim=True)
    return grad - parallel * W_dec


class JumpReLUSAE(nn.Module):
    """One JumpReLU SAE in Google DeepMind's layout, built from given Heaviside/JumpReLU functions."""

    def __init__(
        self,
        W_enc: Float[Tensor, "d_in d_sae"],
        b_enc: Float[Tensor, " d_sae"],
        W_dec: Float[Tensor, "d_sae d_in"],
        b_dec: Float[Tensor, " d_in"],
        log_threshold: Float[Tensor, " d_sae"],
        *,
        bandwidth: float,
        sparsity_coefficient: float,
        use_pre_encoder_bias: bool = True,
        jumprelu: type[torch.autograd.Function] = JumpReLU,
        heaviside: type[torch.autograd.Function] = Heaviside,
    ) -> None:
        super().__init__()
        for name, value in (
            ("W_enc", W_enc),
            ("b_enc", b_enc),
            ("W_dec", W_dec),
            ("b_dec", b_dec),
            ("log_threshold", log_threshold),
        ):
            setattr(self, name, nn.Parameter(value.detach().clone()))
        self.bandwidth, self.sparsity_coefficient = bandwidth, sparsity_coefficient
        self.use_pre_encoder_bias = use_pre_encoder_bias
        self.jumprelu, self.heaviside = jumprelu, heaviside

    def forward(
        self, x: Float[Tensor, "batch d_in"]
    ) -> tuple[Float[Tensor, ""], Float[Tensor, "batch d_in"], Float[Tensor, "batch d_sae"]]:
        """Returns (loss, reconstruction, pre-activations)."""
        x_in = x - self.b_dec if self.use_pre_encoder_bias else x
        pre_acts = x_in @ self.W_enc + self.b_enc
        threshold = self.log_threshold.exp()
        acts = self.jumprelu.apply(pre_acts, threshold, self.bandwidth)
        reconstruction = acts @ self.W_dec + self.b_dec
        l0 = self.heaviside.apply(pre_acts, threshold, self.bandwidth).sum(dim=-1)
        loss = ((reconstruction - x).pow(2).sum(dim=-1) + self.sparsity_coefficient * l0).mean()
        return loss, reconstruction, pre_acts


PUBLISHED_PROJECTION_EPS = 1e-6


def train_jumprelu_sae(
    sae: JumpReLUSAE,
    batches: Float[Tensor, "steps batch d_in"],
    *,
    lr: float,
    fixed_decoder_norms: bool = True,
    betas: tuple[float, float] = (0.0, 0.999),
    project: Any = remove_parallel_component,
) -> JumpReLUSAE:
    """One Adam step per batch; with fixed decoder norms, steps stay tangent to the unit rows.

    As in the published code, `project` gets the rows normalised as v / (‖v‖ + 1e-6).
    """
    optimizer = torch.optim.Adam(sae.parameters(), lr=lr, betas=betas, eps=1e-8)
    for batch in batches:
        loss, _, _ = sae(batch)
        optimizer.zero_grad()
        loss.backward()
        if fixed_decoder_norms:
            with torch.no_grad():
                rows = sae.W_dec / (sae.W_dec.norm(dim=-1, keepdim=True) + PUBLISHED_PROJECTION_EPS)
                sae.W_dec.grad.copy_(project(sae.W_dec.grad, rows))
        optimizer.step()
        if fixed_decoder_norms:
            with torch.no_grad():
                sae.W_dec.div_(sae.W_dec.norm(dim=-1, keepdim=True))
    return sae


def topk_activation(pre_acts: Float[Tensor, "batch inst d_sae"], k: int) -> Float[Tensor, "batch inst d_sae"]:
    top = pre_acts.topk(k, dim=-1)
    return torch.zeros_like(pre_acts).scatter(-1, top.indices, F.relu(top.values))


@dataclass
class TopKToySAEConfig(ToySAEConfig):
    k: float | list[float] = 1
    """One k for every instance, or one per instance (a sweep in a single SAE)."""
    k_aux: int = 2
    aux_coeff: float = 1 / 32
    dead_after_steps: int = 100


class TopKToySAE(ToySAE):
    steps_since_fired: Int[Tensor, "inst d_sae"]

    def __init__(self, cfg: TopKToySAEConfig, model: ToyModel) -> None:
        super().__init__(cfg, model)
        self.register_buffer("steps_since_fired", torch.zeros_like(self.b_enc, dtype=torch.long))
        k_per_instance = cfg.k if isinstance(cfg.k, list) else [cfg.k] * cfg.n_inst
        self.instance_groups = {
            k: [i for i, k_i in enumerate(k_per_instance) if k_i == k] for k in sorted(set(k_per_instance))
        }

    def activation(self, pre_acts: Float[Tensor, "batch inst d_sae"]) -> Float[Tensor, "batch inst d_sae"]:
        return self._per_k(pre_acts, lambda group_pre_acts, k: topk_activation(group_pre_acts, int(k)))

    def _per_k(self, pre_acts: Tensor, activation: Any) -> Tensor:
        """Apply `activation(pre_acts of a group, k)` to each group of instances sharing a k."""
        if len(self.instance_groups) == 1:
            return activation(pre_acts, next(iter(self.instance_groups)))
        acts = torch.empty_like(pre_acts)
        for k, instances in self.instance_groups.items():
            acts[:, instances] = activation(pre_acts[:, instances], k)
        return acts

    def reset_latent_state(self, resampled: Bool[Tensor, "inst d_sae"]) -> None:
        """A resampled latent gets a fresh dead-latent count, so AuxK leaves it alone at first."""
        self.steps_since_fired[resampled] = 0

    def record_firing(self, acts: Float[Tensor, "batch inst d_sae"]) -> None:
        """Count, for AuxK, the training steps since each latent last fired; evaluation counts nothing."""
        if self.training and torch.is_grad_enabled():
            self.steps_since_fired.add_(1).masked_fill_((acts > 0).any(dim=0), 0)

    def forward(self, h: Float[Tensor, "batch inst d_in"]) -> SAEOutput:
        pre_acts = self.pre_activations(h)
        acts = self.activation(pre_acts)
        h_reconstructed = self.decode(acts)
        dead = self.steps_since_fired >= self.cfg.dead_after_steps
        loss_dict = {
            "L_reconstruction": (h_reconstructed - h).pow(2).mean(dim=-1),
            "L_aux": self.auxk_loss(pre_acts, h, h_reconstructed, dead),
        }
        self.record_firing(acts)
        per_input = loss_dict["L_reconstruction"] + self.cfg.aux_coeff * loss_dict["L_aux"]
        return SAEOutput(
            loss_dict=loss_dict, loss=per_input.mean(dim=0).sum(), acts=acts, h_reconstructed=h_reconstructed
        )


@add_to_class(TopKToySAE)
def auxk_loss(
    self,
    pre_acts: Float[Tensor, "batch inst d_sae"],
    h: Float[Tensor, "batch inst d_in"],
    h_reconstructed: Float[Tensor, "batch inst d_in"],
    dead: Bool[Tensor, "inst d_sae"],
) -> Float[Tensor, "batch inst"]:
    residual = (h - h_reconstructed).detach()
    k_aux = min(self.cfg.k_aux, pre_acts.shape[-1])
    top = pre_acts.masked_fill(~dead, -torch.inf).topk(k_aux, dim=-1)
    aux_acts = torch.zeros_like(pre_acts).scatter(-1, top.indices, F.relu(top.values))
    residual_hat = einsum(aux_acts, self.W_dec_normalized, "batch inst d_sae, inst d_sae d_in -> batch inst d_in")
    scale = (dead.sum(dim=-1) / self.cfg.k_aux).clamp(max=1.0)
    return (residual_hat - residual).pow(2).mean(dim=-1) * scale


def fold_decoder_norms(
    W_enc: Float[Tensor, "d_in d_sae"], b_enc: Float[Tensor, " d_sae"], W_dec: Float[Tensor, "d_sae d_in"]
) -> tuple[Float[Tensor, "d_in d_sae"], Float[Tensor, " d_sae"], Float[Tensor, "d_sae d_in"]]:
    norms = W_dec.norm(dim=-1)
    return W_enc * norms, b_enc * norms, W_dec / norms[:, None]


def decode_dense(
    values: Float[Tensor, "batch k"], indices: Int[Tensor, "batch k"], W_dec: Float[Tensor, "d_sae d_in"]
) -> Float[Tensor, "batch d_in"]:
    dense = torch.zeros(values.shape[0], W_dec.shape[0], dtype=values.dtype, device=values.device)
    return dense.scatter(-1, indices, values) @ W_dec


def decode_gather(
    values: Float[Tensor, "batch k"], indices: Int[Tensor, "batch k"], W_dec: Float[Tensor, "d_sae d_in"]
) -> Float[Tensor, "batch d_in"]:
    return einsum(values, W_dec[indices], "batch k, batch k d_in -> batch d_in")


def decode_sparse(
    values: Float[Tensor, "batch k"], indices: Int[Tensor, "batch k"], W_dec: Float[Tensor, "d_sae d_in"]
) -> Float[Tensor, "batch d_in"]:
    batch, k = values.shape
    rows = torch.arange(batch, device=values.device).repeat_interleave(k)
    sparse = torch.sparse_coo_tensor(
        torch.stack([rows, indices.reshape(-1)]), values.reshape(-1), (batch, W_dec.shape[0]), check_invariants=False
    )
    return torch.sparse.mm(sparse, W_dec)


def batch_topk_activation(pre_acts: Float[Tensor, "batch inst d_sae"], k: float) -> Float[Tensor, "batch inst d_sae"]:
    batch, n_inst, d_sae = pre_acts.shape
    per_instance = F.relu(pre_acts).transpose(0, 1).reshape(n_inst, batch * d_sae)
    top = per_instance.topk(round(k * batch), dim=-1)
    kept = torch.zeros_like(per_instance).scatter(-1, top.indices, top.values)
    return kept.reshape(n_inst, batch, d_sae).transpose(0, 1)


class BatchTopKToySAE(TopKToySAE):
    threshold: Float[Tensor, " inst"]
    threshold_momentum = 0.99

    def __init__(self, cfg: TopKToySAEConfig, model: ToyModel) -> None:
        super().__init__(cfg, model)
        self.register_buffer("threshold", torch.full_like(self.b_enc[:, 0], torch.nan))

    def activation(self, pre_acts: Float[Tensor, "batch inst d_sae"]) -> Float[Tensor, "batch inst d_sae"]:
        if not self.training:
            return pre_acts * (pre_acts > self.threshold[:, None]).to(pre_acts.dtype)
        acts = self._per_k(pre_acts, batch_topk_activation)
        if torch.is_grad_enabled():
            self._update_threshold(acts.detach())
        return acts

    def _update_threshold(self, acts: Float[Tensor, "batch inst d_sae"]) -> None:
        smallest_kept = acts.masked_fill(acts <= 0, torch.inf).amin(dim=(0, 2))  # [inst]
        smallest_kept = torch.where(torch.isinf(smallest_kept), self.threshold, smallest_kept)
        first = torch.isnan(self.threshold)
        self.threshold.copy_(
            torch.where(
                first,
                smallest_kept,
                self.threshold_momentum * self.threshold + (1 - self.threshold_momentum) * smallest_kept,
            )
        )


@torch.no_grad()
def variant_report(
    sae: ToySAE, feature_directions: Float[Tensor, "inst feats d_in"], n_samples: int = 50_000
) -> dict[str, Tensor]:
    """Part 4's recovery report, plus the relative reconstruction bias γ, measured in inference mode."""
    was_training = sae.training
    sae.eval()
    report = recovery_report(sae, feature_directions, n_samples)
    h = sae.generate_batch(n_samples)
    h_reconstructed = sae(h).h_reconstructed
    sae.train(was_training)
    report["gamma"] = relative_reconstruction_bias(h, h_reconstructed).cpu()
    return report


def relative_reconstruction_bias(
    h: Float[Tensor, "batch inst d_in"], h_reconstructed: Float[Tensor, "batch inst d_in"]
) -> Float[Tensor, " inst"]:
    """γ = argmin_γ E‖ĥ/γ − h‖² = E‖ĥ‖² / E[ĥ·h] per instance: below 1, reconstructions come out short."""
    return h_reconstructed.pow(2).sum(dim=(0, 2)) / (h_reconstructed * h).sum(dim=(0, 2))


class HeavisideThroughInput(torch.autograd.Function):
    """H(z - θ) whose pseudo-derivative reaches z as well: ∂/∂z = +(1/ε) K((z - θ)/ε) = -∂/∂θ."""

    # Not a subclass of Heaviside: it keeps its own pseudo-derivative from forward, so that it
    # does not rely on what your forward saves for backward.
    @staticmethod
    def forward(ctx: Any, z: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(rectangle((z - threshold) / bandwidth) / bandwidth)
        ctx.threshold_shape = threshold.shape
        return (z > threshold).to(z.dtype)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor, Tensor, None]:
        (pseudo_derivative,) = ctx.saved_tensors
        grad_z = pseudo_derivative * grad_output
        return grad_z, (-grad_z).sum_to_size(ctx.threshold_shape), None


class JumpReLUEncoderL0ToySAE(JumpReLUToySAE):
    """The JumpReLU toy SAE whose L0 penalty also trains the encoder."""

    def l0(
        self, pre_acts: Float[Tensor, "batch inst d_sae"], threshold: Float[Tensor, "inst d_sae"]
    ) -> Float[Tensor, "batch inst"]:
        return HeavisideThroughInput.apply(pre_acts, threshold, self.cfg.bandwidth).sum(dim=-1)


@torch.no_grad()
def batch_topk_l0(sae: BatchTopKToySAE, n_batches: int = 20, batch_size: int = 1024) -> tuple[Tensor, Tensor]:
    """Mean L0 per instance on fresh data: with batch top-k (training) and with the threshold (inference)."""
    was_training = sae.training
    l0 = {}
    for mode in (True, False):
        sae.train(mode)
        counts = [
            (sae.encode(sae.generate_batch(batch_size)) > 0).float().sum(dim=-1).mean(dim=0) for _ in range(n_batches)
        ]
        l0[mode] = torch.stack(counts).mean(dim=0).cpu()
    sae.train(was_training)
    return l0[True], l0[False]
