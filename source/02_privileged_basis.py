# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Part 2: Superposition in a privileged basis
#
# In Part 1 the hidden layer was linear, so only *directions* in it meant anything: rotate
# the hidden space and the model is the same. Real networks apply a nonlinearity to each
# neuron separately, and that singles out the neuron basis: it is **privileged**. Now it
# makes sense to ask what each *neuron* represents. A neuron that responds to one feature is
# **monosemantic**; one that responds to several is **polysemantic**.
#
# **You will**
# - give the hidden layer a ReLU (`NeuronModel.forward`) and see features align with neurons;
# - build a model that must *compute* a function, the absolute value, rather than just store
#   its inputs (`NeuronComputationModel`: `forward`, `generate_batch`, `calculate_loss`);
# - watch neurons become polysemantic as features get sparser.
#
# **Time:** about {{=1.5}} hours. Exercises and checks work as in Part 1.

# %% tags=["workbook-setup"]

# %% tags=["reference"]
from typing import Any

import torch
import torch.nn.functional as F
from einops import einsum
from jaxtyping import Float
from torch import Tensor, nn

from part_utils.methods import add_to_class
from part_utils.reference.part1_toy_models import ToyModel, ToyModelConfig

# %%
import tests.part2_privileged_basis as checks
from part_utils.device import get_device
from part_utils.modes import FAST_MODE, full_or_fast
from part_utils.plotting.neurons import plot_features_in_neurons
from part_utils.results import Results
from part_utils.seeding import seed_everything
from part_utils.training import cosine_decay_lr, train_self_supervised

device = get_device()
print(f"device: {device}, fast mode: {FAST_MODE}")
results = Results(part=2)  # the numbers the text quotes, recorded by full-mode runs (part_utils/results.py)

# %% [markdown]
# ## 1. A ReLU on the hidden layer
#
# `NeuronModel` is Part 1's `ToyModel` with one change: `h = ReLU(W x)`. The output is
# still `x' = ReLU(Wᵀ h + b_final)`. Shapes as before: `W [inst, d_hidden, feats]`, a batch
# `[batch, inst, feats]`.
#
# ### Exercise 1: `NeuronModel.forward`
#
# **Difficulty** ●○○○○ · **Importance** ●●●○○ · **Plan for** 5 minutes
#
# Write the forward pass, for every instance independently. As in Part 1, the check
# backpropagates through your output into `W` and `b_final`, and your code must leave
# `features` and the parameters as they are. The class inherits everything else, including
# Part 1's `forward`, until this cell attaches yours.
#
# <details><summary>Hint 1: start from Part 1's forward</summary>
#
# This is Part 1's `forward` with one more ReLU. Compute the hidden pre-activation `W x`,
# shape `[batch, inst, d_hidden]`, apply the ReLU to it, and read the result out exactly as in
# Part 1.
# </details>
#
# <details><summary>Hint 2: where the two ReLUs go</summary>
#
# The same two einsums as in Part 1, with the same `W`: the first sums over `feats` and gives
# `[batch, inst, d_hidden]`, which goes through the first ReLU; the second sums over
# `d_hidden` and gives `[batch, inst, feats]`. Add `b_final` to that and only then apply the
# second ReLU: two ReLUs in all, with the bias inside the second. If the check says the method
# is still Part 1's, run this cell (with its `@add_to_class(NeuronModel)` line) first.
# </details>
#
# Stuck after the hints? The same cell in `solutions/02_privileged_basis.ipynb` has the answer.


# %% tags=["reference"]
class NeuronModel(ToyModel):
    """A toy model whose hidden layer has a ReLU: its neurons form a privileged basis."""


@add_to_class(NeuronModel)
def forward(self, features: Float[Tensor, "batch inst feats"]) -> Float[Tensor, "batch inst feats"]:
    # BEGIN SOLUTION
    hidden = F.relu(einsum(self.W, features, "inst d_hidden feats, batch inst feats -> batch inst d_hidden"))
    out = einsum(self.W, hidden, "inst d_hidden feats, batch inst d_hidden -> batch inst feats")
    return F.relu(out + self.b_final)
    # END SOLUTION


