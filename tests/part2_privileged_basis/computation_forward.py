"""Check of `NeuronComputationModel.forward`: ReLU(W2 ReLU(W1 x) + b_final) per instance, its value and its
gradients."""

import torch
import torch.nn.functional as F
from torch import Tensor

from part_utils.reference import part2_privileged_basis as reference
from tests.checking import check
from tests.fixtures import check_forward
from tests.part2_privileged_basis._common import forward_cases, part2_method, signed_batch, two_layer_relu_inputs


def _computation_forward(W1: Tensor, W2: Tensor, b_final: Tensor, x: Tensor) -> Tensor:
    hidden = F.relu(torch.einsum("ihf,bif->bih", W1, x))
    return F.relu(torch.einsum("ifh,bih->bif", W2, hidden) + b_final)


def _computation_mistakes(W1: Tensor, W2: Tensor, b: Tensor, x: Tensor) -> dict[str, Tensor]:
    pre_hidden = torch.einsum("ihf,bif->bih", W1, x)
    readout = lambda hidden: torch.einsum("ifh,bih->bif", W2, hidden)  # noqa: E731
    swapped_hidden = F.relu(torch.einsum("ifh,bif->bih", W2, x))
    return {
        "The hidden layer has no ReLU: h = ReLU(W1 x).": F.relu(readout(pre_hidden) + b),
        "The output has negative values: x' = ReLU(W2 h + b_final).": readout(F.relu(pre_hidden)) + b,
        "You decoded with W1ᵀ; this model has its own output weights W2.": F.relu(
            torch.einsum("ihf,bih->bif", W1, F.relu(pre_hidden)) + b
        ),
        "W1 and W2 swap roles: W1 [inst, d_hidden, feats] reads the input, W2 [inst, feats, d_hidden] writes the "
        "output.": F.relu(torch.einsum("ihf,bih->bif", W1, swapped_hidden) + b),
        "b_final is missing from the output: x' = ReLU(W2 h + b_final).": F.relu(readout(F.relu(pre_hidden))),
        "b_final is added after the output ReLU; it belongs inside it: ReLU(W2 h + b_final).": (
            F.relu(readout(F.relu(pre_hidden))) + b
        ),
        "The output takes an absolute value instead of a ReLU: the model must learn |x| itself, "
        "x' = ReLU(W2 h + b_final).": (readout(F.relu(pre_hidden)) + b).abs(),
        "The input goes in as |x|: the model must compute the absolute value itself, so feed x as it is.": (
            _computation_forward(W1, W2, b, x.abs())
        ),
    }


@check("NeuronComputationModel.forward")
def test_computation_forward(learner: object) -> str:
    forward = part2_method(learner, "forward", "NeuronComputationModel")
    check_forward(
        forward,
        forward_cases(reference.NeuronComputationModel),
        ("W1", "W2", "b_final"),
        draw=signed_batch,
        relu_inputs=lambda p, x: two_layer_relu_inputs(p["W1"], p["W2"], p["b_final"], x),
        reference_forward=_computation_forward,
        mistakes=lambda p, x: _computation_mistakes(p["W1"], p["W2"], p["b_final"], x),
        formula="ReLU(W2 ReLU(W1 x) + b_final)",
    )
    return "two weight matrices, both ReLUs, gradients too"
