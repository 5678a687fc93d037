"""Mutation suite for Part 3's learner-facing check (tests/part3_feature_geometry.py)."""

import pytest
import torch
import torch.nn.functional as F

import tests.part3_feature_geometry as part3
from part_utils.reference.part1_toy_models import ToyModel
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


def dimensionality_normalize_matmul(W):
    unit = F.normalize(W, dim=1)
    overlaps = unit.transpose(1, 2) @ W  # [inst, feats, feats]
    return W.norm(dim=1) ** 2 / (overlaps**2).sum(-1)


def dimensionality_with_epsilon_in_place(W):
    norms = W.norm(dim=1, keepdim=True)
    unit = W.clone()
    unit /= norms + 1e-8  # in place on our own copy
    overlaps = torch.einsum("ihf,ihg->ifg", unit, W)
    return (W * W).sum(1) / overlaps.square().sum(-1).clamp_min(1e-12)


def dimensionality_via_gram_matrix(W):
    gram = W.transpose(1, 2) @ W  # [inst, feats, feats]: W_i · W_j
    squared_norms = torch.diagonal(gram, dim1=1, dim2=2)
    return squared_norms**2 / (gram**2).sum(-1)  # ‖W_i‖² / Σ_j (W_i · W_j)² / ‖W_i‖²


def dimensionality_vmap_small_epsilon(W):
    def one_instance(w):
        unit = w / (w.norm(dim=0) + 1e-6)
        return w.norm(dim=0) ** 2 / (unit.T @ w).pow(2).sum(-1)

    return torch.vmap(one_instance)(W)


def dimensionality_cosine_similarity(W):
    # Ŵ_i · W_j = cos(W_i, W_j) ‖W_j‖
    cosines = F.cosine_similarity(W[:, :, :, None], W[:, :, None, :], dim=1)  # [inst, i, j]
    norms = torch.linalg.vector_norm(W, dim=1)
    return norms**2 / (cosines * norms[:, None, :]).pow(2).sum(-1)


def unit_columns(W):
    return W / W.norm(dim=1, keepdim=True)


def _overlaps(a, b):
    return torch.einsum("ihf,ihg->ifg", a, b)


def normalises_in_place(W):
    W /= W.norm(dim=1, keepdim=True)  # the caller's W is now normalised
    return 1 / _overlaps(W, W).pow(2).sum(-1)


def squeezes_instances(W):
    W = W.squeeze()  # drops the inst axis when there is one instance
    unit = W / W.norm(dim=-2, keepdim=True)
    overlaps = unit.transpose(-1, -2) @ W
    return W.pow(2).sum(-2) / overlaps.pow(2).sum(-1)


def rows_when_square(W):
    # Correct on every W except a square one: normalises over the last axis when the sizes agree.
    dim = 2 if W.shape[1] == W.shape[2] else 1
    unit = W / W.norm(dim=dim, keepdim=True)
    return W.pow(2).sum(1) / _overlaps(unit, W).pow(2).sum(-1)


