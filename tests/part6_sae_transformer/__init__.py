"""Checks for Part 6 (SAEs on a small transformer). Call them from the notebook, e.g.
`test_fraction_variance_explained(fraction_variance_explained)`.

One module per exercise: `fraction_variance_explained` (5.1), `sparsity_metrics` (5.2: L0 and
firing frequencies) and `loss_recovered` (5.3: the spliced loss and the loss recovered), which
runs learner code on the check's own clean copy of the palindrome model (`_model`). Learner
code always gets copies; the expected values come from the originals.
"""

from tests.part6_sae_transformer._model import _pristine_model, _tokens, clean_model
from tests.part6_sae_transformer.fraction_variance_explained import (
    fve_cases,
    fve_mistakes,
    test_fraction_variance_explained,
)
from tests.part6_sae_transformer.loss_recovered import (
    _replacement,
    loss_cases,
    loss_recovered_mistakes,
    spliced_outcomes,
    test_loss_recovered,
    test_spliced_loss,
)
from tests.part6_sae_transformer.sparsity_metrics import (
    frequency_mistakes,
    l0_mistakes,
    latent_cases,
    test_sparsity_metrics,
)

__all__ = [
    "_pristine_model",
    "_replacement",
    "_tokens",
    "clean_model",
    "frequency_mistakes",
    "fve_cases",
    "fve_mistakes",
    "l0_mistakes",
    "latent_cases",
    "loss_cases",
    "loss_recovered_mistakes",
    "spliced_outcomes",
    "test_fraction_variance_explained",
    "test_loss_recovered",
    "test_sparsity_metrics",
    "test_spliced_loss",
]
