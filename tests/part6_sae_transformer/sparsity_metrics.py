"""Exercise 5.2's check: L0 and the firing frequencies of an SAE's latents.

The latents include a dead one, a frequent one, tiny positive values (between the cut-offs a
learner might use instead of > 0) and tokens with no active latent; a square case (tokens =
d_sae) leaves only the values to tell the axes apart, and a single token and a single latent
keep an axis of length 1. A dead latent's frequency must be exactly 0: the notebook counts dead
latents with `frequency == 0`, which an epsilon or a clamp would hide within any tolerance.
"""

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from part_utils.reference import part6_sae_transformer as reference
from tests.checking import (
    CheckFailure,
    call_learner,
    check,
    close,
    diagnose_among,
    expect_number,
    expect_tensor,
    globals_hint,
    learner_callable,
)


def latent_cases() -> list[Tensor]:
    """SAE latents (never negative): a dead latent, a frequent one, tiny positive values, tokens with nothing active."""
    main = torch.relu(torch.randn(41, 7) - 0.4) * torch.rand(41, 7) * 3
    main[main > 0] += 0.05  # ordinary activations lie above every small cut-off (up to 1e-2) used instead of 0
    main[:, 2] = 0.0  # a dead latent
    main[:, 5] = torch.rand(41) + 0.1  # one that fires on every token with anything active
    main[::4, 0] = 1e-6  # tiny but active
    main[1::6, 3] = 1e-30  # tinier still
    main[[7, 19, 33]] = 0.0  # tokens on which no latent is active
    # tokens = d_sae, so only the values tell the axes apart
    square = (torch.relu(torch.randn(9, 9) - 0.2) * 2).double()
    square[4] = 0.0
    one_token = torch.tensor([[0.0, 0.7, 0.0, 2e-7, 1.3, 0.0]])
    one_latent = torch.tensor([[0.4], [0.0], [1e-6], [0.0], [0.9], [0.0], [0.0], [2.1]])
    return [main, square, one_token, one_latent]


# Cut-offs a learner might use instead of > 0; the tiny values in `latent_cases` (1e-30, 2e-7, 1e-6) sit between them.
THRESHOLDS = (1e-12, 1e-8, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.1)


def _above_thresholds(latents: Tensor) -> list[Tensor]:
    """The activity masks that the cut-offs above give, with > and with >=."""
    return [mask.double() for threshold in THRESHOLDS for mask in (latents > threshold, latents >= threshold)]


def l0_mistakes(latents: Tensor) -> dict[str, list[Tensor]]:
    latents = latents.double()
    active = (latents > 0).double()
    counts = active.sum(dim=1)
    return {
        (
            "L0 is counted over the wrong dimension: count active latents per token (over d_sae), "
            "then average over tokens."
        ): [active.sum(dim=0).mean()],
        "L0 is summed over tokens; average the per-token counts instead.": [active.sum()],
        "This is the fraction of latents active; L0 is their number per token (do not divide by d_sae).": [
            active.mean()
        ],
        "L0 counts exact zeros too (>= 0): a latent is active only when its value is > 0.": [
            torch.tensor(float(latents.shape[1]))
        ],
        "L0 was rounded down to a whole number (integer division?): divide as floating-point numbers.": [
            counts.mean().floor()
        ],
        "L0 counts only latents above some threshold; a latent is active when its value is > 0, however small.": [
            mask.sum(dim=1).mean() for mask in _above_thresholds(latents)
        ],
        "L0 should count active latents, not measure their size (a sum or a norm of their values).": [
            latents.sum(dim=1).mean(),
            latents.norm(dim=1).mean(),
            latents.sum(),
        ],
        (
            "L0 is averaged only over tokens with some latent active; average over every token "
            "(one with none active counts 0)."
        ): [counts.sum() / (counts > 0).sum()],
    }


def frequency_mistakes(latents: Tensor) -> dict[str, list[Tensor]]:
    latents = latents.double()
    active = (latents > 0).double()
    return {
        "These are counts of tokens; divide by the number of tokens to get a frequency.": [active.sum(dim=0)],
        "These are percentages; return fractions between 0 and 1.": [100 * active.mean(dim=0)],
        "The counts are divided by d_sae; divide each latent's count by the number of tokens.": [
            active.sum(dim=0) / latents.shape[1]
        ],
        "This averages the activation values; a firing frequency averages whether each latent is active (> 0).": [
            latents.mean(dim=0)
        ],
        "The frequency is taken over the wrong axis: average over tokens (dim 0), one value per latent.": [
            active.mean(dim=1)
        ],
        "The frequencies count exact zeros too (>= 0): a latent is active only when its value is > 0.": [
            torch.ones(latents.shape[1], dtype=torch.float64)
        ],
        (
            "The frequencies count only values above some threshold; a latent is active when its value is > 0, "
            "however small."
        ): [mask.mean(dim=0) for mask in _above_thresholds(latents)],
        (
            "Each latent's firings are divided by the number of firings of all latents; divide by the number of tokens."
        ): [active.sum(dim=0) / active.sum().clamp_min(1)],
    }


SQUEEZED = (
    "`{what}` squeezed away an axis of length 1 (here {axis}): with .squeeze() a single {axis} is no longer "
    "an axis, so the reduction runs over the wrong one. Keep both axes of latents [tokens, d_sae] (no .squeeze())."
)