# %%
checks.test_neuron_model_forward(NeuronModel)

# %% [markdown]
# Train {{neurons.n_inst:.0f}} instances with 10 features and 5 neurons, importance
# `{{neurons.importance_decay}} ** i`, from dense features to very sparse ones: the paper's
# setting. The paper trained a thousand models per sparsity and showed the one with the lowest
# loss; we train one per sparsity, so expect a rougher version of its picture. Each row of the
# figure is one instance; each bar is one neuron, stacked from the weights it gives each
# feature (colour: importance, yellow the most important). Positive weights stack up, negative
# ones down.

# %%
seed_everything(0)
sparsities = torch.tensor([0.0, 0.7, 0.9, 0.97, 0.99, 0.997, 0.999])
cfg_neurons = ToyModelConfig(n_inst=results.record("neurons.n_inst", len(sparsities)), n_features=10, d_hidden=5)
importance_neurons = results.record("neurons.importance_decay", 0.75) ** torch.arange(cfg_neurons.n_features)
neuron_model = NeuronModel(
    cfg_neurons, feature_probability=(1 - sparsities)[:, None], importance=importance_neurons, device=device
)
_ = train_self_supervised(
    neuron_model, steps=full_or_fast(10_000, 500), lr=5e-3, lr_schedule=cosine_decay_lr, description="neuron model"
)
plot_features_in_neurons(
    neuron_model.W,
    colours=importance_neurons,
    title="Which features each neuron reads (10 features, 5 neurons)",
    subplot_titles=[f"S = {s:.3f}" for s in sparsities.tolist()],
).show()

# %%
# What the text counts (nothing is printed): a neuron reads a feature when that weight is at
# least half its largest weight; a feature is represented when its column of W is longer than KEPT_NORM.
KEPT_NORM = results.record("kept_norm", 0.5)
W_neurons = neuron_model.W.detach().cpu()  # [inst, neurons, feats]
reads = W_neurons >= 0.5 * W_neurons.amax(dim=-1, keepdim=True).clamp_min(1e-6)
polysemantic = reads.sum(dim=-1) > 1  # [inst, neurons]
represented = W_neurons.norm(dim=1) > KEPT_NORM  # [inst, feats]
results.record("neurons.dense_polysemantic", polysemantic[0].sum())
results.record("neurons.dense_represented", represented[0].sum())
results.record("neurons.dense_represented_last", (represented[0] * torch.arange(cfg_neurons.n_features)).max())
results.record("neurons.represented", represented.sum(dim=-1))
results.record("neurons.sparsest_polysemantic", polysemantic[-1].sum())

# %% [markdown]
# **What to look for.** Dense features (top): five neurons, five features, one each: every
# bar is a single colour, the {{neurons.dense_represented:.0f}} most important features
# (features 0 to {{neurons.dense_represented_last:.0f}}), and the rest are dropped. As sparsity
# grows, bars start mixing colours: neurons become **polysemantic**, each reading several
# features, and more features are represented in total. Counting a neuron as polysemantic when
# a second feature's weight reaches half its largest one, {{neurons.dense_polysemantic:.0f}} of
# the 5 are polysemantic with dense features and {{neurons.sparsest_polysemantic:.0f}} at the
# sparsest. The
# features with a column longer than {{kept_norm}} number {{neurons.dense_represented:.0f}} of
# 10 with dense features and up to {{neurons.represented|max:.0f}} with sparse ones. Read mostly the
# part above zero: that is what makes a neuron fire. The weights are tied, so a negative weight
# also means the neuron writes *negatively* into that feature's output, where the output ReLU
# clips it: negative weights keep a neuron's firing from leaking into features it does not read.
#
# <details><summary>Question: why do features align with neurons at all?</summary>
#
# With dense features the model wants each feature in a direction orthogonal to every other
# (no interference), and it wants the hidden ReLU to leave each feature intact, which needs
# the feature's weights to be non-negative on every neuron (a negative component is clipped
# away). Directions that are both orthogonal and non-negative cannot share a neuron: their dot
# product is a sum of non-negative terms, zero only if no neuron carries both. So each feature
# it keeps gets neurons of its own: here five features, one neuron each. Without the
# hidden ReLU any rotation of that solution would do as well: the basis is privileged because
# the nonlinearity acts neuron by neuron.
# </details>
#
# ## 2. A model that computes
#
# Storing features is not the whole story: networks compute. `NeuronComputationModel` must
# output the **absolute value** of each input feature:
#
# - inputs: each feature present with probability `p`, with a value uniform on **[-1, 1]**
#   (absent features are 0);
# - `h = ReLU(W1 x)`, `x' = ReLU(W2 h + b_final)`, with separate weights
#   `W1 [inst, d_hidden, feats]` and `W2 [inst, feats, d_hidden]`;
# - loss: the importance-weighted squared error between `x'` and `|x|`, averaged over batch
#   and features, summed over instances.
#
# A ReLU network computes `|x| = ReLU(x) + ReLU(-x)` with two neurons per feature. The
# question is what it does when it has fewer neurons than that.


