"""Check of `generate_correlated_features`: both features of a pair present together, with the pair's
probability, each with its own uniform magnitude."""

import math

from torch import Tensor

from tests.checking import CheckFailure, check
from tests.part1_toy_models._pairs import (
    check_pair_magnitudes_not_shared,
    check_pair_rule,
    check_pairs_fresh_and_unshared,
    paired_sample,
)
from tests.sampling import (
    FALSE_ALARM_PER_TEST,
    check_examples_vary,
    check_presence_frequencies,
    check_presence_independent,
    check_unit_magnitudes,
    check_unit_range,
    independence_messages,
)

PAIRS_ALONE_ALLOWED = 10  # torch.rand returns exactly 0.0 about once in 2^24 draws: such a magnitude reads as absent


def _check_correlated_magnitudes_independent(values: Tensor, *, what: str) -> None:
    """Within a pair, both magnitudes are drawn separately: never equal, and uncorrelated (Hoeffding's bound)."""
    first, second = values[..., 0::2], values[..., 1::2]
    both = (first != 0) & (second != 0)
    if (first == second)[both].double().mean() > 0.5:
        raise CheckFailure(
            f"Both features of a pair from `{what}` get the same magnitude: draw each feature's magnitude "
            "independently."
        )
    products = (first * second)[both]
    tolerance = math.sqrt(math.log(2 / FALSE_ALARM_PER_TEST) / (2 * products.numel()))
    if (products.mean() - 0.25).abs() > tolerance:
        raise CheckFailure(
            f"The two magnitudes of a pair from `{what}` depend on each other: draw each feature's magnitude "
            "independently."
        )


def _check_correlated_sample(values: Tensor, p: Tensor, *, what: str) -> None:
    check_unit_range(values, p.repeat_interleave(2, dim=-1), what=what)
    check_examples_vary(values, p.repeat_interleave(2, dim=-1), what=what)
    present = values != 0
    check_pair_rule(
        present,
        lambda first, second: int((first != second).sum()) > PAIRS_ALONE_ALLOWED,
        f"The two features of a pair from `{what}` are not always present together: use one presence draw per pair.",
        what=what,
    )
    pair_present = present[..., 0::2]
    check_presence_frequencies(
        pair_present,
        p,
        what=what,
        alternatives={
            f"Pairs from `{what}` are present with probability 1 - p: the comparison is reversed (present when the "
            "draw is below p).": 1 - p,
            f"Pairs from `{what}` are present with probability p²: one draw below p decides the pair, not two.": (
                p.pow(2)
            ),
        },
        otherwise=f"Pairs from `{what}` are present with the wrong probability: pair k must be present with "
        "feature_probability[inst, k].",
    )
    check_presence_independent(pair_present, p, messages=independence_messages(what, "pairs"))
    check_pair_magnitudes_not_shared(values, what=what)
    _check_correlated_magnitudes_independent(values, what=what)
    check_unit_magnitudes(values, p.repeat_interleave(2, dim=-1), None, what=what)


@check("generate_correlated_features")
def test_generate_correlated_features(learner: object) -> str:
    sample = paired_sample(learner, "generate_correlated_features")
    _check_correlated_sample(sample.values, sample.probability, what="generate_correlated_features")
    check_pairs_fresh_and_unshared(sample, what="generate_correlated_features")
    return "pairs co-occur with the right probability"
