"""Part 6's task, model, activation plumbing and loss-recovered machinery."""

import functools

import pytest
import torch

from part_utils.activation_sae import ActivationSource, PublishedAuxKTopKSAE
from part_utils.activations import collect_activations
from part_utils.palindromes import (
    MIRRORED_POSITIONS,
    PalindromeTokenizer,
    build_palindrome_model,
    load_palindrome_model,
    mirrored_accuracy,
    next_token_loss,
    palindrome,
    palindrome_dataset,
    train_palindrome_model,
)
from part_utils.reference.part4_toy_sae import ToySAE, ToySAEConfig
from part_utils.reference.part5_sae_variants import TopKToySAE, TopKToySAEConfig
from part_utils.reference.part6_sae_transformer import (
    constant_replacement,
    loss_recovered,
    sae_replacement,
    spliced_loss,
)

HOOK = "blocks.0.hook_mlp_out"
CPU = torch.device("cpu")


@functools.cache
def model():
    return load_palindrome_model(device=CPU)


@functools.cache
def data():
    return palindrome_dataset()


def test_tokenizer_round_trips_and_refuses_what_it_does_not_know():
    tokenizer = PalindromeTokenizer()
    tokens = tokenizer.encode(["<abc|cba>", "<zzy|yzz>"])
    assert tokens.shape == (2, 9) and tokenizer.decode(tokens) == ["<abc|cba>", "<zzy|yzz>"]
    with pytest.raises(ValueError, match=r"\['A'\] are not in the vocabulary"):
        tokenizer.encode("<Abc|cbA>")
    with pytest.raises(ValueError, match=r"must lie in \[0, 28\]"):
        tokenizer.decode(torch.tensor([0, 29]))
    with pytest.raises(TypeError, match="integer tensor"):
        tokenizer.decode(torch.tensor([0.0, 1.0]))


def test_split_covers_every_palindrome_once():
    split = data()
    assert len(split.train_tokens) + len(split.test_tokens) == 26**3 and len(split.test_tokens) == 3515
    train = set(split.tokenizer.decode(split.train_tokens))
    test = set(split.tokenizer.decode(split.test_tokens))
    assert not train & test and len(train | test) == 26**3
    assert all(text == palindrome(text[1:4]) for text in test)


def test_shipped_model_completes_held_out_palindromes():
    assert mirrored_accuracy(model(), data().test_tokens) >= 0.99
    assert MIRRORED_POSITIONS == (4, 5, 6, 7)


def test_training_code_learns_from_scratch():
    torch.manual_seed(0)
    fresh = build_palindrome_model(seed=1, device=CPU)
    batch = data().test_tokens[:512]
    before = next_token_loss(fresh(batch), batch).item()
    train_palindrome_model(fresh, data(), steps=150)
    after = next_token_loss(fresh(batch), batch).item()
    assert before > 3.0 and after < 0.8 * before


def test_collect_activations_shapes_and_refusals():
    acts = collect_activations(model(), data().test_tokens[:10], HOOK, batch_size=4)
    assert acts.shape == (10, 9, 64)
    _, cache = model().run_with_cache(data().test_tokens[:10])
    torch.testing.assert_close(acts, cache[HOOK])
    with pytest.raises(KeyError, match="Did you mean"):
        collect_activations(model(), data().test_tokens[:2], "blocks.0.hook_mlp_outt")
    with pytest.raises(ValueError, match="vocabulary"):
        collect_activations(model(), torch.tensor([[0, 3, 4, 40, 1, 5, 4, 3, 2]]), HOOK)
    with pytest.raises(ValueError, match="context"):
        collect_activations(model(), torch.zeros(1, 12, dtype=torch.long), HOOK)
    with pytest.raises(TypeError, match="integer tensor"):
        collect_activations(model(), torch.zeros(1, 9), HOOK)


def identity_sae(d: int) -> ToySAE:
    """A hand-built SAE that reconstructs exactly: latents ReLU(x) and ReLU(−x), decoded as their difference."""
    source = ActivationSource(torch.randn(16, d), n_inst=1)
    sae = ToySAE(ToySAEConfig(n_inst=1, d_in=d, d_sae=2 * d, weight_normalize_eps=0.0), source)
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], dim=1)[None])
        sae._W_dec.copy_(torch.cat([eye, -eye], dim=0)[None])
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


def test_identity_sae_recovers_all_of_the_loss_and_ablation_none():
    tokens = data().test_tokens[:200]
    clean = model()(tokens, return_type="loss").item()
    zero = spliced_loss(model(), tokens, HOOK, constant_replacement(torch.zeros(64)))
    spliced = spliced_loss(model(), tokens, HOOK, sae_replacement(identity_sae(64), 0, scale=2.5))
    assert zero > clean + 0.5
    assert loss_recovered(clean, spliced, zero) == pytest.approx(1.0, abs=1e-4)
    assert loss_recovered(clean, zero, zero) == 0.0


