"""Mutation suite for Part 6's learner-facing checks (tests/part6_sae_transformer.py)."""

import functools
import itertools
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import tests.part6_sae_transformer as part6
from part_utils.reference import part6_sae_transformer as reference
from tests.checking import close
from tests.suite.conftest import notebook_function, stub

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


def fve_einsum_means(x, x_hat):
    """Correct: both sums written as means over every entry, with einsum."""
    error, centred = x - x_hat, x - x.mean(dim=0, keepdim=True)
    return 1 - torch.einsum("td,td->", error, error) / error.numel() / (
        torch.einsum("td,td->", centred, centred) / centred.numel()
    )


def fve_in_place_on_own_temporaries(x, x_hat):
    """Correct: in-place operations, but only on tensors it made itself."""
    centred = x.clone()
    centred -= x.mean(dim=0)
    centred.pow_(2)
    error = x - x_hat
    error.pow_(2)
    return 1 - error.sum() / centred.sum()


def fve_loop_over_dimensions(x, x_hat):
    """Correct: one dimension at a time, accumulated in Python floats, returned as a tensor."""
    errors = deviations = 0.0
    for j in range(x.shape[1]):
        errors += float(((x[:, j] - x_hat[:, j]) ** 2).sum())
        deviations += float(((x[:, j] - x[:, j].mean()) ** 2).sum())
    return torch.tensor(1 - errors / deviations)


def fve_scalar_mean(x, x_hat):
    return 1 - (x - x_hat).pow(2).sum() / (x - x.mean()).pow(2).sum()


def fve_scalar_var(x, x_hat):
    return 1 - (x - x_hat).pow(2).mean() / x.var()


def fve_unbiased_var_times_tokens(x, x_hat):
    return 1 - (x - x_hat).pow(2).sum() / (x.var(dim=0).sum() * len(x))


def fve_unbiased_var_of_means(x, x_hat):
    return 1 - (x - x_hat).pow(2).sum(dim=-1).mean() / x.var(dim=0).sum()


def fve_variance_of_errors(x, x_hat):
    return 1 - (x - x_hat).var(dim=0).sum() / x.var(dim=0).sum()


def fve_variance_ratio_of_everything(x, x_hat):
    return 1 - torch.var(x - x_hat) / torch.var(x)


def fve_x_hat_variance(x, x_hat):
    return 1 - (x - x_hat).pow(2).sum() / (x_hat - x_hat.mean(dim=0)).pow(2).sum()


def fve_centred_on_x_hat_mean(x, x_hat):
    return 1 - (x - x_hat).pow(2).sum() / (x - x_hat.mean(dim=0)).pow(2).sum()


def fve_mean_over_sum(x, x_hat):
    return 1 - (x - x_hat).pow(2).mean() / (x - x.mean(dim=0)).pow(2).sum()


def fve_unsquared_norms(x, x_hat):
    return 1 - torch.linalg.norm(x - x_hat) / torch.linalg.norm(x - x.mean(dim=0))


def fve_per_token_average(x, x_hat):
    return (1 - (x - x_hat).pow(2).sum(dim=1) / (x - x.mean(dim=0)).pow(2).sum(dim=1)).mean()


def fve_centres_x_in_place(x, x_hat):
    residual = (x - x_hat).pow(2).sum()
    x -= x.mean(dim=0)
    return 1 - residual / x.pow(2).sum()


def fve_per_dimension_vector(x, x_hat):
    return 1 - (x - x_hat).pow(2).sum(dim=0) / (x - x.mean(dim=0)).pow(2).sum(dim=0)


def fve_keepdim(x, x_hat):
    return 1 - (x - x_hat).pow(2).sum(dim=(0, 1), keepdim=True) / (x - x.mean(dim=0)).pow(2).sum(
        dim=(0, 1), keepdim=True
    )


def fve_explained_sum_of_squares(x, x_hat):
    return ((x_hat - x.mean(dim=0)) ** 2).sum() / ((x - x.mean(dim=0)) ** 2).sum()


def fve_variance_ratio(x, x_hat):
    return x_hat.var(dim=0).sum() / x.var(dim=0).sum()


