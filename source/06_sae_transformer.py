# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Part 6: SAEs on a small transformer
#
# So far every SAE read a toy model whose features we chose ourselves, so we could score it
# against the truth. A real model gives no such answer key. In this part we train a small
# transformer from scratch on a language simple enough that we know what it must compute,
# train SAEs on its activations, and evaluate them the way the field does when the true
# features are unknown: reconstruction, sparsity, dead latents, and above all what the
# reconstruction does to the model's own loss.
#
# **You will**
# - meet the palindrome language `<abc|cba>` and train (or load) a one-layer transformer that
#   completes the mirrored half of strings it has never seen;
# - collect its MLP outputs token by token with hooks and train L1 and TopK SAEs on them,
#   with learning-rate and sparsity warm-ups;
# - write the field's evaluation metrics: fraction of variance explained, L0 and firing
#   frequencies, and **loss recovered** with the SAE spliced into the model;
# - read latents through their top examples and a dashboard, and say what they encode.
#
# **Time:** about {{=2.5}} hours.

# %% tags=["workbook-setup"]

# %%
from part_utils.colab import install_transformer_lens_on_colab

install_transformer_lens_on_colab()  # not preinstalled on Colab; a no-op elsewhere

# %% tags=["reference"]
from collections.abc import Callable
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens import TransformerBridge

from part_utils.activations import validate_hook_name, validate_tokens
from part_utils.reference.part4_toy_sae import ToySAE

# %%
import os
import time
from functools import partial

import plotly.express as px
import plotly.graph_objects as go
from IPython.display import HTML, display

import tests.part6_sae_transformer as checks
from part_utils.activation_sae import ActivationSource, PublishedAuxKTopKSAE
from part_utils.activations import collect_activations
from part_utils.device import get_device
from part_utils.modes import FAST_MODE, full_or_fast
from part_utils.palindromes import (
    MIRRORED_POSITIONS,
    build_palindrome_model,
    load_palindrome_model,
    mirrored_accuracy,
    palindrome_dataset,
    palindrome_model_config,
    per_position_accuracy,
    train_palindrome_model,
)
from part_utils.plotting.latents import latent_dashboard, max_activating_html
from part_utils.plotting.tables import html_table
from part_utils.reference.part4_toy_sae import init_encoder_as_decoder_transpose
from part_utils.reference.part5_sae_variants import TopKToySAE, TopKToySAEConfig
from part_utils.results import Results
from part_utils.sae_registry import Definitions, build_sae
from part_utils.seeding import seed_everything
from part_utils.training import warmup_cosine_lr

device = get_device()
results = Results(part=6)  # what the text quotes, recorded by the full-mode run (a no-op otherwise)
results.record("machine.cpu_cores", os.cpu_count())
print(f"device: {device}, fast mode: {FAST_MODE}")

# %% [markdown]
# ## 1. A language with a known answer
#
# Every string is a palindrome of three letters: a begin token `<`, three letters, a
# separator `|`, the same letters reversed, and an end token `>`, e.g. `<kqz|zqk>`. There are
# 26³ = 17,576 such strings; we hold out a fifth of them, so we can ask whether the model
# learned the rule or memorised strings. Tokens are single characters (29 of them).
#
# Predicting the next token is impossible for the first three letters (each is uniform over
# 26) and fully determined afterwards: after `|` comes the third letter, then the second,
# then the first, then `>`. A perfect model's loss is therefore `3·ln 26 / 8 ≈ 1.222` nats
# per predicted token: three unpredictable tokens out of eight.

# %%
data = palindrome_dataset()
tokenizer = data.tokenizer
print(
    f"{len(data.train_tokens):,} training strings, {len(data.test_tokens):,} held out; "
    f"vocabulary: {''.join(tokenizer.vocabulary)}"
)
print("examples:", tokenizer.decode(data.train_tokens[:4]))
print("tokens of", tokenizer.decode(data.train_tokens[0]), "→", data.train_tokens[0].tolist())

# %% [markdown]
# ## 2. A one-layer transformer, trained from scratch
#
# One attention layer ({{settings.n_heads:.0f}} heads) and one ReLU MLP, with LayerNorm,
# d_model {{settings.d_model:.0f}} and d_mlp {{settings.d_mlp:.0f}}, built offline with
# TransformerLens's `TransformerBridge.boot_native`. Attention can copy a
# letter from an earlier position; the MLP reshapes what attention wrote.
#
# In full mode the next cell trains the model (it took {{model.training_seconds:.0f}} s in our
# full-mode run, on a {{machine.cpu_cores:.0f}}-core CPU that other work was sharing); in fast
# mode it loads the weights in `section_data/`, which this exact code produced
# (`python -m part_utils.palindromes.retrain`).

# %%
config = palindrome_model_config()
print(
    {
        name: getattr(config, name)
        for name in [
            "n_layers",
            "n_heads",
            "d_head",
            "d_model",
            "d_mlp",
            "act_fn",
            "normalization_type",
            "n_ctx",
            "d_vocab",
        ]
    }
)
for name in ["n_heads", "d_model", "d_mlp"]:
    results.record(f"settings.{name}", getattr(config, name))
if FAST_MODE:
    model = load_palindrome_model(device=device)
else:
    seed_everything(0)
    model = build_palindrome_model(device=device)
    started = time.perf_counter()
    losses = train_palindrome_model(model, data)
    results.record("model.training_seconds", time.perf_counter() - started)
    print(f"final training loss {losses[-1]:.4f} (a perfect model: {3 * torch.log(torch.tensor(26.0)).item() / 8:.4f})")
    model.requires_grad_(False)

# %% [markdown]
# Accuracy at each position on the **held-out** strings. Position p predicts token p + 1.
# The first three predictions are guesses (1/26 ≈ {{=0.04}} is chance); from the separator
# on, every token is determined by the first half. In our full-mode run the model predicted
# {{model.mirrored_accuracy:.2%}} of those determined tokens correctly.

