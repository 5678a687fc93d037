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
#   `W_dec_normalized`, `generate_batch`, and `pre_activations`, `decode` and `forward`, the
#   interface every SAE in this workbook keeps);
# - measure feature recovery (mean max cosine similarity, a one-to-one Hungarian matching,
#   recall, dead latents, L0, fraction of variance unexplained);
# - watch training as an animation and see latents die;
# - bring dead latents back with simple and with advanced resampling
#   (`resample_simple`, `resample_advanced`), and measure what resetting Adam's running averages
#   for them does, and does not do;
# - see why the decoder must be normalised, and how tied and untied SAEs differ.
#
# **Time:** about {{=2.5}} hours. Exercises work as in Part 1: replace the
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

from part_utils.matching import hungarian_match, matched_recall
from part_utils.methods import add_to_class
from part_utils.reference.part1_toy_models import ToyModel
from part_utils.sae_interface import SAEOutput
from part_utils.sae_training import SAETrainingLog, train_sae
from part_utils.training import make_adam

# %%
import inspect

import plotly.graph_objects as go
from plotly.subplots import make_subplots

import tests.part4_toy_sae as checks
from part_utils.device import get_device
from part_utils.modes import FAST_MODE, full_or_fast
from part_utils.plotting import plot_features_in_2d
from part_utils.plotting.sae import (
    animate_sae_training,
    complete_instances,
    plot_firing_frequencies,
    plot_step_sizes,
    recipe_table,
    recovery_table,
)
from part_utils.reference.part1_toy_models import ToyModelConfig
from part_utils.results import Results
from part_utils.seeding import seed_everything
from part_utils.training import cosine_decay_lr, train_self_supervised

device = get_device()
results = Results(part=4)  # what the text quotes; written by `workbook.py claims --part 4`
print(f"device: {device}, fast mode: {FAST_MODE}")

# %% [markdown]
# ## 1. The model we will take apart
#
# A toy model from Part 1 with 5 features in 2 dimensions, each feature present with probability
# {{settings.feature_probability}} and all equally important. We train one instance, then copy its
# weights into every instance, so that all {{settings.n_inst:.0f}} SAEs below study the *same* model and
# their pictures are comparable. The model is frozen from here on.

# %%
seed_everything(0)
n_inst, n_features, d_hidden = 16, 5, 2
feature_probability = 0.025
single_cfg = ToyModelConfig(n_inst=1, n_features=n_features, d_hidden=d_hidden)
toy_single = ToyModel(single_cfg, feature_probability=feature_probability, device=device)
_ = train_self_supervised(
    toy_single, steps=full_or_fast(6_000, 1_500), lr=3e-3, lr_schedule=cosine_decay_lr, description="toy model"
)

toy_cfg = ToyModelConfig(n_inst=n_inst, n_features=n_features, d_hidden=d_hidden)
toy_model = ToyModel(toy_cfg, feature_probability=feature_probability, device=device)
with torch.no_grad():
    toy_model.W.copy_(toy_single.W.expand_as(toy_model.W))
    toy_model.b_final.copy_(toy_single.b_final.expand_as(toy_model.b_final))
# The true feature directions, [inst, feats, d_in]: the SAE should find these.
feature_directions = toy_model.W.detach().transpose(1, 2)
plot_features_in_2d(toy_single.W, title="The frozen toy model: 5 features in 2D", subplot_size=300).show()


def angular_gaps(W: Float[Tensor, "2 feats"]) -> Float[Tensor, " feats"]:
    """Angles in degrees between neighbouring feature directions, going once round the circle."""
    angles = torch.atan2(W[1], W[0]).rad2deg().sort().values
    return torch.diff(angles, append=angles[:1] + 360.0)


results.record("settings.n_inst", n_inst)
results.record("settings.feature_probability", feature_probability)
results.record("toy.angle_gaps", angular_gaps(toy_single.W[0].detach().cpu()))
results.record("toy.feature_norms", toy_single.W[0].detach().norm(dim=0).cpu())

# %% [markdown]
# The five directions are spread evenly round the circle, a regular pentagon: the angles between
# neighbours are {{toy.angle_gaps|min:.1f}}° to {{toy.angle_gaps|max:.1f}}° (a regular pentagon has
# {{=72}}°), and every feature's direction has norm {{toy.feature_norms|min:.3f}} to
# {{toy.feature_norms|max:.3f}}.