def test_sae_replacement_refuses_an_sae_of_the_wrong_size():
    with pytest.raises(ValueError, match="d_in=64, but the activation here has size 256"):
        spliced_loss(
            model(), data().test_tokens[:2], "blocks.0.mlp.hook_post", sae_replacement(identity_sae(64), 0, scale=1.0)
        )


def test_activation_source_serves_buffer_rows_to_every_instance():
    buffer = torch.randn(50, 6)
    source = ActivationSource(buffer, n_inst=3)
    sae = ToySAE(ToySAEConfig(n_inst=3, d_in=6, d_sae=8), source)
    batch = sae.generate_batch(20)
    assert batch.shape == (20, 3, 6)
    assert torch.equal(batch[:, 0], batch[:, 2])
    matches = (batch[:, 0, None, :] == buffer[None]).all(dim=-1)
    assert matches.any(dim=1).all(), "every sample is a row of the buffer"
    with pytest.raises(ValueError, match="flatten"):
        ActivationSource(torch.randn(4, 9, 6), n_inst=1)


def published_auxk_case() -> tuple[PublishedAuxKTopKSAE, tuple[torch.Tensor, ...]]:
    """An SAE with a non-zero decoder bias, and an instance with fewer dead latents than k_aux beside one with none."""
    torch.manual_seed(0)
    cfg = TopKToySAEConfig(n_inst=2, d_in=6, d_sae=10, k=2, k_aux=4)
    sae = PublishedAuxKTopKSAE(cfg, ActivationSource(torch.randn(50, 6), n_inst=2))
    with torch.no_grad():
        sae.b_dec.normal_()
    dead = torch.zeros(2, 10, dtype=torch.bool)
    dead[0, [1, 3, 5]] = True
    return sae, (torch.randn(32, 2, 10), torch.randn(32, 2, 6), torch.randn(32, 2, 6), dead)


def test_published_auxk_is_the_top_dead_latents_error_over_the_residuals_variance():
    sae, (pre_acts, h, h_reconstructed, dead) = published_auxk_case()
    residual = h - h_reconstructed
    top = pre_acts.masked_fill(~dead, -torch.inf).topk(4, dim=-1)
    aux_acts = torch.zeros_like(pre_acts).scatter(-1, top.indices, torch.relu(top.values))
    residual_hat = torch.einsum("bis,isd->bid", aux_acts, sae.W_dec_normalized)  # no b_dec: the residual has no offset
    variance = (residual - residual.mean(dim=0)).pow(2).mean(dim=(0, 2))
    expected = (residual_hat - residual).pow(2).mean(dim=-1) / variance
    expected[:, 1] = 0.0  # no dead latent in instance 1
    loss = sae.auxk_loss(pre_acts, h, h_reconstructed, dead)
    torch.testing.assert_close(loss, expected)
    # Averaged over the batch, it is openai/sparse_autoencoder's normalized_mse(ê + b_dec, e + b_dec).
    target, reconstruction = residual[:, 0] + sae.b_dec[0], residual_hat[:, 0] + sae.b_dec[0]
    normalized_mse = (reconstruction - target).pow(2).mean() / (target.mean(dim=0) - target).pow(2).mean()
    torch.testing.assert_close(loss[:, 0].mean(), normalized_mse)
    # Part 5's AuxK is the same error, unnormalised and scaled by n_dead / k_aux = 3/4.
    part5 = TopKToySAE.auxk_loss(sae, pre_acts, h, h_reconstructed, dead)
    torch.testing.assert_close(part5[:, 0], loss[:, 0] * variance[0] * 3 / 4)


def test_published_auxk_trains_only_the_dead_latents():
    sae, (_, h, _, dead) = published_auxk_case()
    pre_acts = torch.einsum("bid,ids->bis", h - sae.b_dec, sae.W_enc) + sae.b_enc
    h_reconstructed = torch.einsum("bis,isd->bid", sae.activation(pre_acts), sae.W_dec_normalized) + sae.b_dec
    sae.auxk_loss(pre_acts, h, h_reconstructed, dead).sum().backward()
    assert sae.W_enc.grad[0][:, ~dead[0]].abs().max() == 0 and sae.W_enc.grad[0][:, dead[0]].abs().max() > 0
    assert sae.W_enc.grad[1].abs().max() == 0, "an instance without dead latents has no auxiliary loss"


def test_install_on_colab_installs_only_in_colab(monkeypatch):
    from part_utils import colab

    calls = []
    monkeypatch.setattr(colab.subprocess, "run", lambda command, check: calls.append(command))
    colab.install_transformer_lens_on_colab()
    assert calls == []
    monkeypatch.setitem(colab.sys.modules, "google.colab", object())
    colab.install_transformer_lens_on_colab()
    dependencies, transformer_lens = calls
    assert dependencies[1:4] == ["-m", "pip", "install"] and any(
        item.startswith("transformers>=5.9") for item in dependencies
    )
    assert "--no-deps" in transformer_lens and transformer_lens[-1] == "transformer-lens>=4.3,<5"
    assert not any("wandb" in item for call in calls for item in call)