# %%
accuracy = per_position_accuracy(model, data.test_tokens)
labels = [f"pos {p} predicts token {p + 1}" for p in range(len(accuracy))]
colours = ["#2a9d8f" if p in MIRRORED_POSITIONS else "#adb5bd" for p in range(len(accuracy))]
fig = go.Figure(
    go.Bar(
        x=labels,
        y=accuracy.numpy(),
        marker_color=colours,
        text=[f"{a:.3f}" for a in accuracy.tolist()],
        textposition="outside",
    )
)
fig.update_layout(
    title="Held-out next-token accuracy (green: the mirrored half and the end token)",
    yaxis_range=[0, 1.1],
    height=380,
    width=760,
)
fig.show()
held_out_accuracy = results.record("model.mirrored_accuracy", mirrored_accuracy(model, data.test_tokens))
print(f"accuracy on the mirrored half and the end token (held out): {held_out_accuracy:.4f}")

# %% [markdown]
# ## 3. Activations, one vector per token
#
# We read the MLP's output, `blocks.0.hook_mlp_out` (the residual stream,
# `blocks.0.hook_resid_post`, is the other common choice: change `HOOK` to try it). The model
# runs once over every training string and we keep the activation at that hook for every
# token: an array `[strings, positions, d_model]`.
#
# The SAE then sees **one row per token**, `[strings·positions, d_model]`, not one row per
# string (`[strings, positions·d_model]`). The model applies the same MLP at every position,
# so a feature such as "the next letter is q" is one direction wherever it occurs; an SAE
# over concatenated positions would need a separate latent for each position, and it could
# not be spliced back into the model token by token.
#
# Two more choices, both standard:
# - we drop position 0. It always holds the begin token, so its activation is the same
#   vector in every string (and its norm is {{acts.norm_ratio_position_0:.1f}} times the
#   others' on average): an SAE would spend a latent on it
#   and our metrics would be flattered by a point it reconstructs for free;
# - we divide by one constant so that the average squared norm is d_model. The sparsity
#   coefficient then means the same thing at any hook; when we splice the SAE into the model
#   we multiply back.

# %%
HOOK = "blocks.0.hook_mlp_out"
train_acts = collect_activations(model, data.train_tokens, HOOK)
test_acts = collect_activations(model, data.test_tokens, HOOK)
print(f"activations at {HOOK}: {tuple(train_acts.shape)} (strings, positions, d_model)")
norm_at_0, norm_elsewhere = train_acts[:, 0].norm(dim=-1).mean().item(), train_acts[:, 1:].norm(dim=-1).mean().item()
results.record("acts.norm_ratio_position_0", norm_at_0 / norm_elsewhere)
print(f"mean norm at position 0: {norm_at_0:.1f}; at the other positions: {norm_elsewhere:.1f}")

train_rows = train_acts[:, 1:].flatten(0, 1)
activation_scale = (train_rows.pow(2).sum(dim=-1).mean() / train_rows.shape[-1]).sqrt().item()
d_model = train_rows.shape[-1]
print(f"{len(train_rows):,} training tokens; scale {activation_scale:.3f}")

# %% [markdown]
# ## 4. Training SAEs on the activations
#
# The SAE classes of Parts 4 and 5 draw their batches from a toy model. `ActivationSource`
# stands in for that model: it serves random rows of our activation buffer, so `ToySAE`,
# `TopKToySAE`, the training loop and resampling work unchanged. Each setting is one
# instance of a single SAE, as in Part 5.
#
# Two schedules that SAE training on real models uses:
# - **learning-rate warm-up then decay**: Adam's first updates are large and noisy, so the
#   rate ramps up over the first {{settings.warmup_fraction:.0%}} of steps, then follows a
#   cosine down to zero;
# - **sparsity warm-up** (L1 SAE): the penalty ramps from 0 over the first
#   {{settings.warmup_fraction:.0%}} of steps, so latents find something to reconstruct before
#   the L1 starts pushing them to zero.
#
# TopK needs no sparsity warm-up: k fixes the sparsity from the first step. It needs AuxK
# (Part 5) to keep its latents alive, and here we use AuxK as Gao et al. (2024) publish it
# (and OpenAI's `sparse_autoencoder` code runs it), not as Part 5 wrote it:
# `PublishedAuxKTopKSAE` (in `part_utils/activation_sae.py`) divides the auxiliary squared
# error by the residual's variance and drops Part 5's `n_dead / k_aux` factor (EleutherAI
# `sparsify`'s heuristic); `k_aux` is {{settings.k_aux:.0f}}, the power of two at
# d_model / 2, instead of Part 5's {{settings.part5_k_aux:.0f}}, and the coefficient stays
# {{=1/32}}. Section 5 compares the two recipes.

# %%
d_sae = 256
sae_steps = full_or_fast(2_000, 300)
l1_coeffs = [0.003, 0.01, 0.03]
topk_ks = [2, 4, 8]
warmup_fraction = 0.05  # of the steps: the learning rate's warm-up, and the L1 penalty's
k_aux = d_model // 2  # Gao et al.: a power of two near d_model / 2
settings = {
    "d_sae": d_sae,
    "l1_coeffs": l1_coeffs,
    "topk_ks": topk_ks,
    "warmup_fraction": warmup_fraction,
    "k_aux": k_aux,
    "part5_k_aux": TopKToySAEConfig.k_aux,
}
for name, value in settings.items():
    results.record(f"settings.{name}", value)


def sparsity_warmup(step: int, steps: int) -> float:
    return min(1.0, (step + 1) / (warmup_fraction * steps))


def train_on_activations(sae: ToySAE, description: str, **schedules: Any) -> None:
    init_encoder_as_decoder_transpose(sae)
    lr_schedule = partial(warmup_cosine_lr, warmup_fraction=warmup_fraction)
    options = {"batch_size": 1024, "lr": 1e-3, "log_every": sae_steps, "description": description}
    sae.optimize(steps=sae_steps, lr_schedule=lr_schedule, **options, **schedules)


