"""Mutation suite for Part 1's learner-facing checks (tests/part1_toy_models.py).

Each check must pass the reference, pass a correct version written differently, and fail
each plausible mistake with a message that names it.
"""

import random
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import tests.part1_toy_models as part1
from tests.suite.conftest import stub
from part_utils.reference.part1_toy_models import (
    ToyModel,
    generate_anticorrelated_features,
    generate_correlated_features,
)


def with_method(name: str, function: object) -> type[ToyModel]:
    """A ToyModel subclass whose `name` is the given (possibly wrong) implementation."""
    return type("LearnerToyModel", (ToyModel,), {name: function})


# forward ----------------------------------------------------------------------------------


def forward_matmul_float64(self, features):
    W = self.W.double()
    hidden = (W[None] @ features.double()[..., None]).squeeze(-1)  # [batch, inst, d_hidden]
    out = (W.transpose(1, 2)[None] @ hidden[..., None]).squeeze(-1)
    return torch.clamp(out + self.b_final.double(), min=0)


def forward_no_relu(self, features):
    hidden = torch.einsum("ihf,bif->bih", self.W, features)
    return torch.einsum("ihf,bih->bif", self.W, hidden) + self.b_final


def forward_no_bias(self, features):
    hidden = torch.einsum("ihf,bif->bih", self.W, features)
    return F.relu(torch.einsum("ihf,bih->bif", self.W, hidden))


def forward_bias_after_relu(self, features):
    hidden = torch.einsum("ihf,bif->bih", self.W, features)
    return F.relu(torch.einsum("ihf,bih->bif", self.W, hidden)) + self.b_final


def forward_relu_on_hidden(self, features):
    hidden = F.relu(torch.einsum("ihf,bif->bih", self.W, features))
    return F.relu(torch.einsum("ihf,bih->bif", self.W, hidden) + self.b_final)


def forward_transposed_contraction(self, features):
    # Contracts W's rows instead of its columns on the way back: mixes features up.
    hidden = torch.einsum("ihf,bif->bih", self.W, features)
    out = torch.einsum("ihf,bih->bif", self.W.flip(-1), hidden)
    return F.relu(out + self.b_final)


def forward_wrong_shape(self, features):
    return forward_matmul_float64(self, features).transpose(1, 2)


def test_forward_accepts_reference_and_rewrites(checks):
    checks.passes(part1.test_forward, ToyModel)
    checks.passes(part1.test_forward, with_method("forward", forward_matmul_float64))
    checks.passes(part1.test_forward, forward_matmul_float64)  # the bare function works too


@pytest.mark.parametrize(
    ("mutant", "message"),
    [
        (forward_no_relu, "apply the ReLU"),
        (forward_no_bias, "b_final is missing"),
        (forward_bias_after_relu, "added after the ReLU"),
        (forward_relu_on_hidden, "ReLU to the hidden layer"),
        (forward_transposed_contraction, "which axes"),
        (forward_wrong_shape, r"shape \(32, 7, 3\).*\[batch, inst, feats\]"),
    ],
)
def test_forward_names_each_mistake(checks, mutant, message):
    checks.fails(part1.test_forward, with_method("forward", mutant), message)


# generate_batch ---------------------------------------------------------------------------


def generate_two_draws_float64(self, batch_size):
    shape = (batch_size, *self.feature_probability.shape)
    present = torch.rand(shape, device=self.W.device, dtype=torch.float64) < self.feature_probability
    return torch.rand(shape, device=self.W.device, dtype=torch.float64) * present


def generate_reversed_probability(self, batch_size):
    shape = (batch_size, *self.feature_probability.shape)
    present = torch.rand(shape, device=self.W.device) > self.feature_probability
    return torch.rand(shape, device=self.W.device) * present


def generate_first_instance_probability(self, batch_size):
    shape = (batch_size, *self.feature_probability.shape)
    present = torch.rand(shape, device=self.W.device) < self.feature_probability[:1]
    return torch.rand(shape, device=self.W.device) * present


def generate_never_absent(self, batch_size):
    shape = (batch_size, *self.feature_probability.shape)
    present = torch.rand(shape, device=self.W.device) < self.feature_probability
    return torch.where(present, torch.rand(shape, device=self.W.device), 1e-3)


