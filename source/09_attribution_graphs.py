# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Part 9: transcoders and attribution graphs, scored against a circuit we know
#
# Circuit tracing, as the field practises it since 2025, replaces each MLP of a model by a
# **transcoder**: a sparse dictionary whose latents read the MLP's input and write its output
# (Dunefsky, Chlenski and Nanda 2024). For one prompt it then builds a **local replacement
# model**: attention patterns and normalisation scales frozen at their values on that prompt,
# MLPs replaced by transcoders, and an **error node** at each layer and position for what the
# transcoder misses. Frozen like that, the model is linear in its nodes, so the direct effect of
# every token embedding, latent and error node on every later latent and logit is well defined:
# an **attribution graph**. Pruned to the nodes that carry most of the influence and checked by
# interventions, it is the picture of "how the model did it" in Ameisen et al. (2025, "Circuit
# Tracing") and Lindsey et al. (2025, "On the Biology of a Large Language Model"), and what the
# open-source `circuit-tracer` library computes.
#
# Those papers work on models nobody understands completely, so nobody can say whether a graph
# is *right*. Here we plant the algorithm ourselves. A two-layer transformer reads strings like
# `<abc|f(c)f(b)f(a)>`: the second half is the first half reversed and passed through a fixed
# letter map f. To predict each letter of the second half the model must fetch the mirrored
# letter x (attention's job) and turn it into f(x) (a lookup table, which an MLP can hold). For
# every output position we know which input position and which letter matter, so we can score
# the graph.
#
# **You will**
# - check that the model learnt the task and find, with Part 6's tools, where the mirrored
#   letter is fetched and where f is applied;
# - write a transcoder's forward pass and loss, train one per MLP, and match its latents to
#   letters;
# - write the local replacement model and check that it reproduces the logits;
# - attribute one target node to every source with one backward pass, then all targets at once;
# - compute influence through the graph as a matrix power series, and prune;
# - score the graphs against the planted circuit, for transcoders and for an SAE on the MLP's
#   output;
# - steer and ablate latents and see whether the graph predicted what happens.
#
# **Time:** about {{=2.5}} hours.

# %% tags=["workbook-setup"]

# %%
from part_utils.colab import install_transformer_lens_on_colab

install_transformer_lens_on_colab()  # not preinstalled on Colab; a no-op elsewhere

# %% tags=["reference"]
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import einsum
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from part_utils.attribution.nodes import Dictionary, Edges, Nodes, Target
from part_utils.attribution.transformer import (
    RecordedPrompt,
    TransformerWeights,
    attention_output,
    layer_norm_with_scale,
    run_and_record,
)
from part_utils.methods import add_to_class
from part_utils.reference.part5_sae_variants import topk_activation
from part_utils.sae_interface import SAEOutput

# %%
import os
from collections import defaultdict

import plotly.graph_objects as go

import tests.part9_attribution_graphs as checks
from part_utils.activations import collect_activations
from part_utils.attribution.build import attribute_all, build_graph
from part_utils.attribution.edge_stability import median_relative_spread, unit_effects
from part_utils.attribution.interventions import predicted_logit_change
from part_utils.attribution.nodes import MLPOutputSAEDictionary, TranscoderDictionary, prompt_nodes
from part_utils.attribution.splicing import spliced_mlp_loss
from part_utils.attribution.training import train_transcoder
from part_utils.attribution.truth import match_letters, score_position
from part_utils.device import get_device
from part_utils.mirror import (
    LETTER_MAP,
    OUTPUT_POSITIONS,
    ground_truth,
    load_mirror_model,
    mirror_dataset,
    mirrored_source_position,
)
from part_utils.mirror.analysis import mirrored_attention, mlp_ablation_accuracy
from part_utils.mirror.language import FIRST_LETTER_TOKEN
from part_utils.modes import FAST_MODE, full_or_fast
from part_utils.palindromes import per_position_accuracy
from part_utils.plotting.attribution import node_labels, plot_attribution_graph, plot_truth_scores
from part_utils.reference.part6_sae_transformer import fraction_variance_explained, loss_recovered
from part_utils.results import Results
from part_utils.seeding import seed_everything
from part_utils.timing import measure

device = get_device()
results = Results(part=9)  # what the text quotes, recorded by the full-mode run (a no-op otherwise)
results.record("machine.cpu_cores", os.cpu_count())
print(f"device: {device}, fast mode: {FAST_MODE}, CPU threads: {torch.get_num_threads()}")

# %% [markdown]
# ## 1. A model with a planted algorithm
#
# The strings are `<`, three letters, `|`, the same three letters reversed and each passed
# through the letter map f, then `>`: `<abc|f(c)f(b)f(a)>`. f is a fixed permutation of the
# alphabet with no fixed points, drawn once from a seeded generator. All 26³ strings are
# shuffled once and split 80/20; the held-out strings are never trained on.

# %%
data = mirror_dataset()
tokenizer = data.tokenizer
print("f:", " ".join(f"{a}→{b}" for a, b in zip("abcdefghijklmnopqrstuvwxyz", LETTER_MAP)))
print(f"{len(data.train_tokens):,} training strings, {len(data.test_tokens):,} held out")
print("examples:", tokenizer.decode(data.test_tokens[:4]))

# %% [markdown]
# Position p predicts token p + 1. The first letters are guesses; positions
# {{=4}}, {{=5}} and {{=6}} (the separator and the first two mapped letters) predict f of the
# letter at positions {{=3}}, {{=2}} and {{=1}}: the **output positions** we score. The model
# has two layers, each with attention and a ReLU MLP, LayerNorm, d_model
# {{settings.d_model:.0f}}, and one attention head of dimension {{settings.d_head:.0f}} per
# layer. It was trained from scratch offline (`python -m part_utils.mirror.retrain`
# regenerates `section_data/part9_mirror_model.pt`, byte for byte) and is loaded here.
#
# Why one narrow head? With four heads of 16 dimensions, the model we trained first did the
# whole task in attention: a letter relabelling is linear, so the heads' output and the
# unembedding can absorb f, and ablating the MLPs barely hurt. Through a 4-dimensional head
# the fetched letter arrives compressed, and the model learns to decode and map it in an MLP.
# The task alone does not force an algorithm on a model; the architecture helped.

# %%
model = load_mirror_model(device=device)
config = model.cfg
for name in ["n_layers", "n_heads", "d_head", "d_model", "d_mlp"]:
    results.record(f"settings.{name}", getattr(config, name))
accuracy = per_position_accuracy(model, data.test_tokens)
for p in OUTPUT_POSITIONS:
    results.record(f"model.accuracy.pos{p}", accuracy[p].item())
print("held-out accuracy per output position:", {p: round(accuracy[p].item(), 4) for p in OUTPUT_POSITIONS})

# %% [markdown]
# Held-out accuracy is {{model.accuracy.pos4:.2%}}, {{model.accuracy.pos5:.2%}} and
# {{model.accuracy.pos6:.2%}} at the three output positions.
#
# **Where is the letter fetched, and where is f applied?** Part 6's tools answer both. The
# attention pattern (hook `blocks.{l}.attn.hook_pattern`) says where each output position
# looks; mean-ablating an MLP's output (replacing it by its average at each position, as in
# Part 6's loss-recovered measure) says which MLP the answer needs.

# %%
attention_on_source = mirrored_attention(model, data.test_tokens)  # [layer, head, output position]
ablated = {layer: mlp_ablation_accuracy(model, data.test_tokens, layer) for layer in range(config.n_layers)}
for layer in range(config.n_layers):
    results.record(f"model.attention_on_source.layer{layer}", attention_on_source[layer].mean().item())
    results.record(f"model.ablated_accuracy.layer{layer}", [ablated[layer][p] for p in OUTPUT_POSITIONS])