def train_topk(sae_class: type[TopKToySAE], k_aux: int) -> TopKToySAE:
    """One TopK SAE per k of `topk_ks`; the same seed gives every AuxK recipe the same start and batches."""
    seed_everything(2)
    source = ActivationSource(normalised_rows, len(topk_ks))
    changes = {"k_aux": k_aux, "aux_coeff": 1 / 32}
    sae = build_sae("TopK", topk_ks, source, definitions, d_sae=d_sae, config_changes=changes, sae_class=sae_class)
    train_on_activations(sae, f"TopK SAEs, {sae_class.__name__}, k_aux {k_aux}")
    return sae


seed_everything(1)
normalised_rows = (train_rows / activation_scale).to(device)
definitions = Definitions(globals(), part=6)  # the registry builds every SAE, of the classes this notebook uses
l1_sae = build_sae("L1", l1_coeffs, ActivationSource(normalised_rows, len(l1_coeffs)), definitions, d_sae=d_sae)
train_on_activations(
    l1_sae,
    "L1 SAEs",
    sparsity_schedule=sparsity_warmup,
    resample_method="advanced",
    resample_every=sae_steps // 4,
    resample_window=sae_steps // 20,
)
topk_sae = train_topk(PublishedAuxKTopKSAE, k_aux)

# %% [markdown]
# Every metric below runs on the **held-out** strings. For each SAE instance we need its
# latent activations and its reconstruction, in the model's units:


# %%
@torch.no_grad()
def encode_and_reconstruct(
    sae: ToySAE, acts: Float[Tensor, "tokens d_model"]
) -> tuple[Float[Tensor, "inst tokens d_sae"], Float[Tensor, "inst tokens d_model"]]:
    h = (acts / activation_scale).unsqueeze(1).expand(-1, sae.cfg.n_inst, -1)
    latents = sae.encode(h)
    return latents.transpose(0, 1), sae.decode(latents).transpose(0, 1) * activation_scale


test_rows = test_acts[:, 1:].flatten(0, 1)
saes = {"L1": (l1_sae, [f"λ={c:g}" for c in l1_coeffs]), "TopK": (topk_sae, [f"k={k}" for k in topk_ks])}
encoded = {name: encode_and_reconstruct(sae, test_rows) for name, (sae, _) in saes.items()}

# %% [markdown]
# ## 5. Evaluating an SAE without an answer key
#
# ### Exercise 5.1: fraction of variance explained
#
# **Difficulty** ●●○○○ · **Importance** ●●●●○ · **Plan for** 10 minutes
#
# How much of the activations' variation does the reconstruction capture? The fraction of
# variance explained is
#
# $$\text{FVE} = 1 - \frac{\sum_{t} \lVert x_t - \hat x_t \rVert^2}{\sum_t \lVert x_t - \bar x \rVert^2},$$
#
# summed over tokens t and over the d_model dimensions, where $\bar x$ is the **mean
# activation vector** over the tokens (one mean per dimension). Both sums are plain sums of
# squares, with no division by the number of tokens (or by tokens − 1). Write it for `x` and
# `x_hat`, always two-dimensional, `[tokens, d]`; return a 0-dimensional tensor (a Python
# float works too).
#
# <details><summary>Hint 1: two sums, then one division</summary>
#
# Compute the numerator and the denominator separately, each a single number. The numerator
# needs only `x - x_hat`, squared and summed over everything. The denominator needs the mean
# activation vector first: the mean of `x` over the tokens.
# </details>
#
# <details><summary>Hint 2: which axis the mean runs over</summary>
#
# `x.mean(dim=0)` has shape `[d]`, one mean per dimension, and broadcasts against `x`
# (`[tokens, d]`) so that every dimension is centred on its own mean. Square, then `.sum()`
# with no `dim`, over tokens and dimensions at once; do the same to the squared errors. Avoid
# `torch.var`: by default it divides by tokens − 1, and without `dim` it centres every entry
# on the single number `x.mean()`. The result is 1 minus the ratio of the two sums.
# </details>
#
# Stuck after the hints? The same cell in `solutions/06_sae_transformer.ipynb` has the answer.


# %% tags=["reference"]
def fraction_variance_explained(x: Float[Tensor, "tokens d"], x_hat: Float[Tensor, "tokens d"]) -> Float[Tensor, ""]:
    # BEGIN SOLUTION
    residual = (x - x_hat).pow(2).sum()
    total = (x - x.mean(dim=0)).pow(2).sum()
    return 1 - residual / total
    # END SOLUTION


# %%
checks.test_fraction_variance_explained(fraction_variance_explained)

# %% [markdown]
# Why about the mean? Measured about zero (dividing by $\sum_t \lVert x_t \rVert^2$), the
# score also gives the SAE credit for reproducing the mean activation, which `b_dec` does for
# free. The last line below is the giveaway: a "reconstruction" that outputs the mean vector
# for every token, and knows nothing about any token, already scores
# {{fve.mean_vector_about_zero:.2f}} that way.

# %%
for name, (_, reconstruction) in encoded.items():
    for i, label in enumerate(saes[name][1]):
        about_mean = float(fraction_variance_explained(test_rows, reconstruction[i]))
        about_zero = 1 - ((test_rows - reconstruction[i]).pow(2).sum() / test_rows.pow(2).sum()).item()
        print(f"{name} {label:7}  FVE about the mean {about_mean:.4f}   about zero {about_zero:.4f}")
mean_vector_about_zero = 1 - ((test_rows - test_rows.mean(0)).pow(2).sum() / test_rows.pow(2).sum()).item()
results.record("fve.mean_vector_about_zero", mean_vector_about_zero)
print(f"a 'reconstruction' that is just the mean vector: about the mean 0, about zero {mean_vector_about_zero:.4f}")

