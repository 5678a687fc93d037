"""Mutation suite for Part 1's learner-facing checks (tests/part1_toy_models.py).

Each check must pass the reference, pass a correct version written differently, and fail
each plausible mistake with a message that names it.
"""

import functools
import random
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import tests.part1_toy_models as part1
from part_utils.reference.part1_toy_models import (
    ToyModel,
    generate_anticorrelated_features,
    generate_correlated_features,
)
from tests.checking import KINK_MARGIN, inputs_clear_of_kinks
from tests.suite.conftest import stub


def with_method(name: str, function: object) -> type[ToyModel]:
    """A ToyModel subclass whose `name` is the given (possibly wrong) implementation."""
    return type("LearnerToyModel", (ToyModel,), {name: function})


def preceded_by_draws(function, draws: int):
    """The same function, after `draws` extra random numbers: a correct sampler that draws in another order."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        torch.rand(draws)
        return function(*args, **kwargs)

    return wrapper


def failing_draw_counts(check, make_learner, counts=range(0, 40, 3)) -> list[int]:
    """The numbers of extra draws for which the check rejects a correct learner."""
    failing = []
    for count in counts:
        try:
            check(make_learner(count))
        except part1.CheckFailure:
            failing.append(count)
    return failing


# forward ----------------------------------------------------------------------------------


def forward_matmul_float64(self, features):
    W = self.W.double()
    hidden = (W[None] @ features.double()[..., None]).squeeze(-1)  # [batch, inst, d_hidden]
    out = (W.transpose(1, 2)[None] @ hidden[..., None]).squeeze(-1)
    return torch.clamp(out + self.b_final.double(), min=0)


def forward_broadcasting(self, features):
    hidden = (self.W[None] * features[:, :, None, :]).sum(-1)  # [batch, inst, d_hidden]
    out = (self.W[None] * hidden[..., None]).sum(-2)  # [batch, inst, feats]
    return torch.where(out + self.b_final > 0, out + self.b_final, 0.0)


def forward_loop_in_place_on_temporaries(self, features):
    outputs = []
    for inst in range(self.W.shape[0]):
        W = self.W[inst]  # [d_hidden, feats]
        out = features[:, inst] @ W.T @ W
        out += self.b_final[inst]  # in place on a temporary of our own
        outputs.append(F.relu(out, inplace=True))
    return torch.stack(outputs, dim=1)


def forward_einops(self, features):
    from einops import einsum

    hidden = einsum(features, self.W, "b i f, i h f -> b i h")
    return F.relu(einsum(hidden, self.W, "b i h, i h f -> b i f") + self.b_final)


def forward_bmm_per_instance(self, features):
    by_instance = features.transpose(0, 1)  # [inst, batch, feats]
    hidden = torch.bmm(by_instance, self.W.transpose(1, 2))  # [inst, batch, d_hidden]
    return F.relu(torch.bmm(hidden, self.W) + self.b_final[:, None, :]).transpose(0, 1)


def forward_leaky_relu(self, features):
    hidden = torch.einsum("ihf,bif->bih", self.W, features)
    return F.leaky_relu(torch.einsum("ihf,bih->bif", self.W, hidden) + self.b_final)


def forward_relu_before_and_after_bias(self, features):
    hidden = torch.einsum("ihf,bif->bih", self.W, features)
    return F.relu(F.relu(torch.einsum("ihf,bih->bif", self.W, hidden)) + self.b_final)


def forward_rebuilt_output(self, features):
    return ToyModel.forward(self, features).detach().requires_grad_()  # "it needs requires_grad for training"


def forward_through_numpy(self, features):
    W, x = self.W.detach().cpu().numpy(), features.cpu().numpy()
    hidden = np.einsum("ihf,bif->bih", W, x)
    out = np.maximum(np.einsum("ihf,bih->bif", W, hidden) + self.b_final.detach().cpu().numpy(), 0)
    return torch.from_numpy(out).to(features.device)


def forward_no_relu(self, features):
    hidden = torch.einsum("ihf,bif->bih", self.W, features)
    return torch.einsum("ihf,bih->bif", self.W, hidden) + self.b_final


def forward_no_bias(self, features):
    hidden = torch.einsum("ihf,bif->bih", self.W, features)
    return F.relu(torch.einsum("ihf,bih->bif", self.W, hidden))


def forward_bias_after_relu(self, features):
    hidden = torch.einsum("ihf,bif->bih", self.W, features)
    return F.relu(torch.einsum("ihf,bih->bif", self.W, hidden)) + self.b_final


def forward_bias_subtracted(self, features):
    hidden = torch.einsum("ihf,bif->bih", self.W, features)
    return F.relu(torch.einsum("ihf,bih->bif", self.W, hidden) - self.b_final)


def forward_relu_on_hidden(self, features):
    hidden = F.relu(torch.einsum("ihf,bif->bih", self.W, features))
    return F.relu(torch.einsum("ihf,bih->bif", self.W, hidden) + self.b_final)


def forward_clamped_at_one(self, features):
    hidden = torch.einsum("ihf,bif->bih", self.W, features)
    return torch.clamp(torch.einsum("ihf,bih->bif", self.W, hidden) + self.b_final, 0, 1)


def forward_first_instance_weights(self, features):
    W = self.W[0]
    hidden = torch.einsum("hf,bif->bih", W, features)
    return F.relu(torch.einsum("hf,bih->bif", W, hidden) + self.b_final)


def forward_first_instance_weights_and_bias(self, features):
    W = self.W[0]
    hidden = torch.einsum("hf,bif->bih", W, features)
    return F.relu(torch.einsum("hf,bih->bif", W, hidden) + self.b_final[0])


def forward_sums_instances(self, features):
    hidden = torch.einsum("ihf,bjf->bih", self.W, features)
    return F.relu(torch.einsum("ihf,bih->bif", self.W, hidden) + self.b_final)


def forward_transposed_contraction(self, features):
    # Contracts W's rows instead of its columns on the way back: mixes features up.
    hidden = torch.einsum("ihf,bif->bih", self.W, features)
    out = torch.einsum("ihf,bih->bif", self.W.flip(-1), hidden)
    return F.relu(out + self.b_final)


def forward_wrong_shape(self, features):
    return forward_matmul_float64(self, features).transpose(1, 2)


def forward_under_no_grad(self, features):
    with torch.no_grad():
        return ToyModel.forward(self, features)


def forward_detached_encoder(self, features):
    hidden = torch.einsum("ihf,bif->bih", self.W.detach(), features)
    return F.relu(torch.einsum("ihf,bih->bif", self.W, hidden) + self.b_final)


def forward_detached_bias(self, features):
    hidden = torch.einsum("ihf,bif->bih", self.W, features)
    return F.relu(torch.einsum("ihf,bih->bif", self.W, hidden) + self.b_final.data)


def forward_scales_features_in_place(self, features):
    features *= self.importance  # changes the caller's batch
    return ToyModel.forward(self, features / self.importance)


def forward_normalises_W_in_place(self, features):
    out = ToyModel.forward(self, features)
    self.W.data /= self.W.data.norm(dim=1, keepdim=True)
    return out


def forward_leaves_grad_off(self, features):
    torch.set_grad_enabled(False)
    return ToyModel.forward(self, features)


def forward_gram_matrix(self, features):
    gram = self.W.transpose(1, 2) @ self.W  # [inst, feats, feats]: WᵀW, computed on every call
    return F.relu(torch.einsum("ifg,big->bif", gram, features) + self.b_final)


def forward_squeezes_length_one_axes(self, features):
    hidden = (self.W[None] @ features[..., None]).squeeze()  # drops d_hidden too when it is 1
    return F.relu((self.W.transpose(1, 2)[None] @ hidden[..., None]).squeeze() + self.b_final)


def forward_squeezes_W(self, features):
    W = self.W.squeeze()  # "tidy": [inst, feats] when d_hidden is 1
    hidden = torch.einsum("ihf,bif->bih", W, features)
    return F.relu(torch.einsum("ihf,bih->bif", W, hidden) + self.b_final)


def forward_caches_gram_matrix(self, features):
    if getattr(self, "gram", None) is None:  # "WᵀW only needs computing once"
        self.gram = torch.einsum("ihf,ihg->ifg", self.W, self.W)
    return F.relu(torch.einsum("ifg,big->bif", self.gram, features) + self.b_final)


def test_forward_accepts_reference_and_rewrites(checks):
    checks.passes(part1.test_forward, ToyModel)
    for rewrite in (
        forward_matmul_float64,
        forward_broadcasting,
        forward_loop_in_place_on_temporaries,
        forward_einops,
        forward_bmm_per_instance,
        forward_gram_matrix,
    ):
        checks.passes(part1.test_forward, with_method("forward", rewrite))
    checks.passes(part1.test_forward, forward_matmul_float64)  # the bare function works too


@pytest.mark.parametrize(
    ("mutant", "message"),
    [
        (forward_no_relu, "apply the ReLU"),
        (forward_no_bias, "b_final is missing"),
        (forward_bias_after_relu, "added after the ReLU"),
        (forward_bias_subtracted, "b_final is subtracted"),
        (forward_relu_on_hidden, "ReLU to the hidden layer"),
        (forward_clamped_at_one, "clamped at 1"),
        (forward_first_instance_weights, "instance 0's weights"),
        (forward_first_instance_weights_and_bias, "instance 0's weights and bias"),
        (forward_sums_instances, "sums the features of every instance"),
        (forward_transposed_contraction, "which axes"),
        (forward_wrong_shape, r"shape \(32, 7, 3\).*\[batch, inst, feats\]"),
        (forward_under_no_grad, "output of `forward` carries no gradient"),
        (forward_detached_encoder, "gradient of `W` is not"),
        (forward_detached_bias, "No gradient reaches `b_final`"),
        (forward_scales_features_in_place, "changed `features` in place"),
        (forward_normalises_W_in_place, r"changed `self\.W` in place"),
        (forward_leaves_grad_off, "switched gradient tracking off"),
        (forward_leaky_relu, "right wherever the output ReLU is on, but not where its input is negative"),
        (forward_relu_before_and_after_bias, "A ReLU comes before b_final as well"),
        (forward_rebuilt_output, "No gradient reaches any parameter"),
        (forward_through_numpy, "carries no gradient.*NumPy"),
        (forward_squeezes_length_one_axes, r"not on one with d_hidden = 1, as in the phase diagram.*\.squeeze\(\)"),
        (forward_squeezes_W, r"d_hidden = 1.*drops an axis of length 1.*raised RuntimeError"),
        (forward_caches_gram_matrix, "not after the weights change.*reuses something computed in an earlier call"),
    ],
)
def test_forward_names_each_mistake(checks, mutant, message):
    checks.fails(part1.test_forward, with_method("forward", mutant), message)


def test_forward_inputs_stay_clear_of_the_relu_kink():
    # float32 and float64 code must agree on every ReLU's on/off pattern for the gradients to agree.
    torch.manual_seed(0)
    W = torch.randn(3, 4, 7, dtype=torch.float64)
    relu_inputs = lambda x: [torch.einsum("ihf,bih->bif", W, torch.einsum("ihf,bif->bih", W, x.double()))]  # noqa: E731
    x = inputs_clear_of_kinks(lambda: part1.sparse_features((32, 3, 7)), relu_inputs)
    assert relu_inputs(x)[0].abs().min() > KINK_MARGIN


# generate_batch ---------------------------------------------------------------------------


def _shape(self, batch_size):
    return (batch_size, *self.feature_probability.shape)


def generate_two_draws_float64(self, batch_size):
    shape = _shape(self, batch_size)
    present = torch.rand(shape, device=self.W.device, dtype=torch.float64) < self.feature_probability
    return torch.rand(shape, device=self.W.device, dtype=torch.float64) * present


def generate_magnitudes_first_bernoulli(self, batch_size):
    magnitudes = torch.rand(_shape(self, batch_size), device=self.W.device)
    present = torch.bernoulli(self.feature_probability.expand(batch_size, -1, -1))
    return magnitudes * present


def generate_loop_over_instances(self, batch_size):
    columns = []
    for inst in range(self.feature_probability.shape[0]):
        probability = self.feature_probability[inst]
        present = torch.rand(batch_size, len(probability), device=self.W.device) <= probability
        columns.append(torch.where(present, torch.rand(batch_size, len(probability), device=self.W.device), 0.0))
    return torch.stack(columns, dim=1)


def generate_upper_tail_one_draw(self, batch_size):
    # Present when u > 1 - p; then (u - (1 - p)) / p is uniform on [0, 1).
    u = torch.rand(_shape(self, batch_size), device=self.W.device)
    threshold = 1 - self.feature_probability
    values = (u - threshold) / self.feature_probability
    values[u <= threshold] = 0.0  # in place on our own temporary
    return values


def generate_reversed_probability(self, batch_size):
    present = torch.rand(_shape(self, batch_size), device=self.W.device) > self.feature_probability
    return torch.rand(_shape(self, batch_size), device=self.W.device) * present


def generate_first_instance_probability(self, batch_size):
    present = torch.rand(_shape(self, batch_size), device=self.W.device) < self.feature_probability[:1]
    return torch.rand(_shape(self, batch_size), device=self.W.device) * present


def generate_first_feature_probability(self, batch_size):
    present = torch.rand(_shape(self, batch_size), device=self.W.device) < self.feature_probability[:, :1]
    return torch.rand(_shape(self, batch_size), device=self.W.device) * present


def generate_normal_presence(self, batch_size):
    present = torch.randn(_shape(self, batch_size), device=self.W.device) < self.feature_probability
    return torch.rand(_shape(self, batch_size), device=self.W.device) * present


def generate_importance_as_probability(self, batch_size):
    present = torch.rand(_shape(self, batch_size), device=self.W.device) < self.importance
    return torch.rand(_shape(self, batch_size), device=self.W.device) * present


def generate_never_absent(self, batch_size):
    present = torch.rand(_shape(self, batch_size), device=self.W.device) < self.feature_probability
    return torch.where(present, torch.rand(_shape(self, batch_size), device=self.W.device), 1e-3)


def generate_gaussian_magnitudes(self, batch_size):
    present = torch.rand(_shape(self, batch_size), device=self.W.device) < self.feature_probability
    return torch.randn(_shape(self, batch_size), device=self.W.device) * present


def generate_abs_gaussian_magnitudes(self, batch_size):
    present = torch.rand(_shape(self, batch_size), device=self.W.device) < self.feature_probability
    return torch.randn(_shape(self, batch_size), device=self.W.device).abs() * present


def generate_unit_magnitudes(self, batch_size):
    return (torch.rand(_shape(self, batch_size), device=self.W.device) < self.feature_probability).float()


def generate_presence_mask(self, batch_size):
    return torch.rand(_shape(self, batch_size), device=self.W.device) < self.feature_probability


def generate_rounded_to_int(self, batch_size):
    return generate_two_draws_float64(self, batch_size).long()


def generate_reused_draw_unscaled(self, batch_size):
    draws = torch.rand(_shape(self, batch_size), device=self.W.device)
    return draws * (draws < self.feature_probability)


def generate_scaled_by_probability(self, batch_size):
    present = torch.rand(_shape(self, batch_size), device=self.W.device) < self.feature_probability
    return torch.rand(_shape(self, batch_size), device=self.W.device) * self.feature_probability * present


def generate_divided_separate_draw(self, batch_size):
    present = torch.rand(_shape(self, batch_size), device=self.W.device) < self.feature_probability
    return torch.rand(_shape(self, batch_size), device=self.W.device) / self.feature_probability * present


def generate_scaled_by_importance(self, batch_size):
    return generate_two_draws_float64(self, batch_size) * self.importance


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


def generate_one_draw_for_the_batch(self, batch_size):
    draws = torch.rand(1, *self.feature_probability.shape, device=self.W.device)
    return torch.where(draws < self.feature_probability, draws / self.feature_probability, 0.0).expand(
        batch_size, -1, -1
    )


def generate_presence_once_for_the_batch(self, batch_size):
    present = torch.rand(1, *self.feature_probability.shape, device=self.W.device) < self.feature_probability
    return torch.rand(_shape(self, batch_size), device=self.W.device) * present


def generate_reseeded(self, batch_size):
    torch.manual_seed(0)  # "for reproducibility": every call returns the same batch
    return ToyModel.generate_batch(self, batch_size)


def generate_shared_magnitudes(self, batch_size):
    n_inst, n_feats = self.feature_probability.shape
    present = torch.rand(batch_size, n_inst, n_feats, device=self.W.device) < self.feature_probability
    return torch.rand(batch_size, 1, n_feats, device=self.W.device) * present


def generate_magnitudes_shared_across_features(self, batch_size):
    present = torch.rand(_shape(self, batch_size), device=self.W.device) < self.feature_probability
    return torch.rand(batch_size, self.feature_probability.shape[0], 1, device=self.W.device) * present


def generate_magnitudes_once_for_the_batch(self, batch_size):
    present = torch.rand(_shape(self, batch_size), device=self.W.device) < self.feature_probability
    return torch.rand(*self.feature_probability.shape, device=self.W.device) * present


def generate_clamps_probability_in_place(self, batch_size):
    probability = self.feature_probability
    probability.clamp_(max=0.9)  # changes the model's probabilities
    return ToyModel.generate_batch(self, batch_size)


def generate_on_another_device(self, batch_size):
    return ToyModel.generate_batch(self, batch_size).to("meta")


def generate_feats_first(self, batch_size):
    return generate_two_draws_float64(self, batch_size).transpose(1, 2)


def generate_seeded_presence(self, batch_size):
    generator = torch.Generator(device=self.W.device).manual_seed(0)  # "reproducible" presence
    present = torch.rand(_shape(self, batch_size), generator=generator, device=self.W.device) < self.feature_probability
    return torch.rand(_shape(self, batch_size), device=self.W.device) * present


def generate_reseeds_halfway(self, batch_size):
    present = torch.rand(_shape(self, batch_size), device=self.W.device) < self.feature_probability
    torch.manual_seed(0)  # "reproducible magnitudes"
    return torch.rand(_shape(self, batch_size), device=self.W.device) * present


def generate_magnitudes_tiled_over_instances(self, batch_size):
    n_inst, n_feats = self.feature_probability.shape
    present = torch.rand(_shape(self, batch_size), device=self.W.device) < self.feature_probability
    return torch.rand(batch_size, 2, n_feats, device=self.W.device).repeat(1, n_inst // 2, 1) * present


def generate_magnitudes_from_half_a_batch(self, batch_size):
    present = torch.rand(_shape(self, batch_size), device=self.W.device) < self.feature_probability
    half = torch.rand(batch_size // 2, *self.feature_probability.shape, device=self.W.device)
    return torch.cat([half, half]) * present


def generate_uniform_masked_fill(self, batch_size):
    values = torch.empty(_shape(self, batch_size), dtype=torch.float64, device=self.W.device).uniform_(0, 1)
    absent = torch.bernoulli(1 - self.feature_probability.double().expand_as(values)).bool()
    return values.masked_fill(absent, 0.0)


GENERATE_REWRITES = [
    generate_two_draws_float64,
    generate_magnitudes_first_bernoulli,
    generate_loop_over_instances,
    generate_upper_tail_one_draw,
    generate_uniform_masked_fill,
]


def test_generate_batch_accepts_reference_and_rewrites(checks):
    checks.passes(part1.test_generate_batch, ToyModel)
    for rewrite in GENERATE_REWRITES:
        checks.passes(part1.test_generate_batch, with_method("generate_batch", rewrite))


def test_generate_batch_verdict_does_not_depend_on_the_draw_order():
    make = lambda count: with_method("generate_batch", preceded_by_draws(ToyModel.generate_batch, count))  # noqa: E731
    assert failing_draw_counts(part1.test_generate_batch, make) == []


@pytest.mark.parametrize(
    ("mutant", "message"),
    [
        (generate_reversed_probability, "probability 1 - p"),
        (generate_first_instance_probability, "same feature probabilities"),
        (generate_first_feature_probability, "Every feature uses the same probability"),
        (generate_normal_presence, "torch.randn < p"),
        (generate_importance_as_probability, "importance as their probability"),
        (generate_never_absent, "exactly 0"),
        (generate_gaussian_magnitudes, "negative values.*not torch.randn"),
        (generate_abs_gaussian_magnitudes, "above 1.*torch.randn"),
        (generate_unit_magnitudes, "magnitude 1"),
        (generate_presence_mask, "boolean tensor"),
        (generate_rounded_to_int, "torch.int64 tensor"),
        (generate_reused_draw_unscaled, r"stay below the probability of the presence draw.*rescale it"),
        (
            generate_scaled_by_probability,
            r"stay below the probability of the presence draw.*multiply the magnitudes by a probability",
        ),
        (generate_divided_separate_draw, "the draw that decided presence"),
        (generate_scaled_by_importance, "scaled by the importance"),
        (generate_shared_across_instances, "correlated across instances"),
        (generate_shared_across_features, "correlated across features"),
        (generate_one_draw_for_the_batch, "Every example in the batch .* is the same"),
        (generate_presence_once_for_the_batch, "same features present"),
        (generate_reseeded, "same sample on two calls"),
        (generate_shared_magnitudes, "share one magnitude across instances"),
        (generate_magnitudes_shared_across_features, "share one magnitude across features"),
        (generate_magnitudes_once_for_the_batch, "share one magnitude across examples of the batch"),
        (generate_clamps_probability_in_place, r"changed `self\.feature_probability` in place"),
        (generate_on_another_device, "on meta; make it on cpu"),
        (generate_feats_first, r"\[batch, inst, feats\]"),
        (generate_seeded_presence, "same features present on two calls.*seeded torch.Generator"),
        (generate_reseeds_halfway, "same magnitudes on two calls.*torch.manual_seed"),
        (generate_magnitudes_tiled_over_instances, "share one magnitude across instances"),
        (generate_magnitudes_from_half_a_batch, "share one magnitude across examples of the batch"),
    ],
)
def test_generate_batch_names_each_mistake(checks, mutant, message):
    checks.fails(part1.test_generate_batch, with_method("generate_batch", mutant), message)


# calculate_loss ---------------------------------------------------------------------------


def loss_explicit_float64(self, out, batch):
    squared = (batch.double() - out.double()) ** 2
    per_instance = (self.importance.double() * squared).sum(dim=(0, 2)) / (batch.shape[0] * batch.shape[2])
    return per_instance.sum()


def loss_mse_per_element_einsum(self, out, batch):
    squared = F.mse_loss(out, batch, reduction="none")
    return torch.einsum("bif,if->", squared, self.importance) / (batch.shape[0] * batch.shape[2])


def loss_in_place_on_temporaries(self, output, target):  # other argument names: passed by position
    error = target - output
    error.pow_(2)
    error *= self.importance
    return error.mean(0).mean(-1).sum()


def _weighted(self, out, batch):
    return self.importance * (batch - out) ** 2


def _loss_subtracting_in_place(self, out, batch):
    out -= batch  # changes the model's output the caller holds
    return (self.importance * out**2).mean((0, 2)).sum()


LOSS_MUTANTS = [
    (lambda self, out, batch: ((batch - out) ** 2).mean((0, 2)).sum(), "Importance is missing"),
    (lambda self, out, batch: _weighted(self, out, batch).mean(), "averaged over instances"),
    (lambda self, out, batch: _weighted(self, out, batch).sum(2).mean(0).sum(), "summed over features"),
    (lambda self, out, batch: _weighted(self, out, batch).sum(0).mean(-1).sum(), "summed over the batch"),
    (lambda self, out, batch: (self.importance * (batch - out)).pow(2).mean((0, 2)).sum(), "before squaring"),
    (lambda self, out, batch: (self.importance * (batch - out).abs()).mean((0, 2)).sum(), "not squared"),
    (lambda self, out, batch: _weighted(self, out, batch).mean((0, 2)), "one loss per instance"),
    (lambda self, out, batch: _weighted(self, out, batch).mean((0, 2)).sum().detach(), "cut off from the graph"),
    (lambda self, out, batch: _weighted(self, out, batch).mean((0, 2)).sum().item(), "Python float"),
    (lambda self, out, batch: F.mse_loss(out, batch), "Importance is missing and the loss is averaged over instances"),
    (lambda self, out, batch: _weighted(self, out, batch).sum(), "summed over the batch and summed over features"),
    (lambda self, out, batch: (self.importance**2 * (batch - out) ** 2).mean((0, 2)).sum(), "applied squared"),
    (lambda self, out, batch: (self.importance * (batch - out)).mean((0, 2)).pow(2).sum(), "averaged error is squared"),
    (lambda self, out, batch: _weighted(self, out, batch).mean(-1), r"shape \(16, 5\), keeping the batch, inst axes"),
    (
        lambda self, out, batch: _weighted(self, out.detach(), batch).mean((0, 2)).sum() + 0 * out.sum(),
        "gradient with respect to `out` is not",
    ),
    (_loss_subtracting_in_place, "changed `out` in place"),
    (lambda self, out, batch: 0.5 * _weighted(self, out, batch).mean((0, 2)).sum(), "half of what it should be"),
    (
        lambda self, out, batch: _weighted(self, out, batch).mean((0, 2)).sum() / batch.shape[-1],
        "times a constant factor",
    ),
    (lambda self, out, batch: _weighted(self, out, batch).mean((0, 2)).sqrt().sum(), "square root"),
    (
        lambda self, out, batch: (_weighted(self, out, batch).sum(2) / self.importance.sum(-1)).mean(0).sum(),
        "divided by the sum of the importances",
    ),
    (
        lambda self, out, batch: (_weighted(self, out, batch).sum(2).mean(0) / self.importance.sum()).sum(),
        "divided by the sum of the importances",
    ),
]


def test_calculate_loss_accepts_reference_and_rewrites(checks):
    checks.passes(part1.test_calculate_loss, ToyModel)
    sum_instances_then_mean = lambda self, out, batch: _weighted(self, out, batch).sum(1).mean()  # noqa: E731
    relu_on_the_output = lambda self, out, batch: (self.importance * (batch - F.relu(out)) ** 2).mean((0, 2)).sum()  # noqa: E731
    mean_times_instances = lambda self, out, batch: _weighted(self, out, batch).mean() * self.cfg.n_inst  # noqa: E731
    rewrites = (
        mean_times_instances,
        loss_explicit_float64,
        loss_mse_per_element_einsum,
        loss_in_place_on_temporaries,
        sum_instances_then_mean,
        relu_on_the_output,
    )
    for rewrite in rewrites:
        checks.passes(part1.test_calculate_loss, with_method("calculate_loss", rewrite))


@pytest.mark.parametrize(("mutant", "message"), LOSS_MUTANTS)
def test_calculate_loss_names_each_mistake(checks, mutant, message):
    checks.fails(part1.test_calculate_loss, with_method("calculate_loss", mutant), message)


# correlated and anticorrelated pairs ------------------------------------------------------


def _pairs_shape(batch_size, feature_probability):
    return (batch_size, *feature_probability.shape)


def correlated_float64_repeat(batch_size, feature_probability):
    n_inst, n_pairs = feature_probability.shape
    present = torch.rand(batch_size, n_inst, n_pairs, dtype=torch.float64, device=feature_probability.device)
    present = (present < feature_probability).repeat_interleave(2, dim=-1)
    return torch.rand(batch_size, n_inst, 2 * n_pairs, dtype=torch.float64, device=feature_probability.device) * present


def correlated_loop_over_pairs(batch_size, feature_probability):
    n_inst, n_pairs = feature_probability.shape
    values = torch.zeros(batch_size, n_inst, 2 * n_pairs, device=feature_probability.device)
    for pair in range(n_pairs):
        magnitudes = torch.rand(batch_size, n_inst, 2, device=feature_probability.device)  # magnitudes first
        present = torch.bernoulli(feature_probability[:, pair].expand(batch_size, n_inst))
        values[..., 2 * pair : 2 * pair + 2] = magnitudes * present[..., None]
    return values


def correlated_einops_repeat(batch_size, feature_probability):
    from einops import repeat

    n_inst, n_pairs = feature_probability.shape
    magnitudes = torch.rand(batch_size, n_inst, 2 * n_pairs, device=feature_probability.device)
    pair_present = torch.rand(batch_size, n_inst, n_pairs, device=feature_probability.device) <= feature_probability
    return torch.where(repeat(pair_present, "b i p -> b i (p two)", two=2), magnitudes, 0.0)


def correlated_magnitudes_once_for_the_batch(batch_size, feature_probability):
    n_inst, n_pairs = feature_probability.shape
    present = (torch.rand(batch_size, n_inst, n_pairs) < feature_probability).repeat_interleave(2, dim=-1)
    return torch.rand(2 * n_pairs) * present


def correlated_as_int(batch_size, feature_probability):
    return (generate_correlated_features(batch_size, feature_probability) > 0).int()


def correlated_clamps_probability_in_place(batch_size, p):
    p.clamp_(max=0.4)
    return generate_correlated_features(batch_size, p)


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


def correlated_complementary_magnitudes(batch_size, feature_probability):
    n_inst, n_pairs = feature_probability.shape
    present = torch.rand(batch_size, n_inst, n_pairs) < feature_probability
    first = torch.rand(batch_size, n_inst, n_pairs)
    return (torch.stack([first, 1 - first], dim=-1) * present[..., None]).flatten(-2)


def correlated_shared_instances(batch_size, feature_probability):
    n_inst, n_pairs = feature_probability.shape
    present = (torch.rand(batch_size, 1, n_pairs) < feature_probability).repeat_interleave(2, dim=-1)
    return torch.rand(batch_size, n_inst, 2 * n_pairs) * present


def correlated_shared_pairs(batch_size, feature_probability):
    n_inst, n_pairs = feature_probability.shape
    present = (torch.rand(batch_size, n_inst, 1) < feature_probability).repeat_interleave(2, dim=-1)
    return torch.rand(batch_size, n_inst, 2 * n_pairs) * present


def correlated_reversed(batch_size, feature_probability):
    n_inst, n_pairs = feature_probability.shape
    present = (torch.rand(batch_size, n_inst, n_pairs) > feature_probability).repeat_interleave(2, dim=-1)
    return torch.rand(batch_size, n_inst, 2 * n_pairs) * present


def correlated_both_draws_below_p(batch_size, feature_probability):
    n_inst, n_pairs = feature_probability.shape
    shape = (batch_size, n_inst, n_pairs)
    present = ((torch.rand(shape) < feature_probability) & (torch.rand(shape) < feature_probability)).repeat_interleave(
        2, dim=-1
    )
    return torch.rand(batch_size, n_inst, 2 * n_pairs) * present


def correlated_magnitudes_shared_across_instances(batch_size, feature_probability):
    n_inst, n_pairs = feature_probability.shape
    present = (torch.rand(batch_size, n_inst, n_pairs) < feature_probability).repeat_interleave(2, dim=-1)
    return torch.rand(batch_size, 1, 2 * n_pairs) * present


def correlated_gaussian(batch_size, feature_probability):
    return (
        correlated_float64_repeat(batch_size, feature_probability).sign()
        * torch.randn(batch_size, *feature_probability.shape[:1], 2 * feature_probability.shape[1]).double()
    )


def correlated_presence_mask(batch_size, feature_probability):
    return correlated_float64_repeat(batch_size, feature_probability) > 0


def correlated_on_another_device(batch_size, feature_probability):
    return generate_correlated_features(batch_size, feature_probability).to("meta")


def anticorrelated_one_draw(batch_size, feature_probability):
    # u < p: first feature; p <= u < 2p: second feature. One draw decides both.
    n_inst, n_pairs = feature_probability.shape
    u = torch.rand(batch_size, n_inst, n_pairs, dtype=torch.float64)
    p = feature_probability.double()
    choice = torch.stack([u < p, (u >= p) & (u < 2 * p)], dim=-1)
    return (torch.rand(batch_size, n_inst, n_pairs, 2, dtype=torch.float64) * choice).reshape(
        batch_size, n_inst, 2 * n_pairs
    )


def anticorrelated_both_tails(batch_size, feature_probability):
    # First when u < p, second when u > 1 - p: disjoint because p <= 1/2.
    u = torch.rand(_pairs_shape(batch_size, feature_probability))
    choice = torch.stack([u < feature_probability, u > 1 - feature_probability], dim=-1)
    return (torch.rand(*u.shape, 2) * choice).flatten(-2)


def anticorrelated_conditional_second(batch_size, feature_probability):
    # First with p; the second, only when the first is absent, with p / (1 - p).
    shape = _pairs_shape(batch_size, feature_probability)
    first = torch.rand(shape) < feature_probability
    second = ~first & (torch.rand(shape) < feature_probability / (1 - feature_probability))
    return (torch.rand(*shape, 2) * torch.stack([first, second], dim=-1)).flatten(-2)


def anticorrelated_multinomial(batch_size, feature_probability):
    # One categorical draw per pair: first, second or neither.
    p = feature_probability.reshape(-1)
    choice = torch.multinomial(torch.stack([p, p, 1 - 2 * p], dim=-1), batch_size, replacement=True)
    choice = choice.T.reshape(batch_size, *feature_probability.shape)
    present = torch.stack([choice == 0, choice == 1], dim=-1).flatten(-2)
    return torch.rand(present.shape) * present


def anticorrelated_one_draw_rescaled(batch_size, feature_probability):
    # u < p: the first, with magnitude u / p; p <= u < 2p: the second, with (u - p) / p.
    u = torch.rand(_pairs_shape(batch_size, feature_probability))
    p = feature_probability
    first = torch.where(u < p, u / p, 0.0)
    second = torch.where((u >= p) & (u < 2 * p), (u - p) / p, 0.0)
    return torch.stack([first, second], dim=-1).flatten(-2)


def anticorrelated_always_first(batch_size, feature_probability):
    active = torch.rand(_pairs_shape(batch_size, feature_probability)) < feature_probability
    return (torch.rand(*active.shape, 2) * torch.stack([active, torch.zeros_like(active)], dim=-1)).flatten(-2)


def anticorrelated_one_draw_unscaled(batch_size, feature_probability):
    u = torch.rand(_pairs_shape(batch_size, feature_probability))
    p = feature_probability
    return torch.stack([torch.where(u < p, u, 0.0), torch.where((u >= p) & (u < 2 * p), u, 0.0)], dim=-1).flatten(-2)


def anticorrelated_halved(batch_size, feature_probability):
    n_inst, n_pairs = feature_probability.shape
    active = torch.rand(batch_size, n_inst, n_pairs) < feature_probability
    first = torch.rand(batch_size, n_inst, n_pairs) < 0.5
    choice = torch.stack([active & first, active & ~first], dim=-1)
    return (torch.rand(batch_size, n_inst, n_pairs, 2) * choice).flatten(-2)


def anticorrelated_second_unconditioned(batch_size, feature_probability):
    shape = _pairs_shape(batch_size, feature_probability)
    first = torch.rand(shape) < feature_probability
    second = ~first & (torch.rand(shape) < feature_probability)
    return (torch.rand(*shape, 2) * torch.stack([first, second], dim=-1)).flatten(-2)


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


def anticorrelated_choice_shared_across_pairs(batch_size, feature_probability):
    shape = _pairs_shape(batch_size, feature_probability)
    active = torch.rand(shape) < 2 * feature_probability
    first = (torch.rand(batch_size, shape[1], 1) < 0.5).expand(shape)  # one coin per instance, not per pair
    return (torch.rand(*shape, 2) * torch.stack([active & first, active & ~first], dim=-1)).flatten(-2)


def anticorrelated_doubles_probability_in_place(batch_size, feature_probability):
    feature_probability *= 2  # the caller's tensor is now twice as large
    return generate_anticorrelated_features(batch_size, feature_probability / 2)


def anticorrelated_gaussian(batch_size, feature_probability):
    values = anticorrelated_one_draw(batch_size, feature_probability)
    return values.sign() * torch.randn(values.shape, dtype=torch.float64)


def correlated_magnitudes_tiled(batch_size, feature_probability):
    n_inst, n_pairs = feature_probability.shape
    present = (torch.rand(batch_size, n_inst, n_pairs) < feature_probability).repeat_interleave(2, dim=-1)
    return torch.rand(batch_size, n_inst, n_pairs).repeat(1, 1, 2) * present  # repeat, not repeat_interleave


def correlated_seeded_presence(batch_size, feature_probability):
    generator = torch.Generator().manual_seed(1234)
    pair_present = torch.rand(batch_size, *feature_probability.shape, generator=generator) < feature_probability
    return (torch.rand(batch_size, *feature_probability.shape, 2) * pair_present[..., None]).flatten(-2)


def correlated_expand_reshape(batch_size, feature_probability):
    n_inst, n_pairs = feature_probability.shape
    pair_present = torch.bernoulli(feature_probability.expand(batch_size, n_inst, n_pairs)).bool()
    mask = pair_present.unsqueeze(-1).expand(batch_size, n_inst, n_pairs, 2).reshape(batch_size, n_inst, 2 * n_pairs)
    return torch.where(mask, torch.rand(mask.shape), torch.zeros(mask.shape))


def anticorrelated_coin_once_for_the_batch(batch_size, feature_probability):
    shape = _pairs_shape(batch_size, feature_probability)
    active = torch.rand(shape) < 2 * feature_probability
    first = (torch.rand(1, *feature_probability.shape) < 0.5).expand(shape)  # one coin per pair, for every example
    return (torch.rand(*shape, 2) * torch.stack([active & first, active & ~first], dim=-1)).flatten(-2)


def anticorrelated_magnitudes_tiled(batch_size, feature_probability):
    values = generate_anticorrelated_features(batch_size, feature_probability)
    magnitudes = torch.rand(batch_size, *feature_probability.shape).repeat(1, 1, 2)  # repeat, not repeat_interleave
    return magnitudes * (values != 0)


def anticorrelated_reseeds_halfway(batch_size, feature_probability):
    shape = _pairs_shape(batch_size, feature_probability)
    active = torch.rand(shape) < 2 * feature_probability
    first = torch.rand(shape) < 0.5
    torch.manual_seed(0)  # "reproducible magnitudes"
    return (torch.rand(*shape, 2) * torch.stack([active & first, active & ~first], dim=-1)).flatten(-2)


def anticorrelated_one_magnitude_per_pair(batch_size, feature_probability):
    # Only one feature of a pair is ever present, so one magnitude per pair is enough.
    shape = _pairs_shape(batch_size, feature_probability)
    active = torch.rand(shape) < 2 * feature_probability
    first = torch.rand(shape) < 0.5
    choice = torch.stack([active & first, active & ~first], dim=-1)
    return (torch.rand(shape)[..., None] * choice).flatten(-2)


PAIR_REWRITES = {
    "generate_correlated_features": [
        generate_correlated_features,
        correlated_float64_repeat,
        correlated_loop_over_pairs,
        correlated_einops_repeat,
        correlated_expand_reshape,
    ],
    "generate_anticorrelated_features": [
        generate_anticorrelated_features,
        anticorrelated_one_draw,
        anticorrelated_both_tails,
        anticorrelated_conditional_second,
        anticorrelated_multinomial,
        anticorrelated_one_draw_rescaled,
        anticorrelated_one_magnitude_per_pair,
    ],
}
PAIR_CHECK = {
    "generate_correlated_features": part1.test_generate_correlated_features,
    "generate_anticorrelated_features": part1.test_generate_anticorrelated_features,
}


@pytest.mark.parametrize("name", PAIR_REWRITES)
def test_pair_checks_accept_reference_and_rewrites(checks, name):
    for rewrite in PAIR_REWRITES[name]:
        checks.passes(PAIR_CHECK[name], rewrite)


@pytest.mark.parametrize("name", PAIR_REWRITES)
def test_pair_verdicts_do_not_depend_on_the_draw_order(name):
    reference = PAIR_REWRITES[name][0]
    assert (
        failing_draw_counts(PAIR_CHECK[name], lambda count: preceded_by_draws(reference, count), counts=range(1, 40, 3))
        == []
    )


@pytest.mark.parametrize(
    ("mutant", "message"),
    [
        (correlated_blocked_layout, r"pair k must be features 2k and 2k \+ 1"),
        (correlated_independent, "not always present together"),
        (correlated_same_magnitude, "same magnitude"),
        (correlated_complementary_magnitudes, "depend on each other"),
        (correlated_shared_instances, "correlated across instances"),
        (correlated_shared_pairs, "correlated across pairs"),
        (correlated_reversed, "1 - p"),
        (correlated_both_draws_below_p, "p²"),
        (correlated_magnitudes_shared_across_instances, "share one magnitude across instances"),
        (correlated_gaussian, "negative values.*torch.randn"),
        (correlated_presence_mask, "boolean tensor"),
        (correlated_on_another_device, "on meta; make it on cpu"),
        (correlated_magnitudes_once_for_the_batch, "share one magnitude across examples of the batch"),
        (correlated_as_int, "torch.int32 tensor"),
        (correlated_clamps_probability_in_place, "changed `p` in place"),
        (correlated_magnitudes_tiled, "share one magnitude across pairs"),
        (correlated_seeded_presence, "same features present on two calls"),
    ],
)
def test_correlated_check_names_each_mistake(checks, mutant, message):
    checks.fails(part1.test_generate_correlated_features, mutant, message)


@pytest.mark.parametrize(
    ("mutant", "message"),
    [
        (anticorrelated_halved, "p/2"),
        (anticorrelated_second_unconditioned, r"p\(1 - p\)"),
        (anticorrelated_blocked_layout, r"pair k must be features 2k and 2k \+ 1"),
        (anticorrelated_independent, "sometimes present together"),
        (anticorrelated_shared_instances, "correlated across instances"),
        (anticorrelated_choice_shared_across_pairs, "correlated across pairs"),
        (anticorrelated_doubles_probability_in_place, "changed `feature_probability` in place"),
        (anticorrelated_gaussian, "negative values"),
        (anticorrelated_always_first, "second feature of each pair .* is never present"),
        (anticorrelated_one_draw_unscaled, "stay below the probability of the presence draw"),
        (anticorrelated_coin_once_for_the_batch, "decided once for the whole batch"),
        (anticorrelated_magnitudes_tiled, "share one magnitude across pairs"),
        (anticorrelated_reseeds_halfway, "same magnitudes on two calls"),
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


@pytest.mark.parametrize(("check", "name"), PAIR_CHECKS)
def test_a_class_instead_of_a_free_function_is_named(checks, check, name):
    checks.fails(check, ToyModel, rf"`{name}` is a function of its own, not a method")


@pytest.mark.parametrize(("check", "name"), ALL_CHECKS)
def test_a_class_without_the_method_is_told_it_was_never_attached(checks, check, name):
    learners_class = type("ToyModel", (nn.Module,), {})  # the exercise cell was not run
    checks.fails(check, learners_class, rf"`ToyModel` has no `{name}` of yours: the method was never attached")


def test_a_crash_is_reported_with_the_learners_line(checks):
    def forward_with_typo(self, features):
        return self.weights @ features  # no attribute `weights`

    message = checks.fails(part1.test_forward, with_method("forward", forward_with_typo), "raised AttributeError")
    assert "forward_with_typo" in message


@pytest.mark.parametrize(
    ("check", "learner"),
    [(c, ToyModel) for c, _ in ALL_CHECKS] + [(part1.test_generate_correlated_features, generate_correlated_features)],
)
def test_checks_leave_the_learners_random_state_alone(checks, check, learner):
    random.seed(123), np.random.seed(123), torch.manual_seed(123)
    expected = (random.random(), np.random.rand(), torch.rand(3))
    random.seed(123), np.random.seed(123), torch.manual_seed(123)
    checks.passes(check, learner)
    assert (random.random(), np.random.rand()) == expected[:2]
    assert torch.equal(torch.rand(3), expected[2])


def test_sampler_checks_restore_the_learners_thread_count(checks):
    threads = torch.get_num_threads()
    checks.passes(part1.test_generate_batch, ToyModel)
    assert torch.get_num_threads() == threads


@pytest.mark.parametrize(("mutant", "message"), LOSS_MUTANTS[:6])
def test_failure_messages_do_not_reveal_reference_values(checks, mutant, message):
    text = checks.fails(part1.test_calculate_loss, with_method("calculate_loss", mutant), message)
    assert not re.search(r"\d\.\d{3}", text), text
