# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Part 4: Sparse autoencoders on a toy model
#
# Part 1 showed a model storing 5 features in 2 dimensions. Suppose we did not know the
# features: could we recover them from the hidden vectors alone? A **sparse autoencoder**
# (SAE) tries exactly that. It maps each hidden vector to a wider, mostly-zero vector of
# *latents* and back, and is trained to reconstruct well while keeping few latents active.
# If the data really is a sparse sum of feature directions, the SAE's decoder directions
# should line up with those features.
#
# Here the ground truth is known, so we can score the SAE exactly: does each true feature
# have a decoder direction pointing at it?
#
# **You will**
# - write an SAE with tied or untied weights and a normalised decoder (`__init__`,
#   `W_dec_normalized`, `generate_batch`, `forward`);
# - measure feature recovery (mean max cosine similarity, dead latents, L0, fraction of
#   variance unexplained);
# - watch training as an animation and see latents die;
# - bring dead latents back with simple and with advanced resampling
#   (`resample_simple`, `resample_advanced`), resetting the optimiser's memory of them;
# - see why the decoder must be normalised, and how tied and untied SAEs differ.
#
# **Time:** about 2.5 hours. Exercises work as in Part 1: replace the
# `raise NotImplementedError(...)`, run the cell, then run the check below it. Each one opens
# with a line rating its difficulty and importance and saying how long to plan for it, and
# ends with two collapsible hints: open them in order, and only when you are stuck.

# %% tags=["workbook-setup"]

# %% tags=["reference"]
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from einops import einsum
from jaxtyping import Bool, Float
from torch import Tensor, nn

from part_utils.methods import add_to_class
from part_utils.reference.part1_toy_models import ToyModel
from part_utils.sae_training import SAETrainingLog, train_sae

# %%
import plotly.graph_objects as go
from plotly.subplots import make_subplots

import tests.part4_toy_sae as checks
from part_utils.device import get_device
from part_utils.modes import FAST_MODE, full_or_fast
from part_utils.plotting import plot_features_in_2d
from part_utils.reference.part1_toy_models import ToyModelConfig
from part_utils.plotting.sae import animate_sae_training, plot_firing_frequencies, recovery_table
from part_utils.seeding import seed_everything
from part_utils.training import cosine_decay_lr, train_self_supervised

device = get_device()
print(f"device: {device}, fast mode: {FAST_MODE}")

# %% [markdown]
# ## 1. The model we will take apart
#
# A toy model from Part 1 with 5 features in 2 dimensions, each feature present with
# probability 0.025 and all equally important: it stores them as a pentagon. We train one
# instance, then copy its weights into every instance, so that all 16 SAEs below study the
# *same* model and their pictures are comparable. The model is frozen from here on.

# %%
seed_everything(0)
n_inst, n_features, d_hidden = 16, 5, 2
toy_single = ToyModel(ToyModelConfig(n_inst=1, n_features=n_features, d_hidden=d_hidden), feature_probability=0.025, device=device)
_ = train_self_supervised(toy_single, steps=full_or_fast(6_000, 1_500), lr=3e-3, lr_schedule=cosine_decay_lr, description="toy model")

toy_model = ToyModel(ToyModelConfig(n_inst=n_inst, n_features=n_features, d_hidden=d_hidden), feature_probability=0.025, device=device)
with torch.no_grad():
    toy_model.W.copy_(toy_single.W.expand_as(toy_model.W))
    toy_model.b_final.copy_(toy_single.b_final.expand_as(toy_model.b_final))
# The true feature directions, [inst, feats, d_in]: the SAE should find these.
feature_directions = toy_model.W.detach().transpose(1, 2)
plot_features_in_2d(toy_single.W, title="The frozen toy model: 5 features in 2D", subplot_size=300).show()

# %% [markdown]
# ## 2. The SAE
#
# The SAE reads a hidden vector `h` (size `d_in = 2`) and has `d_sae` latents:
#
# $$z = \mathrm{ReLU}\big((h - b_{dec})\,W_{enc} + b_{enc}\big), \qquad h' = z\,\hat W_{dec} + b_{dec}$$
#
# where $\hat W_{dec}$ is the decoder with each row (one latent's direction) scaled to unit
# norm. The loss for each input and instance is
#
# - **reconstruction**: the mean over `d_in` of $(h' - h)^2$;
# - **sparsity**: the L1 norm of $z$, *summed* over the `d_sae` latents;
# - **total**: reconstruction $+\ \lambda \cdot$ sparsity, then averaged over the batch and
#   summed over instances.
#
# <details><summary>Question: why average the reconstruction error over d_in but sum the L1 over latents?</summary>
#
# The reconstruction term is a property of the input: averaging over `d_in` keeps it on the
# same scale whatever the width of the layer. The sparsity term is about how many latents
# are used: summing means each extra active latent costs the same, however wide the SAE is.
# If we averaged over `d_sae`, doubling the number of latents would halve the price of each
# one and the SAE would get denser as it got wider.
# </details>
#
# **Tied weights** use one matrix for both directions: the decoder is the encoder's
# transpose, $W_{dec} = W_{enc}^\top$, with no separate decoder parameter. **Untied** SAEs
# have both. Shapes: `W_enc [inst, d_in, d_sae]`, `W_dec [inst, d_sae, d_in]`,
# `b_enc [inst, d_sae]`, `b_dec [inst, d_in]`.