# %% [markdown]
# ## 2. The SAE
#
# The SAE reads a hidden vector `h` (size `d_in = 2`) and has `d_sae` latents:
#
# $$z = \mathrm{ReLU}\big((h - b_{dec})\,W_{enc} + b_{enc}\big), \qquad h' = z\,\hat W_{dec} + b_{dec}$$
#
# where $\hat W_{dec}$ is the decoder with each row (one latent's direction) scaled to unit
# norm inside the forward pass (section 6 says why, and how the papers handle the decoder's
# norm instead). The loss for each input and instance is
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
# one, so a wider SAE would be pushed less hard towards sparsity.
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

    def activation(self, pre_acts: Float[Tensor, "batch inst d_sae"]) -> Float[Tensor, "batch inst d_sae"]:
        """ReLU here; Part 5's architectures replace it."""
        return F.relu(pre_acts)

    def encode(self, h: Float[Tensor, "batch inst d_in"]) -> Float[Tensor, "batch inst d_sae"]:
        """The latent activations `acts` for inputs `h`."""
        return self.activation(self.pre_activations(h))

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
# ### Exercise 4: `pre_activations`, `decode` and `forward`
#
# **Difficulty** ●●●○○ · **Importance** ●●●●● · **Plan for** 20 minutes
#
# Every SAE in this workbook offers the same three calls, so that the training loop, the
# evaluations and the plots work with any of them: `encode(h)` gives the latent activations,
# `decode(acts)` the reconstruction, and `forward(h)` runs both and adds the losses. The class
# above already has `encode`: the ReLU (`activation`) of `pre_activations(h)`. Write:
#
# - `pre_activations(h)`: the encoder's input to the ReLU, `(h - b_dec) W_enc + b_enc`,
#   `[batch, inst, d_sae]`. Subtract `b_dec` before encoding, and leave `h` as it is (it is
#   the caller's batch: centre a new tensor, `h - self.b_dec`).
# - `decode(acts)`: `acts` times `self.W_dec_normalized`, plus `b_dec`, `[batch, inst, d_in]`.
# - `forward(h)`: `acts = self.encode(h)`, `h_reconstructed = self.decode(acts)`, then return an
#   `SAEOutput` with four named fields:
#   1. `loss_dict`: `{"L_reconstruction": [batch, inst], "L_sparsity": [batch, inst]}`;
#   2. `loss`: the scalar total (reconstruction + `sparsity_coeff` × sparsity, mean over batch,
#      sum over instances);
#   3. `acts`: the latent activations `z`, `[batch, inst, d_sae]`;
#   4. `h_reconstructed`: `[batch, inst, d_in]`.
#
# `SAEOutput` is a named tuple: build it as `SAEOutput(loss_dict=..., loss=..., acts=...,
# h_reconstructed=...)`, and read it by name, `sae(h).acts`. `L_sparsity` is the bare L1 norm:
# `sparsity_coeff` appears only in `loss`. Training backpropagates `loss`, so keep everything on
# its way differentiable.
#
# <details><summary>Hint 1: follow the formula left to right</summary>
#
# In `pre_activations`: the centred input `h - b_dec`, then the centred input times `W_enc`,
# plus `b_enc`. In `forward`: `acts` from `self.encode(h)` (the ReLU of your pre-activations),
# `h_reconstructed` from `self.decode(acts)`, then the two loss terms from those, and the total
# from the two terms. Check each shape before the next step.
# </details>
#
# <details><summary>Hint 2: the axes of each step</summary>
#
# Encoding sums over `d_in`: `batch inst d_in, inst d_in d_sae -> batch inst d_sae`, and
# `b_enc` (`[inst, d_sae]`) then broadcasts over the batch; it is added before the ReLU, not after.
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
def pre_activations(self, h: Float[Tensor, "batch inst d_in"]) -> Float[Tensor, "batch inst d_sae"]:
    # BEGIN SOLUTION
    return einsum(h - self.b_dec, self.W_enc, "batch inst d_in, inst d_in d_sae -> batch inst d_sae") + self.b_enc
    # END SOLUTION


@add_to_class(ToySAE)
def decode(self, acts: Float[Tensor, "batch inst d_sae"]) -> Float[Tensor, "batch inst d_in"]:
    # BEGIN SOLUTION
    return einsum(acts, self.W_dec_normalized, "batch inst d_sae, inst d_sae d_in -> batch inst d_in") + self.b_dec
    # END SOLUTION


@add_to_class(ToySAE)
def forward(self, h: Float[Tensor, "batch inst d_in"]) -> SAEOutput:
    # BEGIN SOLUTION
    acts = self.encode(h)
    h_reconstructed = self.decode(acts)
    loss_dict = {
        "L_reconstruction": (h_reconstructed - h).pow(2).mean(dim=-1),
        "L_sparsity": acts.abs().sum(dim=-1),
    }
    loss = (loss_dict["L_reconstruction"] + self.cfg.sparsity_coeff * loss_dict["L_sparsity"]).mean(dim=0).sum()
    return SAEOutput(loss_dict=loss_dict, loss=loss, acts=acts, h_reconstructed=h_reconstructed)
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
# cosine similarity** (MMCS); a feature counts as *recovered* when its value is at least {{settings.recovered_at}}.
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
# MMCS lets two features claim the same latent, so the report also gives a one-to-one score: the
# **Hungarian** matching pairs each feature with its own latent so that the total cosine is as
# large as possible (`scipy.optimize.linear_sum_assignment`), and reports the mean matched
# cosine. And a decoder direction is only half of a feature: **recall** is how often the
# matched latent fires when its feature is active, averaged over features. An SAE can point a
# latent exactly along a feature and still miss most of its occurrences.
#
# Read them together. MMCS high but Hungarian lower: two features lean on one latent. Both
# high but recall low: the directions are right, but the latents fire too rarely (a dead
# latent keeps its decoder row, which both cosines count, while its recall is 0).

# %% tags=["reference"]
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


