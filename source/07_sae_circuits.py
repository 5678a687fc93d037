# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Part 7: SAE circuits and efficient sparse computation
#
# An SAE turns one layer's activations into a handful of active latents. With an SAE on each
# side of a component, we can ask how the component maps latents to latents: if input latent
# `i` grew a little, how much would output latent `o` move? Those derivatives form a
# **Jacobian** between the two SAEs, and because both SAEs are sparse, only a small
# `k_out × k_in` block of it matters at each token. This part computes that block around the
# MLP of Part 6's palindrome transformer, first slowly and obviously, then fast.
#
# Sparsity is also what makes SAEs cheap to run, if the code exploits it. The second half
# decodes with a realistically wide TopK SAE (`d_in` {{settings.decoding_d_in:.0f}}, `d_sae`
# {{settings.decoding_d_sae:,.0f}}, `k` 32) three ways and times them. Timing code is easy
# to get wrong, so you will also see how to measure properly: warm-up, device
# synchronisation, many runs, the median and its spread, and memory.
#
# **You will**
# - train two TopK SAEs, one on the MLP's input and one on its output;
# - write the Jacobian between them with explicit loops (`jacobian_loop`), then as one
#   gather and one einsum (`jacobian_vectorised`), and check both against autograd;
# - time both with a reusable benchmark helper, and see how sparse the Jacobian is and which
#   latents its largest entries connect;
# - compare three sparse decoders at a realistic width across token counts and `k`, with
#   times and peak memory.
#
# **Time:** about {{=2}} hours.

# %% tags=["workbook-setup"]

# %%
from part_utils.colab import install_transformer_lens_on_colab

install_transformer_lens_on_colab()  # not preinstalled on Colab; a no-op elsewhere

# %% tags=["reference"]
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from einops import einsum
from jaxtyping import Float, Int
from torch import Tensor

from part_utils.activation_sae import ActivationSource
from part_utils.reference.part5_sae_variants import (
    TopKToySAE,
    TopKToySAEConfig,
    decode_dense,
    decode_gather,
    decode_sparse,
)
from part_utils.timing import measure

# %%
import os
import time

import plotly.graph_objects as go

import tests.part7_sae_circuits as checks
from part_utils.activation_sae import PublishedAuxKTopKSAE
from part_utils.activations import collect_activations
from part_utils.device import get_device
from part_utils.modes import FAST_MODE, full_or_fast
from part_utils.palindromes import load_palindrome_model, mlp_weights
from part_utils.palindromes.language import MIRRORED_POSITIONS, SEQUENCE_LENGTH, palindrome_dataset
from part_utils.plotting.benchmarks import plot_timings, timing_table
from part_utils.plotting.tables import html_table
from part_utils.reference.part4_toy_sae import init_encoder_as_decoder_transpose
from part_utils.reference.part6_sae_transformer import firing_frequency, fraction_variance_explained
from part_utils.results import Results
from part_utils.seeding import seed_everything
from part_utils.timing import format_bytes, format_seconds
from part_utils.training import cosine_decay_lr

device = get_device()
results = Results(part=7)  # what the text quotes, recorded by the full-mode run (a no-op otherwise)
results.record("machine.cpu_cores", os.cpu_count())
print(f"device: {device}, fast mode: {FAST_MODE}, CPU threads: {torch.get_num_threads()}")

# %% [markdown]
# ## 1. Two SAEs around the MLP
#
# The model is Part 6's one-layer transformer, trained on palindromes `<abc|cba>`. Its
# block computes `resid_mid = resid_pre + attn(ln1(resid_pre))`, then
# `mlp_out = MLP(ln2(resid_mid))` with `MLP(x) = ReLU(x W_in + b_in) W_out + b_out`.
#
# We put the first SAE on the MLP's input, `blocks.0.mlp.hook_in` (after `ln2`), and the
# second on its output, `blocks.0.hook_mlp_out` (before it is added to the residual stream).
# Reading *after* the LayerNorm and *before* the residual addition is what keeps the chain
# between the two SAEs simple: nothing sits between them but the MLP itself. Had we read the
# residual stream instead, the Jacobian would also contain LayerNorm's derivative (a
# token-dependent projection and rescaling) and an identity term from the skip connection.
#
# First, confirm that the MLP weights reproduce `hook_mlp_out` from `mlp.hook_in`, to
# floating-point precision.

# %%
model = load_palindrome_model()
data = palindrome_dataset()
W_in, b_in, W_out, b_out = mlp_weights(model)
d_model, d_mlp = W_in.shape
train_tokens = data.train_tokens[: full_or_fast(len(data.train_tokens), 3_000)]
mlp_in = collect_activations(model, train_tokens, "blocks.0.mlp.hook_in").flatten(0, 1)
mlp_out = collect_activations(model, train_tokens, "blocks.0.hook_mlp_out").flatten(0, 1)
recomputed = F.relu(mlp_in @ W_in + b_in) @ W_out + b_out
print(f"{len(mlp_in):,} training tokens, d_model {d_model}, d_mlp {d_mlp}")
print(
    f"largest |MLP(mlp.hook_in) - hook_mlp_out|: {(recomputed - mlp_out).abs().max():.1e} "
    f"(activations are of size {mlp_out.abs().max():.0f})"
)

# %% [markdown]
# Now the two SAEs: Part 5's TopK SAE with one instance, fed by Part 6's `ActivationSource`
# (random rows of the stored activations). Both have `d_sae` = 8 · `d_model` =
# {{settings.d_sae:.0f}} latents and `k` = {{settings.k:.0f}}, and AuxK as Gao et al. (2024)
# publish it, not Part 5's variant: Part 6's `PublishedAuxKTopKSAE`, with `k_aux` =
# {{settings.k_aux:.0f}}, the auxiliary error divided by the residual's variance and the
# coefficient {{=1/32}}. The decoder bias starts at the data mean. Each SAE took
# {{timing.sae_training_seconds_each:.0f}} s to train in our full-mode run, on a
# {{machine.cpu_cores:.0f}}-core CPU that other work was sharing.