def fve_trace_of_covariance(x, x_hat):
    """Right for d > 1, but torch.trace of a 1 × 1 covariance fails: the hidden assumption the
    one-dimensional case finds."""
    return 1 - (x - x_hat).pow(2).sum() / (torch.trace(torch.cov(x.T, correction=0)) * len(x))


def fve_mse_over_population_variance(x, x_hat):
    """Correct: the mean squared error over the mean population variance, both averaged over every entry."""
    return 1 - F.mse_loss(x_hat, x) / x.var(dim=0, unbiased=False).mean()


def fve_clamped(x, x_hat):
    """Clamps the score into [0, 1], hiding a reconstruction worse than the mean."""
    return (1 - (x - x_hat).pow(2).sum() / (x - x.mean(dim=0)).pow(2).sum()).clamp(0.0, 1.0)


def fve_absolute_errors(x, x_hat):
    return 1 - (x - x_hat).abs().sum() / (x - x.mean(dim=0)).abs().sum()


def fve_unsquared_errors(x, x_hat):
    return 1 - torch.linalg.norm(x - x_hat) / (x - x.mean(dim=0)).pow(2).sum()


# Written against the notebook's `test_rows` instead of its argument `x`.
FVE_FROM_TEST_ROWS = notebook_function(
    "def fraction_variance_explained(x, x_hat):\n"
    "    return 1 - (x - x_hat).pow(2).sum() / (test_rows - test_rows.mean(dim=0)).pow(2).sum()\n",
    "fraction_variance_explained",
    test_rows=torch.randn(41, 5, generator=torch.Generator().manual_seed(1)) + 2.0,
)


@pytest.mark.parametrize(
    "learner",
    [
        reference.fraction_variance_explained,
        fve_rewritten,
        fve_einsum_means,
        fve_in_place_on_own_temporaries,
        fve_loop_over_dimensions,
        fve_mse_over_population_variance,
    ],
)
def test_fve_accepts_reference_and_rewrites(checks, learner):
    checks.passes(part6.test_fraction_variance_explained, learner)


@pytest.mark.parametrize(
    ("learner", "message"),
    [
        (fve_about_zero, "measured about zero"),
        (fve_per_token_mean, "mean is taken over the wrong dimension"),
        (fve_returns_unexplained, "unexplained"),
        (fve_averaged_per_dimension, "Each dimension's FVE is averaged"),
        (fve_scalar_mean, r"single number x\.mean\(\)"),
        (fve_scalar_var, r"single number x\.mean\(\)"),
        (fve_unbiased_var_times_tokens, r"torch\.var's default, which divides by tokens − 1"),
        (fve_unbiased_var_of_means, r"torch\.var's default, which divides by tokens − 1"),
        (fve_variance_of_errors, "errors are centred too"),
        (fve_variance_ratio_of_everything, r"1 − var\(x − x_hat\) / var\(x\) over all entries"),
        (fve_x_hat_variance, "uses x_hat"),
        (fve_centred_on_x_hat_mean, "uses x_hat"),
        (fve_mean_over_sum, "One sum is averaged and the other is not"),
        (fve_unsquared_norms, "not squared"),
        (fve_per_token_average, "Each token's FVE is averaged"),
        (fve_centres_x_in_place, "changed `x` in place"),
        (fve_per_dimension_vector, r"one value per dimension \(\[d\]\)"),
        (fve_keepdim, r"shape \(1, 1\).*without keepdim=True"),
        (fve_explained_sum_of_squares, "compares x_hat's spread with x's"),
        (fve_variance_ratio, "compares x_hat's spread with x's"),
        (fve_trace_of_covariance, r"raised RuntimeError.*line \d+ of `fve_trace_of_covariance`"),
        (fve_clamped, "FVE is clipped at 0"),
        (fve_absolute_errors, "distances are not squared"),
        (fve_unsquared_errors, "Only one of the two sums is of squares"),
        (FVE_FROM_TEST_ROWS, "reads the notebook's `test_rows` rather than its arguments"),
        (stub, "not implemented yet"),
    ],
)
def test_fve_names_each_mistake(checks, learner, message):
    checks.fails(part6.test_fraction_variance_explained, learner, message)


