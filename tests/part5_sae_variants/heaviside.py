"""The check of the `Heaviside` autograd function."""

from tests.checking import check
from tests.part5_sae_variants._common import _autograd_function
from tests.part5_sae_variants._step_functions import _check_autograd_function


@check("Heaviside")
def test_heaviside(learner: object) -> str:
    _check_autograd_function(_autograd_function(learner, "Heaviside"), "Heaviside", jump=False)
    return "forward, zero gradient to z, rectangle-kernel gradient to θ summed over the batch, for every shape of θ"
