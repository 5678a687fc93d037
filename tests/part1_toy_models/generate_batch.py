"""Check of `ToyModel.generate_batch`: sparse features, uniform on [0, 1], fresh on every call (presence and
magnitudes), no magnitude shared between any two cells."""

import torch

from part_utils.reference import part1_toy_models as reference
from tests.checking import check, learner_callable
from tests.part1_toy_models._common import random_toy_model
from tests.sampling import (
    SAMPLE_BATCH,
    check_calls_independent,
    check_fresh_draws,
    check_no_shared_magnitudes,
    check_sparse_unit_sample,
    draw_twice,
    sample_values,
)


def _sampling_model() -> reference.ToyModel:
    """A model whose probabilities span (0, 1], one of them exactly 1, none shared by two cells."""
    model = random_toy_model(n_inst=6, n_features=7, d_hidden=3)
    probability = torch.linspace(0.05, 0.95, 42)[torch.randperm(42)].reshape(6, 7)
    probability[2, 3] = 1.0
    model.feature_probability = probability.to(model.W.device)
    return model


@check("generate_batch")
def test_generate_batch(learner: object) -> str:
    generate_batch = learner_callable(learner, "generate_batch", owner_hint="ToyModel")
    model = _sampling_model()
    probability, importance = model.feature_probability.cpu().double(), model.importance.cpu().double()
    first, second = draw_twice(generate_batch, model, SAMPLE_BATCH, what="generate_batch")
    shape = (SAMPLE_BATCH, *probability.shape)
    values = sample_values(first, shape, device=model.W.device, what="generate_batch", axes="batch, inst, feats")
    check_fresh_draws(first, second, what="generate_batch")
    check_sparse_unit_sample(values, probability, importance, what="generate_batch")
    axes = "batch, inst, feats"
    second_values = sample_values(second, shape, device=model.W.device, what="generate_batch", axes=axes)
    check_calls_independent(values, second_values, probability, what="generate_batch")
    check_no_shared_magnitudes(values, second_values, what="generate_batch")
    return f"presence frequencies and magnitudes match on {SAMPLE_BATCH} samples"
