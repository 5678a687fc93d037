"""Checks for Part 1 (toy models of superposition). Call them from the notebook, e.g. `test_forward(ToyModel)`.

Learner code always gets copies of the check's inputs; expectations come from the originals.
The checks of random samplers compare counts with bounds that a correct sampler exceeds with
probability below 1e-9 (`binomial_tolerance`), so a verdict never depends on how many random
numbers the learner's code draws, or in which order. Part 2 reuses the sampler helpers below.
"""

import contextlib
import inspect
import itertools
import math
from collections.abc import Callable, Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from part_utils.device import get_device
from part_utils.reference import part1_toy_models as reference
from tests.checking import (
    CheckFailure,
    binomial_tolerance,
    call_learner,
    check,
    diagnose,
    expect_tensor,
    first_gradient_mismatch,
    frequencies_match,
    gradients,
    learner_callable,
)

# The chance that a correct sampler fails a check is at most 1e-9: a sampler check runs at most
# four statistical tests (presence frequencies, independence, uniform magnitudes, and one of
# the pairs' or signs' tests), each with a quarter of it, shared again by all its cells.
FALSE_ALARM_PER_TEST = 1e-9 / 4
KINK_MARGIN = 1e-3  # how far every ReLU input stays from 0 in the forward checks
SAMPLE_BATCH = 10_000


# Inputs -------------------------------------------------------------------------------------


def learner_function(thing: object, name: str) -> Callable[..., object]:
    """The learner's free function; a class or a model handed in instead is named as such."""
    if inspect.isclass(thing) or isinstance(thing, nn.Module):
        kind = thing.__name__ if inspect.isclass(thing) else type(thing).__name__
        raise CheckFailure(f"`{name}` is a function of its own, not a method: pass it itself, `{name}`, not `{kind}`.")
    return learner_callable(thing, name)


def _random_toy_model(n_inst: int = 3, n_features: int = 7, d_hidden: int = 4) -> reference.ToyModel:
    """A reference model with non-trivial weights, a non-zero bias and varied probabilities and importances."""
    cfg = reference.ToyModelConfig(n_inst=n_inst, n_features=n_features, d_hidden=d_hidden)
    probability = torch.linspace(0.05, 0.9, n_inst * n_features).reshape(n_inst, n_features)
    probability = probability[:, torch.randperm(n_features)]
    importance = 0.8 * torch.rand(n_inst, n_features) + 0.1
    model = reference.ToyModel(cfg, feature_probability=probability, importance=importance, device=get_device())
    with torch.no_grad():
        model.W.normal_()
        model.b_final.normal_(0.0, 0.5)
    return model


def _sampling_model() -> reference.ToyModel:
    """A model whose probabilities span (0, 1], one of them exactly 1, none shared by two cells."""
    model = _random_toy_model(n_inst=6, n_features=7, d_hidden=3)
    probability = torch.linspace(0.05, 0.95, 42)[torch.randperm(42)].reshape(6, 7)
    probability[2, 3] = 1.0
    model.feature_probability = probability.to(model.W.device)
    return model


def sparse_features(shape: tuple[int, ...], presence: float = 0.6) -> Tensor:
    return torch.rand(shape) * (torch.rand(shape) < presence)


def inputs_clear_of_kinks(draw: Callable[[], Tensor], relu_inputs: Callable[[Tensor], Sequence[Tensor]]) -> Tensor:
    """Inputs whose every ReLU input is at least KINK_MARGIN from 0.

    float32 and float64 code then agree on which units are on, so a correct rewrite in
    another precision, or with clamp or torch.where instead of relu, gets the same gradients.
    """
    for _ in range(100):
        inputs = draw()
        if all(bool((pre.abs() > KINK_MARGIN).all()) for pre in relu_inputs(inputs)):
            return inputs
    raise RuntimeError("could not draw inputs clear of the ReLU kinks")


# Gradients ----------------------------------------------------------------------------------


def reference_with_gradients(
    formula: Callable[..., Tensor], parameters: Mapping[str, Tensor], upstream: Tensor
) -> tuple[Tensor, dict[str, Tensor]]:
    """The reference output in float64, and the gradient of `output · upstream` for each parameter."""
    leaves = {name: tensor.detach().to("cpu", torch.float64).requires_grad_() for name, tensor in parameters.items()}
    output = formula(**leaves)
    grads = torch.autograd.grad((output * upstream.double()).sum(), list(leaves.values()))
    return output.detach(), dict(zip(leaves, grads))


