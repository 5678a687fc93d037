"""Part 9's two-layer transformer in plain torch: its weights, and one prompt run with everything recorded.

The local replacement model needs what the original model computed on a prompt (attention patterns,
normalisation scales, MLP inputs and outputs) as plain tensors. `run_and_record` computes them from
`TransformerWeights` with the same arithmetic as TransformerLens; a test holds it to the bridge's own
cache. Because it needs no model object, the checks run it on random weights too.
"""

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from einops import einsum
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens import TransformerBridge


@dataclass(frozen=True)
class TransformerWeights:
    """Every weight of a pre-LayerNorm transformer with ReLU MLPs, stacked over layers (TransformerLens layout)."""

    W_E: Float[Tensor, "vocab d_model"]
    W_pos: Float[Tensor, "n_ctx d_model"]
    ln1_w: Float[Tensor, "layer d_model"]
    ln1_b: Float[Tensor, "layer d_model"]
    W_Q: Float[Tensor, "layer head d_model d_head"]
    b_Q: Float[Tensor, "layer head d_head"]
    W_K: Float[Tensor, "layer head d_model d_head"]
    b_K: Float[Tensor, "layer head d_head"]
    W_V: Float[Tensor, "layer head d_model d_head"]
    b_V: Float[Tensor, "layer head d_head"]
    W_O: Float[Tensor, "layer head d_head d_model"]
    b_O: Float[Tensor, "layer d_model"]
    ln2_w: Float[Tensor, "layer d_model"]
    ln2_b: Float[Tensor, "layer d_model"]
    W_in: Float[Tensor, "layer d_model d_mlp"]
    b_in: Float[Tensor, "layer d_mlp"]
    W_out: Float[Tensor, "layer d_mlp d_model"]
    b_out: Float[Tensor, "layer d_model"]
    ln_final_w: Float[Tensor, " d_model"]
    ln_final_b: Float[Tensor, " d_model"]
    W_U: Float[Tensor, "d_model vocab"]
    b_U: Float[Tensor, " vocab"]
    eps: float = 1e-5

    @property
    def n_layers(self) -> int:
        return self.W_Q.shape[0]

    @classmethod
    def from_model(cls, model: TransformerBridge) -> "TransformerWeights":
        blocks = model.blocks

        def stacked(norm: str, part: str) -> Tensor:
            return torch.stack([getattr(getattr(block, norm), part) for block in blocks]).detach()

        return cls(
            **{name: getattr(model, name).detach() for name in _MODEL_ATTRIBUTES},
            ln1_w=stacked("ln1", "w"),
            ln1_b=stacked("ln1", "b"),
            ln2_w=stacked("ln2", "w"),
            ln2_b=stacked("ln2", "b"),
            ln_final_w=model.ln_final.w.detach(),
            ln_final_b=model.ln_final.b.detach(),
            eps=model.cfg.eps,
        )

    def to(self, dtype: torch.dtype) -> "TransformerWeights":
        return TransformerWeights(
            **{
                field.name: getattr(self, field.name).to(dtype)
                for field in fields(self)
                if isinstance(getattr(self, field.name), Tensor)
            },
            eps=self.eps,
        )


_MODEL_ATTRIBUTES = "W_E W_pos W_Q b_Q W_K b_K W_V b_V W_O b_O W_in b_in W_out b_out W_U b_U".split()


@dataclass(frozen=True)
class RecordedPrompt:
    """What the original model computed on one prompt: the constants a local replacement model freezes."""

    tokens: Int[Tensor, " pos"]
    embeddings: Float[Tensor, "pos d_model"]
    """Token plus position embedding: the residual stream before the first layer."""
    patterns: Float[Tensor, "layer head query key"]
    ln1_scale: Float[Tensor, "layer pos"]
    """The divisor sqrt(var + eps) of each LayerNorm, per position."""
    ln2_scale: Float[Tensor, "layer pos"]
    ln_final_scale: Float[Tensor, " pos"]
    mlp_in: Float[Tensor, "layer pos d_model"]
    """The MLP's input, after ln2."""
    mlp_pre: Float[Tensor, "layer pos d_mlp"]
    mlp_out: Float[Tensor, "layer pos d_model"]
    logits: Float[Tensor, "pos vocab"]


