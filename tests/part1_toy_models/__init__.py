"""Checks for Part 1 (toy models of superposition). Call them from the notebook, e.g. `test_forward(ToyModel)`.

Learner code always gets copies of the check's inputs; expectations come from the originals.
The checks of random samplers compare counts with bounds that a correct sampler exceeds with
probability below 1e-9 (`binomial_tolerance`), so a verdict never depends on how many random
numbers the learner's code draws, or in which order. One module per exercise; Part 2 shares
the forward and loss helpers in tests/fixtures.py.
"""

from tests.checking import CheckFailure
from tests.fixtures import sparse_features
from tests.part1_toy_models.calculate_loss import test_calculate_loss
from tests.part1_toy_models.forward import test_forward
from tests.part1_toy_models.generate_anticorrelated_features import test_generate_anticorrelated_features
from tests.part1_toy_models.generate_batch import test_generate_batch
from tests.part1_toy_models.generate_correlated_features import test_generate_correlated_features

__all__ = [
    "CheckFailure",
    "sparse_features",
    "test_calculate_loss",
    "test_forward",
    "test_generate_anticorrelated_features",
    "test_generate_batch",
    "test_generate_correlated_features",
]