# %% [markdown]
# ## 3. Training, and latents that die
#
# `sae.optimize(...)` (given; it calls `train_sae` in `part_utils/sae_training.py`) runs Adam
# on batches from your `generate_batch`, logs snapshots for the animation and, when asked,
# resamples dead latents.
# We train {{settings.n_inst:.0f}} instances, each with its own initial weights and its own data, so
# they act as {{settings.n_inst:.0f}} seeds: the text quotes their mean ± standard deviation, or counts
# out of {{settings.n_inst:.0f}}. Each has `d_sae` = {{settings.d_sae:.0f}} (one latent per true feature, no
# slack), λ = {{settings.sparsity_coeff}}, batch {{settings.batch_size:.0f}} and learning rate
# {{settings.lr}}, for {{settings.steps:,.0f}} steps. First, no resampling.

# %%
sae_cfg = ToySAEConfig(n_inst=n_inst, d_in=d_hidden, d_sae=5, sparsity_coeff=0.2)
sae_steps = full_or_fast(10_000, 2_000)
sae_batch_size, sae_lr = 1024, 1e-3
sae_log_every = sae_steps // 200  # 200 frames for the animation
resampling = {
    "resample_every": full_or_fast(1_250, 400),
    "resample_window": full_or_fast(250, 100),
    "resample_scale": 0.5,
}
for name, value in {
    "d_sae": sae_cfg.d_sae,
    "sparsity_coeff": sae_cfg.sparsity_coeff,
    "batch_size": sae_batch_size,
    "lr": sae_lr,
    "steps": sae_steps,
    "recovered_at": RECOVERED_AT,
    **resampling,
}.items():
    results.record(f"settings.{name}", value)


