"""Statistical checks of random samplers: presence frequencies, independence, shared values,
uniform magnitudes. Every test compares counts with bounds that a correct sampler exceeds with
probability below the false-alarm rate (`binomial_tolerance`), so a verdict never depends on
how many random numbers the learner's code draws, or in which order. Used by the samplers of
Parts 1, 2, 4 and 8.
"""

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor

from tests.checking import CheckFailure, binomial_tolerance, call_learner, expect_tensor, frequencies_match

# The chance that a correct sampler fails a check is at most 1e-9: a sampler check runs at most
# four statistical tests (presence frequencies, independence, uniform magnitudes, and one of
# the pairs' or signs' tests), each with a quarter of it, shared again by all its cells.
FALSE_ALARM_PER_TEST = 1e-9 / 4

SAMPLE_BATCH = 10_000

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
        raise CheckFailure(
            f"`{what}` returned a tensor on {output.device}; make it on {device}, where its inputs are (e.g. "
            "`torch.rand(..., device=...)`)."
        )
    return expect_tensor(output, shape, what=what, axes=axes)


def draw_twice(function: Callable[..., object], *args: object, what: str) -> tuple[object, object]:
    """Two calls with the same arguments (copies of any tensors), to catch code that reseeds itself."""
    copies = lambda: [arg.clone() if isinstance(arg, Tensor) else arg for arg in args]  # noqa: E731
    return call_learner(function, *copies(), what=what), call_learner(function, *copies(), what=what)


def check_fresh_draws(first: object, second: object, *, what: str) -> None:
    if (
        isinstance(first, Tensor)
        and isinstance(second, Tensor)
        and first.shape == second.shape
        and torch.equal(first, second)
    ):
        raise CheckFailure(
            f"`{what}` returned the same sample on two calls: don't set a seed inside it (torch.manual_seed), or "
            "training would see one batch over and over."
        )


def check_calls_independent(first: Tensor, second: Tensor, probability: Tensor, *, what: str) -> None:
    """Two calls' samples (float64) must differ in presence and in magnitudes, not only somewhere: code that seeds
    one of its draws inside itself (a fresh seeded generator, or torch.manual_seed halfway) repeats that draw."""
    first, second = first[:CALLS_EXAMPLES], second[:CALLS_EXAMPLES]
    present_first, present_second = first != 0, second != 0
    uncertain = (probability > 0) & (probability < 1)
    if uncertain.any() and not ((present_first != present_second) & uncertain).any():
        raise CheckFailure(
            f"`{what}` returned the same features present on two calls (only the magnitudes changed): a draw is "
            "seeded inside it (torch.manual_seed or a seeded torch.Generator), so training would see one presence "
            "pattern over and over; draw with the global random state."
        )
    both = present_first & present_second
    if int(((first == second) & both).sum()) > 0.5 * int(both.sum()) > 0:
        raise CheckFailure(
            f"`{what}` gave present features the same magnitudes on two calls: a draw is seeded inside it "
            "(torch.manual_seed or a seeded torch.Generator), so training would see the same values over and over; "
            "draw with the global random state."
        )


CALLS_EXAMPLES = 2048
"""How many examples of each call the comparison of two calls looks at: a repeated draw shows in every one."""
SHARED_FRACTION = 0.02
"""Above this fraction of present values repeating, magnitudes are shared: independent float32 draws repeat one in
2^24 per pair, well under 1 % of the values of the samples compared here (rounded to float32, as they are)."""
SHARED_EXAMPLES = 256
"""The search for shared values looks at this many examples from the start of each call's batch and as many from
its middle: enough for short periods and for a batch built from two halves, and fast."""


def shared_value_pairs(values: Tensor) -> tuple[Tensor, Tensor] | None:
    """Coordinates [n, ndim] of present values that repeat (by absolute value) and of their twins, or None when
    repeats are as rare as independent draws make them: finds values shared along any axis, at any offset."""
    values = values.float().abs()
    present = values[values != 0]
    ordered = present.sort().values
    if int((ordered[1:] == ordered[:-1]).sum()) <= SHARED_FRACTION * len(present):
        return None
    flat = values.flatten()
    where = flat.nonzero().squeeze(1)
    positions = where[flat[where].argsort()]
    repeats = flat[positions[1:]] == flat[positions[:-1]]
    shape = values.shape
    return (
        torch.stack(torch.unravel_index(positions[:-1][repeats], shape), dim=1),
        torch.stack(torch.unravel_index(positions[1:][repeats], shape), dim=1),
    )


def most_common_axes(first: Tensor, second: Tensor) -> tuple[int, ...]:
    """The axes along which most pairs of coordinates differ (only those)."""
    patterns = (first != second).long() * (2 ** torch.arange(first.shape[1]))
    mode = int(patterns.sum(1).mode().values)
    return tuple(axis for axis in range(first.shape[1]) if mode >> axis & 1)


