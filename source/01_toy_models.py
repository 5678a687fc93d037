# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Part 1: Toy models of superposition
#
# A neural network often has more things it would like to represent than it has dimensions
# to represent them in. *Superposition* is the name for what it does then: it packs many
# features into fewer dimensions, at the price of some interference between them. This part
# rebuilds the central experiments of Elhage et al. (2022), *Toy Models of Superposition*,
# scaled so that every experiment trains on a laptop CPU.
#
# **You will**
# - write a toy model that compresses `feats` features into `d_hidden` dimensions and
#   reconstructs them (`forward`), the sparse data it learns from (`generate_batch`) and
#   its loss (`calculate_loss`);
# - watch features arrange themselves as sparsity grows: dropped, antipodal pairs, pentagons;
# - map the phase change between "not represented", "dedicated dimension" and "superposition";
# - look inside a 100-feature model with 20 dimensions;
# - see how correlated and anticorrelated features change the geometry.
#
# **Time:** about 2 hours. **How exercises work:** each exercise is a code cell with a
# `raise NotImplementedError(...)` for you to replace. The cell after it runs a check
# against the reference on random inputs; when something is wrong it names the most likely
# mistake, and when everything is right it prints a line starting with ✔. Where training
# differentiates your code, checks compare its gradients too, and they fail when your code
# changes its inputs or the model's tensors in place. They never change your random state.
# Above each exercise's cell, a line rates its difficulty and importance and says how long to
# plan for it, and two collapsible hints wait for when you are stuck: open them in order.
# Each **Question** is a collapsible block: think first, then click it to see the answer.

# %% tags=["workbook-setup"]

# %% tags=["reference"]
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import einsum
from jaxtyping import Float
from torch import Tensor, nn

from part_utils.device import get_device
from part_utils.methods import add_to_class

# %%
import ipywidgets as widgets
import plotly.graph_objects as go
from IPython.display import display

import tests.part1_toy_models as checks
from part_utils.modes import FAST_MODE, full_or_fast
from part_utils.plotting import animate_features_in_2d, plot_features_in_2d, plot_features_in_Nd
from part_utils.results import Results
from part_utils.section_artefacts import load_part1_explorer_grid
from part_utils.seeding import seed_everything
from part_utils.training import cosine_decay_lr, train_self_supervised

device = get_device()
print(f"device: {device}, fast mode: {FAST_MODE}")
results = Results(part=1)  # the numbers the text quotes, recorded by full-mode runs (part_utils/results.py)
KEPT_NORM = results.record("kept_norm", 0.5)  # a feature counts as represented when its column of W is longer

# %% [markdown]
# ## 1. The toy model
#
# Each input `x` has `feats` features. The model compresses it into a hidden vector of
# `d_hidden < feats` dimensions and tries to recover it:
#
# $$h = W x, \qquad x' = \mathrm{ReLU}(W^\top h + b).$$
#
# The hidden layer is linear, so its basis carries no special meaning: only the *directions*
# `W` gives each feature matter. The ReLU at the output is what makes superposition possible:
# it sets negative interference from other features to zero, and with a negative bias `b` it
# also removes small positive interference. Without it (a linear model) the best the model can
# do is keep as many features as it has dimensions, like PCA.
#
# We train many small models at once. Every tensor has an `inst` (instance) dimension, and
# each instance has its own **feature probability** (how often each feature is non-zero; the
# *sparsity* is `S = 1 - p`) and **importance** (how much each feature's error counts in the
# loss). Shapes: `W` is `[inst, d_hidden, feats]`, `b_final` is `[inst, feats]`, a batch is
# `[batch, inst, feats]`. The constructor is given; read it before you start.


# %% tags=["reference"]
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


# %% [markdown]
# ### Exercise 1: `forward`
#
# **Difficulty** ●●○○○ · **Importance** ●●●●○ · **Plan for** 15 minutes
#
# Implement `h = W x` and `x' = ReLU(Wᵀ h + b_final)` for a batch of shape
# `[batch, inst, feats]`, independently for every instance. `einops.einsum` with named axes
# keeps this readable, e.g. `einsum(W, x, "inst d_hidden feats, batch inst feats -> batch inst d_hidden")`;
# a matmul works just as well. Training backpropagates through the output into `W` and
# `b_final`, so keep every step in the autograd graph (no `torch.no_grad()`, `.detach()` or
# `.data`), and leave `features` and the parameters as they are.
#
# Each exercise is one method, written in its own cell so that you can write, run and check
# one piece at a time. The line `@add_to_class(ToyModel)` above it attaches the method to the
# class as soon as the cell runs (it is `part_utils.methods.add_to_class`, three lines long).
#
# <details><summary>Hint 1: write down every intermediate shape</summary>
#
# Go in three steps: the hidden vector `h = W x`, of shape `[batch, inst, d_hidden]`; its
# read-out `Wᵀ h`, back to `[batch, inst, feats]`; then `+ b_final` and the ReLU, in that
# order. Compute the first two with one einsum each and check the shape of each before you go
# on.
# </details>
#
# <details><summary>Hint 2: which axis each einsum sums over</summary>
#
# Both einsums take the same `W` (`inst d_hidden feats`) and keep `inst` on every operand and
# in the output, so that each instance only meets its own features. The first sums over
# `feats` (the pattern above). The second sums over `d_hidden`: `W` with `h`
# (`batch inst d_hidden`) gives `batch inst feats`. Naming the axes does the transpose for you:
# no `.T` or `.transpose` is needed. `b_final` (`[inst, feats]`) broadcasts over the batch as
# it is. There is one ReLU, on the output; `h` stays linear.
# </details>
#
# Stuck after the hints? The same cell in `solutions/01_toy_models.ipynb` has the answer.


