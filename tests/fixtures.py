"""Inputs, diagnoses and whole checks that the checks of more than one part share.

Parts 1 and 2: sparse feature batches, the check of a toy model's forward pass (value, named
mistake, gradients), and the check of an importance-weighted squared-error loss (its reductions,
its scalar, its gradient). Samplers called twice, and a learner's own method of a class. Parts 4, 5
and 8: a toy model for SAEs to read.
"""

import dataclasses
import inspect
import itertools
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor, nn

from part_utils.device import get_device
from part_utils.reference import part1_toy_models as toy
from tests.checking import (
    CheckFailure,
    call_learner,
    check_output_gradients,
    close,
    diagnose,
    expect_tensor,
    first_gradient_mismatch,
    gradients,
    inputs_clear_of_kinks,
    learner_callable,
    reference_with_gradients,
)
from tests.sampling import check_fresh_draws, draw_twice, sample_values


def sparse_features(shape: tuple[int, ...], presence: float = 0.6) -> Tensor:
    """Features uniform on [0, 1], each present with probability `presence` (0 otherwise)."""
    return torch.rand(shape) * (torch.rand(shape) < presence)


def forward_fallback(actual: Tensor, expected: Tensor, relu_input: Tensor, *, formula: str) -> str:
    """The sentence for an output that matches no known mistake, naming a non-ReLU output nonlinearity."""
    # A non-ReLU nonlinearity shows as an output right wherever the ReLU is on and wrong only where it should be 0.
    on = relu_input > 0
    right_where_on = torch.allclose(actual[on], expected[on], rtol=1e-4, atol=1e-4)
    if right_where_on and not torch.allclose(actual[~on], expected[~on], atol=1e-4):
        return (
            f"The output is right wherever the output ReLU is on, but not where its input is negative: there "
            f"{formula} is exactly 0 (a ReLU, not a leaky, smooth or shifted version)."
        )
    return (
        f"The output does not match {formula} per instance: check which axes each einsum or matmul contracts, "
        "each ReLU, and b_final."
    )


def parameter_copies(model: nn.Module, *names: str) -> dict[str, Tensor]:
    """Detached CPU copies of the model's named parameters, for the reference to compute with."""
    return {name: getattr(model, name).detach().cpu().clone() for name in names}


@dataclasses.dataclass(frozen=True)
class ForwardCase:
    """A model to run the learner's `forward` on, with how a message names it ("" for the main one)."""

    model: nn.Module
    batch: int
    description: str = ""


Parameters = Mapping[str, Tensor]
"""The model's parameters by name, as float64 CPU copies."""

AFTER_A_STEP = (
    "`forward` is right on the first call, but not after the weights change (as after a training step): it reuses "
    "something computed in an earlier call (a WᵀW or hidden layer kept on `self`?); compute everything from the "
    "current parameters on every call."
)


def _length_one_failure(case: ForwardCase, main: ForwardCase, detail: str) -> CheckFailure:
    """The failure on a model with an axis of length 1, once the main model passed."""
    sizes = f"{main.model.cfg.n_inst} instances and d_hidden {main.model.cfg.d_hidden}"
    return CheckFailure(
        f"`forward` is right on a model with {sizes}, but not on {case.description}: something drops an axis of "
        "length 1 (`.squeeze()` without a dim, or an index such as [..., 0]); keep every axis, e.g. `.squeeze(-1)` "
        f"for the one a matmul adds. There: {detail}"
    )


def check_forward(
    forward: Callable[..., object],
    cases: Sequence[ForwardCase],
    parameter_names: Sequence[str],
    *,
    draw: Callable[[tuple[int, int, int]], Tensor],
    relu_inputs: Callable[[Parameters, Tensor], Sequence[Tensor]],
    reference_forward: Callable[..., Tensor],
    mistakes: Callable[[Parameters, Tensor], dict[str, Tensor]],
    formula: str,
) -> None:
    """Check the learner's `forward`: its output and its parameters' gradients on the first case, twice (the second
    time after a training step), then on the other cases, whose axes of length 1 the notebooks' models have."""
    # `relu_inputs` lists every ReLU's input, the output's last; the inputs stay clear of every ReLU kink.
    main, *others = cases
    _check_forward_case(forward, main, parameter_names, draw, relu_inputs, reference_forward, mistakes, formula)
    _take_a_step(main.model, parameter_names)
    try:
        _check_forward_case(forward, main, parameter_names, draw, relu_inputs, reference_forward, mistakes, formula)
    except CheckFailure as failure:
        raise CheckFailure(AFTER_A_STEP) from failure
    for case in others:
        try:
            _check_forward_case(forward, case, parameter_names, draw, relu_inputs, reference_forward, {}, formula)
        except CheckFailure as failure:
            raise _length_one_failure(case, main, str(failure)) from failure


def _take_a_step(model: nn.Module, parameter_names: Sequence[str]) -> None:
    """Change every parameter a little, as an optimiser step does (in place, so the model object stays the same)."""
    with torch.no_grad():
        for name in parameter_names:
            parameter = getattr(model, name)
            parameter.add_(0.3 * torch.randn(parameter.shape).to(parameter.device))