def check_output_gradients(
    output: Tensor, upstream: Tensor, parameters: Mapping[str, Tensor], expected: Mapping[str, Tensor], *, what: str
) -> None:
    """Backpropagate the learner's output against a fixed random upstream gradient; each parameter's
    gradient must match the reference's (the output itself is checked before)."""
    cut_off = "(.detach(), .data, torch.no_grad(), or a detour through NumPy or .tolist())"
    if not output.requires_grad:
        raise CheckFailure(f"The output of `{what}` carries no gradient: it is cut off from the graph {cut_off}, so training would never change the weights.")
    loss = (output * upstream.to(output.device, output.dtype)).sum()
    actual = gradients(loss, parameters, what=f"the output of `{what}`")
    scale = max(float(grad.abs().max()) for grad in expected.values())
    name = first_gradient_mismatch(actual, expected, rtol=1e-4, atol=1e-5 * scale)
    if name is None:
        return
    if not any(grad.any() for grad in actual.values()):
        raise CheckFailure(
            f"No gradient reaches any parameter, although the output of `{what}` is right: the output is cut off from "
            f"the graph {cut_off}, so training would never change the weights."
        )
    if not actual[name].any():
        raise CheckFailure(
            f"No gradient reaches `{name}`, although the output of `{what}` is right: a step that uses `{name}` is cut "
            "off from the graph (.detach(), .data or torch.no_grad()), so training would never change it."
        )
    raise CheckFailure(
        f"The output of `{what}` is right, but the gradient of `{name}` is not: a step that uses `{name}` is cut off "
        "from the graph (.detach(), .data or torch.no_grad()), so training would see only part of its effect."
    )


def forward_fallback(actual: Tensor, expected: Tensor, relu_input: Tensor, *, formula: str) -> str:
    """The sentence for an output that matches no known mistake; names a non-ReLU output nonlinearity
    when the output is right wherever the ReLU is on and wrong only where it should be 0."""
    on = relu_input > 0
    if torch.allclose(actual[on], expected[on], rtol=1e-4, atol=1e-4) and not torch.allclose(actual[~on], expected[~on], atol=1e-4):
        return (
            f"The output is right wherever the output ReLU is on, but not where its input is negative: there "
            f"{formula} is exactly 0 (a ReLU, not a leaky, smooth or shifted version)."
        )
    return f"The output does not match {formula} per instance: check which axes each einsum or matmul contracts, each ReLU, and b_final."


# forward ------------------------------------------------------------------------------------


def _toy_forward(W: Tensor, b_final: Tensor, x: Tensor) -> Tensor:
    hidden = torch.einsum("ihf,bif->bih", W, x)
    return F.relu(torch.einsum("ihf,bih->bif", W, hidden) + b_final)


def _forward_mistakes(W: Tensor, b: Tensor, x: Tensor) -> dict[str, Tensor]:
    hidden = torch.einsum("ihf,bif->bih", W, x)
    pre_bias = torch.einsum("ihf,bih->bif", W, hidden)
    first = lambda tensor: tensor[:1].expand_as(tensor)  # noqa: E731  (instance 0 for every instance)
    mixed_hidden = torch.einsum("ihf,bjf->bih", W, x)
    return {
        "The output has negative values where it should not: apply the ReLU after adding b_final.": pre_bias + b,
        "b_final is missing: add it to Wᵀh before the ReLU.": F.relu(pre_bias),
        "b_final is added after the ReLU; it belongs inside it: ReLU(Wᵀh + b_final).": F.relu(pre_bias) + b,
        "b_final is subtracted; add it: ReLU(Wᵀh + b_final).": F.relu(pre_bias - b),
        "You applied a ReLU to the hidden layer; in this model h = Wx is linear (the ReLU comes in Part 2).": F.relu(
            torch.einsum("ihf,bih->bif", W, F.relu(hidden)) + b
        ),
        "The output is also clamped at 1; only the ReLU's floor at 0 belongs there.": (pre_bias + b).clamp(0, 1),
        "A ReLU comes before b_final as well as after it: the output is ReLU(Wᵀh + b_final), one ReLU.": F.relu(F.relu(pre_bias) + b),
        "Every instance uses instance 0's weights: keep the inst axis of W (and of b_final) in every step.": _toy_forward(
            first(W), b, x
        ),
        "Every instance uses instance 0's weights and bias: keep the inst axis of W and b_final in every step.": _toy_forward(
            first(W), first(b), x
        ),
        "The hidden layer sums the features of every instance: contract instance i's W with instance i's features only.": F.relu(
            torch.einsum("ihf,bih->bif", W, mixed_hidden) + b
        ),
    }


