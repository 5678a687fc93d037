"""Checks for Part 2 (superposition in a privileged basis). E.g. `test_neuron_model_forward(NeuronModel)`.

As in Part 1, learner code gets copies of the inputs, forward passes are checked with their
gradients, and the sampler check is statistical with binomial bounds (helpers from Part 1's checks).
"""

import functools
import inspect
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from part_utils.device import get_device
from part_utils.reference import part1_toy_models
from part_utils.reference import part2_privileged_basis as reference
from part_utils.reference.part1_toy_models import ToyModelConfig
from tests.checking import (
    call_learner,
    check,
    check_output_gradients,
    CheckFailure,
    diagnose,
    expect_tensor,
    frequencies_match,
    inputs_clear_of_kinks,
    learner_callable,
    reference_with_gradients,
)
from tests.part1_toy_models import (
    check_loss_gradient,
    forward_fallback,
    loss_fallback,
    loss_inputs,
    loss_mistakes,
    scalar_loss,
    sparse_features,
)
from tests.sampling import (
    FALSE_ALARM_PER_TEST,
    SAMPLE_BATCH,
    check_examples_vary,
    check_fresh_draws,
    check_magnitudes_vary,
    check_presence_frequencies,
    check_presence_independent,
    check_uniform,
    check_values_not_shared,
    draw_twice,
    independence_messages,
    neighbour_comparisons,
    presence_alternatives,
    sample_values,
)

N_INST, N_FEATURES, D_HIDDEN, BATCH = 3, 7, 4, 32


def _random_model(kind: type) -> reference.ToyModel:
    cfg = ToyModelConfig(n_inst=N_INST, n_features=N_FEATURES, d_hidden=D_HIDDEN)
    probability = torch.linspace(0.05, 0.6, N_INST * N_FEATURES).reshape(N_INST, N_FEATURES)[:, torch.randperm(N_FEATURES)]
    model = kind(cfg, feature_probability=probability, importance=0.8 * torch.rand(N_INST, N_FEATURES) + 0.1, device=get_device())
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_()
    return model


def _signed_batch() -> Tensor:
    values = 2 * torch.rand(BATCH, N_INST, N_FEATURES) - 1
    return values * (torch.rand(BATCH, N_INST, N_FEATURES) < 0.6)


def _part2_method(learner: object, name: str, owner_hint: str) -> Callable[..., object]:
    """The learner's method; one inherited from Part 1's ToyModel means this part's cell was never run."""
    function = learner_callable(learner, name, owner_hint=owner_hint)
    if function is inspect.getattr_static(part1_toy_models.ToyModel, name, None):
        owner = learner.__name__ if inspect.isclass(learner) else type(learner).__name__
        raise CheckFailure(
            f"`{owner}.{name}` is still Part 1's ToyModel.{name}: the method was never attached to the class. Run the "
            f"exercise cell that defines it (with `@add_to_class({owner_hint})` right above `def {name}`), then this check."
        )
    return function


def _two_layer_relu_inputs(W_in: Tensor, W_out: Tensor, b_final: Tensor, x: Tensor) -> list[Tensor]:
    """The inputs of both ReLUs of `ReLU(W_out ReLU(W_in x) + b_final)`, with W_out [inst, feats, d_hidden]."""
    pre_hidden = torch.einsum("ihf,bif->bih", W_in, x.double())
    return [pre_hidden, torch.einsum("ifh,bih->bif", W_out, F.relu(pre_hidden)) + b_final]


# NeuronModel.forward ------------------------------------------------------------------------


def _neuron_forward(W: Tensor, b_final: Tensor, x: Tensor) -> Tensor:
    hidden = F.relu(torch.einsum("ihf,bif->bih", W, x))
    return F.relu(torch.einsum("ihf,bih->bif", W, hidden) + b_final)


