"""Mutation suite for Part 2's learner-facing checks (tests/part2_privileged_basis.py)."""

import pytest
import torch
import torch.nn.functional as F

import tests.part2_privileged_basis as part2
from part_utils.reference.part1_toy_models import ToyModel
from part_utils.reference.part2_privileged_basis import NeuronComputationModel, NeuronModel
from tests.suite.conftest import stub
from tests.suite.test_part1_checks import failing_draw_counts, preceded_by_draws


def with_method(base: type, name: str, function: object) -> type:
    return type("LearnerModel", (base,), {name: function})


# NeuronModel.forward ----------------------------------------------------------------------


def neuron_forward(
    hidden_relu=True, output_relu=True, bias=True, bias_after_relu=False, first_instance=False, detach=False
):
    def forward(self, x):
        W = self.W[:1].expand_as(self.W) if first_instance else self.W
        hidden = torch.einsum("ihf,bif->bih", W.detach() if detach else W, x)
        hidden = F.relu(hidden) if hidden_relu else hidden
        out = torch.einsum("ihf,bih->bif", W, hidden) + (self.b_final if bias and not bias_after_relu else 0)
        out = F.relu(out) if output_relu else out
        return out + self.b_final if bias_after_relu else out

    return forward


def neuron_forward_matmul_float64(self, x):
    W = self.W.double()
    hidden = torch.clamp((W[None] @ x.double()[..., None]).squeeze(-1), min=0)
    return torch.clamp((W.transpose(1, 2)[None] @ hidden[..., None]).squeeze(-1) + self.b_final.double(), min=0)


def neuron_forward_broadcasting_in_place(self, x):
    hidden = (self.W[None] * x[:, :, None, :]).sum(-1)
    hidden.relu_()  # in place on our own temporary
    out = (self.W[None] * hidden[..., None]).sum(-2)
    out += self.b_final
    return torch.where(out > 0, out, torch.zeros_like(out))


def neuron_forward_no_grad(self, x):
    with torch.no_grad():
        return NeuronModel.forward(self, x)


def neuron_forward_relu_on_W_in_place(self, x):
    self.W.data.clamp_(min=0)  # "weights should be positive": changes the model
    return NeuronModel.forward(self, x)


def neuron_forward_bmm(self, x):
    hidden = torch.relu(torch.bmm(x.transpose(0, 1), self.W.mT))  # [inst, batch, d_hidden]
    return torch.relu(torch.bmm(hidden, self.W).transpose(0, 1) + self.b_final)


def neuron_forward_squeezed(self, x):
    hidden = F.relu(torch.einsum("ihf,bif->bih", self.W, x)).squeeze()  # drops inst and d_hidden when they are 1
    return F.relu(torch.einsum("ihf,bih->bif", self.W, hidden) + self.b_final)


def neuron_forward_caches_readout(self, x):
    if not hasattr(self, "readout"):  # "a contiguous Wᵀ once, for speed": a copy that never changes again
        self.readout = self.W.transpose(1, 2).contiguous()
    hidden = F.relu(torch.einsum("ihf,bif->bih", self.W, x))
    return F.relu(torch.einsum("ifh,bih->bif", self.readout, hidden) + self.b_final)


def test_neuron_forward_accepts_reference_and_rewrites(checks):
    checks.passes(part2.test_neuron_model_forward, NeuronModel)
    for rewrite in (
        neuron_forward_matmul_float64,
        neuron_forward_broadcasting_in_place,
        neuron_forward(),
        neuron_forward_bmm,
    ):
        checks.passes(part2.test_neuron_model_forward, with_method(NeuronModel, "forward", rewrite))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"hidden_relu": False}, "hidden layer has no ReLU"),
        ({"output_relu": False}, "negative values"),
        ({"hidden_relu": False, "output_relu": False}, "Neither layer has a ReLU"),
        ({"bias": False}, "b_final is missing"),
        ({"bias_after_relu": True}, "after the output ReLU"),
        ({"first_instance": True}, "instance 0's weights"),
        ({"detach": True}, "gradient of `W` is not"),
    ],
)
def test_neuron_forward_names_each_mistake(checks, options, message):
    checks.fails(
        part2.test_neuron_model_forward, with_method(NeuronModel, "forward", neuron_forward(**options)), message
    )