# %% [markdown]
# ### Exercise 5.2: L0 and firing frequencies
#
# **Difficulty** ●○○○○ · **Importance** ●●●●○ · **Plan for** 10 minutes
#
# Both take `latents` of shape `[tokens, d_sae]`. A latent is **active** on a token when its
# value is > 0, however small (latents come out of a ReLU and are never negative, so `!= 0`
# is the same test here).
#
# - `l0_norm(latents)`: the number of active latents on each token, averaged over all tokens
#   (a token with none active counts 0); a 0-dimensional floating-point tensor (or a float).
# - `firing_frequency(latents)`: for each latent, the fraction of tokens on which it is
#   active, between 0 and 1; a floating-point tensor `[d_sae]`.
#
# A latent that never fires on the evaluation tokens is **dead**; one that fires on more
# than {{settings.dense_above:.0%}} of tokens is **dense** (suspicious in an SAE whose L0 is a
# few out of {{settings.d_sae:.0f}}).
#
# <details><summary>Hint 1: one mask for both</summary>
#
# Both metrics are built from the same mask, `latents > 0`: `[tokens, d_sae]`, True where a
# latent is active on a token. Compute it first and turn it into floats (`.float()`):
# `torch.mean` refuses a bool tensor.
# </details>
#
# <details><summary>Hint 2: which axis each one reduces</summary>
#
# L0: sum the mask over the latents (`dim=-1`), which gives one count per token, `[tokens]`,
# then average those counts over the tokens, down to one number. Firing frequency: average the
# mask over the tokens (`dim=0`), which leaves one fraction per latent, `[d_sae]`. Neither
# needs `keepdim=True`, and neither divides by `d_sae`.
# </details>
#
# Stuck after the hints? The same cell in `solutions/06_sae_transformer.ipynb` has the answer.


# %% tags=["reference"]
def l0_norm(latents: Float[Tensor, "tokens d_sae"]) -> Float[Tensor, ""]:
    # BEGIN SOLUTION
    return (latents > 0).float().sum(dim=-1).mean()
    # END SOLUTION


def firing_frequency(latents: Float[Tensor, "tokens d_sae"]) -> Float[Tensor, " d_sae"]:
    # BEGIN SOLUTION
    return (latents > 0).float().mean(dim=0)
    # END SOLUTION


# %%
checks.test_sparsity_metrics(l0_norm, firing_frequency)

# %% [markdown]
# The latent density histogram: log10 of each latent's firing frequency. Dead latents sit at
# the far left (we put them at −6 so that they show up).

# %%
DENSE_ABOVE = results.record("settings.dense_above", 0.1)
density = []
for name, (latents, _) in encoded.items():
    for i, label in enumerate(saes[name][1]):
        frequency = firing_frequency(latents[i])
        density += [
            {"SAE": f"{name} {label}", "log10 firing frequency": f} for f in frequency.clamp_min(1e-6).log10().tolist()
        ]
fig = px.histogram(
    density,
    x="log10 firing frequency",
    facet_col="SAE",
    facet_col_wrap=3,
    nbins=40,
    height=480,
    width=900,
    title="Latent density on held-out tokens",
)
fig.show()

# %% [markdown]
# ### Exercise 5.3: loss recovered
#
# **Difficulty** ●●○○○ · **Importance** ●●●●● · **Plan for** 15 minutes
#
# Reconstruction error measures distance in activation space, but not every direction
# matters equally to the model. The test that counts: put the SAE's reconstruction back in
# place of the activation and see what the model's next-token loss does.
#
# 1. `spliced_loss(model, tokens, hook_name, replace)`: run the model on `tokens` with a
#    forward hook at `hook_name` that replaces the whole activation `act` with `replace(act)`
#    (at every position: `replace` itself decides what changes), and return the mean
#    next-token loss, over every predicted token, as a float. Use
#    `model.run_with_hooks(tokens, return_type="loss", fwd_hooks=[(hook_name, hook_fn)])`,
#    where `hook_fn(act, hook)` returns the new activation (writing it into `act` in place and
#    returning nothing works too). `run_with_hooks` removes the hook when it returns; a hook
#    left attached would change every later run of the model.
# 2. `loss_recovered(clean, spliced, ablated)`: where the spliced loss sits between the clean
#    loss ({{=1.0}}: nothing lost) and the loss with the activation ablated ({{=0.0}}: as bad as
#    removing it). The losses are numbers (floats, or 0-dimensional tensors):
#
# $$\text{loss recovered} = \frac{L_\text{ablated} - L_\text{spliced}}{L_\text{ablated} - L_\text{clean}}.$$
#
# Do not clip it: a spliced loss below the clean loss gives more than 1, and one above the
# ablated loss a negative value.
#
# <details><summary>Hint 1: a hook function, then one run</summary>
#
# Inside `spliced_loss`, define a small hook function that receives the activation and hands
# back its replacement; then run the model once with that hook attached and turn the loss it
# returns into a float with `.item()`. The model does the rest: `return_type="loss"` already
# averages the next-token loss over every predicted token. `loss_recovered` is the formula
# above, in one line.
# </details>
#
# <details><summary>Hint 2: what TransformerLens calls, and with what</summary>
#
# TransformerLens calls each hook as `hook_fn(act, hook=...)`: `act` is
# `[batch, pos, d]` and `hook` is the hook point. So `replace` cannot be the hook itself
# (it takes no `hook` argument); your function of `(act, hook)` returns `replace(act)`, the
# same shape. `fwd_hooks` is a list of `(name, function)` pairs, here just one, named by the
# `hook_name` argument. Do not shift logits or compute a cross-entropy yourself. In
# `loss_recovered`, the numerator is ablated − spliced and the denominator ablated − clean,
# with no `abs`, `min` or `max`.
# </details>
#
# Stuck after the hints? The same cell in `solutions/06_sae_transformer.ipynb` has the answer.


# %% tags=["reference"]
def spliced_loss(
    model: TransformerBridge,
    tokens: Int[Tensor, "batch pos"],
    hook_name: str,
    replace: Callable[[Float[Tensor, "batch pos d"]], Float[Tensor, "batch pos d"]],
) -> float:
    validate_hook_name(model, hook_name)
    validate_tokens(model, tokens)

    # BEGIN SOLUTION
    def hook_fn(act: Float[Tensor, "batch pos d"], hook: Any) -> Float[Tensor, "batch pos d"]:
        return replace(act)

    return model.run_with_hooks(tokens, return_type="loss", fwd_hooks=[(hook_name, hook_fn)]).item()
    # END SOLUTION


def loss_recovered(clean: float, spliced: float, ablated: float) -> float:
    # BEGIN SOLUTION
    return (ablated - spliced) / (ablated - clean)
    # END SOLUTION


