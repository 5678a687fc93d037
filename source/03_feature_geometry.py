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
from part_utils.results import Results
from part_utils.seeding import seed_everything
from part_utils.training import cosine_decay_lr, train_self_supervised

device = get_device()
print(f"device: {device}, fast mode: {FAST_MODE}")
results = Results(part=3)  # the numbers the text quotes, recorded by full-mode runs (part_utils/results.py)

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
# Train 100 features in 10 dimensions, all equally important, for
# {{geometry.n_inst:.0f}} feature probabilities `p` with `1/p` from {{geometry.inv_p_min:.0f}}
# to {{geometry.inv_p_max:.0f}} (`1/p = 1/(1 - S)`). Then plot every represented feature's
# dimensionality against `1/(1 - S)`, together with the model's overall *dimensions per
# feature*, `d_hidden / ‖W‖²_F`.
#
# **Smaller than the paper.** The paper uses 400 features in 30 dimensions and trains far
# longer; we train {{geometry.steps:,.0f}} steps of {{geometry.batch_size:.0f}} examples, to
# keep it short on a CPU. The paper reports that the numbers of features and
# dimensions matter little as long as there are many more features than dimensions; our much
# shorter training may matter more. Only some of the paper's fractions show up cleanly here, as
# the counts below the figure say.

# %%
seed_everything(0)
n_inst_geometry = results.record("geometry.n_inst", full_or_fast(12, 6))
inverse_density = torch.logspace(0.0, 1.3, n_inst_geometry)
results.record("geometry.inv_p_min", inverse_density.min())
results.record("geometry.inv_p_max", inverse_density.max())
cfg_geometry = ToyModelConfig(n_inst=n_inst_geometry, n_features=100, d_hidden=10)
geometry_model = ToyModel(
    cfg_geometry, feature_probability=(1 / inverse_density)[:, None], importance=1.0, device=device
)
_ = train_self_supervised(
    geometry_model,
    steps=results.record("geometry.steps", full_or_fast(3_200, 300)),
    batch_size=results.record("geometry.batch_size", 512),
    lr=3e-3,
    lr_schedule=cosine_decay_lr,
    description="100 features, 10 dims",
)

# %%
STICKY_FRACTIONS = {"1": 1.0, "3/4": 3 / 4, "2/3": 2 / 3, "1/2": 1 / 2, "2/5": 2 / 5, "1/3": 1 / 3}

W_geometry = geometry_model.W.detach().cpu()
dimensionality = compute_dimensionality(W_geometry)
represented = W_geometry.norm(dim=1) > results.record("kept_norm", 0.5)  # ignore features the model dropped
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
        go.Scatter(
            x=inverse_density.tolist(),
            y=dims_per_feature.tolist(),
            mode="lines",
            line={"color": "black"},
            name="dimensions per feature",
        ),
    ]
)
for label, value in STICKY_FRACTIONS.items():
    figure.add_hline(
        y=value, line={"dash": "dot", "color": "#999", "width": 1}, annotation_text=label, annotation_position="right"
    )
figure.update_layout(
    title="Feature dimensionality sticks to fractions",
    xaxis={"title": "1 / (1 - S)", "type": "log"},
    yaxis={"title": "dimensionality", "range": [0, 1.1]},
    height=480,
    width=900,
)
figure.show()

# %% [markdown]
# **What to look for.** The black line falls as features get sparser: more features share
# the 10 dimensions. The individual features do not spread out evenly: they cluster on
# horizontal lines. At `1/(1 - S)` = {{geometry.half_inv_p|range:.1f}},
# {{geometry.half_share|range:.0%}} of the represented features sit at **1/2**
# (antipodal pairs), and the black line reads {{geometry.half_dims_per_feature|range:.2f}}
# there. Sparser still, features move to **2/5**: at `1/(1 - S)` =
# {{geometry.pentagon_inv_p:.1f}}, {{geometry.pentagon_features:.0f}} features sit there
# (pentagons in a plane), beside the remaining pairs. Beyond that the values fall further, all
# below 1/3 from `1/(1 - S)` = {{geometry.below_third_inv_p:.1f}} on, bunched within each model
# but at values our six lines do not mark (from {{geometry.sparsest_D|min:.2f}} to
# {{geometry.sparsest_D|max:.2f}} at the sparsest). Near the dense end the points scatter
# between the lines (only {{geometry.n_two_thirds:.0f}} features sit near 2/3, the triangles'
# value): the model is between arrangements there. At the very dense end, with all features
# equally important, the model spreads its dimensions over many weakly represented features:
# at `1/(1 - S) = 1`, ‖W‖²_F is {{geometry.dense_frobenius:.1f}} (about one feature's worth
# per dimension), but only {{geometry.dense_kept:.0f}} features pass our "represented"
# threshold of a norm above {{kept_norm}}. (The paper notes that in the dense regime the
# features' own directions are not preferred, so no line at 1 shows there either.) The
# fraction of features found on each line is printed below.
#
# <details><summary>Question: why fractions?</summary>
#
# Features organise into small sets that share a subspace among themselves and are
# orthogonal to everything else: `k` features arranged symmetrically in `m` dimensions each
# get `m/k`. An antipodal pair is 1 dimension for 2 features; a triangle 2 for 3; a pentagon
# 2 for 5; a tetrahedron 3 for 4. These symmetric arrangements share interference evenly and
# waste little, so the model tends to jump from one to the next as sparsity changes, rather
# than passing smoothly through the values in between: the paper compares it to a phase change.
# </details>