# %% tags=["reference"]
@add_to_class(ToyModel)
def forward(self, features: Float[Tensor, "batch inst feats"]) -> Float[Tensor, "batch inst feats"]:
    # BEGIN SOLUTION
    hidden = einsum(self.W, features, "inst d_hidden feats, batch inst feats -> batch inst d_hidden")
    out = einsum(self.W, hidden, "inst d_hidden feats, batch inst d_hidden -> batch inst feats")
    return F.relu(out + self.b_final)
    # END SOLUTION


# %%
checks.test_forward(ToyModel)

# %% [markdown]
# ### Exercise 2: `generate_batch`
#
# **Difficulty** ●●○○○ · **Importance** ●●●○○ · **Plan for** 15 minutes
#
# In every example of the batch, each feature of each instance is present with that
# instance's probability for it, `self.feature_probability[inst, feat]`, independently of
# every other example, instance and feature. A present feature has a magnitude drawn
# uniformly from [0, 1], again independently for each; an absent one is exactly 0. Return a
# float tensor `[batch, inst, feats]` on the model's device, a fresh sample on every call.
#
# The textbook way draws two uniform tensors: one decides presence, the other gives the
# magnitude. The check accepts any correct way, whatever order you draw in: it compares
# frequencies with bounds that a correct sampler breaks less than once in a billion runs.
#
# <details><summary>Going further: one random draw is enough</summary>
#
# Draw `u` uniform on [0, 1). The feature is present when `u < p`, which happens with
# probability `p`; and *given* that it is present, `u` is uniform on [0, p), so `u / p` is
# uniform on [0, 1). One draw gives both presence and magnitude, which makes the training
# loop measurably faster. The reference does this.
# </details>
#
# <details><summary>Hint 1: a presence mask first, then the values</summary>
#
# Build a boolean mask of shape `[batch, inst, feats]` that is True where a feature is
# present: a uniform draw of that full shape, compared with the probabilities. Then give the
# present features their magnitudes and set the absent ones to 0.
# </details>
#
# <details><summary>Hint 2: shapes, device and combining</summary>
#
# `torch.rand(batch_size, self.cfg.n_inst, self.cfg.n_features, device=self.W.device)` puts
# the batch axis first, so `self.feature_probability` (`[inst, feats]`) broadcasts against it
# from the right: `draws < self.feature_probability` is True with probability `p`. Draw the
# magnitudes with a second `torch.rand` of the same shape, and keep them where the mask is
# True with `torch.where(mask, magnitudes, 0.0)` (or multiply by the mask). Set no seed inside
# the method: every call must give a new batch.
# </details>
#
# Stuck after the hints? The same cell in `solutions/01_toy_models.ipynb` has the answer.


# %% tags=["reference"]
@add_to_class(ToyModel)
def generate_batch(self, batch_size: int) -> Float[Tensor, "batch inst feats"]:
    # BEGIN SOLUTION
    draws = torch.rand(batch_size, self.cfg.n_inst, self.cfg.n_features, device=self.W.device)
    present = draws < self.feature_probability
    return torch.where(present, draws / self.feature_probability, 0.0)
    # END SOLUTION


# %%
checks.test_generate_batch(ToyModel)

# %% [markdown]
# ### Exercise 3: `calculate_loss`
#
# **Difficulty** ●○○○○ · **Importance** ●●●○○ · **Plan for** 10 minutes
#
# The loss is the importance-weighted squared error,
#
# $$L = \sum_{\text{inst}} \; \frac{1}{B \cdot F} \sum_{b, f}
# I_{\text{inst}, f}\,\big(x_{b,\text{inst},f} - x'_{b,\text{inst},f}\big)^2,$$
#
# averaged over the batch and the features, and **summed** over instances; `batch` is `x`
# and `out` is the model's output `x'`. Return it as a single-number tensor: training calls
# `.backward()` on it, so no `.item()` or `.detach()`. (The paper writes the loss as a sum over
# features; its companion code averages, as we do. The two differ by a constant factor, which
# Adam's updates hardly notice.)
#
# <details><summary>Question: why sum over instances rather than average?</summary>
#
# The instances share nothing: instance `i`'s parameters only affect its own term. Summing
# gives each instance exactly the gradient it would get if trained alone, whatever
# `n_inst` is. Averaging would divide every instance's gradient by `n_inst` (Adam mostly
# hides this, but plain SGD would not).
# </details>
#
# <details><summary>Hint 1: the weighted error element by element</summary>
#
# First compute `I · (x - x')²` for every element, a tensor of shape `[batch, inst, feats]`:
# `self.importance` is `[inst, feats]` and broadcasts over the batch. Only then reduce it.
# </details>
#
# <details><summary>Hint 2: which axes to average and which to sum</summary>
#
# Average over the batch and the features together, `dim=(0, 2)`: that leaves one loss per
# instance, shape `[inst]`. Then sum those into a single number. The importance multiplies the
# squared difference (it is not inside the square), and there is no factor ½.
# </details>
#
# Stuck after the hints? The same cell in `solutions/01_toy_models.ipynb` has the answer.


# %% tags=["reference"]
@add_to_class(ToyModel)
def calculate_loss(
    self,
    out: Float[Tensor, "batch inst feats"],
    batch: Float[Tensor, "batch inst feats"],
) -> Float[Tensor, ""]:
    # BEGIN SOLUTION
    weighted_error = self.importance * (batch - out).pow(2)
    return weighted_error.mean(dim=(0, 2)).sum()
    # END SOLUTION


