"""Part 5 behaviour: sparse decoders agree, folding changes TopK only, BatchTopK inference keeps its L0."""

import pytest
import torch
import torch.nn.functional as F

from part_utils.reference import part5_sae_variants as reference
from part_utils.reference.part1_toy_models import ToyModel, ToyModelConfig
from part_utils.seeding import seed_everything


@pytest.mark.parametrize(("batch", "d_sae", "d_in", "k"), [(5, 40, 3, 4), (64, 1000, 17, 32), (1, 9, 2, 9)])
def test_three_topk_decoders_agree(batch, d_sae, d_in, k):
    torch.manual_seed(batch)
    W_dec = torch.randn(d_sae, d_in, dtype=torch.float64)
    top = torch.randn(batch, d_sae, dtype=torch.float64).topk(k, dim=-1)
    values = F.relu(top.values)
    dense = reference.decode_dense(values, top.indices, W_dec)
    assert dense.shape == (batch, d_in)
    torch.testing.assert_close(reference.decode_gather(values, top.indices, W_dec), dense)
    torch.testing.assert_close(reference.decode_sparse(values, top.indices, W_dec), dense)


def test_folding_decoder_norms_keeps_relu_and_changes_topk():
    torch.manual_seed(0)
    W_enc, b_enc = torch.randn(6, 30, dtype=torch.float64), torch.randn(30, dtype=torch.float64) * 0.1
    W_dec = torch.randn(30, 6, dtype=torch.float64) * torch.rand(30, 1, dtype=torch.float64) * 3
    x = torch.randn(100, 6, dtype=torch.float64)
    folded = reference.fold_decoder_norms(W_enc, b_enc, W_dec)
    torch.testing.assert_close(folded[2].norm(dim=-1), torch.ones(30, dtype=torch.float64))

    def run(weights, activation):
        return activation(x @ weights[0] + weights[1]) @ weights[2]

    def topk(z):
        return reference.topk_activation(z[:, None], 3)[:, 0]

    torch.testing.assert_close(run(folded, F.relu), run((W_enc, b_enc, W_dec), F.relu))
    assert (run(folded, topk) - run((W_enc, b_enc, W_dec), topk)).abs().max() > 0.1


def test_batch_topk_inference_keeps_the_training_l0():
    seed_everything(0)
    n_inst = 4
    model = ToyModel(ToyModelConfig(n_inst=n_inst, n_features=5, d_hidden=2), feature_probability=0.025)
    with torch.no_grad():
        angles = torch.arange(5) * 2 * torch.pi / 5
        model.W.copy_(torch.stack([angles.cos(), angles.sin()])[None].expand(n_inst, -1, -1))
    cfg = reference.TopKToySAEConfig(n_inst=n_inst, d_in=2, d_sae=5, k=[0.12, 0.12, 0.2, 0.2])
    sae = reference.BatchTopKToySAE(cfg, model.requires_grad_(False))
    sae.optimize(steps=1_500, batch_size=1024, lr=1e-3, log_every=500)
    l0_training, l0_inference = reference.batch_topk_l0(sae, n_batches=10)
    torch.testing.assert_close(l0_training, torch.tensor([0.12, 0.12, 0.2, 0.2]), atol=0.002, rtol=0)
    relative = (l0_inference - l0_training).abs() / l0_training
    assert (relative <= 0.10).all(), f"inference L0 {l0_inference} vs training {l0_training}"


def test_topk_sae_counts_dead_latents_only_in_training():
    seed_everything(0)
    model = ToyModel(ToyModelConfig(n_inst=2, n_features=5, d_hidden=2), feature_probability=0.025).requires_grad_(
        False
    )
    sae = reference.TopKToySAE(reference.TopKToySAEConfig(n_inst=2, d_in=2, d_sae=5, k=1), model)
    h = sae.generate_batch(64)
    with torch.no_grad():
        sae(h)
    assert sae.steps_since_fired.sum() == 0, "evaluation must not count as a training step"
    loss = sae(h)[1]
    loss.backward()
    assert sae.steps_since_fired.max() <= 1


def test_step_function_through_input_sends_the_threshold_gradient_to_z_with_opposite_sign():
    # The hand-checkable case: only 1.4 and 1.6 lie within ε/2 of θ.
    z = torch.tensor([1.0, 1.4, 1.6, 2.0], dtype=torch.float64, requires_grad=True)
    threshold = torch.tensor(1.5, dtype=torch.float64, requires_grad=True)
    reference.HeavisideThroughInput.apply(z, threshold, 0.5).sum().backward()
    torch.testing.assert_close(z.grad, torch.tensor([0.0, 2.0, 2.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(threshold.grad, torch.tensor(-4.0, dtype=torch.float64))


def test_encoder_l0_variant_differs_from_the_reference_sae_only_in_the_encoder_gradient():
    seed_everything(3)
    model = ToyModel(ToyModelConfig(n_inst=2, n_features=5, d_hidden=2), feature_probability=0.3)
    cfg = reference.JumpReLUToySAEConfig(n_inst=2, d_in=2, d_sae=6, sparsity_coeff=0.5, bandwidth=0.5)
    saes = [reference.JumpReLUToySAE(cfg, model), reference.JumpReLUEncoderL0ToySAE(cfg, model)]
    saes[1].load_state_dict(saes[0].state_dict())
    h = saes[0].generate_batch(256)
    outputs = [sae(h) for sae in saes]
    for output in outputs:
        output[1].backward()
    torch.testing.assert_close(outputs[1][1], outputs[0][1])
    torch.testing.assert_close(saes[1].log_threshold.grad, saes[0].log_threshold.grad)
    torch.testing.assert_close(saes[1]._W_dec.grad, saes[0]._W_dec.grad)
    assert (saes[1].W_enc.grad - saes[0].W_enc.grad).abs().max() > 1e-3
