"""Checks for Part 8 (feature absorption). Call them from the notebook, e.g.
`test_generate_hierarchical_batch(HierarchicalToyData)`.

The sampler check compares counts with bounds that a correct sampler exceeds with probability
below 1e-9 (`binomial_tolerance`), so its verdict never depends on how many random numbers the
learner's code draws, or in which order; the hierarchy itself (no child without its parent, at
most one child per family) is checked exactly. The absorption checks are exact: they run the
learner's function on designed latents and features where every plausible misreading of the
definition gives another answer. The Matryoshka check compares values, gradients and the SAE's
counters with a float64 reimplementation, on inputs kept clear of every top-k tie.

One module per exercise (`hierarchical_sampler`, `parent_latents`, `absorption_rate`,
`matryoshka_forward`); `_common` holds the designed cases the two absorption checks share, and
`_matryoshka_model` the float64 forward that the Matryoshka check compares with.
"""

from tests.checking import KINK_MARGIN
from tests.part8_feature_absorption._common import ParentChoice, _choose_parent_latents
from tests.part8_feature_absorption._matryoshka_model import _kink_distances, _matryoshka_cases
from tests.part8_feature_absorption.absorption_rate import test_absorption_rate
from tests.part8_feature_absorption.hierarchical_sampler import (
    CONDITIONAL_FALSE_ALARM,
    SAMPLER_BATCH,
    _sampler_data,
    child_alternatives,
    parent_alternatives,
    test_generate_hierarchical_batch,
)
from tests.part8_feature_absorption.matryoshka_forward import test_matryoshka_forward
from tests.part8_feature_absorption.parent_latents import _tie_case, test_parent_latents
from tests.sampling import FALSE_ALARM_PER_TEST

__all__ = [
    # The checks, in notebook order.
    "test_generate_hierarchical_batch",
    "test_parent_latents",
    "test_absorption_rate",
    "test_matryoshka_forward",
    # What the mutation suite (tests/suite/test_part8_checks.py) reads besides the checks.
    "CONDITIONAL_FALSE_ALARM",
    "FALSE_ALARM_PER_TEST",
    "KINK_MARGIN",
    "ParentChoice",
    "SAMPLER_BATCH",
    "_choose_parent_latents",
    "_kink_distances",
    "_matryoshka_cases",
    "_sampler_data",
    "_tie_case",
    "child_alternatives",
    "parent_alternatives",
]