# %%
tolerance = 0.03
on_line = {
    label: ((dimensionality - value).abs() < tolerance) & represented for label, value in STICKY_FRACTIONS.items()
}
for label, near in on_line.items():
    print(f"features within {tolerance} of {label:>3}: {near.sum() / represented.sum():6.1%}")

# For the text (nothing more is printed): where the features sit, model by model.
share_half = on_line["1/2"].sum(dim=1) / represented.sum(dim=1).clamp_min(1)
mostly_half = share_half >= 0.9
pentagon_count = (((dimensionality - 2 / 5).abs() < 0.01) & represented).sum(dim=1)  # tighter: 3/8 is only 0.025 away
results.record("geometry.n_two_thirds", on_line["2/3"].sum())
results.record("geometry.pentagon_features", pentagon_count.max())
results.record("geometry.pentagon_inv_p", inverse_density[pentagon_count.argmax()])
results.record("geometry.dense_kept", represented[0].sum())
results.record("geometry.dense_frobenius", W_geometry[0].pow(2).sum())
if mostly_half.any() and represented[-1].any():
    results.record("geometry.half_inv_p", inverse_density[mostly_half])
    results.record("geometry.half_share", share_half[mostly_half])
    results.record("geometry.half_dims_per_feature", dims_per_feature[mostly_half])
below_third = ((dimensionality < 1 / 3) | ~represented).all(dim=1)  # every represented feature of the model
below_third_from_here_on = below_third.flip(0).cumprod(0).flip(0).bool()  # this model and every sparser one
if below_third_from_here_on.any():
    results.record("geometry.below_third_inv_p", inverse_density[below_third_from_here_on].min())
    results.record("geometry.sparsest_D", dimensionality[-1][represented[-1]])

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
# - As sparsity varies, features do not share dimensions continuously: they tend to snap to
#   arrangements with simple fractional dimensionalities, a small zoo of geometric shapes
#   (here antipodal pairs at 1/2 and pentagons at 2/5 show most clearly).
#
# Next, Part 4 turns the question round: given only the hidden vectors, can a sparse
# autoencoder find the features?

# %% [markdown]
# ## Bonus (optional): superposition, memorisation and double descent
#
# Everything so far trained on a fresh batch every step, so the model could never memorise
# anything. Anthropic's follow-up (Henighan et al. 2023, "Superposition, Memorization, and
# Double Descent") asks what happens when the training set is *fixed*: `T` examples, seen
# again at every step.
#
# The setup here is a scaled-down version sized for a CPU: {{dd.n_features:.0f}} features, only
# **{{dd.d_hidden:.0f}}** hidden dimensions, each feature active with probability
# {{dd.feature_probability:.2f}} (about {{dd.active_per_input:.0f}} active features per input,
# each uniform on [0, 1]), and every input rescaled to unit length. (The paper has
# {{=10,000}} features, each active with probability {{=0.001}}, also in 2 dimensions and also
# rescaled.) The model is `h = W x`, `x' = ReLU(Wᵀh + b)`, trained full-batch on its `T`
# examples for {{dd.steps:,.0f}} steps of AdamW (weight decay {{dd.weight_decay:g}}, learning
# rate {{dd.lr:g}} with a short warm-up and cosine decay). We sweep `T` from
# {{dd.T_min:.0f}} to {{dd.T_max:,.0f}}, {{dd.n_seeds:.0f}} seeds per `T`, and measure the
# loss on {{dd.n_test:,.0f}} *fresh* inputs. The code is in `part_utils/double_descent.py`;
# there is no exercise in this section.
#
# **Cost, and the switch.** Training the full sweep took {{dd.sweep_seconds:.0f}} s on one CPU
# core, so by default this section loads its saved result from
# `section_data/part3_double_descent.npz` (made by `python -m part_utils.double_descent`
# with exactly the code and settings below). Set `RUN_DOUBLE_DESCENT = True` to train it
# yourself (about a minute). In fast mode a tiny version trains instead (three values of
# `T`, one seed, {{dd.fast_steps:.0f}} steps), just to exercise the code: its
# figures are not meaningful, and the description below is of the full sweep.