# %% tags=["reference"]
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

    def optimize(self, **training: Any) -> SAETrainingLog:
        """Train with Adam and optional resampling: see `part_utils.sae_training.train_sae` for the options."""
        return train_sae(self, **training)


# %% [markdown]
# ### Exercise 1: `__init__`
#
# **Difficulty** ●●○○○ · **Importance** ●●●○○ · **Plan for** 10 minutes
#
# Store `cfg` and the toy `model` itself, and freeze the model (its parameters must not
# train). Create `W_enc` by applying `nn.init.kaiming_uniform_`, with its default arguments, to
# an empty `[inst, d_in, d_sae]` tensor (one call for all instances, so that each instance gets
# its own draw), and, for an untied SAE, `_W_dec` the same way from an empty
# `[inst, d_sae, d_in]` tensor; a tied SAE sets `self._W_dec = None` (the `W_dec` property above
# then returns `W_encᵀ`). Both biases start at zero. Put everything on the model's device
# (`model.W.device`), in the default float32.
#
# <details><summary>Hint 1: the model first, then four parameters</summary>
#
# Store `self.cfg = cfg` and the model itself (not a copy); `model.requires_grad_(False)`
# freezes it in place and returns the same object, so one line can do both. Then make the four
# parameters, each an `nn.Parameter` wrapped around a tensor created on `model.W.device`:
# `W_enc`, the decoder (or `None`), `b_enc` and `b_dec`. Only the toy model is frozen; the
# SAE's own parameters must require grad, which `nn.Parameter` does by default.
# </details>
#
# <details><summary>Hint 2: shapes, and how the initialiser is called</summary>
#
# `nn.init.kaiming_uniform_` fills the tensor you pass it in place and returns it, so it can
# sit directly inside `nn.Parameter(...)`, around `torch.empty(cfg.n_inst, cfg.d_in, cfg.d_sae,
# device=...)` for `W_enc`; pass no `a`, `mode` or `nonlinearity`. An untied `_W_dec` is a
# second call on an empty `[n_inst, d_sae, d_in]` tensor (its own draw, not `W_enc`
# transposed); a tied SAE sets `self._W_dec = None` and creates no decoder parameter at all.
# The biases are `torch.zeros` of shapes `[n_inst, d_sae]` (`b_enc`) and `[n_inst, d_in]`
# (`b_dec`).
# </details>
#
# Stuck after the hints? The same cell in `solutions/04_toy_sae.ipynb` has the answer.

# %% tags=["reference"]
@add_to_class(ToySAE)
def __init__(self, cfg: ToySAEConfig, model: ToyModel) -> None:
    nn.Module.__init__(self)
    # BEGIN SOLUTION
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
    # END SOLUTION


# %%
checks.test_init(ToySAE)

# %% [markdown]
# ### Exercise 2: `W_dec_normalized`
#
# **Difficulty** ●○○○○ · **Importance** ●●●○○ · **Plan for** 5 minutes
#
# Return `W_dec` with every latent's row divided by its norm over `d_in` plus
# `cfg.weight_normalize_eps`: w / (‖w‖ + ε), so that a zero row cannot divide by zero. Read the
# decoder through the `self.W_dec` property (a tied SAE then normalises `W_encᵀ`), and return a
# new tensor: dividing `W_dec` in place would rescale the parameter itself on every call. Keep
# the computation differentiable, norm included; the decoder trains through it.
#
# <details><summary>Hint 1: one norm per latent, then a division</summary>
#
# Read `self.W_dec` into a local name, compute the length of every latent's row (one number
# per instance and latent), add `self.cfg.weight_normalize_eps` to it, and divide the rows by
# the result. The property is a single expression.
# </details>
#
# <details><summary>Hint 2: keep the reduced axis</summary>
#
# The rows run along the last axis: `.norm(dim=-1, keepdim=True)` gives `[inst, d_sae, 1]`,
# which broadcasts against `[inst, d_sae, d_in]`; without `keepdim` the shapes do not line
# up. ε goes outside the square root, onto the norm itself. Divide with `/` into a new tensor:
# no `/=`, and no `.detach()`, `.data` or `.item()` on the norm, since the decoder's gradient
# flows through the denominator too.
# </details>
#
# Stuck after the hints? The same cell in `solutions/04_toy_sae.ipynb` has the answer.

# %% tags=["reference"]
@add_to_class(ToySAE)
@property
def W_dec_normalized(self) -> Float[Tensor, "inst d_sae d_in"]:
    # BEGIN SOLUTION
    return self.W_dec / (self.W_dec.norm(dim=-1, keepdim=True) + self.cfg.weight_normalize_eps)
    # END SOLUTION