def test_fve_mistakes_are_told_apart_on_the_first_case():
    """Every named wrong version differs from the right value and from every other named one, beyond the tolerance."""
    torch.manual_seed(0)
    x, x_hat = part6.fve_cases()[0]
    values = [("right", reference.fraction_variance_explained(x.double(), x_hat.double()))]
    values += [(message, value) for message, wrongs in part6.fve_mistakes(x, x_hat).items() for value in wrongs]
    for (name_a, a), (name_b, b) in itertools.combinations(values, 2):
        assert name_a == name_b or not close(a, b, rtol=1e-3, atol=1e-4), (name_a, name_b)


def test_fve_torch_var_default_is_far_off_on_the_few_token_case():
    x, x_hat = part6.fve_cases()[2]
    right = reference.fraction_variance_explained(x.double(), x_hat.double())
    assert (fve_unbiased_var_times_tokens(x.double(), x_hat.double()) - right).abs() > 0.02


# L0 and firing frequency ------------------------------------------------------------------


def sparsity_check(l0_norm, firing_frequency):
    return lambda _: part6.test_sparsity_metrics(l0_norm, firing_frequency)


def l0_rewritten(latents):
    return torch.count_nonzero(latents.double() > 0, dim=1).double().mean().item()


def frequency_rewritten(latents):
    return torch.where(latents > 0, 1.0, 0.0).sum(dim=0) / latents.shape[0]


def l0_zero_norm(latents):
    """Correct for SAE latents, which are never negative: the text allows `!= 0` as well as `> 0`."""
    return torch.linalg.vector_norm(latents, ord=0, dim=-1).mean()


def frequency_nonzero(latents):
    return (latents != 0).double().mean(dim=0)


def l0_loop(latents):
    """Correct: a Python loop over tokens, returning a float."""
    return sum(int((row > 0).sum()) for row in latents) / len(latents)


def frequency_loop(latents):
    return torch.stack([(latents[:, j] > 0).float().mean() for j in range(latents.shape[1])])


def l0_in_place_on_own_mask(latents):
    mask = (latents > 0).to(latents.dtype)
    mask.mul_(1.0)
    return mask.sum() / len(latents)


def l0_counted_nonzero(latents):
    """Correct: count_nonzero over every entry, divided by the number of tokens, as a Python float."""
    return torch.count_nonzero(latents).item() / latents.shape[0]


def frequency_counted_nonzero(latents):
    return torch.count_nonzero(latents, dim=0).to(latents.dtype) / latents.shape[0]


@pytest.mark.parametrize(
    ("l0", "frequency"),
    [
        (reference.l0_norm, reference.firing_frequency),
        (l0_rewritten, frequency_rewritten),
        (l0_zero_norm, frequency_nonzero),
        (l0_loop, frequency_loop),
        (l0_in_place_on_own_mask, lambda latents: (latents > 0).sum(dim=0) / len(latents)),
        (l0_counted_nonzero, frequency_counted_nonzero),
    ],
)
def test_sparsity_metrics_accept_reference_and_rewrites(checks, l0, frequency):
    checks.passes(sparsity_check(l0, frequency), None)


def l0_squeezed(latents):
    return (latents.squeeze() > 0).float().sum(dim=-1).mean()


def frequency_squeezed(latents):
    return (latents.squeeze() > 0).float().mean(dim=0)


def frequency_clamped_for_the_log_scale(latents):
    return (latents > 0).float().mean(dim=0).clamp_min(1e-6)


def frequency_with_an_epsilon(latents):
    return ((latents > 0).float().sum(dim=0) + 1e-3) / len(latents)


def l0_integer_division(latents):
    return (latents > 0).sum() // len(latents)


def l0_python_integer_division(latents):
    return int((latents > 0).sum()) // len(latents)


def l0_over_active_tokens(latents):
    counts = (latents > 0).float().sum(dim=1)
    return counts[counts > 0].mean()