# %%
checks.test_spliced_loss(spliced_loss)
checks.test_loss_recovered(loss_recovered)

# %% [markdown]
# The replacement functions: the SAE's reconstruction at every position except the begin
# token (which the SAE never saw), zero, and the mean activation. The SAE helper refuses an
# SAE whose input size does not match the activation it is asked to replace.


# %% tags=["reference"]
def sae_replacement(
    sae: ToySAE, instance: int, scale: float
) -> Callable[[Float[Tensor, "batch pos d"]], Float[Tensor, "batch pos d"]]:
    """Replace every position but the first with SAE instance `instance`'s reconstruction."""

    def replace(act: Float[Tensor, "batch pos d"]) -> Float[Tensor, "batch pos d"]:
        if act.shape[-1] != sae.cfg.d_in:
            raise ValueError(
                f"this SAE reads vectors of size d_in={sae.cfg.d_in}, but the activation here has size "
                f"{act.shape[-1]}: was it trained on another hook?"
            )
        h = (act[:, 1:] / scale).unsqueeze(2).expand(-1, -1, sae.cfg.n_inst, -1).flatten(0, 1)
        reconstruction = sae.decode(sae.encode(h))[:, instance].reshape(act[:, 1:].shape) * scale
        return torch.cat([act[:, :1], reconstruction], dim=1)

    return replace


def constant_replacement(
    value: Float[Tensor, " d"],
) -> Callable[[Float[Tensor, "batch pos d"]], Float[Tensor, "batch pos d"]]:
    """Ablate every position but the first to `value` (zeros, or the mean activation)."""
    return lambda act: torch.cat([act[:, :1], value.expand_as(act[:, 1:])], dim=1)


# %%
eval_tokens = data.test_tokens[: full_or_fast(len(data.test_tokens), 500)].to(device)
clean_loss = model(eval_tokens, return_type="loss").item()
zero_loss = spliced_loss(model, eval_tokens, HOOK, constant_replacement(torch.zeros(d_model, device=device)))
mean_loss = spliced_loss(model, eval_tokens, HOOK, constant_replacement(train_rows.mean(dim=0).to(device)))
identity_loss = spliced_loss(model, eval_tokens, HOOK, lambda act: act)
for name, value in {"clean": clean_loss, "zero_ablated": zero_loss, "mean_ablated": mean_loss}.items():
    results.record(f"loss.{name}", value)
print(f"clean {clean_loss:.4f}   zero-ablated {zero_loss:.4f}   mean-ablated {mean_loss:.4f}")
print(
    f"sanity check, an identity 'SAE' recovers {loss_recovered(clean_loss, identity_loss, zero_loss):.1%} of the loss"
)

# %% [markdown]
# Everything in one table. Loss recovered is given against both ablations. Zero-ablation is
# the usual baseline; here, replacing the MLP's output with its mean hurts the model even more
# than removing it (loss {{loss.mean_ablated:.3f}} against {{loss.zero_ablated:.3f}}, clean
# {{loss.clean:.3f}}). That makes mean-ablation the more lenient baseline here, not the
# stricter one: loss recovered divides by L_ablated − L_clean, so the baseline that hurts
# more enlarges the denominator and pulls every score closer to 1.

# %%
rows = []
with torch.no_grad():
    for name, (sae, labels) in saes.items():
        latents, reconstruction = encoded[name]
        for i, label in enumerate(labels):
            frequency = firing_frequency(latents[i])
            loss = spliced_loss(model, eval_tokens, HOOK, sae_replacement(sae, i, activation_scale))
            rows.append(
                {
                    "SAE": f"{name} {label}",
                    "L0": float(l0_norm(latents[i])),
                    "FVE": float(fraction_variance_explained(test_rows, reconstruction[i])),
                    "dead": int((frequency == 0).sum()),
                    "dense": int((frequency > DENSE_ABOVE).sum()),
                    "loss": loss,
                    "recovered (zero)": loss_recovered(clean_loss, loss, zero_loss),
                    "recovered (mean)": loss_recovered(clean_loss, loss, mean_loss),
                }
            )
formats = {
    "L0": "{:.2f}",
    "FVE": "{:.4f}",
    "loss": "{:.4f}",
    "recovered (zero)": "{:.2%}",
    "recovered (mean)": "{:.2%}",
}
columns = {c: [formats.get(c, "{}").format(row[c]) for row in rows] for c in rows[0]}
html_table(columns, title=f"SAEs on {HOOK}, held-out strings (clean loss {clean_loss:.4f})").show()


def result_key(sae: str) -> str:
    """'L1 λ=0.003' → 'l1.lambda0.003', 'TopK k=2' → 'topk.k2': a name the results file accepts."""
    return sae.lower().replace(" λ=", ".lambda").replace(" k=", ".k")


measured = {"L0": "l0", "FVE": "fve", "dead": "dead", "dense": "dense"}
measured |= {"recovered (zero)": "recovered_zero", "recovered (mean)": "recovered_mean"}
for row in rows:
    for column, name in measured.items():
        results.record(f"metrics.{result_key(row['SAE'])}.{name}", row[column])
for column, name in measured.items():
    results.record(f"metrics.all.{name}", [row[column] for row in rows])
below_clean = [clean_loss - row["loss"] for row in rows if row["loss"] < clean_loss]
results.record("metrics.below_clean.n", len(below_clean))
results.record("metrics.below_clean.largest", max(below_clean, default=0.0))