fig = go.Figure(
    [
        go.Bar(
            name=f"MLP {layer} mean-ablated",
            x=[f"position {p}" for p in OUTPUT_POSITIONS],
            y=[ablated[layer][p] for p in OUTPUT_POSITIONS],
        )
        for layer in range(config.n_layers)
    ]
    + [
        go.Bar(
            name="intact",
            x=[f"position {p}" for p in OUTPUT_POSITIONS],
            y=[accuracy[p].item() for p in OUTPUT_POSITIONS],
        )
    ]
)
fig.update_layout(
    title="Held-out accuracy with each MLP mean-ablated", yaxis_title="accuracy", yaxis_range=[0, 1.05], height=380
)
fig.show()
print("attention weight on the mirrored letter, per layer (mean over output positions):")
print({layer: round(attention_on_source[layer].mean().item(), 3) for layer in range(config.n_layers)})

# %% [markdown]
# Layer 0's head puts {{model.attention_on_source.layer0:.1%}} of its attention on the
# mirrored letter (layer 1's: {{model.attention_on_source.layer1:.0%}}): layer 0 fetches.
# Mean-ablating MLP 0 drops accuracy at the three output positions to
# {{model.ablated_accuracy.layer0|range:.1%}} (chance is 1/26); ablating MLP 1, to
# {{model.ablated_accuracy.layer1|range:.0%}}. So f lives mostly in MLP 0 at the
# output position, with MLP 1 finishing a part of the job. That is our ground truth: at output
# position p, the path runs from the token at the mirrored position q, through attention in
# layer 0, into latents for its letter at p, to the logit of f of it.

# %% [markdown]
# ## 2. Transcoders
#
# An SAE reconstructs its own input. A **transcoder** reads one thing and writes another: its
# latents read the MLP's input (`blocks.{l}.mlp.hook_in`, after `ln2`) and its decoder writes
# the MLP's output (`blocks.{l}.hook_mlp_out`). Trained to predict the output from the input,
# it is a sparse, wide stand-in for the MLP:
#
# $$\text{latents } a = \operatorname{TopK}(x W_{enc} + b_{enc}), \qquad \hat y = a\, W_{dec} + b_{dec}.$$
#
# Why this matters for circuits: in an SAE on the MLP's output, the map from the residual
# stream to the SAE's latents runs through the MLP, so the effect of one latent on another
# changes with every input (Part 7's Jacobians). A transcoder's latents are computed from the
# residual stream by one linear map and a threshold, so once the latents are known, the effect
# of anything upstream on a latent's pre-activation does not depend on the input.
#
# We use **TopK** latents (Part 5), with Gao et al.'s AuxK loss for dead latents: a fixed
# number `k` of latents per token makes the graphs of different prompts the same size and needs
# no sparsity coefficient to tune. JumpReLU, the choice of Ameisen et al., would work too.
# One transcoder per layer sits side by side as the instances of one `Transcoder`, the same
# instance axis the workbook's SAEs use (instance `l` reads layer `l`). It keeps the SAE
# interface: `pre_activations`, `activation`, `encode`, `decode`, and a forward pass that returns
# an `SAEOutput`; only the forward pass takes two tensors, the input and the target. Unlike
# Part 4's SAE it has no pre-encoder bias: input and output live in different spaces. Decoder
# rows are used normalised (`W_dec_normalized`), as in the workbook's other SAEs.


# %% [markdown]
# The transcoders, and the SAEs we compare them with, are trained on the MLPs' inputs and outputs
# over the training strings, at every position; everything we report is measured on the
# held-out strings.


# %%
def mlp_activations(tokens: Int[Tensor, "prompts pos"], hook: str) -> Float[Tensor, "prompts pos layer d_model"]:
    return torch.stack(
        [collect_activations(model, tokens, hook.format(layer)) for layer in range(config.n_layers)], dim=2
    )


train_in = mlp_activations(data.train_tokens, "blocks.{}.mlp.hook_in").flatten(0, 1)
train_out = mlp_activations(data.train_tokens, "blocks.{}.hook_mlp_out").flatten(0, 1)
test_in = mlp_activations(data.test_tokens, "blocks.{}.mlp.hook_in")
test_out = mlp_activations(data.test_tokens, "blocks.{}.hook_mlp_out")
print(f"training pairs: {tuple(train_in.shape)} (tokens, layer, d_model); held out: {tuple(test_in.shape)}")


# %% tags=["reference"]
@dataclass
class TranscoderConfig:
    n_inst: int
    """One transcoder per instance: here one per layer, each trained on its own layer's MLP."""
    d_in: int
    d_out: int
    d_latent: int
    k: int
    k_aux: int = 32
    aux_coeff: float = 1 / 32
    dead_after_steps: int = 200


class Transcoder(nn.Module):
    """`n_inst` TopK transcoders side by side: latents read the MLP's input and decode to its output."""

    steps_since_fired: Int[Tensor, "inst d_latent"]

    def __init__(self, cfg: TranscoderConfig, device: torch.device | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        shape_enc, shape_dec = (cfg.n_inst, cfg.d_in, cfg.d_latent), (cfg.n_inst, cfg.d_latent, cfg.d_out)
        self.W_enc = nn.Parameter(nn.init.kaiming_uniform_(torch.empty(shape_enc, device=device)))
        self.W_dec = nn.Parameter(nn.init.kaiming_uniform_(torch.empty(shape_dec, device=device)))
        self.b_enc = nn.Parameter(torch.zeros(cfg.n_inst, cfg.d_latent, device=device))
        self.b_dec = nn.Parameter(torch.zeros(cfg.n_inst, cfg.d_out, device=device))
        with torch.no_grad():  # unit decoder rows; no encoder-as-transpose: input and output are different spaces
            self.W_dec.div_(self.W_dec.norm(dim=-1, keepdim=True))
        self.register_buffer(
            "steps_since_fired", torch.zeros(cfg.n_inst, cfg.d_latent, dtype=torch.long, device=device)
        )

    @property
    def W_dec_normalized(self) -> Float[Tensor, "inst d_latent d_out"]:
        return self.W_dec / self.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-8)

    def pre_activations(self, x: Float[Tensor, "batch inst d_in"]) -> Float[Tensor, "batch inst d_latent"]:
        # No pre-encoder bias: the input and the output live in different spaces.
        return einsum(x, self.W_enc, "batch inst d_in, inst d_in d_latent -> batch inst d_latent") + self.b_enc

    def activation(self, pre_acts: Float[Tensor, "batch inst d_latent"]) -> Float[Tensor, "batch inst d_latent"]:
        return topk_activation(pre_acts, self.cfg.k)

    def encode(self, x: Float[Tensor, "batch inst d_in"]) -> Float[Tensor, "batch inst d_latent"]:
        return self.activation(self.pre_activations(x))

    def decode(self, acts: Float[Tensor, "batch inst d_latent"]) -> Float[Tensor, "batch inst d_out"]:
        return einsum(acts, self.W_dec_normalized, "batch inst d_latent, inst d_latent d_out -> batch inst d_out") + (
            self.b_dec
        )

    def dead_latents(self) -> Bool[Tensor, "inst d_latent"]:
        return self.steps_since_fired >= self.cfg.dead_after_steps

    def record_firing(self, acts: Float[Tensor, "batch inst d_latent"]) -> None:
        """Count the training steps since each latent last fired (for AuxK); evaluation counts nothing."""
        if self.training and torch.is_grad_enabled():
            self.steps_since_fired.add_(1).masked_fill_((acts > 0).any(dim=0), 0)

    def auxk_loss(
        self,
        pre_acts: Float[Tensor, "batch inst d_latent"],
        residual: Float[Tensor, "batch inst d_out"],
        dead: Bool[Tensor, "inst d_latent"],
    ) -> Float[Tensor, "batch inst"]:
        """Gao et al.'s AuxK: the top `k_aux` dead latents reconstruct the residual, over its variance."""
        residual = residual.detach()
        top = pre_acts.masked_fill(~dead, -torch.inf).topk(min(self.cfg.k_aux, pre_acts.shape[-1]), dim=-1)
        aux_acts = torch.zeros_like(pre_acts).scatter(-1, top.indices, F.relu(top.values))
        residual_hat = einsum(
            aux_acts, self.W_dec_normalized, "batch inst d_latent, inst d_latent d_out -> batch inst d_out"
        )
        variance = (residual - residual.mean(dim=0)).pow(2).mean(dim=(0, 2)).clamp_min(1e-12)
        return (residual_hat - residual).pow(2).mean(dim=-1) / variance


