"""Exercise 2.1's check: `jacobian_loop`, the Jacobian between two SAEs' latents, one entry at a time."""

from tests.checking import check
from tests.part7_sae_circuits._common import _function
from tests.part7_sae_circuits._jacobian import _check_jacobian


@check("jacobian_loop")
def test_jacobian_loop(learner: object) -> str:
    function = _function(learner, "jacobian_loop")
    _check_jacobian(function, lambda case: case, "jacobian_loop")
    return "random cases with distinct sizes, k_in = k_out, a single token with k = 1, and float64 in, float64 out"
