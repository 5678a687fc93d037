"""Every SAE architecture keeps the one interface: `encode`, `decode`, and a forward pass returning `SAEOutput`."""

import inspect
from collections.abc import Callable

import pytest
import torch

from part_utils.activation_sae import ActivationSource, PublishedAuxKTopKSAE
from part_utils.reference import part4_toy_sae as part4
from part_utils.reference import part5_sae_variants as part5
from part_utils.reference import part8_feature_absorption as part8
from part_utils.reference.part1_toy_models import ToyModel, ToyModelConfig
from part_utils.sae_interface import SAEOutput, TrainableSAE
from part_utils.sae_training import train_sae

N_INST, D_IN, D_SAE = 3, 4, 6


def toy_model() -> ToyModel:
    model = ToyModel(ToyModelConfig(n_inst=N_INST, n_features=5, d_hidden=D_IN), feature_probability=0.3)
    with torch.no_grad():
        model.W.normal_()
    return model


def topk_config(**extra: object) -> part5.TopKToySAEConfig:
    return part5.TopKToySAEConfig(n_inst=N_INST, d_in=D_IN, d_sae=D_SAE, k=2, **extra)


ARCHITECTURES: dict[str, Callable[[], part4.ToySAE]] = {
    "L1": lambda: part4.ToySAE(part4.ToySAEConfig(n_inst=N_INST, d_in=D_IN, d_sae=D_SAE), toy_model()),
    "L1 tied": lambda: part4.ToySAE(part4.ToySAEConfig(N_INST, D_IN, D_SAE, tied_weights=True), toy_model()),
    "Gated": lambda: part5.GatedToySAE(part4.ToySAEConfig(n_inst=N_INST, d_in=D_IN, d_sae=D_SAE), toy_model()),
    "JumpReLU": lambda: part5.JumpReLUToySAE(part5.JumpReLUToySAEConfig(N_INST, D_IN, D_SAE), toy_model()),
    "TopK": lambda: part5.TopKToySAE(topk_config(), toy_model()),
    "BatchTopK": lambda: part5.BatchTopKToySAE(topk_config(), toy_model()),
    "Matryoshka": lambda: part8.MatryoshkaToySAE(
        part8.MatryoshkaToySAEConfig(**vars(topk_config()), prefix_sizes=[2, 6]), toy_model()
    ),
    "published AuxK": lambda: PublishedAuxKTopKSAE(topk_config(), ActivationSource(torch.randn(50, D_IN), N_INST)),
}


@pytest.fixture(params=list(ARCHITECTURES))
def sae(request: pytest.FixtureRequest) -> part4.ToySAE:
    torch.manual_seed(0)
    made = ARCHITECTURES[request.param]()
    with torch.no_grad():  # non-zero biases and gates, so that every path of the encoder matters
        for name, parameter in made.named_parameters():
            if name.startswith("b_") or name == "r_mag":
                parameter.normal_(std=0.1)
    return made


def test_every_architecture_offers_the_trainable_interface(sae: part4.ToySAE) -> None:
    for name, member in inspect.getmembers(TrainableSAE):
        if not name.startswith("_") and (callable(member) or isinstance(member, property)):
            assert hasattr(sae, name), f"{type(sae).__name__} lacks `{name}`"
    assert hasattr(sae, "cfg") and hasattr(sae.cfg, "sparsity_coeff")


@pytest.mark.parametrize("training", [True, False])
def test_forward_is_encode_then_decode(sae: part4.ToySAE, training: bool) -> None:
    sae.train(training)
    h = sae.generate_batch(64)
    with torch.no_grad():
        sae(h)  # BatchTopK's first training batch sets its threshold; inference then uses it
        output = sae(h)
        acts = sae.encode(h)
    assert type(output) is SAEOutput
    assert output.acts.shape == (64, N_INST, D_SAE) and output.h_reconstructed.shape == h.shape
    assert output.loss.shape == () and all(term.shape == (64, N_INST) for term in output.loss_dict.values())
    torch.testing.assert_close(acts, output.acts, rtol=0, atol=0)
    torch.testing.assert_close(sae.decode(acts), output.h_reconstructed)


def test_encode_of_the_pre_activations(sae: part4.ToySAE) -> None:
    """The encoder's affine part is one method, shared by every architecture that thresholds it."""
    h = sae.generate_batch(16)
    expected = torch.einsum("bid,ids->bis", h - sae.b_dec, sae.W_enc) + sae.b_enc
    torch.testing.assert_close(sae.pre_activations(h), expected)


def test_the_training_loop_runs_on_every_architecture(sae: part4.ToySAE) -> None:
    log = train_sae(
        sae,
        steps=6,
        batch_size=32,
        log_every=5,
        sample_size=16,
        resample_method="simple",
        resample_every=3,
        resample_window=2,
    )
    assert [snapshot.step for snapshot in log.snapshots] == [0, 5] and len(log.resample_counts) == 1
    assert torch.isfinite(torch.tensor(log.losses)).all()