# %%
from plotly.subplots import make_subplots

from part_utils.double_descent import DoubleDescentConfig, load_sweep, run_sweep

RUN_DOUBLE_DESCENT = False  # True: train the full sweep here (about 1 minute) instead of loading the saved one

DD_FAST_STEPS = results.record("dd.fast_steps", 400)  # the tiny fast-mode version
if FAST_MODE:
    dd_config = DoubleDescentConfig(steps=DD_FAST_STEPS)
    dd_sweep = run_sweep(sizes=(5, 50, 500), seeds=(0,), cfg=dd_config, geometry_sizes=(5, 500))
elif RUN_DOUBLE_DESCENT:
    dd_config = DoubleDescentConfig()
    dd_sweep = run_sweep(cfg=dd_config, verbose=True)
else:
    dd_sweep, dd_config = load_sweep()
for key in ("n_features", "d_hidden", "feature_probability", "steps", "weight_decay", "lr", "n_test"):
    results.record(f"dd.{key}", getattr(dd_config, key))
results.record("dd.active_per_input", dd_config.n_features * dd_config.feature_probability)
results.record("dd.T_min", min(dd_sweep.sizes))
results.record("dd.T_max", max(dd_sweep.sizes))
results.record("dd.n_seeds", len(dd_sweep.seeds))
results.record("dd.sweep_seconds", dd_sweep.seconds)
# (Only the saved sweep's training time is printed: a live time would differ on every run.)
trained_or_loaded = (
    "trained here" if FAST_MODE or RUN_DOUBLE_DESCENT else f"loaded (training took {dd_sweep.seconds:.0f} s)"
)
print(f"{len(dd_sweep.sizes)} training-set sizes x {len(dd_sweep.seeds)} seeds, {trained_or_loaded}")

# %% [markdown]
# First the losses. The dotted line is the loss of a model that always outputs zero (for a
# unit-length input it is 1; the line sits a little lower, at {{dd.zero_output_loss:.3f}},
# because {{dd.frac_empty:.1%}} of inputs have no active feature at all).

# %%
dd_sizes = list(dd_sweep.sizes)
zero_output_loss = 1 - (1 - dd_config.feature_probability) ** dd_config.n_features
figure = go.Figure()
for seed_index in range(len(dd_sweep.seeds)):
    figure.add_scatter(
        x=dd_sizes,
        y=dd_sweep.test_loss[:, seed_index].tolist(),
        mode="markers",
        marker={"color": "#d62728", "size": 7, "opacity": 0.45},
        name="test loss, each seed",
        showlegend=seed_index == 0,
    )
for loss, colour, name in ((dd_sweep.test_loss, "#d62728", "test"), (dd_sweep.train_loss, "#1f77b4", "train")):
    figure.add_scatter(
        x=dd_sizes, y=loss.mean(1).tolist(), mode="lines+markers", line={"color": colour}, name=f"{name} loss, mean"
    )
figure.add_hline(
    y=zero_output_loss,
    line={"dash": "dot", "color": "#777"},
    annotation_text="output zero",
    annotation_position="bottom right",
)
figure.update_layout(
    title="Test loss against training-set size (200 features, 2 dimensions)",
    xaxis={"title": "training examples T", "type": "log"},
    yaxis={"title": "loss per input (summed over features)"},
    height=450,
    width=850,
)
figure.show()
column_norms = dd_sweep.W.norm(dim=2)  # [sizes, seeds, feats]
long_column = 0.5
for i, size in enumerate(dd_sizes):
    print(
        f"T = {size:>5}: train {dd_sweep.train_loss[i].mean():.3f}, test {dd_sweep.test_loss[i].mean():.3f}"
        f" | longest column of W {column_norms[i].amax(-1).mean():.2f},"
        f" columns longer than {long_column}: {(column_norms[i] > long_column).sum(-1).float().mean():.0f}"
        " (means over seeds)"
    )