# %%
checks.test_calculate_loss(ToyModel)

# %% [markdown]
# ## 2. Five features in two dimensions
#
# Now train {{five.n_inst:.0f}} instances of a model with 5 features and 2 hidden dimensions.
# Importance decays as `{{five.importance_decay}} ** i`, so feature 0 matters most (the paper's
# opening figure uses the same curve). Feature probability goes from {{five.p_max:.0f}} (dense)
# in the first instance down to {{five.p_min:.2f}} in the last, evenly on a log scale. The
# training loop in `part_utils.training` is lean: losses stay on the device and are only read
# at logging steps.
#
# **Our recipe, not the paper's.** The paper's companion code trains with AdamW at a constant
# learning rate of {{=1e-3}} for {{=10,000}} steps. We use Adam at {{five.lr:g}} that decays
# to zero on a cosine schedule, for {{five.steps:,.0f}} steps of {{five.batch_size:.0f}}
# examples: a larger step that shrinks at the end, chosen to keep training short on a CPU. The
# other models of this part train the same way, with their own step counts (and a larger
# learning rate for the phase diagram).
#
# In each small plot, a line from the origin is one column `W[:, i]`: where feature `i`
# lives in the 2D hidden space. Colours follow importance (yellow: most important).

# %%
seed_everything(0)
n_inst_2d = 16
cfg_2d = ToyModelConfig(n_inst=n_inst_2d, n_features=5, d_hidden=2)
importance_2d = results.record("five.importance_decay", 0.9) ** torch.arange(cfg_2d.n_features)
probability_2d = 50 ** -torch.linspace(0, 1, n_inst_2d)[:, None]
model_2d = ToyModel(cfg_2d, feature_probability=probability_2d, importance=importance_2d, device=device)
results.record("five.n_inst", n_inst_2d)
results.record("five.p_max", probability_2d.max())
results.record("five.p_min", probability_2d.min())

W_snapshots = []
log_2d = train_self_supervised(
    model_2d,
    steps=results.record("five.steps", full_or_fast(6_000, 400)),
    batch_size=results.record("five.batch_size", 1024),
    lr=results.record("five.lr", 3e-3),
    lr_schedule=cosine_decay_lr,
    log_every=full_or_fast(100, 50),
    snapshot=lambda: W_snapshots.append(model_2d.W.detach().cpu().clone()),
    description="5 features in 2D",
)
titles_2d = [f"1 - S = {p:.3f}" for p in probability_2d.squeeze(1).tolist()]
plot_features_in_2d(
    model_2d.W, colours=importance_2d, title="5 features in 2D, sparser to the right", subplot_titles=titles_2d
).show()

# %%
# Which arrangement each instance ended in, for the text below (nothing is printed).
W_2d, p_2d = model_2d.W.detach().cpu(), probability_2d.squeeze(1)
kept_2d = W_2d.norm(dim=1) > KEPT_NORM  # [inst, feats]
unit_2d = F.normalize(W_2d, dim=1)
angles_2d = einsum(unit_2d, unit_2d, "inst d f1, inst d f2 -> inst f1 f2").clamp(-1, 1).acos().rad2deg()
both_kept = kept_2d[:, :, None] & kept_2d[:, None, :]
n_antipodal = ((angles_2d > 170) & both_kept).sum(dim=(1, 2)) // 2
two_pairs = (n_antipodal == 2) & (kept_2d.sum(dim=1) == 4)  # four features in two antipodal pairs, one dropped
off_diagonal = ~torch.eye(cfg_2d.n_features, dtype=torch.bool)
pentagon = kept_2d.all(dim=1) & (angles_2d[:, off_diagonal].amin(dim=1) > 60)  # five directions, none closer than 60°
pentagons_from_here_on = pentagon.flip(0).cumprod(0).flip(0).bool()  # this instance and every sparser one
results.record("five.dense_kept", kept_2d[0].sum())
results.record("five.dense_angle", angles_2d[0, 0, 1])
results.record("five.n_two_pairs", two_pairs.sum())
results.record("five.n_two_pairs_drop_last", (two_pairs & ~kept_2d[:, -1]).sum())
results.record("five.n_pentagon", pentagon.sum())
if two_pairs.any() and pentagons_from_here_on.any():
    results.record("five.two_pairs_p", p_2d[two_pairs])
    results.record("five.pentagons_from_p", p_2d[pentagons_from_here_on].max())

# %% [markdown]
# **What to look for.** With dense features (left) the model keeps the
# {{five.dense_kept:.0f}} most important features on orthogonal axes
# ({{five.dense_angle:.0f}}° apart) and drops the rest: superposition would cost more in
# interference than it gains. As features get sparser, four features sit in two *antipodal
# pairs* (two features on one line, pointing opposite ways) and the fifth is dropped: that is
# {{five.n_two_pairs:.0f}} of the instances, from p = {{five.two_pairs_p|max:.2f}} down to
# {{five.two_pairs_p|min:.2f}}. In the paper the dropped feature is the least important one;
# here it is feature 4 in only {{five.n_two_pairs_drop_last:.0f}} of them. Dropping feature 4
# instead would lower the loss a little, but gradient descent rarely moves from one arrangement
# to another once it has settled (the paper notes the same, and kept the best of several runs:
# Section 4 does that too). At the sparse end all five share the plane as a *pentagon*: every
# instance from p = {{five.pentagons_from_p:.3f}} down, {{five.n_pentagon:.0f}} instances in
# all. A two-pair instance among the pentagons is a run stuck in the worse arrangement.
#
# <details><summary>Question: why is an antipodal pair cheap when features are sparse?</summary>
#
# If features `i` and `j` sit at `W_j = -W_i`, then when only `i` is present, feature `j`'s
# pre-activation is `-|W_i|² x_i < 0`, which the ReLU clips to zero: no error at all. The
# pair only interferes when both are present at once, which happens with probability `p²`.
# </details>
#
# The animation below replays training: press play or drag the slider. It runs in the
# browser, so it keeps working in a saved HTML copy of this notebook.