# %% [markdown]
# ### Exercise 2.1: the transcoder's forward pass and loss
#
# **Difficulty** ●●○○○ · **Importance** ●●●●○ · **Plan for** 15 minutes
#
# Write `Transcoder.forward(x, target)`: `x` is the MLP's input and `target` its output, both
# `[batch, inst, d]`. Compute the pre-activations, the TopK latents, and the prediction (the
# decoded latents). Return an `SAEOutput` with
# - `loss_dict["L_reconstruction"]`: the squared error of the prediction against `target`,
#   averaged over `d_out`, per input and instance (`[batch, inst]`), as in Part 4;
# - `loss_dict["L_aux"]`: `self.auxk_loss(pre_acts, target - prediction, self.dead_latents())`;
# - `loss`: `L_reconstruction + aux_coeff · L_aux`, averaged over the batch and summed over
#   instances;
# - `acts` (the latents) and `h_reconstructed` (the prediction).
#
# Call `self.record_firing(acts)` once, after computing the dead latents, so that AuxK knows
# which latents have stopped firing.
#
# <details><summary>Hint 1: the order of the steps</summary>
#
# `pre_activations(x)`, then `activation` on them, then `decode`; the dead latents must be read
# before `record_firing` updates the counters.
# </details>
#
# <details><summary>Hint 2: what the loss compares</summary>
#
# A transcoder predicts the MLP's *output*. Compare the prediction with `target`, never with
# `x`: `(prediction - target).pow(2).mean(-1)`.
# </details>
#
# Stuck after the hints? The same cell in `solutions/09_attribution_graphs.ipynb` has the answer.


# %% tags=["reference"]
@add_to_class(Transcoder)
def forward(self, x: Float[Tensor, "batch inst d_in"], target: Float[Tensor, "batch inst d_out"]) -> SAEOutput:
    # BEGIN SOLUTION
    pre_acts = self.pre_activations(x)
    acts = self.activation(pre_acts)
    prediction = self.decode(acts)
    loss_dict = {
        "L_reconstruction": (prediction - target).pow(2).mean(dim=-1),
        "L_aux": self.auxk_loss(pre_acts, target - prediction, self.dead_latents()),
    }
    self.record_firing(acts)
    per_input = loss_dict["L_reconstruction"] + self.cfg.aux_coeff * loss_dict["L_aux"]
    return SAEOutput(loss_dict=loss_dict, loss=per_input.mean(dim=0).sum(), acts=acts, h_reconstructed=prediction)
    # END SOLUTION


# %%
checks.test_transcoder_forward(Transcoder)

# %% [markdown]
# We train one `Transcoder` (one instance per layer) and, for comparison in section 6, the same
# class as an **SAE on the MLP's output**: input and target both the MLP's output. We train
# {{settings.n_seeds:.0f}} of each, with different seeds, so that every comparison comes with its
# spread. Each has {{settings.d_latent:.0f}} latents per layer and `k` = {{settings.k:.0f}}.

# %%
SEEDS = full_or_fast([0, 1, 2], [0])
STEPS = full_or_fast(1_500, 300)
D_LATENT, K = 128, 2
dictionary_config = TranscoderConfig(
    n_inst=config.n_layers, d_in=config.d_model, d_out=config.d_model, d_latent=D_LATENT, k=K
)
for name, value in {"n_seeds": len(SEEDS), "steps": STEPS, "d_latent": D_LATENT, "k": K}.items():
    results.record(f"settings.{name}", value)

transcoders: dict[int, Transcoder] = {}
output_saes: dict[int, Transcoder] = {}
for seed in SEEDS:
    seed_everything(seed)
    transcoders[seed] = Transcoder(dictionary_config, device)
    train_transcoder(
        transcoders[seed], train_in, train_out, steps=STEPS, lr=1e-3, seed=seed, description=f"transcoder, seed {seed}"
    )
    seed_everything(seed)
    output_saes[seed] = Transcoder(dictionary_config, device)
    train_transcoder(
        output_saes[seed],
        train_out,
        train_out,
        steps=STEPS,
        lr=1e-3,
        seed=seed,
        description=f"SAE on MLP output, seed {seed}",
    )

# %% [markdown]
# How good a stand-in is each transcoder? On held-out strings: the fraction of the MLP output's
# variance it explains (Part 6's `fraction_variance_explained`), the loss recovered when it
# replaces its MLP in the running model (Part 6's `loss_recovered`, against mean-ablating that
# MLP), and its dead latents (never firing on held-out tokens).


# %%
def dictionary_report(sae: Transcoder, reads: str) -> dict[str, list[float]]:
    source = test_in if reads == "input" else test_out
    with torch.no_grad():
        acts = sae.encode(source.flatten(0, 1))
        prediction = sae.decode(acts)
    clean = model(data.test_tokens, return_type="loss").item()
    report: dict[str, list[float]] = {"fve": [], "loss_recovered": [], "dead": []}
    for layer in range(config.n_layers):
        target = test_out.flatten(0, 1)[:, layer]
        report["fve"].append(fraction_variance_explained(target, prediction[:, layer]).item())
        spliced = spliced_mlp_loss(model, data.test_tokens, layer, TranscoderDictionary(sae), reads=reads)
        ablated = spliced_mlp_loss(model, data.test_tokens, layer, None, constant=test_out[:, :, layer].mean(dim=0))
        report["loss_recovered"].append(loss_recovered(clean, spliced, ablated))
        report["dead"].append(int((acts[:, layer] > 0).sum(dim=0).eq(0).sum()))
    return report


reports = {
    "transcoder": {seed: dictionary_report(transcoders[seed], "input") for seed in SEEDS},
    "SAE on MLP output": {seed: dictionary_report(output_saes[seed], "output") for seed in SEEDS},
}
for kind, by_seed in reports.items():
    key = "transcoder" if kind == "transcoder" else "sae"
    for quantity in ("fve", "loss_recovered", "dead"):
        for layer in range(config.n_layers):
            results.record(f"{key}.{quantity}.layer{layer}", [by_seed[seed][quantity][layer] for seed in SEEDS])
    print(kind, {seed: {m: [round(v, 4) for v in values] for m, values in r.items()} for seed, r in by_seed.items()})