# For the text (nothing more is printed).
sizes_t = torch.tensor(dd_sizes)
test_mean = dd_sweep.test_loss.mean(dim=1)
longest = column_norms.amax(dim=-1).mean(dim=-1)  # [sizes], mean over seeds
n_long = (column_norms > long_column).sum(dim=-1).float().mean(dim=-1)
middle, ends = (sizes_t >= 20) & (sizes_t <= 200), (sizes_t == 5) | (sizes_t >= 500)
results.record("dd.long_column", long_column)
results.record("dd.zero_output_loss", zero_output_loss)
results.record("dd.frac_empty", 1 - zero_output_loss)
for i, size in enumerate(dd_sizes):
    results.record(f"dd.test.T{size}", dd_sweep.test_loss[i])
    results.record(f"dd.train.T{size}", dd_sweep.train_loss[i])
    results.record(f"dd.long_columns.T{size}", n_long[i])
results.record("dd.above_line_test", test_mean[(sizes_t >= 10) & (sizes_t <= 200)])
results.record("dd.peak_T_of_mean", sizes_t[test_mean.argmax()])
results.record("dd.peak_test", test_mean.max())
results.record("dd.peak_ratio", test_mean.max() / zero_output_loss)
results.record("dd.peak_T", sizes_t[dd_sweep.test_loss.argmax(dim=0)])  # per seed
results.record("dd.n_seeds_end_lower", (dd_sweep.test_loss[-1] < dd_sweep.test_loss[0]).sum())
results.record("dd.ends_longest", longest[ends])
results.record("dd.middle_long_columns", n_long[middle])
results.record("dd.middle_longest", longest[middle])

# %% [markdown]
# **What to look for.** Training loss (blue) climbs with `T`: five examples can be stored
# almost perfectly in two dimensions (training loss {{dd.train.T5|max:.2f}} or less), a
# thousand cannot ({{dd.train.T1000|mean:.2f}}). Test loss (red) does not fall steadily as `T`
# grows. With 5 examples it sits just below the zero-output line ({{dd.test.T5|mean:.2f}}). For
# every `T` from 10 to 200 the mean is *above* that line (the lowest of them is
# {{dd.above_line_test|min:.2f}}), highest at `T = {{dd.peak_T_of_mean:.0f}}`
# ({{dd.peak_test:.2f}}, {{dd.peak_ratio:.1f}} times the line): the model is then worse on new
# inputs than a model that outputs nothing. From `T = 500` on it falls again, to
# {{dd.test.T1000|mean:.2f}} at `T = 1000`, below its value at `T = 5`. That rise and second
# fall is **double descent**. The curve is bumpy in the middle (`T = 50` is lower than its
# neighbours, at {{dd.test.T50|mean:.2f}}) and the seeds, each with its own training set,
# scatter widely near the peak ({{dd.test.T200|range:.2f}} at `T = 200`); but each seed's
# highest test loss is at `T = {{dd.peak_T|min:.0f}}` or `{{dd.peak_T|max:.0f}}`, and
# {{dd.n_seeds_end_lower:.0f}} of the {{dd.n_seeds:.0f}} end lower than they started.
#
# The printout shows what the model does with its weights. At `T = 5` and at `T ≥ 500` about
# a dozen columns of `W` or fewer are longer than {{dd.long_column}}
# ({{dd.long_columns.T5:.0f}}, {{dd.long_columns.T500:.0f}} and {{dd.long_columns.T1000:.0f}}
# on average), and none is much longer than 1 (the longest averages at most
# {{dd.ends_longest|max:.2f}}); for `T` from 20 to 200, {{dd.middle_long_columns|min:.0f}} to
# {{dd.middle_long_columns|max:.0f}} columns are that long and the longest averages
# {{dd.middle_longest|min:.1f}} to {{dd.middle_longest|max:.1f}}.
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
            geometry.add_scatter(
                x=[0, x], y=[0, y], mode="lines", line={"color": "#bbb", "width": 1}, showlegend=False, row=row, col=col
            )
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
geometry.update_layout(
    title="What the 2 hidden dimensions hold: memorising (top) vs generalising (bottom)", height=800, width=800
)
geometry.show()


def describe_arrangement(vectors: torch.Tensor, threshold: float = 0.5) -> str:
    """How many vectors are longer than `threshold`, and the angles (degrees) of those directions."""
    long_ = vectors[vectors.norm(dim=1) > threshold]
    angles = sorted({round(a) for a in torch.rad2deg(torch.atan2(long_[:, 1], long_[:, 0])).tolist()})
    return f"{len(long_)} of {len(vectors)} longer than {threshold}; angles {angles}"


