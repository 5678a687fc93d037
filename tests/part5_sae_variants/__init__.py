"""Checks for Part 5 (SAE variants). Call them from the notebook, e.g. `test_gated_forward(GatedToySAE)`.

Shapes differ from each other (3 instances, d_in 4, 7 latents) so that a transposed weight or a
reduction over the wrong axis fails instead of passing by accident. Every check hands the learner's
code copies of its inputs and computes what to expect from its own originals (in float64), and
wherever training depends on the exercise it backpropagates through the learner's code and compares
the gradients too. Each exercise's check lives in its own module; this one gathers them.
"""

from part_utils.reference import part5_sae_variants as reference
from tests.checking import CheckFailure
from tests.part5_sae_variants._step_functions import _check_step_grad_threshold, _step_cases
from tests.part5_sae_variants.auxk_loss import test_auxk_loss
from tests.part5_sae_variants.batch_topk_activation import test_batch_topk_activation
from tests.part5_sae_variants.gated import GATE_MARGIN, _gated_cases, _gated_expectation, test_gated_forward
from tests.part5_sae_variants.heaviside import test_heaviside
from tests.part5_sae_variants.jumprelu import test_jumprelu
from tests.part5_sae_variants.reference_parity import (
    PUBLISHED,
    build_jumprelu_sae,
    published_comparison,
    test_reference_parity,
    training_comparison,
)
from tests.part5_sae_variants.remove_parallel_component import test_remove_parallel_component
from tests.part5_sae_variants.topk_activation import test_topk_activation

__all__ = [
    # The checks, in the notebook's order.
    "test_gated_forward",
    "test_heaviside",
    "test_jumprelu",
    "test_remove_parallel_component",
    "test_reference_parity",
    "test_topk_activation",
    "test_auxk_loss",
    "test_batch_topk_activation",
    # What the suite uses besides the checks.
    "CheckFailure",
    "GATE_MARGIN",
    "PUBLISHED",
    "build_jumprelu_sae",
    "published_comparison",
    "reference",
    "training_comparison",
    "_check_step_grad_threshold",
    "_gated_cases",
    "_gated_expectation",
    "_step_cases",
]
