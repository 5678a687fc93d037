"""The measures beside MMCS and absorption: one-to-one (Hungarian) matching, recall, the relative
reconstruction bias γ, and SAEBench's absorption measures with the true parent direction as the probe."""

import math

import pytest
import torch

from part_utils.matching import hungarian_match, matched_recall
from part_utils.reference import part5_sae_variants, part8_feature_absorption


def test_hungarian_matching_gives_each_feature_its_own_latent_where_mmcs_lets_two_share_one():
    # Two features both closest to latent 0; latent 1 is the second best for feature 1.
    cosine = torch.tensor([[[0.99, 0.10, 0.0], [0.95, 0.60, 0.0]]])
    matched_cosine, matched_latent = hungarian_match(cosine)
    assert matched_latent.tolist() == [[0, 1]]
    assert matched_cosine[0].tolist() == pytest.approx([0.99, 0.60])
    assert cosine.max(dim=-1).values.mean() > matched_cosine.mean()  # MMCS is more generous


def test_hungarian_matching_leaves_features_unmatched_when_latents_run_out():
    matched_cosine, matched_latent = hungarian_match(torch.tensor([[[0.2], [0.9]]]))
    assert matched_latent.tolist() == [[-1, 0]] and matched_cosine[0].tolist() == pytest.approx([0.0, 0.9])


def test_recall_counts_the_occurrences_on_which_the_matched_latent_fires():
    features = torch.tensor([[[1.0, 0.0]], [[1.0, 1.0]], [[0.0, 1.0]], [[1.0, 0.0]]])  # [batch 4, inst 1, feats 2]
    acts = torch.tensor([[[0.5, 0.0]], [[0.0, 0.7]], [[0.0, 0.2]], [[0.3, 0.0]]])  # latent 0 fires on 2 of 3
    recall = matched_recall(features, acts, torch.tensor([[0, 1]]))
    assert recall[0].tolist() == pytest.approx([2 / 3, 1.0])
    assert matched_recall(features, acts, torch.tensor([[0, -1]]))[0].tolist() == pytest.approx([2 / 3, 0.0])


def test_relative_reconstruction_bias_is_the_rescaling_that_fits_best():
    torch.manual_seed(0)
    h = torch.randn(500, 2, 4)
    shrunk = 0.8 * h
    gamma = part5_sae_variants.relative_reconstruction_bias(h, shrunk)
    assert gamma.tolist() == pytest.approx([0.8, 0.8])
    noisy = shrunk + 0.3 * torch.randn_like(h)  # errors of direction on top of the shrinking
    grid = torch.linspace(0.5, 1.5, 20_001)
    brute = min(grid, key=lambda g: ((noisy[:, 0] / g - h[:, 0]) ** 2).sum().item())
    assert part5_sae_variants.relative_reconstruction_bias(h, noisy)[0].item() == pytest.approx(brute.item(), abs=1e-4)


def test_saebench_absorption_counts_every_parent_input_and_partial_absorption():
    # One parent (direction e0) with one child (e1). Latent 0 writes the parent; latent 1 writes parent+child.
    parent_cosine = torch.tensor([[[1.0], [math.sqrt(0.5)]]])  # [inst 1, d_sae 2, parents 1]
    parent_latent = torch.tensor([[0]])
    parent_on = torch.tensor([[[True]], [[True]], [[True]], [[False]]])
    acts = torch.tensor(
        [
            [[1.0, 0.0]],  # parent alone: the parent's latent writes all of it (fraction 0)
            [[0.0, 1.4]],  # fully absorbed (fraction 1)
            [[0.5, 0.7]],  # partly absorbed: 0.5 of 0.5 + 0.7·√0.5 along the parent comes from ℓ_p
            [[0.0, 1.4]],  # parent off: not counted
        ]
    )
    fraction = part8_feature_absorption.absorption_fraction(acts, parent_on, parent_cosine, parent_latent)
    partial = 1 - 0.5 / (0.5 + 0.7 * math.sqrt(0.5))
    assert fraction.item() == pytest.approx((0 + 1 + partial) / 3)
    fires = part8_feature_absorption.carrier_fires(acts, parent_cosine, parent_latent, threshold=0.5)
    assert fires[:, 0, 0].tolist() == [False, True, True, True]