for size in (small_size, large_size):
    print(f"T = {size}: examples: {describe_arrangement(dd_sweep.example_hidden[size])}")
    print(f"T = {size}: features: {describe_arrangement(dd_sweep.W[dd_sizes.index(size), 0].T)}")


# For the text (nothing more is printed).
def angles_of(vectors: torch.Tensor) -> torch.Tensor:
    return torch.rad2deg(torch.atan2(vectors[:, 1], vectors[:, 0]))


def gaps_between(angles: torch.Tensor) -> torch.Tensor:
    """The angles between neighbouring directions, going once round the circle."""
    ordered = angles.sort().values
    return torch.diff(torch.cat([ordered, ordered[:1] + 360]))


def angles_between(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[len(a), len(b)]: the angle in degrees between every direction of a and every direction of b."""
    return ((a[:, None] - b[None, :] + 180) % 360 - 180).abs()


for size in (small_size, large_size):
    examples, features = dd_sweep.example_hidden[size], dd_sweep.W[dd_sizes.index(size), 0].T  # first seed
    long_examples = angles_of(examples[examples.norm(dim=1) > long_column])
    long_features = angles_of(features[features.norm(dim=1) > long_column])
    if len(long_examples) and len(long_features):
        to_examples = angles_between(long_features, long_examples)
        results.record(f"dd.T{size}.n_long_examples", len(long_examples))
        results.record(f"dd.T{size}.short_examples", (examples.norm(dim=1) <= long_column).float().mean())
        results.record(f"dd.T{size}.example_norms", examples.norm(dim=1)[examples.norm(dim=1) > long_column])
        results.record(f"dd.T{size}.example_gaps", gaps_between(long_examples))
        results.record(f"dd.T{size}.n_long_features", len(long_features))
        results.record(f"dd.T{size}.feature_gaps", gaps_between(long_features))
        results.record(f"dd.T{size}.short_feature_norms", features.norm(dim=1)[features.norm(dim=1) <= long_column])
        results.record(f"dd.T{size}.feature_to_example", to_examples.amin(dim=1))
        results.record(
            f"dd.T{size}.features_per_example", to_examples.argmin(dim=1).bincount(minlength=len(long_examples))
        )
        results.record(f"dd.T{size}.examples_on_features", (to_examples.amin(dim=0) < 5).sum())

# %% [markdown]
# **What to look for** (first seed of the full sweep).
#
# - **`T = 5`, memorising.** The five training examples' hidden vectors (top left) sit
#   close to the corners of a regular pentagon, neighbours {{dd.T5.example_gaps|range:.0f}}°
#   apart (a regular one has 72°), all of similar length ({{dd.T5.example_norms|range:.2f}}).
#   The features (top right) do *not* form a polygon of their own:
#   {{dd.T5.n_long_features:.0f}} point along those same five directions (each within
#   {{dd.T5.feature_to_example|max:.0f}}° of one), {{dd.T5.features_per_example|min:.0f}} or
#   {{dd.T5.features_per_example|max:.0f}} per example, and the other features are close to
#   zero (mean norm {{dd.T5.short_feature_norms|mean:.2f}}). The model has stored the
#   *examples* in superposition; a feature is represented only as "part of example k". A
#   fresh input mixes features from different examples, or features the model never saw, so
#   test loss is hardly better than outputting zero.
# - **`T = 1000`, generalising.** Now the *features* form the polygon:
#   {{dd.T1000.n_long_features:.0f}} columns of `W` are long, at the corners of a hexagon
#   (neighbours {{dd.T1000.feature_gaps|range:.0f}}° apart; a regular one has 60°), and all
#   the others have shrunk to {{dd.T1000.short_feature_norms|max:.2f}} or less. The training
#   examples (bottom left) are no longer arranged: {{dd.T1000.short_examples:.0%}} are shorter
#   than {{dd.long_column}}, and {{dd.T1000.examples_on_features:.0f}} of the
#   {{dd.T1000.n_long_examples:.0f}} others lie within 5° of a feature direction, because an
#   example's hidden vector is the sum of its active features' columns. This solution works for
#   any input, so test loss is close to training loss ({{dd.test.T1000|mean:.2f}} against
#   {{dd.train.T1000|mean:.2f}}).
# - **In between** the model is caught between the two: too many examples to store each as
#   a corner of a polygon, too few for a handful of features to pay off. It keeps many long
#   feature columns (the printout above), and on a new input those produce large, wrong
#   outputs: the test-loss peak.
#
# The angle printout above shows the same thing in numbers. The original paper found this
# with 10,000 features and far longer training; the switch from storing examples to storing
# features, and the test-loss peak where it happens, survive the shrinking.
