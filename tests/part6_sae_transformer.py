"""Checks for Part 6 (SAEs on a small transformer). Call them from the notebook, e.g.
`test_fraction_variance_explained(fraction_variance_explained)`.

Inputs have a non-zero mean and shapes that differ from each other (37 or 41 tokens, 5 or 7
dimensions), so that a reduction over the wrong axis fails instead of passing by accident.
"""

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from part_utils.palindromes import load_palindrome_model, palindrome_dataset
from part_utils.reference import part6_sae_transformer as reference
from tests.checking import CheckFailure, call_learner, check, diagnose, expect_tensor, learner_callable


def _scalar(value: object, what: str) -> Tensor:
    if isinstance(value, Tensor):
        return expect_tensor(value, (), what=what, axes="a single number, 0-dimensional")
    if isinstance(value, (int, float)):
        return torch.tensor(float(value), dtype=torch.float64)
    raise CheckFailure(f"`{what}` should return a number (a float or a 0-dimensional tensor), but returned {type(value).__name__}.")


def _fve_cases() -> list[tuple[Tensor, Tensor]]:
    cases = []
    for offset, noise in [(3.0, 0.4), (10.0, 0.8)]:
        x = torch.randn(37, 5) * torch.tensor([1.0, 2.0, 0.5, 1.5, 3.0]) + offset * torch.linspace(-1, 1, 5) + offset
        cases.append((x, x + noise * torch.randn_like(x) + 0.1))
    return cases


@check("fraction_variance_explained")
def test_fraction_variance_explained(learner: object) -> str:
    function = learner_callable(learner, "fraction_variance_explained")
    for x, x_hat in _fve_cases():
        actual = _scalar(call_learner(function, x.clone(), x_hat.clone(), what="fraction_variance_explained(x, x_hat)"), "fraction_variance_explained")
        expected = reference.fraction_variance_explained(x.double(), x_hat.double())
        squared_error = (x - x_hat).double().pow(2)
        centred = (x - x.mean(dim=0)).double().pow(2)
        diagnose(
            actual,
            expected,
            {
                "The variance is measured about zero: subtract the mean activation vector (over tokens) from x before squaring.": 1
                - squared_error.sum() / x.double().pow(2).sum(),
                "The mean is taken over the wrong dimension: subtract the mean over tokens (dim 0), one mean per d_model dimension.": 1
                - squared_error.sum() / (x - x.mean(dim=1, keepdim=True)).double().pow(2).sum(),
                "This is the fraction of variance *unexplained*: return 1 minus it.": squared_error.sum() / centred.sum(),
                "Each dimension's FVE is averaged: sum the squared errors and the variances over all dimensions first, then divide.": (
                    1 - squared_error.sum(dim=0) / centred.sum(dim=0)
                ).mean(),
                "The denominator uses x_hat's variance; it should be the variance of the true activations x.": 1
                - squared_error.sum() / (x_hat - x_hat.mean(dim=0)).double().pow(2).sum(),
            },
            otherwise="FVE differs from the reference: 1 − (sum of squared errors) / (sum of squared deviations of x from its mean over tokens).",
        )
    return "2 cases, non-zero means"


def _latents() -> Tensor:
    latents = torch.relu(torch.randn(41, 7) - 0.4) * torch.rand(41, 7) * 3
    latents[:, 2] = 0.0  # a dead latent
    latents[:, 5] = torch.rand(41) + 0.1  # one that always fires
    latents[::4, 0] = 1e-6  # tiny but active
    return latents


