"""Exercise 5.1's check: the fraction of variance explained (FVE) of a reconstruction.

Inputs have non-zero means that differ between dimensions, and shapes that differ from each
other (37 or 41 tokens, 5 or 7 dimensions), so that a reduction over the wrong axis fails
instead of passing by accident; further cases cover few tokens (where torch.var's n − 1
shows), float64 with a reconstruction worse than the mean (a negative FVE, which a clamp hides)
and a single dimension.
"""

import torch
from torch import Tensor

from part_utils.reference import part6_sae_transformer as reference
from tests.checking import call_learner, check, diagnose_among, expect_number, globals_hint, learner_callable


def _copies(*tensors: Tensor) -> tuple[Tensor, ...]:
    return tuple(tensor.clone() for tensor in tensors)


def _activations(
    n_tokens: int, scales: list[float], offset: float, noise: float, dtype: torch.dtype = torch.float32
) -> tuple[Tensor, Tensor]:
    """x with a different non-zero mean and spread in each dimension, and x_hat = x + noise + a per-dimension bias."""
    d = len(scales)
    means = offset * torch.linspace(0.5, 2.0, d, dtype=torch.float64)
    x = torch.randn(n_tokens, d, dtype=torch.float64) * torch.tensor(scales, dtype=torch.float64) + means
    x_hat = x + noise * torch.randn_like(x) + 0.3 * torch.linspace(1.0, 2.0, d, dtype=torch.float64)
    return x.to(dtype), x_hat.to(dtype)


def fve_cases() -> list[tuple[Tensor, Tensor]]:
    return [
        _activations(37, [1.0, 2.0, 0.5, 1.5, 3.0], offset=3.0, noise=0.6),
        _activations(41, [1.0, 0.3, 2.0, 1.2, 0.8, 2.5, 1.7], offset=10.0, noise=0.8),
        _activations(6, [1.0, 2.0, 0.7], offset=2.0, noise=0.4),  # few tokens: n / (n − 1) = 1.2
        # worse than predicting the mean: a negative FVE
        _activations(9, [0.5, 1.5, 1.0, 2.0], offset=4.0, noise=2.5, dtype=torch.float64),
        _activations(23, [1.5], offset=5.0, noise=0.4),  # a single dimension
    ]