def _neuron_mistakes(W: Tensor, b: Tensor, x: Tensor) -> dict[str, Tensor]:
    pre_hidden = torch.einsum("ihf,bif->bih", W, x)
    readout = lambda hidden: torch.einsum("ihf,bih->bif", W, hidden)  # noqa: E731
    first = lambda tensor: tensor[:1].expand_as(tensor)  # noqa: E731
    return {
        "The hidden layer has no ReLU: in a NeuronModel, h = ReLU(W x).": F.relu(readout(pre_hidden) + b),
        "The output has negative values: keep the ReLU on the output, ReLU(Wᵀh + b_final).": readout(F.relu(pre_hidden)) + b,
        "Neither layer has a ReLU: h = ReLU(W x), then x' = ReLU(Wᵀh + b_final).": readout(pre_hidden) + b,
        "b_final is missing from the output: x' = ReLU(Wᵀh + b_final).": F.relu(readout(F.relu(pre_hidden))),
        "b_final is added after the output ReLU; it belongs inside it: ReLU(Wᵀh + b_final).": F.relu(readout(F.relu(pre_hidden))) + b,
        "b_final is subtracted; add it: ReLU(Wᵀh + b_final).": F.relu(readout(F.relu(pre_hidden)) - b),
        "Every instance uses instance 0's weights: keep the inst axis of W in every step.": _neuron_forward(first(W), b, x),
    }


@check("NeuronModel.forward")
def test_neuron_model_forward(learner: object) -> str:
    forward = _part2_method(learner, "forward", "NeuronModel")
    model = _random_model(reference.NeuronModel)
    parameters = {"W": model.W.detach().cpu().clone(), "b_final": model.b_final.detach().cpu().clone()}
    W, b = parameters["W"].double(), parameters["b_final"].double()
    relu_inputs = functools.partial(_two_layer_relu_inputs, W, W.transpose(1, 2), b)
    features = inputs_clear_of_kinks(lambda: sparse_features((BATCH, N_INST, N_FEATURES)), relu_inputs)
    upstream = torch.randn(BATCH, N_INST, N_FEATURES)
    expected, expected_grads = reference_with_gradients(lambda W, b_final: _neuron_forward(W, b_final, features.double()), parameters, upstream)
    mistakes = _neuron_mistakes(W, b, features.double())
    output = call_learner(forward, model, features.clone().to(model.W.device), what="forward")
    actual = expect_tensor(output, (BATCH, N_INST, N_FEATURES), what="forward", axes="batch, inst, feats")
    fallback = forward_fallback(actual, expected, relu_inputs(features)[1], formula="ReLU(Wᵀ ReLU(W x) + b_final)")
    diagnose(actual, expected, mistakes, otherwise=fallback, atol=1e-4)
    check_output_gradients(output, upstream, {"W": model.W, "b_final": model.b_final}, expected_grads, what="forward")
    return "ReLU on the hidden layer and on the output, gradients too"


# NeuronComputationModel.forward -------------------------------------------------------------


def _computation_forward(W1: Tensor, W2: Tensor, b_final: Tensor, x: Tensor) -> Tensor:
    hidden = F.relu(torch.einsum("ihf,bif->bih", W1, x))
    return F.relu(torch.einsum("ifh,bih->bif", W2, hidden) + b_final)


def _computation_mistakes(W1: Tensor, W2: Tensor, b: Tensor, x: Tensor) -> dict[str, Tensor]:
    pre_hidden = torch.einsum("ihf,bif->bih", W1, x)
    readout = lambda hidden: torch.einsum("ifh,bih->bif", W2, hidden)  # noqa: E731
    swapped_hidden = F.relu(torch.einsum("ifh,bif->bih", W2, x))
    return {
        "The hidden layer has no ReLU: h = ReLU(W1 x).": F.relu(readout(pre_hidden) + b),
        "The output has negative values: x' = ReLU(W2 h + b_final).": readout(F.relu(pre_hidden)) + b,
        "You decoded with W1ᵀ; this model has its own output weights W2.": F.relu(torch.einsum("ihf,bih->bif", W1, F.relu(pre_hidden)) + b),
        "W1 and W2 swap roles: W1 [inst, d_hidden, feats] reads the input, W2 [inst, feats, d_hidden] writes the output.": F.relu(
            torch.einsum("ihf,bih->bif", W1, swapped_hidden) + b
        ),
        "b_final is missing from the output: x' = ReLU(W2 h + b_final).": F.relu(readout(F.relu(pre_hidden))),
        "b_final is added after the output ReLU; it belongs inside it: ReLU(W2 h + b_final).": F.relu(readout(F.relu(pre_hidden))) + b,
        "The output takes an absolute value instead of a ReLU: the model must learn |x| itself, x' = ReLU(W2 h + b_final).": (
            readout(F.relu(pre_hidden)) + b
        ).abs(),
        "The input goes in as |x|: the model must compute the absolute value itself, so feed x as it is.": _computation_forward(W1, W2, b, x.abs()),
    }


