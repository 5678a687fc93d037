"""Checks for Part 4 (SAEs on the toy model). Call them from the notebook, e.g. `test_forward(ToySAE)`.

The shapes used differ from each other (3 instances, d_in 4, 6 features, 7 latents) so that a
transposed weight or a reduction over the wrong axis fails instead of passing by accident; each
check then repeats on the shapes where hidden assumptions break (a tied SAE, one instance, a
batch of one, d_in equal to d_sae, an instance with nothing to do).

Learner code always gets copies of the check's inputs; expectations come from the originals, and
every tensor the SAE holds is guarded against in-place changes. Where training depends on an
exercise, the check backpropagates through the learner's code and compares the gradients.
Statistical verdicts compare counts with bounds that a correct implementation exceeds with
probability below 1e-9 (`binomial_tolerance`), so they never depend on how many random numbers
the learner's code draws, or in which order.

One module per exercise (resample_advanced's designed cases are in `_advanced_design`); what several
share is in `_common` and `_resampling`.
"""

from tests.part4_toy_sae._advanced_design import ADVANCED_BATCH, _main_advanced_case
from tests.part4_toy_sae._common import FALSE_ALARM, _float64, _sae_parameters, _sae_terms
from tests.part4_toy_sae.forward import test_forward
from tests.part4_toy_sae.generate_batch import test_generate_batch
from tests.part4_toy_sae.init import test_init
from tests.part4_toy_sae.max_cosine_similarity import test_max_cosine_similarity
from tests.part4_toy_sae.resample_advanced import (
    DrawnBatch,
    _check_advanced_case,
    _group_probabilities,
    _wrong_weightings,
    test_resample_advanced,
)
from tests.part4_toy_sae.resample_simple import test_resample_simple
from tests.part4_toy_sae.w_dec_normalized import test_W_dec_normalized

__all__ = [
    # The checks, in the order of the exercises.
    "test_init",
    "test_W_dec_normalized",
    "test_generate_batch",
    "test_forward",
    "test_max_cosine_similarity",
    "test_resample_simple",
    "test_resample_advanced",
    # What the suite and other parts' checks read from here.
    "_check_advanced_case",
    "_float64",
    "_group_probabilities",
    "_main_advanced_case",
    "_sae_parameters",
    "_sae_terms",
    "_wrong_weightings",
    "ADVANCED_BATCH",
    "DrawnBatch",
    "FALSE_ALARM",
]
