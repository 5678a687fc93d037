"""Check of `NeuronModel.forward`: ReLU(Wᵀ ReLU(W x) + b_final) per instance, its value and its gradients."""

import torch
import torch.nn.functional as F
from torch import Tensor

from part_utils.reference import part2_privileged_basis as reference
from tests.checking import check
from tests.fixtures import check_forward, sparse_features
from tests.part2_privileged_basis._common import forward_cases, part2_method, two_layer_relu_inputs


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
    check_forward(
        forward,
        forward_cases(reference.NeuronModel),
        ("W", "b_final"),
        draw=sparse_features,
        relu_inputs=lambda p, x: two_layer_relu_inputs(p["W"], p["W"].transpose(1, 2), p["b_final"], x),
        reference_forward=_neuron_forward,
        mistakes=lambda p, x: _neuron_mistakes(p["W"], p["b_final"], x),
        formula="ReLU(Wᵀ ReLU(W x) + b_final)",
    )
    return "ReLU on the hidden layer and on the output, gradients too"
