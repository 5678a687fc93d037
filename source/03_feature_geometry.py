# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Part 3: Feature geometry
#
# Part 1 showed features sharing dimensions as sparsity grows. How *much* of a dimension
# does each feature get? Elhage et al. define a feature's **dimensionality**
#
# $$D_i = \frac{\lVert W_i \rVert^2}{\sum_j \big(\hat W_i \cdot W_j\big)^2},$$
#
# where $W_i$ is feature $i$'s column of `W` and $\hat W_i$ its unit vector. The numerator
# says how strongly the feature is represented; the denominator how much it shares its
# direction with every feature, itself included. A feature with a dimension to itself has
# $D_i = 1$; two features in an antipodal pair have $D_i = 1/2$ each; three features on a
# triangle in a plane have $2/3$; and so on.
#
# **You will** write `compute_dimensionality`, then train models across many sparsities and
# see the dimensionalities stick to a few fractions rather than vary smoothly.
#
# **Time:** about 1 hour.

# %% tags=["workbook-setup"]

# %% tags=["reference"]
from einops import einsum
from jaxtyping import Float
from torch import Tensor

# %%
import plotly.graph_objects as go
import torch

import tests.part3_feature_geometry as checks
from part_utils.device import get_device
from part_utils.modes import FAST_MODE, full_or_fast
from part_utils.plotting import plot_features_in_Nd
from part_utils.reference.part1_toy_models import ToyModel, ToyModelConfig
from part_utils.seeding import seed_everything
from part_utils.training import cosine_decay_lr, train_self_supervised

device = get_device()
print(f"device: {device}, fast mode: {FAST_MODE}")

# %% [markdown]
# ### Exercise: `compute_dimensionality`
#
# **Difficulty** ●●●○○ · **Importance** ●●●○○ · **Plan for** 15 minutes
#
# Given `W [inst, d_hidden, feats]`, return `D [inst, feats]`. Features are the *columns*
# of each instance's `W` (normalise over `d_hidden`). The sum over `j` includes `j = i`.
# You may assume every column is non-zero: for a column of zeros $\hat W_i$ is 0/0 and so
# is $D_i$, and the check never passes one (a small epsilon such as 1e-8 in the normalisation
# is fine, but not needed). Leave `W` as it is: normalise into a new tensor, not in place.
#
# <details><summary>Hint 1: three pieces, each with its shape</summary>
#
# Compute the numerator, the unit vectors and the overlaps separately. The numerator
# `‖W_i‖²` sums `W²` over `d_hidden` (dim 1): `[inst, feats]`. The unit vectors divide each
# column by its norm, taken over dim 1 with `keepdim=True` (`[inst, 1, feats]`) so that it
# broadcasts back over `W`: `Ŵ` is `[inst, d_hidden, feats]`. The overlaps `Ŵ_i · W_j`, one
# for every pair of features, form an `[inst, feats, feats]` tensor.
# </details>
#
# <details><summary>Hint 2: the overlap matrix, and which axis to sum</summary>
#
# Give the two feature axes different names in the einsum, `Ŵ` first and `W` second:
# `"inst d_hidden feat_i, inst d_hidden feat_j -> inst feat_i feat_j"`, so that entry
# `[inst, i, j]` is `Ŵ_i · W_j`. (As a matmul, that is `Ŵᵀ W` per instance.) Square it and
# sum over `feat_j`, the last axis (`dim=-1`), `j = i` included: that leaves `[inst, feats]`,
# the denominator. Summing over the other axis gives `Σ_j (Ŵ_j · W_i)²`, which is not the
# same thing unless all norms are equal.
# </details>
#
# Stuck after the hints? The same cell in `solutions/03_feature_geometry.ipynb` has the answer.

# %% tags=["reference"]
def compute_dimensionality(W: Float[Tensor, "inst d_hidden feats"]) -> Float[Tensor, "inst feats"]:
    # BEGIN SOLUTION
    squared_norms = W.pow(2).sum(dim=1)  # [inst, feats]
    W_unit = W / W.norm(dim=1, keepdim=True)
    overlaps = einsum(W_unit, W, "inst d_hidden feat_i, inst d_hidden feat_j -> inst feat_i feat_j")
    return squared_norms / overlaps.pow(2).sum(dim=-1)
    # END SOLUTION


# %%
checks.test_compute_dimensionality(compute_dimensionality)

# %% [markdown]
# ## Dimensionality across sparsity
#
# Train 100 features in 10 dimensions, all equally important, for many feature
# probabilities `p` with `1/p` from 1 to 20 (`1/p = 1/(1 - S)`). Then plot every represented
# feature's dimensionality against `1/(1 - S)`, together with the model's overall
# *dimensions per feature*, `d_hidden / ‖W‖²_F`.