# %% [markdown]
# **What to look for.** In full mode the {{metrics.all.fve|n}} SAEs explain between
# {{metrics.all.fve|min:.3f}} and {{metrics.all.fve|max:.3f}} of the variance (about the mean),
# and recover between {{metrics.all.recovered_zero|min:.2%}} and
# {{metrics.all.recovered_zero|max:.2%}} of the loss against zero-ablation: at L0 between
# {{metrics.all.l0|min:.0f}} and {{metrics.all.l0|max:.0f}}, this small MLP's output is
# reconstructed almost perfectly. The L1 SAE at λ = {{settings.l1_coeffs|max:g}} (L0
# {{metrics.l1.lambda0.03.l0:.1f}}) gives up the most: FVE {{metrics.l1.lambda0.03.fve:.3f}} and
# {{metrics.l1.lambda0.03.recovered_zero:.2%}} of the loss. {{metrics.below_clean.n:.0f}} of the
# others come out a hair *above* {{=100%}}: their spliced loss is below the clean loss, by up
# to {{metrics.below_clean.largest:.4f}}. The clean model is not perfect, and a reconstruction
# can nudge it the right way, so loss recovered can exceed 1. Loss recovered saturates long
# before FVE does.
#
# The other columns differ more. L1 at small λ has many dense latents
# ({{metrics.l1.lambda0.003.dense:.0f}} fire on more than {{settings.dense_above:.0%}} of tokens
# at λ = {{settings.l1_coeffs|min:g}}), and TopK at k = {{settings.topk_ks|min:.0f}} leaves
# {{metrics.topk.k2.dead:.0f}} of its {{settings.d_sae:.0f}} latents dead.
#
# <details><summary>Question: an SAE with FVE {{=0.99}} could still recover less of the loss than
# one with FVE {{=0.97}}. How?</summary>
#
# FVE weights every direction of the activation space by its variance. The model reads only
# some directions (the unembedding and, in deeper models, later layers), and a direction with
# little variance can matter a lot to the output. An SAE can spend its error budget on
# directions the model ignores, or on ones it relies on; only loss recovered can tell.
# </details>
#
# ### Dead latents: too weak an AuxK?
#
# So many dead latents at k = {{settings.topk_ks|min:.0f}} have two possible explanations: at
# that sparsity the SAE has no use for more latents, or AuxK is too weak to bring them back.
# Part 5's AuxK would be the weaker one: it looks for replacements among only
# {{settings.part5_k_aux:.0f}} dead latents per token, and its error is not normalised, so it
# fades as the residual it targets shrinks. The next cell trains the same TopK SAEs, from the
# same start on the same batches, with Part 5's AuxK, and compares them with ours.

# %%
part5_topk_sae = train_topk(TopKToySAE, TopKToySAEConfig.k_aux)


def dead_and_fve(sae: TopKToySAE) -> tuple[list[int], list[float]]:
    """Dead latents and FVE on the held-out tokens, one of each per k."""
    latents, reconstruction = encode_and_reconstruct(sae, test_rows)
    dead = [int((firing_frequency(latents[i]) == 0).sum()) for i in range(len(topk_ks))]
    fve = [float(fraction_variance_explained(test_rows, reconstruction[i])) for i in range(len(topk_ks))]
    return dead, fve


(dead_published, fve_published), (dead_part5, fve_part5) = dead_and_fve(topk_sae), dead_and_fve(part5_topk_sae)
for topk_k, dead, fve in zip(topk_ks, dead_part5, fve_part5, strict=True):
    results.record(f"auxk.part5.k{topk_k}.dead", dead)
    results.record(f"auxk.part5.k{topk_k}.fve", fve)
results.record("auxk.fve_largest_difference", max(abs(a - b) for a, b in zip(fve_published, fve_part5, strict=True)))
comparison = {
    "k": topk_ks,
    "dead, published AuxK": dead_published,
    "dead, Part 5's AuxK": dead_part5,
    "FVE, published AuxK": [f"{fve:.4f}" for fve in fve_published],
    "FVE, Part 5's AuxK": [f"{fve:.4f}" for fve in fve_part5],
}
html_table(comparison, title=f"TopK SAEs with two AuxK recipes, held-out tokens (dead: of {d_sae} latents)").show()

# %% [markdown]
# With Part 5's AuxK, the TopK SAEs leave {{auxk.part5.k2.dead:.0f}},
# {{auxk.part5.k4.dead:.0f}} and {{auxk.part5.k8.dead:.0f}} latents dead at k = 2, 4 and 8;
# with the published one, {{metrics.topk.k2.dead:.0f}}, {{metrics.topk.k4.dead:.0f}} and
# {{metrics.topk.k8.dead:.0f}}. An AuxK that searches {{settings.k_aux:.0f}} dead latents
# instead of {{settings.part5_k_aux:.0f}}, with an error that does not fade, does not
# reliably keep more latents alive, and the SAEs reconstruct no better for it: their FVEs lie
# within {{auxk.fve_largest_difference:.4f}} of each other at every k. So a weak AuxK is not
# why so many latents are dead at k = 2: at that sparsity the SAE reconstructs this MLP's
# output with the latents it keeps alive and has little use for the rest. We keep the
# published recipe, the one the paper describes.

# %% [markdown]
# ## 6. What do the latents encode?
#
# We take the TopK SAE with k = {{settings.interpreted_k:.0f}} and run it over every held-out string, keeping latent
# activations per string and position, and the token the model should predict at each
# position (the last position has none; we reuse its own token there).

# %%
interpreted = topk_ks.index(results.record("settings.interpreted_k", 4))
with torch.no_grad():
    latents_by_token, _ = encode_and_reconstruct(topk_sae, test_acts.flatten(0, 1))
latents_by_token = latents_by_token[interpreted].reshape(*test_acts.shape[:2], d_sae).cpu()
latents_by_token[:, 0] = 0.0  # the SAE was not trained on the begin token
next_tokens = torch.cat([data.test_tokens[:, 1:], data.test_tokens[:, -1:]], dim=1)
test_strings = tokenizer.decode(data.test_tokens)
frequency = (latents_by_token[:, 1:] > 0).float().mean(dim=(0, 1))
decoder_in_model_units = topk_sae.W_dec_normalized[interpreted].detach() * activation_scale
print(f"{int((frequency > 0).sum())} live latents of {d_sae}")

# %% [markdown]
# Two summaries locate each latent in the task. For latent j, the share of its total
# activation that falls on its most common **position**, and the share that falls on tokens
# whose **next token** is its most common next token. A third number reads the latent's
# output rather than its input: the **direct path to the logits**, its decoder direction (in
# the model's units) pushed through the final LayerNorm's weights, treating the LayerNorm's
# scale as a constant, and the unembedding. The token it raises most is what the latent, on
# its own, tells the model to say.


