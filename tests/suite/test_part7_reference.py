"""Part 7's reference code: the Jacobians against autograd, the three decoders against each other."""

import pytest
import torch
import torch.nn.functional as F
from torch.autograd.functional import jacobian as autograd_jacobian

from part_utils.reference import part7_sae_circuits as reference

# (tokens, d_model, d_mlp, d_sae_in, d_sae_out, k_in, k_out): every size distinct within a case.
SHAPES = [(4, 5, 9, 14, 19, 3, 2), (3, 7, 12, 10, 16, 2, 4), (6, 4, 13, 21, 11, 5, 3)]


def autograd_case(seed: int, shape: tuple[int, ...]) -> tuple[tuple, torch.Tensor]:
    """Two TopK SAEs with biases around a ReLU MLP, in float64; returns the Jacobian's inputs and autograd's answer."""
    n_tokens, d_model, d_mlp, d_sae_in, d_sae_out, k_in, k_out = shape
    generator = torch.Generator().manual_seed(seed)
    randn = lambda *size: torch.randn(*size, generator=generator, dtype=torch.float64)
    W_enc_in, b_enc_in, b_dec_in = randn(d_model, d_sae_in), randn(d_sae_in), randn(d_model)
    W_dec_in = F.normalize(randn(d_sae_in, d_model), dim=-1)
    W_in, b_in, W_out, b_out = randn(d_model, d_mlp), randn(d_mlp), randn(d_mlp, d_model), randn(d_model)
    W_enc_out, b_enc_out, b_dec_out = randn(d_model, d_sae_out), randn(d_sae_out), randn(d_model)
    x = randn(n_tokens, d_model)

    top = ((x - b_dec_in) @ W_enc_in + b_enc_in).topk(k_in, dim=-1)
    values, active_in = F.relu(top.values), top.indices
    x_hat = torch.einsum("tk,tkd->td", values, W_dec_in[active_in]) + b_dec_in
    mlp = lambda inputs: F.relu(inputs @ W_in + b_in) @ W_out + b_out
    active_out = ((mlp(x_hat) - b_dec_out) @ W_enc_out + b_enc_out).topk(k_out, dim=-1).indices

    def output_pre_acts(active_values: torch.Tensor, t: int) -> torch.Tensor:
        x_t = active_values @ W_dec_in[active_in[t]] + b_dec_in
        return (mlp(x_t) - b_dec_out) @ W_enc_out[:, active_out[t]] + b_enc_out[active_out[t]]

    expected = torch.stack(
        [autograd_jacobian(lambda v, t=t: output_pre_acts(v, t), values[t]) for t in range(n_tokens)]
    )
    weights = reference.CircuitWeights(W_dec_in, W_in, W_out, W_enc_out)
    return (weights, x_hat @ W_in + b_in, active_in, active_out), expected


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("shape", SHAPES)
def test_loop_and_vectorised_jacobians_match_autograd(seed, shape):
    (weights, mlp_pre, active_in, active_out), expected = autograd_case(seed, shape)
    assert expected.shape == (shape[0], shape[6], shape[5])
    assert expected.abs().max() > 0.1, "a degenerate case (every neuron off) would prove nothing"
    loop = reference.jacobian_loop(weights, mlp_pre, active_in, active_out)
    vectorised = reference.jacobian_vectorised(reference.latent_products(weights), mlp_pre, active_in, active_out)
    torch.testing.assert_close(loop, expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(vectorised, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize(("n_tokens", "k", "d_sae", "d_in"), [(5, 3, 40, 7), (16, 8, 300, 24), (1, 1, 9, 4)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_three_decoders_agree(seed, n_tokens, k, d_sae, d_in, dtype):
    generator = torch.Generator().manual_seed(seed)
    values, indices = reference.random_codes(n_tokens, k, d_sae, torch.device("cpu"), generator)
    assert all(len(set(row.tolist())) == k for row in indices), "indices must be distinct per token"
    W_dec = torch.randn(d_sae, d_in, generator=generator).to(dtype)
    values = values.to(dtype)
    expected = torch.zeros(n_tokens, d_sae, dtype=torch.float64).scatter(-1, indices, values.double()) @ W_dec.double()
    for name, decode in reference.DECODERS.items():
        result = decode(values, indices, W_dec)
        assert result.dtype == dtype, name
        torch.testing.assert_close(result.double(), expected, rtol=1e-5, atol=1e-5, msg=name)


def test_decoder_benchmark_rows_cover_every_decoder_and_setting():
    settings = [(4, 2), (8, 3)]
    rows = reference.decoder_benchmark(
        torch.device("cpu"), d_in=6, d_sae=50, settings=settings, warmup=1, min_runs=2, budget_seconds=0.0
    )
    assert [(row["decoder"], row["tokens"], row["k"]) for row in rows] == [
        (name, n, k) for n, k in settings for name in reference.DECODERS
    ]
    for row in rows:
        assert row["runs"] == 2 and 0 < row["q1"] <= row["median"] <= row["q3"]


def test_random_circuit_case_draws_distinct_active_latents():
    W_in, b_in, W_out = torch.randn(5, 9), torch.randn(9), torch.randn(9, 5)
    weights, mlp_pre, active_in, active_out = reference.random_circuit_case(
        W_in, b_in, W_out, torch.randn(6, 5), d_sae=20, k=4
    )
    assert weights.W_dec_in.shape == (20, 5) and weights.W_enc_out.shape == (5, 20) and mlp_pre.shape == (6, 9)
    torch.testing.assert_close(weights.W_dec_in.norm(dim=-1), torch.ones(20))
    for active in (active_in, active_out):
        assert active.shape == (6, 4) and all(len(set(row.tolist())) == 4 for row in active)


def test_a_decoder_the_device_does_not_support_is_left_out(monkeypatch, capsys):
    def unsupported(values, indices, W_dec):
        raise NotImplementedError("no sparse kernels here")

    monkeypatch.setitem(reference.DECODERS, "sparse tensor matmul", unsupported)
    rows = reference.decoder_benchmark(
        torch.device("cpu"), d_in=5, d_sae=30, settings=[(3, 2)], warmup=0, min_runs=1, budget_seconds=0.0
    )
    assert [row["decoder"] for row in rows] == ["dense scatter + matmul", "gather k rows"]
    assert "sparse tensor matmul is not supported on cpu" in capsys.readouterr().out
