"""The check of the `JumpReLU` autograd function."""

from tests.checking import check
from tests.part5_sae_variants._common import _autograd_function
from tests.part5_sae_variants._step_functions import _check_autograd_function


@check("JumpReLU")
def test_jumprelu(learner: object) -> str:
    _check_autograd_function(_autograd_function(learner, "JumpReLU"), "JumpReLU", jump=True)
    return "forward, H(z - θ) gradient to z, -(θ/ε)K gradient to θ summed over the batch, for every shape of θ"