# %% tags=["reference"]
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


# %% [markdown]
# ### Exercise 2: `forward`
#
# **Difficulty** ●●○○○ · **Importance** ●●●○○ · **Plan for** 10 minutes
#
# `h = ReLU(W1 x)` and `x' = ReLU(W2 h + b_final)`, per instance: `W1` reads the input,
# `W2` writes the output, and no absolute value appears anywhere (computing it is the
# model's job). This model has no `self.W`.
#
# <details><summary>Hint 1: two layers, each with its own weights</summary>
#
# The structure is `NeuronModel.forward`'s, but the read-in uses `W1` and the read-out `W2`.
# Compute `h = ReLU(W1 x)`, shape `[batch, inst, d_hidden]`, first; then the output from `h`.
# </details>
#
# <details><summary>Hint 2: the axes of W2</summary>
#
# `W2` is `[inst, feats, d_hidden]`: its axes come in the opposite order to `W1`'s, so name
# them that way in the einsum, `inst feats d_hidden`, and sum over `d_hidden` with `h`
# (`batch inst d_hidden`) to get `batch inst feats`. The read-out is `W2`, not `W1`
# transposed as in Part 1. Feed `features` in as they are, negative values included, and keep
# `b_final` inside the output ReLU.
# </details>
#
# Stuck after the hints? The same cell in `solutions/02_privileged_basis.ipynb` has the answer.


# %% tags=["reference"]
@add_to_class(NeuronComputationModel)
def forward(self, features: Float[Tensor, "batch inst feats"]) -> Float[Tensor, "batch inst feats"]:
    # BEGIN SOLUTION
    hidden = F.relu(einsum(self.W1, features, "inst d_hidden feats, batch inst feats -> batch inst d_hidden"))
    out = einsum(self.W2, hidden, "inst feats d_hidden, batch inst d_hidden -> batch inst feats")
    return F.relu(out + self.b_final)
    # END SOLUTION


# %%
checks.test_computation_forward(NeuronComputationModel)

# %% [markdown]
# ### Exercise 3: `generate_batch`
#
# **Difficulty** ●●○○○ · **Importance** ●●○○○ · **Plan for** 10 minutes
#
# Like Part 1: in every example, each feature of each instance is present with probability
# `self.feature_probability[inst, feat]`, independently of every other example, instance and
# feature, and an absent feature is exactly 0. A present feature's value is uniform on
# **[-1, 1]**, drawn independently for each. Return a float tensor `[batch, inst, feats]` on
# the model's device (`self.b_final.device`: there is no `self.W` here), a fresh sample on
# every call.
#
# <details><summary>Hint 1: presence as in Part 1, then signed values</summary>
#
# Build the presence mask exactly as in Part 1: a uniform draw of shape `[batch, inst, feats]`
# compared with `self.feature_probability`, on `self.b_final.device`. Then make the values
# with a second draw of the same shape, and keep them only where the mask is True.
# </details>
#
# <details><summary>Hint 2: from [0, 1) to [-1, 1)</summary>
#
# `torch.rand` is uniform on [0, 1), so `2 * u - 1` is uniform on [-1, 1). Shift first and
# apply the mask afterwards (mind the brackets): a masked value must be exactly 0, not -1.
# Neither `torch.randn` (unbounded) nor `torch.rand(...) - 0.5` (half the range) will do. If
# you reuse the presence draw `u < p` instead, its value is `2 * u / p - 1`.
# </details>
#
# Stuck after the hints? The same cell in `solutions/02_privileged_basis.ipynb` has the answer.