def generate_gaussian_magnitudes(self, batch_size):
    shape = (batch_size, *self.feature_probability.shape)
    present = torch.rand(shape, device=self.W.device) < self.feature_probability
    return torch.randn(shape, device=self.W.device) * present


def generate_unit_magnitudes(self, batch_size):
    shape = (batch_size, *self.feature_probability.shape)
    return (torch.rand(shape, device=self.W.device) < self.feature_probability).float()


def generate_reused_draw_unscaled(self, batch_size):
    draws = torch.rand(batch_size, *self.feature_probability.shape, device=self.W.device)
    return draws * (draws < self.feature_probability)


def generate_shared_across_instances(self, batch_size):
    n_inst, n_feats = self.feature_probability.shape
    draws = torch.rand(batch_size, 1, n_feats, device=self.W.device).expand(batch_size, n_inst, n_feats)
    magnitudes = torch.rand(batch_size, n_inst, n_feats, device=self.W.device)
    return magnitudes * (draws < self.feature_probability)


def generate_shared_across_features(self, batch_size):
    n_inst, n_feats = self.feature_probability.shape
    draws = torch.rand(batch_size, n_inst, 1, device=self.W.device).expand(batch_size, n_inst, n_feats)
    magnitudes = torch.rand(batch_size, n_inst, n_feats, device=self.W.device)
    return magnitudes * (draws < self.feature_probability)


def generate_shared_magnitudes(self, batch_size):
    n_inst, n_feats = self.feature_probability.shape
    present = torch.rand(batch_size, n_inst, n_feats, device=self.W.device) < self.feature_probability
    return torch.rand(batch_size, 1, n_feats, device=self.W.device) * present


def generate_feats_first(self, batch_size):
    return generate_two_draws_float64(self, batch_size).transpose(1, 2)


def test_generate_batch_accepts_reference_and_rewrites(checks):
    checks.passes(part1.test_generate_batch, ToyModel)
    checks.passes(part1.test_generate_batch, with_method("generate_batch", generate_two_draws_float64))


@pytest.mark.parametrize(
    ("mutant", "message"),
    [
        (generate_reversed_probability, "probability 1 - p"),
        (generate_first_instance_probability, "same feature probabilities"),
        (generate_never_absent, "exactly 0"),
        (generate_gaussian_magnitudes, r"outside \[0, 1\]"),
        (generate_unit_magnitudes, "magnitude 1"),
        (generate_reused_draw_unscaled, "divide it by the probability"),
        (generate_shared_across_instances, "correlated across instances"),
        (generate_shared_across_features, "correlated across features"),
        (generate_shared_magnitudes, "same magnitude in different instances"),
        (generate_feats_first, r"\[batch, inst, feats\]"),
    ],
)
def test_generate_batch_names_each_mistake(checks, mutant, message):
    checks.fails(part1.test_generate_batch, with_method("generate_batch", mutant), message)


# calculate_loss ---------------------------------------------------------------------------


def loss_explicit_float64(self, out, batch):
    squared = (batch.double() - out.double()) ** 2
    per_instance = (self.importance.double() * squared).sum(dim=(0, 2)) / (batch.shape[0] * batch.shape[2])
    return per_instance.sum()


def _weighted(self, out, batch):
    return self.importance * (batch - out) ** 2


LOSS_MUTANTS = [
    (lambda self, out, batch: ((batch - out) ** 2).mean((0, 2)).sum(), "Importance is missing"),
    (lambda self, out, batch: _weighted(self, out, batch).mean(), "averaged over instances"),
    (lambda self, out, batch: _weighted(self, out, batch).sum(2).mean(0).sum(), "summed over features"),
    (lambda self, out, batch: _weighted(self, out, batch).sum(0).mean(-1).sum(), "summed over the batch"),
    (lambda self, out, batch: (self.importance * (batch - out)).pow(2).mean((0, 2)).sum(), "before squaring"),
    (lambda self, out, batch: (self.importance * (batch - out).abs()).mean((0, 2)).sum(), "not squared"),
    (lambda self, out, batch: _weighted(self, out, batch).mean((0, 2)), "one loss per instance"),
    (lambda self, out, batch: _weighted(self, out, batch).mean((0, 2)).sum().detach(), "cut off from the graph"),
    (lambda self, out, batch: _weighted(self, out, batch).mean((0, 2)).sum().item(), "torch.Tensor"),
]