MUTANTS = [
    (lambda W: W.norm(dim=1) / _overlaps(unit_columns(W), W).pow(2).sum(-1), "squared norm"),
    (lambda W: W.pow(2).sum(1) / _overlaps(unit_columns(W), W).sum(-1), "must be squared"),
    (
        lambda W: W.pow(2).sum(1) / (_overlaps(unit_columns(W), W).pow(2) * (1 - torch.eye(W.shape[2]))).sum(-1),
        "leaves out j = i",
    ),
    (lambda W: W.pow(2).sum(1) / _overlaps(W, W).pow(2).sum(-1), "not normalised"),
    (lambda W: W.pow(2).sum(1) / _overlaps(W / W.norm(dim=2, keepdim=True), W).pow(2).sum(-1), "normalised the rows"),
    (lambda W: 1 / compute_dimensionality(W), "upside down"),
    (lambda W: W.pow(2).sum(2), "one value per hidden dimension"),
    (lambda W: W.pow(2).sum(1) / _overlaps(unit_columns(W), W).abs().sum(-1), "adds absolute values"),
    (
        lambda W: W.pow(2).sum(1) / _overlaps(unit_columns(W), unit_columns(W)).pow(2).sum(-1),
        "Both vectors .* are normalised",
    ),
    (lambda W: W.pow(2).sum(1) / _overlaps(W, unit_columns(W)).pow(2).sum(-1), "wrong index of the overlap matrix"),
    (lambda W: W.pow(2).sum(1) / _overlaps(unit_columns(W), W).pow(2).sum(-2), "wrong index of the overlap matrix"),
    (
        lambda W: W.pow(2).sum(1) / _overlaps(W / W.norm(dim=(1, 2), keepdim=True), W).pow(2).sum(-1),
        "normalised the whole matrix",
    ),
    (lambda W: 1 / _overlaps(unit_columns(W), W).pow(2).sum(-1), "numerator ‖W_i‖² is missing"),
    (lambda W: W.pow(2).sum(1) / torch.einsum("ihf,jhg->ifg", unit_columns(W), W).pow(2).sum(-1), "mix instances"),
    (lambda W: W.pow(2).sum(1) / _overlaps(unit_columns(W), W).norm(dim=-1), "norm of the overlaps"),
    (normalises_in_place, "changed `W` in place"),
    (squeezes_instances, r"shape \(5,\).*\(on a W with one instance"),
    (lambda W: W.pow(2).sum(1) / _overlaps(W / W.norm(dim=0, keepdim=True), W).pow(2).sum(-1), "instance axis"),
    (lambda W: W.pow(2).sum(1) / _overlaps(unit_columns(W), W).pow(2).mean(-1), "averages the squared overlaps"),
    (lambda W: compute_dimensionality(W).T, r"\[feats, inst\], transposed"),
    (lambda W: W.pow(2).sum(1) / _overlaps(W / W.norm(), W).pow(2).sum(-1), "normalised the whole matrix"),
    (rows_when_square, r"normalised the rows .*\(on a W with one instance and d_hidden equal to feats\)"),
]


def test_accepts_reference_and_rewrites(checks):
    for rewrite in (
        compute_dimensionality,
        dimensionality_loop_float64,
        dimensionality_normalize_matmul,
        dimensionality_with_epsilon_in_place,
        dimensionality_via_gram_matrix,
        dimensionality_vmap_small_epsilon,
        dimensionality_cosine_similarity,
    ):
        checks.passes(part3.test_compute_dimensionality, rewrite)


@pytest.mark.parametrize(("mutant", "message"), MUTANTS)
def test_names_each_mistake(checks, mutant, message):
    checks.fails(part3.test_compute_dimensionality, mutant, message)


def test_stub_and_wrong_object(checks):
    checks.fails(part3.test_compute_dimensionality, stub, "not implemented yet")
    checks.fails(part3.test_compute_dimensionality, 7, "Pass your `compute_dimensionality` function itself")
    checks.fails(part3.test_compute_dimensionality, ToyModel, "is a function of its own, not a method")


def test_every_case_has_non_zero_columns_as_the_text_promises():
    for case in part3._cases():
        assert (case.W.norm(dim=1) > 0.1).all(), case.description


def test_the_known_arrangement_gives_its_fractions():
    expected = [0.5, 0.5, 2 / 3, 2 / 3, 2 / 3, 1.0]
    assert compute_dimensionality(part3._known_arrangement())[0].tolist() == pytest.approx(expected, abs=1e-5)


def test_dimensionality_of_known_arrangements():
    # An antipodal pair, then three features on a triangle in the other plane: D = 1/2 and 2/3.
    angles = torch.tensor([0.0, 2.0944, 4.1888])
    triangle = torch.stack([torch.zeros(3), angles.cos(), angles.sin()])
    pair = torch.tensor([[1.0, -1.0], [0.0, 0.0], [0.0, 0.0]])
    W = torch.cat([pair, triangle], dim=1)[None]
    assert compute_dimensionality(W)[0].tolist() == pytest.approx([0.5, 0.5, 2 / 3, 2 / 3, 2 / 3], abs=1e-4)