def check_no_shared_magnitudes(
    first: Tensor, second: Tensor, *, what: str, labels: Sequence[str] = AXIS_LABELS, advice: str = ""
) -> None:
    """No magnitude shared between cells of the two calls' samples [batch, ...], along any axis or offset; the
    message names the axes that share (`labels`, one per axis after the batch's, the batch's first)."""
    middle, n = first.shape[0] // 2, min(SHARED_EXAMPLES, first.shape[0] // 2)
    blocks = lambda sample: torch.cat([sample[:n], sample[middle : middle + n]])  # noqa: E731
    pairs = shared_value_pairs(torch.stack([blocks(first), blocks(second)]))
    if pairs is None:
        return
    axes = most_common_axes(*pairs)
    if axes == (0,):
        raise CheckFailure(
            f"`{what}` repeats the magnitudes of one call in the next: a draw is seeded inside it (torch.manual_seed "
            "or a seeded torch.Generator); draw with the global random state."
        )
    names = " and ".join(labels[axis - 1] for axis in axes if axis > 0)
    advice = advice or "draw a magnitude for every (example, instance, feature)"
    raise CheckFailure(f"Present features in `{what}` share one magnitude across {names}: {advice}.")


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
        raise CheckFailure(
            f"Every feature from `{what}` is non-zero in every example: absent features must be exactly 0."
        )
    for message, alternative in alternatives.items():
        if frequencies_match(frequency, alternative.clamp(0, 1), n, false_alarm=FALSE_ALARM_PER_TEST):
            raise CheckFailure(message)
    raise CheckFailure(otherwise)


def _co_occurrence_cells(
    present: Tensor, probability: Tensor, same_group: Tensor
) -> dict[str, tuple[Tensor, Tensor, int]]:
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
        "examples": (
            f"Presence in `{what}` depends on the other examples of the batch: draw fresh random numbers for every "
            "example."
        ),
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


def neighbour_comparisons(
    values: Tensor, what: str, labels: Sequence[str] = AXIS_LABELS
) -> dict[str, tuple[Tensor, Tensor]]:
    """Each value next to its neighbour along every axis (batch, inst, feats), with the message for a shared
    magnitude."""
    comparisons = {}
    for axis, label in enumerate(labels):
        size = values.shape[axis]
        if size > 1:
            message = (
                f"Present features in `{what}` share one magnitude across {label}: draw a magnitude for every "
                "(example, instance, feature)."
            )
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
        raise CheckFailure(
            f"`{what}` returned negative values: magnitudes must be uniform on [0, 1] (torch.rand, not torch.randn)."
        )
    if values.max() <= 1:
        return
    if (values <= 1 / probability + 1e-6).all():
        raise CheckFailure(
            f"`{what}` returned values above 1: dividing a draw u by p gives [0, 1) only for the draw that decided "
            "presence (u < p); with a separate presence draw, use the magnitude draw as it is."
        )
    raise CheckFailure(
        f"`{what}` returned values above 1: magnitudes must be uniform on [0, 1] (torch.rand; torch.randn is not "
        "bounded)."
    )


def check_magnitudes_vary(values: Tensor, *, what: str, advice: str = "draw magnitudes uniformly on [0, 1]") -> None:
    if bool(((values == 0) | (values.abs() == 1)).all()):
        raise CheckFailure(f"Every present feature in `{what}` has magnitude 1: {advice}.")


def check_unit_magnitudes(values: Tensor, presence_bound: Tensor, importance: Tensor | None, *, what: str) -> None:
    """Present values uniform on [0, 1]; when not, name magnitudes confined below the presence draw's
    bound (p, or 2p for a pair's shared draw) or below the importance."""
    magnitudes = values[values != 0]
    try:
        check_uniform(
            magnitudes,
            what=what,
            otherwise=f"The magnitudes of present features in `{what}` are not uniform on [0, 1].",
        )
    except CheckFailure:
        informative = presence_bound < 0.9
        if (values <= presence_bound + 1e-6)[:, informative].all():
            raise CheckFailure(
                f"The magnitudes in `{what}` stay below the probability of the presence draw instead of spreading "
                "over [0, 1]: if you reuse that draw u as the magnitude, rescale it to [0, 1) (u / p when present "
                "means u < p); and don't multiply the magnitudes by a probability."
            ) from None
        if importance is not None and (values <= importance + 1e-6).all():
            raise CheckFailure(
                f"The magnitudes in `{what}` are scaled by the importance: importance only weights the loss."
            ) from None
        raise


def _normal_cdf(x: Tensor) -> Tensor:
    return 0.5 * (1 + torch.erf(x / 2**0.5))


def presence_alternatives(probability: Tensor, importance: Tensor) -> dict[str, Tensor]:
    """The presence probabilities that plausible mistakes give, each with the sentence naming it."""
    return {
        "Features are present with probability 1 - p: the comparison is reversed (present when the draw is below p).": 1
        - probability,
        "Every instance uses the same feature probabilities: use feature_probability[inst, feat] for each "
        "instance.": probability[:1].expand_as(probability),
        "Every feature uses the same probability: use feature_probability[inst, feat] for each feature.": (
            probability[:, :1].expand_as(probability)
        ),
        "Presence follows a normal draw (torch.randn < p): decide it with a uniform draw, torch.rand(...) < "
        "p.": _normal_cdf(probability),
        "Features are present with the importance as their probability: use feature_probability[inst, "
        "feat].": importance,
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