# %% [markdown]
# The transcoders explain {{transcoder.fve.layer0:.3f}} of MLP 0's output variance and
# {{transcoder.fve.layer1:.3f}} of MLP 1's, and recover {{transcoder.loss_recovered.layer0:.3f}} and
# {{transcoder.loss_recovered.layer1:.3f}} of the loss that mean-ablating each MLP loses
# ({{transcoder.dead.layer0:.0f}} and {{transcoder.dead.layer1:.0f}} dead latents of
# {{settings.d_latent:.0f}}). The SAEs on the MLPs' outputs: FVE {{sae.fve.layer0:.3f}} and
# {{sae.fve.layer1:.3f}}, loss recovered {{sae.loss_recovered.layer0:.3f}} and {{sae.loss_recovered.layer1:.3f}}.
# Many latents die, and AuxK does not bring them all back; the live ones are enough for the
# reconstruction, as the FVE shows.
#
# **Do the latents stand for letters?** For every layer and position we match the 26 letters
# one-to-one to latents (the Hungarian algorithm, as in Part 5), scoring a pair by the F1 of
# "the latent fires" as a detector of "the letter here is x". The letter at an output position
# is the mirrored letter x the model must map; at a first-half position, the letter itself.


# %%
def letters_per_position(tokens: Int[Tensor, "prompts pos"]) -> Int[Tensor, "prompts pos"]:
    letters = (tokens - FIRST_LETTER_TOKEN).clamp(min=0)
    mirrored, _ = ground_truth(tokens)
    letters[:, list(OUTPUT_POSITIONS)] = mirrored
    return letters


held_out_letters = letters_per_position(data.test_tokens)
matches = {}
for kind, saes, source in (("transcoder", transcoders, test_in), ("sae", output_saes, test_out)):
    for seed in SEEDS:
        with torch.no_grad():
            fires = saes[seed].encode(source.flatten(0, 1)).unflatten(0, source.shape[:2]) > 0
        matches[kind, seed] = match_letters(fires.cpu(), held_out_letters)
    for layer in range(config.n_layers):
        f1 = [matches[kind, seed].f1[layer, list(OUTPUT_POSITIONS)].mean().item() for seed in SEEDS]
        results.record(f"{kind}.letter_f1.layer{layer}", f1)
        print(f"{kind}, layer {layer}: mean F1 of the matched latents at the output positions {f1}")

# %% [markdown]
# At the output positions, neither dictionary has one latent per letter in layer 0. The matched
# F1 is {{transcoder.letter_f1.layer0:.2f}} for the transcoders and {{sae.letter_f1.layer0:.2f}}
# for the SAEs on MLP 0's output (a latent that fires for exactly three letters, every time one of
# them is there, scores F1 {{=0.5}}). The transcoder's case is the instructive one: the letter
# arrives compressed through a 4-dimensional head, the MLP decodes it with
# {{settings.d_mlp:.0f}} ReLU neurons, and a transcoder has to do the same with one linear map
# and a TopK, so its latents form a code for groups of letters. After MLP 0 has written f(x),
# the letter is easy to read, and the layer-1 latents match letters well: F1
# {{transcoder.letter_f1.layer1:.2f}} for the transcoders, {{sae.letter_f1.layer1:.2f}} for the
# SAEs. Keep this in mind when we score the graphs.

# %% [markdown]
# From here on we work one prompt at a time: the model's weights as plain tensors
# (`TransformerWeights`), a held-out prompt, and what the model computed on it (`run_and_record`,
# explained in the next section). These tensors are small, so the CPU is the fastest place for them.

# %%
weights = TransformerWeights.from_model(model)
weights = TransformerWeights(
    **{name: value.cpu() if isinstance(value, Tensor) else value for name, value in vars(weights).items()}
)
transcoders = {
    seed: sae.cpu() for seed, sae in transcoders.items()
}  # one prompt at a time: small tensors, CPU is fastest
output_saes = {seed: sae.cpu() for seed, sae in output_saes.items()}
prompt = data.test_tokens[0]
recorded = run_and_record(weights, prompt)
dictionary = TranscoderDictionary(transcoders[SEEDS[0]])
nodes = prompt_nodes(recorded, dictionary)
print("prompt:", tokenizer.decode(prompt), "| active latents per layer:", (nodes.latents != 0).sum(dim=(1, 2)).tolist())


# %% [markdown]
# ## 3. The local replacement model
#
# Pick one prompt. Run the original model on it and record what a replacement must hold fixed
# (`run_and_record`, which reproduces TransformerLens's arithmetic in plain torch; a test holds
# it to the model's own cache):
# - the **attention patterns** of every layer, `[layer, head, query, key]`;
# - the **normalisation scales**: each LayerNorm divides the centred residual by
#   `sqrt(var + eps)`, one number per position and LayerNorm;
# - the MLP's inputs and outputs.
#
# With the patterns and scales fixed, attention is a linear map of the residual stream (values
# times fixed weights), and so is LayerNorm (centring, then division by a fixed number). The
# MLPs are the only nonlinear part left, and we replace each by its transcoder plus an **error
# node**: the MLP's true output minus what the transcoder wrote, held fixed as well. The
# replacement model's **nodes** are then
# - `embeddings[pos]`: token plus position embedding, the residual stream before layer 0 (our
#   model learns its position embeddings, so one node per position holds both);
# - `latents[layer, pos, i]`: the transcoder's activations on this prompt;
# - `errors[layer, pos]`: the error vectors.
#
# Fed these nodes, the replacement model gives exactly the original logits (the errors make up
# for whatever the transcoders miss), and it is linear in the nodes: each logit, and each
# latent's pre-activation, is a sum of contributions of the nodes before it, plus biases.
#
# A `Dictionary` holds the transcoders per layer: `dictionary.read(layer, mlp_in)` gives the
# latents' pre-activations from the MLP's input, `dictionary.write(layer, acts)` the vector the
# latents add to the residual stream (decoder and `b_dec`). The same interface will serve an
# SAE on the MLP's output in section 6.
#
# ### Exercise 3.1: `replacement_forward`
#
# **Difficulty** ●●●○○ · **Importance** ●●●●● · **Plan for** 25 minutes
#
# Write `replacement_forward(weights, recorded, dictionary, nodes)`. Start the residual stream
# at `nodes.embeddings`; for each layer:
# 1. `x = layer_norm_with_scale(resid, recorded.ln1_scale[layer], weights.ln1_w[layer],
#    weights.ln1_b[layer])`: LayerNorm with the **recorded** scale;
# 2. add `attention_output(weights, layer, recorded.patterns[layer], x)`: attention with the
#    **recorded** pattern;
# 3. the MLP's input is the same LayerNorm with `ln2`; the latents' pre-activations are
#    `dictionary.read(layer, mlp_in)`: keep them, stacked over layers, as the second output;
# 4. in the MLP's place add `dictionary.write(layer, nodes.latents[layer])` and
#    `nodes.errors[layer]`.
#
# Finish with the final LayerNorm (recorded scale `recorded.ln_final_scale`, weights
# `ln_final_w`, `ln_final_b`), then `@ weights.W_U + weights.b_U`. Return
# `(logits [pos, vocab], latent_pre [layer, pos, d_latent])`. Do not recompute a pattern or
# a scale from the residual stream: at this prompt the values would be the same, but the
# gradients would not, and the next exercise takes gradients. Write it so that tensors with
# extra leading axes work too (index the layer axis first, as in `nodes.latents[layer]`):
# section 4 runs many copies at once.
#
# <details><summary>Hint 1: the helpers do the arithmetic</summary>
#
# Every step is one call to a helper imported above: `layer_norm_with_scale`,
# `attention_output`, `dictionary.read`, `dictionary.write`. The exercise is about what they
# are fed: recorded patterns and scales, and the nodes, never the recorded MLP outputs.
# </details>
#
# <details><summary>Hint 2: the loop body</summary>
#
# `resid = resid + attention_output(...)`, then `mlp_in = layer_norm_with_scale(resid, ...)`,
# `latent_pre.append(dictionary.read(layer, mlp_in))`, then
# `resid = resid + dictionary.write(layer, nodes.latents[layer]) + nodes.errors[layer]`.
# </details>
#
# Stuck after the hints? The same cell in `solutions/09_attribution_graphs.ipynb` has the answer.


