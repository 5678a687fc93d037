"""Reference implementation for 07_sae_circuits, generated from source/07_sae_circuits.py.

Do not edit: change the source and run `python workbook.py build`."""

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


@dataclass(frozen=True)
class LatentProducts:
    written: Float[Tensor, "d_sae_in d_mlp"]
    """W_dec_in @ W_in: what each input latent writes into the MLP's neurons."""
    read: Float[Tensor, "d_sae_out d_mlp"]
    """(W_out @ W_enc_out)ᵀ: what each output latent reads from the neurons."""


def latent_products(weights: CircuitWeights) -> LatentProducts:
    return LatentProducts(written=weights.W_dec_in @ weights.W_in, read=(weights.W_out @ weights.W_enc_out).T)


def jacobian_vectorised(
    products: LatentProducts,
    mlp_pre: Float[Tensor, "tokens d_mlp"],
    active_in: Int[Tensor, "tokens k_in"],
    active_out: Int[Tensor, "tokens k_out"],
) -> Float[Tensor, "tokens k_out k_in"]:
    relu_derivative = (mlp_pre > 0).to(mlp_pre.dtype)
    return einsum(
        products.read[active_out],
        relu_derivative,
        products.written[active_in],
        "tokens k_out d_mlp, tokens d_mlp, tokens k_in d_mlp -> tokens k_out k_in",
    )


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