def l0_counts_in_place(latents):
    return latents.gt_(0).sum(dim=1).mean()


# Averaged over the notebook's number of tokens instead of this input's.
L0_FROM_N_TOKENS = notebook_function(
    "def l0_norm(latents):\n    return (latents > 0).float().sum() / n_tokens\n", "l0_norm", n_tokens=400
)


@pytest.mark.parametrize(
    ("l0", "frequency", "message"),
    [
        (lambda a: (a > 0).float().sum(dim=0).mean(), reference.firing_frequency, "counted over the wrong dimension"),
        (lambda a: (a > 0).float().sum(), reference.firing_frequency, "summed over tokens"),
        (lambda a: (a > 0).float().mean(), reference.firing_frequency, "fraction of latents"),
        (lambda a: (a > 1e-3).float().sum(dim=1).mean(), reference.firing_frequency, "threshold"),
        (lambda a: (a > 1e-8).float().sum(dim=1).mean(), reference.firing_frequency, "threshold"),
        (lambda a: a.sum(dim=1).mean(), reference.firing_frequency, "not measure their size"),
        (lambda a: a.norm(dim=1).mean(), reference.firing_frequency, "not measure their size"),
        (lambda a: (a >= 0).float().sum(dim=1).mean(), reference.firing_frequency, r"counts exact zeros too \(>= 0\)"),
        (l0_over_active_tokens, reference.firing_frequency, "only over tokens with some latent active"),
        (l0_integer_division, reference.firing_frequency, r"integer tensor \(torch\.int64\)"),
        (l0_python_integer_division, reference.firing_frequency, "rounded down"),
        (lambda a: (a > 0).sum(dim=1).mean(), reference.firing_frequency, "torch.mean refuses"),
        (lambda a: (a > 0).float().sum(dim=1), reference.firing_frequency, r"one count per token \(\[tokens\]\)"),
        (l0_counts_in_place, reference.firing_frequency, "changed `latents` in place"),
        (reference.l0_norm, lambda a: (a > 0).float().sum(dim=0), "counts of tokens"),
        (reference.l0_norm, lambda a: (a > 0).sum(dim=0), "counts of tokens"),
        (reference.l0_norm, lambda a: a.mean(dim=0), "averages the activation values"),
        (reference.l0_norm, lambda a: (a > 0).float().mean(dim=1), r"one value per token \(\[tokens\]\)"),
        (reference.l0_norm, lambda a: 100 * (a > 0).float().mean(dim=0), "percentages"),
        (reference.l0_norm, lambda a: (a >= 0).float().mean(dim=0), r"count exact zeros too \(>= 0\)"),
        (reference.l0_norm, lambda a: (a > 1e-12).float().mean(dim=0), "threshold"),
        (reference.l0_norm, lambda a: (a > 0).any(dim=0), "bool tensor"),
        (reference.l0_norm, lambda a: (a > 0).float().sum(dim=0) / (a > 0).sum(), "number of firings of all latents"),
        (reference.l0_norm, lambda a: (a > 0).mean(dim=0), "torch.mean refuses"),
        (reference.l0_norm, lambda a: (a > 0).float().sum(dim=0) / a.shape[1], "divided by d_sae"),
        (
            reference.l0_norm,
            lambda a: (a > 0).float().mean(dim=0, keepdim=True),
            r"shape \(1, d_sae\).*without keepdim=True",
        ),
        (stub, reference.firing_frequency, "not implemented yet"),
        (reference.l0_norm, stub, "not implemented yet"),
        (
            l0_squeezed,
            reference.firing_frequency,
            r"`l0_norm` squeezed away an axis of length 1 \(here a single latent\)",
        ),
        (reference.l0_norm, frequency_squeezed, r"squeezed away an axis of length 1 \(here a single token\)"),
        (reference.l0_norm, lambda a: (a > 0).float().mean(), r"returned one number; .* over the tokens only"),
        (reference.l0_norm, frequency_clamped_for_the_log_scale, "dead latent .* must be exactly 0"),
        (reference.l0_norm, frequency_with_an_epsilon, "dead latent .* must be exactly 0"),
        (L0_FROM_N_TOKENS, reference.firing_frequency, "reads the notebook's `n_tokens` rather than its arguments"),
    ],
)
def test_sparsity_metrics_name_each_mistake(checks, l0, frequency, message):
    checks.fails(sparsity_check(l0, frequency), None, message)