# %% tags=["reference"]
def replacement_forward(
    weights: TransformerWeights, recorded: RecordedPrompt, dictionary: Dictionary, nodes: Nodes
) -> tuple[Float[Tensor, "pos vocab"], Float[Tensor, "layer pos d_latent"]]:
    # BEGIN SOLUTION
    resid = nodes.embeddings
    latent_pre = []
    for layer in range(weights.n_layers):
        x = layer_norm_with_scale(resid, recorded.ln1_scale[layer], weights.ln1_w[layer], weights.ln1_b[layer])
        resid = resid + attention_output(weights, layer, recorded.patterns[layer], x)
        mlp_in = layer_norm_with_scale(resid, recorded.ln2_scale[layer], weights.ln2_w[layer], weights.ln2_b[layer])
        latent_pre.append(dictionary.read(layer, mlp_in))
        resid = resid + dictionary.write(layer, nodes.latents[layer]) + nodes.errors[layer]
    final = layer_norm_with_scale(resid, recorded.ln_final_scale, weights.ln_final_w, weights.ln_final_b)
    return final @ weights.W_U + weights.b_U, torch.stack(latent_pre)
    # END SOLUTION


# %%
checks.test_replacement_forward(replacement_forward)

# %% [markdown]
# The test the whole method rests on: on held-out prompts, the replacement model's logits equal
# the original model's.

# %%
largest_difference = 0.0
for tokens in data.test_tokens[: full_or_fast(200, 20)]:
    recorded_here = run_and_record(weights, tokens)
    with torch.no_grad():
        logits, _ = replacement_forward(weights, recorded_here, dictionary, prompt_nodes(recorded_here, dictionary))
        original = model(tokens[None].to(device))[0].cpu()
    largest_difference = max(largest_difference, (logits - original).abs().max().item())
results.record("replacement.max_logit_difference", largest_difference)
print(f"largest |replacement logits - model logits| over the held-out prompts: {largest_difference:.1e}")

# %% [markdown]
# In our full-mode run the largest difference was {{replacement.max_logit_difference:.0e}}, float32
# rounding: the error nodes account for everything the transcoders miss.

# %% [markdown]
# ## 4. Attribution: the edges into one node
#
# Because the replacement model is linear in its nodes, a target (a logit, or a latent's
# pre-activation) is a sum of one contribution per source node, plus biases. The
# contribution of source s is its activation times the derivative of the target with respect
# to that activation:
#
# $$\text{edge}(s \to t) = a_s \cdot \frac{\partial t}{\partial a_s}.$$
#
# For a latent, `a_s` is a number; for an embedding or an error node it is a vector, and the
# product is a dot product with the gradient. One backward pass from the target gives the
# gradient with respect to every source at once.
#
# Two details follow Ameisen et al. and circuit-tracer. A latent target is its
# **pre-activation**: what its sources add up to, before TopK decides whether it fires (the
# activation itself would give zero gradient to an inactive latent, and none of the sum is
# lost). A logit target is the logit **minus the mean logit** over the vocabulary: a
# contribution that lifts every logit equally changes no probability, so it gets no credit.
#
# ### Exercise 4.1: `attribute`
#
# **Difficulty** ●●●○○ · **Importance** ●●●●● · **Plan for** 20 minutes
#
# Write `attribute(forward, weights, recorded, dictionary, nodes, target)`, where `forward` is a
# replacement forward pass like yours and `target` a `Target(kind, pos, index, layer)`: kind
# `"logit"` (index = token) or `"latent"` (index = latent, at `layer`). Make leaf copies of the
# three node tensors that require gradients, run `forward` on them, pick the target value,
# and take one backward pass (`torch.autograd.grad`). Return `Edges(embeddings [pos],
# latents [layer, pos, d_latent], errors [layer, pos])`: each source's activation times its
# gradient, summed over `d_model` for the vector-valued nodes. A source the target cannot
# reach gets edge 0. Leave `nodes` unchanged.
#
# <details><summary>Hint 1: leaves and the target value</summary>
#
# `leaf = tensor.detach().clone().requires_grad_(True)` for each of the three; `Nodes(*leaves)`
# goes into `forward`. A logit target is `logits[pos, index] - logits[pos].mean()`; a latent
# target `latent_pre[layer, pos, index]`.
# </details>
#
# <details><summary>Hint 2: unreachable sources</summary>
#
# `torch.autograd.grad(value, leaves, allow_unused=True)` returns `None` for a tensor the value
# does not depend on at all; use zeros there. Then `(leaf.detach() * gradient)`, summed over the
# last axis for embeddings and errors.
# </details>
#
# Stuck after the hints? The same cell in `solutions/09_attribution_graphs.ipynb` has the answer.


# %% tags=["reference"]
def attribute(
    forward: Callable[..., tuple[Tensor, Tensor]],
    weights: TransformerWeights,
    recorded: RecordedPrompt,
    dictionary: Dictionary,
    nodes: Nodes,
    target: Target,
) -> Edges:
    # BEGIN SOLUTION
    sources = [
        tensor.detach().clone().requires_grad_(True) for tensor in (nodes.embeddings, nodes.latents, nodes.errors)
    ]
    logits, latent_pre = forward(weights, recorded, dictionary, Nodes(*sources))
    if target.kind == "logit":
        value = logits[target.pos, target.index] - logits[target.pos].mean()
    else:
        value = latent_pre[target.layer, target.pos, target.index]
    gradients = torch.autograd.grad(value, sources, allow_unused=True)
    embeddings, latents, errors = (
        source.detach() * (torch.zeros_like(source) if gradient is None else gradient)
        for source, gradient in zip(sources, gradients)
    )
    return Edges(embeddings=embeddings.sum(-1), latents=latents, errors=errors.sum(-1))
    # END SOLUTION


# %%
checks.test_attribute(attribute)

# %% [markdown]
# A check you can see: the edges into a logit add up, with the biases (the target's value when
# every node is zero), to the logit itself. Without the error nodes they would not.

# %%
target = Target("logit", OUTPUT_POSITIONS[0], int(prompt[OUTPUT_POSITIONS[0] + 1]))
edges = attribute(replacement_forward, weights, recorded, dictionary, nodes, target)
zero = Nodes(*(torch.zeros_like(tensor) for tensor in (nodes.embeddings, nodes.latents, nodes.errors)))
with torch.no_grad():
    logits, _ = replacement_forward(weights, recorded, dictionary, nodes)
    bias_logits, _ = replacement_forward(weights, recorded, dictionary, zero)
demeaned = logits[target.pos] - logits[target.pos].mean()
bias_only = bias_logits[target.pos] - bias_logits[target.pos].mean()
print(f"target {demeaned[target.index]:.4f} = edges {edges.total():.4f} + biases {bias_only[target.index]:.4f}")
print(
    f"of which error nodes {edges.errors.sum():.4f}, embeddings {edges.embeddings.sum():.4f}, "
    f"latents {edges.latents.sum():.4f}"
)