# %%
animate_features_in_2d(
    torch.stack(W_snapshots),
    log_2d.steps,
    colours=importance_2d,
    title="Training the 5-feature model",
    subplot_titles=titles_2d,
).show()

# %% [markdown]
# ## 3. Explore: feature probability and importance
#
# The arrangement depends on two knobs: how sparse the features are, and how fast importance
# decays. Both pictures below draw from one grid of 5-feature models in 2 dimensions, trained
# in advance for every pair of a feature probability `p` and an importance decay `d` (feature
# `i` has importance `d^i`), so they respond instantly. The grid is
# `section_data/part1_explorer_grid.npz`, made by `python -m tooling.section_artefacts`.
#
# The first figure has one panel per decay, from {{explorer.decay_min:.2f}} (feature 0 matters
# far more than feature 4) to {{explorer.decay_max:.2f}} (all features equal); the slider under
# the figure moves all {{explorer.n_decays:.0f}} panels through the feature probabilities
# together, from {{explorer.p_max:.0f}} (dense) down to {{explorer.p_min:.2f}}. It runs in the
# browser, so it also works in a saved HTML copy of this notebook, with no kernel. With a
# running kernel, the two sliders below it choose one probability and one decay each, and draw
# that model alone in a bigger panel.
#
# Try: importance decay {{explorer.decay_max:.1f}} (all features equal) at high sparsity. Then
# lower the decay at a fixed sparsity, and watch which feature is dropped first.

# %%
explorer = load_part1_explorer_grid()
results.record("explorer.decay_min", min(explorer.importance_decays))
results.record("explorer.decay_max", max(explorer.importance_decays))
results.record("explorer.n_decays", len(explorer.importance_decays))
results.record("explorer.p_max", max(explorer.feature_probabilities))
results.record("explorer.p_min", min(explorer.feature_probabilities))
explorer_importance = torch.tensor(explorer.importance_decays)[:, None] ** torch.arange(
    explorer.n_features
)  # [decays, feats]
animate_features_in_2d(
    explorer.W,
    [f"{p:.3g}" for p in explorer.feature_probabilities],
    colours=explorer_importance,
    colour_title="importance",
    title="5 features in 2D: one panel per importance decay",
    subplot_titles=[f"importance {d:.2f}^i" for d in explorer.importance_decays],
    slider_prefix="feature probability p = ",
    n_cols=3,
    subplot_size=240,
).show()

# %%
probability_slider = widgets.SelectionSlider(
    options=[(f"{p:.3g}", i) for i, p in enumerate(explorer.feature_probabilities)],
    description="probability",
    continuous_update=True,
)
decay_slider = widgets.SelectionSlider(
    options=[(f"{d:.2f}", i) for i, d in enumerate(explorer.importance_decays)],
    description="importance decay",
    style={"description_width": "initial"},
    continuous_update=True,
)


def show_explorer_choice(probability_index: int, decay_index: int) -> None:
    decay = explorer.importance_decays[decay_index]
    importance = torch.tensor(decay) ** torch.arange(explorer.n_features)
    W = explorer.W[probability_index, decay_index][None]
    title = f"p = {explorer.feature_probabilities[probability_index]:.3g}, importance = {decay:.2f}^i"
    plot_features_in_2d(W, colours=importance, subplot_titles=[title], subplot_size=360).show()


display(widgets.interactive(show_explorer_choice, probability_index=probability_slider, decay_index=decay_slider))

# %% [markdown]
# ## 4. The phase change
#
# How does one feature's fate depend on its importance and its sparsity? Take the smallest
# interesting case: 2 features in 1 dimension. Feature 0 has importance 1; feature 1 has
# relative importance `r`, from {{phase.r_min:.1f}} to {{phase.r_max:.0f}}. Both are present
# with probability `p`, from {{phase.p_max:.0f}} down to {{phase.p_min:.2f}} (the paper's
# ranges). Each cell of the grid below is one (`r`, `p`) pair, and we classify what the model
# did with feature 1:
#
# - **not represented**: `‖W_1‖` is small (the model spends its one dimension on feature 0);
# - **dedicated dimension**: feature 1 has the dimension to itself (feature 0 is dropped);
# - **superposition**: both features are stored, antipodally, in the same dimension.
#
# With sparse features a single run sometimes settles in a worse arrangement (say, feature 1
# dropped although storing it would lower the loss). So each grid cell trains
# {{phase.n_restarts:.0f}} models from different random starts, and we keep the one with the
# lowest loss on a large fresh batch: the phase of the best solution found, not of one lucky or
# unlucky run. The paper does it differently: it trains ten models per cell, discards the one
# with the highest loss and averages over the rest. Keeping the best asks the question we care
# about here (which arrangement wins?) with fewer runs, which matters on a CPU.

