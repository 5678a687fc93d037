"""Checks for Part 1 (toy models of superposition). Call them from the notebook, e.g. `test_forward(ToyModel)`.

Learner code always gets copies of the check's inputs; expectations come from the originals.
The checks of random samplers compare counts with bounds that a correct sampler exceeds with
probability below 1e-9 (`binomial_tolerance`), so a verdict never depends on how many random
numbers the learner's code draws, or in which order. Part 2 reuses the sampler helpers below.
"""

import itertools
import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from part_utils.device import get_device
from part_utils.reference import part1_toy_models as reference
from tests.checking import (
    call_learner,
    check,
    check_output_gradients,
    CheckFailure,
    diagnose,
    expect_tensor,
    first_gradient_mismatch,
    gradients,
    inputs_clear_of_kinks,
    learner_callable,
    learner_function,
    reference_with_gradients,
)
from tests.sampling import (
    FALSE_ALARM_PER_TEST,
    SAMPLE_BATCH,
    check_examples_vary,
    check_fresh_draws,
    check_magnitudes_vary,
    check_presence_frequencies,
    check_presence_independent,
    check_sparse_unit_sample,
    check_unit_magnitudes,
    check_unit_range,
    check_values_not_shared,
    draw_twice,
    independence_messages,
    sample_values,
)


# Inputs -------------------------------------------------------------------------------------


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


# Gradients ----------------------------------------------------------------------------------


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


# generate_batch -----------------------------------------------------------------------------


@check("generate_batch")
def test_generate_batch(learner: object) -> str:
    generate_batch = learner_callable(learner, "generate_batch", owner_hint="ToyModel")
    model = _sampling_model()
    probability, importance = model.feature_probability.cpu().double(), model.importance.cpu().double()
    first, second = draw_twice(generate_batch, model, SAMPLE_BATCH, what="generate_batch")
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
    _check_anticorrelated_sample(values, probability.cpu().double(), what=what)
    return "pairs never co-occur and each feature has the right probability"