# %%
@torch.no_grad()
def direct_logit_effect(
    model: TransformerBridge, decoder_directions: Float[Tensor, "... d_model"]
) -> Float[Tensor, "... d_vocab"]:
    """Logit change per unit of each latent along the direct path: centre, LayerNorm weights, unembed."""
    centred = decoder_directions - decoder_directions.mean(dim=-1, keepdim=True)
    return (centred * model.ln_final.w) @ model.W_U


@torch.no_grad()
def latent_profiles(
    latents: Float[Tensor, "strings pos d_sae"], next_tokens: Int[Tensor, "strings pos"], d_vocab: int
) -> dict[str, Tensor]:
    """Each latent's favourite position and next token, with the share of its activation they take."""
    mass = latents.sum(dim=(0, 1)).clamp_min(1e-12)
    by_position = latents.sum(dim=0) / mass
    by_next = torch.zeros(d_vocab, latents.shape[-1]).index_add_(0, next_tokens.flatten(), latents.flatten(0, 1)) / mass
    return {
        "position": by_position.argmax(dim=0),
        "position share": by_position.max(dim=0).values,
        "next token": by_next.argmax(dim=0),
        "next-token share": by_next.max(dim=0).values,
    }


# %%
profiles = latent_profiles(latents_by_token, next_tokens, tokenizer.vocab_size)
top_logit = direct_logit_effect(model, decoder_in_model_units).argmax(dim=-1).cpu()
live = frequency > 0
letter_positions = list(MIRRORED_POSITIONS[:-1])  # 4, 5, 6: the next token is a determined letter
mirrored_share = latents_by_token[:, letter_positions].sum(dim=(0, 1)) / latents_by_token.sum(dim=(0, 1)).clamp_min(
    1e-12
)
MOSTLY = results.record("settings.most_share", 0.9)  # "most of a latent's activation": at least this share of it
mirrored_letter = live & (mirrored_share >= MOSTLY)
one_letter = mirrored_letter & (profiles["next-token share"] >= MOSTLY)
says_it = one_letter & (top_logit == profiles["next token"])
one_position = live & (profiles["position share"] >= MOSTLY)
counted = {"live": live, "mirrored_letter": mirrored_letter, "one_letter": one_letter, "says_it": says_it}
for name, group in counted.items():
    results.record(f"interp.{name}", group.sum())
median_position_share = profiles["position share"][one_letter].median()  # NaN if a short run finds none
results.record("interp.one_letter.median_position_share", median_position_share.nan_to_num(0.0))
print(f"{int(mirrored_letter.sum())} of {int(live.sum())} live latents put ≥ {MOSTLY:.0%} of their activation")
print("  on positions 4–6, where the next letter is determined;")
print(f"  {int(one_letter.sum())} of them put ≥ {MOSTLY:.0%} of it before one particular letter,")
print(f"  and for {int(says_it.sum())} of those, that letter is also the token their direct path raises most")
print(f"  their largest share on a single position: median {median_position_share:.0%}")
print(f"{int(one_position.sum())} live latents put ≥ {MOSTLY:.0%} of their activation on one position")


def profile_rows(latents: list[int]) -> dict[str, list[str]]:
    return {
        "latent": [str(j) for j in latents],
        "frequency": [f"{frequency[j]:.2%}" for j in latents],
        "share on positions 4–6": [f"{mirrored_share[j]:.0%}" for j in latents],
        "top position (share)": [
            f"{int(profiles['position'][j])} ({profiles['position share'][j]:.0%})" for j in latents
        ],
        "next token (share)": [
            f"{tokenizer.vocabulary[int(profiles['next token'][j])]} ({profiles['next-token share'][j]:.0%})"
            for j in latents
        ],
        "direct-path top token": [tokenizer.vocabulary[int(top_logit[j])] for j in latents],
    }


by_frequency = frequency.argsort(descending=True)
others = [j for j in by_frequency.tolist() if live[j] and not mirrored_letter[j]][:5]
chosen = [j for j in by_frequency.tolist() if mirrored_letter[j]][:7] + others
html_table(
    profile_rows(chosen), title="The 7 most frequent latents of positions 4–6, then the 5 most frequent others"
).show()
results.record("interp.mirrored_letter.largest_frequency", (frequency * mirrored_letter).max())  # 0 if there are none


def record_group(name: str, latents: list[int]) -> None:
    """How many latents a group has, and their profiles (an empty group has none to record)."""
    results.record(f"interp.{name}.n", len(latents))
    if not latents:
        return
    columns = {
        "frequency": frequency,
        "top_position": profiles["position"],
        "position_share": profiles["position share"],
        "next_token_share": profiles["next-token share"],
    }
    for column, values in columns.items():
        results.record(f"interp.{name}.{column}", values[latents])


unpredictable = [j for j in others if int(profiles["position"][j]) in (1, 2)]  # the next letter is still a guess there
record_group("others", others)
record_group("others.unpredictable", unpredictable)
one_job = [j for j in others if j not in unpredictable and profiles["position share"][j] >= MOSTLY]
record_group("others.one_position", one_job)

# %% [markdown]
# ### Max-activating examples
#
# For a latent, the strings and positions where it fires hardest, with the token at that
# position highlighted (its shade shows the activation) and the token the model should
# predict next. Below: the three most frequent latents that fire on the mirrored half before
# one letter, and the most frequent latent elsewhere.


