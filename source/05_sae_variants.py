# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Part 5: SAE variants
#
# The L1 penalty of Part 4 does two jobs at once: it decides *which* latents fire, and it
# charges for *how much* they fire. The second job is a side effect we do not want: it pulls
# every active latent towards zero, so the reconstruction comes out too short (shrinkage).
# Each variant here separates the two jobs in its own way:
#
# | variant | which latents fire | sparsity is paid for by |
# |---|---|---|
# | L1 ReLU (Part 4) | ReLU of the pre-activation | L1 of the activations |
# | Gated | a separate gate path | L1 of the gate only |
# | JumpReLU | pre-activation above a learned threshold | L0 (a count), through a straight-through estimator |
# | TopK | the k largest pre-activations | nothing: k is fixed |
# | BatchTopK | the k·batch largest in the whole batch | nothing: k on average |
#
# **You will**
# - write the Gated SAE's encoder, forward pass and loss;
# - write the Heaviside step and JumpReLU as autograd functions with straight-through
#   pseudo-derivatives, and check your JumpReLU SAE against the numbers published by Google
#   DeepMind's reference implementation, training steps included;
# - write the TopK activation and the AuxK loss that keeps latents alive; see why decoder
#   norms cannot be folded into a TopK encoder; decode sparsely three ways;
# - write BatchTopK and turn it into a JumpReLU for inference;
# - train all five on the same toy data and compare them on a Pareto plot.
#
# **Time:** about 3 hours. Every exercise is followed by a check cell, as before.

# %% tags=["workbook-setup"]

# %% tags=["reference"]
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

# %%
import tests.part5_sae_variants as checks
from part_utils.device import get_device
from part_utils.experiments.variant_followups import compare_l0_estimators, show_batch_topk_inference
from part_utils.experiments.variant_sweep import VariantSweep
from part_utils.modes import FAST_MODE, full_or_fast
from part_utils.reference.part1_toy_models import ToyModelConfig
from part_utils.results import Results
from part_utils.sae_registry import Definitions, freeze_decoder_bias
from part_utils.seeding import seed_everything
from part_utils.training import cosine_decay_lr, train_self_supervised

device = get_device()
results = Results(part=5)  # what the text quotes; written by `workbook.py claims --part 5`
print(f"device: {device}, fast mode: {FAST_MODE}")

# %% [markdown]
# ## 1. The toy data again
#
# The same setting as Part 4: a frozen toy model storing 5 features in 2 dimensions
# (feature probability {{=0.025}}), copied into every instance. `make_toy_model(n)` gives a copy
# with `n` instances; we will train several sparsity settings side by side as separate
# instances of one SAE, {{settings.seeds:.0f}} instances per setting.

# %%
seed_everything(0)
n_features, d_hidden = 5, 2
n_per_setting = full_or_fast(8, 2)  # instances per setting, each its own seed (fast mode: fewer, for CI)
feature_probability = 0.025
toy_single = ToyModel(
    ToyModelConfig(n_inst=1, n_features=n_features, d_hidden=d_hidden),
    feature_probability=feature_probability,
    device=device,
)
_ = train_self_supervised(
    toy_single, steps=full_or_fast(6_000, 1_500), lr=3e-3, lr_schedule=cosine_decay_lr, description="toy model"
)


def make_toy_model(n_inst: int) -> ToyModel:
    model = ToyModel(
        ToyModelConfig(n_inst=n_inst, n_features=n_features, d_hidden=d_hidden),
        feature_probability=feature_probability,
        device=device,
    )
    with torch.no_grad():
        model.W.copy_(toy_single.W.expand_as(model.W))
        model.b_final.copy_(toy_single.b_final.expand_as(model.b_final))
    return model.requires_grad_(False)


def feature_directions_for(n_inst: int) -> Float[Tensor, "inst feats d_in"]:
    return toy_single.W.detach().transpose(1, 2).expand(n_inst, -1, -1)


# %% [markdown]
# ## 2. Gated SAEs
#
# A Gated SAE computes two things from the centred input `h - b_dec`:
#
# - the **gate** `π_gate = (h - b_dec) W_gate + b_gate`, which decides *whether* a latent
#   fires: `1[π_gate > 0]`;
# - the **magnitude** `π_mag = (h - b_dec) W_mag + b_mag`, which decides *how much*:
#   `ReLU(π_mag)`. To save parameters, `W_mag` is the gate's matrix with each latent's column
#   rescaled: `W_mag = exp(r_mag) ⊙ W_gate`, one learned `r_mag` per latent.
#
# ### Exercise 2.1: `GatedToySAE.encode_with_gate` and `forward`
#
# **Difficulty** ●●●○○ · **Importance** ●●●○○ · **Plan for** 30 minutes
#
# Write `encode_with_gate(h)`, which returns the activations `acts = 1[π_gate > 0] · ReLU(π_mag)`
# together with `π_gate` (the class's `encode(h)` returns its `acts`), and the forward pass,
# which returns an `SAEOutput` as in Part 4, with `acts, pi_gate = self.encode_with_gate(h)`
# (`forward` needs `π_gate` for its losses) and `h_reconstructed = self.decode(acts)`.
# `loss_dict` holds three
# terms, each of shape `[batch, inst]`:
#
# - `L_reconstruction`: mean over `d_in` of `(h_reconstructed - h)²`;
# - `L_sparsity`: the L1 norm of `ReLU(π_gate)`, summed over latents (the term itself, without
#   `sparsity_coeff`);
# - `L_aux`: mean over `d_in` of `(ReLU(π_gate) W_dec_normalized + b_dec - h)²`, with
#   `W_dec_normalized` and `b_dec` **detached** here, and only here: a reconstruction from
#   the gate alone.
#
# The loss is `L_reconstruction + sparsity_coeff · L_sparsity + L_aux`, averaged over the
# batch and summed over instances as in Part 4. `sparsity_coeff` is one number, or a tensor
# with one value per instance (the comparison at the end trains a whole sweep that way), so
# multiply it in before summing over instances. Nothing else is detached: every parameter
# trains through this loss.
#
# Here `W_gate` is stored as `W_enc` and `b_gate` as `b_enc`, so Part 4's training loop,
# resampling and plots work unchanged.
#
# <details><summary>Why is L_aux needed, and why does the L1 no longer shrink the output?</summary>
#
# The indicator `1[π_gate > 0]` has zero gradient everywhere, so the reconstruction loss
# cannot tell the gate *whether* to fire: without `L_aux`, `b_gate` would get no gradient
# from it at all, and neither would the on/off decision. `W_gate` is not cut off, since the
# magnitude path shares it (`W_mag = exp(r_mag) ⊙ W_gate`), but what reaches it that way is
# about sizes, not about which latents should be active. `L_aux` gives the gate a
# reconstruction objective of its own. The decoder is detached in it so that this crude
# gate-only reconstruction does not drag the decoder around. The L1 penalty acts on
# `ReLU(π_gate)`. It reaches the magnitudes only through the shared `W_gate`, and `r_mag`
# and `b_mag` let the magnitude path undo any shrinking of `W_gate`: nothing pulls the
# *sizes* of the active latents towards zero any more.
# </details>
#
# <details><summary>Hint 1: one centred input, two paths, then the losses</summary>
#
# In `encode_with_gate`: centre the input once, `h - self.b_dec`, and feed it to both paths.
# Build `W_mag` from `W_enc` and `r_mag`; then the two pre-activations `π_gate` and `π_mag`
# (each the same einsum as Part 4's encoder, with its own matrix and bias); then `acts`. In
# `forward`: `acts` and `π_gate` from `encode_with_gate`, `h_reconstructed` from `decode`.
# Compute `ReLU(π_gate)` once: it appears in both `L_sparsity` and `L_aux`. Then the three
# `[batch, inst]` terms, and last the total loss from them.
# </details>
#
# <details><summary>Hint 2: broadcasts, reductions and the one place to detach</summary>
#
# `W_enc` is `[inst, d_in, d_sae]` and `r_mag` is `[inst, d_sae]`: `exp(r_mag)` needs a
# `d_in` axis inserted in the middle, `[inst, 1, d_sae]`, to scale each latent's column. The
# indicator `π_gate > 0` is boolean: convert it to `h`'s dtype before multiplying. The two
# squared errors are averaged over `d_in` (`dim=-1`) and `L_sparsity` is summed over
# `d_sae` (`dim=-1`), all three `[batch, inst]`. `sparsity_coeff`, a number or an `[inst]`
# tensor, broadcasts against `[batch, inst]`, so add the three terms per input first, then
# average over the batch (`dim=0`) and sum what is left. Inside `L_aux` only, decode with
# `self.W_dec_normalized.detach()` and add `self.b_dec.detach()`; keep `ReLU(π_gate)` itself
# attached, since that is how the gate learns.
# </details>
#
# Stuck after the hints? The same cell in `solutions/05_sae_variants.ipynb` has the answer.