# %% tags=["reference"]
@add_to_class(NeuronComputationModel)
def generate_batch(self, batch_size: int) -> Float[Tensor, "batch inst feats"]:
    # BEGIN SOLUTION
    shape = (batch_size, self.cfg.n_inst, self.cfg.n_features)
    present = torch.rand(shape, device=self.b_final.device) < self.feature_probability
    values = 2 * torch.rand(shape, device=self.b_final.device) - 1
    return values * present
    # END SOLUTION


# %%
checks.test_computation_generate_batch(NeuronComputationModel)

# %% [markdown]
# ### Exercise 4: `calculate_loss`
#
# **Difficulty** ●○○○○ · **Importance** ●●○○○ · **Plan for** 5 minutes
#
# The target is `|x|`, not `x`:
#
# $$L = \sum_{\text{inst}} \; \frac{1}{B \cdot F} \sum_{b, f}
# I_{\text{inst}, f}\,\big(|x_{b,\text{inst},f}| - x'_{b,\text{inst},f}\big)^2,$$
#
# where `batch` is `x` and `out` is the model's output `x'`. Return a single-number tensor
# that training can backpropagate through.
#
# <details><summary>Hint 1: Part 1's loss with a new target</summary>
#
# Compute the target `|x|` from `batch` (the second argument; `out` is the first) first. The
# rest is Part 1's `calculate_loss`, with the target in place of `batch`.
# </details>
#
# <details><summary>Hint 2: the shapes and the reductions</summary>
#
# The squared difference between the target and `out`, weighted by `self.importance`
# (`[inst, feats]`, broadcast over the batch), has shape `[batch, inst, feats]`. Average it over
# `dim=(0, 2)`, the batch and the features, which leaves `[inst]`, then sum that into one
# number. The target is `batch.abs()`, not `F.relu(batch)`: a negative input has a positive
# absolute value.
# </details>
#
# Stuck after the hints? The same cell in `solutions/02_privileged_basis.ipynb` has the answer.


# %% tags=["reference"]
@add_to_class(NeuronComputationModel)
def calculate_loss(
    self, out: Float[Tensor, "batch inst feats"], batch: Float[Tensor, "batch inst feats"]
) -> Float[Tensor, ""]:
    # BEGIN SOLUTION
    return (self.importance * (batch.abs() - out).pow(2)).mean(dim=(0, 2)).sum()
    # END SOLUTION


# %%
checks.test_computation_calculate_loss(NeuronComputationModel)

# %% [markdown]
# Train 100 features with 40 neurons, importance `{{computation.importance_decay}} ** i`, as in
# the paper, at three of its sparsities. The plots show `W1`: for each neuron, which inputs it
# reads, and with which sign. We show the 10 most important features in colour and the rest in
# grey, and sort neurons by the feature they read most.

# %%
seed_everything(1)
computation_sparsities = torch.tensor(full_or_fast([0.0, 0.9, 0.99], [0.0, 0.99]))
cfg_computation = ToyModelConfig(n_inst=len(computation_sparsities), n_features=100, d_hidden=40)
importance_computation = results.record("computation.importance_decay", 0.8) ** torch.arange(cfg_computation.n_features)
computation_model = NeuronComputationModel(
    cfg_computation,
    feature_probability=(1 - computation_sparsities)[:, None],
    importance=importance_computation,
    device=device,
)
_ = train_self_supervised(
    computation_model, steps=full_or_fast(4_000, 400), lr=3e-3, lr_schedule=cosine_decay_lr, description="computing |x|"
)


# %%
def sorted_by_strongest_feature(W1: Float[Tensor, "inst d_hidden feats"], n_shown: int = 10) -> Tensor:
    """The first `n_shown` features of W1, with each instance's neurons sorted by their strongest feature."""
    shown = W1.detach()[..., :n_shown]
    order = shown.abs().argmax(dim=-1).argsort(dim=-1)  # [inst, d_hidden]
    return torch.gather(shown, 1, order[..., None].expand_as(shown))


