"""The check of `remove_parallel_component`, which keeps the decoder rows' norms fixed during training."""

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from part_utils.reference import part5_sae_variants as reference
from tests.checking import CheckFailure, call_learner, check, diagnose_among, expect_tensor, learner_function
from tests.part5_sae_variants._common import D_IN, D_SAE

# remove_parallel_component ----------------------------------------------------------------

# The published training normalises each decoder row as v / (‖v‖ + 1e-6) and projects with that; the
# training loop does the normalising and hands the result in, so the exercise uses the rows as given.
PROJECTION_EPS = reference.PUBLISHED_PROJECTION_EPS
PROJECTION_RTOL, PROJECTION_ATOL = 1e-9, 1e-12  # float64: tight enough to tell a second normalisation apart


def _rows_as_handed_in(d_sae: int, d_in: int) -> Tensor:
    """Unit rows (as after each training step) normalised once more the published way."""
    unit = F.normalize(torch.randn(d_sae, d_in, dtype=torch.float64), dim=-1)
    return unit / (unit.norm(dim=-1, keepdim=True) + PROJECTION_EPS)


def _check_projection(project: Callable[..., Any], W_dec: Tensor, grad: Tensor) -> None:
    d_sae, d_in = W_dec.shape
    output = call_learner(project, grad.clone(), W_dec.clone(), what="remove_parallel_component")
    actual = expect_tensor(output, (d_sae, d_in), what="remove_parallel_component", axes="d_sae, d_in")
    if output.dtype != grad.dtype:
        raise CheckFailure(
            f"`remove_parallel_component` returns {output.dtype} for {grad.dtype} inputs: keep grad's dtype (no "
            ".float(), and no new tensor made in the default dtype); the training it feeds runs in float64."
        )

    def without_parallel(rows: Tensor, times: float = 1.0) -> Tensor:
        return grad - times * (grad * rows).sum(-1, keepdim=True) * rows

    parallel = grad - without_parallel(W_dec)
    unit_rows = W_dec / W_dec.norm(dim=-1, keepdim=True)
    full_product = (
        "You used a full matrix product, (g Wᵀ) W, which mixes every row with every "
        "other; take each gradient row's dot product with its own decoder row."
    )
    mistakes: list[tuple[str, Tensor | None]] = [
        ("You returned the parallel component; return the gradient minus it.", parallel),
        ("You added the parallel component; subtract it.", grad + parallel),
        ("You returned the gradient unchanged; subtract its component along each decoder row.", grad),
        (
            "You subtracted the parallel component twice (a reflection); subtract it once.",
            without_parallel(W_dec, 2.0),
        ),
        (full_product, grad - (grad @ W_dec.T) @ W_dec),
        (full_product, grad - W_dec @ (W_dec.T @ grad)),
        (
            "The dot product runs over the wrong axis: take g · w along each row (over d_in).",
            grad - (grad * W_dec).sum(0, keepdim=True) * W_dec,
        ),
        (
            "You subtracted the dot product itself; subtract (g · w) times the row w.",
            grad - (grad * W_dec).sum(-1, keepdim=True),
        ),
        (
            "You normalise the rows again: they arrive already normalised as v / (‖v‖ + 1e-6), the published way, "
            "and normalising them to exactly 1 changes the result (by about 1e-6): use W_dec as given.",
            without_parallel(unit_rows),
        ),
        (
            "You normalise W_dec over d_sae (its columns); the rows arrive already normalised: use W_dec as given.",
            without_parallel(W_dec / W_dec.norm(dim=0, keepdim=True)),
        ),
        (
            "You divide by ‖w‖² (the projection onto a row of any length), which undoes the published 1e-6 "
            "just as normalising again would: the rows arrive normalised, so subtract (g · w) w as given.",
            grad - (grad * W_dec).sum(-1, keepdim=True) / W_dec.pow(2).sum(-1, keepdim=True) * W_dec,
        ),
        (
            "The dot products lost their row axis, so each scales a column: keep one per row as a column "
            "([d_sae, 1], with keepdim=True) so that it scales its own row.",
            grad - (grad * W_dec).sum(-1) * W_dec if d_sae == d_in else None,
        ),
        (
            "You took one dot product over the whole matrix; take one per row (sum over d_in only).",
            grad - (grad * W_dec).sum() * W_dec,
        ),
        (
            "You subtracted (g · w) times the gradient row; subtract it times the decoder row w.",
            grad - (grad * W_dec).sum(-1, keepdim=True) * grad,
        ),
    ]
    diagnose_among(
        actual,
        without_parallel(W_dec),
        [(message, wrong) for message, wrong in mistakes if wrong is not None],
        rtol=PROJECTION_RTOL,
        atol=PROJECTION_ATOL,
        otherwise="Each row should become g - (g · w) w, with w the decoder row as given and g its gradient row.",
    )


@check("remove_parallel_component")
def test_remove_parallel_component(learner: object) -> str:
    project = learner_function(learner, "remove_parallel_component")
    # Square too, and first: there a transpose, or a dot product that lost its row axis, gives numbers to name
    # instead of a shape error. Inputs are drawn before the learner's code runs.
    cases = [
        (_rows_as_handed_in(d_sae, D_IN), torch.randn(d_sae, D_IN, dtype=torch.float64)) for d_sae in (D_IN, D_SAE)
    ]
    for W_dec, grad in cases:
        _check_projection(project, W_dec, grad)
    return "each gradient row made orthogonal to its decoder row, as a new tensor"