# %% tags=["reference"]
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
    # BEGIN SOLUTION
    h_centred = h - self.b_dec
    pi_gate = einsum(h_centred, self.W_enc, "batch inst d_in, inst d_in d_sae -> batch inst d_sae") + self.b_enc
    W_mag = self.r_mag.exp()[:, None, :] * self.W_enc
    pi_mag = einsum(h_centred, W_mag, "batch inst d_in, inst d_in d_sae -> batch inst d_sae") + self.b_mag
    return (pi_gate > 0).to(h.dtype) * F.relu(pi_mag), pi_gate
    # END SOLUTION


@add_to_class(GatedToySAE)
def forward(self, h: Float[Tensor, "batch inst d_in"]) -> SAEOutput:
    # BEGIN SOLUTION
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
    # END SOLUTION


# %%
checks.test_gated_forward(GatedToySAE)

# %% [markdown]
# ## 3. JumpReLU SAEs
#
# A JumpReLU passes a pre-activation unchanged if it is above a per-latent threshold θ and
# zeroes it otherwise: `JumpReLU_θ(z) = z · H(z - θ)`, with `H` the Heaviside step, 1 for a
# positive argument and 0 otherwise (a pre-activation exactly at θ is zeroed). The loss
# pays for the *number* of active latents, `L0 = Σ_i H(z_i - θ_i)`, not their size, so
# there is no shrinkage. θ is stored as `log θ` to keep it positive.
#
# The catch: `H` has zero derivative almost everywhere, so neither θ nor L0 would get a
# useful gradient. The JumpReLU paper replaces the derivatives with *pseudo-derivatives*
# (straight-through estimators) built from a rectangle kernel `K(u) = 1[-½ < u < ½]` of
# width ε (the **bandwidth**), 1 on the open interval only:
#
# | function | ∂/∂z | ∂/∂θ |
# |---|---|---|
# | `H(z - θ)` | 0 | `-(1/ε) K((z - θ)/ε)` |
# | `JumpReLU_θ(z)` | `H(z - θ)` | `-(θ/ε) K((z - θ)/ε)` |
#
# So θ only hears about inputs whose pre-activation lies strictly within ε/2 of it (one
# exactly ε/2 away gets nothing): pushing θ up there switches off latents that barely fire
# (fewer L0, some reconstruction lost), and the two pulls balance. θ has one value per
# latent while z has one per input, so θ's gradient is **summed** over the batch (every
# input contributes).
#
# ### Exercise 3.1: `Heaviside`
#
# **Difficulty** ●●●●○ · **Importance** ●●●●○ · **Plan for** 30 minutes
#
# Write both as `torch.autograd.Function`s, `Heaviside` first and `JumpReLU` in the next
# exercise. `forward(ctx, z, threshold, bandwidth)` returns the output, leaving `z` and
# `threshold` unchanged, and keeps what `backward` needs on `ctx`
# (`ctx.save_for_backward(z, threshold)` for tensors, `ctx.bandwidth = bandwidth` for the
# number), not on the class or in a global: an SAE may call forward twice before backward.
# `backward(ctx, grad_output)` returns one gradient per input of `forward`, each times
# `grad_output`: for z, for threshold, and `None` for the bandwidth (a plain number, so
# autograd accepts nothing else there). `z` is `[batch, ...]` and `threshold` has the shape
# of one input (`[inst, d_sae]` in the toy SAE, `[d_sae]` in the reference SAE below) or is a
# single number; return θ's gradient summed over the batch to θ's shape
# (`.sum_to_size(threshold.shape)` does that). `rectangle` is given.
#
# A hand-checkable case: `z = [1.0, 1.4, 1.6, 2.0]` with one shared `θ = 1.5`, `ε = 0.5` and
# `grad_output` all ones. Only `1.4` and `1.6` are within `ε/2 = 0.25` of θ. So `H = [0, 0, 1, 1]`,
# the four inputs pull on θ with `[0, -2, -2, 0]` and ∂θ is their sum, -4.
#
# <details><summary>Hint 1: forward is one comparison; the work is in backward</summary>
#
# `forward` saves what `backward` will need, then returns the step: `1.0` where `z` is strictly
# above `threshold`, `0.0` elsewhere, in `z`'s dtype. In `backward`, read `z`, `threshold` and the
# bandwidth back from `ctx`, compute each input's pull on θ (a tensor with `z`'s shape, using
# `rectangle`), and only then reduce it to θ's shape. Try it on the hand-checkable case: you
# should get the pulls `[0, -2, -2, 0]` before reducing and -4 after.
# </details>
#
# <details><summary>Hint 2: the kernel's argument, and the shapes in backward</summary>
#
# `ctx.saved_tensors` gives back the tensors in the order you saved them. The kernel takes
# `u = (z - threshold) / bandwidth`, not `z - threshold`; `rectangle(u)` is already 0 at the
# edges (the open interval), so there is no need for a test of `|u|` of your own.
# `threshold` broadcasts against `z`, so `-(1/ε) · rectangle(u) · grad_output` has `z`'s
# shape (`[batch, inst, d_sae]` in the toy SAE); `.sum_to_size(threshold.shape)` then sums it
# over the batch (over everything, for a single-number θ). Sum, do not average. Return three
# things: `torch.zeros_like(z)` (or `None`) for `z`, that sum for `threshold`, and `None` for
# the bandwidth.
# </details>
#
# Stuck after the hints? The same cell in `solutions/05_sae_variants.ipynb` has the answer.