def fve_mistakes(x: Tensor, x_hat: Tensor) -> dict[str, list[Tensor]]:
    """What realistic wrong versions of FVE give on (x, x_hat), each under the sentence that names it."""
    x, x_hat = x.double(), x_hat.double()
    n, d = x.shape
    error = x - x_hat
    centred = x - x.mean(dim=0)
    errors, deviations = error.pow(2).sum(), centred.pow(2).sum()
    right = 1 - errors / deviations
    about_scalar_mean = (x - x.mean()).pow(2).sum()

    def fve(numerator: Tensor, denominator: Tensor) -> Tensor:
        return 1 - numerator / denominator

    return {
        (
            "The variance is measured about zero: subtract the mean activation vector (the mean over tokens) "
            "from x before squaring."
        ): [fve(errors, x.pow(2).sum())],
        (
            "x is centred on the single number x.mean(), the mean of every entry (as torch.var(x) without dim is): "
            "centre each dimension on its own mean over tokens, x.mean(dim=0)."
        ): [
            fve(errors, about_scalar_mean),
            fve(errors / (n * d), about_scalar_mean / (n * d - 1)),
        ],
        (
            "The variance is torch.var's default, which divides by tokens − 1 (unbiased) where the squared errors "
            "are divided by tokens: pass correction=0, or sum the squared deviations as the formula does."
        ): [fve(errors, deviations * n / (n - 1))],
        (
            "The errors are centred too (a variance of x − x_hat): the numerator is the plain sum of squared "
            "errors ‖x_t − x̂_t‖², their mean included."
        ): [fve((error - error.mean(dim=0)).pow(2).sum(), deviations)],
        (
            "This is 1 − var(x − x_hat) / var(x) over all entries: the numerator is the plain sum of squared errors, "
            "and x is centred on its mean over tokens, one per dimension."
        ): [fve((error - error.mean()).pow(2).sum(), about_scalar_mean)],
        (
            "The mean is taken over the wrong dimension: subtract the mean over tokens (dim 0), "
            "one mean per dimension of d."
        ): [fve(errors, (x - x.mean(dim=1, keepdim=True)).pow(2).sum())],
        "This is the fraction of variance *unexplained*: return 1 minus it.": [errors / deviations],
        (
            "Each dimension's FVE is averaged: sum the squared errors and the squared deviations over all dimensions "
            "first, then divide once."
        ): [fve(error.pow(2).sum(dim=0), (x - x.mean(dim=0)).pow(2).sum(dim=0)).mean()],
        (
            "Each token's FVE is averaged: sum the squared errors and the squared deviations over all tokens first, "
            "then divide once."
        ): [fve(error.pow(2).sum(dim=1), (x - x.mean(dim=0)).pow(2).sum(dim=1)).mean()],
        (
            "The denominator uses x_hat (its variance, or its mean); it should be the squared deviations of x from "
            "x's own mean over tokens."
        ): [
            fve(errors, (x_hat - x_hat.mean(dim=0)).pow(2).sum()),
            fve(errors, (x - x_hat.mean(dim=0)).pow(2).sum()),
        ],
        (
            "One sum is averaged and the other is not: reduce the squared errors and the squared deviations the same "
            "way (both summed, or both averaged)."
        ): [
            fve(errors / n, deviations),
            fve(errors / (n * d), deviations),
            fve(errors, deviations / n),
            fve(errors, deviations / (n * d)),
        ],
        (
            "This compares x_hat's spread with x's (a ratio of variances, or the explained sum of squares): "
            "FVE is 1 − squared errors / squared deviations of x."
        ): [
            (x_hat - x_hat.mean(dim=0)).pow(2).sum() / deviations,
            (x_hat - x.mean(dim=0)).pow(2).sum() / deviations,
        ],
        "The distances are not squared: FVE compares sums of *squared* distances (e.g. a norm, squared).": [
            fve(error.norm(), centred.norm()),
            fve(error.norm(dim=-1).sum(), centred.norm(dim=-1).sum()),
            fve(error.abs().sum(), centred.abs().sum()),
        ],
        (
            "Only one of the two sums is of squares: square both the errors and the deviations "
            "before summing (a norm, squared, or .pow(2))."
        ): [
            fve(error.norm(), deviations),
            fve(errors, centred.norm()),
            fve(error.abs().sum(), deviations),
            fve(errors, centred.abs().sum()),
        ],
        (
            "FVE is clipped at 0 (or made positive): a reconstruction worse than predicting the mean activation "
            "has a negative FVE, and the score must show it, so do not clamp it or take its absolute value."
        ): [right.clamp(min=0.0), right.abs()] if right < 0 else [],
    }


@check("fraction_variance_explained")
def test_fraction_variance_explained(learner: object) -> str:
    function = learner_callable(learner, "fraction_variance_explained")
    what = "fraction_variance_explained(x, x_hat)"
    for x, x_hat in fve_cases():
        n, d = x.shape
        per_axis = {
            d: (
                f"`{what}` returned one value per dimension ([d]): sum the squared errors and deviations over the "
                "dimensions too, so the result is one number."
            ),
            n: (
                f"`{what}` returned one value per token ([tokens]): sum the squared errors and deviations over the "
                "tokens too, so the result is one number."
            ),
        }
        result = call_learner(function, *_copies(x, x_hat), what=what)
        actual = expect_number(result, what, per_axis=per_axis)
        diagnose_among(
            actual,
            reference.fraction_variance_explained(x.double(), x_hat.double()),
            fve_mistakes(x, x_hat),
            otherwise=(
                "FVE differs from the reference: 1 − (sum of squared errors) / (sum of squared deviations of x from "
                "its mean over tokens), both summed over tokens and dimensions." + globals_hint(function, what)
            ),
        )
    return "5 cases: non-zero means, 6 to 41 tokens, float32 and float64, one dimension"