# %%
d_sae, k = 8 * d_model, 8
k_aux = d_model // 2  # Gao et al.: a power of two near d_model / 2
for name, value in {"d_sae": d_sae, "k": k, "k_squared": k * k, "k_aux": k_aux}.items():
    results.record(f"settings.{name}", value)


def train_topk_sae(activations: Float[Tensor, "tokens d_model"], name: str) -> TopKToySAE:
    seed_everything(1)
    cfg = TopKToySAEConfig(
        n_inst=1, d_in=d_model, d_sae=d_sae, k=k, k_aux=k_aux, aux_coeff=1 / 32, dead_after_steps=200
    )
    sae = PublishedAuxKTopKSAE(cfg, ActivationSource(activations, n_inst=1, seed=1))
    init_encoder_as_decoder_transpose(sae)
    with torch.no_grad():
        sae.b_dec.copy_(activations.mean(dim=0))
    steps = full_or_fast(1_000, 150)
    sae.optimize(steps=steps, batch_size=1024, lr=3e-3, lr_schedule=cosine_decay_lr, log_every=steps, description=name)
    return sae.requires_grad_(False).eval()


@torch.no_grad()
def sae_quality(sae: TopKToySAE, activations: Float[Tensor, "tokens d_model"]) -> str:
    acts = sae.encode(activations[:, None, :])
    reconstruction = sae.decode(acts)
    fvu = 1 - fraction_variance_explained(activations, reconstruction[:, 0])
    dead = int((firing_frequency(acts[:, 0]) == 0).sum())
    return f"fraction of variance unexplained {fvu:.4f}, dead latents {dead} of {d_sae}"


started = time.perf_counter()
sae_in = train_topk_sae(mlp_in, "SAE on mlp.hook_in")
sae_out = train_topk_sae(mlp_out, "SAE on hook_mlp_out")
results.record("timing.sae_training_seconds_each", (time.perf_counter() - started) / 2)
print(f"input SAE:  {sae_quality(sae_in, mlp_in)}")
print(f"output SAE: {sae_quality(sae_out, mlp_out)}")

# %% [markdown]
# ## 2. The Jacobian between two SAEs, slowly
#
# Follow one token through the chain. The input SAE turns `x` into latents `f` (only `k` of
# them non-zero) and decodes `x̂ = f W_dec_in + b_dec_in`, whose rows are the unit-norm
# decoder directions. The MLP maps `x̂` to `y = ReLU(x̂ W_in + b_in) W_out + b_out`. The
# output SAE's pre-activations are `g = (y - b_dec_out) W_enc_out + b_enc_out`. By the chain
# rule, for input latent `i` and output latent `o`,
#
# $$\frac{\partial g_o}{\partial f_i} = \sum_m
# \underbrace{(W_{dec,in} W_{in})_{i m}}_{\text{what } i \text{ writes into neuron } m} \cdot
# \underbrace{\mathbf 1[\text{pre}_m > 0]}_{\text{ReLU}'} \cdot
# \underbrace{(W_{out} W_{enc,out})_{m o}}_{\text{what } o \text{ reads from } m}$$
#
# with `pre = x̂ W_in + b_in`. The biases vanish in the derivative, and so does TopK: near
# the token's code, the same latents stay on top, and an active latent's output moves one for
# one with its pre-activation. So at each token we only need the `k_out × k_in` block between
# the active input latents and the active output latents:
# `J[t, o, i] = ∂ g[active_out[t, o]] / ∂ f[active_in[t, i]]`.
#
# We evaluate the ReLU derivative at `x̂`, the input SAE's reconstruction, not at the true
# `x`: the Jacobian describes the composed map *latents → MLP → latents*, and that map runs
# the MLP on what the latents decode to.
#
# ### Exercise 2.1: `jacobian_loop`
#
# **Difficulty** ●●●○○ · **Importance** ●●●○○ · **Plan for** 20 minutes
#
# Write `jacobian_loop(weights, mlp_pre, active_in, active_out)` with explicit Python loops
# over tokens, output latents and input latents. For each entry: the vector that input
# latent writes into the MLP's neurons (its decoder row times `W_in`), masked by the ReLU
# derivative at that token, dotted with the vector the output latent reads from the neurons
# (`W_out` times its encoder column). Slow on purpose: it is the reference you will
# trust when the fast version disagrees.
#
# The inputs: `mlp_pre` is `pre` for every token, `[tokens, d_mlp]`; `active_in[t]` and
# `active_out[t]` hold the numbers of that token's `k_in` and `k_out` active latents (distinct
# within a token, as TopK's are). Return `J` of shape `[tokens, k_out, k_in]`, every axis
# kept even when it has length 1, in `mlp_pre`'s dtype: float64 inputs give a float64 `J`.
# The ReLU derivative is 0 where `pre` is exactly 0, as in autograd. Leave the inputs
# unchanged: build new tensors rather than editing them in place.
#
# <details><summary>Hint 1: one token at a time</summary>
#
# Start with an empty result, `torch.zeros` of shape `[tokens, k_out, k_in]` with `mlp_pre`'s
# dtype and device, and fill it entry by entry. For token `t`, compute its ReLU derivative
# once: a `[d_mlp]` vector from row `t` of `mlp_pre`. Then loop over the output latents,
# computing the vector each one reads from the neurons, and inside that over the input
# latents, computing the vector each one writes into them; each entry combines these three
# vectors.
# </details>
#
# <details><summary>Hint 2: the shapes of the three vectors</summary>
#
# The active indices are latent numbers. Input latent `active_in[t, i]` picks a row of
# `W_dec_in` (`[d_model]`), and that row times `W_in` (`[d_model, d_mlp]`) is `[d_mlp]`.
# Output latent `active_out[t, o]` picks a column of `W_enc_out` (index its second axis,
# `[:, ...]`), of shape `[d_model]`, and `W_out` (`[d_mlp, d_model]`) times that column is
# `[d_mlp]`. The ReLU derivative is `mlp_pre[t] > 0` (strictly), converted to `mlp_pre`'s
# dtype. `J[t, o, i]` is the sum over `d_mlp` of the three `[d_mlp]` vectors multiplied
# elementwise: output latents on axis 1, input latents on axis 2.
# </details>
#
# Stuck after the hints? The same cell in `solutions/07_sae_circuits.ipynb` has the answer.