@check("NeuronComputationModel.forward")
def test_computation_forward(learner: object) -> str:
    forward = _part2_method(learner, "forward", "NeuronComputationModel")
    model = _random_model(reference.NeuronComputationModel)
    parameters = {name: getattr(model, name).detach().cpu().clone() for name in ("W1", "W2", "b_final")}
    W1, W2, b = (parameters[name].double() for name in ("W1", "W2", "b_final"))
    relu_inputs = functools.partial(_two_layer_relu_inputs, W1, W2, b)
    x = inputs_clear_of_kinks(_signed_batch, relu_inputs)
    upstream = torch.randn(BATCH, N_INST, N_FEATURES)
    expected, expected_grads = reference_with_gradients(lambda W1, W2, b_final: _computation_forward(W1, W2, b_final, x.double()), parameters, upstream)
    mistakes = _computation_mistakes(W1, W2, b, x.double())
    output = call_learner(forward, model, x.clone().to(model.W1.device), what="forward")
    actual = expect_tensor(output, (BATCH, N_INST, N_FEATURES), what="forward", axes="batch, inst, feats")
    fallback = forward_fallback(actual, expected, relu_inputs(x)[1], formula="ReLU(W2 ReLU(W1 x) + b_final)")
    diagnose(actual, expected, mistakes, otherwise=fallback, atol=1e-4)
    check_output_gradients(output, upstream, {"W1": model.W1, "W2": model.W2, "b_final": model.b_final}, expected_grads, what="forward")
    return "two weight matrices, both ReLUs, gradients too"


# NeuronComputationModel.generate_batch ------------------------------------------------------


def _check_signed_range(values: Tensor, probability: Tensor) -> None:
    if values.min() >= 0:
        raise CheckFailure("All values are non-negative: present features must be uniform on [-1, 1], not [0, 1].")
    if values.min() < -1:
        raise CheckFailure("Values fall outside [-1, 1]: use 2 * torch.rand(...) - 1, not torch.randn.")
    if values.max() > 1:
        raise CheckFailure(
            "Values go above 1 but never below -1: the shift to [-1, 1] is applied in the wrong place (mind the "
            "brackets: (2 * torch.rand(...) - 1) * present)."
        )
    if values.abs().max() <= 0.5:
        raise CheckFailure("Values lie in [-0.5, 0.5]: torch.rand(...) - 0.5 has half the range; use 2 * torch.rand(...) - 1.")


def _check_signs_independent(values: Tensor) -> None:
    """Along every axis, two neighbouring present values have the same sign half the time (binomial)."""
    for axis, label in enumerate(("examples of the batch", "instances", "features")):
        a, b = values.narrow(axis, 0, values.shape[axis] - 1), values.narrow(axis, 1, values.shape[axis] - 1)
        both = (a != 0) & (b != 0)
        n = int(both.sum())
        same = ((a > 0) == (b > 0))[both].double().mean()
        if n and not frequencies_match(same.reshape(1), torch.tensor([0.5], dtype=torch.float64), n, false_alarm=FALSE_ALARM_PER_TEST / 3):
            raise CheckFailure(f"The signs of present features in `generate_batch` are shared across {label}: draw each value (or its sign) separately.")