@pytest.mark.parametrize(
    ("mistakes", "right"),
    [(part6.l0_mistakes, reference.l0_norm), (part6.frequency_mistakes, reference.firing_frequency)],
)
def test_sparsity_mistakes_are_told_apart_on_the_first_case(mistakes, right):
    """Each message's wrong values differ from the right one and from other messages' (where the shapes
    allow a match)."""
    torch.manual_seed(0)
    latents = part6.latent_cases()[0]
    values = [("right", right(latents).double())] + [
        (message, value) for message, wrongs in mistakes(latents).items() for value in wrongs
    ]
    for (name_a, a), (name_b, b) in itertools.combinations(values, 2):
        assert name_a == name_b or not close(a, b, rtol=1e-3, atol=1e-4), (name_a, name_b)


def test_a_frequency_over_the_wrong_axis_is_named_where_the_shapes_fit():
    """On the square case the shape cannot tell; the values must (the other cases are skipped here)."""
    square = part6.latent_cases()[1]
    wrong_axis = (square > 0).double().mean(dim=1)
    mistakes = part6.frequency_mistakes(square)
    message = next(message for message, values in mistakes.items() if any(close(wrong_axis, value) for value in values))
    assert "wrong axis" in message


# Spliced loss -----------------------------------------------------------------------------


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


def spliced_in_place(model, tokens, hook_name, replace):
    """Correct: the TransformerLens idiom of writing into the activation and returning nothing."""

    def hook_fn(act, hook):
        act[:] = replace(act)

    return model.run_with_hooks(tokens, return_type="loss", fwd_hooks=[(hook_name, hook_fn)]).item()


def spliced_add_then_reset(model, tokens, hook_name, replace):
    """Correct: add_hook, run, and clean up with reset_hooks."""
    model.add_hook(hook_name, lambda act, hook: replace(act))
    try:
        return model(tokens, return_type="loss").item()
    finally:
        model.reset_hooks()


def spliced_in_train_mode(model, tokens, hook_name, replace):
    """Correct: the model has no dropout, so train mode changes nothing (the check puts eval mode back)."""
    model.train()
    return reference.spliced_loss(model, tokens, hook_name, replace)


SPLICED_CACHE = {}


def spliced_kept_per_hook(model, tokens, hook_name, replace):
    """Keeps each hook's loss from its first call, to save time in the notebook's table."""
    if hook_name not in SPLICED_CACHE:
        SPLICED_CACHE[hook_name] = reference.spliced_loss(model, tokens, hook_name, replace)
    return SPLICED_CACHE[hook_name]


def spliced_with_partial_and_per_token_losses(model, tokens, hook_name, replace):
    """Correct: the hook made with functools.partial, the per-token losses averaged by hand."""
    hook_fn = functools.partial(lambda act, hook, replace: replace(act), replace=replace)
    losses = model.run_with_hooks(tokens, return_type="loss", loss_per_token=True, fwd_hooks=[(hook_name, hook_fn)])
    return losses.mean().item()


@pytest.mark.parametrize(
    "learner",
    [
        reference.spliced_loss,
        spliced_rewritten,
        spliced_in_place,
        spliced_add_then_reset,
        spliced_in_train_mode,
        spliced_with_partial_and_per_token_losses,
    ],
)
def test_spliced_loss_accepts_reference_and_rewrites(checks, learner):
    checks.passes(part6.test_spliced_loss, learner)


def spliced_leaves_hook(model, tokens, hook_name, replace):
    model.add_hook(hook_name, lambda act, hook: replace(act))
    return model(tokens, return_type="loss").item()


def spliced_leaves_torch_hook(model, tokens, hook_name, replace):
    model.hook_dict[hook_name].register_forward_hook(lambda module, inputs, output: replace(output))
    return model(tokens, return_type="loss").item()