# %% tags=["reference"]
@dataclass(frozen=True)
class CircuitWeights:
    """The linear maps around the MLP, in TransformerLens layout (activations multiply from the left)."""

    W_dec_in: Float[Tensor, "d_sae_in d_model"]
    """The input SAE's decoder: one unit-norm row per latent."""
    W_in: Float[Tensor, "d_model d_mlp"]
    W_out: Float[Tensor, "d_mlp d_model"]
    W_enc_out: Float[Tensor, "d_model d_sae_out"]
    """The output SAE's encoder: one column per latent."""


def jacobian_loop(
    weights: CircuitWeights,
    mlp_pre: Float[Tensor, "tokens d_mlp"],
    active_in: Int[Tensor, "tokens k_in"],
    active_out: Int[Tensor, "tokens k_out"],
) -> Float[Tensor, "tokens k_out k_in"]:
    # BEGIN SOLUTION
    n_tokens, k_in = active_in.shape
    k_out = active_out.shape[1]
    jacobian = torch.zeros(n_tokens, k_out, k_in, dtype=mlp_pre.dtype, device=mlp_pre.device)
    for t in range(n_tokens):
        relu_derivative = (mlp_pre[t] > 0).to(mlp_pre.dtype)
        for o in range(k_out):
            read_by_output = weights.W_out @ weights.W_enc_out[:, active_out[t, o]]
            for i in range(k_in):
                written_by_input = weights.W_dec_in[active_in[t, i]] @ weights.W_in
                jacobian[t, o, i] = (written_by_input * relu_derivative * read_by_output).sum()
    return jacobian
    # END SOLUTION


# %%
checks.test_jacobian_loop(jacobian_loop)

# %% [markdown]
# ## 3. The same Jacobian, vectorised
#
# The loop recomputes the same products over and over. Two observations remove them:
#
# - `W_dec_in @ W_in` (`[d_sae_in, d_mlp]`) and `W_out @ W_enc_out` (`[d_mlp, d_sae_out]`)
#   do not depend on the token, so they can be computed once per pair of SAEs. Row `i` of
#   the first is what input latent `i` writes into the neurons; column `o` of the second is
#   what output latent `o` reads from them. We store the second transposed, one row per
#   latent, so that both are gathered the same way.
# - Indexing these products with the active indices gathers every token's rows at once:
#   `[tokens, k_in, d_mlp]` and `[tokens, k_out, d_mlp]`.
#
# Then one `einsum` over tokens multiplies the gathered rows of the second product, the ReLU
# derivatives `[tokens, d_mlp]` and the gathered rows of the first, summing over `d_mlp`.
#
# ### Exercise 3.1: `latent_products` and `jacobian_vectorised`
#
# **Difficulty** ●●●○○ · **Importance** ●●●○○ · **Plan for** 20 minutes
#
# Write `latent_products(weights)`, returning the two products as `LatentProducts`
# (`written` `[d_sae_in, d_mlp]`, `read` `[d_sae_out, d_mlp]`), and
# `jacobian_vectorised(products, mlp_pre, active_in, active_out)`, with the same inputs, the
# same result and the same conventions as `jacobian_loop` (float64 in, float64 out, for the
# products too), and no Python loops. The check compares them with the reference and with
# your loop, and compares the result with
# `torch.autograd.functional.jacobian` of the whole chain (SAE decoder, MLP, SAE encoder,
# biases included) on a tiny case.
#
# <details><summary>Hint 1: products, then gathers, then one einsum</summary>
#
# `latent_products` involves no token at all: two matrix products of the weights, the second
# transposed so that both have one row per latent. In `jacobian_vectorised`, gather before
# you multiply: index `products.written` with `active_in` and `products.read` with
# `active_out`. Indexing a `[d_sae, d_mlp]` matrix with a `[tokens, k]` tensor of latent
# numbers gives `[tokens, k, d_mlp]`, every token's rows at once. The ReLU derivative is
# `mlp_pre > 0` for all tokens together, `[tokens, d_mlp]`, in `mlp_pre`'s dtype.
# </details>
#
# <details><summary>Hint 2: the einsum's axes</summary>
#
# Three operands: the gathered `read`, `(tokens, k_out, d_mlp)`; the ReLU derivative,
# `(tokens, d_mlp)`; the gathered `written`, `(tokens, k_in, d_mlp)`. The output is
# `(tokens, k_out, k_in)`. `d_mlp` is missing from the output, so the einsum sums over it;
# `tokens` appears in every operand and in the output, so it is matched up token by token
# rather than summed. With einops' `einsum` the tensors come first and the pattern last, with
# axis names separated by spaces.
# </details>
#
# Stuck after the hints? The same cell in `solutions/07_sae_circuits.ipynb` has the answer.


# %% tags=["reference"]
@dataclass(frozen=True)
class LatentProducts:
    written: Float[Tensor, "d_sae_in d_mlp"]
    """W_dec_in @ W_in: what each input latent writes into the MLP's neurons."""
    read: Float[Tensor, "d_sae_out d_mlp"]
    """(W_out @ W_enc_out)ᵀ: what each output latent reads from the neurons."""


def latent_products(weights: CircuitWeights) -> LatentProducts:
    # BEGIN SOLUTION
    return LatentProducts(written=weights.W_dec_in @ weights.W_in, read=(weights.W_out @ weights.W_enc_out).T)
    # END SOLUTION