def layer_norm_scale(x: Float[Tensor, "pos d_model"], eps: float) -> Float[Tensor, " pos"]:
    centred = x - x.mean(dim=-1, keepdim=True)
    return (centred.pow(2).mean(dim=-1) + eps).sqrt()


def layer_norm_with_scale(
    x: Float[Tensor, "*batch pos d_model"],
    scale: Float[Tensor, " pos"],
    w: Float[Tensor, " d_model"],
    b: Float[Tensor, " d_model"],
) -> Float[Tensor, "*batch pos d_model"]:
    """LayerNorm with a given divisor: linear in `x` when `scale` is held fixed."""
    return (x - x.mean(dim=-1, keepdim=True)) / scale[:, None] * w + b


def attention_pattern(
    weights: TransformerWeights, layer: int, x: Float[Tensor, "pos d_model"]
) -> Float[Tensor, "head query key"]:
    q = einsum(x, weights.W_Q[layer], "pos d, head d h -> head pos h") + weights.b_Q[layer][:, None]
    k = einsum(x, weights.W_K[layer], "pos d, head d h -> head pos h") + weights.b_K[layer][:, None]
    scores = einsum(q, k, "head q h, head k h -> head q k") / q.shape[-1] ** 0.5
    n_pos = x.shape[0]
    future = torch.ones(n_pos, n_pos, dtype=torch.bool, device=x.device).triu(1)
    return scores.masked_fill(future, -torch.inf).softmax(dim=-1)


def attention_output(
    weights: TransformerWeights, layer: int, pattern: Float[Tensor, "head query key"], x: Float[Tensor, "pos d_model"]
) -> Float[Tensor, "pos d_model"]:
    v = einsum(x, weights.W_V[layer], "... pos d, head d h -> ... head pos h") + weights.b_V[layer][:, None]
    z = einsum(pattern, v, "head q k, ... head k h -> ... head q h")
    return einsum(z, weights.W_O[layer], "... head q h, head h d -> ... q d") + weights.b_O[layer]


def run_and_record(
    weights: TransformerWeights,
    tokens: Int[Tensor, " pos"],
    mlp_out_delta: Float[Tensor, "layer pos d_model"] | None = None,
) -> RecordedPrompt:
    """Run the model on one prompt, live, and keep every constant the replacement model needs.

    `mlp_out_delta`, when given, is added to each MLP's output before it joins the residual stream:
    an intervention, after which everything downstream (attention, normalisation, later MLPs) runs live.
    """
    embeddings = weights.W_E[tokens] + weights.W_pos[: len(tokens)]
    resid = embeddings
    record: dict[str, list[Tensor]] = {name: [] for name in ("patterns", "ln1", "ln2", "mlp_in", "mlp_pre", "mlp_out")}
    for layer in range(weights.n_layers):
        scale = layer_norm_scale(resid, weights.eps)
        x = layer_norm_with_scale(resid, scale, weights.ln1_w[layer], weights.ln1_b[layer])
        pattern = attention_pattern(weights, layer, x)
        resid = resid + attention_output(weights, layer, pattern, x)
        scale2 = layer_norm_scale(resid, weights.eps)
        mlp_in = layer_norm_with_scale(resid, scale2, weights.ln2_w[layer], weights.ln2_b[layer])
        mlp_pre = mlp_in @ weights.W_in[layer] + weights.b_in[layer]
        mlp_out = F.relu(mlp_pre) @ weights.W_out[layer] + weights.b_out[layer]
        if mlp_out_delta is not None:
            mlp_out = mlp_out + mlp_out_delta[layer]
        resid = resid + mlp_out
        for name, value in zip(record, (pattern, scale, scale2, mlp_in, mlp_pre, mlp_out)):
            record[name].append(value)
    final_scale = layer_norm_scale(resid, weights.eps)
    logits = layer_norm_with_scale(resid, final_scale, weights.ln_final_w, weights.ln_final_b) @ weights.W_U
    return RecordedPrompt(
        tokens=tokens,
        embeddings=embeddings,
        patterns=torch.stack(record["patterns"]),
        ln1_scale=torch.stack(record["ln1"]),
        ln2_scale=torch.stack(record["ln2"]),
        ln_final_scale=final_scale,
        mlp_in=torch.stack(record["mlp_in"]),
        mlp_pre=torch.stack(record["mlp_pre"]),
        mlp_out=torch.stack(record["mlp_out"]),
        logits=logits + weights.b_U,
    )
