"""Check of `NeuronComputationModel.calculate_loss`: importance-weighted squared error against |x|, averaged
over batch and features, summed over instances."""

import torch
import torch.nn.functional as F
from torch import Tensor

from part_utils.reference import part2_privileged_basis as reference
from tests.checking import check
from tests.fixtures import check_weighted_loss, loss_mistakes
from tests.part2_privileged_basis._common import part2_method, random_model, signed_batch


def _computation_loss_mistakes(x: Tensor, out: Tensor, importance: Tensor) -> dict[str, Tensor]:
    error = (x.abs() - out).pow(2)
    return {
        **loss_mistakes(
            {
                None: ("", importance * error),
                "the loss compares the output with x": (
                    "the target is |x|, the absolute value of `batch` (the second argument: "
                    "calculate_loss(out, batch))",
                    importance * (x - out).pow(2),
                ),
                "the loss compares the output with ReLU(x)": (
                    "the target is |x|, which is positive for negative x too",
                    importance * (F.relu(x) - out).pow(2),
                ),
                "importance is missing": ("weight each squared error by importance[inst, feat]", error),
                "importance is applied squared (it multiplies the difference before squaring)": (
                    "weight the squared error by importance[inst, feat] itself",
                    importance.pow(2) * error,
                ),
            }
        ),
        "The error is not squared: use (|x| - x')², not ||x| - x'|.": (
            (importance * (x.abs() - out).abs()).mean((0, 2)).sum()
        ),
    }


@check("NeuronComputationModel.calculate_loss")
def test_computation_calculate_loss(learner: object) -> str:
    calculate_loss = part2_method(learner, "calculate_loss", "NeuronComputationModel")
    model = random_model(reference.NeuronComputationModel)
    check_weighted_loss(
        calculate_loss,
        model,
        signed_batch(),
        target=torch.abs,
        mistakes=_computation_loss_mistakes,
        default="The loss should be the importance-weighted squared error against |x|, averaged over batch and "
        "features, summed over instances.",
    )
    return "target |x|, importance weighting and reductions"