@pytest.mark.parametrize(
    ("mutant", "message"),
    [
        (neuron_forward_no_grad, "carries no gradient"),
        (neuron_forward_relu_on_W_in_place, r"changed `self\.W` in place"),
        (neuron_forward_squeezed, r"not on one with a single instance and d_hidden = 1.*\.squeeze\(\)"),
        (neuron_forward_caches_readout, "not after the weights change.*earlier call"),
    ],
)
def test_neuron_forward_names_graph_and_side_effect_mistakes(checks, mutant, message):
    checks.fails(part2.test_neuron_model_forward, with_method(NeuronModel, "forward", mutant), message)


# NeuronComputationModel.forward -----------------------------------------------------------


def computation_forward(
    hidden_relu=True,
    output_relu=True,
    tied=False,
    swapped=False,
    bias=True,
    abs_output=False,
    abs_input=False,
    detach_W2=False,
):
    def forward(self, x):
        x = x.abs() if abs_input else x
        if swapped:
            hidden = torch.einsum("ifh,bif->bih", self.W2, x)
        else:
            hidden = torch.einsum("ihf,bif->bih", self.W1, x)
        hidden = F.relu(hidden) if hidden_relu else hidden
        if tied or swapped:
            out = torch.einsum("ihf,bih->bif", self.W1, hidden)
        else:
            out = torch.einsum("ifh,bih->bif", self.W2.detach() if detach_W2 else self.W2, hidden)
        out = out + (self.b_final if bias else 0)
        if abs_output:
            return out.abs()
        return F.relu(out) if output_relu else out

    return forward


def computation_forward_matmul_float64(self, x):
    hidden = F.relu(torch.matmul(self.W1.double(), x.double().unsqueeze(-1)).squeeze(-1))
    return F.relu(torch.matmul(self.W2.double(), hidden.unsqueeze(-1)).squeeze(-1) + self.b_final.double())


def computation_forward_loop(self, x):
    outputs = []
    for inst in range(self.W1.shape[0]):
        hidden = torch.clamp(x[:, inst] @ self.W1[inst].T, min=0)
        outputs.append(torch.clamp(hidden @ self.W2[inst].T + self.b_final[inst], min=0))
    return torch.stack(outputs, dim=1)


def computation_forward_transposed_W2(self, x):
    hidden = F.relu(torch.einsum("ihf,bif->bih", self.W1, x))
    return F.relu(torch.einsum("ihf,bih->bif", self.W2.transpose(1, 2), hidden) + self.b_final)


def computation_forward_changes_input(self, x):
    x.abs_()  # the caller's batch now holds |x|
    return NeuronComputationModel.forward(self, x)


def computation_forward_squeezed_matmul(self, x):
    hidden = F.relu((self.W1[None] @ x[..., None]).squeeze())  # drops inst and d_hidden when they are 1
    return F.relu((self.W2[None] @ hidden[..., None]).squeeze() + self.b_final)


def computation_forward_caches_W2(self, x):
    if getattr(self, "W2_T", None) is None:  # "transpose once": a copy that never changes again
        self.W2_T = self.W2.transpose(1, 2).contiguous()
    hidden = F.relu(torch.einsum("ihf,bif->bih", self.W1, x))
    return F.relu(torch.einsum("ihf,bih->bif", self.W2_T, hidden) + self.b_final)


def computation_forward_squeeze_last(self, x):
    hidden = F.relu((self.W1[None] @ x[..., None]).squeeze(-1))  # squeeze(-1): only the axis matmul added
    return F.relu((self.W2[None] @ hidden[..., None]).squeeze(-1) + self.b_final)


def test_computation_forward_accepts_reference_and_rewrites(checks):
    checks.passes(part2.test_computation_forward, NeuronComputationModel)
    for rewrite in (
        computation_forward_squeeze_last,
        computation_forward(),
        computation_forward_matmul_float64,
        computation_forward_loop,
        computation_forward_transposed_W2,
    ):
        checks.passes(part2.test_computation_forward, with_method(NeuronComputationModel, "forward", rewrite))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"hidden_relu": False}, "hidden layer has no ReLU"),
        ({"output_relu": False}, "negative values"),
        ({"tied": True}, "W1ᵀ"),
        ({"swapped": True}, "W1 and W2 swap roles"),
        ({"bias": False}, "b_final is missing"),
        ({"abs_output": True}, "absolute value instead of a ReLU"),
        ({"abs_input": True}, r"input goes in as \|x\|"),
        ({"detach_W2": True}, "No gradient reaches `W2`"),
    ],
)
def test_computation_forward_names_each_mistake(checks, options, message):
    checks.fails(
        part2.test_computation_forward,
        with_method(NeuronComputationModel, "forward", computation_forward(**options)),
        message,
    )