def _squeezed_l0(latents: Tensor) -> Tensor | None:
    """What L0 gives after `latents.squeeze()` where that changes the answer (a single latent: the total count)."""
    if latents.shape[1] != 1 or latents.shape[0] == 1:
        return None
    return (latents.squeeze() > 0).double().sum(dim=-1).mean()


def _length_one_axis(latents: Tensor) -> str:
    return "a single token" if latents.shape[0] == 1 else "a single latent"


def _call_sparsity(function: Callable[..., Any], latents: Tensor, what: str) -> Any:
    """The learner's metric on a copy of `latents`, naming torch.mean's refusal of integer and bool tensors."""
    try:
        return call_learner(function, latents.clone(), what=what)
    except CheckFailure as failure:
        if isinstance(failure.__cause__, RuntimeError) and "could not infer output dtype" in str(failure.__cause__):
            raise CheckFailure(
                f"`{what}` averaged a bool or integer tensor, which torch.mean refuses: "
                "convert the mask `latents > 0` with .float() first."
            ) from failure.__cause__
        raise


def _frequency_result(value: object, latents: Tensor, what: str) -> Tensor:
    """The learner's frequencies as float64, naming bool and integer results and a per-token shape."""
    n_tokens, d_sae = latents.shape
    if isinstance(value, Tensor) and tuple(value.shape) == (n_tokens,) and n_tokens != d_sae:
        raise CheckFailure(
            f"`{what}` returned one value per token ([tokens]); the frequency is one value per latent: "
            "average over tokens (dim 0)."
        )
    if isinstance(value, Tensor) and value.ndim == 0:
        if 1 in latents.shape:
            raise CheckFailure(SQUEEZED.format(what=what, axis=_length_one_axis(latents)))
        raise CheckFailure(
            f"`{what}` returned one number; the frequency is one value per latent, [d_sae]: "
            "average over the tokens only (dim 0)."
        )
    if isinstance(value, Tensor) and tuple(value.shape) == (1, d_sae):
        raise CheckFailure(
            f"`{what}` returned shape (1, d_sae): return one value per latent, [d_sae] (without keepdim=True)."
        )
    if isinstance(value, Tensor) and value.dtype == torch.bool:
        raise CheckFailure(
            f"`{what}` returned a bool tensor (whether each latent fired at all?); return, as floats, "
            "the fraction of tokens on which each is > 0."
        )
    if isinstance(value, Tensor) and tuple(value.shape) == (d_sae,) and not torch.is_floating_point(value):
        if close(value.double(), (latents > 0).double().sum(dim=0)):
            raise CheckFailure("These are counts of tokens; divide by the number of tokens to get a frequency.")
        raise CheckFailure(
            f"`{what}` returned an integer tensor ({value.dtype}); frequencies are fractions: "
            "convert the mask with .float() before averaging."
        )
    return expect_tensor(value, (d_sae,), what=what, axes="d_sae")


def _expect_dead_at_zero(frequency: Tensor, expected: Tensor) -> None:
    """A latent that never fires has frequency exactly 0, which the tolerance of a comparison would not see;
    the other latents' frequencies are judged afterwards."""
    dead = expected == 0
    if dead.any() and bool((frequency[dead] != 0).any()) and close(frequency[~dead], expected[~dead]):
        raise CheckFailure(
            "A dead latent (never > 0 on any token) gets a frequency above 0: it must be exactly 0, since dead "
            "latents are counted with `frequency == 0`. Do not add an epsilon or clamp the frequencies "
            "(the histogram clamps them itself for its log scale)."
        )


@check("l0_norm and firing_frequency")
def test_sparsity_metrics(l0_norm: object, firing_frequency: object) -> str:
    l0_function = learner_callable(l0_norm, "l0_norm")
    frequency_function = learner_callable(firing_frequency, "firing_frequency")
    for latents in latent_cases():
        n_tokens, d_sae = latents.shape
        per_axis = {
            d_sae: (
                "`l0_norm` returned one value per latent ([d_sae]): count the active latents of each token "
                "(over d_sae), then average those counts over tokens."
            ),
            n_tokens: (
                "`l0_norm` returned one count per token ([tokens]): average these counts over tokens, "
                "so the result is one number."
            ),
        }
        l0 = _call_sparsity(l0_function, latents, "l0_norm(latents)")
        actual = expect_number(l0, "l0_norm", per_axis=per_axis)
        squeezed = _squeezed_l0(latents)
        if squeezed is not None and close(actual, squeezed) and not close(actual, reference.l0_norm(latents).double()):
            raise CheckFailure(SQUEEZED.format(what="l0_norm", axis=_length_one_axis(latents)))
        diagnose_among(
            actual,
            reference.l0_norm(latents).double(),
            l0_mistakes(latents),
            otherwise=(
                "L0 differs from the reference: the number of latents > 0 on each token, averaged over tokens."
                + globals_hint(l0_function, "l0_norm")
            ),
        )
        frequencies = _call_sparsity(frequency_function, latents, "firing_frequency(latents)")
        frequency = _frequency_result(frequencies, latents, "firing_frequency")
        expected = reference.firing_frequency(latents).double()
        _expect_dead_at_zero(frequency, expected)
        diagnose_among(
            frequency,
            expected,
            frequency_mistakes(latents),
            otherwise=(
                "The firing frequencies differ from the reference: for each latent, "
                "the fraction of tokens on which it is > 0." + globals_hint(frequency_function, "firing_frequency")
            ),
        )
    return (
        "41 tokens × 7 latents (dead, frequent, tiny and empty ones), 9 × 9 in float64, a single token "
        "and a single latent"
    )
