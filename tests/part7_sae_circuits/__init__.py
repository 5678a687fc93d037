"""Checks for Part 7 (SAE circuits). Call them from the notebook, e.g. `test_jacobian_loop(jacobian_loop)`.

One module per exercise: `jacobian_loop` (2.1) and `jacobian_vectorised` (3.1, with
`latent_products`); `_common` holds the random cases and the calling of learner code that both
share, `_jacobian` the judging of a Jacobian. Learner code gets copies of every input; the
expected values come from the originals.

The checks run on the CPU: an index past the end of an axis raises a clear IndexError there,
where on CUDA it would be an asynchronous device assertion that poisons the session.
"""

from tests.part7_sae_circuits._common import check_cases, random_case
from tests.part7_sae_circuits._jacobian import _diagnose, expected_jacobian
from tests.part7_sae_circuits.jacobian_loop import test_jacobian_loop
from tests.part7_sae_circuits.jacobian_vectorised import test_jacobian_vectorised

__all__ = [
    "_diagnose",
    "check_cases",
    "expected_jacobian",
    "random_case",
    "test_jacobian_loop",
    "test_jacobian_vectorised",
]