def jacobian_vectorised(
    products: LatentProducts,
    mlp_pre: Float[Tensor, "tokens d_mlp"],
    active_in: Int[Tensor, "tokens k_in"],
    active_out: Int[Tensor, "tokens k_out"],
) -> Float[Tensor, "tokens k_out k_in"]:
    # BEGIN SOLUTION
    relu_derivative = (mlp_pre > 0).to(mlp_pre.dtype)
    return einsum(
        products.read[active_out],
        relu_derivative,
        products.written[active_in],
        "tokens k_out d_mlp, tokens d_mlp, tokens k_in d_mlp -> tokens k_out k_in",
    )
    # END SOLUTION


# %%
checks.test_jacobian_vectorised(latent_products, jacobian_vectorised, loop=jacobian_loop)

# %% [markdown]
# <details><summary>Question: when would you <em>not</em> precompute <code>W_dec_in @ W_in</code>?</summary>
#
# When it is large and you only need a few rows. For a model with `d_mlp` 3,072 and an SAE
# with 49,152 latents it has 151 million entries (about 600 MB in float32), while a batch of 64
# tokens with `k` 32 touches at most 2,048 of its rows. Then gather the decoder rows first and
# multiply only those by `W_in`. Precomputing pays off when the product fits comfortably and
# is reused across many batches.
# </details>
#
# ## 4. Timing code honestly
#
# "The vectorised version is faster" is a measurement, and measurements can mislead. The
# helper `part_utils.timing.measure(function, device)` does what a careful benchmark does,
# and you can reuse it for your own code:
#
# 1. **Warm-up.** The first calls pay one-off costs: lazy initialisation, memory allocation,
#    kernel selection, cold caches. They are run but not timed.
# 2. **Synchronise.** On CUDA and MPS a call returns as soon as its kernels are *queued*;
#    the GPU works on in the background. A clock read right after the call measures the
#    launch, not the work. So each timed run is fenced: synchronise, start the clock, call,
#    synchronise, stop the clock. (On the CPU the synchronisation does nothing.)
# 3. **Many runs, median and spread.** On a shared machine some runs are slowed by other
#    processes. The median ignores a few slow outliers; the interquartile range (IQR, the
#    middle half of the runs) says how much to trust it. Report both, and the run count.
# 4. **Memory, separately.** Peak memory comes from one extra, untimed run: the CUDA
#    allocator's peak counter; on a Linux CPU the growth of the process's peak resident
#    memory; on MPS, which keeps no peak, the memory still held when the call returns (a
#    lower bound).
# 5. **Same conditions.** Compare methods on the same machine, inputs and thread count, and
#    name them when you report a number. On a machine whose cores are busy with other work,
#    a multi-threaded CPU kernel waits for its slowest thread and small operations can get
#    many times slower; `torch.set_num_threads(1)` is then worth a comparison.
#
# The benchmark below uses the real MLP and {{settings.bench_tokens:.0f}} tokens of real
# activations, but not our trained SAEs: their `k` = {{settings.k:.0f}} is small, and the
# loop's cost grows with `k_in · k_out`. It uses random SAEs with `k` =
# {{settings.bench_k:.0f}} active latents on each side instead (the `k` OpenAI's
# `sparse_autoencoder` trains with by default, and the one section 6 decodes with), and
# `d_sae` = 32 · `d_model` = {{settings.bench_d_sae:,.0f}} random unit directions. The loop does
# {{settings.bench_tokens:.0f}} · {{settings.bench_k:.0f}} · {{settings.bench_k:.0f}} =
# {{settings.loop_products:,.0f}} small products per call, so it gets only a few runs.


# %% tags=["reference"]
def random_circuit_case(
    W_in: Float[Tensor, "d_model d_mlp"],
    b_in: Float[Tensor, " d_mlp"],
    W_out: Float[Tensor, "d_mlp d_model"],
    x: Float[Tensor, "tokens d_model"],
    *,
    d_sae: int,
    k: int,
    seed: int = 0,
) -> tuple[CircuitWeights, Float[Tensor, "tokens d_mlp"], Int[Tensor, "tokens k"], Int[Tensor, "tokens k"]]:
    """A real MLP and real inputs, with random SAE directions of a chosen width and random active sets."""
    generator = torch.Generator().manual_seed(seed)
    d_model, n_tokens = W_in.shape[0], len(x)
    random = lambda *shape: torch.randn(*shape, generator=generator).to(W_in)
    weights = CircuitWeights(
        F.normalize(random(d_sae, d_model), dim=-1), W_in, W_out, random(d_model, d_sae) / d_model**0.5
    )
    active_in, active_out = (
        torch.rand(n_tokens, d_sae, generator=generator).topk(k, dim=-1).indices.to(W_in.device) for _ in range(2)
    )
    return weights, x @ W_in + b_in, active_in, active_out


# %%
# Timings vary from run to run.
bench_tokens, bench_k, bench_d_sae = full_or_fast(64, 16), 32, 32 * d_model
bench_settings = {"bench_tokens": bench_tokens, "bench_k": bench_k, "bench_d_sae": bench_d_sae}
for name, value in {**bench_settings, "loop_products": bench_tokens * bench_k**2}.items():
    results.record(f"settings.{name}", value)
bench_case = random_circuit_case(W_in, b_in, W_out, mlp_in[:bench_tokens], d_sae=bench_d_sae, k=bench_k)
bench_weights, bench_pre, bench_in, bench_out = bench_case
bench_products = latent_products(bench_weights)
jacobian_timings = {
    "jacobian_loop": measure(
        lambda: jacobian_loop(bench_weights, bench_pre, bench_in, bench_out),
        device,
        warmup=1,
        min_runs=3,
        budget_seconds=0.0,
    ),
    "jacobian_vectorised": measure(lambda: jacobian_vectorised(bench_products, bench_pre, bench_in, bench_out), device),
    "latent_products (once per SAE pair)": measure(lambda: latent_products(bench_weights), device),
}
for name, timing in jacobian_timings.items():
    print(f"{name:<36} {timing}")