# %% [markdown]
# **All targets at once.** A graph needs the edges into every active latent and every chosen
# logit. A loop calls `attribute` once per target. `attribute_all` (in `part_utils/attribution`)
# instead runs your `replacement_forward` on a batch of copies of the prompt, one per target
# (the batch axis sits after the layer axis, which is why your forward pass had to accept
# extra axes), adds up each copy's own target and takes one backward pass: the copies do not
# interact, so each copy's gradient is its own target's. We time both with Part 7's
# `measure`.

# %%
graph_logits = [(pos, int(prompt[pos + 1])) for pos in OUTPUT_POSITIONS]
targets = [Target("latent", pos, latent, layer) for layer, pos, latent in (nodes.latents != 0).nonzero().tolist()]
targets += [Target("logit", pos, token) for pos, token in graph_logits]
batched = attribute_all(replacement_forward, weights, recorded, dictionary, nodes, targets)
looped = [attribute(replacement_forward, weights, recorded, dictionary, nodes, target) for target in targets]
agreement = max((batched.latents[i] - edges_i.latents).abs().max().item() for i, edges_i in enumerate(looped))
print(f"{len(targets)} targets; largest difference between batched and looped edges: {agreement:.1e}")

# %%
# Timings vary from run to run.
cpu = torch.device("cpu")
loop_time = measure(
    lambda: [attribute(replacement_forward, weights, recorded, dictionary, nodes, t) for t in targets],
    cpu,
    min_runs=full_or_fast(5, 2),
    memory=False,
)
batch_time = measure(
    lambda: attribute_all(replacement_forward, weights, recorded, dictionary, nodes, targets),
    cpu,
    min_runs=full_or_fast(20, 3),
    memory=False,
)
results.record("timing.n_targets", len(targets))
results.record("timing.speedup", loop_time.median / batch_time.median)
print(f"loop: {loop_time}\nbatched: {batch_time}\nspeed-up {loop_time.median / batch_time.median:.0f}×")

# %% [markdown]
# For the {{timing.n_targets:.0f}} targets of this prompt the batched attribution was
# {{timing.speedup:.0f}} times faster than the loop in our full-mode run (both medians from
# `measure`, side by side in one process, on a {{machine.cpu_cores:.0f}}-core CPU at one thread).

# %% [markdown]
# ## 5. The graph, influence and pruning
#
# Attributing every active latent and the logits we care about gives the whole graph of the
# prompt: `adjacency[t, s]` is the edge from node s into node t. Nodes are ordered embeddings,
# then per layer its error nodes and active latents, then logits; every edge points forward in
# that order.
#
# Direct edges are not the whole story: a token can matter through a latent that matters through
# another latent. Following Ameisen et al., normalise first: take absolute values and divide each
# row by its sum, so that `Â[t, s]` is the share of t's direct attribution that comes from s.
# Then the influence of s on t along paths of length k is `(Âᵏ)[t, s]`, and over all paths
#
# $$B = \hat A + \hat A^2 + \hat A^3 + \dots = (I - \hat A)^{-1} - I,$$
#
# a finite sum here, since a graph whose edges all point forward has no path longer than its
# number of nodes. Each row of `B` restricted to the input nodes (embeddings and errors) sums to
# one: a logit's influence is shared out among the inputs.
#
# Pruning keeps what carries most of it. For each logit row of `B`, sort the nodes by influence
# and keep the fewest that carry at least a share (say {{=80 %}}, circuit-tracer's default) of
# that row's total; keep the union over logits, and the logits themselves. circuit-tracer prunes
# a little differently: it pools the logits' rows, weighted by each logit's probability, into
# one score per node, keeps the nodes that carry the share of that pooled score together with
# every token, and then prunes edges the same way. With one logit per output position, each as
# certain as the next, a per-logit rule keeps every position's circuit in view.
#
# ### Exercise 5.1: `influence` and `prune`
#
# **Difficulty** ●●○○○ · **Importance** ●●●●○ · **Plan for** 15 minutes
#
# Write `influence(adjacency)`, returning `B` (rows with no incoming edges stay zero; do not
# divide by zero), and `prune(influence_matrix, logit_nodes, share)`, returning a boolean mask
# over nodes. In `prune`, for each logit keep the highest-influence nodes in order until their
# cumulative influence reaches `share` of that logit's row sum (the node that crosses the
# threshold is kept).
#
# <details><summary>Hint 1: the power series without a loop</summary>
#
# `torch.linalg.solve(I - Â, I) - I`, or `torch.linalg.inv`. A loop that adds `Âᵏ` until it
# vanishes gives the same.
# </details>
#
# <details><summary>Hint 2: how many to keep</summary>
#
# With `carried = row[order].cumsum(0)` for `order = row.argsort(descending=True)`, the number to
# keep is the count of entries below `share * row.sum()`, plus one.
# </details>
#
# Stuck after the hints? The same cell in `solutions/09_attribution_graphs.ipynb` has the answer.


# %% tags=["reference"]
def influence(adjacency: Float[Tensor, "target source"]) -> Float[Tensor, "target source"]:
    # BEGIN SOLUTION
    magnitude = adjacency.abs()
    normalized = magnitude / magnitude.sum(dim=1, keepdim=True).clamp_min(torch.finfo(magnitude.dtype).tiny)
    eye = torch.eye(len(adjacency), dtype=adjacency.dtype, device=adjacency.device)
    return torch.linalg.solve(eye - normalized, eye) - eye
    # END SOLUTION


def prune(
    influence_matrix: Float[Tensor, "target source"], logit_nodes: Int[Tensor, " logits"], share: float
) -> Bool[Tensor, " node"]:
    # BEGIN SOLUTION
    keep = torch.zeros(len(influence_matrix), dtype=torch.bool, device=influence_matrix.device)
    keep[logit_nodes] = True
    for logit in logit_nodes.tolist():
        row = influence_matrix[logit]
        order = row.argsort(descending=True)
        carried = row[order].cumsum(dim=0)
        needed = int((carried < share * row.sum()).sum()) + 1
        keep[order[:needed]] = True
    return keep
    # END SOLUTION


# %%
checks.test_influence(influence)
checks.test_prune(prune)

# %%
graph = build_graph(replacement_forward, weights, recorded, dictionary, nodes, graph_logits)
influence_matrix = influence(graph.adjacency)
logit_nodes = graph.mask("logit").nonzero().flatten()
kept = prune(influence_matrix, logit_nodes, share=0.8)
results.record("graph.n_nodes", len(graph.nodes))
results.record("graph.n_kept", int(kept.sum()))
print(f"{len(graph.nodes)} nodes, {int(kept.sum())} kept at 80 % of each logit's influence")
letter_match = matches["transcoder", SEEDS[0]]
plot_attribution_graph(graph, kept, node_labels(graph, letter_match, tokenizer)).show()

# %% [markdown]
# Hover over a node for what it is: a token, an error node, or a latent with the letter it was
# matched to and how well (F1). Edge widths are attributions, blue positive and red negative.
# For this prompt the graph kept {{graph.n_kept:.0f}} of {{graph.n_nodes:.0f}} nodes.


# %% [markdown]
# ## 6. Scored against the planted circuit
#
# For every output position p of held-out prompts we know the truth: the mirrored letter x sits
# at position q, and the logit of f(x) must come from there, through latents standing for x.
# Two scores per logit node:
# - **share**: the share of the logit's influence that reaches the embedding at q along paths
#   whose every intermediate node is a latent matched to x (at p or q, in either layer, matched
#   with F1 at least {{=0.5}}): `Â[t, V] (I − Â[V, V])⁻¹ Â[V, q]` with V those latents;
# - **top path**: whether the graph's strongest path (largest product of normalised edges) from
#   the logit back to an input is such a path.
#
# We also report a looser, structural score: whether the strongest path runs from the
# embedding at q through latents at p to the logit, whatever letters those latents stand for.
# We score graphs built from the transcoders and from the SAEs on the MLPs' outputs (whose
# pre-activations are read through each prompt's frozen MLP, so their edges depend on the input).


