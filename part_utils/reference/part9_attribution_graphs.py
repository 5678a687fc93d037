"""Reference implementation for 09_attribution_graphs, generated from source/09_attribution_graphs.py.

Do not edit: change the source and run `python workbook.py build`."""

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


@add_to_class(Transcoder)
def forward(self, x: Float[Tensor, "batch inst d_in"], target: Float[Tensor, "batch inst d_out"]) -> SAEOutput:
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


def replacement_forward(
    weights: TransformerWeights, recorded: RecordedPrompt, dictionary: Dictionary, nodes: Nodes
) -> tuple[Float[Tensor, "pos vocab"], Float[Tensor, "layer pos d_latent"]]:
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


def attribute(
    forward: Callable[..., tuple[Tensor, Tensor]],
    weights: TransformerWeights,
    recorded: RecordedPrompt,
    dictionary: Dictionary,
    nodes: Nodes,
    target: Target,
) -> Edges:
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


def influence(adjacency: Float[Tensor, "target source"]) -> Float[Tensor, "target source"]:
    magnitude = adjacency.abs()
    normalized = magnitude / magnitude.sum(dim=1, keepdim=True).clamp_min(torch.finfo(magnitude.dtype).tiny)
    eye = torch.eye(len(adjacency), dtype=adjacency.dtype, device=adjacency.device)
    return torch.linalg.solve(eye - normalized, eye) - eye


def prune(
    influence_matrix: Float[Tensor, "target source"], logit_nodes: Int[Tensor, " logits"], share: float
) -> Bool[Tensor, " node"]:
    keep = torch.zeros(len(influence_matrix), dtype=torch.bool, device=influence_matrix.device)
    keep[logit_nodes] = True
    for logit in logit_nodes.tolist():
        row = influence_matrix[logit]
        order = row.argsort(descending=True)
        carried = row[order].cumsum(dim=0)
        needed = int((carried < share * row.sum()).sum()) + 1
        keep[order[:needed]] = True
    return keep


def intervention_effect(
    weights: TransformerWeights,
    tokens: Int[Tensor, " pos"],
    dictionary: Dictionary,
    layer: int,
    edits: dict[tuple[int, int], float],
) -> Float[Tensor, "pos vocab"]:
    clean = run_and_record(weights, tokens)
    acts = dictionary.activation(layer, dictionary.read(layer, clean.mlp_in[layer]))
    edited = acts.clone()
    for (pos, latent), value in edits.items():
        edited[pos, latent] = value
    delta = torch.zeros_like(clean.mlp_out)
    delta[layer] = dictionary.write(layer, edited) - dictionary.write(layer, acts)
    return run_and_record(weights, tokens, mlp_out_delta=delta).logits - clean.logits
