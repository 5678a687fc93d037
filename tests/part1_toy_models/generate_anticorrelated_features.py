"""Check of `generate_anticorrelated_features`: at most one feature of a pair present, each with the pair's
probability, with uniform magnitudes."""

import torch
from torch import Tensor

from tests.checking import CheckFailure, check
from tests.part1_toy_models._pairs import (
    check_pair_magnitudes_not_shared,
    check_pair_rule,
    check_pairs_fresh_and_unshared,
    paired_sample,
)
from tests.sampling import (
    check_examples_vary,
    check_presence_frequencies,
    check_presence_independent,
    check_unit_magnitudes,
    check_unit_range,
    independence_messages,
)


def _within_pair(n_pairs: int) -> Tensor:
    """[2 * pairs, 2 * pairs]: True where two features belong to the same pair."""
    pair = torch.arange(2 * n_pairs) // 2
    return pair[:, None] == pair[None, :]


def _presence_alternatives(p: Tensor, per_feature: Tensor, what: str) -> dict[str, Tensor]:
    """The presence probabilities that plausible mistakes give, with the sentence naming each."""
    return {
        f"Each feature from `{what}` is present with p/2: make the pair active with probability 2p, then pick one "
        "of its two features.": per_feature / 2,
        f"The second feature of each pair from `{what}` is present with p(1 - p): it may only appear when the first "
        "is absent, so it needs probability p / (1 - p) then.": torch.stack([p, p * (1 - p)], dim=-1).flatten(-2),
        f"The second feature of each pair from `{what}` is never present: when the pair is active, pick which of its "
        "two features with a fair coin.": torch.stack([p, torch.zeros_like(p)], dim=-1).flatten(-2),
    }


def _check_choice_per_example(present: Tensor, *, what: str) -> None:
    """In every pair one feature never appears while the other does: the coin was tossed once for the whole batch."""
    first_seen, second_seen = present[..., 0::2].any(0), present[..., 1::2].any(0)  # [inst, pairs]
    if (first_seen ^ second_seen).all() and first_seen.any() and second_seen.any():
        raise CheckFailure(
            f"In `{what}`, which feature of a pair is present is decided once for the whole batch (in every pair one "
            "feature never appears): draw the coin for every example, shape [batch, inst, pairs]."
        )


def _check_anticorrelated_sample(values: Tensor, p: Tensor, *, what: str) -> None:
    per_feature = p.repeat_interleave(2, dim=-1)
    check_unit_range(values, per_feature, what=what)
    check_examples_vary(values, per_feature, what=what)
    present = values != 0
    check_pair_rule(
        present,
        lambda first, second: bool((first & second).any()),
        f"The two features of a pair from `{what}` are sometimes present together: an anticorrelated pair has at "
        "most one present.",
        what=what,
    )
    _check_choice_per_example(present, what=what)
    check_presence_frequencies(
        present,
        per_feature,
        what=what,
        alternatives=_presence_alternatives(p, per_feature, what),
        otherwise=f"Features from `{what}` are present with the wrong probability: each feature of pair k must be "
        "present with feature_probability[inst, k].",
    )
    check_presence_independent(
        present, per_feature, messages=independence_messages(what, "pairs"), same_group=_within_pair(p.shape[1])
    )
    check_pair_magnitudes_not_shared(values, what=what)
    check_unit_magnitudes(values, 2 * per_feature, None, what=what)  # a pair's shared draw u < 2p may be reused


@check("generate_anticorrelated_features")
def test_generate_anticorrelated_features(learner: object) -> str:
    sample = paired_sample(learner, "generate_anticorrelated_features")
    _check_anticorrelated_sample(sample.values, sample.probability, what="generate_anticorrelated_features")
    check_pairs_fresh_and_unshared(sample, what="generate_anticorrelated_features")
    return "pairs never co-occur and each feature has the right probability"