OPEN_CONTEXTS = []


def spliced_leaves_context_open(model, tokens, hook_name, replace):
    """Enters a hooks context and keeps it (here in a list) without ever leaving it."""
    OPEN_CONTEXTS.append(model.hooks(fwd_hooks=[(hook_name, lambda act, hook: replace(act))]))
    OPEN_CONTEXTS[-1].__enter__()
    return model(tokens, return_type="loss").item()


def spliced_replace_as_hook(model, tokens, hook_name, replace):
    return model.run_with_hooks(tokens, return_type="loss", fwd_hooks=[(hook_name, replace)]).item()


def spliced_replace_with_hook(model, tokens, hook_name, replace):
    return model.run_with_hooks(
        tokens, return_type="loss", fwd_hooks=[(hook_name, lambda act, hook: replace(act, hook))]
    ).item()


def spliced_keeps_first_position(model, tokens, hook_name, replace):
    def hook_fn(act, hook):
        act[:, 1:] = replace(act[:, 1:])

    return model.run_with_hooks(tokens, return_type="loss", fwd_hooks=[(hook_name, hook_fn)]).item()


def spliced_unshifted(model, tokens, hook_name, replace):
    logits = model.run_with_hooks(tokens, fwd_hooks=[(hook_name, lambda act, hook: replace(act))])
    return F.cross_entropy(logits.flatten(0, 1), tokens.flatten()).item()


def spliced_shifted_backwards(model, tokens, hook_name, replace):
    logits = model.run_with_hooks(tokens, fwd_hooks=[(hook_name, lambda act, hook: replace(act))])
    return F.cross_entropy(logits[:, 1:].flatten(0, 1), tokens[:, :-1].flatten()).item()


def spliced_keeps_hooks_at_the_end(model, tokens, hook_name, replace):
    return model.run_with_hooks(
        tokens, return_type="loss", fwd_hooks=[(hook_name, lambda act, hook: replace(act))], reset_hooks_end=False
    ).item()


def spliced_on_another_device(model, tokens, hook_name, replace):
    """Stands in for `tokens.to("cuda")` against a model on the CPU (or the other way round): PyTorch's error,
    raised as it would be."""
    raise RuntimeError("Expected all tensors to be on the same device, but found at least two devices, cuda:0 and cpu!")


def spliced_summed(model, tokens, hook_name, replace):
    logits = model.run_with_hooks(tokens, fwd_hooks=[(hook_name, lambda act, hook: replace(act))])
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten(), reduction="sum").item()


def spliced_per_token(model, tokens, hook_name, replace):
    return model.run_with_hooks(
        tokens, return_type="loss", loss_per_token=True, fwd_hooks=[(hook_name, lambda act, hook: replace(act))]
    )


def spliced_changes_tokens(model, tokens, hook_name, replace):
    tokens[:, 1] = 5
    return reference.spliced_loss(model, tokens, hook_name, replace)


def spliced_changes_weights(model, tokens, hook_name, replace):
    with torch.no_grad():
        next(model.parameters()).mul_(1.01)
    return reference.spliced_loss(model, tokens, hook_name, replace)


# Runs on the notebook's evaluation strings instead of the `tokens` it is given.
SPLICED_ON_EVAL_TOKENS = notebook_function(
    "def spliced_loss(model, tokens, hook_name, replace):\n"
    "    hooks = [(hook_name, lambda act, hook: replace(act))]\n"
    "    return model.run_with_hooks(eval_tokens.to(tokens.device), return_type='loss', fwd_hooks=hooks).item()\n",
    "spliced_loss",
    eval_tokens=part6._tokens()[-6:].clone(),
)


