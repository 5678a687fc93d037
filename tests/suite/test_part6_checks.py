"""Mutation suite for Part 6's learner-facing checks (tests/part6_sae_transformer.py)."""

import pytest
import torch

import tests.part6_sae_transformer as part6
from part_utils.reference import part6_sae_transformer as reference
from tests.suite.conftest import stub

# Fraction of variance explained -----------------------------------------------------------


def fve_about_zero(x, x_hat):
    return 1 - (x - x_hat).pow(2).sum() / x.pow(2).sum()


def fve_per_token_mean(x, x_hat):
    return 1 - (x - x_hat).pow(2).sum() / (x - x.mean(dim=1, keepdim=True)).pow(2).sum()


def fve_returns_unexplained(x, x_hat):
    return (x - x_hat).pow(2).sum() / (x - x.mean(dim=0)).pow(2).sum()


def fve_averaged_per_dimension(x, x_hat):
    return (1 - (x - x_hat).pow(2).sum(dim=0) / (x - x.mean(dim=0)).pow(2).sum(dim=0)).mean()


def fve_rewritten(x, x_hat):
    """Correct, written differently: float64, variance via torch.var, a Python float out."""
    x, x_hat = x.double(), x_hat.double()
    total = torch.var(x, dim=0, unbiased=False).sum() * len(x)
    return float(1.0 - torch.linalg.vector_norm(x - x_hat) ** 2 / total)


def test_fve_accepts_reference_and_rewrite(checks):
    checks.passes(part6.test_fraction_variance_explained, reference.fraction_variance_explained)
    checks.passes(part6.test_fraction_variance_explained, fve_rewritten)


@pytest.mark.parametrize(
    ("learner", "message"),
    [
        (fve_about_zero, "measured about zero"),
        (fve_per_token_mean, "mean is taken over the wrong dimension"),
        (fve_returns_unexplained, "unexplained"),
        (fve_averaged_per_dimension, "averaged"),
        (stub, "not implemented yet"),
    ],
)
def test_fve_names_each_mistake(checks, learner, message):
    checks.fails(part6.test_fraction_variance_explained, learner, message)


# L0 and firing frequency ------------------------------------------------------------------


def sparsity_check(l0_norm, firing_frequency):
    return lambda _: part6.test_sparsity_metrics(l0_norm, firing_frequency)


def l0_rewritten(latents):
    return torch.count_nonzero(latents.double() > 0, dim=1).double().mean().item()


def frequency_rewritten(latents):
    return torch.where(latents > 0, 1.0, 0.0).sum(dim=0) / latents.shape[0]


def test_sparsity_metrics_accept_reference_and_rewrites(checks):
    checks.passes(sparsity_check(reference.l0_norm, reference.firing_frequency), None)
    checks.passes(sparsity_check(l0_rewritten, frequency_rewritten), None)


@pytest.mark.parametrize(
    ("l0", "frequency", "message"),
    [
        (lambda a: (a > 0).float().sum(dim=0).mean(), reference.firing_frequency, "counted over the wrong dimension"),
        (lambda a: (a > 0).float().sum(), reference.firing_frequency, "summed over tokens"),
        (lambda a: (a > 0).float().mean(), reference.firing_frequency, "fraction of latents"),
        (lambda a: (a > 1e-3).float().sum(dim=1).mean(), reference.firing_frequency, "threshold"),
        (lambda a: a.sum(dim=1).mean(), reference.firing_frequency, "not add up their values"),
        (reference.l0_norm, lambda a: (a > 0).float().sum(dim=0), "counts of tokens"),
        (reference.l0_norm, lambda a: a.mean(dim=0), "averages the activation values"),
        (reference.l0_norm, lambda a: (a > 0).float().mean(dim=1), r"shape \(41,\)"),
        (stub, reference.firing_frequency, "not implemented yet"),
        (reference.l0_norm, stub, "not implemented yet"),
    ],
)
def test_sparsity_metrics_name_each_mistake(checks, l0, frequency, message):
    checks.fails(sparsity_check(l0, frequency), None, message)


# Spliced loss and loss recovered ----------------------------------------------------------


def spliced_at_fixed_hook(model, tokens, hook_name, replace):
    return reference.spliced_loss(model, tokens, "blocks.0.hook_mlp_out", replace)


def spliced_without_return(model, tokens, hook_name, replace):
    def hook_fn(act, hook):
        replace(act)  # the result is dropped

    return model.run_with_hooks(tokens, return_type="loss", fwd_hooks=[(hook_name, hook_fn)]).item()


def spliced_rewritten(model, tokens, hook_name, replace):
    """Correct, written differently: the hooks context manager and an explicit cross-entropy."""
    with model.hooks(fwd_hooks=[(hook_name, lambda act, hook: replace(act))]):
        logits = model(tokens)
    return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten())


def test_spliced_loss_accepts_reference_and_rewrite(checks):
    checks.passes(part6.test_spliced_loss, reference.spliced_loss)
    checks.passes(part6.test_spliced_loss, spliced_rewritten)


@pytest.mark.parametrize(
    ("learner", "message"),
    [
        (spliced_at_fixed_hook, "use the `hook_name` argument"),
        (spliced_without_return, "return `replace\\(act\\)`"),
        (lambda model, tokens, hook_name, replace: model(tokens), r"returned shape \(24, 9, 29\)"),
        (stub, "not implemented yet"),
    ],
)
def test_spliced_loss_names_each_mistake(checks, learner, message):
    checks.fails(part6.test_spliced_loss, learner, message)


def test_loss_recovered_accepts_reference_and_rewrite(checks):
    checks.passes(part6.test_loss_recovered, reference.loss_recovered)
    checks.passes(part6.test_loss_recovered, lambda clean, spliced, ablated: 1 - (spliced - clean) / (ablated - clean))


@pytest.mark.parametrize(
    ("learner", "message"),
    [
        (lambda clean, spliced, ablated: (clean - spliced) / (clean - ablated), "swapped"),
        (lambda clean, spliced, ablated: clean / spliced, "ratio of losses"),
        (lambda clean, spliced, ablated: (ablated - spliced) / (spliced - clean), "whole range"),
        (stub, "not implemented yet"),
    ],
)
def test_loss_recovered_names_each_mistake(checks, learner, message):
    checks.fails(part6.test_loss_recovered, learner, message)