@check("forward")
def test_forward(learner: object) -> str:
    forward = learner_callable(learner, "forward", owner_hint="ToyModel")
    with single_threaded():  # the check's own arithmetic: see single_threaded
        model = _random_toy_model()
        batch, n_inst, n_feats = 32, model.cfg.n_inst, model.cfg.n_features
        parameters = {"W": model.W.detach().cpu().clone(), "b_final": model.b_final.detach().cpu().clone()}
        W, b = parameters["W"].double(), parameters["b_final"].double()
        pre_output = lambda x: [torch.einsum("ihf,bih->bif", W, torch.einsum("ihf,bif->bih", W, x.double())) + b]  # noqa: E731
        features = inputs_clear_of_kinks(lambda: sparse_features((batch, n_inst, n_feats)), pre_output)
        upstream = torch.randn(batch, n_inst, n_feats)
        expected, expected_grads = reference_with_gradients(
            lambda W, b_final: _toy_forward(W, b_final, features.double()), parameters, upstream
        )
        mistakes = _forward_mistakes(W, b, features.double())
    output = call_learner(forward, model, features.clone().to(model.W.device), what="forward")
    with single_threaded():
        actual = expect_tensor(output, (batch, n_inst, n_feats), what="forward", axes="batch, inst, feats")
        diagnose(
            actual,
            expected,
            mistakes,
            otherwise=forward_fallback(actual, expected, pre_output(features)[0], formula="ReLU(Wᵀ W x + b_final)"),
            atol=1e-4,
        )
        check_output_gradients(output, upstream, {"W": model.W, "b_final": model.b_final}, expected_grads, what="forward")
    return f"{n_inst} instances, {n_feats} features, d_hidden {model.cfg.d_hidden}, gradients too"


# Samplers: shared by generate_batch (Parts 1 and 2) and the paired generators ------------------


@contextlib.contextmanager
def single_threaded() -> Iterator[None]:
    """Run the statistics on one thread, then restore the learner's setting.

    They are many cheap operations on about a million numbers: on a machine whose other cores
    are busy, every parallel operation waits for a descheduled thread, which made the check
    ten times slower; on one thread it takes a fraction of a second anywhere.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


AXIS_LABELS = ("examples of the batch", "instances", "features")


def sample_values(output: object, shape: tuple[int, ...], *, device: torch.device, what: str, axes: str) -> Tensor:
    """The learner's sample as a float64 CPU tensor, after naming a wrong type, dtype, device or shape."""
    if isinstance(output, Tensor) and output.dtype == torch.bool:
        raise CheckFailure(
            f"`{what}` returned a boolean tensor (a presence mask?): return the values as floats, each present "
            "feature with its random magnitude and each absent one exactly 0."
        )
    if isinstance(output, Tensor) and not torch.is_floating_point(output):
        raise CheckFailure(
            f"`{what}` returned a {output.dtype} tensor: return floating-point values (an integer conversion rounds "
            "every magnitude to 0 or 1)."
        )
    if isinstance(output, Tensor) and output.device.type != device.type:
        raise CheckFailure(f"`{what}` returned a tensor on {output.device}; make it on {device}, where its inputs are (e.g. `torch.rand(..., device=...)`).")
    return expect_tensor(output, shape, what=what, axes=axes)


def draw_twice(function: Callable[..., object], *args: object, what: str) -> tuple[object, object]:
    """Two calls with the same arguments (copies of any tensors), to catch code that reseeds itself."""
    copies = lambda: [arg.clone() if isinstance(arg, Tensor) else arg for arg in args]  # noqa: E731
    return call_learner(function, *copies(), what=what), call_learner(function, *copies(), what=what)


def check_fresh_draws(first: object, second: object, *, what: str) -> None:
    if isinstance(first, Tensor) and isinstance(second, Tensor) and first.shape == second.shape and torch.equal(first, second):
        raise CheckFailure(
            f"`{what}` returned the same sample on two calls: don't set a seed inside it (torch.manual_seed), or "
            "training would see one batch over and over."
        )


def check_examples_vary(values: Tensor, probability: Tensor, *, what: str) -> None:
    """Every example of the batch identical, or with the same features present, is one draw broadcast over the batch."""
    if not values.any():
        raise CheckFailure(f"`{what}` returned only zeros: features must be present with their probability.")
    if torch.equal(values, values[:1].expand_as(values)):
        raise CheckFailure(
            f"Every example in the batch from `{what}` is the same: draw random numbers of shape [batch, ...], not one "
            "draw broadcast over the batch."
        )
    present = (values != 0)[:, (probability > 0) & (probability < 1)]
    if not present.all() and torch.equal(present, present[:1].expand_as(present)):
        raise CheckFailure(
            f"Every example in the batch from `{what}` has the same features present: decide presence with a draw of "
            "shape [batch, ...], not one draw broadcast over the batch."
        )


def check_presence_frequencies(
    present: Tensor, probability: Tensor, *, what: str, alternatives: Mapping[str, Tensor], otherwise: str
) -> None:
    """Each cell's presence frequency within its binomial tolerance of `probability`; else the first
    alternative probability that every cell matches names the mistake."""
    frequency, n = present.double().mean(0), present.shape[0]
    if frequencies_match(frequency, probability, n, false_alarm=FALSE_ALARM_PER_TEST):
        return
    if frequencies_match(frequency, torch.ones_like(probability), n, false_alarm=FALSE_ALARM_PER_TEST):
        raise CheckFailure(f"Every feature from `{what}` is non-zero in every example: absent features must be exactly 0.")
    for message, alternative in alternatives.items():
        if frequencies_match(frequency, alternative.clamp(0, 1), n, false_alarm=FALSE_ALARM_PER_TEST):
            raise CheckFailure(message)
    raise CheckFailure(otherwise)