# %%
checks.test_W_dec_normalized(ToySAE)

# %% [markdown]
# ### Exercise 3: `generate_batch`
#
# **Difficulty** ●○○○○ · **Importance** ●●○○○ · **Plan for** 5 minutes
#
# The SAE's data is the toy model's hidden vectors: draw features with the model's
# `generate_batch` and return `h = W x` for each instance, shape `[batch, inst, d_in]`.
#
# <details><summary>Hint 1: two steps, both from the model</summary>
#
# First draw the features, `self.model.generate_batch(batch_size)`, of shape
# `[batch, inst, feats]`. Then send them through the model's weights `self.model.W` to the
# hidden layer: the first half of Part 1's `forward`, stopping at `h` (no `Wᵀ`, no bias, no
# ReLU).
# </details>
#
# <details><summary>Hint 2: the einsum's axes</summary>
#
# `self.model.W` is `[inst, d_in, feats]` (the model's `d_hidden` is the SAE's `d_in`). One
# einsum with `feats` on both inputs and not in the output sums it away; `inst` appears on both
# inputs and in the output, so that each instance uses only its own features; the output's
# axes are `batch inst d_in`.
# </details>
#
# Stuck after the hints? The same cell in `solutions/04_toy_sae.ipynb` has the answer.

# %% tags=["reference"]
@add_to_class(ToySAE)
def generate_batch(self, batch_size: int) -> Float[Tensor, "batch inst d_in"]:
    # BEGIN SOLUTION
    features = self.model.generate_batch(batch_size)
    return einsum(self.model.W, features, "inst d_in feats, batch inst feats -> batch inst d_in")
    # END SOLUTION


# %%
checks.test_generate_batch(ToySAE)

# %% [markdown]
# ### Exercise 4: `forward`
#
# **Difficulty** ●●●○○ · **Importance** ●●●●● · **Plan for** 20 minutes
#
# Return four things:
# 1. `loss_dict`: `{"L_reconstruction": [batch, inst], "L_sparsity": [batch, inst]}`;
# 2. `loss`: the scalar total (reconstruction + `sparsity_coeff` × sparsity, mean over batch,
#    sum over instances);
# 3. `acts`: the latent activations `z`, `[batch, inst, d_sae]`;
# 4. `h_reconstructed`: `[batch, inst, d_in]`.
#
# Subtract `b_dec` before encoding and add it back after decoding, and decode with
# `self.W_dec_normalized`. `L_sparsity` is the bare L1 norm: `sparsity_coeff` appears only in
# `loss`. Training backpropagates `loss`, so keep everything on its way differentiable, and
# leave `h` as it is (it is the caller's batch: centre a new tensor, `h - self.b_dec`).
#
# <details><summary>Hint 1: follow the formula left to right</summary>
#
# Compute, each into its own name: the centred input `h - b_dec`; the pre-activations
# (centred input times `W_enc`, plus `b_enc`); `acts`, their ReLU; `h_reconstructed`, `acts`
# times `self.W_dec_normalized` plus `b_dec`. Then the two loss terms from those, and the total
# from the two terms. Check each shape before the next step.
# </details>
#
# <details><summary>Hint 2: the axes of each step</summary>
#
# Encoding sums over `d_in`: `batch inst d_in, inst d_in d_sae -> batch inst d_sae`, and
# `b_enc` (`[inst, d_sae]`) then broadcasts over the batch; add it before the ReLU, not after.
# Decoding sums over `d_sae`: `batch inst d_sae, inst d_sae d_in -> batch inst d_in`. Compare
# `h_reconstructed` with the original `h` (not the centred one), square, and take the mean
# over the last axis; `L_sparsity` sums `acts` (their absolute values, which are the same after
# the ReLU) over the last axis. Both are `[batch, inst]`. The total is
# `L_reconstruction + sparsity_coeff * L_sparsity`, then `.mean(dim=0)` (the batch) and
# `.sum()` (the instances). Return tensors, not `.item()` numbers.
# </details>
#
# Stuck after the hints? The same cell in `solutions/04_toy_sae.ipynb` has the answer.

# %% tags=["reference"]
@add_to_class(ToySAE)
def forward(
    self, h: Float[Tensor, "batch inst d_in"]
) -> tuple[dict[str, Float[Tensor, "batch inst"]], Float[Tensor, ""], Float[Tensor, "batch inst d_sae"], Float[Tensor, "batch inst d_in"]]:
    # BEGIN SOLUTION
    h_centred = h - self.b_dec
    acts = F.relu(einsum(h_centred, self.W_enc, "batch inst d_in, inst d_in d_sae -> batch inst d_sae") + self.b_enc)
    h_reconstructed = einsum(acts, self.W_dec_normalized, "batch inst d_sae, inst d_sae d_in -> batch inst d_in") + self.b_dec
    loss_dict = {
        "L_reconstruction": (h_reconstructed - h).pow(2).mean(dim=-1),
        "L_sparsity": acts.abs().sum(dim=-1),
    }
    loss = (loss_dict["L_reconstruction"] + self.cfg.sparsity_coeff * loss_dict["L_sparsity"]).mean(dim=0).sum()
    return loss_dict, loss, acts, h_reconstructed
    # END SOLUTION