# %%
seed_everything(0)
n_inst_geometry = full_or_fast(12, 6)
inverse_density = torch.logspace(0.0, 1.3, n_inst_geometry)
cfg_geometry = ToyModelConfig(n_inst=n_inst_geometry, n_features=100, d_hidden=10)
geometry_model = ToyModel(cfg_geometry, feature_probability=(1 / inverse_density)[:, None], importance=1.0, device=device)
_ = train_self_supervised(
    geometry_model, steps=full_or_fast(3_200, 300), batch_size=512, lr=3e-3, lr_schedule=cosine_decay_lr, description="100 features, 10 dims"
)

# %%
STICKY_FRACTIONS = {"1": 1.0, "3/4": 3 / 4, "2/3": 2 / 3, "1/2": 1 / 2, "2/5": 2 / 5, "1/3": 1 / 3}

W_geometry = geometry_model.W.detach().cpu()
dimensionality = compute_dimensionality(W_geometry)
represented = W_geometry.norm(dim=1) > 0.5  # ignore features the model dropped
dims_per_feature = cfg_geometry.d_hidden / W_geometry.pow(2).sum(dim=(1, 2))

x_points = inverse_density[:, None].expand_as(dimensionality)[represented]
jitter = 1 + 0.04 * (torch.rand(x_points.shape) - 0.5)  # spread overlapping points a little
figure = go.Figure(
    [
        go.Scatter(
            x=(x_points * jitter).tolist(),
            y=dimensionality[represented].tolist(),
            mode="markers",
            marker={"size": 5, "opacity": 0.5, "color": "#1f77b4"},
            name="feature dimensionality",
        ),
        go.Scatter(x=inverse_density.tolist(), y=dims_per_feature.tolist(), mode="lines", line={"color": "black"}, name="dimensions per feature"),
    ]
)
for label, value in STICKY_FRACTIONS.items():
    figure.add_hline(y=value, line={"dash": "dot", "color": "#999", "width": 1}, annotation_text=label, annotation_position="right")
figure.update_layout(
    title="Feature dimensionality sticks to fractions",
    xaxis={"title": "1 / (1 - S)", "type": "log"},
    yaxis={"title": "dimensionality", "range": [0, 1.1]},
    height=480,
    width=900,
)
figure.show()

# %% [markdown]
# **What to look for.** The black line falls smoothly as features get sparser: more
# features share the 10 dimensions. The individual features do not: they cluster on
# horizontal lines. Around `1/(1 - S) ≈ 2 to 4` almost every represented feature sits at
# **1/2** (antipodal pairs); sparser still, features move to **2/5** (pentagons in a plane)
# and **1/3** and below. Near the dense end some features sit at **2/3** (triangles). At the
# very dense end, with all features equally important, the model spreads its dimensions over
# many weakly represented features, few of which pass our "represented" threshold. The
# fraction of features found on each line is printed below.
#
# <details><summary>Question: why fractions?</summary>
#
# Features organise into small sets that share a subspace among themselves and are
# orthogonal to everything else: `k` features arranged symmetrically in `m` dimensions each
# get `m/k`. An antipodal pair is 1 dimension for 2 features; a triangle 2 for 3; a pentagon
# 2 for 5; a tetrahedron 3 for 4. Intermediate values are unstable, so as sparsity changes
# the model jumps from one arrangement to the next, like a phase change.
# </details>

# %%
for label, value in STICKY_FRACTIONS.items():
    near = ((dimensionality[represented] - value).abs() < 0.03).float().mean().item()
    print(f"features within 0.03 of {label:>3}: {near:6.1%}")

# %% [markdown]
# ## The geometry behind the numbers
#
# `WᵀW` for three of the instances: antipodal pairs show as `-1` entries (red) off the
# diagonal; larger sets as blocks.