def _co_occurrence_cells(present: Tensor, probability: Tensor, same_group: Tensor) -> dict[str, tuple[Tensor, Tensor, int]]:
    """(observed frequency, probability under independence, draws) of two events both happening,
    for every pair of cells that must be independent, grouped by the axis that separates them."""
    x = present.float()
    n_batch, n_inst, n_feats = x.shape
    p = probability.double()
    across_instances = torch.bmm(x.permute(2, 1, 0), x.permute(2, 0, 1)).double() / n_batch  # [feats, inst, inst]
    instance_pairs = torch.triu(torch.ones(n_inst, n_inst, dtype=torch.bool), diagonal=1)
    product_instances = p.T[:, :, None] * p.T[:, None, :]
    across_features = torch.bmm(x.permute(1, 2, 0), x.permute(1, 0, 2)).double() / n_batch  # [inst, feats, feats]
    feature_pairs = torch.triu(torch.ones(n_feats, n_feats, dtype=torch.bool), diagonal=1) & ~same_group
    product_features = p[:, :, None] * p[:, None, :]
    halves = n_batch // 2  # disjoint pairs of examples (2k, 2k + 1) are independent draws
    across_examples = (x[0 : 2 * halves : 2] * x[1 : 2 * halves : 2]).double().mean(0)
    return {
        "examples": (across_examples.flatten(), p.pow(2).flatten(), halves),
        "instances": (across_instances[:, instance_pairs], product_instances[:, instance_pairs], n_batch),
        "features": (across_features[:, feature_pairs], product_features[:, feature_pairs], n_batch),
    }


def check_presence_independent(
    present: Tensor, probability: Tensor, *, messages: Mapping[str, str], same_group: Tensor | None = None
) -> None:
    """Presence must be independent across examples, instances and features (except within a
    `same_group` block): every pair's co-occurrence count is binomial with the product of the
    probabilities, whatever the marginals the learner's sample happens to show."""
    n_feats = present.shape[-1]
    same_group = torch.eye(n_feats, dtype=torch.bool) if same_group is None else same_group
    cells = _co_occurrence_cells(present, probability, same_group)
    n_cells = sum(observed.numel() for observed, _, _ in cells.values())
    for axis in ("examples", "instances", "features"):
        observed, expected, n = cells[axis]
        tolerance = binomial_tolerance(expected, n, false_alarm=FALSE_ALARM_PER_TEST / max(1, n_cells))
        if ((observed - expected).abs() > tolerance).any():
            raise CheckFailure(messages[axis])


def independence_messages(what: str, features_label: str = "features") -> dict[str, str]:
    return {
        "examples": f"Presence in `{what}` depends on the other examples of the batch: draw fresh random numbers for every example.",
        "instances": (
            f"Presence in `{what}` is correlated across instances: give every instance its own draw (a draw without "
            "the inst axis broadcast over it, or one seed for every instance, shares one)."
        ),
        "features": (
            f"Presence in `{what}` is correlated across {features_label}: draw random numbers of the full shape "
            f"instead of broadcasting one draw over {features_label}."
        ),
    }


def check_values_not_shared(values: Tensor, comparisons: Mapping[str, tuple[Tensor, Tensor]]) -> None:
    """Where both are present, two values that must be drawn separately are (almost) never equal;
    `comparisons` maps the message naming the shared draw to the two aligned views to compare."""
    for message, (a, b) in comparisons.items():
        both = (a != 0) & (b != 0)
        if int(((a == b) & both).sum()) > 0.5 * int(both.sum()) > 0:
            raise CheckFailure(message)


def neighbour_comparisons(values: Tensor, what: str, labels: Sequence[str] = AXIS_LABELS) -> dict[str, tuple[Tensor, Tensor]]:
    """Each value next to its neighbour along every axis (batch, inst, feats), with the message for a shared magnitude."""
    comparisons = {}
    for axis, label in enumerate(labels):
        size = values.shape[axis]
        if size > 1:
            message = f"Present features in `{what}` share one magnitude across {label}: draw a magnitude for every (example, instance, feature)."
            comparisons[message] = (values.narrow(axis, 0, size - 1), values.narrow(axis, 1, size - 1))
    return comparisons


def check_uniform(unit: Tensor, *, what: str, otherwise: str) -> None:
    """Values that must be uniform on [0, 1]: the fraction below each decile is binomial."""
    deciles = torch.arange(1, 10, dtype=torch.float64) / 10
    if unit.numel() == 0:
        raise CheckFailure(f"`{what}` returned only zeros: features must be present with their probability.")
    below = torch.histc(unit, bins=10, min=0, max=1).cumsum(0)[:-1].double() / unit.numel()
    if not frequencies_match(below, deciles, unit.numel(), false_alarm=FALSE_ALARM_PER_TEST):
        raise CheckFailure(otherwise)