# %%
def truth_scores(kind: str, seed: int, prompts: Int[Tensor, "prompts pos"]) -> dict[str, list[float]]:
    scores: dict[str, list[float]] = {"share": [], "top_path": [], "structural": []}
    effects: dict = defaultdict(list)
    for tokens in prompts:
        recorded_here = run_and_record(weights, tokens)
        dictionary_here = (
            TranscoderDictionary(transcoders[seed])
            if kind == "transcoder"
            else MLPOutputSAEDictionary.at_prompt(output_saes[seed], weights, recorded_here)
        )
        nodes_here = prompt_nodes(recorded_here, dictionary_here)
        logits_here = [(pos, int(tokens[pos + 1])) for pos in OUTPUT_POSITIONS]
        graph_here = build_graph(replacement_forward, weights, recorded_here, dictionary_here, nodes_here, logits_here)
        unit_effects(graph_here, into=effects)
        for pos in OUTPUT_POSITIONS:
            source = mirrored_source_position(pos)
            score = score_position(
                graph_here, matches[kind, seed], pos, source, int(tokens[source]) - FIRST_LETTER_TOKEN
            )
            scores["share"].append(score.share)
            scores["top_path"].append(float(score.top_path_true))
            scores["structural"].append(float(score.top_path_structural))
    scores["edge_spread"] = [median_relative_spread(effects, min_prompts=full_or_fast(5, 2))]
    return scores


truth_prompts = data.test_tokens[: full_or_fast(100, 10)]
truth = {(kind, seed): truth_scores(kind, seed, truth_prompts) for kind in ("transcoder", "sae") for seed in SEEDS}
for kind in ("transcoder", "sae"):
    for measure_name in ("share", "top_path", "structural", "edge_spread"):
        values = [sum(truth[kind, seed][measure_name]) / len(truth[kind, seed][measure_name]) for seed in SEEDS]
        results.record(f"truth.{kind}.{measure_name}", values)
        print(f"{kind:>10} {measure_name:>10}: {[round(v, 3) for v in values]}")
results.record("truth.n_prompts", len(truth_prompts))
plot_truth_scores(truth, SEEDS, OUTPUT_POSITIONS).show()

# %% [markdown]
# Over {{truth.n_prompts:.0f}} held-out prompts and {{settings.n_seeds:.0f}} seeds (mean ± sd
# over seeds):
#
# graph from | share through the truth path | top path is the truth path | structurally right
# --|---|---|--
# transcoders | {{truth.transcoder.share:.2f}} | {{truth.transcoder.top_path:.0%}} | {{truth.transcoder.structural:.0%}}
# SAEs on the MLP outputs | {{truth.sae.share:.2f}} | {{truth.sae.top_path:.0%}} | {{truth.sae.structural:.0%}}
#
# What is robust across seeds: both graphs find the structure. The strongest path from the
# logit of f(x) usually starts at the mirrored token and runs through latents at the output
# position; the rest of the influence goes to the current token's own embedding and to error
# nodes. What differs is the middle. The strict score needs the latents on the path to stand for
# x, and in layer 0 the SAE's latents do so more often than the transcoder's, which form the
# code for groups of letters we saw in section 2. So by the strict, letter-by-letter score the
# transcoder's graph is right less often. On the two strict scores the SAEs' graphs came out
# ahead for every seed; on the structural score the two kinds are close. All of these depend on
# the recipe (width, `k`, training length, initialisation), which we did not tune.
#
# This is a property of *this* model, and a lesson about transcoders in general. A transcoder
# has to compute its latents from the MLP's input with one linear map and a threshold. Where the
# MLP does genuinely nonlinear work (here, decoding a letter squeezed through a 4-dimensional
# head), the transcoder we trained did not find one latent per true feature, and the graph shows
# its approximation of the MLP rather than the MLP's own variables. An SAE on the MLP's output reads
# the result after the MLP has done the work.
#
# The argument *for* transcoders is the other column of the ledger: their edges do not depend on
# the input beyond the frozen attention patterns and LayerNorm scales, while an SAE-on-output
# graph reads every later layer through that layer's MLP Jacobian at the prompt. We measured it:
# for each pair of latents in consecutive layers at the same position, the edge divided by the
# source's activation, across the prompts where both fire, has a median relative spread
# (std / |mean|) of {{truth.transcoder.edge_spread:.3f}} for transcoders and
# {{truth.sae.edge_spread:.3f}} for the SAEs. The transcoders' edges are the steadier, though on
# this small model neither kind varies much: prompts that activate the same pair of latents are
# alike, and so are their MLPs' ReLU patterns. On a large model, with many more ways to reach a
# latent, that steadiness is what lets a transcoder's weights be read as a circuit that holds
# beyond one prompt.

# %% [markdown]
# ## 7. Interventions: does the model do what the graph says?
#
# A graph is a prediction. If a latent's edges say it pushes the logit of f(x) up, removing
# it from the **real** model (attention and LayerNorm recomputed, the later MLP run as it is)
# should push that logit down; and if the latent for letter x stands for x, swapping it for the
# latent of another letter y should make the model answer f(y).
#
# The graph's prediction for a change Δa in one latent is Δa times the latent's **total
# effect** on each logit: its direct effect plus every path through later latents, each active
# latent passing a change on one for one and inactive latents staying off
# (`predicted_logit_change` computes it with the replacement model). The real model, in
# contrast, runs live: attention patterns, LayerNorm scales and the later MLP all respond to the
# edit. (circuit-tracer can also intervene with attention frozen; we test the harder case.)
#
# ### Exercise 7.1: `intervention_effect`
#
# **Difficulty** ●●○○○ · **Importance** ●●●●○ · **Plan for** 15 minutes
#
# Write `intervention_effect(weights, tokens, dictionary, layer, edits)`: the change in the real
# model's logits, `[pos, vocab]`, when the latents of layer `layer` named in `edits` (a dict from
# `(pos, latent)` to the new value) take those values instead of what they were on this prompt.
# Run the model with `run_and_record(weights, tokens)`, compute the dictionary's latents for that
# layer from the recorded MLP input, and edit a copy. The MLP's output changes by what the
# dictionary writes with the edited latents minus what it writes with the original ones; pass
# that as `mlp_out_delta` (`[layer, pos, d_model]`, zero at every other layer) to a second
# `run_and_record`, and return the difference of the logits.
#
# <details><summary>Hint 1: the latents on this prompt</summary>
#
# `acts = dictionary.activation(layer, dictionary.read(layer, clean.mlp_in[layer]))`; edit a
# clone.
# </details>
#
# <details><summary>Hint 2: the delta</summary>
#
# `delta = torch.zeros_like(clean.mlp_out)`; `delta[layer] = dictionary.write(layer, edited) -
# dictionary.write(layer, acts)`. The bias cancels, and only the edited positions' rows differ.
# </details>
#
# Stuck after the hints? The same cell in `solutions/09_attribution_graphs.ipynb` has the answer.


