"""Checks for Part 2 (superposition in a privileged basis). E.g. `test_neuron_model_forward(NeuronModel)`."""

import torch
import torch.nn.functional as F
from torch import Tensor

from part_utils.device import get_device
from part_utils.reference import part2_privileged_basis as reference
from part_utils.reference.part1_toy_models import ToyModelConfig
from tests.checking import CheckFailure, call_learner, check, diagnose, expect_tensor, learner_callable

N_INST, N_FEATURES, D_HIDDEN, BATCH = 3, 7, 4, 32


def _random_model(kind: type) -> reference.ToyModel:
    cfg = ToyModelConfig(n_inst=N_INST, n_features=N_FEATURES, d_hidden=D_HIDDEN)
    probability = torch.linspace(0.05, 0.6, N_INST * N_FEATURES).reshape(N_INST, N_FEATURES)[:, torch.randperm(N_FEATURES)]
    model = kind(cfg, feature_probability=probability, importance=torch.rand(N_INST, N_FEATURES) + 0.1, device=get_device())
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_()
    return model


def _signed_batch(device: torch.device) -> Tensor:
    values = 2 * torch.rand(BATCH, N_INST, N_FEATURES) - 1
    return (values * (torch.rand(BATCH, N_INST, N_FEATURES) < 0.6)).to(device)


@check("NeuronModel.forward")
def test_neuron_model_forward(learner: object) -> str:
    forward = learner_callable(learner, "forward")
    model = _random_model(reference.NeuronModel)
    features = torch.rand(BATCH, N_INST, N_FEATURES, device=model.W.device) * (torch.rand(BATCH, N_INST, N_FEATURES, device=model.W.device) < 0.6)
    with torch.no_grad():
        output = call_learner(forward, model, features, what="forward")
    actual = expect_tensor(output, (BATCH, N_INST, N_FEATURES), what="forward", axes="batch, inst, feats")
    W, b, x = model.W.detach().cpu().double(), model.b_final.detach().cpu().double(), features.cpu().double()
    pre_hidden = torch.einsum("ihf,bif->bih", W, x)
    readout = lambda hidden: torch.einsum("ihf,bih->bif", W, hidden) + b  # noqa: E731
    diagnose(
        actual,
        F.relu(readout(F.relu(pre_hidden))),
        {
            "The hidden layer has no ReLU: in a NeuronModel, h = ReLU(W x).": F.relu(readout(pre_hidden)),
            "The output has negative values: keep the ReLU on the output, ReLU(Wᵀh + b_final).": readout(F.relu(pre_hidden)),
            "b_final is missing from the output.": F.relu(readout(F.relu(pre_hidden)) - b),
        },
        otherwise="The output does not match ReLU(Wᵀ ReLU(W x) + b_final) per instance.",
    )
    return "ReLU on the hidden layer and on the output"


@check("NeuronComputationModel.forward")
def test_computation_forward(learner: object) -> str:
    forward = learner_callable(learner, "forward")
    model = _random_model(reference.NeuronComputationModel)
    x = _signed_batch(model.W1.device)
    with torch.no_grad():
        output = call_learner(forward, model, x, what="forward")
    actual = expect_tensor(output, (BATCH, N_INST, N_FEATURES), what="forward", axes="batch, inst, feats")
    W1, W2 = model.W1.detach().cpu().double(), model.W2.detach().cpu().double()
    b, xs = model.b_final.detach().cpu().double(), x.cpu().double()
    pre_hidden = torch.einsum("ihf,bif->bih", W1, xs)
    readout = lambda hidden: torch.einsum("ifh,bih->bif", W2, hidden) + b  # noqa: E731
    diagnose(
        actual,
        F.relu(readout(F.relu(pre_hidden))),
        {
            "The hidden layer has no ReLU: h = ReLU(W1 x).": F.relu(readout(pre_hidden)),
            "The output has negative values: x' = ReLU(W2 h + b_final).": readout(F.relu(pre_hidden)),
            "You decoded with W1ᵀ; this model has its own output weights W2.": F.relu(torch.einsum("ihf,bih->bif", W1, F.relu(pre_hidden)) + b),
        },
        otherwise="The output does not match ReLU(W2 ReLU(W1 x) + b_final) per instance.",
    )
    return "two weight matrices, both ReLUs"


@check("NeuronComputationModel.generate_batch")
def test_computation_generate_batch(learner: object) -> str:
    generate = learner_callable(learner, "generate_batch")
    model = _random_model(reference.NeuronComputationModel)
    batch = 20_000
    output = call_learner(generate, model, batch, what="generate_batch")
    values = expect_tensor(output, (batch, N_INST, N_FEATURES), what="generate_batch", axes="batch, inst, feats")
    if values.min() >= 0:
        raise CheckFailure("All values are non-negative: present features must be uniform on [-1, 1], not [0, 1].")
    if values.abs().max() > 1:
        raise CheckFailure("Values fall outside [-1, 1]: use 2 * torch.rand(...) - 1, not torch.randn.")
    probability = model.feature_probability.cpu().double()
    frequency = (values != 0).double().mean(0)
    tolerance = 5 * (probability * (1 - probability) / batch).sqrt() + 1e-3
    if ((frequency - probability).abs() > tolerance).any():
        if ((frequency - (1 - probability)).abs() <= tolerance).all():
            raise CheckFailure("Features are present with probability 1 - p: the comparison is reversed.")
        raise CheckFailure("Features are present with the wrong probability: use feature_probability[inst, feat].")
    present = values[values != 0]
    quartiles = torch.stack([(present < q).double().mean() for q in (-0.5, 0.0, 0.5)])
    if (quartiles - torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64)).abs().max() > 0.02:
        raise CheckFailure("The values of present features are not uniform on [-1, 1].")
    return f"presence frequencies and signed values match on {batch} samples"


@check("NeuronComputationModel.calculate_loss")
def test_computation_calculate_loss(learner: object) -> str:
    calculate_loss = learner_callable(learner, "calculate_loss")
    model = _random_model(reference.NeuronComputationModel)
    batch = _signed_batch(torch.device("cpu")).double()
    out = (batch.abs() + 0.3 * torch.randn_like(batch)).clamp_min(0)
    device = model.W1.device
    loss = call_learner(calculate_loss, model, out.float().to(device).requires_grad_(True), batch.float().to(device), what="calculate_loss")
    if isinstance(loss, Tensor) and loss.numel() == 1 and not loss.requires_grad:
        raise CheckFailure("`calculate_loss` returned a value cut off from the graph: don't use .item() or .detach().")
    actual = expect_tensor(loss.reshape(()) if isinstance(loss, Tensor) and loss.numel() == 1 else loss, (), what="calculate_loss", axes="a scalar")
    importance = model.importance.cpu().double()
    weighted = lambda target: (importance * (target - out).pow(2)).mean((0, 2)).sum()  # noqa: E731
    diagnose(
        actual,
        weighted(batch.abs()),
        {
            "The loss compares the output with x; the target is |x|.": weighted(batch),
            "Importance is missing: weight each feature's squared error by importance[inst, feat].": (batch.abs() - out).pow(2).mean((0, 2)).sum(),
            "The loss is averaged over instances; sum over instances.": (importance * (batch.abs() - out).pow(2)).mean(),
        },
        otherwise="The loss should be the importance-weighted squared error against |x|, averaged over batch and features, summed over instances.",
    )
    return "target |x|, importance weighting and reductions"