# %% tags=["reference"]
def rectangle(u: Tensor) -> Tensor:
    """The kernel K(u) = 1[-1/2 < u < 1/2], as 0.0/1.0 in u's dtype."""
    return ((u > -0.5) & (u < 0.5)).to(u.dtype)


class Heaviside(torch.autograd.Function):
    """H(z - θ), with ∂/∂z = 0 and ∂/∂θ = -(1/ε) K((z - θ)/ε)."""

    @staticmethod
    def forward(ctx: Any, z: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
        # BEGIN SOLUTION
        ctx.save_for_backward(z, threshold)
        ctx.bandwidth = bandwidth
        return (z > threshold).to(z.dtype)
        # END SOLUTION

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, Tensor, None]:
        # BEGIN SOLUTION
        z, threshold = ctx.saved_tensors
        bandwidth = ctx.bandwidth
        grad_threshold = -(1.0 / bandwidth) * rectangle((z - threshold) / bandwidth) * grad_output
        return torch.zeros_like(z), grad_threshold.sum_to_size(threshold.shape), None
        # END SOLUTION


# %%
checks.test_heaviside(Heaviside)

# %% [markdown]
# ### Exercise 3.2: `JumpReLU`
#
# **Difficulty** ●●●○○ · **Importance** ●●●●○ · **Plan for** 15 minutes
#
# The same conventions as `Heaviside`, with the second row of the table: `forward` returns
# `z · H(z - θ)`, and `backward` gives `z` the gradient `H(z - θ)` and θ the gradient
# `-(θ/ε) K((z - θ)/ε)`, each times `grad_output`. In the hand-checkable case above,
# `JumpReLU = [0, 0, 1.6, 2.0]`, with pulls `[0, -3, -3, 0]` (∂θ = -6) and ∂z = `[0, 0, 1, 1]`.
#
# <details><summary>Hint 1: start from your Heaviside</summary>
#
# `forward` saves the same things and multiplies `z` by the same step. `backward` now has two
# gradients to compute instead of one: the one for `z`, which needs no kernel at all, and the
# one for θ, which is Heaviside's with a different factor in front.
# </details>
#
# <details><summary>Hint 2: the two gradients and their shapes</summary>
#
# For `z`: the same strict step as in `forward`, in `z`'s dtype, times `grad_output`. It keeps
# `z`'s shape and is not reduced, since `z` has one value per input (a pre-activation exactly
# at θ gets 0). For θ: Heaviside's per-input pull with `1/ε` replaced by `θ/ε`, where θ is the
# saved `threshold` (broadcast against `z`), not `z`; then `.sum_to_size(threshold.shape)`
# as before. The third return value is still `None`.
# </details>
#
# Stuck after the hints? The same cell in `solutions/05_sae_variants.ipynb` has the answer.


# %% tags=["reference"]
class JumpReLU(torch.autograd.Function):
    """z · H(z - θ), with ∂/∂z = H(z - θ) and ∂/∂θ = -(θ/ε) K((z - θ)/ε)."""

    @staticmethod
    def forward(ctx: Any, z: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
        # BEGIN SOLUTION
        ctx.save_for_backward(z, threshold)
        ctx.bandwidth = bandwidth
        return z * (z > threshold).to(z.dtype)
        # END SOLUTION

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor, Tensor, None]:
        # BEGIN SOLUTION
        z, threshold = ctx.saved_tensors
        bandwidth = ctx.bandwidth
        grad_z = (z > threshold).to(z.dtype) * grad_output
        grad_threshold = -(threshold / bandwidth) * rectangle((z - threshold) / bandwidth) * grad_output
        return grad_z, grad_threshold.sum_to_size(threshold.shape), None
        # END SOLUTION


# %%
checks.test_jumprelu(JumpReLU)

# %% [markdown]
# ### The JumpReLU toy SAE
#
# With the two functions, the SAE is short (given): pre-activations as in Part 4,
# `acts = JumpReLU(pre, θ, ε)`, and the sparsity term `L_sparsity = Σ_i H(pre_i - θ_i)`,
# an L0 that carries a gradient to θ. A resampled latent gets its threshold back to the
# starting value.
#
# Two settings differ from the paper's. Rajamanoharan et al. train on activations normalised
# to a fixed mean squared norm, start every threshold at {{=0.001}} with a bandwidth of
# {{=0.001}}, and warm the L0 coefficient up from zero over the first part of training. Our
# toy inputs are not normalised and active pre-activations are a few tenths, so a bandwidth
# of {{=0.001}} would let almost no input inform θ in a short run: we start θ at
# {{=0.1}}, use ε = {{=0.1}}, and apply λ in full from the first step.


# %% tags=["reference"]
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