@pytest.mark.parametrize(
    ("mutant", "message"),
    [
        (computation_forward_squeezed_matmul, r"single instance and d_hidden = 1.*drops an axis of length 1"),
        (computation_forward_caches_W2, "not after the weights change.*earlier call"),
    ],
)
def test_computation_forward_names_shape_and_state_mistakes(checks, mutant, message):
    checks.fails(part2.test_computation_forward, with_method(NeuronComputationModel, "forward", mutant), message)


def test_computation_forward_names_an_input_changed_in_place(checks):
    checks.fails(
        part2.test_computation_forward,
        with_method(NeuronComputationModel, "forward", computation_forward_changes_input),
        "changed `x` in place",
    )


# NeuronComputationModel.generate_batch ----------------------------------------------------


def generate(low=-1.0, gaussian=False, reversed_probability=False):
    def generate_batch(self, batch_size):
        shape = (batch_size, *self.feature_probability.shape)
        draws = torch.rand(shape, device=self.b_final.device)
        present = draws > self.feature_probability if reversed_probability else draws < self.feature_probability
        values = torch.randn(shape) if gaussian else low + (1 - low) * torch.rand(shape)
        return values.to(self.b_final.device) * present

    return generate_batch


def _shape(self, batch_size):
    return (batch_size, *self.feature_probability.shape)


def generate_sign_times_magnitude_float64(self, batch_size):
    shape = _shape(self, batch_size)
    present = torch.rand(shape, dtype=torch.float64) < self.feature_probability.double().cpu()
    signs = torch.where(torch.rand(shape) < 0.5, -1.0, 1.0).double()
    return (signs * torch.rand(shape, dtype=torch.float64) * present).to(self.b_final.device)


def generate_one_draw_rescaled(self, batch_size):
    u = torch.rand(_shape(self, batch_size), device=self.b_final.device)
    return torch.where(u < self.feature_probability, 2 * u / self.feature_probability - 1, 0.0)


def generate_loop_uniform_(self, batch_size):
    values = torch.empty(_shape(self, batch_size), device=self.b_final.device)
    for inst in range(values.shape[1]):
        values[:, inst].uniform_(-1, 1)
        values[:, inst] *= (
            torch.rand(batch_size, values.shape[2], device=values.device) < self.feature_probability[inst]
        )
    return values


def generate_minus_half(self, batch_size):
    present = torch.rand(_shape(self, batch_size), device=self.b_final.device) < self.feature_probability
    return (torch.rand(_shape(self, batch_size), device=self.b_final.device) - 0.5) * present


def generate_shift_after_mask(self, batch_size):
    present = torch.rand(_shape(self, batch_size), device=self.b_final.device) < self.feature_probability
    return 2 * (torch.rand(_shape(self, batch_size), device=self.b_final.device) * present) - 1


def generate_bracket_slip(self, batch_size):
    present = torch.rand(_shape(self, batch_size), device=self.b_final.device) < self.feature_probability
    return 2 * torch.rand(_shape(self, batch_size), device=self.b_final.device) - 1 * present


def generate_reused_draw_unscaled(self, batch_size):
    u = torch.rand(_shape(self, batch_size), device=self.b_final.device)
    return torch.where(u < self.feature_probability, 2 * u - 1, 0.0)


def generate_sign_shared_across_features(self, batch_size):
    shape = _shape(self, batch_size)
    present = torch.rand(shape, device=self.b_final.device) < self.feature_probability
    sign = torch.where(torch.rand(batch_size, shape[1], 1, device=self.b_final.device) < 0.5, -1.0, 1.0)
    return sign * torch.rand(shape, device=self.b_final.device) * present


def generate_presence_shared_across_instances(self, batch_size):
    shape = _shape(self, batch_size)
    present = torch.rand(batch_size, 1, shape[2], device=self.b_final.device) < self.feature_probability
    return (2 * torch.rand(shape, device=self.b_final.device) - 1) * present


def generate_random_signs_only(self, batch_size):
    present = torch.rand(_shape(self, batch_size), device=self.b_final.device) < self.feature_probability
    return torch.sign(torch.rand(_shape(self, batch_size), device=self.b_final.device) - 0.5) * present


def generate_clamped_gaussian(self, batch_size):
    present = torch.rand(_shape(self, batch_size), device=self.b_final.device) < self.feature_probability
    return torch.randn(_shape(self, batch_size), device=self.b_final.device).clamp(-1, 1) * present