def check_unit_range(values: Tensor, probability: Tensor, *, what: str) -> None:
    """Part 1's samplers give values in [0, 1]; name the usual ways of leaving it."""
    if values.min() < 0:
        raise CheckFailure(f"`{what}` returned negative values: magnitudes must be uniform on [0, 1] (torch.rand, not torch.randn).")
    if values.max() <= 1:
        return
    if (values <= 1 / probability + 1e-6).all():
        raise CheckFailure(
            f"`{what}` returned values above 1: dividing a draw u by p gives [0, 1) only for the draw that decided "
            "presence (u < p); with a separate presence draw, use the magnitude draw as it is."
        )
    raise CheckFailure(f"`{what}` returned values above 1: magnitudes must be uniform on [0, 1] (torch.rand; torch.randn is not bounded).")


def check_magnitudes_vary(values: Tensor, *, what: str, advice: str = "draw magnitudes uniformly on [0, 1]") -> None:
    if bool(((values == 0) | (values.abs() == 1)).all()):
        raise CheckFailure(f"Every present feature in `{what}` has magnitude 1: {advice}.")


def check_unit_magnitudes(values: Tensor, presence_bound: Tensor, importance: Tensor | None, *, what: str) -> None:
    """Present values uniform on [0, 1]; when not, name magnitudes confined below the presence draw's
    bound (p, or 2p for a pair's shared draw) or below the importance."""
    magnitudes = values[values != 0]
    try:
        check_uniform(magnitudes, what=what, otherwise=f"The magnitudes of present features in `{what}` are not uniform on [0, 1].")
    except CheckFailure:
        informative = presence_bound < 0.9
        if (values <= presence_bound + 1e-6)[:, informative].all():
            raise CheckFailure(
                f"The magnitudes in `{what}` stay below the probability of the presence draw instead of spreading over "
                "[0, 1]: if you reuse that draw u as the magnitude, rescale it to [0, 1) (u / p when present means u < p); "
                "and don't multiply the magnitudes by a probability."
            ) from None
        if importance is not None and (values <= importance + 1e-6).all():
            raise CheckFailure(f"The magnitudes in `{what}` are scaled by the importance: importance only weights the loss.") from None
        raise


# generate_batch -----------------------------------------------------------------------------


def _normal_cdf(x: Tensor) -> Tensor:
    return 0.5 * (1 + torch.erf(x / 2**0.5))


def presence_alternatives(probability: Tensor, importance: Tensor) -> dict[str, Tensor]:
    """The presence probabilities that plausible mistakes give, each with the sentence naming it."""
    return {
        "Features are present with probability 1 - p: the comparison is reversed (present when the draw is below p).": 1 - probability,
        "Every instance uses the same feature probabilities: use feature_probability[inst, feat] for each instance.": probability[:1].expand_as(probability),
        "Every feature uses the same probability: use feature_probability[inst, feat] for each feature.": probability[:, :1].expand_as(probability),
        "Presence follows a normal draw (torch.randn < p): decide it with a uniform draw, torch.rand(...) < p.": _normal_cdf(probability),
        "Features are present with the importance as their probability: use feature_probability[inst, feat].": importance,
    }


def check_sparse_unit_sample(values: Tensor, probability: Tensor, importance: Tensor, *, what: str) -> None:
    """A [batch, inst, feats] sample: independent presence with `probability`, magnitudes uniform on [0, 1]."""
    check_unit_range(values, probability, what=what)
    check_examples_vary(values, probability, what=what)
    present = values != 0
    check_presence_frequencies(
        present,
        probability,
        what=what,
        alternatives=presence_alternatives(probability, importance),
        otherwise=(
            "Features are present with the wrong probability: feature f of instance i must be non-zero with "
            "probability feature_probability[i, f]."
        ),
    )
    check_presence_independent(present, probability, messages=independence_messages(what))
    check_magnitudes_vary(values, what=what)
    check_values_not_shared(values, neighbour_comparisons(values, what))
    check_unit_magnitudes(values, probability, importance, what=what)


@check("generate_batch")
def test_generate_batch(learner: object) -> str:
    generate_batch = learner_callable(learner, "generate_batch", owner_hint="ToyModel")
    model = _sampling_model()
    probability, importance = model.feature_probability.cpu().double(), model.importance.cpu().double()
    first, second = draw_twice(generate_batch, model, SAMPLE_BATCH, what="generate_batch")
    with single_threaded():
        values = sample_values(first, (SAMPLE_BATCH, *probability.shape), device=model.W.device, what="generate_batch", axes="batch, inst, feats")
        check_fresh_draws(first, second, what="generate_batch")
        check_sparse_unit_sample(values, probability, importance, what="generate_batch")
    return f"presence frequencies and magnitudes match on {SAMPLE_BATCH} samples"