# %% [markdown]
# ### Reference parity with Google DeepMind's implementation
#
# Google DeepMind published a small reference implementation of the JumpReLU SAE with
# regression values: a fixed dataset and initialisation (drawn with NumPy from fixed seeds),
# the reconstruction, pre-activations, loss and every gradient, in float64. If our functions
# implement the method exactly, they reproduce those numbers.
#
# Their layout is a single SAE without instances: `x @ W_enc + b_enc`, `f @ W_dec + b_dec`,
# the input centred by `b_dec` before encoding, and the loss per input is the **sum** over
# `d_in` of the squared error plus `λ·L0`, averaged over the batch. `JumpReLUSAE` below
# (given) is that model, built from *your* `JumpReLU` and `Heaviside`.
#
# They also train with **fixed decoder norms**: every decoder row stays at unit norm, not by
# normalising in the forward pass but by constraining the optimiser. Before each Adam step
# (with β₁ = 0, β₂ = {{=0.999}}), the part of each row's gradient parallel to the row is removed,
# so the step is tangent to the unit sphere; after the step the rows are renormalised to
# undo the small drift that remains.
#
# ### Exercise 3.3: `remove_parallel_component`
#
# **Difficulty** ●●○○○ · **Importance** ●●○○○ · **Plan for** 10 minutes
#
# Write `remove_parallel_component(grad, W_dec)`: for each decoder row `w` and its gradient
# row `g` (both `[d_sae, d_in]`), return `g - (g · w) w`, with the dot product taken row by
# row. Return a new tensor and leave `grad` and `W_dec` as they are: the
# training loop uses what you return. The rows arrive normalised; use them as given. One
# detail of the published code: it normalises each row as `v / (‖v‖ + 1e-6)` for this
# projection, so `w` is a hair shorter than 1 and the parallel part is not quite all
# removed. Our training loop (`train_jumprelu_sae`, below) does that normalisation and hands
# you the result: the procedure is exactly the published one while your function stays the
# clean formula. Normalising the rows again inside it would undo the epsilon.
#
# <details><summary>Hint 1: one number per row, then a subtraction</summary>
#
# First compute the dot products: one number per decoder row, `d_sae` of them, each the dot
# product of a gradient row with its own decoder row. Then subtract from each gradient row
# its dot product times its decoder row.
# </details>
#
# <details><summary>Hint 2: keep the row axis</summary>
#
# Multiply `grad` and `W_dec` elementwise (`[d_sae, d_in]`) and sum over `d_in` (`dim=-1`)
# with `keepdim=True`: the result is `[d_sae, 1]`, which broadcasts against `W_dec` to scale
# each row by its own dot product. A matrix product such as `grad @ W_dec.T` would pair
# every gradient row with every decoder row instead. Write `grad - ...` rather than `grad -=`,
# so that `grad` itself is left as it is.
# </details>
#
# Stuck after the hints? The same cell in `solutions/05_sae_variants.ipynb` has the answer.


# %% tags=["reference"]
def remove_parallel_component(
    grad: Float[Tensor, "d_sae d_in"], W_dec: Float[Tensor, "d_sae d_in"]
) -> Float[Tensor, "d_sae d_in"]:
    # BEGIN SOLUTION
    parallel = (grad * W_dec).sum(dim=-1, keepdim=True)
    return grad - parallel * W_dec
    # END SOLUTION


# %%
checks.test_remove_parallel_component(remove_parallel_component)


# %% tags=["reference"]
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


# %% [markdown]
# The next cell runs the published case through your functions: the dataset, the
# reconstruction, pre-activations, loss and all five gradients against the published values
# (to 1e-5), then three training steps with fixed decoder norms against an independent
# implementation in plain NumPy with hand-derived gradients (`tests/oracles/jumprelu_numpy.py`,
# to 1e-8). It prints a table of the largest differences.

# %%
checks.test_reference_parity(JumpReLU, Heaviside, remove_parallel_component)

# %% [markdown]
# ## 4. TopK SAEs
#
# A TopK SAE fixes the number of active latents: keep the `k` largest pre-activations of
# each input, apply a ReLU to them (a kept value can still be negative), zero the rest. No
# sparsity penalty is needed, so nothing shrinks, and `k` sets L0 directly.
#
# ### Exercise 4.1: `topk_activation`
#
# **Difficulty** ●●○○○ · **Importance** ●●●●○ · **Plan for** 10 minutes
#
# Write `topk_activation(pre_acts, k)` for `pre_acts [batch, inst, d_sae]`: for each input
# and instance, keep exactly the `k` largest values along `d_sae` (largest by value, not by
# absolute value), ReLU them, zero the rest. Return a new tensor and leave `pre_acts` as it
# is: the AuxK loss below reads the same pre-activations afterwards. The gradient should
# reach the kept values only, so build the output from `pre_acts` itself (`topk`, then
# `scatter` into zeros, does it), not from detached copies.
#
# <details><summary>Hint 1: find the winners, then put them back</summary>
#
# `pre_acts.topk(k, dim=-1)` gives the `k` largest values of each input and instance and
# where they sit along `d_sae`. Apply the ReLU to those values, then write them at the same
# places in an otherwise zero tensor of `pre_acts`' shape.
# </details>
#
# <details><summary>Hint 2: the shapes of topk and scatter</summary>
#
# `topk` returns `values` and `indices`, each `[batch, inst, k]`. `torch.zeros_like(pre_acts)`
# (which keeps the dtype and device) `.scatter(-1, indices, F.relu(values))` puts each value
# back at its index along `d_sae` and returns a new tensor; `scatter_` on `pre_acts` would
# overwrite the input. Comparing `pre_acts` with its `k`-th largest value instead does not
# keep exactly `k`: `>` keeps `k - 1` values, and `>=` keeps more than `k` where values tie.
# </details>
#
# Stuck after the hints? The same cell in `solutions/05_sae_variants.ipynb` has the answer.


# %% tags=["reference"]
def topk_activation(pre_acts: Float[Tensor, "batch inst d_sae"], k: int) -> Float[Tensor, "batch inst d_sae"]:
    # BEGIN SOLUTION
    top = pre_acts.topk(k, dim=-1)
    return torch.zeros_like(pre_acts).scatter(-1, top.indices, F.relu(top.values))
    # END SOLUTION


# %%
checks.test_topk_activation(topk_activation)

# %% [markdown]
# ### AuxK: a second job for dead latents
#
# A latent that never makes the top k gets no gradient and stays dead. Gao et al.'s (OpenAI)
# fix, AuxK: let the dead latents try to explain what the live ones missed. Take the residual
# `e = h - h_reconstructed`, **detached** (this loss must not move the live latents); pick,
# for each input, the `k_aux` largest pre-activations **among dead latents only**; ReLU them
# and decode them through the normalised decoder **without** `b_dec` (the residual has no
# offset to explain); the loss is the mean over `d_in` of `(ê - e)²`. When fewer than
# `k_aux` latents are dead, the term is scaled by `n_dead / k_aux` (per instance, at most
# 1), so that a handful of dead latents is not pushed as hard as a crowd.
#
# This is AuxK as EleutherAI's `sparsify` library writes it, not exactly as the paper does.
# The `n_dead / k_aux` scale is `sparsify`'s heuristic. Gao et al. divide the auxiliary squared
# error by the residual's variance (a normalised MSE, so its weight does not depend on how
# well the live latents already reconstruct), choose `k_aux` as a power of two near
# `d_model / 2` and weight the term by α = 1/32 (as here). We keep a fixed `k_aux = 2` and the
# raw MSE: with 5 latents in a 2D toy a large `k_aux` would revive every dead latent at once on
# every input. Part 6 compares the two recipes on a transformer's activations.
#
# The TopK toy SAE (given) counts, during training, how many steps each latent has gone
# without firing; after `dead_after_steps` it counts as dead. Its loss is
# `L_reconstruction + aux_coeff · L_aux`. Like Part 4's SAEs it also accepts resampling.
# `cfg.k` can be one value, or a list with one value per instance (a sweep in one SAE).