# %%
seed_everything(1)
n_importance, n_density, n_restarts = full_or_fast((17, 17, 3), (6, 6, 2))
relative_importance = torch.logspace(-1, 1, n_importance)
density = torch.logspace(0, -2, n_density)
results.record("phase.n_restarts", n_restarts)
results.record("phase.r_min", relative_importance.min())
results.record("phase.r_max", relative_importance.max())
results.record("phase.p_max", density.max())
results.record("phase.p_min", density.min())
# Instances are laid out [restart, density, importance], flattened.
grid_importance = torch.stack(
    [torch.ones(n_density, n_importance), relative_importance.expand(n_density, n_importance)], dim=-1
).reshape(-1, 2)
grid_probability = density[:, None].expand(n_density, n_importance).reshape(-1, 1)
n_cells = n_density * n_importance
cfg_phase = ToyModelConfig(n_inst=n_restarts * n_cells, n_features=2, d_hidden=1)
model_phase = ToyModel(
    cfg_phase,
    feature_probability=grid_probability.repeat(n_restarts, 1),
    importance=grid_importance.repeat(n_restarts, 1),
    device=device,
)
_ = train_self_supervised(
    model_phase,
    steps=full_or_fast(1_000, 300),
    batch_size=512,
    lr=2e-2,
    lr_schedule=cosine_decay_lr,
    description="phase diagram",
)

# %% [markdown]
# ### Exercise-free step: keep the best restart, classify each cell
#
# `per_instance_loss` scores every instance on one large batch; `classify_extra_feature`
# turns an instance's `W` (shape `[1, 2]`) into one of the three phases, counting a feature as
# kept when its norm is above {{kept_norm}}. That threshold is generous: trained norms end up
# near 0 or near 1 ({{phase.frac_norms_near:.0%}} of them within {{phase.near:.1f}} of one or
# the other).

# %%
PHASES = ("not represented", "dedicated dimension", "superposition")


@torch.no_grad()
def per_instance_loss(model: ToyModel, batch_size: int = 50_000) -> Float[Tensor, " inst"]:
    """Each instance's importance-weighted squared error on one fresh batch."""
    batch = model.generate_batch(batch_size)
    return (model.importance * (batch - model(batch)).pow(2)).mean(dim=(0, 2))


def classify_extra_feature(W: Float[Tensor, "inst d_hidden=1 feats=2"], threshold: float = 0.5) -> Tensor:
    """0: feature 1 not represented; 1: feature 1 alone in the dimension; 2: both features, antipodally."""
    norms = W.detach().norm(dim=1)
    feature_0_kept, feature_1_kept = norms[:, 0] > threshold, norms[:, 1] > threshold
    phase = torch.zeros(W.shape[0], dtype=torch.long, device=W.device)
    phase[feature_1_kept & ~feature_0_kept] = 1
    phase[feature_1_kept & feature_0_kept] = 2
    return phase


# %%
restart_losses = per_instance_loss(model_phase).reshape(n_restarts, n_cells)
best_restart = restart_losses.argmin(dim=0)
W_best = model_phase.W.detach().reshape(n_restarts, n_cells, 1, 2)[best_restart, torch.arange(n_cells, device=device)]
phase = classify_extra_feature(W_best, KEPT_NORM).reshape(n_density, n_importance).cpu()
phase_colours = ["#d9d9d9", "#1f77b4", "#d62728"]
figure = go.Figure(
    go.Heatmap(
        z=phase.numpy(),
        x=relative_importance.numpy(),
        y=density.numpy(),
        zmin=-0.5,
        zmax=2.5,
        colorscale=[[i / 3 + offset, colour] for i, colour in enumerate(phase_colours) for offset in (0, 1 / 3)],
        colorbar={"tickvals": [0, 1, 2], "ticktext": list(PHASES)},
        hovertemplate="relative importance %{x:.2f}, p = %{y:.3f}: %{text}<extra></extra>",
        text=[[PHASES[c] for c in row] for row in phase.tolist()],
    )
)
figure.update_xaxes(type="log", title="relative importance of feature 1")
figure.update_yaxes(type="log", title="feature probability p (1 - sparsity)")
figure.update_layout(title="What happens to feature 1 (2 features, 1 dimension)", width=700, height=520)
figure.show()

# %%
# What the text counts (nothing is printed).
norms_best = W_best.norm(dim=1).cpu()
near = results.record("phase.near", 0.2)
results.record("phase.frac_norms_near", (torch.minimum(norms_best, (norms_best - 1).abs()) < near).float().mean())
every_restart = classify_extra_feature(model_phase.W, KEPT_NORM).reshape(n_restarts, n_density, n_importance).cpu()
bordered = F.pad(phase[None].float(), (1, 1, 1, 1), value=-1)[0]  # -1 outside the grid
neighbours = torch.stack([bordered[:-2, 1:-1], bordered[2:, 1:-1], bordered[1:-1, :-2], bordered[1:-1, 2:]])
isolated = (neighbours != phase).all(dim=0)
results.record("phase.n_cells", n_cells)
results.record("phase.n_isolated", isolated.sum())
results.record("phase.n_isolated_dropped", (isolated & (every_restart == 0).all(dim=0)).sum())
both_ends_superposed = (phase[:, 0] == 2) & (phase[:, -1] == 2)  # rows where r_min and r_max both superpose
if both_ends_superposed.any():
    p_wide = results.record("phase.p_wide", density[both_ends_superposed].max())
    results.record("phase.frac_sparse_superposition", (phase[density <= p_wide] == 2).float().mean())