loop, vectorised, products = (timing.median for timing in jacobian_timings.values())
speedup = results.record("timing.jacobian_speedup", loop / vectorised)
speedup_with_products = results.record("timing.jacobian_speedup_with_products", loop / (vectorised + products))
print(
    f"speed-up at {bench_tokens} tokens, k {bench_k} on {device} with {torch.get_num_threads()} thread(s): "
    f"{speedup:.0f}×, or {speedup_with_products:.0f}× if the products are recomputed for every batch"
)

# %% [markdown]
# In our full-mode run, on a {{machine.cpu_cores:.0f}}-core CPU shared with other work, the
# vectorised version was {{timing.jacobian_speedup:.0f}} times faster than the loop at
# {{settings.bench_tokens:.0f}} tokens, and {{timing.jacobian_speedup_with_products:.0f}}
# times faster when the products were recomputed for every batch. The loop's cost is almost
# all Python and per-call overhead: each of its {{settings.loop_products:,.0f}} inner steps
# launches a few tiny operations. On a GPU each tiny operation is also a kernel launch, so
# expect the gap there to be larger still.
#
# ## 5. How sparse is the Jacobian, and what does it connect?
#
# Back to the trained SAEs, on held-out strings. For each token we encode `mlp.hook_in` with
# the input SAE, decode it, run the MLP's first layer on the reconstruction for the ReLU
# derivative, and take the output SAE's active latents on the true `hook_mlp_out`.


# %%
@torch.no_grad()
def topk_code(
    sae: TopKToySAE, x: Float[Tensor, "tokens d_in"]
) -> tuple[Float[Tensor, "tokens k"], Int[Tensor, "tokens k"]]:
    """A one-instance TopK SAE's code in sparse form: the values and indices of its active latents."""
    top = sae.pre_activations(x[:, None, :])[:, 0].topk(int(sae.cfg.k), dim=-1)
    return F.relu(top.values), top.indices


@torch.no_grad()
def sae_circuit(
    sae_in: TopKToySAE,
    sae_out: TopKToySAE,
    W_in: Tensor,
    b_in: Tensor,
    W_out: Tensor,
    x: Float[Tensor, "tokens d_model"],
    y: Float[Tensor, "tokens d_model"],
) -> tuple[CircuitWeights, Float[Tensor, "tokens d_mlp"], Int[Tensor, "tokens k_in"], Int[Tensor, "tokens k_out"]]:
    """Everything the Jacobian needs, for inputs `x` to the MLP and its outputs `y`."""
    values_in, active_in = topk_code(sae_in, x)
    x_hat = decode_gather(values_in, active_in, sae_in.W_dec_normalized[0]) + sae_in.b_dec[0]
    _, active_out = topk_code(sae_out, y)
    weights = CircuitWeights(sae_in.W_dec_normalized[0], W_in, W_out, sae_out.W_enc[0])
    return weights, x_hat @ W_in + b_in, active_in, active_out


# %%
test_tokens = data.test_tokens[: full_or_fast(2_000, 400)]
test_in = collect_activations(model, test_tokens, "blocks.0.mlp.hook_in").flatten(0, 1)
test_out = collect_activations(model, test_tokens, "blocks.0.hook_mlp_out").flatten(0, 1)
circuit = sae_circuit(sae_in, sae_out, W_in, b_in, W_out, test_in, test_out)
weights, mlp_pre, active_in, active_out = circuit
J = jacobian_vectorised(latent_products(weights), mlp_pre, active_in, active_out)  # [tokens, k_out, k_in]

relative = (J.abs() / J.abs().amax(dim=(1, 2), keepdim=True)).flatten().cpu()

# The same MLP and active-set sizes, but random SAE directions: is the trained pair's Jacobian sparser?
random_weights, random_pre, random_in, random_out = random_circuit_case(
    W_in, b_in, W_out, test_in, d_sae=d_sae, k=k, seed=1
)
J_random = jacobian_vectorised(latent_products(random_weights), random_pre, random_in, random_out)
relative_random = (J_random.abs() / J_random.abs().amax(dim=(1, 2), keepdim=True)).flatten().cpu()
for fraction in (0.01, 0.1):
    below = results.record(f"jacobian.trained.below_{fraction:g}", (relative < fraction).float().mean())
    below_random = results.record(f"jacobian.random.below_{fraction:g}", (relative_random < fraction).float().mean())
    print(f"entries below {fraction:.0%} of their token's largest |J|: {below:.1%} (random SAEs: {below_random:.1%})")

histogram = go.Figure()
for name, values in (("trained SAEs", relative), ("random SAE directions", relative_random)):
    histogram.add_trace(
        go.Histogram(
            x=values.clamp_min(1e-4).log10().numpy(),
            name=name,
            histnorm="probability",
            opacity=0.6,
            xbins={"start": -4, "end": 0, "size": 0.1},
        )
    )
histogram.update_layout(
    barmode="overlay",
    title=f"|J| relative to the largest entry of its token ({J.shape[1]}×{J.shape[2]} per token, "
    f"{J.shape[0]:,} tokens)",
    xaxis_title="log10(|J| / max |J| at that token)",
    yaxis_title="fraction of entries",
    height=400,
    width=800,
)
histogram.show()

