"""What the checks of the correlated and anticorrelated pair generators share: their inputs, the learner's
sample, and the layout and magnitude checks of features that come in pairs (pair k is features 2k and 2k + 1)."""

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from part_utils.device import get_device
from tests.checking import CheckFailure, learner_function
from tests.sampling import (
    SAMPLE_BATCH,
    check_calls_independent,
    check_fresh_draws,
    check_magnitudes_vary,
    check_no_shared_magnitudes,
    check_values_not_shared,
    draw_twice,
    sample_values,
)


def _pair_probability(n_inst: int = 5, n_pairs: int = 3) -> Tensor:
    """Probabilities in (0, 1/2], 1/2 included, none shared by two cells."""
    probability = torch.linspace(0.06, 0.5, n_inst * n_pairs)[torch.randperm(n_inst * n_pairs)]
    return probability.reshape(n_inst, n_pairs).to(get_device())


@dataclass(frozen=True)
class PairedSample:
    """The learner's samples from two calls, [batch, inst, 2 * pairs], and the probability [inst, pairs], float64."""

    values: Tensor
    second_call: Tensor
    probability: Tensor


def paired_sample(learner: object, name: str) -> PairedSample:
    """The learner's `name` called twice on the same probabilities, once the two samples differ."""
    probability = _pair_probability()
    generate = learner_function(learner, name)
    first, second = draw_twice(generate, SAMPLE_BATCH, probability, what=name)
    n_inst, n_pairs = probability.shape
    shape = (SAMPLE_BATCH, n_inst, 2 * n_pairs)
    values = sample_values(first, shape, device=probability.device, what=name, axes="batch, inst, 2 * pairs")
    check_fresh_draws(first, second, what=name)
    second_values = sample_values(second, shape, device=probability.device, what=name, axes="batch, inst, 2 * pairs")
    return PairedSample(values, second_values, probability.cpu().double())


def check_pairs_fresh_and_unshared(sample: PairedSample, *, what: str) -> None:
    """The two calls draw afresh, and no magnitude is shared between features, pairs, instances or examples."""
    check_calls_independent(
        sample.values, sample.second_call, sample.probability.repeat_interleave(2, dim=-1), what=what
    )
    check_no_shared_magnitudes(
        sample.values,
        sample.second_call,
        what=what,
        labels=("examples of the batch", "instances", "pairs"),
        advice="draw a magnitude for every feature",
    )


def _blocked_layout(values: Tensor) -> Tensor:
    """Reorder [first features..., second features...] into interleaved pairs."""
    n_pairs = values.shape[-1] // 2
    return torch.stack([values[..., :n_pairs], values[..., n_pairs:]], dim=-1).flatten(-2)


def check_pair_rule(present: Tensor, broken: Callable[[Tensor, Tensor], bool], failure: str, *, what: str) -> None:
    """Fail where `broken(first features, second features)`: as a blocked layout if its blocks keep the rule."""
    if broken(present[..., 0::2], present[..., 1::2]):
        blocked = _blocked_layout(present)
        if not broken(blocked[..., 0::2], blocked[..., 1::2]):
            raise CheckFailure(
                f"`{what}` lays pairs out as [first features..., second features...]; pair k must be features 2k and "
                "2k + 1."
            )
        raise CheckFailure(failure)


def _pair_magnitude_comparisons(values: Tensor, what: str) -> dict[str, tuple[Tensor, Tensor]]:
    """A value next to the same feature in the neighbouring example, instance and pair."""
    labels = ("examples of the batch", "instances")
    comparisons = {
        f"Present features in `{what}` share one magnitude across {label}: draw a magnitude for every feature of "
        "every example and instance.": (
            values.narrow(axis, 0, values.shape[axis] - 1),
            values.narrow(axis, 1, values.shape[axis] - 1),
        )
        for axis, label in enumerate(labels)
    }
    comparisons[
        f"Present features in `{what}` share one magnitude across pairs: draw a magnitude for every feature."
    ] = (values[..., :-2], values[..., 2:])
    return comparisons


def check_pair_magnitudes_not_shared(values: Tensor, *, what: str) -> None:
    """Magnitudes vary, and none is shared with the same feature of a neighbouring example, instance or pair."""
    check_magnitudes_vary(values, what=what)
    check_values_not_shared(values, _pair_magnitude_comparisons(values, what))