# %% tags=["reference"]
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


# %% [markdown]
# ### Exercise 4.2: `auxk_loss`
#
# **Difficulty** ●●●○○ · **Importance** ●●●○○ · **Plan for** 20 minutes
#
# Write `auxk_loss(self, pre_acts, h, h_reconstructed, dead)`, returning `[batch, inst]`,
# with `dead` a boolean `[inst, d_sae]`; use `self.cfg.k_aux` (not `cfg.k`) and
# `self.W_dec_normalized`, not detached: AuxK trains the dead latents' encoder columns and
# decoder rows, and only the residual is detached. `n_dead` counts the dead latents of each
# instance. An instance with fewer than `k_aux` dead latents uses all of them (any other
# place `topk` fills contributes 0), and one with none gets a loss of 0, not NaN. Leave
# `pre_acts` and the other arguments as they are.
#
# <details><summary>Hint 1: TopK on the dead latents only</summary>
#
# Work in this order: the detached residual `e`; the pre-activations with every live latent
# put out of reach, so that `topk` can only pick dead ones; the top `k_aux` of those along
# `d_sae`, ReLU-ed and scattered into zeros as in `topk_activation`; their decoding `ê`
# (no `b_dec`); the squared error averaged over `d_in`; and last the scale.
# </details>
#
# <details><summary>Hint 2: masking, and the shapes of the scale</summary>
#
# `pre_acts.masked_fill(~dead, -torch.inf)` hides the live latents: `dead` `[inst, d_sae]`
# broadcasts against `[batch, inst, d_sae]`. Where an instance has fewer than `k_aux` dead
# latents, `topk` has to pick some `-inf` placeholders; the ReLU turns them into 0, so apply
# it before anything multiplies them (`0 · -inf` is NaN). Decode with
# `"batch inst d_sae, inst d_sae d_in -> batch inst d_in"`. `dead.sum(dim=-1)` gives `n_dead`
# per instance, `[inst]`; divide by `k_aux`, cap it at 1 (`.clamp(max=1.0)`), and it
# broadcasts against the `[batch, inst]` error. Should `k_aux` exceed `d_sae`, `topk` would
# refuse it: ask for the smaller of the two.
# </details>
#
# Stuck after the hints? The same cell in `solutions/05_sae_variants.ipynb` has the answer.


# %% tags=["reference"]
@add_to_class(TopKToySAE)
def auxk_loss(
    self,
    pre_acts: Float[Tensor, "batch inst d_sae"],
    h: Float[Tensor, "batch inst d_in"],
    h_reconstructed: Float[Tensor, "batch inst d_in"],
    dead: Bool[Tensor, "inst d_sae"],
) -> Float[Tensor, "batch inst"]:
    # BEGIN SOLUTION
    residual = (h - h_reconstructed).detach()
    k_aux = min(self.cfg.k_aux, pre_acts.shape[-1])
    top = pre_acts.masked_fill(~dead, -torch.inf).topk(k_aux, dim=-1)
    aux_acts = torch.zeros_like(pre_acts).scatter(-1, top.indices, F.relu(top.values))
    residual_hat = einsum(aux_acts, self.W_dec_normalized, "batch inst d_sae, inst d_sae d_in -> batch inst d_in")
    scale = (dead.sum(dim=-1) / self.cfg.k_aux).clamp(max=1.0)
    return (residual_hat - residual).pow(2).mean(dim=-1) * scale
    # END SOLUTION


# %%
checks.test_auxk_loss(TopKToySAE)


# %% [markdown]
# ### Folding decoder norms into the encoder: harmless for ReLU, not for TopK
#
# An SAE trained with an unnormalised decoder is often converted to unit decoder rows
# afterwards by *folding*: multiply each latent's encoder column and bias by its decoder
# row's norm, divide the row by it. For a ReLU SAE nothing changes, because
# `ReLU(c·z) = c·ReLU(z)` for `c > 0`: each activation grows by `c`, its row shrinks by `c`.
# For TopK the *ranking* of the pre-activations changes, so different latents win.
#
# Every other per-latent quantity on the encoder side that is compared with a pre-activation
# must be scaled by the same norm, or the folded SAE fires differently: a JumpReLU SAE's
# thresholds θ (the jump moves with the pre-activation), and a Gated SAE's `b_gate` and
# `b_mag` along with `W_gate` (its `r_mag` needs no change, since `W_mag` is built from the
# scaled `W_gate`). The function below folds a plain ReLU or TopK SAE; the same one line,
# times the norms, applies to θ, `b_gate` and `b_mag`.


# %% tags=["reference"]
def fold_decoder_norms(
    W_enc: Float[Tensor, "d_in d_sae"], b_enc: Float[Tensor, " d_sae"], W_dec: Float[Tensor, "d_sae d_in"]
) -> tuple[Float[Tensor, "d_in d_sae"], Float[Tensor, " d_sae"], Float[Tensor, "d_sae d_in"]]:
    norms = W_dec.norm(dim=-1)
    return W_enc * norms, b_enc * norms, W_dec / norms[:, None]


# %%
seed_everything(5)
d_in_demo, d_sae_demo, k_demo = 8, 32, 4
W_enc_demo, b_enc_demo = torch.randn(d_in_demo, d_sae_demo), torch.randn(d_sae_demo) * 0.1
W_dec_demo = torch.randn(d_sae_demo, d_in_demo) * torch.rand(d_sae_demo, 1) * 3  # rows of varied norms
x_demo = torch.randn(256, d_in_demo)
folded = fold_decoder_norms(W_enc_demo, b_enc_demo, W_dec_demo)


def decode_with(weights: tuple[Tensor, Tensor, Tensor], activation: Any) -> Tensor:
    W_enc, b_enc, W_dec = weights
    return activation(x_demo @ W_enc + b_enc) @ W_dec


def topk_2d(pre_acts: Tensor) -> Tensor:
    return topk_activation(pre_acts[:, None, :], k_demo)[:, 0, :]