def _check_forward_case(
    forward: Callable[..., object],
    case: ForwardCase,
    parameter_names: Sequence[str],
    draw: Callable[[tuple[int, int, int]], Tensor],
    relu_inputs: Callable[[Parameters, Tensor], Sequence[Tensor]],
    reference_forward: Callable[..., Tensor],
    mistakes: Callable[[Parameters, Tensor], dict[str, Tensor]] | Mapping[str, Tensor],
    formula: str,
) -> None:
    model = case.model
    parameters = parameter_copies(model, *parameter_names)
    as_float64 = {name: tensor.double() for name, tensor in parameters.items()}
    shape = (case.batch, model.cfg.n_inst, model.cfg.n_features)
    x = inputs_clear_of_kinks(lambda: draw(shape), lambda x: relu_inputs(as_float64, x))
    upstream = torch.randn(x.shape)
    expected, expected_grads = reference_with_gradients(
        lambda **leaves: reference_forward(**leaves, x=x.double()), parameters, upstream
    )
    wrong = mistakes(as_float64, x.double()) if callable(mistakes) else mistakes
    output = call_learner(forward, model, x.clone().to(next(model.parameters()).device), what="forward")
    actual = expect_tensor(output, tuple(x.shape), what="forward", axes="batch, inst, feats")
    fallback = forward_fallback(actual, expected, relu_inputs(as_float64, x)[-1], formula=formula)
    diagnose(actual, expected, wrong, otherwise=fallback, atol=1e-4)
    learner_parameters = {name: getattr(model, name) for name in parameter_names}
    check_output_gradients(output, upstream, learner_parameters, expected_grads, what="forward")


# Losses: importance-weighted squared error, averaged over batch and features, summed over instances ---------

LOSS_AXES = ("the batch", "instances", "features")
"""How a loss message names the axes [batch, inst, feats]."""
LOSS_REDUCTION = ("mean", "sum", "mean")
"""The right reduction over each of [batch, inst, feats]."""
LOSS_FIX = "average over batch and features, and sum over instances"
"""The fix for a loss reduced over the wrong axes."""


def reduce_loss(error: Tensor, reduction: Sequence[str]) -> Tensor:
    """Reduce a [batch, inst, feats] tensor with "mean" or "sum" over each axis."""
    for axis in reversed(range(error.dim())):
        error = error.mean(axis) if reduction[axis] == "mean" else error.sum(axis)
    return error


def loss_mistakes(per_element: Mapping[str | None, tuple[str, Tensor]]) -> dict[str, Tensor]:
    """Each per-element mistake (problem → (fix, loss); None: none) with each reduction, named by all wrong in it."""
    mistakes = {}
    reductions = itertools.product(("mean", "sum"), repeat=3)
    for (problem, (fix, element)), reduction in itertools.product(per_element.items(), reductions):
        wrong_axes = [
            f"{'summed' if how == 'sum' else 'averaged'} over {axis}"
            for how, right, axis in zip(reduction, LOSS_REDUCTION, LOSS_AXES)
            if how != right
        ]
        problems = ([problem] if problem else []) + ([f"the loss is {' and '.join(wrong_axes)}"] if wrong_axes else [])
        fixes = ([fix] if problem else []) + ([LOSS_FIX] if wrong_axes else [])
        if problems:
            sentence = " and ".join(problems)
            mistakes[f"{sentence[0].upper()}{sentence[1:]}: {'; '.join(fixes)}."] = reduce_loss(element, reduction)
    return mistakes


def normalisation_mistakes(importance: Tensor, squared_error: Tensor) -> list[tuple[str, Tensor]]:
    """A root taken, or the importance used as the weights of a weighted average, on the [batch, inst, feats]
    squared error: each sentence with what a way of making that slip gives."""
    weighted = importance * squared_error
    per_instance = weighted.mean((0, 2))
    root = (
        "The loss takes a square root (a root-mean-square error): it is the weighted mean squared error itself, "
        "with no sqrt."
    )
    weighted_average = (
        "The loss is divided by the sum of the importances (a weighted average): importance only weights each "
        f"error; {LOSS_FIX}."
    )
    return [
        (root, per_instance.sqrt().sum()),
        (root, per_instance.sum().sqrt()),
        (weighted_average, (weighted.sum(2) / importance.sum(-1)).mean(0).sum()),
        (weighted_average, weighted.sum(2).mean(0).sum() / importance.sum()),
    ]