# %% [markdown]
# With `k` = {{settings.k:.0f}} on both sides each token's block has only
# {{settings.k_squared:.0f}} entries, and it is not extremely sparse: in our full-mode run
# {{jacobian.trained.below_0.1:.0%}} of the entries are below a tenth of their token's largest,
# and {{jacobian.trained.below_0.01:.1%}} below a hundredth. Random directions through the same
# MLP give {{jacobian.random.below_0.1:.0%}} and {{jacobian.random.below_0.01:.1%}}. So the
# trained pair is sparser than chance: the SAEs found latents that the MLP connects
# selectively, though every active input still nudges most active outputs a little. (A
# *Jacobian SAE* trains the pair to make these blocks sparse on purpose.)
#
# Which latents do the largest entries connect? Only positions 4 to 7 matter for the task:
# there the next character is fixed by the first half (position 4, the separator, predicts
# the last letter; position 7 predicts the end). For each latent we find the character it
# most often sits *before* at those positions, the one the model has to predict, and the
# position it is most often active at. Then we rank the pairs of latents by their mean |J|
# over the tokens at which both are active.


# %%
def describe_latents(
    active: Int[Tensor, "tokens k"],
    positions: Int[Tensor, " tokens"],
    following: Int[Tensor, " tokens"],
    vocabulary: list[str],
    d_sae: int,
) -> list[str]:
    """Per latent: the next character it most often precedes, and its most common position, each with its share."""

    def most_common(labels: Tensor, n_labels: int) -> tuple[list[int], list[float]]:
        counts = torch.zeros(d_sae, n_labels, device=active.device)
        counts.index_put_(
            (active.flatten(), labels[:, None].expand_as(active).flatten()),
            torch.ones(active.numel(), device=active.device),
            accumulate=True,
        )
        top = counts.max(dim=-1)
        return top.indices.tolist(), (top.values / counts.sum(dim=-1).clamp_min(1)).tolist()

    letter, letter_share = most_common(following, len(vocabulary))
    position, position_share = most_common(positions, int(positions.max()) + 1)
    return [
        f"before '{vocabulary[letter[i]]}' ({letter_share[i]:.0%}), pos {position[i]} ({position_share[i]:.0%})"
        for i in range(d_sae)
    ]


def strongest_connections(
    J: Float[Tensor, "tokens k_out k_in"],
    active_in: Int[Tensor, "tokens k_in"],
    active_out: Int[Tensor, "tokens k_out"],
    d_sae_in: int,
    n: int,
    min_tokens: int,
) -> list[dict[str, Any]]:
    """The `n` (input latent, output latent) pairs with the largest mean |J| over the tokens where
    both are active, among pairs active together on at least `min_tokens` tokens."""
    d_sae_out = int(active_out.max()) + 1
    pair = (active_out[:, :, None] * d_sae_in + active_in[:, None, :]).flatten()
    summed = lambda values: torch.zeros(d_sae_out * d_sae_in, device=J.device).index_add_(0, pair, values.flatten())
    count, signed, magnitude = summed(torch.ones_like(J)), summed(J), summed(J.abs())
    score = torch.where(count >= min_tokens, magnitude / count.clamp_min(1), 0.0)
    return [
        {
            "in": int(p) % d_sae_in,
            "out": int(p) // d_sae_in,
            "mean J": (signed[p] / count[p]).item(),
            "tokens": int(count[p]),
        }
        for p in score.topk(n).indices
    ]


# %%
positions = torch.arange(SEQUENCE_LENGTH).repeat(len(test_tokens)).to(device)
following = test_tokens.roll(-1, dims=1).flatten().to(device)  # at the mirrored positions, the character to predict
mirrored = (positions >= MIRRORED_POSITIONS[0]) & (positions <= MIRRORED_POSITIONS[-1])
vocabulary = data.tokenizer.vocabulary
described_in = describe_latents(active_in[mirrored], positions[mirrored], following[mirrored], vocabulary, d_sae)
described_out = describe_latents(active_out[mirrored], positions[mirrored], following[mirrored], vocabulary, d_sae)
connections = strongest_connections(
    J[mirrored], active_in[mirrored], active_out[mirrored], d_sae, n=10, min_tokens=full_or_fast(50, 10)
)
letter = lambda description: description.split("'")[1]
same_letter = sum(letter(described_in[row["in"]]) == letter(described_out[row["out"]]) for row in connections)
results.record("connections.n", len(connections))
results.record("connections.same_letter", same_letter)
same_letter_rows = [row for row in connections if letter(described_in[row["in"]]) == letter(described_out[row["out"]])]
results.record("connections.same_letter_positive", sum(row["mean J"] > 0 for row in same_letter_rows))
print(
    f"{same_letter} of the {len(connections)} strongest connections join two latents "
    "that mostly sit before the same character"
)
columns = {
    "input latent": [row["in"] for row in connections],
    "input latent is active": [described_in[row["in"]] for row in connections],
    "output latent": [row["out"] for row in connections],
    "output latent is active": [described_out[row["out"]] for row in connections],
    "mean J": [f"{row['mean J']:+.2f}" for row in connections],
    "tokens": [row["tokens"] for row in connections],
}
html_table(columns, title="The strongest connections through the MLP, at positions 4 to 7 of held-out strings").show()

# %% [markdown]
# Most of the strongest connections join an input latent and an output latent that both sit
# before the same character: in our full-mode run, {{connections.same_letter:.0f}} of the
# {{connections.n:.0f}}. The input latent carries "the next character is g", which attention
# copied from the first half; the output latent writes "g" in the form the unembedding reads.
# The MLP's job at these positions is largely that hand-over, and the Jacobian shows it latent
# by latent: strong, and positive (the input pushes the output up) for
# {{connections.same_letter_positive:.0f}} of those {{connections.same_letter:.0f}}. For the
# pairs whose letters differ, look at the shares: is one of the two latents active at several
# positions, or before several letters?
#
# <details><summary>Question: a large Jacobian entry between two latents that are rarely
# active together: does it matter?</summary>
#
# Not much. The Jacobian is only evaluated where both latents are active, and its entry
# says how strongly one would move the other *there*. That is why the ranking above ignores
# pairs seen on few tokens. Multiplying an entry by the input latent's activation gives an
# attribution: how much of the output latent the input latent accounts for, to first order.
# </details>
#
# ## 6. Decoding sparsely at a realistic width
#
# Part 5 gave three ways to decode TopK codes `values, indices` (`[tokens, k]` each):
# `decode_dense` (scatter into `[tokens, d_sae]`, then a dense matmul with `W_dec`),
# `decode_gather` (gather the `k` decoder rows of each token and weight them) and
# `decode_sparse` (a `torch.sparse_coo_tensor` times `W_dec`). With `d_sae` =
# {{settings.decoding_d_sae:,.0f}} and `k` = 32, the dense version multiplies
# {{decoding.zeros_per_useful:,.0f}} zeros for every useful number.
#
# `decoder_benchmark` times all three on random codes (distinct indices per token) for a
# list of `(tokens, k)` settings, after checking that they agree.