for name, activation in (("ReLU", F.relu), (f"TopK (k={k_demo})", topk_2d)):
    change = (
        (decode_with(folded, activation) - decode_with((W_enc_demo, b_enc_demo, W_dec_demo), activation)).abs().max()
    )
    print(f"{name:<12} largest change in the reconstruction after folding: {change:.2e}")

# %% [markdown]
# ### Decoding sparsely, three ways
#
# With `k` of `d_sae` latents active, writing the activations into a dense `[batch, d_sae]`
# tensor and multiplying by the whole decoder wastes almost all of the work. Three ways to
# decode from the top-k values and indices (`[batch, k]` each):
#
# - **dense**: scatter into `[batch, d_sae]`, then matmul with `W_dec`;
# - **gather**: pick the `k` decoder rows of each input, `[batch, k, d_in]`, and weight them;
# - **sparse tensor**: build a `torch.sparse_coo_tensor` and let a sparse matmul do it.
#
# They must agree. Part 7 times them at realistic sizes.


# %% tags=["reference"]
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


# %%
top_demo = (x_demo @ W_enc_demo + b_enc_demo).topk(k_demo, dim=-1)
values_demo = F.relu(top_demo.values)
decoded = {
    decode.__name__: decode(values_demo, top_demo.indices, W_dec_demo)
    for decode in (decode_dense, decode_gather, decode_sparse)
}
for name, result in decoded.items():
    print(f"{name:<14} max difference from decode_dense: {(result - decoded['decode_dense']).abs().max():.2e}")

# %% [markdown]
# ## 5. BatchTopK SAEs
#
# TopK gives every input exactly `k` latents, but inputs differ: some contain one feature,
# some five. BatchTopK keeps the `k · batch` largest activations **across the whole batch**
# (per instance), so `k` is only the *average* L0, and `k` can even be a fraction (here
# inputs mostly hold no feature at all, and a good L0 is about {{=0.12}}).
#
# ### Exercise 5.1: `batch_topk_activation`
#
# **Difficulty** ●●●○○ · **Importance** ●●●○○ · **Plan for** 15 minutes
#
# Write `batch_topk_activation(pre_acts, k)`: for each instance, apply ReLU, keep the
# `round(k · batch)` largest values among all `batch × d_sae` entries of that instance, zero
# the rest. `round` is Python's, to the nearest integer (k = {{=0.12}} with a batch of 1,024 keeps
# 123 values, not 122). As for TopK, return a new tensor, leave `pre_acts` as it is, and let
# the gradient reach the kept values.
#
# <details><summary>Hint 1: one long row per instance</summary>
#
# Apply the ReLU first. Then lay out each instance's values as a single row of
# `batch × d_sae` numbers, so that one `topk` along that row ranks the whole batch at once.
# Keep the winners in a row of zeros as in `topk_activation`, and finally put the rows back
# into the `[batch, inst, d_sae]` layout.
# </details>
#
# <details><summary>Hint 2: move inst first before flattening</summary>
#
# `transpose(0, 1)` gives `[inst, batch, d_sae]`; `.reshape(n_inst, batch * d_sae)` then
# flattens each instance's values into its own row (`reshape`, not `view`: the transposed
# tensor is not contiguous). Reshaping `[batch, inst, d_sae]` straight to
# `[inst, batch * d_sae]` would mix the instances. Take `topk(round(k * batch), dim=-1)`,
# scatter into zeros of the flat shape, then undo the steps in reverse: reshape to
# `[inst, batch, d_sae]` and transpose back.
# </details>
#
# Stuck after the hints? The same cell in `solutions/05_sae_variants.ipynb` has the answer.


# %% tags=["reference"]
def batch_topk_activation(pre_acts: Float[Tensor, "batch inst d_sae"], k: float) -> Float[Tensor, "batch inst d_sae"]:
    # BEGIN SOLUTION
    batch, n_inst, d_sae = pre_acts.shape
    per_instance = F.relu(pre_acts).transpose(0, 1).reshape(n_inst, batch * d_sae)
    top = per_instance.topk(round(k * batch), dim=-1)
    kept = torch.zeros_like(per_instance).scatter(-1, top.indices, top.values)
    return kept.reshape(n_inst, batch, d_sae).transpose(0, 1)
    # END SOLUTION


# %%
checks.test_batch_topk_activation(batch_topk_activation)


# %% [markdown]
# At inference there is no batch to compare against, and an input's code should not depend
# on which other inputs share its batch. So during training the SAE keeps a running average
# of the smallest activation it kept in each batch (per instance), a global threshold θ; at
# inference (`sae.eval()`) it fires a latent when its pre-activation exceeds θ: a JumpReLU
# with one threshold for all latents.


# %% tags=["reference"]
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


# %% [markdown]
# ## 6. Every architecture on the same data
#
# Now the comparison. Each architecture trains five sparsity settings, {{settings.seeds:.0f}} instances per
# setting, on the toy data, all side by side in one SAE (each instance has its own sparsity
# coefficient, so one run covers a whole sweep). The instances of a setting differ only in their
# random seed, so each number below is a mean over {{settings.seeds:.0f}} seeds, with its standard deviation. All runs
# use the recipe that worked best in Part 4: encoder initialised as the decoder's transpose, cosine learning-rate
# decay, and advanced resampling of dead and redundant latents (TopK and BatchTopK have AuxK as well).
# One addition: latents that fire on fewer than {{=0.1}}% of inputs are resampled like dead ones.
# The typical failure here is a *pair code*: two latents each fire on two neighbouring
# features and reconstruct the feature between them together, while a third latent starves,
# firing so rarely that it is never quite dead. Resampling the starved latent gives it a
# chance to take over the feature the pair shares.
#
# Two per-architecture choices, each explained by a failure we saw: Gated SAEs get larger
# coefficients than the L1 SAE, since their L1 falls on the gate alone and a small one lets
# pair codes through; and TopK
# keeps `b_dec` fixed at the origin (the geometric median of this data, where most inputs
# sit). With a trainable `b_dec`, Adam drifts it off the origin until one latent fires on
# every feature-less input to undo the offset, and all other decoder directions then point
# from the wrong origin.
#
# We measure, per setting: L0, the fraction of variance unexplained (FVU), how many of the
# {{settings.seeds:.0f}} instances recover all 5 features at cosine ≥ {{=0.99}} with no dead latent, MMCS, the Hungarian
# score and recall (Part 4), and **shrinkage** as the Gated SAE paper measures it, the
# *relative reconstruction bias* γ: the factor that, dividing the reconstruction, brings it
# closest to the input, γ = argmin_γ E‖ĥ/γ − h‖², which is E‖ĥ‖² / E[ĥ · h]. γ = 1 means no
# systematic shrinking; below 1 the reconstructions come out short. (The simpler ratio
# ‖ĥ‖ / ‖h‖ mixes in errors of direction, which also make ĥ shorter than h, and the decoder
# bias; γ asks only how much a rescaling would help.)