# %%
checks.test_forward(ToySAE)

# %% [markdown]
# ### Exercise 5: how well were the features recovered?
#
# **Difficulty** ●●○○○ · **Importance** ●●●○○ · **Plan for** 10 minutes
#
# For each true feature, find the decoder row that points most nearly at it: the maximum
# over latents of the cosine similarity between the feature direction and the latent's
# decoder direction (signed: a latent pointing away from a feature does not recover it). Return
# `[inst, feats]`, and leave both inputs as they are. Averaged over features this is the **mean max
# cosine similarity** (MMCS); a feature counts as *recovered* when its value is at least 0.99.
#
# <details><summary>Hint 1: normalise both sides, then every pair at once</summary>
#
# A cosine similarity is a dot product of unit vectors. So first scale every decoder row and
# every feature direction to unit length (neither input arrives normalised), then take the dot
# product of every feature with every latent in one go, and finally keep, for each feature,
# its best latent.
# </details>
#
# <details><summary>Hint 2: the axes, and which one to reduce</summary>
#
# `F.normalize(x, dim=-1)` returns a new tensor with unit rows over `d_in`, leaving `x` as it
# is. The einsum `inst feats d_in, inst d_sae d_in -> inst feats d_sae` gives all the cosines;
# take the maximum over the last axis, the latents. `tensor.max(dim=...)` returns a pair of
# values and indices: keep `.values`. No `abs()`: the sign matters.
# </details>
#
# Stuck after the hints? The same cell in `solutions/04_toy_sae.ipynb` has the answer.

# %% tags=["reference"]
def max_cosine_similarity(
    W_dec: Float[Tensor, "inst d_sae d_in"], feature_directions: Float[Tensor, "inst feats d_in"]
) -> Float[Tensor, "inst feats"]:
    # BEGIN SOLUTION
    decoder_unit = F.normalize(W_dec, dim=-1)
    features_unit = F.normalize(feature_directions, dim=-1)
    cosine = einsum(features_unit, decoder_unit, "inst feats d_in, inst d_sae d_in -> inst feats d_sae")
    return cosine.max(dim=-1).values
    # END SOLUTION


# %%
checks.test_max_cosine_similarity(max_cosine_similarity)

# %% [markdown]
# `recovery_report` (given) adds the other standard numbers: dead latents (never fire on a
# large batch), L0 (average number of active latents per input) and the fraction of variance
# unexplained (FVU: squared reconstruction error over the variance of `h` about its mean).

# %% tags=["reference"]
RECOVERED_AT = 0.99


@torch.no_grad()
def recovery_report(sae: Any, feature_directions: Float[Tensor, "inst feats d_in"], n_samples: int = 50_000) -> dict[str, Tensor]:
    """Per-instance feature recovery, dead latents, L0 and fraction of variance unexplained."""
    h = sae.generate_batch(n_samples)
    _, _, acts, h_reconstructed = sae(h)
    best_cosine = max_cosine_similarity(sae.W_dec_normalized, feature_directions)
    variance = (h - h.mean(dim=0)).pow(2).sum(dim=(0, 2))
    return {
        "mmcs": best_cosine.mean(dim=-1).cpu(),
        "recovered": (best_cosine >= RECOVERED_AT).sum(dim=-1).cpu(),
        "dead": ((acts > 0).sum(dim=0) == 0).sum(dim=-1).cpu(),
        "l0": (acts > 0).float().sum(dim=-1).mean(dim=0).cpu(),
        "fvu": ((h_reconstructed - h).pow(2).sum(dim=(0, 2)) / variance).cpu(),
    }


# %% [markdown]
# ## 3. Training, and latents that die
#
# `sae.optimize(...)` (given; it calls `train_sae` in `part_utils/sae_training.py`) runs Adam
# on batches from your `generate_batch`, logs snapshots for the animation and, when asked,
# resamples dead latents.
# We use 16 instances, `d_sae = 5` (one latent per true feature, no slack), λ = 0.2, batch
# 1024 and learning rate 1e-3. First, no resampling.

# %%
sae_cfg = ToySAEConfig(n_inst=n_inst, d_in=d_hidden, d_sae=5, sparsity_coeff=0.2)
sae_steps = full_or_fast(10_000, 2_000)
sae_log_every = sae_steps // 200  # 200 frames for the animation
resampling = {"resample_every": full_or_fast(1_250, 400), "resample_window": full_or_fast(250, 100)}