def test_calculate_loss_accepts_reference_and_rewrites(checks):
    checks.passes(part1.test_calculate_loss, ToyModel)
    checks.passes(part1.test_calculate_loss, with_method("calculate_loss", loss_explicit_float64))


@pytest.mark.parametrize(("mutant", "message"), LOSS_MUTANTS)
def test_calculate_loss_names_each_mistake(checks, mutant, message):
    checks.fails(part1.test_calculate_loss, with_method("calculate_loss", mutant), message)


# correlated and anticorrelated pairs ------------------------------------------------------


def correlated_float64_repeat(batch_size, feature_probability):
    n_inst, n_pairs = feature_probability.shape
    present = torch.rand(batch_size, n_inst, n_pairs, dtype=torch.float64, device=feature_probability.device)
    present = (present < feature_probability).repeat_interleave(2, dim=-1)
    return torch.rand(batch_size, n_inst, 2 * n_pairs, dtype=torch.float64, device=feature_probability.device) * present


def correlated_blocked_layout(batch_size, feature_probability):
    n_inst, n_pairs = feature_probability.shape
    present = torch.rand(batch_size, n_inst, n_pairs, device=feature_probability.device) < feature_probability
    present = torch.cat([present, present], dim=-1)
    return torch.rand(batch_size, n_inst, 2 * n_pairs, device=feature_probability.device) * present


def correlated_independent(batch_size, feature_probability):
    probability = feature_probability.repeat_interleave(2, dim=-1)
    return torch.rand(batch_size, *probability.shape) * (torch.rand(batch_size, *probability.shape) < probability)


def correlated_same_magnitude(batch_size, feature_probability):
    n_inst, n_pairs = feature_probability.shape
    present = torch.rand(batch_size, n_inst, n_pairs) < feature_probability
    return (torch.rand(batch_size, n_inst, n_pairs) * present).repeat_interleave(2, dim=-1)


def correlated_shared_instances(batch_size, feature_probability):
    n_inst, n_pairs = feature_probability.shape
    present = (torch.rand(batch_size, 1, n_pairs) < feature_probability).repeat_interleave(2, dim=-1)
    return torch.rand(batch_size, n_inst, 2 * n_pairs) * present


def correlated_gaussian(batch_size, feature_probability):
    return correlated_float64_repeat(batch_size, feature_probability).sign() * torch.randn(
        batch_size, *feature_probability.shape[:1], 2 * feature_probability.shape[1]
    ).double()


def anticorrelated_one_draw(batch_size, feature_probability):
    # u < p: first feature; p <= u < 2p: second feature. One draw decides both.
    n_inst, n_pairs = feature_probability.shape
    u = torch.rand(batch_size, n_inst, n_pairs, dtype=torch.float64)
    p = feature_probability.double()
    choice = torch.stack([u < p, (u >= p) & (u < 2 * p)], dim=-1)
    return (torch.rand(batch_size, n_inst, n_pairs, 2, dtype=torch.float64) * choice).reshape(batch_size, n_inst, 2 * n_pairs)


def anticorrelated_halved(batch_size, feature_probability):
    n_inst, n_pairs = feature_probability.shape
    active = torch.rand(batch_size, n_inst, n_pairs) < feature_probability
    first = torch.rand(batch_size, n_inst, n_pairs) < 0.5
    choice = torch.stack([active & first, active & ~first], dim=-1)
    return (torch.rand(batch_size, n_inst, n_pairs, 2) * choice).flatten(-2)


def anticorrelated_blocked_layout(batch_size, feature_probability):
    values = anticorrelated_one_draw(batch_size, feature_probability)
    return torch.cat([values[..., 0::2], values[..., 1::2]], dim=-1)


def anticorrelated_independent(batch_size, feature_probability):
    return correlated_independent(batch_size, feature_probability)