# calculate_loss -----------------------------------------------------------------------------


LOSS_AXES = ("the batch", "instances", "features")
LOSS_REDUCTION = ("mean", "sum", "mean")  # over batch, inst, feats
LOSS_FIX = "average over batch and features, and sum over instances"


def reduce_loss(error: Tensor, reduction: Sequence[str]) -> Tensor:
    """Reduce a [batch, inst, feats] tensor with "mean" or "sum" over each axis."""
    for axis in reversed(range(error.dim())):
        error = error.mean(axis) if reduction[axis] == "mean" else error.sum(axis)
    return error


def loss_mistakes(per_element: Mapping[str | None, tuple[str, Tensor]]) -> dict[str, Tensor]:
    """Every combination of a per-element mistake (None: the right one) with each way of reducing it,
    named by all that is wrong in it. `per_element` maps a problem ("importance is missing") to
    (its fix, the per-element loss it gives)."""
    mistakes = {}
    for (problem, (fix, element)), reduction in itertools.product(per_element.items(), itertools.product(("mean", "sum"), repeat=3)):
        wrong_axes = [f"{'summed' if how == 'sum' else 'averaged'} over {axis}" for how, right, axis in zip(reduction, LOSS_REDUCTION, LOSS_AXES) if how != right]
        problems = ([problem] if problem else []) + ([f"the loss is {' and '.join(wrong_axes)}"] if wrong_axes else [])
        fixes = ([fix] if problem else []) + ([LOSS_FIX] if wrong_axes else [])
        if problems:
            sentence = " and ".join(problems)
            mistakes[f"{sentence[0].upper()}{sentence[1:]}: {'; '.join(fixes)}."] = reduce_loss(element, reduction)
    return mistakes


def scalar_loss(loss: object, shape: tuple[int, int, int], *, what: str) -> Tensor:
    """The learner's loss as a 0-dim float64 tensor, after naming a float, a detached loss or kept axes."""
    if isinstance(loss, float):
        raise CheckFailure(f"`{what}` returned a Python float (from .item()?): return the tensor itself, so that training can backpropagate through it.")
    if not isinstance(loss, Tensor):
        return expect_tensor(loss, (), what=what, axes="a scalar")
    if loss.numel() == shape[1] and loss.dim() <= 2:
        raise CheckFailure(f"`{what}` returned one loss per instance: sum them into a single scalar.")
    if loss.numel() != 1:
        kept = [name for name, size in zip(("batch", "inst", "feats"), shape) if size in loss.shape]
        raise CheckFailure(
            f"`{what}` returned shape {tuple(loss.shape)}, keeping the {', '.join(kept) or 'wrong'} axes: reduce it to "
            f"a single number ({LOSS_FIX})."
        )
    if not loss.requires_grad:
        raise CheckFailure(f"`{what}` returned a value cut off from the graph: don't use .item(), .detach() or torch.no_grad().")
    return expect_tensor(loss.reshape(()), (), what=what, axes="a scalar")


def check_loss_gradient(loss: Tensor, out: Tensor, expected: Tensor, *, what: str) -> None:
    """The loss's gradient with respect to the model's output must be the reference's."""
    actual = gradients(loss, {"out": out}, what=what)
    if first_gradient_mismatch(actual, {"out": expected}, rtol=1e-4, atol=1e-6 * float(expected.abs().max())):
        raise CheckFailure(
            f"The value of `{what}` is right, but its gradient with respect to `out` is not: part of it is computed "
            "from detached tensors (.detach() or .data), so training would see only part of the error."
        )


def loss_fallback(loss: Tensor, out: Tensor, expected_gradient: Tensor, *, default: str) -> str:
    """The sentence for a loss that matches no known mistake: its gradient tells a loss that is the
    right one times a constant (a stray 1/2, an extra division) from anything else."""
    actual = gradients(loss, {"out": out}, what="calculate_loss")["out"]
    factor = float((actual * expected_gradient).sum() / expected_gradient.pow(2).sum())
    proportional = torch.allclose(actual, factor * expected_gradient, rtol=1e-4, atol=1e-6 * float(expected_gradient.abs().max()))
    if not proportional or abs(factor) < 1e-3:
        return default
    if abs(factor - 0.5) < 1e-4:
        return "The loss is half of what it should be: drop the factor 1/2 (this loss has no ½ convention)."
    return (
        "The loss is the right expression times a constant factor: check what you divide by (one mean over batch "
        "and features, a sum over instances) and that nothing else scales it."
    )


