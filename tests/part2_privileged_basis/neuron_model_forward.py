"""Check of `NeuronModel.forward`: ReLU(Wᵀ ReLU(W x) + b_final) per instance, its value and its gradients."""

import functools

import torch
import torch.nn.functional as F
from torch import Tensor

from part_utils.reference import part2_privileged_basis as reference
from tests.checking import check
from tests.fixtures import check_forward, parameter_copies, sparse_features
from tests.part2_privileged_basis._common import (
    BATCH,
    N_FEATURES,
    N_INST,
    part2_method,
    random_model,
    two_layer_relu_inputs,
)


def _neuron_forward(W: Tensor, b_final: Tensor, x: Tensor) -> Tensor:
    hidden = F.relu(torch.einsum("ihf,bif->bih", W, x))
    return F.relu(torch.einsum("ihf,bih->bif", W, hidden) + b_final)


def _neuron_mistakes(W: Tensor, b: Tensor, x: Tensor) -> dict[str, Tensor]:
    pre_hidden = torch.einsum("ihf,bif->bih", W, x)
    readout = lambda hidden: torch.einsum("ihf,bih->bif", W, hidden)  # noqa: E731
    first = lambda tensor: tensor[:1].expand_as(tensor)  # noqa: E731
    return {
        "The hidden layer has no ReLU: in a NeuronModel, h = ReLU(W x).": F.relu(readout(pre_hidden) + b),
        "The output has negative values: keep the ReLU on the output, ReLU(Wᵀh + b_final).": (
            readout(F.relu(pre_hidden)) + b
        ),
        "Neither layer has a ReLU: h = ReLU(W x), then x' = ReLU(Wᵀh + b_final).": readout(pre_hidden) + b,
        "b_final is missing from the output: x' = ReLU(Wᵀh + b_final).": F.relu(readout(F.relu(pre_hidden))),
        "b_final is added after the output ReLU; it belongs inside it: ReLU(Wᵀh + b_final).": (
            F.relu(readout(F.relu(pre_hidden))) + b
        ),
        "b_final is subtracted; add it: ReLU(Wᵀh + b_final).": F.relu(readout(F.relu(pre_hidden)) - b),
        "Every instance uses instance 0's weights: keep the inst axis of W in every step.": (
            _neuron_forward(first(W), b, x)
        ),
    }


@check("NeuronModel.forward")
def test_neuron_model_forward(learner: object) -> str:
    forward = part2_method(learner, "forward", "NeuronModel")
    model = random_model(reference.NeuronModel)
    parameters = parameter_copies(model, "W", "b_final")
    W, b = parameters["W"].double(), parameters["b_final"].double()
    check_forward(
        forward,
        model,
        parameters,
        draw=lambda: sparse_features((BATCH, N_INST, N_FEATURES)),
        relu_inputs=functools.partial(two_layer_relu_inputs, W, W.transpose(1, 2), b),
        reference_forward=_neuron_forward,
        mistakes=functools.partial(_neuron_mistakes, W, b),
        formula="ReLU(Wᵀ ReLU(W x) + b_final)",
    )
    return "ReLU on the hidden layer and on the output, gradients too"
