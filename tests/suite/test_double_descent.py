"""The Part 3 double-descent bonus: the trainer is deterministic, and the saved sweep shows what the text says."""

import math
from dataclasses import asdict

import torch

from part_utils.double_descent import (
    FULL_SEEDS,
    FULL_SIZES,
    GEOMETRY_SIZES,
    DoubleDescentConfig,
    load_sweep,
    run_sweep,
    sparse_unit_inputs,
)

TINY = DoubleDescentConfig(n_features=30, steps=60, n_test=100)


def _angle_gaps(vectors: torch.Tensor) -> torch.Tensor:
    """Gaps in degrees between the sorted directions of `vectors`, wrapping round the circle."""
    angles = torch.rad2deg(torch.atan2(vectors[:, 1], vectors[:, 0])).sort().values
    return torch.diff(torch.cat([angles, angles[:1] + 360]))


def test_inputs_are_sparse_and_unit_length():
    x = sparse_unit_inputs(2, 500, DoubleDescentConfig(), torch.Generator().manual_seed(0))
    norms = x.norm(dim=-1)
    assert ((norms - 1).abs() < 1e-5).logical_or(norms == 0).all()
    assert 2 < (x > 0).sum(-1).float().mean() < 6  # about 200 * 0.02 = 4 active features


def test_tiny_sweep_shapes_and_determinism():
    first = run_sweep(sizes=(4, 16), seeds=(0, 1), cfg=TINY, geometry_sizes=(4, 16))
    second = run_sweep(sizes=(4, 16), seeds=(0, 1), cfg=TINY, geometry_sizes=(4, 16))
    assert first.train_loss.shape == first.test_loss.shape == (2, 2)
    assert first.W.shape == (2, 2, TINY.d_hidden, TINY.n_features)
    assert first.example_hidden[4].shape == (4, 2) and first.example_hidden[16].shape == (16, 2)
    assert torch.equal(first.W, second.W) and torch.equal(first.test_loss, second.test_loss)
    assert not torch.equal(first.W[0, 0], first.W[0, 1])  # the seeds differ


def test_saved_sweep_matches_its_recipe():
    sweep, cfg = load_sweep()
    assert sweep.sizes == FULL_SIZES and sweep.seeds == FULL_SEEDS
    assert asdict(cfg) == asdict(DoubleDescentConfig())
    assert sorted(sweep.example_hidden) == sorted(GEOMETRY_SIZES)


def test_saved_test_loss_has_an_interior_peak():
    sweep, cfg = load_sweep()
    zero_output_loss = 1 - (1 - cfg.feature_probability) ** cfg.n_features
    mean_test = sweep.test_loss.mean(1)
    peak = int(mean_test.argmax())
    assert 0 < peak < len(sweep.sizes) - 1
    assert mean_test[peak] > 1.5 * max(mean_test[0], mean_test[-1])
    assert mean_test[0] < zero_output_loss and mean_test[-1] < mean_test[0]  # both ends below "output zero"
    # Every seed on its own peaks inside the sweep, not at an end.
    per_seed_peaks = sweep.test_loss.argmax(0)
    assert ((per_seed_peaks > 0) & (per_seed_peaks < len(sweep.sizes) - 1)).all()
    # Training loss only grows with T.
    assert (torch.diff(sweep.train_loss.mean(1)) > 0).all()


def test_saved_geometry_switches_from_examples_to_features():
    sweep, _ = load_sweep()
    small, large = min(sweep.example_hidden), max(sweep.example_hidden)
    # Few examples: every training example's hidden vector is long, at the corners of a regular polygon.
    examples = sweep.example_hidden[small]
    assert (examples.norm(dim=1) > 0.5).all()
    assert ((_angle_gaps(examples) - 360 / small).abs() < 15).all()
    # Many examples: a handful of long feature columns form a regular polygon, the rest are near zero.
    features = sweep.W[sweep.sizes.index(large), 0].T
    long_features = features[features.norm(dim=1) > 0.5]
    assert 3 <= len(long_features) <= 12
    assert ((_angle_gaps(long_features) - 360 / len(long_features)).abs() < 15).all()
    assert (features.norm(dim=1) < 0.1).float().mean() > 0.8
    assert (sweep.example_hidden[large].norm(dim=1) < 0.1).float().mean() > 0.5
    assert math.isfinite(sweep.seconds)
