"""Checks for Part 3 (feature geometry). E.g. `test_compute_dimensionality(compute_dimensionality)`."""

import torch

from part_utils.device import get_device
from tests.checking import CheckFailure, call_learner, check, diagnose, expect_tensor, learner_callable

N_INST, D_HIDDEN, N_FEATURES = 3, 4, 7


@check("compute_dimensionality")
def test_compute_dimensionality(learner: object) -> str:
    function = learner_callable(learner, "compute_dimensionality")
    W = torch.randn(N_INST, D_HIDDEN, N_FEATURES) * (torch.rand(N_INST, 1, N_FEATURES) * 2 + 0.2)
    output = call_learner(function, W.to(get_device()), what="compute_dimensionality")
    if isinstance(output, torch.Tensor) and output.shape == (N_INST, D_HIDDEN):
        raise CheckFailure("You returned one value per hidden dimension: features are the columns of W, so return [inst, feats].")
    actual = expect_tensor(output, (N_INST, N_FEATURES), what="compute_dimensionality", axes="inst, feats")
    W = W.double()
    norms = W.norm(dim=1)  # [inst, feats]
    unit = W / norms[:, None, :]
    overlaps = torch.einsum("ihf,ihg->ifg", unit, W)
    raw_overlaps = torch.einsum("ihf,ihg->ifg", W, W)
    row_unit = W / W.norm(dim=2, keepdim=True)
    off_diagonal = ~torch.eye(N_FEATURES, dtype=torch.bool)
    expected = norms.pow(2) / overlaps.pow(2).sum(-1)
    diagnose(
        actual,
        expected,
        {
            "The numerator should be the squared norm ‖W_i‖², not the norm.": norms / overlaps.pow(2).sum(-1),
            "The overlaps in the denominator must be squared: Σ_j (Ŵ_i · W_j)².": norms.pow(2) / overlaps.sum(-1),
            "The denominator leaves out j = i; the sum runs over every feature, itself included.": norms.pow(2) / (overlaps.pow(2) * off_diagonal).sum(-1),
            "Ŵ_i in the denominator is not normalised: divide feature i's column by its norm.": norms.pow(2) / raw_overlaps.pow(2).sum(-1),
            "You normalised the rows of W (over feats); features are columns, normalise over d_hidden.": norms.pow(2) / torch.einsum("ihf,ihg->ifg", row_unit, W).pow(2).sum(-1),
            "The fraction is upside down: the squared norm goes on top.": 1 / expected,
        },
        otherwise="The result does not match ‖W_i‖² / Σ_j (Ŵ_i · W_j)² for each instance and feature.",
    )
    return "squared norms over the columns, normalised overlaps summed over all features"