# %% [markdown]
# **What to look for.** Three regions with sharp borders. With dense features (top rows) only
# importance decides: feature 1 is not represented when it matters less than feature 0, and
# takes the dimension (feature 0 is dropped) when it matters more. As features get sparser,
# the model stores *both*, antipodally, first where the importances are comparable and then
# over a widening range: from p = {{phase.p_wide:.2f}} down, superposition spans the whole grid,
# r = {{phase.r_min:.1f}} to {{phase.r_max:.0f}} ({{phase.frac_sparse_superposition:.0%}} of
# those cells). That is superposition, and the border where it appears is a phase change, not
# a gradual blend. {{phase.n_isolated:.0f}} of the {{phase.n_cells:.0f}} cells disagree with
# all their neighbours; in {{phase.n_isolated_dropped:.0f}} of them every restart dropped
# feature 1 although the cells around store both, so there all the runs got stuck.
#
# <details><summary>Question: why does superposition need sparsity here?</summary>
#
# Storing both features in one dimension means that when both are present, each corrupts
# the other's readout. With density `p` that happens a fraction `p²` of the time, while the
# benefit (representing feature 1 at all) is paid out a fraction `p` of the time. The ratio
# `p² / p = p` shrinks with sparsity, so at some sparsity the benefit wins.
# </details>

# %% [markdown]
# ## 5. A hundred features in twenty dimensions
#
# Two dimensions are easy to draw; real models have many. Here are 100 features in 20
# dimensions, importance decaying from 1 to {{nd.importance_min:.2f}} (the setting of the
# paper's companion code), at sparsities of our choosing. For each instance:
#
# - the heatmap is `WᵀW`: entry `(i, j)` is the dot product of features `i` and `j`. A
#   diagonal of ones and nothing else means "stored in orthogonal directions";
#   off-diagonal colour means interference;
# - the bars are each feature's norm `‖W_i‖` (is it represented?), coloured by how much it
#   shares its dimensions with others: `Σ_{j≠i} (Ŵ_i · W_j)²`, dark for a dimension of its
#   own and yellow for superposition.

# %%
seed_everything(2)
probabilities_nd = torch.tensor(full_or_fast([1.0, 0.3, 0.1, 0.03, 0.01], [1.0, 0.03]))
cfg_nd = ToyModelConfig(n_inst=len(probabilities_nd), n_features=100, d_hidden=20)
model_nd = ToyModel(
    cfg_nd,
    feature_probability=probabilities_nd[:, None],
    importance=100 ** -torch.linspace(0, 1, cfg_nd.n_features),
    device=device,
)
_ = train_self_supervised(
    model_nd, steps=full_or_fast(8_000, 300), lr=3e-3, lr_schedule=cosine_decay_lr, description="100 features in 20D"
)
W_nd = model_nd.W.detach().cpu()
kept_nd = W_nd.norm(dim=1) > KEPT_NORM  # [inst, feats]
unit_nd = F.normalize(W_nd, dim=1)
sharing_nd = einsum(unit_nd, W_nd, "inst d f1, inst d f2 -> inst f1 f2").pow(2).sum(-1) - W_nd.pow(2).sum(1)  # Σ_{j≠i}
results.record("nd.importance_min", model_nd.importance.min())
results.record("nd.dense_kept", kept_nd[0].sum())
results.record("nd.dense_kept_max_sharing", (sharing_nd[0] * kept_nd[0]).max())  # sharing is never negative
results.record("nd.sparsest_p", probabilities_nd[-1])
results.record("nd.sparsest_kept", kept_nd[-1].sum())
plot_features_in_Nd(
    model_nd.W,
    title="100 features in 20 dimensions",
    subplot_titles=[f"1 - S = {p:.2f}" for p in probabilities_nd.tolist()],
    row_height=450,
).show()

# %% [markdown]
# **What to look for.** Dense features (`1 - S = 1`): {{nd.dense_kept:.0f}} features, as many
# as there are dimensions, are represented (norm above {{kept_norm}}), each with a dimension of
# its own (a clean diagonal block, dark bars: no represented feature shares more than
# {{nd.dense_kept_max_sharing:.2f}}), and the others are dropped. As sparsity grows, more
# features get a non-zero norm, the heatmap fills with off-diagonal structure, and the bars
# turn yellow: at `1 - S = {{nd.sparsest_p:.2f}}` the model represents
# {{nd.sparsest_kept:.0f}} features in its 20 dimensions.
#
# <details><summary>Question: which features are dropped first, and why?</summary>
#
# The least important ones (highest index). The loss weights each feature's error by its
# importance, so when capacity is short the model gives up the features whose error costs
# least.
# </details>

# %% [markdown]
# ## 6. Correlated and anticorrelated features
#
# So far every feature was independent. Real features are not: some tend to occur together,
# some exclude each other. Write two data generators. Both take `feature_probability` of shape
# `[inst, pairs]` (one probability per pair) and return a float tensor
# `[batch, inst, 2 * pairs]` on the same device, where features `2k` and `2k + 1` form pair
# `k`. Magnitudes are uniform on [0, 1] and drawn independently for each feature; absent
# features are exactly 0. Every pair is drawn independently of every other pair, instance
# and example.
#
# ### Exercise 4: correlated pairs
#
# **Difficulty** ●●○○○ · **Importance** ●●○○○ · **Plan for** 15 minutes
#
# The two features of a pair are **always present together**: present with the pair's
# probability `p`, absent together otherwise.
#
# <details><summary>Hint 1: one presence draw per pair</summary>
#
# Decide presence once per pair, not per feature: a uniform draw of shape
# `[batch, inst, pairs]` compared with `feature_probability` (`[inst, pairs]`). The magnitudes
# are per feature: one draw of shape `[batch, inst, pairs, 2]`, the last axis being the two
# features of a pair.
# </details>
#
# <details><summary>Hint 2: from pairs to features</summary>
#
# Give the pair mask a trailing axis (`mask[..., None]`, `[batch, inst, pairs, 1]`) so that it
# broadcasts over both features of its pair, and combine it with the magnitudes. Then merge the
# last two axes (`.flatten(-2)`): pair `k` becomes features `2k` and `2k + 1`, as required.
# Concatenating all first features, then all second features, gives a different layout, which
# the check rejects. Make every tensor on `feature_probability.device`.
# </details>
#
# Stuck after the hints? The same cell in `solutions/01_toy_models.ipynb` has the answer.


