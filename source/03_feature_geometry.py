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
# Given `W [inst, d_hidden, feats]`, return `D [inst, feats]`. Features are the *columns*
# of each instance's `W` (normalise over `d_hidden`). The sum over `j` includes `j = i`.

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
n_inst_geometry = full_or_fast(24, 6)
inverse_density = torch.logspace(0.0, 1.3, n_inst_geometry)
cfg_geometry = ToyModelConfig(n_inst=n_inst_geometry, n_features=100, d_hidden=10)
geometry_model = ToyModel(cfg_geometry, feature_probability=(1 / inverse_density)[:, None], importance=1.0, device=device)
_ = train_self_supervised(
    geometry_model, steps=full_or_fast(4_000, 300), batch_size=512, lr=3e-3, lr_schedule=cosine_decay_lr, description="100 features, 10 dims"
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
    row_height=300,
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
