"""Check of `compute_dimensionality`: D_i = ‖W_i‖² / Σ_j (Ŵ_i · W_j)² for each instance and feature, on random W
and on a W with known dimensionalities."""

from dataclasses import dataclass

import torch
from torch import Tensor

from part_utils.device import get_device
from tests.checking import CheckFailure, call_learner, check, diagnose_among, expect_tensor, learner_function


@dataclass(frozen=True)
class Case:
    """One W to run the learner's function on, and what makes it worth running."""

    W: Tensor  # [inst, d_hidden, feats], every column non-zero
    description: str


def _random_columns(n_inst: int, d_hidden: int, n_features: int) -> Tensor:
    """Gaussian columns with norms spread over about 0.2 to 5, so a missing square or normalisation shows."""
    return torch.randn(n_inst, d_hidden, n_features) * (torch.rand(n_inst, 1, n_features) * 2 + 0.2)


def _known_arrangement() -> Tensor:
    """One instance, 4 dimensions: an antipodal pair (D = 1/2 each), a triangle (2/3 each), one feature alone (1)."""
    angles = torch.tensor([0.0, 2.0, 4.0]) * torch.pi / 3
    W = torch.zeros(1, 4, 6)
    W[0, 0, :2] = torch.tensor([1.0, -1.0])
    W[0, 1, 2:5], W[0, 2, 2:5] = angles.cos(), angles.sin()
    W[0, 3, 5] = 0.7
    return W


def _cases() -> list[Case]:
    return [
        Case(_random_columns(3, 4, 7), ""),
        Case(_random_columns(1, 5, 5), "one instance and d_hidden equal to feats"),
        Case(_random_columns(2, 6, 3), "more hidden dimensions than features"),
        Case(_known_arrangement(), "an antipodal pair, a triangle and a feature of its own"),
    ]


def _dimensionality_mistakes(W: Tensor) -> dict[str, list[Tensor]]:
    """What each plausible wrong formula gives on W (float64), each way of making it, with the sentence naming it."""
    norms = W.norm(dim=1)  # [inst, feats]
    unit = W / norms[:, None, :]
    overlaps = torch.einsum("ihf,ihg->ifg", unit, W)  # [inst, i, j] = Ŵ_i · W_j
    squared_sum = overlaps.pow(2).sum(-1)
    rows_unit = W / W.norm(dim=2, keepdim=True)
    whole_unit = W / W.norm(dim=(1, 2), keepdim=True)
    off_diagonal = ~torch.eye(W.shape[2], dtype=torch.bool)
    squared_norms = norms.pow(2)
    over_instances = W / W.norm(dim=0, keepdim=True)
    mistakes = {
        "The numerator should be the squared norm ‖W_i‖², not the norm.": norms / squared_sum,
        "The overlaps in the denominator must be squared: Σ_j (Ŵ_i · W_j)².": squared_norms / overlaps.sum(-1),
        "The denominator is the norm of the overlaps; it is the sum of their squares, Σ_j (Ŵ_i · W_j)², with no "
        "square root.": squared_norms / squared_sum.sqrt(),
        "The denominator adds absolute values; square the overlaps instead: Σ_j (Ŵ_i · W_j)².": (
            squared_norms / overlaps.abs().sum(-1)
        ),
        "The denominator averages the squared overlaps over j; it is their sum, Σ_j (Ŵ_i · W_j)².": (
            squared_norms / overlaps.pow(2).mean(-1)
        ),
        "The denominator leaves out j = i; the sum runs over every feature, itself included.": (
            squared_norms / (overlaps.pow(2) * off_diagonal).sum(-1)
        ),
        "Ŵ_i in the denominator is not normalised, or the numerator ‖W_i‖² is missing "
        "(both give 1 / Σ_j (Ŵ_i · W_j)²): D_i = ‖W_i‖² / Σ_j (Ŵ_i · W_j)², with feature i's column divided by "
        "its norm.": 1 / squared_sum,
        "Both vectors in the denominator are normalised: it is Ŵ_i · W_j, with W_j as it is.": (
            squared_norms / torch.einsum("ihf,ihg->ifg", unit, unit).pow(2).sum(-1)
        ),
        "The denominator sums (Ŵ_j · W_i)² over j, the wrong index of the overlap matrix (or the unit vector on "
        "the wrong side): it is Σ_j (Ŵ_i · W_j)², with feature i's own column normalised.": (
            squared_norms / overlaps.transpose(1, 2).pow(2).sum(-1)
        ),
        "You normalised the rows of W (over feats); features are columns, normalise over d_hidden.": (
            squared_norms / torch.einsum("ihf,ihg->ifg", rows_unit, W).pow(2).sum(-1)
        ),
        "You normalised over the instance axis (dim 0); normalise each feature's column over d_hidden (dim 1).": (
            squared_norms / torch.einsum("ihf,ihg->ifg", over_instances, W).pow(2).sum(-1)
        ),
        "The fraction is upside down: the squared norm goes on top.": squared_sum / squared_norms,
        "The overlaps mix instances: contract each instance's columns with that instance's own W.": (
            squared_norms / torch.einsum("ihf,jhg->ifg", unit, W).pow(2).sum(-1)
        ),
    }
    whole = "You normalised the whole matrix W; normalise each feature's column on its own (over d_hidden)."
    return {
        **{message: [value] for message, value in mistakes.items()},
        whole: [
            squared_norms / torch.einsum("ihf,ihg->ifg", whole_unit, W).pow(2).sum(-1),
            squared_norms / torch.einsum("ihf,ihg->ifg", W / W.norm(), W).pow(2).sum(-1),  # every instance at once
        ],
    }


def _check_case(function: object, case: Case) -> None:
    n_inst, d_hidden, n_features = case.W.shape
    output = call_learner(function, case.W.clone().to(get_device()), what="compute_dimensionality")
    if isinstance(output, Tensor) and output.shape == (n_inst, d_hidden) and d_hidden != n_features:
        raise CheckFailure(
            "You returned one value per hidden dimension: features are the columns of W, so return [inst, feats]."
        )
    if isinstance(output, Tensor) and output.shape == (n_features, n_inst) and n_features != n_inst:
        raise CheckFailure("You returned [feats, inst], transposed: return one row per instance, [inst, feats].")
    actual = expect_tensor(output, (n_inst, n_features), what="compute_dimensionality", axes="inst, feats")
    W = case.W.double()
    expected = W.pow(2).sum(1) / torch.einsum("ihf,ihg->ifg", W / W.norm(dim=1, keepdim=True), W).pow(2).sum(-1)
    diagnose_among(
        actual,
        expected,
        _dimensionality_mistakes(W),
        otherwise="The result does not match ‖W_i‖² / Σ_j (Ŵ_i · W_j)² for each instance and feature.",
        rtol=1e-3,  # a plotting quantity: an epsilon up to about 1e-5 in a normalisation must pass
    )


@check("compute_dimensionality")
def test_compute_dimensionality(learner: object) -> str:
    function = learner_function(learner, "compute_dimensionality")
    for case in _cases():
        try:
            _check_case(function, case)
        except CheckFailure as failure:
            if not case.description or "is not implemented yet" in str(failure):
                raise
            raise CheckFailure(f"{str(failure).rstrip('.')} (on a W with {case.description}).") from failure
    return "squared norms over the columns, normalised overlaps summed over all features"