# %% tags=["reference"]
def generate_correlated_features(
    batch_size: int, feature_probability: Float[Tensor, "inst pairs"]
) -> Float[Tensor, "batch inst 2*pairs"]:
    # BEGIN SOLUTION
    n_inst, n_pairs = feature_probability.shape
    device = feature_probability.device
    pair_present = torch.rand(batch_size, n_inst, n_pairs, device=device) < feature_probability
    magnitudes = torch.rand(batch_size, n_inst, n_pairs, 2, device=device)
    return (magnitudes * pair_present[..., None]).flatten(-2)
    # END SOLUTION


# %%
checks.test_generate_correlated_features(generate_correlated_features)

# %% [markdown]
# ### Exercise 5: anticorrelated pairs
#
# **Difficulty** ●●●○○ · **Importance** ●●○○○ · **Plan for** 20 minutes
#
# The two features of a pair are **never present together**, and each is still present with
# probability `p` (so `p ≤ 1/2`; the check uses values up to `p = 1/2` included). The paper
# sets this up differently: its pair is active with probability `1 - S` and then one of its
# two features, chosen at random, is present, so each feature is present only half as often
# as the pair. We keep `p` as each feature's own probability, the same meaning it has for
# independent and correlated features, so that the three kinds compare at equal `p`.
#
# <details><summary>Hint 1: first the pair, then which feature</summary>
#
# First decide whether the pair is active, then which one of its two features it is, with a
# fair coin. A feature is present when its pair is active *and* the coin picks it. What
# probability must "the pair is active" have so that each feature ends up with `p`?
# </details>
#
# <details><summary>Hint 2: the probabilities and the shapes</summary>
#
# The pair is active with probability `2p` (which is why `p ≤ 1/2`): a draw of shape
# `[batch, inst, pairs]` compared with `2 * feature_probability`. The coin is a second draw of
# the same shape, `< 0.5`; stacking it and its negation on a new last axis gives a
# `[batch, inst, pairs, 2]` mask with exactly one True per pair. Combine that with the active
# mask (given a trailing axis) and with magnitudes of shape `[batch, inst, pairs, 2]`, then
# merge the last two axes as in Exercise 4. Letting the second feature in only when the first
# is absent, with probability `p`, gives it `p(1 - p)`, not `p`.
# </details>
#
# Stuck after the hints? The same cell in `solutions/01_toy_models.ipynb` has the answer.


# %% tags=["reference"]
def generate_anticorrelated_features(
    batch_size: int, feature_probability: Float[Tensor, "inst pairs"]
) -> Float[Tensor, "batch inst 2*pairs"]:
    # BEGIN SOLUTION
    assert (feature_probability <= 0.5).all(), "anticorrelated pairs need p <= 1/2"
    n_inst, n_pairs = feature_probability.shape
    device = feature_probability.device
    pair_active = torch.rand(batch_size, n_inst, n_pairs, device=device) < 2 * feature_probability
    first_chosen = torch.rand(batch_size, n_inst, n_pairs, device=device) < 0.5
    which = torch.stack([first_chosen, ~first_chosen], dim=-1)
    magnitudes = torch.rand(batch_size, n_inst, n_pairs, 2, device=device)
    return (magnitudes * (pair_active[..., None] & which)).flatten(-2)
    # END SOLUTION


# %%
checks.test_generate_anticorrelated_features(generate_anticorrelated_features)

# %% [markdown]
# A model whose `generate_batch` puts correlated pairs first, then anticorrelated pairs, then
# independent features (given, using your two functions):


# %%
class CorrelatedToyModel(ToyModel):
    """Features: correlated pairs first, then anticorrelated pairs, then independent features.

    Each pair uses the probability of its first feature in `feature_probability`."""

    def generate_batch(self, batch_size: int) -> Float[Tensor, "batch inst feats"]:
        n_correlated = 2 * self.cfg.n_correlated_pairs
        n_paired = n_correlated + 2 * self.cfg.n_anticorrelated_pairs
        blocks = []
        if self.cfg.n_correlated_pairs:
            blocks.append(generate_correlated_features(batch_size, self.feature_probability[:, 0:n_correlated:2]))
        if self.cfg.n_anticorrelated_pairs:
            blocks.append(
                generate_anticorrelated_features(batch_size, self.feature_probability[:, n_correlated:n_paired:2])
            )
        if n_paired < self.cfg.n_features:
            blocks.append(super().generate_batch(batch_size)[..., n_paired:])
        return torch.cat(blocks, dim=-1)


# %% [markdown]
# Train two sets of models with 4 features in 2 dimensions: two correlated pairs, and two
# anticorrelated pairs, as in the paper. Colours mark pairs: the two shades of blue are one
# pair, the two shades of red the other. As in the phase diagram, each probability trains
# {{pairs.n_restarts:.0f}} models and keeps the one with the lowest loss.