def anticorrelated_shared_instances(batch_size, feature_probability):
    n_inst, n_pairs = feature_probability.shape
    u = torch.rand(batch_size, 1, n_pairs).expand(batch_size, n_inst, n_pairs)
    choice = torch.stack([u < feature_probability, (u >= feature_probability) & (u < 2 * feature_probability)], dim=-1)
    return (torch.rand(batch_size, n_inst, n_pairs, 2) * choice).flatten(-2)


def test_pair_checks_accept_reference_and_rewrites(checks):
    checks.passes(part1.test_generate_correlated_features, generate_correlated_features)
    checks.passes(part1.test_generate_correlated_features, correlated_float64_repeat)
    checks.passes(part1.test_generate_anticorrelated_features, generate_anticorrelated_features)
    checks.passes(part1.test_generate_anticorrelated_features, anticorrelated_one_draw)


@pytest.mark.parametrize(
    ("mutant", "message"),
    [
        (correlated_blocked_layout, r"pair k must be features 2k and 2k \+ 1"),
        (correlated_independent, "not always present together"),
        (correlated_same_magnitude, "same magnitude"),
        (correlated_shared_instances, "correlated across instances"),
        (correlated_gaussian, r"outside \[0, 1\]"),
    ],
)
def test_correlated_check_names_each_mistake(checks, mutant, message):
    checks.fails(part1.test_generate_correlated_features, mutant, message)


@pytest.mark.parametrize(
    ("mutant", "message"),
    [
        (anticorrelated_halved, "p/2"),
        (anticorrelated_blocked_layout, r"pair k must be features 2k and 2k \+ 1"),
        (anticorrelated_independent, "sometimes present together"),
        (anticorrelated_shared_instances, "correlated across instances"),
    ],
)
def test_anticorrelated_check_names_each_mistake(checks, mutant, message):
    checks.fails(part1.test_generate_anticorrelated_features, mutant, message)


# behaviour every check shares -------------------------------------------------------------

ALL_CHECKS = [
    (part1.test_forward, "forward"),
    (part1.test_generate_batch, "generate_batch"),
    (part1.test_calculate_loss, "calculate_loss"),
]
PAIR_CHECKS = [
    (part1.test_generate_correlated_features, "generate_correlated_features"),
    (part1.test_generate_anticorrelated_features, "generate_anticorrelated_features"),
]


@pytest.mark.parametrize(("check", "name"), ALL_CHECKS)
def test_stub_method_reports_not_implemented(checks, check, name):
    checks.fails(check, with_method(name, stub), rf"`{name}` is not implemented yet")


@pytest.mark.parametrize(("check", "name"), PAIR_CHECKS)
def test_stub_function_reports_not_implemented(checks, check, name):
    checks.fails(check, stub, rf"`{name}` is not implemented yet")


@pytest.mark.parametrize(("check", "name"), ALL_CHECKS)
@pytest.mark.parametrize("wrong_thing", [42, "ToyModel", None])
def test_wrong_kind_of_object_is_named(checks, check, name, wrong_thing):
    checks.fails(check, wrong_thing, rf"Pass (the class that has )?your `{name}`")


def test_a_crash_is_reported_with_the_learners_line(checks):
    def forward_with_typo(self, features):
        return self.weights @ features  # no attribute `weights`

    message = checks.fails(part1.test_forward, with_method("forward", forward_with_typo), "raised AttributeError")
    assert "forward_with_typo" in message


@pytest.mark.parametrize(("check", "learner"), [(c, ToyModel) for c, _ in ALL_CHECKS]
                         + [(part1.test_generate_correlated_features, generate_correlated_features)])
def test_checks_leave_the_learners_random_state_alone(checks, check, learner):
    random.seed(123), np.random.seed(123), torch.manual_seed(123)
    expected = (random.random(), np.random.rand(), torch.rand(3))
    random.seed(123), np.random.seed(123), torch.manual_seed(123)
    checks.passes(check, learner)
    assert (random.random(), np.random.rand()) == expected[:2]
    assert torch.equal(torch.rand(3), expected[2])


@pytest.mark.parametrize(("mutant", "message"), LOSS_MUTANTS[:6])
def test_failure_messages_do_not_reveal_reference_values(checks, mutant, message):
    text = checks.fails(part1.test_calculate_loss, with_method("calculate_loss", mutant), message)
    assert not re.search(r"\d\.\d{3}", text), text