# %% tags=["reference"]
def intervention_effect(
    weights: TransformerWeights,
    tokens: Int[Tensor, " pos"],
    dictionary: Dictionary,
    layer: int,
    edits: dict[tuple[int, int], float],
) -> Float[Tensor, "pos vocab"]:
    # BEGIN SOLUTION
    clean = run_and_record(weights, tokens)
    acts = dictionary.activation(layer, dictionary.read(layer, clean.mlp_in[layer]))
    edited = acts.clone()
    for (pos, latent), value in edits.items():
        edited[pos, latent] = value
    delta = torch.zeros_like(clean.mlp_out)
    delta[layer] = dictionary.write(layer, edited) - dictionary.write(layer, acts)
    return run_and_record(weights, tokens, mlp_out_delta=delta).logits - clean.logits
    # END SOLUTION


# %%
checks.test_intervention_effect(intervention_effect)

# %% [markdown]
# Now the experiment, on held-out prompts and every output position, for the transcoders of
# each seed:
# - **ablation**: set each latent on the graph's strongest path from the logit of f(x) to zero.
#   The graph predicts the sign of the change in that (mean-subtracted) logit; does the real
#   model agree?
# - **steering**: in layer 1, where the transcoder's latents stand for letters, switch off the
#   latent for x and switch on the latent for another letter y (y = the letter 13 places on) at
#   x's activation. The graph predicts the model's new top letter; does the real model agree, and
#   is it f(y)?


# %%
def intervention_scores(seed: int, prompts: Int[Tensor, "prompts pos"]) -> dict[str, list[float]]:
    match = matches["transcoder", seed]
    scores: dict[str, list[float]] = {
        "ablation_sign": [],
        "steering_top1": [],
        "steering_changed": [],
        "steered_to_f_y": [],
    }
    for tokens in prompts:
        recorded_here = run_and_record(weights, tokens)
        dictionary_here = TranscoderDictionary(transcoders[seed])
        nodes_here = prompt_nodes(recorded_here, dictionary_here)
        logits_here = [(pos, int(tokens[pos + 1])) for pos in OUTPUT_POSITIONS]
        graph_here = build_graph(replacement_forward, weights, recorded_here, dictionary_here, nodes_here, logits_here)
        for pos in OUTPUT_POSITIONS:
            source = mirrored_source_position(pos)
            letter = int(tokens[source]) - FIRST_LETTER_TOKEN
            answer = int(tokens[pos + 1])
            path = score_position(graph_here, match, pos, source, letter).top_path
            for node in (graph_here.nodes[i] for i in path if graph_here.nodes[i].kind == "latent"):
                edit = {(node.pos, node.index): 0.0}
                actual = intervention_effect(weights, tokens, dictionary_here, node.layer, edit)[pos]
                predicted = predicted_logit_change(
                    replacement_forward,
                    weights,
                    recorded_here,
                    dictionary_here,
                    nodes_here,
                    {(node.layer, *key): v for key, v in edit.items()},
                )[pos]
                same_sign = (actual[answer] - actual.mean()).sign() == (predicted[answer] - predicted.mean()).sign()
                scores["ablation_sign"].append(float(same_sign))
            other = (letter + 13) % 26
            latent_x, latent_y = match.latent[1, pos, letter].item(), match.latent[1, pos, other].item()
            value = nodes_here.latents[1, pos, latent_x].item()
            if value == 0 or min(match.f1[1, pos, letter], match.f1[1, pos, other]) < 0.5:
                continue
            edit = {(pos, latent_x): 0.0, (pos, latent_y): value}
            letter_tokens = slice(FIRST_LETTER_TOKEN, FIRST_LETTER_TOKEN + 26)
            actual = (recorded_here.logits + intervention_effect(weights, tokens, dictionary_here, 1, edit))[
                pos, letter_tokens
            ]
            predicted_change = predicted_logit_change(
                replacement_forward,
                weights,
                recorded_here,
                dictionary_here,
                nodes_here,
                {(1, *key): v for key, v in edit.items()},
            )
            predicted = (recorded_here.logits + predicted_change)[pos, letter_tokens]
            scores["steering_top1"].append(float(actual.argmax() == predicted.argmax()))
            scores["steering_changed"].append(float(actual.argmax().item() != answer - FIRST_LETTER_TOKEN))
            scores["steered_to_f_y"].append(float(actual.argmax().item() == ord(LETTER_MAP[other]) - ord("a")))
    return scores


intervention_prompts = data.test_tokens[: full_or_fast(50, 3)]
interventions = {seed: intervention_scores(seed, intervention_prompts) for seed in SEEDS}
for measure_name in ("ablation_sign", "steering_top1", "steering_changed", "steered_to_f_y"):
    values = [sum(interventions[seed][measure_name]) / max(len(interventions[seed][measure_name]), 1) for seed in SEEDS]
    results.record(f"interventions.{measure_name}", values)
    print(
        f"{measure_name}: {[round(v, 3) for v in values]} "
        f"(counts {[len(interventions[seed][measure_name]) for seed in SEEDS]})"
    )
combined = [
    sum(interventions[seed]["ablation_sign"] + interventions[seed]["steering_top1"])
    / max(len(interventions[seed]["ablation_sign"] + interventions[seed]["steering_top1"]), 1)
    for seed in SEEDS
]
results.record("interventions.predicted", combined)
results.record("interventions.n_prompts", len(intervention_prompts))


# %% [markdown]
# In our full-mode run, over {{interventions.n_prompts:.0f}} held-out prompts per seed:
# - ablating a latent on the strongest path moved the logit of f(x) in the direction the graph
#   predicted in {{interventions.ablation_sign:.1%}} of cases;
# - steering in layer 1 (the latent for x off, the latent for y on) gave the top letter the graph
#   predicted in {{interventions.steering_top1:.1%}} of cases;
# - altogether, the graph predicted {{interventions.predicted:.1%}} of the interventions.
#
# Read the steering result with its companion numbers: the swap changed the model's answer in
# only {{interventions.steering_changed:.0%}} of cases, and made it answer f(y) in
# {{interventions.steered_to_f_y:.0%}}. The graph predicts both outcomes right, including when the
# answer does not move. The graph also shows why it often does not: other paths carry the letter
# x to the logit too (MLP 0's latents and the direct path from the mirrored token through
# attention), and one layer-1 latent does not outvote them. A graph that
# says "this latent matters a little" and an intervention that confirms it is a correct graph.
#
# ## Summary
#
# - A transformer trained on `<abc|f(c)f(b)f(a)>` fetches the mirrored letter in layer 0's
#   attention and applies f in MLP 0 at the output position; we know its circuit.
# - Transcoders replace MLPs with sparse latents that read the MLP's input and write its output;
#   here they explain most of the variance and recover most of the loss, but where the MLP's job
#   is a nonlinear decoding, their latents are a code, not the true features.
# - The local replacement model freezes attention patterns and normalisation scales and adds
#   error nodes; it reproduces the logits exactly and is linear in its nodes, so every edge is an
#   activation times a gradient, and one backward pass (or one batched pass) gives them all.
# - Influence through the graph is a power series of the normalised adjacency; pruning keeps the
#   nodes that carry most of each logit's influence.
# - Scored against the planted circuit, both kinds of graph find its structure; only latents that
#   stand for the true features make the strict score, and interventions confirm what the graphs
#   predict.
#
# Further reading: Dunefsky, Chlenski and Nanda (2024), "Transcoders find interpretable LLM
# feature circuits"; Ameisen et al. (2025), "Circuit Tracing: Revealing Computational Graphs in
# Language Models"; Lindsey et al. (2025), "On the Biology of a Large Language Model"; the
# `circuit-tracer` library; Paulo, Shabalin and Belrose (2025), "Transcoders Beat Sparse
# Autoencoders for Interpretability", for the opposite finding on large models.