def train_toy_sae(seed: int, *, tied: bool = False, steps: int = sae_steps, **training: Any) -> tuple[ToySAE, Any]:
    seed_everything(seed)
    sae = ToySAE(ToySAEConfig(**{**sae_cfg.__dict__, "tied_weights": tied}), toy_model)
    log = sae.optimize(steps=steps, batch_size=sae_batch_size, lr=sae_lr, log_every=max(1, steps // 200), **training)
    return sae, log


def record_recovery(name: str, report: dict[str, Tensor]) -> dict[str, Tensor]:
    """Record each metric per instance (the instances are independent seeds) and the complete instances."""
    for key in ("mmcs", "hungarian", "recall", "dead", "fvu", "l0"):
        results.record(f"{name}.{key}", report[key])
    results.record(f"{name}.complete", complete_instances(report, n_features).sum())
    results.record(f"{name}.with_dead", (report["dead"] > 0).sum())
    results.record(f"{name}.dead_total", report["dead"].sum())
    return report


sae_plain, log_plain = train_toy_sae(1, description="no resampling")
report_plain = record_recovery("plain", recovery_report(sae_plain, feature_directions))
recovery_table(report_plain, title="No resampling").show()

# %% [markdown]
# **The animation.** One column per instance (the first 8 here; pass `instances=` for others).
# Top row: encoder directions (columns of `W_enc`); middle row: decoder directions (rows of
# `W_dec`, unit length) with the true features as grey lines; bottom row: a sample of the
# hidden vectors (grey) and their reconstructions, each coloured by its reconstruction loss,
# from almost white (no loss) to dark red (the largest loss at any frame of this run). The
# animations without this colouring (`colour_by_loss=False`, the default) draw every
# reconstruction in blue. Press play, or drag the slider.

# %%
animate_sae_training(
    log_plain, feature_directions, instances=range(8), colour_by_loss=True, title="SAE training, no resampling"
).show()

# %% [markdown]
# **What to look for.** Some latents stop firing: their encoder column and bias make the
# pre-activation non-positive for every input, so ReLU outputs zero, and no gradient reaches the
# latent's encoder column, bias or decoder row. Once Adam's leftover momentum has died away (a
# few dozen steps), only a shift of `b_dec` could still bring one back. In this run
# {{plain.dead_total:.0f}} latents end dead, in {{plain.with_dead:.0f}} of the {{settings.n_inst:.0f}}
# instances, and {{plain.complete:.0f}} instances recover all five features with no dead latent. An
# instance with a dead latent has at most four live latents for five features, so at least one feature
# has no live latent of its own (its best decoder row may still be the dead latent's, which MMCS
# counts: read the dead column beside it). The firing frequencies (log scale) tell the same
# story: a dead latent's line drops to the bottom edge. The {{plain.silent_at_end:.0f}} latents silent
# on the logged sample at the end fired there for the last time between steps
# {{plain.death_steps|min:,.0f}} and {{plain.death_steps|max:,.0f}}. But {{plain.revived:.0f}} other latents
# that were silent on the sample at some logged step fired on it again later: silence at one
# moment is not yet death, which is why `train_sae` counts firing over a window of steps before
# it calls a latent dead.

# %%
plot_firing_frequencies(log_plain, instances=range(8), title="Firing frequency per latent, no resampling").show()


def last_firing_steps(log: SAETrainingLog) -> Float[Tensor, "inst d_sae"]:
    """The last logged step at which each latent fired on the logged sample (-1 if it never did)."""
    steps = torch.tensor([float(snapshot.step) for snapshot in log.snapshots])
    fired = torch.stack([snapshot.frac_active > 0 for snapshot in log.snapshots])  # [snapshots, inst, d_sae]
    return torch.where(fired, steps[:, None, None], -1.0).amax(dim=0)


silent_at_end = log_plain.snapshots[-1].frac_active == 0
ever_silent = torch.stack([snapshot.frac_active == 0 for snapshot in log_plain.snapshots[1:]]).any(dim=0)
results.record("plain.silent_at_end", silent_at_end.sum())
results.record("plain.revived", (ever_silent & ~silent_at_end).sum())
if silent_at_end.any():
    results.record("plain.death_steps", last_firing_steps(log_plain)[silent_at_end])

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
# - encoder column: the same direction times `resample_scale` (smaller than the trained
#   latents' encoder columns, whose norm ends near {{simple.encoder_norm|mean:.2f}} here, so the new
#   latent starts by firing weakly);
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
report_simple = record_recovery("simple", recovery_report(sae_simple, feature_directions))
recovery_table(report_simple, title="Simple resampling").show()
results.record("simple.encoder_norm", sae_simple.W_enc.detach().norm(dim=1).mean(dim=-1))  # per instance
animate_sae_training(log_simple, feature_directions, instances=range(8), title="SAE training, simple resampling").show()

# %% [markdown]
# **What to look for.** Latents outlined in red at a frame were resampled since the previous
# one: they jump to a random direction and, if it is any good, settle on a feature nobody
# covers. {{simple.complete:.0f}} of the {{settings.n_inst:.0f}} instances now end with all five features
# recovered and no dead latent ({{plain.complete:.0f}} without resampling), and the dead latents left
# in all instances together fall from {{plain.dead_total:.0f}} to {{simple.dead_total:.0f}}. But a random
# direction in a high-dimensional space would rarely point anywhere useful; here `d_in` is 2, so
# luck is on our side. The next method does not rely on luck.

# %% [markdown]
# ## 5. Advanced resampling
#
# ### Exercise 7: `resample_advanced`
#
# **Difficulty** ●●●●○ · **Importance** ●●●○○ · **Plan for** 45 minutes
#
# Anthropic's *Towards Monosemanticity* (Bricken et al., 2023) resamples towards the inputs the
# SAE reconstructs worst, on the idea that those hold the features no latent covers yet:
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
# **Where we depart from the paper.** Bricken et al. (2023) describe the same recipe for an SAE
# on a language model, at a much larger scale. Ours differs in four places:
#
# - *The new direction is centred.* The paper normalises the raw input; we subtract `b_dec`
#   first. Our encoder reads h − `b_dec` and the decoder adds `b_dec` back, so h − `b_dec` is the
#   direction along which the new latent, firing alone, can rebuild the chosen input exactly; the
#   raw h points the same way only when `b_dec` is zero (or lies along h). In our runs `b_dec` stays small (norm
#   {{advanced.b_dec_norm}} against features of norm about {{toy.feature_norms|mean:.2f}}), so the two
#   choices differ little here.
# - *The encoder scale.* The paper scales the new encoder column to {{=0.2}} × the mean live
#   encoder norm; our runs use `resample_scale` = {{settings.resample_scale}}. The cell after the
#   advanced run trains once with each, so you can see what the choice does on this toy.
# - *The schedule.* The paper looks for dead latents at four fixed steps ({{=25,000}} to
#   {{=100,000}}), each time over the previous {{=12,500}} steps, and draws the new directions
#   from {{=819,200}} inputs. We look every {{settings.resample_every:,.0f}} steps over the last
#   {{settings.resample_window:.0f}}, and draw from {{settings.resample_batch:,.0f}} inputs: the same
#   idea scaled to a {{settings.steps:,.0f}}-step run on 2-dimensional data.
# - *The weights.* The paper weights each input by the square of the autoencoder's loss on it;
#   we square the reconstruction term of the loss alone, the part that measures what the SAE
#   fails to rebuild.
#
# As after `resample_simple`, `train_sae` then zeroes Adam's running averages for the latents
# you return; the subsection after this exercise measures what that does, and what it does not.
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
    # END SOLUTION


# %%
checks.test_resample_advanced(ToySAE)

# %%
sae_advanced, log_advanced = train_toy_sae(
    1, resample_method="advanced", **resampling, description="advanced resampling"
)
report_advanced = record_recovery("advanced", recovery_report(sae_advanced, feature_directions))
recovery_table(report_advanced, title="Advanced resampling").show()
results.record("advanced.b_dec_norm", sae_advanced.b_dec.detach().norm(dim=-1))  # per instance
animate_sae_training(
    log_advanced, feature_directions, instances=range(8), colour_by_loss=True, title="SAE training, advanced resampling"
).show()

# %% [markdown]
# **What to look for.** Resampled latents now jump straight onto the direction of a badly
# reconstructed input, one that no latent covers well yet. Count the instances in the table that reach five
# features at cosine ≥ {{settings.recovered_at}} with no dead latents.
#
# The paper starts the new encoder column at {{=0.2}} × the mean live encoder norm; our runs use
# {{settings.resample_scale}}. The next cell trains the same {{settings.n_inst:.0f}} instances once more
# with the paper's value, and compares the two.

# %%
PAPER_RESAMPLE_SCALE = 0.2  # Towards Monosemanticity, appendix on resampling
paper_resampling = {**resampling, "resample_scale": PAPER_RESAMPLE_SCALE}
sae_paper_scale, _ = train_toy_sae(1, resample_method="advanced", **paper_resampling, description="paper's scale")
report_paper_scale = record_recovery("advanced_paper_scale", recovery_report(sae_paper_scale, feature_directions))
scale_rows = {
    f"encoder scale {resampling['resample_scale']:g} (ours)": report_advanced,
    f"encoder scale {PAPER_RESAMPLE_SCALE:g} (paper)": report_paper_scale,
}
recipe_table(scale_rows, n_features, title="Advanced resampling: the new encoder column's scale").show()
results.record("settings.resample_batch", inspect.signature(ToySAE.resample_advanced).parameters["batch_size"].default)

# %% [markdown]
# With the paper's scale, {{advanced_paper_scale.complete:.0f}} of the {{settings.n_inst:.0f}} instances end
# complete, against {{advanced.complete:.0f}} with ours. The cosines point both ways and differ by
# much less than their spread over instances: MMCS {{advanced_paper_scale.mmcs:.4f}} against
# {{advanced.mmcs:.4f}}, Hungarian {{advanced_paper_scale.hungarian:.4f}} against {{advanced.hungarian:.4f}}.
# On this toy the scale makes no difference we can measure with {{settings.n_inst:.0f}} instances.
# We keep {{settings.resample_scale}}, `train_sae`'s default for both methods (simple resampling uses it
# as the new column's norm itself, advanced as a multiple of the live norm): the run gives no
# reason to change it here.
#
# ### What resetting Adam's moments does
#
# After every resampling, `train_sae` zeroes Adam's running averages for the resampled latents'
# weights (`reset_adam_moments` in `part_utils/sae_training.py`), as the last step of
# Anthropic's recipe prescribes. What does that achieve, and what does it not?
#
# Adam keeps, for every weight, a running mean of its gradients, m (decay β₁ = {{adam.beta1}}),
# and of their squares, v (β₂ = {{adam.beta2}}). It moves the weight by lr · m̂ / (√v̂ + ε), where
# m̂ = m / (1 − β₁ᵗ) and v̂ = v / (1 − β₂ᵗ) correct for both averages starting at zero. Here t
# counts the optimiser's steps, and PyTorch keeps one count per parameter *tensor*
# (`optimizer.state[sae.W_enc]["step"]`), not one per element: zeroing some latents' moments does
# not restart their count.
#
# - **A latent that was dead** had zero gradient for at least the whole window of
#   {{settings.resample_window:.0f}} steps, so its m has already shrunk to β₁ to that power,
#   {{adam.m_left:.0e}} of its old value: there is no momentum left to remove. Its v has shrunk
#   only to {{adam.v_left:.2f}} of its old value. Zeroing v stops the new latent's first steps
#   from being divided by the size of gradients from before it died.
# - **A live latent that is resampled** (the redundant latents of the next subsection) still
#   carries momentum: left alone, its first updates would keep pushing the new weights the way
#   the old latent was going. Here zeroing m matters.
# - **It is not a fresh start.** A fresh optimiser facing a constant gradient moves the weight by
#   exactly lr from its first step: the corrections cancel the zero start. After a reset at a
#   late step t, 1 − β₁ᵗ and 1 − β₂ᵗ are close to 1 and correct nothing, yet m and v start again
#   from zero. n steps after the reset the update is then about
#   lr · (1 − β₁ⁿ) / √(1 − β₂ⁿ): m refills ten times faster than v, so the first steps are
#   *larger* than lr.
#
# The next cell measures this with the Adam that `train_sae` uses, on one weight whose gradient
# is always 1: a fresh optimiser, and two whose moments are zeroed at the first and at the last
# resampling step of our runs.


# %% tags=["reference"]
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


# %%
beta1, beta2 = make_adam([nn.Parameter(torch.zeros(1))], sae_lr).defaults["betas"]
every, window = resampling["resample_every"], resampling["resample_window"]
resets = {"fresh": 0, "first": every, "last": (sae_steps - window - 1) // every * every}
step_sizes = {name: adam_step_sizes(at, n_steps=1_000, lr=sae_lr) for name, at in resets.items()}
labels = {name: f"moments zeroed at step {at:,}" if at else "fresh optimiser" for name, at in resets.items()}
curves = {labels[name]: sizes for name, sizes in step_sizes.items()}
plot_step_sizes(curves, title="Adam's update after its moments are zeroed").show()


def predicted_step(n: int, t: int) -> float:
    """Update n steps after zeroing both moments at step t, constant gradient, in units of lr (ε left out)."""
    return (1 - beta1**n) / (1 - beta1 ** (t + n)) * ((1 - beta2 ** (t + n)) / (1 - beta2**n)) ** 0.5


for n in (1, 10, 100, 1_000):
    measured, formula = step_sizes["last"][n - 1], predicted_step(n, resets["last"])
    print(f"n = {n:>5,}: measured {measured:.4f} × lr, formula {formula:.4f} × lr")

for name, value in {"beta1": beta1, "beta2": beta2, "m_left": beta1**window, "v_left": beta2**window}.items():
    results.record(f"adam.{name}", value)
for name, sizes in step_sizes.items():
    results.record(f"adam.{name}.at", resets[name])
    results.record(f"adam.{name}.n1", sizes[0])
    results.record(f"adam.{name}.n1000", sizes[999])
    results.record(f"adam.{name}.peak", max(sizes))
    results.record(f"adam.{name}.peak_n", sizes.index(max(sizes)) + 1)
results.record("adam.first.correction", 1 - beta2 ** resets["first"])

# %% [markdown]
# **What to look for.** The fresh optimiser moves the weight by {{adam.fresh.n1:.2f}} × lr at the first
# step and {{adam.fresh.n1000:.2f}} × lr at the thousandth. After
# the moments are zeroed at step {{adam.last.at:,.0f}}, the first update is {{adam.last.n1:.2f}} × lr;
# the updates grow to {{adam.last.peak:.2f}} × lr after {{adam.last.peak_n:.0f}} steps and are still
# {{adam.last.n1000:.2f}} × lr a thousand steps later, as the formula predicts. At step
# {{adam.first.at:,.0f}}, 1 − β₂ᵗ is only {{adam.first.correction:.2f}}, so the correction still
# damps the first update a little, to {{adam.first.n1:.2f}} × lr. So the reset clears the old
# latent's history, but the new latent then takes steps several times larger than the learning
# rate for its first hundreds of steps: a kick, not a fresh start. A truly fresh start would need a
# step count per latent, which PyTorch's Adam does not keep (only one per parameter tensor).
#
# ### When resampling is not enough
#
# An instance can end with no dead latent and still miss a feature: one latent can sit between
# two features and cover both badly, or two latents can share one feature. Nothing is dead, so
# resampling never fires. With advanced resampling {{advanced.stuck:.0f}} of the
# {{settings.n_inst:.0f}} instances end this way (simple: {{simple.stuck:.0f}}). Three changes beyond the
# paper's recipe aim at this, and all three are options of `train_sae` or one line here:
#
# - **treat redundant latents like dead ones** (`resample_redundant_above`, here
#   {{settings.redundant_above}}): a live latent whose decoder direction has a cosine above that
#   value with the direction of a latent that fires more often is resampled too, towards the
#   badly reconstructed inputs. This one is our own; neither paper does it.
# - **decay the learning rate** (`lr_schedule=cosine_decay_lr`, a cosine from lr to zero over the
#   whole run): the idea is that large late steps keep knocking well-placed latents off their
#   features, and smaller ones let them settle. Anthropic's later recipe (Conerly et al., 2024,
#   the "April update") also decays the rate, but linearly to zero over the last {{=20}}% of
#   training only.
# - **start the encoder as the decoder's transpose**: each latent then starts out detecting the
#   direction it writes, instead of an unrelated one. The April update initialises its encoder the
#   same way.
#
# The next two cells train all {{settings.n_inst:.0f}} instances with the three together, for simple
# and for advanced resampling; the second shows one row per recipe. What each change does alone is
# not measured here: `python workbook.py bench --sae` (a terminal command, several minutes) trains
# every combination on the same toy model.


# %% tags=["reference"]
@torch.no_grad()
def init_encoder_as_decoder_transpose(sae: ToySAE) -> None:
    """Point each latent's encoder column along its (normalised) decoder row."""
    if sae._W_dec is not None:
        sae.W_enc.data.copy_(sae.W_dec_normalized.transpose(-1, -2))


# %%
REDUNDANT_ABOVE = 0.99
results.record("settings.redundant_above", REDUNDANT_ABOVE)


def train_improved(method: str, seed: int = 1) -> tuple[ToySAE, Any]:
    seed_everything(seed)
    sae = ToySAE(sae_cfg, toy_model)
    init_encoder_as_decoder_transpose(sae)
    log = sae.optimize(
        steps=sae_steps,
        batch_size=sae_batch_size,
        lr=sae_lr,
        lr_schedule=cosine_decay_lr,
        resample_method=method,
        **resampling,
        resample_redundant_above=REDUNDANT_ABOVE,
        log_every=sae_log_every,
        description=f"{method} resampling, improved",
    )
    return sae, log


improved = {"simple": train_improved("simple")}

# %%
improved["advanced"] = train_improved("advanced")
summary_rows = {
    "no resampling": report_plain,
    "simple": report_simple,
    "advanced": report_advanced,
    f"advanced, paper's scale {PAPER_RESAMPLE_SCALE:g}": report_paper_scale,
    **{
        f"{method} + improvements": record_recovery(f"improved_{method}", recovery_report(sae, feature_directions))
        for method, (sae, _) in improved.items()
    },
}
recipe_table(summary_rows, n_features, title=f"Every recipe, {n_inst} instances each: mean ± sd over instances").show()
for name, report in {"simple": report_simple, "advanced": report_advanced}.items():
    results.record(f"{name}.stuck", ((report["dead"] == 0) & (report["recovered"] < n_features)).sum())

# %% [markdown]
# **What to look for.** With the three changes, {{improved_simple.complete:.0f}} (simple) and
# {{improved_advanced.complete:.0f}} (advanced) of the {{settings.n_inst:.0f}} instances recover all five
# features with no dead latent, against {{simple.complete:.0f}} and {{advanced.complete:.0f}} without
# them. For advanced resampling the Hungarian cosine rises from {{advanced.hungarian:.4f}} to
# {{improved_advanced.hungarian:.4f}} (mean ± sd over instances), recall only from
# {{advanced.recall:.3f}} to {{improved_advanced.recall:.3f}}.
#
# **What holds across the recipes, and what does not.** In the mean of every quality column
# (complete instances, both cosines, recall, dead latents, FVU) the order is the same: no
# resampling, then resampling, then resampling with the improvements. The first step is large;
# the second is smaller than the spread over instances in the cosines, and shows most clearly in
# the count of complete instances. Between simple and advanced resampling there is no order: on
# this 2-dimensional toy the random directions do at least as well ({{simple.complete:.0f}} against
# {{advanced.complete:.0f}} complete instances, Hungarian cosine {{simple.hungarian:.4f}} against
# {{advanced.hungarian:.4f}}), a difference of a few instances out of {{settings.n_inst:.0f}}, too small to
# rank them. Recall barely moves once latents stop dying: even with every direction found, a
# latent fires on only about {{improved_advanced.recall|mean:.0%}} of its feature's occurrences. For a
# feature that occurs alone, the latent's pre-activation grows with the feature's value, so the
# occurrences it misses are the weakest ones, those that do not clear its bias.
#
# In the animation of the improved advanced run, look for latents outlined in red whose decoder
# direction lay on top of another latent's just before they moved: those were resampled as
# redundant.

# %%
animate_sae_training(
    improved["advanced"][1], feature_directions, instances=range(8), title="Advanced resampling with the improvements"
).show()

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


def cheat_sizes(sae: ToySAE) -> dict[str, Float[Tensor, " inst"]]:
    """Per instance, on a fresh batch: mean decoder row norm, mean size of an active latent, L0 and the L1 term."""
    with torch.no_grad():
        output = sae(sae.generate_batch(10_000))
    loss_dict, acts = output.loss_dict, output.acts
    fires = acts > 0
    return {
        "decoder_norm": sae.W_dec.detach().norm(dim=-1).mean(dim=-1).cpu(),
        "activation": (acts.sum(dim=(0, 2)) / fires.sum(dim=(0, 2)).clamp_min(1)).cpu(),
        "l0": fires.float().sum(dim=-1).mean(dim=0).cpu(),
        "l1": loss_dict["L_sparsity"].mean(dim=0).cpu(),
    }


seed_everything(2)
sae_unnormalised = UnnormalisedToySAE(sae_cfg, toy_model)
cheat_steps, cheat_log = [], []
_ = sae_unnormalised.optimize(
    steps=full_or_fast(6_000, 3_000),  # fast mode too runs past the first ~1,000 steps, where both sizes still grow
    batch_size=sae_batch_size,
    lr=sae_lr,
    log_every=full_or_fast(300, 150),
    description="no decoder normalisation",
    on_log=lambda snapshot: (cheat_steps.append(snapshot.step), cheat_log.append(cheat_sizes(sae_unnormalised))),
)
sizes = {key: torch.stack([entry[key] for entry in cheat_log]) for key in cheat_log[0]}  # each [snapshots, inst]
sizes["product"] = sizes["decoder_norm"] * sizes["activation"]
panels = {
    "decoder_norm": "mean decoder row norm",
    "activation": "mean size of an active latent",
    "product": "their product",
    "l0": "L0 (active latents per input)",
}
cheat_figure = make_subplots(rows=1, cols=len(panels), subplot_titles=list(panels.values()), horizontal_spacing=0.07)
for column, key in enumerate(panels, start=1):
    mean = sizes[key].mean(dim=1).tolist()
    cheat_figure.add_trace(go.Scatter(x=cheat_steps, y=mean, mode="lines+markers", showlegend=False), row=1, col=column)
    cheat_figure.update_yaxes(rangemode="tozero", tickformat=".2f", nticks=6, row=1, col=column)
    cheat_figure.update_xaxes(title_text="step", row=1, col=column)
cheat_figure.update_layout(
    title=f"Without decoder normalisation: mean over the {n_inst} instances", height=380, width=1000, margin={"t": 100}
)
cheat_figure.show()

peak = int(sizes["activation"].mean(dim=1).argmax())  # the snapshot where active latents are largest
results.record("cheat.peak_step", cheat_steps[peak])
results.record("cheat.steps", cheat_steps[-1] + 1)
for key, values in sizes.items():
    results.record(f"cheat.{key}.peak", values[peak])
    results.record(f"cheat.{key}.end", values[-1])
seed_everything(1)  # the advanced run's own initial draw (see train_toy_sae)
results.record("init.raw_decoder_norm", ToySAE(sae_cfg, toy_model).W_dec.detach().norm(dim=-1).mean(dim=-1))
results.record("advanced.raw_decoder_norm", sae_advanced.W_dec.detach().norm(dim=-1).mean(dim=-1))

# %% [markdown]
# **What to look for.** Until step {{cheat.peak_step:,.0f}} or so, while the SAE is still learning to
# reconstruct, both sizes grow. From then on they move in opposite directions (mean ± sd over
# the instances, from that step to the end of {{cheat.steps:,.0f}} steps): decoder rows grow from
# {{cheat.decoder_norm.peak:.2f}} to {{cheat.decoder_norm.end:.2f}}, active latents shrink from
# {{cheat.activation.peak:.3f}} to {{cheat.activation.end:.3f}}, and their product, what reconstruction
# needs, moves much less, from {{cheat.product.peak:.3f}} to {{cheat.product.end:.3f}}. The L1 term per input
# falls from {{cheat.l1.peak:.3f}} to {{cheat.l1.end:.3f}}, while the number of latents firing per input rises from
# {{cheat.l0.peak:.3f}} to {{cheat.l0.end:.3f}}: the penalty is dodged, not obeyed. With normalised rows, the rows
# the SAE decodes with have norm 1, so the only way to lower the penalty is to fire fewer
# latents or fire them less.
#
# **How the papers keep the norm at 1.** We divide each row by its norm inside the forward pass,
# and leave the stored `W_dec` free. *Towards Monosemanticity* instead keeps the stored rows at
# unit norm: before each step it removes the part of the gradient parallel to each row, and
# after the step it rescales the rows to norm 1. Dividing in the forward pass removes that
# parallel part by itself (scaling a row does not change its direction, so the loss has no
# gradient along it), but the stored norm is whatever the initialisation and the updates leave:
# in the advanced run the rows start at norm {{init.raw_decoder_norm:.3f}} and end at
# {{advanced.raw_decoder_norm:.3f}}, not 1. The division also scales each row's gradient by one over its
# norm, which Adam undoes (its step does not depend on the gradient's scale), so a step of the
# same size turns a short row through a larger angle than a unit row, and a long one through a
# smaller angle. Anthropic's
# later recipe (Conerly et al., 2024, the "April update") fixes no norm at all: it charges each
# latent's activation times its decoder row's norm, λ Σᵢ zᵢ‖dᵢ‖, so rescaling no longer changes
# the penalty and the cheat is gone without a constraint.
#
# ## 7. Tied versus untied
#
# A tied SAE encodes with the transpose of its decoder. That is a strong constraint: when
# features are in superposition, the best *detector* of a feature is not its *direction*,
# since it must also ignore the other features that overlap it. Compare the two on the same
# data, with the same recipe as "advanced + improvements" (a tied encoder is the decoder's
# transpose all along, not only at the start).

# %%
sae_tied, _ = train_toy_sae(
    1,
    tied=True,
    steps=full_or_fast(10_000, 1_000),
    resample_method="advanced",
    **resampling,
    resample_redundant_above=REDUNDANT_ABOVE,
    lr_schedule=cosine_decay_lr,
    description="tied, advanced resampling",
)
report_tied = record_recovery("tied", recovery_report(sae_tied, feature_directions))
recovery_table(report_tied, title="Tied weights, advanced resampling").show()
recipe_table(
    {"untied (advanced + improvements)": summary_rows["advanced + improvements"], "tied": report_tied},
    n_features,
    title="Tied against untied, same recipe: mean ± sd over instances",
).show()

# Of the inputs that hold any feature, the fraction that hold two or more (features are independent).
absent = 1 - feature_probability
none, one = absent**n_features, n_features * feature_probability * absent ** (n_features - 1)
results.record("data.overlap", (1 - none - one) / (1 - none))

# %% [markdown]
# **What to look for.** Compare the two rows of the second table. Both can point their decoder rows at the features;
# the difference is in the encoder. A tied encoder detects a feature with exactly the direction it
# writes, so it cannot tilt away from neighbouring features to ignore them. How much that costs
# depends on how often features overlap in one input: with p = {{settings.feature_probability}}, only
# {{data.overlap:.1%}} of the inputs that hold any feature hold two or more. Here the tied SAE ends
# with FVU {{tied.fvu:.4f}} against {{improved_advanced.fvu:.4f}} untied, and
# {{tied.complete:.0f}} against {{improved_advanced.complete:.0f}} complete instances: on this toy, tying
# costs nothing we can measure.
# Would the gap open if features overlapped more often? Raise the toy model's feature
# probability, retrain both, and see.
#
# <details><summary>Question: when are tied weights a reasonable choice?</summary>
#
# When the features are (nearly) orthogonal: then no other feature leaks into a feature's own
# direction, so that direction is already a good detector, and tying halves the weights to
# learn. When many features share few dimensions, as here and in real models, an untied encoder
# can tilt each detector away from the features that overlap it; how much that buys depends on
# how often they occur together.
# </details>
#
# ## Summary
#
# - An SAE reconstructs activations through a wide, sparse bottleneck; on this toy its decoder
#   directions line up with the true features, and MMCS, the one-to-one Hungarian cosine and
#   recall measure how well.
# - Latents die: without resampling, {{plain.dead_total:.0f}} latents end dead in {{plain.with_dead:.0f}} of
#   {{settings.n_inst:.0f}} instances; resampling revives them. On this 2-dimensional toy, random new
#   directions do at least as well as the paper's loss-weighted ones.
# - Zeroing Adam's moments for a resampled latent removes the old latent's history, but Adam's
#   step count runs on, so the new latent's first updates are several times the learning rate.
# - An instance can miss a feature with every latent alive, which dead-latent resampling cannot
#   see; resampling redundant latents, a decaying learning rate and an encoder that starts as the
#   decoder's transpose together bring {{improved_advanced.complete:.0f}} of {{settings.n_inst:.0f}}
#   instances to all five features with no dead latent (advanced resampling;
#   {{improved_simple.complete:.0f}} with simple).
# - Normalise the decoder (or charge the penalty by the decoder's norm), or the L1 penalty can be
#   dodged by rescaling.
#
# Next, Part 5 replaces the L1 penalty: Gated, JumpReLU, TopK and BatchTopK SAEs.