# %%
seed_everything(3)
pair_colours = ["#1f77b4", "#9ecae1", "#d62728", "#fc9272"]  # pair 0: blues, pair 1: reds
pair_probabilities = {
    "correlated": torch.tensor(full_or_fast([0.4, 0.3, 0.06, 0.02], [0.4, 0.06])),
    "anticorrelated": torch.tensor(full_or_fast([0.45, 0.3, 0.2, 0.1], [0.45, 0.1])),
}
n_pair_restarts = results.record("pairs.n_restarts", full_or_fast(4, 2))
best_pair_W = {}
for name, probabilities in pair_probabilities.items():
    n_settings = len(probabilities)
    n_correlated, n_anticorrelated = (2, 0) if name == "correlated" else (0, 2)
    cfg_pairs = ToyModelConfig(
        n_inst=n_pair_restarts * n_settings,
        n_features=4,
        d_hidden=2,
        n_correlated_pairs=n_correlated,
        n_anticorrelated_pairs=n_anticorrelated,
    )
    model_pairs = CorrelatedToyModel(
        cfg_pairs, feature_probability=probabilities.repeat(n_pair_restarts)[:, None], device=device
    )
    _ = train_self_supervised(
        model_pairs, steps=full_or_fast(3_000, 300), lr=3e-3, lr_schedule=cosine_decay_lr, description=f"{name} pairs"
    )
    # As in the phase diagram: keep the restart with the lowest loss for each probability.
    best = per_instance_loss(model_pairs, 200_000).reshape(n_pair_restarts, n_settings).argmin(dim=0)
    best_pair_W[name] = model_pairs.W.detach().reshape(n_pair_restarts, n_settings, 2, 4)[
        best, torch.arange(n_settings, device=device)
    ]
    plot_features_in_2d(
        best_pair_W[name],
        colours=pair_colours,
        title=f"Two {name} pairs in 2D (pair 0 blue, pair 1 red)",
        subplot_titles=[f"p = {p:.2f}" for p in probabilities.tolist()],
    ).show()

# %%
# The cosines and norms the text quotes (nothing is printed). Probabilities run from dense to sparse.
for name, W_pairs in best_pair_W.items():
    unit_pairs = F.normalize(W_pairs.cpu(), dim=1)
    cosines = einsum(unit_pairs, unit_pairs, "s d f1, s d f2 -> s f1 f2")  # [settings, feats, feats]
    partners = cosines[:, [0, 2], [1, 3]]  # the cosine within each pair: [settings, pairs]
    # For each feature, the cosine with the most opposite feature of the other pair: [settings, feats]
    opposite = torch.cat([cosines[:, :2, 2:], cosines[:, 2:, :2]], dim=1).amin(dim=-1)
    half = len(pair_probabilities[name]) // 2  # the denser half of the settings, then the sparser half
    results.record(f"pairs.{name}.dense_p", pair_probabilities[name][:half])
    results.record(f"pairs.{name}.sparse_p", pair_probabilities[name][half:])
    results.record(f"pairs.{name}.partner_cos", partners.flatten())
    results.record(f"pairs.{name}.dense_partner_cos", partners[:half].flatten())
    results.record(f"pairs.{name}.sparse_partner_abs_cos", partners[half:].abs().flatten())
    results.record(f"pairs.{name}.dense_norms", W_pairs[:half].norm(dim=1).flatten())
    results.record(f"pairs.{name}.sparse_cross_cos", opposite[half:].flatten())

# %% [markdown]
# **What to look for.**
#
# - *Anticorrelated* pairs: the two features of a pair (the two blues, the two reds) sit
#   **antipodally** at every `p` (cosine between partners
#   {{pairs.anticorrelated.partner_cos:.2f}}, mean ± sd over pairs and `p`). They are never active together, so the
#   ReLU hides their interference completely, and the model reserves the cheap antipodal slot for exactly that partner.
# - *Correlated* pairs, sparse (`p` = {{pairs.correlated.sparse_p|range:.2f}}): the two
#   features of a pair sit at **right angles** (cosine within
#   {{pairs.correlated.sparse_partner_abs_cos|max:.2f}} of 0).
#   They are always active together, so any overlap between them would cost loss every time
#   the pair fires; each feature's antipodal partner is instead a feature of the *other* pair
#   (cosine at most {{pairs.correlated.sparse_cross_cos|max:.2f}}), which it rarely meets.
# - *Correlated* pairs, dense (`p` = {{pairs.correlated.dense_p|range:.1f}}): each pair collapses
#   onto **one direction** (cosine {{pairs.correlated.dense_partner_cos:.2f}}),
#   both features with norm {{pairs.correlated.dense_norms|mean:.2f}}, close to 1/√2. The pairs
#   now fire often, so the two pairs would often be active together and interfere if they
#   shared the plane; instead each pair's sum, its principal component, gets an axis to itself,
#   much as PCA would do. (The paper calls this the collapse of correlated features.)
#
# <details><summary>Question: why would superposition prefer anticorrelated features?</summary>
#
# Interference only costs loss when both features are active at once. Anticorrelated
# features never are, so an antipodal pair of them costs nothing: whenever one is active, the
# other's pre-activation is negative and the ReLU clips it. Correlated features always are
# active together, so superposing them costs the most.
# </details>
#
# ## Summary
#
# - When features are sparse, a model can represent more features than it has dimensions, by
#   storing them in almost-orthogonal directions and using the ReLU to clip interference:
#   **superposition**.
# - Whether a feature gets a dimension, shares one, or is dropped depends on its importance
#   and sparsity, with sharp phase boundaries.
# - Correlation changes the geometry: anticorrelated features go antipodal; correlated
#   features go orthogonal when sparse and merge into one direction when dense.
#
# Next, Part 2 gives the hidden layer a ReLU of its own, a *privileged basis*, and asks which
# neurons end up polysemantic.