# %% tags=["reference"]
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


# %%
comparison_steps = full_or_fast(8_000, 600)
resampling = {
    "resample_every": full_or_fast(1_600, 200),
    "resample_window": full_or_fast(320, 50),
    "resample_redundant_above": 0.99,
    # A latent that owns a feature fires on ~2% of inputs; one below 0.1% is starved, not useful.
    "resample_rarer_than": 1e-3,
}
SETTINGS = {  # five settings of λ (or k) per architecture
    "L1": [0.05, 0.1, 0.2, 0.4, 0.8],
    "Gated": [0.2, 0.4, 0.6, 1.0, 1.5],
    "JumpReLU": [0.003, 0.01, 0.03, 0.1, 0.3],
    "TopK": [1, 2, 3, 4, 5],
    "BatchTopK": [0.08, 0.1, 0.12, 0.16, 0.2],
}
sweep = VariantSweep(
    Definitions(globals(), part=5),
    make_toy_model,
    feature_directions_for,
    SETTINGS,
    results,
    n_per_setting=n_per_setting,
    steps=comparison_steps,
    resampling=resampling,
    set_up={"TopK": freeze_decoder_bias},  # b_dec stays at the origin, the data's geometric median (see above)
)

# %% [markdown]
# One cell per architecture, each with its own progress bar: in full mode on two CPU cores
# each takes a few minutes ({{settings.seeds:.0f}} seeds for each of five settings, {{settings.comparison_steps:,.0f}}
# steps).

# %%
sweep.run("L1", d_sae=5, label="L1 ReLU")

# %%
sweep.run("Gated", d_sae=5)

# %%
sweep.run("JumpReLU", d_sae=5)

# %%
sweep.run("TopK", d_sae=5)

# %%
sweep.run("BatchTopK", d_sae=5)

# %% [markdown]
# The table has one row per architecture and setting; "recovered" counts the instances (of
# {{settings.seeds:.0f}}) that found all 5 features at cosine ≥ {{=0.99}} with no dead latent. The plot places each
# setting by its mean L0 and FVU: lower left is better, and the curve through an
# architecture's settings is its **Pareto frontier**, the best reconstruction it reaches at
# each sparsity.

# %%
summary = sweep.show_summary()

# %% [markdown]
# **What to look for.** Numbers are means over the {{settings.seeds:.0f}} seeds of each setting; the table gives
# each with its standard deviation, and the error bars in the plot show it.
#
# - **Shrinkage.** The L1 rows have γ below 1, further below the larger λ is, from
#   {{L1.lam0.05.gamma|mean:.2f}} at λ = {{=0.05}} to {{L1.lam0.4.gamma|mean:.2f}} at λ = {{=0.4}}: the penalty pulls
#   active latents towards zero and the reconstruction comes out short. Gated, JumpReLU, TopK and BatchTopK stay within
#   a few percent of 1, since none of them charges for size, except where a setting breaks the SAE:
#   Gated at λ = {{=1.5}} (γ {{Gated.lam1.5.gamma|mean:.2f}}, FVU {{Gated.lam1.5.fvu|mean:.2f}}) barely fires at all.
# - **The frontier.** At a similar L0 the L1 SAE has the highest FVU, and much of its error is
#   that shrinkage: at λ = {{=0.2}} it fires {{L1.lam0.2.l0|mean:.3f}} latents per input for an FVU of
#   {{L1.lam0.2.fvu|mean:.3f}}, while BatchTopK at k = {{=0.12}} fires {{BatchTopK.k0.12.l0|mean:.3f}} for
#   {{BatchTopK.k0.12.fvu|mean:.3f}} and JumpReLU at λ = {{=0.1}} fires {{JumpReLU.lam0.1.l0|mean:.3f}} for
#   {{JumpReLU.lam0.1.fvu|mean:.3f}}. TopK sits far to the right: nothing stops it firing on the {{=88}}% of inputs
#   that hold no feature at all (its top pre-activation is then just a bias, kept whenever it is positive), so its L0
#   is {{TopK.k1.l0:.2f}} already at k = 1, against the data's own {{data.l0:.3f}}.
# - **Recovery is a different question.** Better reconstruction does not mean better
#   features. In our full-mode run the L1 SAE recovered all five features in {{L1.lam0.4.recovered:.0f}} of
#   {{settings.seeds:.0f}} seeds at λ = {{=0.4}}, Gated in {{Gated.lam0.6.recovered:.0f}} at λ = {{=0.6}} and
#   {{Gated.lam1.recovered:.0f}} at λ = {{=1}}, TopK in {{TopK.k1.recovered:.0f}} at k = 1, JumpReLU in at most
#   {{JumpReLU.lam0.1.recovered:.0f}} (λ = {{=0.1}}) and BatchTopK in at most {{BatchTopK.k0.1.recovered:.0f}};
#   JumpReLU and BatchTopK settle with directions *between* features (MMCS {{JumpReLU.lam0.03.mmcs|mean:.2f}} to
#   {{JumpReLU.lam0.1.mmcs|mean:.2f}} and {{BatchTopK.k0.12.mmcs|mean:.2f}} to {{BatchTopK.k0.2.mmcs|mean:.2f}}). With
#   only 2 dimensions, two active latents can reconstruct any point exactly, so a pair code costs no reconstruction
#   error. What it costs is sparsity: every objective here charges a pair code more than one latent per feature would,
#   the L1 and L0 penalties and BatchTopK's budget alike. The difference is in the *gradient* that could act on that
#   cost. The L1 of the activations (or of the gate, for Gated SAEs) pushes on the encoder, which is why both recover
#   more as λ grows. JumpReLU's L0 reaches only the thresholds (the Heaviside step passes no gradient to the
#   pre-activations), and a threshold cannot stop a latent firing on one of its two features without the other, since
#   their pre-activations overlap. BatchTopK's budget is enforced by the selection itself, which passes no gradient
#   either. TopK with k = 1 fires at most one latent per input, so it cannot form pair codes; its failures are
#   latents left between two features when a neighbour wins every input of both. The section
#   after the question tests this explanation for JumpReLU.
# - **Recall** is the column to read beside MMCS. The L1 SAE that recovers every direction at
#   λ = {{=0.4}} fires the matching latent on only {{L1.lam0.4.recall|mean:.2f}} of the occurrences of its feature, and
#   Gated at λ = {{=1}} on {{Gated.lam1.recall|mean:.2f}}: occurrences with small magnitudes stay below the threshold
#   their penalty sets. A dictionary with the right directions can still miss most of the inputs.
# - **Dead latents** are rare: at the end of training none, except TopK's {{TopK.k1.dead|mean:.2f}} and
#   {{TopK.k2.dead|mean:.2f}} per seed on average at k = 1 and 2. Resampling (and AuxK for the TopK family)
#   revives them.
#
# <details><summary>Question: which numbers would you trust on a real model, where the true
# features are unknown?</summary>
#
# Only L0, FVU (or loss recovered, Part 6) and shrinkage can be measured without ground
# truth. This toy shows they do not settle which SAE finds the "right" directions: the
# frontier is necessary, not sufficient, which is why interpretability work also inspects
# latents by hand.
# </details>
#
# ### Testing the diagnosis: let the L0 reach the encoder
#
# If JumpReLU settles on pair codes because nothing on the sparsity side reaches the
# encoder, then giving its L0 term a path to the pre-activations should fix it. The change
# is one line in the step function's backward pass. `H(z - θ)` depends on `z - θ`, so the
# natural pseudo-derivative for z is the negative of the one for θ: `+(1/ε) K((z - θ)/ε)`.
# An input whose pre-activation sits just above a latent's threshold now pushes that
# pre-activation down, which is the pressure the L1 and Gated SAEs put on their encoders.
#
# This is **not** the reference method: Google DeepMind's step function has ∂H/∂z = 0, and
# the parity test above depends on it. We train it here only to test the explanation, at
# JumpReLU's best setting (λ = {{diagnosis.lam:g}}) with everything else unchanged.


