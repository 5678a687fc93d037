"""Check of `ToyModel.calculate_loss`: importance-weighted squared error, averaged over batch and features,
summed over instances."""

from torch import Tensor

from tests.checking import check, learner_callable
from tests.fixtures import check_weighted_loss, loss_mistakes, sparse_features
from tests.part1_toy_models._common import random_toy_model


def _calculate_loss_mistakes(x: Tensor, out: Tensor, importance: Tensor) -> dict[str, Tensor]:
    error = (x - out).pow(2)
    return {
        **loss_mistakes(
            {
                None: ("", importance * error),
                "importance is missing": ("weight each squared error by importance[inst, feat]", error),
                "importance is applied squared (it multiplies the difference before squaring)": (
                    "weight the squared error by importance[inst, feat] itself",
                    importance.pow(2) * error,
                ),
                "the error is not squared": ("use (x - x')², not |x - x'|", importance * (x - out).abs()),
            }
        ),
        "The averaged error is squared: square each difference first, then average.": (
            (importance * (x - out)).mean((0, 2)).pow(2).sum()
        ),
    }


@check("calculate_loss")
def test_calculate_loss(learner: object) -> str:
    calculate_loss = learner_callable(learner, "calculate_loss", owner_hint="ToyModel")
    model = random_toy_model(n_inst=5, n_features=7, d_hidden=3)
    check_weighted_loss(
        calculate_loss,
        model,
        sparse_features((16, 5, 7)),
        mistakes=_calculate_loss_mistakes,
        default="The loss does not match the importance-weighted squared error, averaged over batch and features and "
        "summed over instances.",
    )
    return "importance weighting and reductions are right"