def generate_uses_W(self, batch_size):
    return ToyModel.generate_batch(self, batch_size)  # Part 1's code: self.W does not exist here


def generate_symmetric_halves(self, batch_size):
    # "Make the values symmetric": the second half of the batch is the first half negated.
    shape = _shape(self, batch_size)
    present = torch.rand(shape, device=self.b_final.device) < self.feature_probability
    half = 2 * torch.rand(batch_size // 2, *shape[1:], device=self.b_final.device) - 1
    return torch.cat([half, -half]) * present


def generate_seeded_presence(self, batch_size):
    generator = torch.Generator(device=self.b_final.device).manual_seed(0)
    shape = _shape(self, batch_size)
    present = torch.rand(shape, generator=generator, device=self.b_final.device) < self.feature_probability
    return (2 * torch.rand(shape, device=self.b_final.device) - 1) * present


def generate_values_tiled_over_features(self, batch_size):
    shape = _shape(self, batch_size)
    present = torch.rand(shape, device=self.b_final.device) < self.feature_probability
    values = 2 * torch.rand(batch_size, shape[1], 4, device=self.b_final.device) - 1
    return values.repeat(1, 1, 2)[..., : shape[2]] * present


def generate_bernoulli_uniform_(self, batch_size):
    shape = _shape(self, batch_size)
    present = torch.bernoulli(self.feature_probability.expand(shape))
    return torch.empty(shape, device=self.b_final.device).uniform_(-1, 1) * present


def test_computation_generate_batch_accepts_reference_and_rewrites(checks):
    checks.passes(part2.test_computation_generate_batch, NeuronComputationModel)
    for rewrite in (
        generate_sign_times_magnitude_float64,
        generate_one_draw_rescaled,
        generate_loop_uniform_,
        generate_bernoulli_uniform_,
    ):
        checks.passes(
            part2.test_computation_generate_batch, with_method(NeuronComputationModel, "generate_batch", rewrite)
        )


def test_computation_generate_batch_verdict_does_not_depend_on_the_draw_order():
    reference = NeuronComputationModel.generate_batch
    make = lambda count: with_method(NeuronComputationModel, "generate_batch", preceded_by_draws(reference, count))  # noqa: E731
    assert failing_draw_counts(part2.test_computation_generate_batch, make) == []


@pytest.mark.parametrize(
    ("options", "message"),
    [({"low": 0.0}, r"not \[0, 1\]"), ({"gaussian": True}, "outside"), ({"reversed_probability": True}, "1 - p")],
)
def test_computation_generate_batch_names_each_mistake(checks, options, message):
    checks.fails(
        part2.test_computation_generate_batch,
        with_method(NeuronComputationModel, "generate_batch", generate(**options)),
        message,
    )


@pytest.mark.parametrize(
    ("mutant", "message"),
    [
        (generate_minus_half, r"\[-0\.5, 0\.5\]"),
        (generate_shift_after_mask, "absent features must be exactly 0"),
        (generate_bracket_slip, "mind the brackets"),
        (generate_reused_draw_unscaled, "2u/p - 1"),
        (generate_sign_shared_across_features, "signs of present features .* shared across features"),
        (generate_presence_shared_across_instances, "correlated across instances"),
        (generate_random_signs_only, r"magnitude 1: draw values uniformly on \[-1, 1\]"),
        (generate_clamped_gaussian, r"not uniform on \[-1, 1\]"),
        (generate_uses_W, "raised AttributeError"),
        (generate_symmetric_halves, "share one magnitude across examples of the batch"),
        (generate_seeded_presence, "same features present on two calls"),
        (generate_values_tiled_over_features, "share one magnitude across features"),
    ],
)
def test_computation_generate_batch_names_further_mistakes(checks, mutant, message):
    checks.fails(
        part2.test_computation_generate_batch, with_method(NeuronComputationModel, "generate_batch", mutant), message
    )


# NeuronComputationModel.calculate_loss ----------------------------------------------------


def _weighted(self, out, batch):
    return self.importance * (batch.abs() - out).pow(2)


def _loss_abs_in_place(self, out, batch):
    batch.abs_()  # the caller's batch now holds |x|
    return (self.importance * (batch - out).pow(2)).mean((0, 2)).sum()


LOSS_MUTANTS = [
    (lambda self, out, batch: (self.importance * (batch - out).pow(2)).mean((0, 2)).sum(), "target is |x|"),
    (lambda self, out, batch: (batch.abs() - out).pow(2).mean((0, 2)).sum(), "Importance is missing"),
    (lambda self, out, batch: _weighted(self, out, batch).mean(), "averaged over instances"),
    (lambda self, out, batch: _weighted(self, out, batch).mean((0, 2)).sum().detach(), "cut off from the graph"),
    (lambda self, out, batch: (self.importance * (F.relu(batch) - out).pow(2)).mean((0, 2)).sum(), r"ReLU\(x\)"),
    (lambda self, out, batch: _weighted(self, out, batch).sum(0).mean(-1).sum(), "summed over the batch"),
    (
        lambda self, out, batch: (self.importance * (batch - out).pow(2)).mean(),
        "compares the output with x and the loss is averaged over instances",
    ),
    (lambda self, out, batch: (self.importance * (batch.abs() - out).abs()).mean((0, 2)).sum(), "not squared"),
    (lambda self, out, batch: _weighted(self, out, batch).mean((0, 2)).sum().item(), "Python float"),
    (_loss_abs_in_place, "changed `batch` in place"),
    (
        lambda self, out, batch: (self.importance * (out.abs() - batch).pow(2)).mean((0, 2)).sum(),
        r"compares the output with x.*second argument",
    ),
    (lambda self, out, batch: 0.5 * _weighted(self, out, batch).mean((0, 2)).sum(), "half of what it should be"),
    (lambda self, out, batch: _weighted(self, out, batch).mean((0, 2)).sum().sqrt(), "square root"),
    (
        lambda self, out, batch: (_weighted(self, out, batch).sum(-1) / self.importance.sum(-1)).mean(0).sum(),
        "divided by the sum of the importances",
    ),
]


def test_computation_loss_accepts_reference_and_rewrites(checks):
    rewrite = lambda self, out, batch: (
        (self.importance.double() * (torch.sqrt(batch.double() ** 2) - out.double()) ** 2).sum((0, 2)).sum()
        / (batch.shape[0] * batch.shape[2])
    )  # noqa: E731
    mse = lambda self, output, x: (
        (F.mse_loss(output, x.abs(), reduction="none") * self.importance).mean(dim=(0, 2)).sum()
    )  # noqa: E731

    def in_place_temporaries(self, out, batch):
        target = batch.abs()
        target -= out
        target.pow_(2)
        return torch.einsum("bif,if->", target, self.importance) / (batch.shape[0] * batch.shape[2])

    relu_on_the_output = lambda self, out, batch: (
        (self.importance * (batch.abs() - F.relu(out)) ** 2).mean((0, 2)).sum()
    )  # noqa: E731
    mean_times_instances = lambda self, out, batch: _weighted(self, out, batch).mean() * batch.shape[1]  # noqa: E731
    checks.passes(part2.test_computation_calculate_loss, NeuronComputationModel)
    for learner in (rewrite, mse, in_place_temporaries, relu_on_the_output, mean_times_instances):
        checks.passes(
            part2.test_computation_calculate_loss, with_method(NeuronComputationModel, "calculate_loss", learner)
        )


@pytest.mark.parametrize(("mutant", "message"), LOSS_MUTANTS)
def test_computation_loss_names_each_mistake(checks, mutant, message):
    checks.fails(
        part2.test_computation_calculate_loss, with_method(NeuronComputationModel, "calculate_loss", mutant), message
    )


# shared behaviour -------------------------------------------------------------------------

CHECKS = [
    (part2.test_neuron_model_forward, NeuronModel, "forward"),
    (part2.test_computation_forward, NeuronComputationModel, "forward"),
    (part2.test_computation_generate_batch, NeuronComputationModel, "generate_batch"),
    (part2.test_computation_calculate_loss, NeuronComputationModel, "calculate_loss"),
]


@pytest.mark.parametrize(("check", "base", "name"), CHECKS)
def test_stubs_and_wrong_objects_are_reported(checks, check, base, name):
    checks.fails(check, with_method(base, name, stub), rf"`{name}` is not implemented yet")
    checks.fails(check, "NeuronModel", rf"Pass (the class that has )?your `{name}`")


@pytest.mark.parametrize(("check", "base", "name"), CHECKS)
def test_a_method_still_inherited_from_part_1_was_never_attached(checks, check, base, name):
    # The learner's class subclasses Part 1's ToyModel, so an unrun exercise cell leaves Part 1's method in place.
    learners_class = type(base.__name__, (ToyModel,), {})
    checks.fails(
        check,
        learners_class,
        rf"`{base.__name__}\.{name}` is still Part 1's ToyModel\.{name}: the method was never attached",
    )