# %%
shown = [0, n_inst_geometry // 3, n_inst_geometry - 1]
plot_features_in_Nd(
    geometry_model.W[shown],
    title="Feature geometry at three sparsities (100 features, 10 dims)",
    subplot_titles=[f"1/(1 - S) = {inverse_density[i]:.1f}" for i in shown],
    row_height=450,
).show()

# %% [markdown]
# ## Summary
#
# - Dimensionality measures how much of a dimension a feature gets.
# - As sparsity varies, features do not share dimensions continuously: they snap to
#   arrangements with simple fractional dimensionalities, a small zoo of geometric shapes.
#
# Next, Part 4 turns the question round: given only the hidden vectors, can a sparse
# autoencoder find the features?

# %% [markdown]
# ## Bonus (optional): superposition, memorisation and double descent
#
# Everything so far trained on a fresh batch every step, so the model could never memorise
# anything. Anthropic's follow-up ("Superposition, Memorization, and Double Descent") asks
# what happens when the training set is *fixed*: `T` examples, seen again at every step.
#
# The setup here is a scaled-down version sized for a CPU: 200 features, only **2** hidden
# dimensions, each feature active with probability 0.02 (about 4 active features per input,
# each uniform on [0, 1]), and every input rescaled to unit length. The model is
# `h = W x`, `x' = ReLU(Wᵀh + b)`, trained full-batch on its `T` examples for 5,000 steps of
# AdamW (weight decay 0.01, learning rate 3e-3 with a short warm-up and cosine decay). We
# sweep `T` from 5 to 1,000, three seeds per `T`, and measure the loss on 4,000 *fresh*
# inputs. The code is in `part_utils/double_descent.py`; there is no exercise in this section.
#
# **Cost, and the switch.** Training the full sweep takes about a minute on one CPU core,
# so by default this section loads its saved result from
# `section_data/part3_double_descent.npz` (made by `python -m part_utils.double_descent`
# with exactly the code and settings below). Set `RUN_DOUBLE_DESCENT = True` to train it
# yourself (about 1 minute). In fast mode a tiny version trains instead (three values of
# `T`, one seed, 400 steps), just to exercise the code: its
# figures are not meaningful, and the description below is of the full sweep.

# %%
from plotly.subplots import make_subplots

from part_utils.double_descent import DoubleDescentConfig, load_sweep, run_sweep

RUN_DOUBLE_DESCENT = False  # True: train the full sweep here (about 1 minute) instead of loading the saved one

if FAST_MODE:
    dd_config = DoubleDescentConfig(steps=400)
    dd_sweep = run_sweep(sizes=(5, 50, 500), seeds=(0,), cfg=dd_config, geometry_sizes=(5, 500))
elif RUN_DOUBLE_DESCENT:
    dd_config = DoubleDescentConfig()
    dd_sweep = run_sweep(cfg=dd_config, verbose=True)
else:
    dd_sweep, dd_config = load_sweep()
# (Only the saved sweep's training time is printed: a live time would differ on every run.)
trained_or_loaded = "trained here" if FAST_MODE or RUN_DOUBLE_DESCENT else f"loaded (training took {dd_sweep.seconds:.0f} s)"
print(f"{len(dd_sweep.sizes)} training-set sizes x {len(dd_sweep.seeds)} seeds, {trained_or_loaded}")

# %% [markdown]
# First the losses. The dotted line is the loss of a model that always outputs zero (for a
# unit-length input it is 1; the line sits a little lower because about 2% of inputs have no
# active feature at all).

# %%
dd_sizes = list(dd_sweep.sizes)
zero_output_loss = 1 - (1 - dd_config.feature_probability) ** dd_config.n_features
figure = go.Figure()
for seed_index, seed in enumerate(dd_sweep.seeds):
    figure.add_scatter(
        x=dd_sizes,
        y=dd_sweep.test_loss[:, seed_index].tolist(),
        mode="markers",
        marker={"color": "#d62728", "size": 7, "opacity": 0.45},
        name="test loss, each seed",
        showlegend=seed_index == 0,
    )
figure.add_scatter(x=dd_sizes, y=dd_sweep.test_loss.mean(1).tolist(), mode="lines+markers", line={"color": "#d62728"}, name="test loss, mean")
figure.add_scatter(x=dd_sizes, y=dd_sweep.train_loss.mean(1).tolist(), mode="lines+markers", line={"color": "#1f77b4"}, name="train loss, mean")
figure.add_hline(y=zero_output_loss, line={"dash": "dot", "color": "#777"}, annotation_text="output zero", annotation_position="bottom right")
figure.update_layout(
    title="Test loss against training-set size (200 features, 2 dimensions)",
    xaxis={"title": "training examples T", "type": "log"},
    yaxis={"title": "loss per input (summed over features)"},
    height=450,
    width=850,
)
figure.show()
column_norms = dd_sweep.W.norm(dim=2)  # [sizes, seeds, feats]
for i, size in enumerate(dd_sizes):
    print(
        f"T = {size:>5}: train {dd_sweep.train_loss[i].mean():.3f}, test {dd_sweep.test_loss[i].mean():.3f}"
        f" | longest column of W {column_norms[i].amax(-1).mean():.2f},"
        f" columns longer than 0.5: {(column_norms[i] > 0.5).sum(-1).float().mean():.0f} (means over seeds)"
    )

# %% [markdown]
# **What to look for.** Training loss (blue) climbs with `T`: five examples can be stored
# almost perfectly in two dimensions, a thousand cannot. Test loss (red) does not fall
# steadily as `T` grows. With 5 examples it sits just below the zero-output line. For every
# `T` from 10 to 200 the mean is *above* that line, highest at `T = 100` (about 1.7, over
# one and a half times the line): the model is then worse on new inputs than a model that
# outputs nothing. From `T = 500` on it falls again, to about 0.95, below its value at
# `T = 5`. That rise and second fall is **double descent**. The curve is bumpy in the middle
# (`T = 50` is lower than its neighbours) and the seeds scatter widely near the peak, since
# the loss depends on which features happen to share training examples; but each seed's
# highest test loss is at `T = 100` or `200`, and each ends lower than it started.
#
# The printout shows what the model does with its weights. At `T = 5` and at `T ≥ 500` about
# a dozen columns of `W` or fewer are longer than 0.5, and none is much longer than 1; for
# `T` from 20 to 200, 50 to 80 columns are that long and the longest is about 2.5 to 3.5.
#
# The figures below show why: two different kinds of solution, one at each end.

# %%
small_size, large_size = dd_sweep.sizes[0], dd_sweep.sizes[-1]
geometry = make_subplots(
    rows=2,
    cols=2,
    subplot_titles=[
        f"T = {small_size}: training examples W x",
        f"T = {small_size}: features (columns of W)",
        f"T = {large_size}: training examples W x",
        f"T = {large_size}: features (columns of W)",
    ],
    horizontal_spacing=0.08,
    vertical_spacing=0.1,
)
for row, size in enumerate((small_size, large_size), start=1):
    points = {1: dd_sweep.example_hidden[size], 2: dd_sweep.W[dd_sizes.index(size), 0].T}  # first seed
    for col, vectors in points.items():
        for x, y in vectors.tolist():  # a faint line from the origin to every point
            geometry.add_scatter(x=[0, x], y=[0, y], mode="lines", line={"color": "#bbb", "width": 1}, showlegend=False, row=row, col=col)
        geometry.add_scatter(
            x=vectors[:, 0].tolist(),
            y=vectors[:, 1].tolist(),
            mode="markers",
            marker={"size": 6, "opacity": 0.6, "color": "#2ca02c" if col == 1 else "#9467bd"},
            showlegend=False,
            row=row,
            col=col,
        )
limit = 1.1 * max(float(v.abs().max()) for v in (*dd_sweep.example_hidden.values(), dd_sweep.W[:, 0]))
geometry.update_xaxes(range=[-limit, limit], zeroline=False)
geometry.update_yaxes(range=[-limit, limit], zeroline=False, scaleanchor="x")
geometry.update_layout(title="What the 2 hidden dimensions hold: memorising (top) vs generalising (bottom)", height=800, width=800)
geometry.show()


def describe_arrangement(vectors: torch.Tensor, threshold: float = 0.5) -> str:
    """How many vectors are longer than `threshold`, and the angles (degrees) of those directions."""
    long_ = vectors[vectors.norm(dim=1) > threshold]
    angles = sorted({round(a) for a in torch.rad2deg(torch.atan2(long_[:, 1], long_[:, 0])).tolist()})
    return f"{len(long_)} of {len(vectors)} longer than {threshold}; angles {angles}"


for size in (small_size, large_size):
    print(f"T = {size}: examples: {describe_arrangement(dd_sweep.example_hidden[size])}")
    print(f"T = {size}: features: {describe_arrangement(dd_sweep.W[dd_sizes.index(size), 0].T)}")

# %% [markdown]
# **What to look for** (first seed of the full sweep).
#
# - **`T = 5`, memorising.** The five training examples' hidden vectors (top left) sit
#   close to the corners of a regular pentagon, about 72° apart, all of similar length. The
#   features (top right) do *not* form a polygon of their own: a dozen or so point along
#   those same five directions, two or three per example (each along the direction of the
#   example it occurs in), and the other features are close to zero. The model has stored the
#   *examples* in superposition; a feature is represented only as "part of example k". A
#   fresh input mixes features from different examples, or features the model never saw, so
#   test loss is no better than outputting zero.
# - **`T = 1000`, generalising.** Now the *features* form the polygon: six columns of `W` are
#   long, at the corners of a hexagon (60° apart), and all the others have shrunk to near
#   zero. The training examples (bottom left) are no longer arranged: about nine in ten are
#   shorter than 0.5, and most of the rest lie along the six feature directions, because an example's
#   hidden vector is the sum of its active features' columns. This solution works for any
#   input, so test loss is close to training loss.
# - **In between** the model is caught between the two: too many examples to store each as
#   a corner of a polygon, too few for a handful of features to pay off. It keeps many long
#   feature columns (the printout above), and on a new input those produce large, wrong
#   outputs: the test-loss peak.
#
# The angle printout above shows the same thing in numbers. The original paper found this
# with 10,000 features and far longer training; the switch from storing examples to storing
# features, and the test-loss peak where it happens, survive the shrinking.
