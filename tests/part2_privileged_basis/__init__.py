"""Checks for Part 2 (superposition in a privileged basis). E.g. `test_neuron_model_forward(NeuronModel)`.

As in Part 1, learner code gets copies of the inputs, forward passes are checked with their
gradients, and the sampler check is statistical with binomial bounds (tests/sampling.py). One module
per exercise; the forward and loss helpers shared with Part 1 are in tests/fixtures.py.
"""

from tests.part2_privileged_basis.computation_calculate_loss import test_computation_calculate_loss
from tests.part2_privileged_basis.computation_forward import test_computation_forward
from tests.part2_privileged_basis.computation_generate_batch import test_computation_generate_batch
from tests.part2_privileged_basis.neuron_model_forward import test_neuron_model_forward

__all__ = [
    "test_computation_calculate_loss",
    "test_computation_forward",
    "test_computation_generate_batch",
    "test_neuron_model_forward",
]