def train_toy_sae(seed: int, *, tied: bool = False, steps: int = sae_steps, **training: Any) -> tuple[ToySAE, Any]:
    seed_everything(seed)
    sae = ToySAE(ToySAEConfig(**{**sae_cfg.__dict__, "tied_weights": tied}), toy_model)
    log = sae.optimize(steps=steps, batch_size=1024, lr=1e-3, log_every=max(1, steps // 200), **training)
    return sae, log


sae_plain, log_plain = train_toy_sae(1, description="no resampling")
recovery_table(recovery_report(sae_plain, feature_directions), title="No resampling").show()

# %% [markdown]
# **The animation.** One column per instance (the first 8 here; pass `instances=` for others).
# Top row: encoder directions (columns of `W_enc`); middle row: decoder directions (rows of
# `W_dec`, unit length) with the true features as grey lines; bottom row: a sample of the
# hidden vectors (grey) and their reconstructions, each coloured by its reconstruction loss,
# from almost white (no loss) to dark red (the largest loss at any frame of this run). The
# animations without this colouring (`colour_by_loss=False`, the default) draw every
# reconstruction in blue. Press play, or drag the slider.

# %%
animate_sae_training(log_plain, feature_directions, instances=range(8), colour_by_loss=True, title="SAE training, no resampling").show()

# %% [markdown]
# **What to look for.** Some latents stop firing early: their encoder direction points away
# from all the data, so ReLU outputs zero for every input, no gradient flows, and they never
# come back. Those instances end with fewer than five live latents and at least one feature
# with no decoder direction of its own. The firing frequencies (log scale) tell the same
# story: a dead latent's line drops to the bottom edge and stays there.

# %%
plot_firing_frequencies(log_plain, instances=range(8), title="Firing frequency per latent, no resampling").show()

# %% [markdown]
# ## 4. Simple resampling
#
# ### Exercise 6: `resample_simple`
#
# **Difficulty** ●●●○○ · **Importance** ●●●○○ · **Plan for** 20 minutes
#
# Every `resample_every` steps, `train_sae` passes you the fraction of the inputs of the last
# `resample_window` steps on which each latent fired, `frac_active_in_window [inst, d_sae]`.
# A latent with zero there is dead. Give each dead latent a fresh start:
#
# - decoder row: a fresh random direction of unit norm, drawn separately for every dead latent
#   of every instance and uniformly over all directions (a normalised `torch.randn` vector);
# - encoder column: the same direction times `resample_scale` (a small start, so the new
#   latent does not swamp the others);
# - encoder bias: zero.
#
# Live latents must not change. Return the boolean mask of the latents you resampled
# `[inst, d_sae]` (a `bool` tensor): `train_sae` uses it to reset Adam's running averages for
# them (more on this in section 5). For a tied SAE, only `W_enc` exists: setting the encoder
# column sets the decoder row too. Work in place on `.data` (the method runs under
# `torch.no_grad()`), and keep the parameters themselves: the optimiser holds them, so a new
# `nn.Parameter` would never train.
#
# <details><summary>Hint 1: the mask, the directions, then the writes</summary>
#
# First the mask, `dead`, `[inst, d_sae]`: a latent is dead only when its fraction is exactly
# 0 (one that fired once in the window is alive). Count the dead latents, draw that many
# Gaussian vectors of size `d_in` in one `torch.randn` call on the SAE's device, normalise
# each, then write them into the dead latents' places in `W_enc` (times `resample_scale`)
# and, if the SAE is untied, `_W_dec`; zero their `b_enc`. Return `dead` itself.
# </details>
#
# <details><summary>Hint 2: indexing that writes into the parameter</summary>
#
# `dead.nonzero(as_tuple=True)` gives two index vectors, instance and latent, each of length
# `n_dead`; draw the directions as `[n_dead, d_in]`. A decoder row is
# `self._W_dec.data[inst_index, latent_index]`, `[n_dead, d_in]`; an encoder column is
# `self.W_enc.data[inst_index, :, latent_index]`, also `[n_dead, d_in]` (PyTorch puts the
# indexed axis first when the two index vectors are separated by a slice). Assign to these
# expressions directly: `x[index] = value` writes into `x`, whereas `y = x[index]` makes a
# copy, and writing into `y` changes nothing. `self.b_enc.data[dead] = 0.0` does the biases.
# For a tied SAE, skip `_W_dec` (it is `None`).
# </details>
#
# Stuck after the hints? The same cell in `solutions/04_toy_sae.ipynb` has the answer.

# %% tags=["reference"]
@add_to_class(ToySAE)
def resample_simple(
    self, frac_active_in_window: Float[Tensor, "inst d_sae"], resample_scale: float
) -> Bool[Tensor, "inst d_sae"]:
    # BEGIN SOLUTION
    dead = frac_active_in_window < 1e-8
    n_dead = int(dead.sum())
    directions = F.normalize(torch.randn(n_dead, self.cfg.d_in, device=self.W_enc.device), dim=-1)
    inst_index, latent_index = dead.nonzero(as_tuple=True)
    self.W_enc.data[inst_index, :, latent_index] = directions * resample_scale
    if self._W_dec is not None:
        self._W_dec.data[inst_index, latent_index] = directions
    self.b_enc.data[dead] = 0.0
    return dead
    # END SOLUTION


# %%
checks.test_resample_simple(ToySAE)

# %%
sae_simple, log_simple = train_toy_sae(1, resample_method="simple", **resampling, description="simple resampling")
recovery_table(recovery_report(sae_simple, feature_directions), title="Simple resampling").show()
animate_sae_training(log_simple, feature_directions, instances=range(8), title="SAE training, simple resampling").show()

# %% [markdown]
# **What to look for.** Latents outlined in red at a frame were resampled since the previous
# one: they jump to a random direction and, if it is any good, settle on a feature nobody
# covers. Most instances now end with five live latents on five features. But a random
# direction in a high-dimensional space would rarely point anywhere useful; here `d_in` is 2,
# so luck is on our side. The next method does not rely on luck.

# %% [markdown]
# ## 5. Advanced resampling
#
# ### Exercise 7: `resample_advanced`
#
# **Difficulty** ●●●●○ · **Importance** ●●●○○ · **Plan for** 45 minutes
#
# Anthropic's *Towards Monosemanticity* resamples towards the inputs the SAE reconstructs
# worst, since those contain the features nobody covers:
#
# 1. Compute the reconstruction loss `L_reconstruction` of a fresh batch of `batch_size`
#    inputs (`self.generate_batch(batch_size)`) for every instance.
# 2. For each instance with dead latents, draw one input per dead latent, independently and
#    with probability proportional to its **squared** reconstruction loss in that instance:
#    `torch.multinomial(weights, n_dead, replacement=True)` (without `replacement=True` it
#    would never give one input to two dead latents, however large its loss). Skip an instance
#    whose losses are all zero: leave its latents as they are.
# 3. Dead latent's decoder row: that input, centred (minus `b_dec`) and normalised to unit
#    norm.
# 4. Encoder column: the same direction, scaled to `resample_scale` times the mean norm of
#    that instance's *live* encoder columns (`W_enc[inst][:, live]`, before you change
#    anything; if there are none, use 1).
# 5. Encoder bias: zero. Live latents untouched. Return the mask of the latents you
#    resampled (so not the dead latents of a skipped instance).
#
# <details><summary>Why does train_sae also reset Adam's moments for these latents?</summary>
#
# Adam keeps, per weight, a running average of gradients (momentum) and of squared gradients
# (the step-size normaliser). A dead latent's entries hold stale values from before it died.
# Left alone, the first updates after resampling would apply the old latent's momentum to
# the new direction (pushing it back towards where the dead latent was stuck), and divide
# by a stale second moment that has nothing to do with the new latent's gradients. Zeroing
# both makes the new latent start like a freshly initialised weight. Anthropic's recipe
# does this; many classroom implementations skip it.
# </details>
#
# <details><summary>Hint 1: one batch for all, then a loop over instances</summary>
#
# Compute the dead mask as in `resample_simple`. Draw one batch, run your own `self.forward`
# on it and square `loss_dict["L_reconstruction"]` (`[batch, inst]`). Start the returned
# mask as all `False` (`torch.zeros_like(dead)`). Then loop over instances: skip one with no
# dead latents or whose squared losses sum to zero; otherwise draw the inputs, build the
# directions, compute the live-norm scale (before writing anything), write the dead latents'
# weights and biases, and set their entries of the returned mask to `True`.
# </details>
#
# <details><summary>Hint 2: the shapes inside the loop</summary>
#
# For instance `inst`: `dead_latents = dead[inst].nonzero(as_tuple=True)[0]`, of length
# `n_dead`; the weights are the squared losses `[:, inst]`, shape `[batch]`, and
# `torch.multinomial(weights, n_dead, replacement=True)` returns `n_dead` row indices (it
# normalises the weights itself). `h[chosen, inst]` is `[n_dead, d_in]`; subtract
# `self.b_dec[inst]` and normalise over the last axis: these are the new decoder rows,
# `self._W_dec.data[inst][dead_latents]`. In `self.W_enc[inst]` (`[d_in, d_sae]`) a latent is
# a column, so the live columns' norms are `.norm(dim=0)` of `W_enc[inst][:, live]`, averaged
# into one number (1 when no latent is live), and the new columns
# `W_enc.data[inst][:, dead_latents]` are `[d_in, n_dead]`: assign the directions transposed,
# times that mean and `resample_scale`. A tied SAE writes only `W_enc`.
# </details>
#
# Stuck after the hints? The same cell in `solutions/04_toy_sae.ipynb` has the answer.

# %% tags=["reference"]
@add_to_class(ToySAE)
def resample_advanced(
    self, frac_active_in_window: Float[Tensor, "inst d_sae"], resample_scale: float, batch_size: int = 4_096
) -> Bool[Tensor, "inst d_sae"]:
    # BEGIN SOLUTION
    dead = frac_active_in_window < 1e-8
    h = self.generate_batch(batch_size)
    loss_dict, _, _, _ = self.forward(h)
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
    # END SOLUTION


# %%
checks.test_resample_advanced(ToySAE)

# %%
sae_advanced, log_advanced = train_toy_sae(
    1, resample_method="advanced", **resampling, resample_scale=0.5, description="advanced resampling"
)
report_advanced = recovery_report(sae_advanced, feature_directions)
recovery_table(report_advanced, title="Advanced resampling").show()
animate_sae_training(log_advanced, feature_directions, instances=range(8), colour_by_loss=True, title="SAE training, advanced resampling").show()

# %% [markdown]
# **What to look for.** Resampled latents now jump straight onto a poorly reconstructed data
# point, i.e. onto an uncovered feature. Count the instances in the table that reach five
# features at cosine ≥ 0.99 with no dead latents.
#
# ### When resampling is not enough
#
# Sometimes an instance ends with no dead latent and still misses a feature: one latent sits
# *between* two features and covers both badly, while two others share a single feature.
# Nothing is dead, so resampling never fires. Three changes beyond the classroom recipe fix
# this, and all three are options of `train_sae` or one line here:
#
# - **treat redundant latents like dead ones** (`resample_redundant_above=0.99`): a live
#   latent whose decoder direction nearly duplicates a more active latent's is resampled
#   too, towards the badly reconstructed inputs;
# - **decay the learning rate** (`lr_schedule=cosine_decay_lr`): large late steps keep
#   knocking well-placed latents off their features; a decaying rate lets them settle to
#   cosine ≥ 0.99;
# - **start the encoder as the decoder's transpose**: each latent then starts out detecting
#   the direction it writes, instead of an unrelated one, which makes early deaths rarer.
#
# The next two cells train all 16 instances with the three together, for simple and for advanced
# resampling; the second prints one row per recipe so you can compare. To see what each change does
# alone, run `python workbook.py bench --sae` from a terminal: in our runs the encoder
# initialisation alone brought all 16 instances to five features, with simple and with
# advanced resampling; the redundant-latent rule alone brought 15 (simple) and 14 (advanced);
# the learning-rate decay alone did not rescue the stuck instances (it helps the others
# settle closer to their features once nothing is stuck).


# %% tags=["reference"]
@torch.no_grad()
def init_encoder_as_decoder_transpose(sae: ToySAE) -> None:
    """Point each latent's encoder column along its (normalised) decoder row."""
    if sae._W_dec is not None:
        sae.W_enc.data.copy_(sae.W_dec_normalized.transpose(-1, -2))


# %%
def train_improved(method: str, seed: int = 1) -> tuple[ToySAE, Any]:
    seed_everything(seed)
    sae = ToySAE(sae_cfg, toy_model)
    init_encoder_as_decoder_transpose(sae)
    log = sae.optimize(
        steps=sae_steps,
        batch_size=1024,
        lr=1e-3,
        lr_schedule=cosine_decay_lr,
        resample_method=method,
        **resampling,
        resample_redundant_above=0.99,
        log_every=sae_log_every,
        description=f"{method} resampling, improved",
    )
    return sae, log


improved = {"simple": train_improved("simple")}

# %%
improved["advanced"] = train_improved("advanced")
summary_rows = {
    "no resampling": recovery_report(sae_plain, feature_directions),
    "simple": recovery_report(sae_simple, feature_directions),
    "advanced": report_advanced,
    "simple + improvements": recovery_report(improved["simple"][0], feature_directions),
    "advanced + improvements": recovery_report(improved["advanced"][0], feature_directions),
}
for name, report in summary_rows.items():
    all_five = int(((report["recovered"] == n_features) & (report["dead"] == 0)).sum())
    print(f"{name:<26} instances with all {n_features} features and no dead latent: {all_five:2d}/{n_inst}   mean MMCS {report['mmcs'].mean():.4f}")

# %% [markdown]
# **What to look for.** The improved recipes should bring every instance, or all but one, to
# five features at cosine ≥ 0.99. The animation of the improved advanced run shows redundant
# latents being moved as well as dead ones.

# %%
animate_sae_training(improved["advanced"][1], feature_directions, instances=range(8), title="Advanced resampling with the improvements").show()

# %% [markdown]
# ## 6. Why normalise the decoder?
#
# The L1 penalty charges for the *size* of the activations. Without a normalised decoder the
# SAE has a cheat: shrink the encoder (smaller activations, smaller penalty) and grow the
# decoder by the same factor (same reconstruction). The penalty can be driven towards zero
# without the SAE becoming any sparser. Let us switch normalisation off and watch.

# %%
class UnnormalisedToySAE(ToySAE):
    """Decodes with the raw W_dec: the L1 penalty can be dodged by rescaling."""

    @property
    def W_dec_normalized(self) -> Float[Tensor, "inst d_sae d_in"]:
        return self.W_dec


def decoder_and_activation_sizes(sae: ToySAE) -> tuple[float, float]:
    with torch.no_grad():
        _, _, acts, _ = sae(sae.generate_batch(10_000))
    active = acts[acts > 0]
    return sae.W_dec.norm(dim=-1).mean().item(), active.mean().item() if active.numel() else 0.0


seed_everything(2)
sae_unnormalised = UnnormalisedToySAE(sae_cfg, toy_model)
cheat_log = {"step": [], "decoder row norm": [], "mean active activation": []}
_ = sae_unnormalised.optimize(
    steps=full_or_fast(6_000, 3_000),  # fast mode too runs past the first ~1,000 steps, where both sizes still grow
    batch_size=1024,
    lr=1e-3,
    log_every=full_or_fast(300, 150),
    description="no decoder normalisation",
    on_log=lambda snapshot: [
        cheat_log[key].append(value)
        for key, value in zip(cheat_log, (snapshot.step, *decoder_and_activation_sizes(sae_unnormalised)), strict=True)
    ],
)
cheat_log["product"] = [norm * size for norm, size in zip(cheat_log["decoder row norm"], cheat_log["mean active activation"], strict=True)]
panels = {
    "decoder row norm": "mean decoder row norm",
    "mean active activation": "mean size of an active latent",
    "product": "their product",
}
cheat_figure = make_subplots(rows=1, cols=3, subplot_titles=list(panels.values()), horizontal_spacing=0.08)
for column, key in enumerate(panels, start=1):
    cheat_figure.add_trace(go.Scatter(x=cheat_log["step"], y=cheat_log[key], mode="lines+markers", showlegend=False), row=1, col=column)
    cheat_figure.update_yaxes(rangemode="tozero", tickformat=".2f", nticks=6, row=1, col=column)
    cheat_figure.update_xaxes(title_text="step", row=1, col=column)
cheat_figure.update_layout(
    title="Without decoder normalisation: the decoder rows keep growing; the activations rise, then shrink",
    height=380,
    width=1000,
    margin={"t": 100},
)
cheat_figure.show()

# %% [markdown]
# **What to look for.** For the first thousand steps or so, while the SAE is still learning to
# reconstruct, both sizes grow. From then on they move in opposite directions: decoder rows
# keep growing, active latents shrink, and their product (the right panel: what
# reconstruction needs) stays about the same. The L1 term keeps falling, yet the SAE fires no
# fewer latents per input: the penalty is dodged, not obeyed. With normalised rows the decoder
# norm is pinned to 1 and the only way to lower the penalty is to fire fewer latents or
# fire them less.
#
# ## 7. Tied versus untied
#
# A tied SAE encodes with the transpose of its decoder. That is a strong constraint: when
# features are in superposition, the best *detector* of a feature is not its *direction*,
# since it must also ignore the other features that overlap it. Compare the two on the same
# data.

# %%
sae_tied, _ = train_toy_sae(
    1,
    tied=True,
    steps=full_or_fast(10_000, 1_000),
    resample_method="advanced",
    **resampling,
    lr_schedule=cosine_decay_lr,
    description="tied, advanced resampling",
)
report_tied = recovery_report(sae_tied, feature_directions)
recovery_table(report_tied, title="Tied weights, advanced resampling").show()
print(f"mean FVU  tied: {report_tied['fvu'].mean():.4f}   untied: {summary_rows['advanced + improvements']['fvu'].mean():.4f}")
print(f"mean L0   tied: {report_tied['l0'].mean():.3f}    untied: {summary_rows['advanced + improvements']['l0'].mean():.3f}")

# %% [markdown]
# **What to look for.** Compare the two rows of numbers. Both can point their decoder rows
# at the features; the difference is in the encoder. A tied encoder detects a feature with
# exactly the direction it writes, so it cannot tilt away from neighbouring features to
# ignore them. How much that costs depends on how often features overlap in one input: with
# p = 0.025 an input rarely holds more than one feature, so here the two end up close. Raise
# the toy model's feature probability and the gap opens.
#
# <details><summary>Question: when are tied weights a reasonable choice?</summary>
#
# When the features are (nearly) orthogonal, the transpose of the decoder is already the
# best encoder, and tying halves the parameters and removes the shrink/grow cheat's
# counterpart on the encoder side. With many features in few dimensions, as here and in real
# models, untied encoders do better.
# </details>
#
# ## Summary
#
# - An SAE reconstructs activations through a wide, sparse bottleneck; with the right
#   penalty its decoder directions line up with the true features.
# - Latents die; resampling brings them back, and resampling towards badly reconstructed
#   inputs (with the optimiser's memory of the dead latent wiped) works better than at random.
# - Redundant live latents are a second failure mode that dead-latent resampling misses.
# - Normalise the decoder, or the L1 penalty can be dodged by rescaling.
#
# Next, Part 5 replaces the L1 penalty: Gated, JumpReLU, TopK and BatchTopK SAEs.