def scalar_loss(loss: object, shape: tuple[int, int, int], *, what: str) -> Tensor:
    """The learner's loss as a 0-dim float64 tensor, after naming a float, a detached loss or kept axes."""
    if isinstance(loss, float):
        raise CheckFailure(
            f"`{what}` returned a Python float (from .item()?): return the tensor itself, so that training can "
            "backpropagate through it."
        )
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
        raise CheckFailure(
            f"`{what}` returned a value cut off from the graph: don't use .item(), .detach() or torch.no_grad()."
        )
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
    """The sentence for a loss that matches no known mistake, naming one that is the right one times a constant."""
    # The gradient tells a stray factor (a 1/2, an extra division) from anything else.
    actual = gradients(loss, {"out": out}, what="calculate_loss")["out"]
    factor = float((actual * expected_gradient).sum() / expected_gradient.pow(2).sum())
    tolerance = 1e-6 * float(expected_gradient.abs().max())
    proportional = torch.allclose(actual, factor * expected_gradient, rtol=1e-4, atol=tolerance)
    if not proportional or abs(factor) < 1e-3:
        return default
    if abs(factor - 0.5) < 1e-4:
        return "The loss is half of what it should be: drop the factor 1/2 (this loss has no ½ convention)."
    return (
        "The loss is the right expression times a constant factor: check what you divide by (one mean over batch "
        "and features, a sum over instances) and that nothing else scales it."
    )


def loss_inputs(batch: Tensor, target: Tensor, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """(leaf output the gradient is taken for, the learner's copy of it, the learner's copy of the batch)."""
    # The learner's `out` is a non-leaf copy, so that an in-place change to it reaches the snapshot check
    # instead of raising autograd's leaf error. Strictly positive, like a ReLU output but away from its
    # kink, so that a rewrite that applies relu or abs to `out` gets the same gradient.
    out_leaf = ((target + 0.3 * torch.randn_like(target)).abs() + 0.05).float().to(device).requires_grad_(True)
    return out_leaf, out_leaf.clone(), batch.float().to(device)


LossMistakes = Callable[[Tensor, Tensor, Tensor], dict[str, Tensor]]
"""(batch x, output, importance), all float64 → each wrong loss's sentence and value."""


def check_weighted_loss(
    calculate_loss: Callable[..., object],
    model: nn.Module,
    batch: Tensor,
    *,
    mistakes: LossMistakes,
    default: str,
    target: Callable[[Tensor], Tensor] = lambda x: x,
) -> None:
    """Check `calculate_loss` against the importance-weighted squared error of the output from target(batch)."""
    out_leaf, out_for_learner, batch_for_learner = loss_inputs(batch, target(batch), model.importance.device)
    x, out = batch_for_learner.detach().cpu().double(), out_leaf.detach().cpu().double()
    importance = model.importance.cpu().double()

    loss = call_learner(calculate_loss, model, out_for_learner, batch_for_learner.clone(), what="calculate_loss")
    actual = scalar_loss(loss, tuple(batch.shape), what="calculate_loss")
    difference = target(x) - out
    expected_gradient = -2 * importance * difference / (x.shape[0] * x.shape[2])
    wrong = [*mistakes(x, out, importance).items(), *normalisation_mistakes(importance, difference.pow(2))]
    expected = (importance * difference.pow(2)).mean((0, 2)).sum()
    if not close(actual, expected):
        named = next((message for message, value in wrong if close(actual, value)), None)
        raise CheckFailure(named or loss_fallback(loss, out_leaf, expected_gradient, default=default))
    check_loss_gradient(loss, out_leaf, expected_gradient, what="calculate_loss")


# Samplers and methods a learner attaches (Parts 1, 2, 5, 8) ----------------------------------------


def fresh_sample(
    generate: Callable[..., object], *args: object, shape: tuple[int, ...], device: torch.device, what: str, axes: str
) -> Tensor:
    """A learner's sampler called twice: the first sample, checked, as float64 values, once the two differ."""
    first, second = draw_twice(generate, *args, what=what)
    values = sample_values(first, shape, device=device, what=what, axes=axes)
    check_fresh_draws(first, second, what=what)
    return values


def own_method(
    learner: object, *, owner: str, inherited: type, whose: str, name: str = "forward"
) -> Callable[..., object]:
    """The learner's method `name` of class `owner`, failing where the class still has only `inherited`'s (`whose`)."""
    method = learner_callable(learner, name, owner_hint=owner)
    if method is inspect.getattr_static(inherited, name, None):
        raise CheckFailure(
            f"This class has no `{name}` of yours: the one it has is {whose}, so the method was never attached to the "
            f"class. Run the exercise cell that defines it (with `@add_to_class({owner})` right above `def {name}`), "
            "then this check."
        )
    return method


# Parts 4, 5 and 8 ----------------------------------------------------------------------------

N_INST, D_IN, N_FEATURES = 3, 4, 6


def toy_model(
    n_inst: int = N_INST, d_hidden: int = D_IN, n_features: int = N_FEATURES, device: torch.device | None = None
) -> toy.ToyModel:
    """A frozen-to-be toy model with standard-normal weights and feature probabilities 0.1 to 0.4 by instance."""
    model = toy.ToyModel(
        toy.ToyModelConfig(n_inst=n_inst, n_features=n_features, d_hidden=d_hidden),
        feature_probability=torch.linspace(0.1, 0.4, n_inst)[:, None],
        device=device if device is not None else get_device(),
    )
    with torch.no_grad():
        model.W.normal_()
    return model