plot_features_in_neurons(
    sorted_by_strongest_feature(computation_model.W1),
    colours=importance_computation[:10],
    title="Computing |x|: the 10 most important features in W1 (neurons sorted)",
    subplot_titles=[f"S = {s:.2f}" for s in computation_sparsities.tolist()],
    row_height=230,
).show()


# %%
@torch.no_grad()
def error_by_sign(model: NeuronComputationModel, batch_size: int = 50_000) -> Float[Tensor, "inst feats 2"]:
    """Each feature's squared error on |x| as a fraction of E[x²], for positive and for negative inputs apart."""
    batch = model.generate_batch(batch_size)
    error = (model(batch) - batch.abs()).pow(2)
    sides = [batch > 0, batch < 0]
    return torch.stack([(error * side).sum(0) / (batch.pow(2) * side).sum(0).clamp_min(1e-9) for side in sides], dim=-1)


# What the text counts (nothing is printed). A neuron is monosemantic when no second feature's
# weight reaches half its largest; a side of |x_i| is computed when its error is under a tenth of
# E[x²] (a constant output, the bias, does no better than a quarter).
W1 = computation_model.W1.detach().cpu()
reads_computation = W1.abs() >= 0.5 * W1.abs().amax(dim=-1, keepdim=True).clamp_min(1e-6)
monosemantic = reads_computation.sum(dim=-1) == 1  # [inst, neurons]
computed = error_by_sign(computation_model).cpu() < 0.1  # [inst, feats, sign]
for s, mono, sides in zip(computation_sparsities.tolist(), monosemantic, computed):
    results.record(f"computation.S{s:g}.monosemantic", mono.sum())
    results.record(f"computation.S{s:g}.both_sides", sides.all(dim=-1).sum())
    results.record(f"computation.S{s:g}.one_side", (sides.sum(dim=-1) == 1).sum())

# %% [markdown]
# **What to look for.** Dense inputs (top): all {{computation.S0.monosemantic:.0f}} neurons
# are monosemantic, and they come in *pairs*, one reading `+x_i` and one reading `-x_i` (a bar
# up and a bar down of the same colour): that is `|x| = ReLU(x) + ReLU(-x)`. The
# {{computation.S0.both_sides:.0f}} most important features are computed exactly this way, the
# top ones with more than two neurons (duplicates, which add nothing: gradient descent did not
# move them to other features). With sparse inputs the neurons mix several features: only
# {{computation.S0.9.monosemantic:.0f}} neurons stay monosemantic at `S = 0.9` and
# {{computation.S0.99.monosemantic:.0f}} at `S = 0.99`, and more features get a neuron. But
# check what they compute (the counts come from `error_by_sign`, on fresh inputs): at
# `S = 0.9`, {{computation.S0.9.one_side:.0f}} features get one side of `|x_i|` right,
# `ReLU(x_i)` or `ReLU(-x_i)`, and output 0 for the other, while
# {{computation.S0.9.both_sides:.0f}} get both; at `S = 0.99`,
# {{computation.S0.99.one_side:.0f}} and {{computation.S0.99.both_sides:.0f}}. The weights
# alone would not tell you that: a neuron reading `x_i` is not yet a neuron computing `|x_i|`.
#
# <details><summary>Question: why does sparsity make polysemanticity cheap here too?</summary>
#
# A neuron that reads two features gives a wrong answer only when both are present at once,
# which happens with probability about `p²`. When `p` is small, covering an extra feature
# (worth about `p` of loss) is worth the rare collision.
# </details>
#
# ## Summary
#
# - A per-neuron nonlinearity privileges the neuron basis: it becomes meaningful to ask what
#   each neuron represents.
# - Dense features: monosemantic neurons. Sparse features: superposition returns, now visible
#   as polysemantic neurons.
# - The same holds for models that compute: the absolute-value model uses neuron pairs with
#   dense inputs and shares neurons when features are sparse, where our runs compute most
#   features only on one side. Measure what a model computes, not just what its weights read.
#
# Next, Part 3 measures how much of a dimension each feature gets.
