"""Mutation suite for Part 3's learner-facing check (tests/part3_feature_geometry.py)."""

import pytest
import torch

import tests.part3_feature_geometry as part3
from part_utils.reference.part3_feature_geometry import compute_dimensionality
from tests.suite.conftest import stub


def dimensionality_loop_float64(W):
    W = W.double()
    result = torch.empty(W.shape[0], W.shape[2], dtype=torch.float64)
    for inst in range(W.shape[0]):
        for i in range(W.shape[2]):
            w_i = W[inst, :, i]
            result[inst, i] = w_i.dot(w_i) / sum((w_i / w_i.norm()).dot(W[inst, :, j]) ** 2 for j in range(W.shape[2]))
    return result


def unit_columns(W):
    return W / W.norm(dim=1, keepdim=True)


MUTANTS = [
    (lambda W: W.norm(dim=1) / torch.einsum("ihf,ihg->ifg", unit_columns(W), W).pow(2).sum(-1), "squared norm"),
    (lambda W: W.pow(2).sum(1) / torch.einsum("ihf,ihg->ifg", unit_columns(W), W).sum(-1), "must be squared"),
    (lambda W: W.pow(2).sum(1) / (torch.einsum("ihf,ihg->ifg", unit_columns(W), W).pow(2) * (1 - torch.eye(W.shape[2]))).sum(-1), "leaves out j = i"),
    (lambda W: W.pow(2).sum(1) / torch.einsum("ihf,ihg->ifg", W, W).pow(2).sum(-1), "not normalised"),
    (lambda W: W.pow(2).sum(1) / torch.einsum("ihf,ihg->ifg", W / W.norm(dim=2, keepdim=True), W).pow(2).sum(-1), "normalised the rows"),
    (lambda W: 1 / compute_dimensionality(W), "upside down"),
    (lambda W: W.pow(2).sum(2), "one value per hidden dimension"),
]


def test_accepts_reference_and_rewrite(checks):
    checks.passes(part3.test_compute_dimensionality, compute_dimensionality)
    checks.passes(part3.test_compute_dimensionality, dimensionality_loop_float64)


@pytest.mark.parametrize(("mutant", "message"), MUTANTS)
def test_names_each_mistake(checks, mutant, message):
    checks.fails(part3.test_compute_dimensionality, mutant, message)


def test_stub_and_wrong_object(checks):
    checks.fails(part3.test_compute_dimensionality, stub, "not implemented yet")
    checks.fails(part3.test_compute_dimensionality, 7, "Pass your `compute_dimensionality` function itself")


def test_dimensionality_of_known_arrangements():
    # An antipodal pair, then three features on a triangle in the other plane: D = 1/2 and 2/3.
    angles = torch.tensor([0.0, 2.0944, 4.1888])
    triangle = torch.stack([torch.zeros(3), angles.cos(), angles.sin()])
    pair = torch.tensor([[1.0, -1.0], [0.0, 0.0], [0.0, 0.0]])
    W = torch.cat([pair, triangle], dim=1)[None]
    assert compute_dimensionality(W)[0].tolist() == pytest.approx([0.5, 0.5, 2 / 3, 2 / 3, 2 / 3], abs=1e-4)