# %% tags=["reference"]
DECODERS: dict[str, Callable[..., Tensor]] = {
    "dense scatter + matmul": decode_dense,
    "gather k rows": decode_gather,
    "sparse tensor matmul": decode_sparse,
}


def random_codes(
    n_tokens: int, k: int, d_sae: int, device: torch.device, generator: torch.Generator
) -> tuple[Float[Tensor, "tokens k"], Int[Tensor, "tokens k"]]:
    """Positive values and distinct latent indices per token, as a TopK SAE would give."""
    indices = torch.rand(n_tokens, d_sae, generator=generator).topk(k, dim=-1).indices
    return torch.rand(n_tokens, k, generator=generator).to(device), indices.to(device)


def decoder_benchmark(
    device: torch.device,
    *,
    d_in: int,
    d_sae: int,
    settings: list[tuple[int, int]],
    seed: int = 0,
    **measure_options: Any,
) -> list[dict[str, Any]]:
    """One row per (decoder, tokens, k): median and quartiles in seconds, runs, peak memory in bytes.
    A decoder the device does not support (e.g. sparse tensors on some MPS versions) is left out."""
    generator = torch.Generator().manual_seed(seed)
    W_dec = F.normalize(torch.randn(d_sae, d_in, generator=generator), dim=-1).to(device)
    rows = []
    for n_tokens, k in settings:
        values, indices = random_codes(n_tokens, k, d_sae, device, generator)
        outputs = {}
        for name, decode in DECODERS.items():
            try:
                outputs[name] = decode(values, indices, W_dec)
            except (NotImplementedError, RuntimeError) as error:
                print(f"{name} is not supported on {device.type}, left out: {error}"[:200])
        for name, output in outputs.items():
            torch.testing.assert_close(
                output,
                outputs["gather k rows"],
                msg=f"{name} disagrees with the gather decoder at {n_tokens} tokens, k {k}",
            )
        for name in list(outputs):
            decode = DECODERS[name]
            del outputs[name]  # free it before measuring memory
            timing = measure(
                lambda decode=decode, values=values, indices=indices: decode(values, indices, W_dec),
                device,
                **measure_options,
            )
            q1, q3 = timing.quartiles
            rows.append(
                {
                    "device": device.type,
                    "decoder": name,
                    "tokens": n_tokens,
                    "k": k,
                    "median": timing.median,
                    "q1": q1,
                    "q3": q3,
                    "runs": len(timing.seconds),
                    "peak_bytes": timing.peak_bytes,
                }
            )
    return rows


# %% [markdown]
# We time on the CPU and, where there is one, on your accelerator too. The sweep varies the
# number of tokens at `k` = 32, and `k` at 64 tokens. On the CPU in fast mode the SAE is
# narrower (`d_in` 128, `d_sae` 8,192) so that the notebook stays quick.


# %%
# Timings vary from run to run.
def benchmark_sizes(on: torch.device) -> dict[str, Any]:
    shrink = FAST_MODE and on.type == "cpu"
    d_in = 128 if shrink else 768
    tokens = [16, 64, 256] if shrink else [16, 64, 256, 1024]
    ks = [8, 32, 128]
    return {"d_in": d_in, "d_sae": 64 * d_in, "settings": sorted({(n, 32) for n in tokens} | {(64, k) for k in ks})}


decoder_rows = []
for on in dict.fromkeys([torch.device("cpu"), device]):
    sizes = benchmark_sizes(on)
    print(
        f"{on.type}: d_in {sizes['d_in']}, d_sae {sizes['d_sae']:,}, {len(sizes['settings'])} settings; "
        "the three decoders agree at each"
    )
    decoder_rows += decoder_benchmark(on, **sizes, warmup=2, min_runs=5, budget_seconds=full_or_fast(0.3, 0.05))

headline = {
    row["decoder"]: row
    for row in decoder_rows
    if row["device"] == device.type and (row["tokens"], row["k"]) == (64, 32)
}
for name, row in headline.items():
    memory = "n/a" if row["peak_bytes"] is None else format_bytes(row["peak_bytes"])
    print(f"{name:<24} median {format_seconds(row['median']):>9}, peak memory +{memory}")
print(
    f"gather is {headline['dense scatter + matmul']['median'] / headline['gather k rows']['median']:.0f}× "
    f"faster than dense at 64 tokens, k 32 on {device.type}"
)

# %%
# Timings vary from run to run.
timing_table(
    decoder_rows, ["device", "decoder", "tokens", "k"], title="Sparse decoding: median time, spread and peak memory"
).show()
for x, held, at, title in (
    ("tokens", "k", 32, "against tokens (k = 32)"),
    ("k", "tokens", 64, "against k (64 tokens)"),
):
    rows = [row for row in decoder_rows if row[held] == at]
    plot_timings(rows, x=x, series="decoder", panels="device", title=f"Decoding time {title}", x_title=x).show()