def _check_signed_values(values: Tensor, probability: Tensor) -> None:
    check_magnitudes_vary(values, what="generate_batch", advice="draw values uniformly on [-1, 1]")
    check_values_not_shared(values, neighbour_comparisons(values, "generate_batch"))
    present = values != 0
    try:
        check_uniform((values[present] + 1) / 2, what="generate_batch", otherwise="The values of present features are not uniform on [-1, 1].")
    except CheckFailure:
        reuses_draw = probability < 0.9
        if (~present | (values <= 2 * probability - 1 + 1e-6))[:, reuses_draw].all():
            raise CheckFailure(
                "The values of present features are uniform on [-1, 2p - 1), not [-1, 1]: if you reuse the presence "
                "draw u (< p), rescale it as 2u/p - 1."
            ) from None
        raise
    _check_signs_independent(values)


@check("NeuronComputationModel.generate_batch")
def test_computation_generate_batch(learner: object) -> str:
    generate = _part2_method(learner, "generate_batch", "NeuronComputationModel")
    model = _random_model(reference.NeuronComputationModel)
    model.feature_probability = model.feature_probability.clone()
    model.feature_probability[1, 2] = 1.0  # a feature that is always present
    probability, importance = model.feature_probability.cpu().double(), model.importance.cpu().double()
    first, second = draw_twice(generate, model, SAMPLE_BATCH, what="generate_batch")
    values = sample_values(first, (SAMPLE_BATCH, N_INST, N_FEATURES), device=model.b_final.device, what="generate_batch", axes="batch, inst, feats")
    check_fresh_draws(first, second, what="generate_batch")
    _check_signed_range(values, probability)
    check_examples_vary(values, probability, what="generate_batch")
    check_presence_frequencies(
        values != 0,
        probability,
        what="generate_batch",
        alternatives=presence_alternatives(probability, importance),
        otherwise="Features are present with the wrong probability: use feature_probability[inst, feat].",
    )
    check_presence_independent(values != 0, probability, messages=independence_messages("generate_batch"))
    _check_signed_values(values, probability)
    return f"presence frequencies and signed values match on {SAMPLE_BATCH} samples"


# NeuronComputationModel.calculate_loss ------------------------------------------------------


@check("NeuronComputationModel.calculate_loss")
def test_computation_calculate_loss(learner: object) -> str:
    calculate_loss = _part2_method(learner, "calculate_loss", "NeuronComputationModel")
    model = _random_model(reference.NeuronComputationModel)
    batch = _signed_batch()
    out_leaf, out_for_learner, batch_for_learner = loss_inputs(batch, batch.abs(), model.W1.device)
    x, out = batch_for_learner.detach().cpu().double(), out_leaf.detach().cpu().double()
    importance = model.importance.cpu().double()

    loss = call_learner(calculate_loss, model, out_for_learner, batch_for_learner.clone(), what="calculate_loss")
    actual = scalar_loss(loss, tuple(batch.shape), what="calculate_loss")
    error = (x.abs() - out).pow(2)
    expected_gradient = -2 * importance * (x.abs() - out) / (x.shape[0] * x.shape[2])
    diagnose(
        actual,
        (importance * error).mean((0, 2)).sum(),
        {
            **loss_mistakes(
                {
                    None: ("", importance * error),
                    "the loss compares the output with x": (
                        "the target is |x|, the absolute value of `batch` (the second argument: calculate_loss(out, batch))",
                        importance * (x - out).pow(2),
                    ),
                    "the loss compares the output with ReLU(x)": ("the target is |x|, which is positive for negative x too", importance * (F.relu(x) - out).pow(2)),
                    "importance is missing": ("weight each squared error by importance[inst, feat]", error),
                    "importance is applied squared (it multiplies the difference before squaring)": (
                        "weight the squared error by importance[inst, feat] itself",
                        importance.pow(2) * error,
                    ),
                }
            ),
            "The error is not squared: use (|x| - x')², not ||x| - x'|.": (importance * (x.abs() - out).abs()).mean((0, 2)).sum(),
        },
        otherwise=loss_fallback(
            loss,
            out_leaf,
            expected_gradient,
            default="The loss should be the importance-weighted squared error against |x|, averaged over batch and features, summed over instances.",
        ),
    )
    check_loss_gradient(loss, out_leaf, expected_gradient, what="calculate_loss")
    return "target |x|, importance weighting and reductions"
