"""Artefacts shipped in section_data/: they match the code that makes them and show what the text says."""

import numpy as np

from part_utils import section_artefacts
from tooling import section_artefacts as recipes


def test_part1_explorer_grid_matches_its_recipe():
    grid = section_artefacts.load_part1_explorer_grid()
    assert grid.feature_probabilities == recipes.EXPLORER_PROBABILITIES
    assert grid.importance_decays == recipes.EXPLORER_DECAYS
    assert tuple(grid.W.shape) == (len(grid.feature_probabilities), len(grid.importance_decays), 2, 5)
    with np.load(section_artefacts.PART1_EXPLORER_GRID) as data:
        recipe = recipes.EXPLORER_TRAINING
        assert data["training"].tolist() == [recipe[key] for key in ("steps", "batch_size", "lr", "seed")]


def test_part1_explorer_grid_shows_the_textbook_arrangements():
    grid = section_artefacts.load_part1_explorer_grid()
    norms = grid.W.norm(dim=2)  # [probabilities, decays, feats]
    dense, sparse = grid.feature_probabilities.index(1.0), grid.feature_probabilities.index(0.025)
    steep, flat = grid.importance_decays.index(0.5), grid.importance_decays.index(1.0)
    # Dense features: only the two most important get the two dimensions.
    assert (norms[dense, steep, :2] > 0.8).all() and (norms[dense, steep, 2:] < 0.2).all()
    # Sparse features of equal importance: all five are stored (the pentagon).
    assert (norms[sparse, flat] > 0.8).all()