# %%
def top_activating_examples(
    latents: Float[Tensor, "strings pos d_sae"], latent: int, n: int = 8
) -> list[tuple[int, int, float]]:
    """(string index, position, activation) of the `n` largest activations of `latent`."""
    values, flat = latents[..., latent].flatten().topk(n)
    n_pos = latents.shape[1]
    return [(i // n_pos, i % n_pos, v) for i, v in zip(flat.tolist(), values.tolist()) if v > 0]


# %%
showcase = [j for j in by_frequency.tolist() if one_letter[j]][:3] + [
    next(j for j in by_frequency.tolist() if live[j] and not mirrored_letter[j])
]
for latent in showcase:
    title = (
        f"latent {latent}: fires on {frequency[latent]:.1%} of tokens; "
        f"{mirrored_share[latent]:.0%} of its activation is on positions 4–6"
    )
    display(HTML(max_activating_html(test_strings, top_activating_examples(latents_by_token, latent), title=title)))

# %% [markdown]
# ### A latent dashboard
#
# Everything about one latent in one figure: the histogram of its non-zero activations,
# where it fires, the tokens its direct path raises most, and its top examples. "Where it
# fires" is a heatmap of position against the token to be predicted, with every next token
# labelled along the bottom; its colour bar gives the share of the latent's total activation
# that falls in each cell. Here for the first and the last latent above.

# %%
logit_effects = direct_logit_effect(model, decoder_in_model_units).cpu()
for latent in [showcase[0], showcase[-1]]:
    examples = [(test_strings[s], p, v) for s, p, v in top_activating_examples(latents_by_token, latent)]
    latent_dashboard(
        latent, latents_by_token[..., latent], next_tokens, tokenizer.vocabulary, logit_effects[latent], examples
    ).show()

# %% [markdown]
# ### Exercise 6.1 (reading, no check): interpret the latents
#
# **Difficulty** ●●○○○ · **Importance** ●●●○○ · **Plan for** 15 minutes
#
# Use the table, the examples and the dashboards to say, for a few latents, *which position*
# they respond to and *which letter* they are about. Does the direct-path token agree with
# the next token they fire before? What do the latents outside the mirrored half respond to?
# Then open the answer.
#
# <details><summary>Hint 1: sort the latents first</summary>
#
# Start from the table: "share on positions 4–6" splits the latents into those of the mirrored
# half, where the next letter is determined, and the rest. Take the two groups one at a time,
# and for each latent read "top position (share)" and "next token (share)" side by side: a
# share near {{=100%}} means the latent is about that one position, or that one letter.
# </details>
#
# <details><summary>Hint 2: rows or columns of the heatmap</summary>
#
# In the dashboard's heatmap a latent about one letter lights up a single column (one next
# token) across several rows (positions); a latent about one position lights up a single row.
# For the mirrored-half latents, compare "next token" with "direct-path top token": when they
# agree, the latent fires before a letter and also pushes the model to say it. For the others,
# look at which positions they fire on, and whether the next token there can be predicted at
# all.
# </details>
#
# Stuck after the hints? The same cell in `solutions/06_sae_transformer.ipynb` has the answer.
#
# <details><summary>What we found (full mode)</summary>
#
# - Of the {{interp.live:.0f}} live latents, {{interp.mirrored_letter:.0f}} put at least
#   {{settings.most_share:.0%}} of their activation on positions 4–6, where the next letter is
#   fixed by the first half. {{interp.one_letter:.0f}} of those are also about **one letter**:
#   at least {{settings.most_share:.0%}} of their activation comes right before that letter.
#   For {{interp.says_it:.0f}} of these {{interp.one_letter:.0f}}, the direct path raises
#   exactly that letter's logit most. These are "write letter x next" features: the latent is
#   both *about* the letter and *causes* it to be said.
# - They are **not** specific to a position: their largest share on any single position has
#   a median of {{interp.one_letter.median_position_share:.0%}}. The same latent fires before
#   an `r` at position 4, 5 or 6, whichever earlier position attention copied the `r` from.
#   The MLP output encodes the letter to write, not where it came from.
# - The most frequent latents lie elsewhere: the most frequent of the mirrored-half latents
#   fires on {{interp.mirrored_letter.largest_frequency:.1%}} of tokens, the five most frequent
#   others on {{interp.others.frequency|min:.1%}} to {{interp.others.frequency|max:.1%}}.
#   {{interp.others.unpredictable.n:.0f}} of those five put their largest share
#   ({{interp.others.unpredictable.position_share|min:.0%}} to
#   {{interp.others.unpredictable.position_share|max:.0%}}) on position 1 or 2, where the next
#   letter cannot be predicted: the MLP output there carries what has been read so far, and
#   their next-token share is at chance level ({{interp.others.unpredictable.next_token_share|min:.0%}}
#   to {{interp.others.unpredictable.next_token_share|max:.0%}}, against 1/26 ≈ {{=4%}}).
#   {{interp.others.one_position.n:.0f}} fires almost only at one position: position
#   {{interp.others.one_position.top_position|min:.0f}}, with
#   {{interp.others.one_position.position_share|min:.0%}} of its activation, where the next
#   token is always the same (`|` after position 3, `>` after position 7). One fixed job.
#
# Check this against your own numbers: the latent indices depend on the seed, the pattern
# should not.
# </details>

# %% [markdown]
# ## 7. Bad input gets a clear answer
#
# The helpers check what they are given before running the model. Each of these is a
# mistake worth making once:

# %%
attempts = {
    "a hook the model does not have": lambda: collect_activations(
        model, data.test_tokens[:2], "blocks.0.hook_mlp_output"
    ),
    "an SAE trained on another hook's size": lambda: spliced_loss(
        model, eval_tokens[:2], "blocks.0.mlp.hook_post", sae_replacement(topk_sae, 0, activation_scale)
    ),
    "a token id outside the vocabulary": lambda: collect_activations(
        model, torch.tensor([[0, 3, 4, 30, 1, 30, 4, 3, 2]]), HOOK
    ),
    "a character outside the vocabulary": lambda: tokenizer.encode("<abC|Cba>"),
}
for what, attempt in attempts.items():
    try:
        attempt()
        print(f"{what}: accepted (unexpected!)")
    except (KeyError, ValueError, TypeError) as error:
        print(f"{what}: {type(error).__name__}: {error}")

# %% [markdown]
# ## Summary
#
# - On a model trained from scratch, the field's measures of an SAE are reconstruction
#   (FVE, about the mean), sparsity (L0, dead and dense latents, the density histogram) and
#   the one that asks the model: loss recovered, between clean and ablated.
# - Per-token activations, position 0 excluded and a fixed normalisation, are what SAEs are
#   trained on.
# - The latents of this model line up with the task's variables: many are "write letter x
#   next", shared across the positions of the mirrored half.
#
# In Part 7 we use two SAEs on either side of this model's MLP to see which input latents
# drive which output latents.