@check("l0_norm and firing_frequency")
def test_sparsity_metrics(l0_norm: object, firing_frequency: object) -> str:
    l0_function = learner_callable(l0_norm, "l0_norm")
    frequency_function = learner_callable(firing_frequency, "firing_frequency")
    latents = _latents()
    active = (latents > 0).double()
    actual = _scalar(call_learner(l0_function, latents.clone(), what="l0_norm(latents)"), "l0_norm")
    diagnose(
        actual,
        reference.l0_norm(latents).double(),
        {
            "L0 is counted over the wrong dimension: count active latents per token (over d_sae), then average over tokens.": active.sum(dim=0).mean(),
            "L0 is summed over tokens; average the per-token counts instead.": active.sum(),
            "This is the fraction of latents active; L0 is their number per token (do not divide by d_sae).": active.mean(),
            "L0 counts only latents above some threshold; a latent is active when its value is > 0, however small.": (latents > 1e-3).double().sum(dim=1).mean(),
            "L0 should count active latents, not add up their values.": latents.double().sum(dim=1).mean(),
        },
        otherwise="L0 differs from the reference: the number of latents > 0 on each token, averaged over tokens.",
    )
    frequency = expect_tensor(
        call_learner(frequency_function, latents.clone(), what="firing_frequency(latents)"), (7,), what="firing_frequency", axes="d_sae"
    )
    diagnose(
        frequency,
        reference.firing_frequency(latents).double(),
        {
            "These are counts of tokens; divide by the number of tokens to get a frequency.": active.sum(dim=0),
            "This averages the activation values; a firing frequency averages whether each latent is active (> 0).": latents.double().mean(dim=0),
        },
        otherwise="The firing frequencies differ from the reference: for each latent, the fraction of tokens on which it is > 0.",
    )
    return "L0 and frequencies on 41 tokens × 7 latents, with a dead and an always-on latent"


@functools.cache
def _model_and_tokens() -> tuple[Any, Tensor]:
    return load_palindrome_model(device=torch.device("cpu")), palindrome_dataset().test_tokens[:24]


def _shift(vector: Tensor) -> Callable[[Tensor], Tensor]:
    return lambda act: 0.3 * act + vector


@check("spliced_loss")
def test_spliced_loss(learner: object) -> str:
    function = learner_callable(learner, "spliced_loss")
    model, tokens = _model_and_tokens()
    replace = _shift(torch.randn(model.cfg.d_model))
    hooks = ["blocks.0.hook_attn_out", "blocks.0.hook_mlp_out"]
    expected = {hook: reference.spliced_loss(model, tokens, hook, replace) for hook in hooks}
    clean = model(tokens, return_type="loss").item()
    for hook in hooks:
        actual = _scalar(call_learner(function, model, tokens.clone(), hook, replace, what=f"spliced_loss(model, tokens, {hook!r}, replace)"), "spliced_loss")
        other = next(h for h in hooks if h != hook)
        diagnose(
            actual,
            torch.tensor(expected[hook], dtype=torch.float64),
            {
                f"Asked to splice at {hook!r}, your code changed {other!r}: use the `hook_name` argument.": torch.tensor(expected[other], dtype=torch.float64),
                "This is the clean loss: the replacement had no effect. Does your hook function return `replace(act)`?": torch.tensor(clean, dtype=torch.float64),
            },
            otherwise="The spliced loss differs from the reference: run the model with one hook at `hook_name` that returns `replace(act)`, with return_type='loss'.",
            atol=1e-5,
        )
    return f"two hooks on {len(tokens)} held-out strings"


@check("loss_recovered")
def test_loss_recovered(learner: object) -> str:
    function = learner_callable(learner, "loss_recovered")
    cases = [(1.2, 1.5, 3.0), (0.8, 0.85, 2.1), (2.0, 2.6, 2.9)]
    for clean, spliced, ablated in cases:
        actual = _scalar(call_learner(function, clean, spliced, ablated, what=f"loss_recovered({clean}, {spliced}, {ablated})"), "loss_recovered")
        diagnose(
            actual,
            torch.tensor(reference.loss_recovered(clean, spliced, ablated), dtype=torch.float64),
            {
                "The clean and ablated losses are swapped: this is the fraction lost, 1 minus the fraction recovered.": torch.tensor(
                    (clean - spliced) / (clean - ablated), dtype=torch.float64
                ),
                "This is a ratio of losses; loss recovered measures where the spliced loss sits between the clean and the ablated loss.": torch.tensor(
                    clean / spliced, dtype=torch.float64
                ),
                "The denominator should be the whole range, ablated − clean.": torch.tensor((ablated - spliced) / (spliced - clean), dtype=torch.float64),
            },
            otherwise="Loss recovered differs from the reference: (ablated − spliced) / (ablated − clean).",
        )
    return f"{len(cases)} cases"