# %% tags=["reference"]
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


# %%
diagnosis_coeff = 0.1
compare_l0_estimators(sweep, "JumpReLU", diagnosis_coeff, JumpReLUEncoderL0ToySAE, "JumpReLU, L0 gradient to z")
results.record("data.l0", n_features * feature_probability)

# %% [markdown]
# In our full-mode run the change lifts JumpReLU at λ = {{diagnosis.lam:g}} from {{diagnosis.reference.recovered:.0f}}
# to **{{diagnosis.through_z.recovered:.0f}} of {{settings.seeds:.0f}}** seeds with all five directions found (MMCS
# {{diagnosis.reference.mmcs|mean:.3f}} → {{diagnosis.through_z.mmcs|mean:.4f}}, Hungarian
# {{diagnosis.reference.hungarian|mean:.3f}} → {{diagnosis.through_z.hungarian|mean:.4f}}). But read the other columns
# before calling it a cure. L0 falls from {{diagnosis.reference.l0|mean:.3f}} to {{diagnosis.through_z.l0|mean:.3f}},
# about half the data's own {{data.l0:.3f}} active features per input. One latent per feature, firing whenever its
# feature is active, would give {{data.l0:.3f}}; so the variant's latents point exactly along the features but stay
# silent on about half of their occurrences, the ones with small magnitudes, because the same gradient pulls down every
# pre-activation just above its threshold, much as an L1 penalty would near the threshold. Its recall,
# {{diagnosis.through_z.recall|mean:.2f}}, says the same. (The reference SAE's recall,
# {{diagnosis.reference.recall|mean:.2f}}, is low for another reason: under a pair code the latent matched to the
# feature between the pair stays silent while the pair writes it.) The rise in FVU
# ({{diagnosis.reference.fvu|mean:.3f}} → {{diagnosis.through_z.fvu|mean:.3f}}) is the price of those missed
# occurrences, and γ falls to {{diagnosis.through_z.gamma|mean:.2f}} (from {{diagnosis.reference.gamma|mean:.2f}}).
# Neither estimator is simply right: the reference one keeps reconstructions full-length and lets this toy's features
# blur into pairs; the variant finds the directions and drops the weak occurrences. Anthropic's 2025 JumpReLU recipe
# also sends sparsity gradient to the encoder, differently: it replaces the L0 count by a smooth tanh penalty on the
# activations (scaled by decoder norms), which SAELens offers as `jumprelu_sparsity_loss_mode="tanh"`.
#
# BatchTopK has no penalty that could be redirected this way. What gives it a way out is
# room. Try it: where the sweep above builds the TopK family, change `d_sae=5` to 20 (about
# two minutes more) and compare BatchTopK's MMCS, recovered and FVU columns with the run
# above. Why the toy SAEs here are as wide as the features (or, in Part 8, twice as wide): we
# know the true features and want to see whether each gets a latent. Real SAEs are much wider
# than the model's dimension, but the field assumes they are still *narrower* than the number
# of features the model uses, and an SAE too narrow for correlated features blends them into
# its latents (Chanin, Dulka and Garriga-Alonso 2025, "feature hedging"). Part 8 compares every architecture of this
# part where SAEs are really used: 40 latents for 20 features that form a hierarchy, at matched L0, Matryoshka SAEs
# included.
#
# ### BatchTopK at inference
#
# The threshold BatchTopK learned during training should give about the same L0 at inference,
# on fresh data and without any batch to compare against.


# %% tags=["reference"]
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


# %%
show_batch_topk_inference(sweep, batch_topk_l0)

# %% [markdown]
# ### Watching Gated and JumpReLU SAEs train
#
# The animations show 8 instances at the middle sparsity setting of each sweep, drawn as in
# Part 4 (encoder, decoder and data rows; red outlines mark resampled latents).

# %%
for name in ("Gated", "JumpReLU"):
    sweep.animate_middle_setting(name).show()

# %% [markdown]
# ## Summary
#
# - The L1 penalty charges for size as well as for count, so L1 SAEs shrink their output;
#   the relative reconstruction bias γ measures it.
# - Compare SAEs by curves over several settings and seeds, and read MMCS, the Hungarian score
#   and recall together: a dictionary can have the right directions and still miss inputs.
# - Gated SAEs decide *whether* with one path and *how much* with another; the L1 falls on
#   the gate only, and an auxiliary loss teaches the gate through a detached decoder.
# - JumpReLU SAEs learn a threshold per latent and pay for L0 directly, trained through
#   straight-through pseudo-derivatives; your implementation matches Google DeepMind's
#   reference numbers, training included. Their L0 reaches only the thresholds, so in this
#   2D toy JumpReLU keeps pair codes; letting it reach the encoder recovers the directions,
#   but the latents then miss the weak occurrences of their features.
# - TopK fixes L0 per input and needs AuxK to keep latents alive; BatchTopK fixes it per
#   batch, and its learned global threshold makes inference a JumpReLU.
# - Folding decoder norms into the encoder is safe for ReLU but changes a TopK SAE.
#
# Next, Part 6 trains SAEs on a real (small) transformer.