def loss_inputs(batch: Tensor, target: Tensor, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """(leaf output the gradient is taken for, the learner's copy of it, the learner's copy of the batch).

    The learner's `out` is a non-leaf copy, so that an in-place change to it reaches the
    snapshot check instead of raising autograd's leaf error.
    """
    # Strictly positive, like a ReLU output but away from its kink, so that a rewrite that applies
    # relu or abs to `out` gets the same gradient.
    out_leaf = ((target + 0.3 * torch.randn_like(target)).abs() + 0.05).float().to(device).requires_grad_(True)
    return out_leaf, out_leaf.clone(), batch.float().to(device)


@check("calculate_loss")
def test_calculate_loss(learner: object) -> str:
    calculate_loss = learner_callable(learner, "calculate_loss", owner_hint="ToyModel")
    model = _random_toy_model(n_inst=5, n_features=7, d_hidden=3)
    batch = sparse_features((16, 5, 7))
    out_leaf, out_for_learner, batch_for_learner = loss_inputs(batch, batch, model.W.device)
    x, out = batch_for_learner.detach().cpu().double(), out_leaf.detach().cpu().double()
    importance = model.importance.cpu().double()

    loss = call_learner(calculate_loss, model, out_for_learner, batch_for_learner.clone(), what="calculate_loss")
    actual = scalar_loss(loss, tuple(batch.shape), what="calculate_loss")
    error = (x - out).pow(2)
    expected_gradient = -2 * importance * (x - out) / (x.shape[0] * x.shape[2])
    diagnose(
        actual,
        importance.mul(error).mean((0, 2)).sum(),
        {
            **loss_mistakes(
                {
                    None: ("", importance * error),
                    "importance is missing": ("weight each squared error by importance[inst, feat]", error),
                    "importance is applied squared (it multiplies the difference before squaring)": (
                        "weight the squared error by importance[inst, feat] itself",
                        importance.pow(2) * error,
                    ),
                    "the error is not squared": ("use (x - x')², not |x - x'|", importance * (x - out).abs()),
                }
            ),
            "The averaged error is squared: square each difference first, then average.": (importance * (x - out)).mean((0, 2)).pow(2).sum(),
        },
        otherwise=loss_fallback(
            loss,
            out_leaf,
            expected_gradient,
            default="The loss does not match the importance-weighted squared error, averaged over batch and features and summed over instances.",
        ),
    )
    check_loss_gradient(loss, out_leaf, expected_gradient, what="calculate_loss")
    return "importance weighting and reductions are right"


# correlated and anticorrelated pairs --------------------------------------------------------

PAIRS_ALONE_ALLOWED = 10  # torch.rand returns exactly 0.0 about once in 2^24 draws: such a magnitude reads as absent


def _pair_probability(n_inst: int = 5, n_pairs: int = 3) -> Tensor:
    """Probabilities in (0, 1/2], 1/2 included, none shared by two cells."""
    probability = torch.linspace(0.06, 0.5, n_inst * n_pairs)[torch.randperm(n_inst * n_pairs)]
    return probability.reshape(n_inst, n_pairs).to(get_device())


def _paired_output(learner: object, name: str, probability: Tensor) -> Tensor:
    generate = learner_function(learner, name)
    first, second = draw_twice(generate, SAMPLE_BATCH, probability, what=name)
    n_inst, n_pairs = probability.shape
    with single_threaded():
        values = sample_values(first, (SAMPLE_BATCH, n_inst, 2 * n_pairs), device=probability.device, what=name, axes="batch, inst, 2 * pairs")
        check_fresh_draws(first, second, what=name)
    return values


def _blocked_layout(values: Tensor) -> Tensor:
    """Reorder [first features..., second features...] into interleaved pairs."""
    n_pairs = values.shape[-1] // 2
    return torch.stack([values[..., :n_pairs], values[..., n_pairs:]], dim=-1).flatten(-2)


def _layout_message(what: str) -> str:
    return f"`{what}` lays pairs out as [first features..., second features...]; pair k must be features 2k and 2k + 1."


def _within_pair(n_pairs: int) -> Tensor:
    """[2 * pairs, 2 * pairs]: True where two features belong to the same pair."""
    pair = torch.arange(2 * n_pairs) // 2
    return pair[:, None] == pair[None, :]


def _pair_magnitude_comparisons(values: Tensor, what: str) -> dict[str, tuple[Tensor, Tensor]]:
    """A value next to the same feature in the neighbouring example, instance and pair."""
    labels = ("examples of the batch", "instances")
    comparisons = {
        f"Present features in `{what}` share one magnitude across {label}: draw a magnitude for every feature of every example and instance.": (
            values.narrow(axis, 0, values.shape[axis] - 1),
            values.narrow(axis, 1, values.shape[axis] - 1),
        )
        for axis, label in enumerate(labels)
    }
    comparisons[f"Present features in `{what}` share one magnitude across pairs: draw a magnitude for every feature."] = (values[..., :-2], values[..., 2:])
    return comparisons


def _check_pair_magnitudes_not_shared(values: Tensor, *, what: str) -> None:
    check_magnitudes_vary(values, what=what)
    check_values_not_shared(values, _pair_magnitude_comparisons(values, what))


def _check_correlated_magnitudes_independent(values: Tensor, *, what: str) -> None:
    """Within a pair, both magnitudes are drawn separately: never equal, and uncorrelated (Hoeffding's bound)."""
    first, second = values[..., 0::2], values[..., 1::2]
    both = (first != 0) & (second != 0)
    if (first == second)[both].double().mean() > 0.5:
        raise CheckFailure(f"Both features of a pair from `{what}` get the same magnitude: draw each feature's magnitude independently.")
    products = (first * second)[both]
    tolerance = math.sqrt(math.log(2 / FALSE_ALARM_PER_TEST) / (2 * products.numel()))
    if (products.mean() - 0.25).abs() > tolerance:
        raise CheckFailure(f"The two magnitudes of a pair from `{what}` depend on each other: draw each feature's magnitude independently.")


def _check_correlated_sample(values: Tensor, p: Tensor, *, what: str) -> None:
    check_unit_range(values, p.repeat_interleave(2, dim=-1), what=what)
    check_examples_vary(values, p.repeat_interleave(2, dim=-1), what=what)
    present = values != 0
    if int((present[..., 0::2] != present[..., 1::2]).sum()) > PAIRS_ALONE_ALLOWED:
        blocked = _blocked_layout(present)
        if int((blocked[..., 0::2] != blocked[..., 1::2]).sum()) <= PAIRS_ALONE_ALLOWED:
            raise CheckFailure(_layout_message(what))
        raise CheckFailure(f"The two features of a pair from `{what}` are not always present together: use one presence draw per pair.")
    pair_present = present[..., 0::2]
    check_presence_frequencies(
        pair_present,
        p,
        what=what,
        alternatives={
            f"Pairs from `{what}` are present with probability 1 - p: the comparison is reversed (present when the draw is below p).": 1 - p,
            f"Pairs from `{what}` are present with probability p²: one draw below p decides the pair, not two.": p.pow(2),
        },
        otherwise=f"Pairs from `{what}` are present with the wrong probability: pair k must be present with feature_probability[inst, k].",
    )
    check_presence_independent(pair_present, p, messages=independence_messages(what, "pairs"))
    _check_pair_magnitudes_not_shared(values, what=what)
    _check_correlated_magnitudes_independent(values, what=what)
    check_unit_magnitudes(values, p.repeat_interleave(2, dim=-1), None, what=what)


@check("generate_correlated_features")
def test_generate_correlated_features(learner: object) -> str:
    what = "generate_correlated_features"
    probability = _pair_probability()
    values = _paired_output(learner, what, probability)
    with single_threaded():
        _check_correlated_sample(values, probability.cpu().double(), what=what)
    return "pairs co-occur with the right probability"


def _check_anticorrelated_sample(values: Tensor, p: Tensor, *, what: str) -> None:
    per_feature = p.repeat_interleave(2, dim=-1)
    check_unit_range(values, per_feature, what=what)
    check_examples_vary(values, per_feature, what=what)
    present = values != 0
    if (present[..., 0::2] & present[..., 1::2]).any():
        blocked = _blocked_layout(present)
        if not (blocked[..., 0::2] & blocked[..., 1::2]).any():
            raise CheckFailure(_layout_message(what))
        raise CheckFailure(f"The two features of a pair from `{what}` are sometimes present together: an anticorrelated pair has at most one present.")
    check_presence_frequencies(
        present,
        per_feature,
        what=what,
        alternatives={
            f"Each feature from `{what}` is present with p/2: make the pair active with probability 2p, then pick one of its two features.": per_feature / 2,
            f"The second feature of each pair from `{what}` is present with p(1 - p): it may only appear when the first is absent, so it needs probability p / (1 - p) then.": torch.stack(
                [p, p * (1 - p)], dim=-1
            ).flatten(-2),
            f"The second feature of each pair from `{what}` is never present: when the pair is active, pick which of its two features with a fair coin.": torch.stack(
                [p, torch.zeros_like(p)], dim=-1
            ).flatten(-2),
        },
        otherwise=f"Features from `{what}` are present with the wrong probability: each feature of pair k must be present with feature_probability[inst, k].",
    )
    check_presence_independent(present, per_feature, messages=independence_messages(what, "pairs"), same_group=_within_pair(p.shape[1]))
    _check_pair_magnitudes_not_shared(values, what=what)
    check_unit_magnitudes(values, 2 * per_feature, None, what=what)  # a pair's shared draw u < 2p may be reused


@check("generate_anticorrelated_features")
def test_generate_anticorrelated_features(learner: object) -> str:
    what = "generate_anticorrelated_features"
    probability = _pair_probability()
    values = _paired_output(learner, what, probability)
    with single_threaded():
        _check_anticorrelated_sample(values, probability.cpu().double(), what=what)
    return "pairs never co-occur and each feature has the right probability"
