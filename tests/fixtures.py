"""Checking code that several parts' checks share; what only one part uses stays in that part's checks."""

import inspect
from collections.abc import Callable

import torch
from torch import Tensor

from tests.checking import CheckFailure, learner_callable
from tests.sampling import check_fresh_draws, draw_twice, sample_values


def fresh_sample(
    generate: Callable[..., object], *args: object, shape: tuple[int, ...], device: torch.device, what: str, axes: str
) -> Tensor:
    """A learner's sampler called twice: the first sample, checked, as float64 values, once the two differ."""
    first, second = draw_twice(generate, *args, what=what)
    values = sample_values(first, shape, device=device, what=what, axes=axes)
    check_fresh_draws(first, second, what=what)
    return values


def own_forward(learner: object, *, owner: str, inherited: type, whose: str) -> Callable[..., object]:
    """The learner's `forward` of class `owner`, failing where the class still has only `inherited`'s (`whose`)."""
    forward = learner_callable(learner, "forward", owner_hint=owner)
    if forward is inspect.getattr_static(inherited, "forward"):
        raise CheckFailure(
            f"This class has no `forward` of yours: the one it has is {whose}, so the method was never attached to the "
            f"class. Run the exercise cell that defines it (with `@add_to_class({owner})` right above `def forward`), "
            "then this check."
        )
    return forward
