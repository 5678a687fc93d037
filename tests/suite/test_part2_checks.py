"""Mutation suite for Part 2's learner-facing checks (tests/part2_privileged_basis.py)."""

import pytest
import torch
import torch.nn.functional as F

import tests.part2_privileged_basis as part2
from part_utils.reference.part2_privileged_basis import NeuronComputationModel, NeuronModel
from tests.suite.conftest import stub


def with_method(base: type, name: str, function: object) -> type:
    return type("LearnerModel", (base,), {name: function})


def neuron_forward(hidden_relu=True, output_relu=True, bias=True):
    def forward(self, x):
        hidden = torch.einsum("ihf,bif->bih", self.W, x)
        hidden = F.relu(hidden) if hidden_relu else hidden
        out = torch.einsum("ihf,bih->bif", self.W, hidden) + (self.b_final if bias else 0)
        return F.relu(out) if output_relu else out

    return forward


def neuron_forward_matmul_float64(self, x):
    W = self.W.double()
    hidden = torch.clamp((W[None] @ x.double()[..., None]).squeeze(-1), min=0)
    return torch.clamp((W.transpose(1, 2)[None] @ hidden[..., None]).squeeze(-1) + self.b_final.double(), min=0)


def test_neuron_forward_accepts_reference_and_rewrites(checks):
    checks.passes(part2.test_neuron_model_forward, NeuronModel)
    checks.passes(part2.test_neuron_model_forward, with_method(NeuronModel, "forward", neuron_forward_matmul_float64))


@pytest.mark.parametrize(
    ("options", "message"),
    [({"hidden_relu": False}, "hidden layer has no ReLU"), ({"output_relu": False}, "negative values"), ({"bias": False}, "b_final is missing")],
)
def test_neuron_forward_names_each_mistake(checks, options, message):
    checks.fails(part2.test_neuron_model_forward, with_method(NeuronModel, "forward", neuron_forward(**options)), message)


def computation_forward(hidden_relu=True, output_relu=True, tied=False):
    def forward(self, x):
        hidden = torch.einsum("ihf,bif->bih", self.W1, x)
        hidden = F.relu(hidden) if hidden_relu else hidden
        out = (torch.einsum("ihf,bih->bif", self.W1, hidden) if tied else torch.einsum("ifh,bih->bif", self.W2, hidden)) + self.b_final
        return F.relu(out) if output_relu else out

    return forward


def test_computation_forward_accepts_reference_and_rewrites(checks):
    checks.passes(part2.test_computation_forward, NeuronComputationModel)
    checks.passes(part2.test_computation_forward, with_method(NeuronComputationModel, "forward", computation_forward()))


@pytest.mark.parametrize(
    ("options", "message"),
    [({"hidden_relu": False}, "hidden layer has no ReLU"), ({"output_relu": False}, "negative values"), ({"tied": True}, "W1ᵀ")],
)
def test_computation_forward_names_each_mistake(checks, options, message):
    checks.fails(part2.test_computation_forward, with_method(NeuronComputationModel, "forward", computation_forward(**options)), message)


def generate(low=-1.0, gaussian=False, reversed_probability=False):
    def generate_batch(self, batch_size):
        shape = (batch_size, *self.feature_probability.shape)
        draws = torch.rand(shape, device=self.b_final.device)
        present = draws > self.feature_probability if reversed_probability else draws < self.feature_probability
        values = torch.randn(shape) if gaussian else low + (1 - low) * torch.rand(shape)
        return values.to(self.b_final.device) * present

    return generate_batch


def generate_sign_times_magnitude_float64(self, batch_size):
    shape = (batch_size, *self.feature_probability.shape)
    present = torch.rand(shape, dtype=torch.float64) < self.feature_probability.double().cpu()
    signs = torch.where(torch.rand(shape) < 0.5, -1.0, 1.0).double()
    return (signs * torch.rand(shape, dtype=torch.float64) * present).to(self.b_final.device)


def test_computation_generate_batch_accepts_reference_and_rewrites(checks):
    checks.passes(part2.test_computation_generate_batch, NeuronComputationModel)
    checks.passes(part2.test_computation_generate_batch, with_method(NeuronComputationModel, "generate_batch", generate_sign_times_magnitude_float64))


@pytest.mark.parametrize(
    ("options", "message"),
    [({"low": 0.0}, r"not \[0, 1\]"), ({"gaussian": True}, "outside"), ({"reversed_probability": True}, "1 - p")],
)
def test_computation_generate_batch_names_each_mistake(checks, options, message):
    checks.fails(part2.test_computation_generate_batch, with_method(NeuronComputationModel, "generate_batch", generate(**options)), message)


LOSS_MUTANTS = [
    (lambda self, out, batch: (self.importance * (batch - out).pow(2)).mean((0, 2)).sum(), "target is |x|"),
    (lambda self, out, batch: (batch.abs() - out).pow(2).mean((0, 2)).sum(), "Importance is missing"),
    (lambda self, out, batch: (self.importance * (batch.abs() - out).pow(2)).mean(), "averaged over instances"),
    (lambda self, out, batch: (self.importance * (batch.abs() - out).pow(2)).mean((0, 2)).sum().detach(), "cut off from the graph"),
]


def test_computation_loss_accepts_reference_and_rewrites(checks):
    rewrite = lambda self, out, batch: (self.importance.double() * (torch.sqrt(batch.double() ** 2) - out.double()) ** 2).sum((0, 2)).sum() / (batch.shape[0] * batch.shape[2])  # noqa: E731
    checks.passes(part2.test_computation_calculate_loss, NeuronComputationModel)
    checks.passes(part2.test_computation_calculate_loss, with_method(NeuronComputationModel, "calculate_loss", rewrite))


@pytest.mark.parametrize(("mutant", "message"), LOSS_MUTANTS)
def test_computation_loss_names_each_mistake(checks, mutant, message):
    checks.fails(part2.test_computation_calculate_loss, with_method(NeuronComputationModel, "calculate_loss", mutant), message)


@pytest.mark.parametrize(
    ("check", "base", "name"),
    [
        (part2.test_neuron_model_forward, NeuronModel, "forward"),
        (part2.test_computation_forward, NeuronComputationModel, "forward"),
        (part2.test_computation_generate_batch, NeuronComputationModel, "generate_batch"),
        (part2.test_computation_calculate_loss, NeuronComputationModel, "calculate_loss"),
    ],
)
def test_stubs_and_wrong_objects_are_reported(checks, check, base, name):
    checks.fails(check, with_method(base, name, stub), rf"`{name}` is not implemented yet")
    checks.fails(check, "NeuronModel", rf"Pass (the class that has )?your `{name}`")