@pytest.mark.parametrize(
    ("learner", "message"),
    [
        (spliced_at_fixed_hook, "use the `hook_name` argument"),
        (spliced_without_return, "return `replace\\(act\\)`"),
        (lambda model, tokens, hook_name, replace: model(tokens), "returned the logits"),
        (spliced_leaves_hook, "left a hook attached to the model at 'blocks.0.hook_attn_out'"),
        (spliced_leaves_torch_hook, "left a hook attached to the model at 'blocks.0.hook_attn_out'"),
        (spliced_leaves_context_open, "left a hook attached"),
        (spliced_replace_as_hook, "handed `replace` itself to the model as the hook function"),
        (spliced_replace_with_hook, "called `replace` with more than the activation"),
        (spliced_keeps_first_position, "left position 0 as it was"),
        (spliced_unshifted, "position p predicts token p \\+ 1"),
        (spliced_shifted_backwards, "position p predicts token p \\+ 1"),
        (spliced_keeps_hooks_at_the_end, "left a hook attached to the model at 'blocks.0.hook_attn_out'"),
        (spliced_on_another_device, "mixed devices"),
        (spliced_summed, "summed over tokens"),
        (spliced_per_token, "a loss for every token"),
        (spliced_changes_tokens, "changed `tokens` in place"),
        (spliced_changes_weights, r"changed `model\.[\w.]+` in place"),
        (spliced_kept_per_hook, "returned the loss of the previous call at this hook, although `replace` changed"),
        (SPLICED_ON_EVAL_TOKENS, "reads the notebook's `eval_tokens` rather than its arguments"),
        (stub, "not implemented yet"),
    ],
)
def test_spliced_loss_names_each_mistake(checks, learner, message):
    checks.fails(part6.test_spliced_loss, learner, message)


@pytest.mark.parametrize(
    "culprit", [spliced_leaves_hook, spliced_leaves_torch_hook, spliced_changes_weights, spliced_in_train_mode]
)
def test_the_next_spliced_loss_check_starts_from_a_clean_model(checks, culprit):
    try:
        part6.test_spliced_loss(culprit)
    except AssertionError:
        pass
    checks.passes(part6.test_spliced_loss, reference.spliced_loss)
    model = part6.clean_model()
    assert not model.training and part6._pristine_model().is_intact()


def test_the_checks_loss_is_the_models_own():
    model = part6.clean_model()
    device = next(model.parameters()).device
    tokens = part6._tokens().to(device)
    replace = part6._replacement(torch.randn(model.cfg.d_model).to(device))
    expected = part6.spliced_outcomes(model, tokens, "blocks.0.hook_mlp_out", replace)["loss"]
    assert abs(reference.spliced_loss(model, tokens, "blocks.0.hook_mlp_out", replace) - expected.item()) < 1e-6


# Loss recovered ---------------------------------------------------------------------------


def loss_recovered_with_tensors(clean, spliced, ablated):
    """Correct: through torch, returning a 0-dimensional tensor."""
    clean, spliced, ablated = (torch.as_tensor(loss, dtype=torch.float64) for loss in (clean, spliced, ablated))
    return torch.div(ablated - spliced, ablated - clean)


def loss_recovered_through_numpy(clean, spliced, ablated):
    """Correct: NumPy's divide on the differences, returning a NumPy float."""
    return np.divide(np.float64(ablated) - np.float64(spliced), np.float64(ablated) - np.float64(clean))


# Uses the notebook's clean and zero-ablated losses instead of its arguments.
LOSS_RECOVERED_FROM_NOTEBOOK_LOSSES = notebook_function(
    "def loss_recovered(clean, spliced, ablated):\n    return (zero_loss - spliced) / (zero_loss - clean_loss)\n",
    "loss_recovered",
    clean_loss=0.52,
    zero_loss=2.9,
)


@pytest.mark.parametrize(
    "learner",
    [
        reference.loss_recovered,
        lambda clean, spliced, ablated: 1 - (spliced - clean) / (ablated - clean),
        lambda clean, spliced, ablated: (spliced - ablated) / (clean - ablated),
        loss_recovered_with_tensors,
        loss_recovered_through_numpy,
    ],
)
def test_loss_recovered_accepts_reference_and_rewrites(checks, learner):
    checks.passes(part6.test_loss_recovered, learner)


def loss_recovered_in_another_order(clean, ablated, spliced):
    return (ablated - spliced) / (ablated - clean)


