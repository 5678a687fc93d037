"""Checks for Part 3 (feature geometry). E.g. `test_compute_dimensionality(compute_dimensionality)`.

One module per exercise; the mutation suite also reads the cases the check runs on.
"""

from tests.part3_feature_geometry.compute_dimensionality import _cases, _known_arrangement, test_compute_dimensionality

__all__ = ["_cases", "_known_arrangement", "test_compute_dimensionality"]