# %%
# What the text below quotes, from the CPU rows: ratios and memory (times themselves depend on the machine).
def record_cpu_decoding(rows: list[dict[str, Any]], sizes: dict[str, Any]) -> None:
    cpu = {(row["decoder"], row["tokens"], row["k"]): row for row in rows if row["device"] == "cpu"}
    median = lambda name, n_tokens, k: cpu[(name, n_tokens, k)]["median"]
    dense, gather, sparse = DECODERS
    most_tokens = max(n_tokens for n_tokens, _ in sizes["settings"])
    for name, value in {"d_in": sizes["d_in"], "d_sae": sizes["d_sae"], "most_tokens": most_tokens}.items():
        results.record(f"settings.decoding_{name}", value)
    results.record("decoding.dense_multiply_adds_billions_64", 64 * sizes["d_sae"] * sizes["d_in"] / 1e9)
    results.record("decoding.zeros_per_useful", (sizes["d_sae"] - 32) / 32)
    for n_tokens in (64, most_tokens):
        results.record(f"decoding.output_mb_{n_tokens}", n_tokens * sizes["d_in"] * 4 / 2**20)
    ranked = [sorted(DECODERS, key=lambda name: median(name, *setting)) for setting in sizes["settings"]]
    results.record("decoding.cpu.settings", len(ranked))
    results.record("decoding.cpu.dense_slowest", sum(order[-1] == dense for order in ranked))
    results.record("decoding.cpu.sparse_fastest", sum(order[0] == sparse for order in ranked))
    ks_at_64 = sorted(k for n_tokens, k in sizes["settings"] if n_tokens == 64)
    results.record("decoding.cpu.gather_speedup_64", [median(dense, 64, k) / median(gather, 64, k) for k in ks_at_64])
    sparse_speedup = median(gather, most_tokens, 32) / median(sparse, most_tokens, 32)
    results.record("decoding.cpu.sparse_speedup_most_tokens", sparse_speedup)
    for name, n_tokens in [(dense, 64), (dense, most_tokens), (gather, 64), (sparse, 64)]:
        peak = cpu[(name, n_tokens, 32)]["peak_bytes"]
        if peak is not None:  # None where the platform cannot measure it
            results.record(f"decoding.cpu.peak_mb.{name.split()[0]}_{n_tokens}", peak / 2**20)


record_cpu_decoding(decoder_rows, benchmark_sizes(torch.device("cpu")))

# %% [markdown]
# **What to look for** (our full-mode run, on the CPU: {{machine.cpu_cores:.0f}} cores shared
# with other work).
#
# - **Dense is the slowest, and grows with tokens**: the slowest of the three in
#   {{decoding.cpu.dense_slowest:.0f}} of the {{decoding.cpu.settings:.0f}} settings. It does
#   `tokens · d_sae · d_in` multiply-adds whatever `k` is (about
#   {{decoding.dense_multiply_adds_billions_64:.1f}} billion at 64 tokens), so its cost does not
#   depend on `k`. Its memory is two `[tokens, d_sae]` matrices (the zeros, and the scatter's
#   copy): a peak of {{decoding.cpu.peak_mb.dense_64:.0f}} MB at 64 tokens and
#   {{decoding.cpu.peak_mb.dense_1024:.0f}} MB at {{settings.decoding_most_tokens:,.0f}}, for
#   an output of {{decoding.output_mb_64:.1f}} MB and {{decoding.output_mb_1024:.0f}} MB.
# - **Gather** does only `tokens · k · d_in` multiply-adds: at 64 tokens it was
#   {{decoding.cpu.gather_speedup_64|min:.0f}} to {{decoding.cpu.gather_speedup_64|max:.0f}}
#   times faster than dense, depending on `k`. Its memory is the gathered `[tokens, k, d_in]`
#   block, growing with both: a peak of {{decoding.cpu.peak_mb.gather_64:.1f}} MB at 64 tokens
#   and `k` = 32.
# - **The sparse matmul** does the same arithmetic as gather without materialising that
#   block: its peak was {{decoding.cpu.peak_mb.sparse_64:.2f}} MB at 64 tokens and `k` = 32.
#   It was the fastest of the three in {{decoding.cpu.sparse_fastest:.0f}} of the
#   {{decoding.cpu.settings:.0f}} settings, and {{decoding.cpu.sparse_speedup_most_tokens:.1f}}
#   times faster than gather at {{settings.decoding_most_tokens:,.0f}} tokens.
#
# The ranking can change with hardware, sizes and library versions, which is the point of
# measuring: run this on your machine (and on a GPU, if you have one) and compare.
#
# <details><summary>Question: why does the table show the median rather than the mean or the
# minimum?</summary>
#
# The mean is dragged up by the few runs that another process interrupted. The minimum is
# the best case, which you will rarely see in practice, and it hides variation. The median is
# what a typical run costs, and the IQR beside it shows whether the measurement is stable
# enough to compare. If two methods' IQRs overlap, do not claim one is faster.
# </details>
#
# ## Summary
#
# - With SAEs on both sides of an MLP, the derivative of output latents with respect to
#   input latents is `W_dec_in[active_in] · W_in · diag(ReLU'(pre)) · W_out · W_enc_out[:, active_out]`,
#   exact because the SAEs read right after the LayerNorm and right before the residual
#   addition.
# - Vectorised, it is two precomputable products, two gathers and one einsum:
#   {{timing.jacobian_speedup:.0f}} times faster than the loop in our run, and equal to what
#   autograd computes.
# - The resulting `k_out × k_in` blocks are sparser than chance (not extremely sparse at
#   k = {{settings.k:.0f}}), and their strongest entries can be read off in terms of the task:
#   mostly an input latent and an output latent about the same letter.
# - Sparse codes should be decoded sparsely: at a realistic width, gathering `k` rows beat a
#   dense matmul by {{decoding.cpu.gather_speedup_64|min:.0f}} to
#   {{decoding.cpu.gather_speedup_64|max:.0f}} times at 64 tokens in our run (the smaller `k`,
#   the larger the gain), and a sparse matmul was faster still and needed a fraction of the
#   memory of either.
# - Benchmark with warm-up, synchronisation, many runs, the median with its spread, and
#   memory measured separately; `part_utils.timing.measure` does all of it.