@pytest.mark.parametrize(
    ("learner", "message"),
    [
        (lambda clean, spliced, ablated: (clean - spliced) / (clean - ablated), "swapped"),
        (lambda clean, spliced, ablated: clean / spliced, "ratio of losses"),
        (lambda clean, spliced, ablated: spliced / clean, "ratio of losses"),
        (lambda clean, spliced, ablated: (ablated - spliced) / (spliced - clean), "whole range"),
        (lambda clean, spliced, ablated: (ablated - spliced) / ablated, "whole range"),
        (lambda clean, spliced, ablated: (spliced - ablated) / (ablated - clean), "sign is flipped"),
        (lambda clean, spliced, ablated: 100 * (ablated - spliced) / (ablated - clean), "percentage"),
        (
            lambda clean, spliced, ablated: min(1.0, max(0.0, (ablated - spliced) / (ablated - clean))),
            r"clipped to \[0, 1\]",
        ),
        (lambda clean, spliced, ablated: max(0.0, (ablated - spliced) / (ablated - clean)), r"clipped to \[0, 1\]"),
        (lambda clean, spliced, ablated: abs(ablated - spliced) / (ablated - clean), "absolute value"),
        (
            lambda clean, spliced, ablated: (clean - spliced) / (ablated - clean),
            "numerator should be ablated − spliced",
        ),
        (loss_recovered_in_another_order, r"takes its arguments as \(clean, ablated, spliced\)"),
        (lambda clean, spliced, ablated: ablated - spliced / (ablated - clean), "Brackets are missing"),
        (lambda clean, spliced, ablated: (ablated - spliced) / ablated - clean, "Brackets are missing"),
        (LOSS_RECOVERED_FROM_NOTEBOOK_LOSSES, "reads the notebook's `clean_loss`, `zero_loss` rather than"),
        (stub, "not implemented yet"),
    ],
)
def test_loss_recovered_names_each_mistake(checks, learner, message):
    checks.fails(part6.test_loss_recovered, learner, message)


def test_loss_recovered_mistakes_are_told_apart_on_the_first_case():
    """Clipping and absolute values only show on the edge cases; every other mistake shows, distinctly, on the first."""
    clean, spliced, ablated = part6.loss_cases()[0]
    right = reference.loss_recovered(clean, spliced, ablated)
    values = [("right", right)]
    values += [
        (message, value)
        for message, wrongs in part6.loss_recovered_mistakes(clean, spliced, ablated).items()
        for value in wrongs
        if value != right
    ]
    assert len(values) == 15
    for (name_a, a), (name_b, b) in itertools.combinations(values, 2):
        assert name_a == name_b or abs(a - b) > 1e-2, (name_a, name_b)


def test_loss_recovered_cases_cover_the_edges():
    values = [reference.loss_recovered(*(float(loss) for loss in case)) for case in part6.loss_cases()]
    assert 1.0 in values and 0.0 in values and max(values) > 1 and min(values) < 0


# Random state -----------------------------------------------------------------------------


def test_checks_do_not_change_the_learners_random_state(checks):
    random.seed(5), np.random.seed(5), torch.manual_seed(5)
    expected = (random.random(), np.random.rand(), torch.rand(3))
    random.seed(5), np.random.seed(5), torch.manual_seed(5)
    checks.passes(part6.test_fraction_variance_explained, reference.fraction_variance_explained)
    checks.passes(sparsity_check(reference.l0_norm, reference.firing_frequency), None)
    checks.passes(part6.test_spliced_loss, reference.spliced_loss)
    checks.passes(part6.test_loss_recovered, reference.loss_recovered)
    assert (random.random(), np.random.rand()) == expected[:2] and torch.equal(torch.rand(3), expected[2])


# Wrong objects ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("check", "name"),
    [
        (part6.test_fraction_variance_explained, "fraction_variance_explained"),
        (part6.test_spliced_loss, "spliced_loss"),
        (part6.test_loss_recovered, "loss_recovered"),
    ],
)
def test_a_value_instead_of_the_function_is_named(checks, check, name):
    checks.fails(check, torch.zeros(3), rf"Pass your `{name}` function itself")
