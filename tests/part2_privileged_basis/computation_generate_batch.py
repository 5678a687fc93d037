"""Check of `NeuronComputationModel.generate_batch`: sparse features, uniform on [-1, 1], fresh on every call."""

import torch
from torch import Tensor

from part_utils.reference import part2_privileged_basis as reference
from tests.checking import CheckFailure, check, frequencies_match
from tests.part2_privileged_basis._common import N_FEATURES, N_INST, part2_method, random_model
from tests.sampling import (
    FALSE_ALARM_PER_TEST,
    SAMPLE_BATCH,
    check_calls_independent,
    check_examples_vary,
    check_fresh_draws,
    check_magnitudes_vary,
    check_no_shared_magnitudes,
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
        raise CheckFailure(
            "Values lie in [-0.5, 0.5]: torch.rand(...) - 0.5 has half the range; use 2 * torch.rand(...) - 1."
        )


def _check_signs_independent(values: Tensor) -> None:
    """Along every axis, two neighbouring present values have the same sign half the time (binomial)."""
    for axis, label in enumerate(("examples of the batch", "instances", "features")):
        a, b = values.narrow(axis, 0, values.shape[axis] - 1), values.narrow(axis, 1, values.shape[axis] - 1)
        both = (a != 0) & (b != 0)
        n = int(both.sum())
        same = ((a > 0) == (b > 0))[both].double().mean()
        half = torch.tensor([0.5], dtype=torch.float64)
        if n and not frequencies_match(same.reshape(1), half, n, false_alarm=FALSE_ALARM_PER_TEST / 3):
            raise CheckFailure(
                f"The signs of present features in `generate_batch` are shared across {label}: draw each value (or "
                "its sign) separately."
            )


def _check_signed_values(values: Tensor, probability: Tensor) -> None:
    check_magnitudes_vary(values, what="generate_batch", advice="draw values uniformly on [-1, 1]")
    check_values_not_shared(values, neighbour_comparisons(values, "generate_batch"))
    present = values != 0
    try:
        check_uniform(
            (values[present] + 1) / 2,
            what="generate_batch",
            otherwise="The values of present features are not uniform on [-1, 1].",
        )
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
    generate = part2_method(learner, "generate_batch", "NeuronComputationModel")
    model = random_model(reference.NeuronComputationModel)
    model.feature_probability = model.feature_probability.clone()
    model.feature_probability[1, 2] = 1.0  # a feature that is always present
    probability, importance = model.feature_probability.cpu().double(), model.importance.cpu().double()
    first, second = draw_twice(generate, model, SAMPLE_BATCH, what="generate_batch")
    values = sample_values(
        first,
        (SAMPLE_BATCH, N_INST, N_FEATURES),
        device=model.b_final.device,
        what="generate_batch",
        axes="batch, inst, feats",
    )
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
    second_values = sample_values(
        second, values.shape, device=model.b_final.device, what="generate_batch", axes="batch, inst, feats"
    )
    check_calls_independent(values, second_values, probability, what="generate_batch")
    check_no_shared_magnitudes(values, second_values, what="generate_batch", advice="draw a value for every cell")
    return f"presence frequencies and signed values match on {SAMPLE_BATCH} samples"
