"""Checks for Part 6 (SAEs on a small transformer). Call them from the notebook, e.g.
`test_fraction_variance_explained(fraction_variance_explained)`.

Inputs have non-zero means that differ between dimensions, and shapes that differ from each
other (37 or 41 tokens, 5 or 7 dimensions), so that a reduction over the wrong axis fails
instead of passing by accident; further cases cover few tokens (where torch.var's n − 1
shows), float64, a single dimension, a single token, and tokens with no active latent.
Learner code always gets copies; the expected values come from the originals.

The spliced-loss check runs its own copy of the palindrome model, on the device the notebook
uses (so that code which moves tokens there works in the check as in the notebook), and every
call of learner code starts from a clean model (the shipped weights, eval mode, no hook but the
bridge's own). Code that leaves a hook attached is told so, and the next check rebuilds the
model instead of inheriting the hook.
"""

import dataclasses
import functools
import inspect
import itertools
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from transformer_lens import TransformerBridge

from part_utils.device import get_device
from part_utils.palindromes import load_palindrome_model, next_token_loss, palindrome_dataset
from part_utils.reference import part6_sae_transformer as reference
from tests.checking import (
    call_learner,
    check,
    CheckFailure,
    close,
    diagnose_among,
    expect_number,
    expect_tensor,
    learner_callable,
    NotImplementedYet,
)

# Shared helpers ----------------------------------------------------------------------------


def _copies(*tensors: Tensor) -> tuple[Tensor, ...]:
    return tuple(tensor.clone() for tensor in tensors)


# Fraction of variance explained -----------------------------------------------------------


def _activations(n_tokens: int, scales: list[float], offset: float, noise: float, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
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
        _activations(9, [0.5, 1.5, 1.0, 2.0], offset=4.0, noise=0.5, dtype=torch.float64),
        _activations(23, [1.5], offset=5.0, noise=0.4),  # a single dimension
    ]


def fve_mistakes(x: Tensor, x_hat: Tensor) -> dict[str, list[Tensor]]:
    """What realistic wrong versions of FVE give on (x, x_hat), each under the sentence that names it."""
    x, x_hat = x.double(), x_hat.double()
    n, d = x.shape
    error = x - x_hat
    errors, deviations = error.pow(2).sum(), (x - x.mean(dim=0)).pow(2).sum()
    about_scalar_mean = (x - x.mean()).pow(2).sum()

    def fve(numerator: Tensor, denominator: Tensor) -> Tensor:
        return 1 - numerator / denominator

    return {
        "The variance is measured about zero: subtract the mean activation vector (the mean over tokens) from x before squaring.": [
            fve(errors, x.pow(2).sum())
        ],
        "x is centred on the single number x.mean(), the mean of every entry (as torch.var(x) without dim is): centre each dimension on its own mean over tokens, x.mean(dim=0).": [
            fve(errors, about_scalar_mean),
            fve(errors / (n * d), about_scalar_mean / (n * d - 1)),
        ],
        "The variance is torch.var's default, which divides by tokens − 1 (unbiased) where the squared errors are divided by tokens: pass correction=0, or sum the squared deviations as the formula does.": [
            fve(errors, deviations * n / (n - 1))
        ],
        "The errors are centred too (a variance of x − x_hat): the numerator is the plain sum of squared errors ‖x_t − x̂_t‖², their mean included.": [
            fve((error - error.mean(dim=0)).pow(2).sum(), deviations)
        ],
        "This is 1 − var(x − x_hat) / var(x) over all entries: the numerator is the plain sum of squared errors, and x is centred on its mean over tokens, one per dimension.": [
            fve((error - error.mean()).pow(2).sum(), about_scalar_mean)
        ],
        "The mean is taken over the wrong dimension: subtract the mean over tokens (dim 0), one mean per dimension of d.": [
            fve(errors, (x - x.mean(dim=1, keepdim=True)).pow(2).sum())
        ],
        "This is the fraction of variance *unexplained*: return 1 minus it.": [errors / deviations],
        "Each dimension's FVE is averaged: sum the squared errors and the squared deviations over all dimensions first, then divide once.": [
            fve(error.pow(2).sum(dim=0), (x - x.mean(dim=0)).pow(2).sum(dim=0)).mean()
        ],
        "Each token's FVE is averaged: sum the squared errors and the squared deviations over all tokens first, then divide once.": [
            fve(error.pow(2).sum(dim=1), (x - x.mean(dim=0)).pow(2).sum(dim=1)).mean()
        ],
        "The denominator uses x_hat (its variance, or its mean); it should be the squared deviations of x from x's own mean over tokens.": [
            fve(errors, (x_hat - x_hat.mean(dim=0)).pow(2).sum()),
            fve(errors, (x - x_hat.mean(dim=0)).pow(2).sum()),
        ],
        "One sum is averaged and the other is not: reduce the squared errors and the squared deviations the same way (both summed, or both averaged).": [
            fve(errors / n, deviations),
            fve(errors / (n * d), deviations),
            fve(errors, deviations / n),
            fve(errors, deviations / (n * d)),
        ],
        "This compares x_hat's spread with x's (a ratio of variances, or the explained sum of squares): FVE is 1 − squared errors / squared deviations of x.": [
            (x_hat - x_hat.mean(dim=0)).pow(2).sum() / deviations,
            (x_hat - x.mean(dim=0)).pow(2).sum() / deviations,
        ],
        "The distances are not squared: FVE compares sums of *squared* distances (e.g. a norm, squared).": [
            fve(error.norm(), (x - x.mean(dim=0)).norm()),
            fve(error.norm(dim=-1).sum(), (x - x.mean(dim=0)).norm(dim=-1).sum()),
        ],
    }


@check("fraction_variance_explained")
def test_fraction_variance_explained(learner: object) -> str:
    function = learner_callable(learner, "fraction_variance_explained")
    what = "fraction_variance_explained(x, x_hat)"
    for x, x_hat in fve_cases():
        n, d = x.shape
        per_axis = {
            d: f"`{what}` returned one value per dimension ([d]): sum the squared errors and deviations over the dimensions too, so the result is one number.",
            n: f"`{what}` returned one value per token ([tokens]): sum the squared errors and deviations over the tokens too, so the result is one number.",
        }
        result = call_learner(function, *_copies(x, x_hat), what=what)
        actual = expect_number(result, what, per_axis=per_axis)
        diagnose_among(
            actual,
            reference.fraction_variance_explained(x.double(), x_hat.double()),
            fve_mistakes(x, x_hat),
            otherwise="FVE differs from the reference: 1 − (sum of squared errors) / (sum of squared deviations of x from its mean over tokens), both summed over tokens and dimensions.",
        )
    return "5 cases: non-zero means, 6 to 41 tokens, float32 and float64, one dimension"


# L0 and firing frequency ------------------------------------------------------------------


def latent_cases() -> list[Tensor]:
    """SAE latents (never negative): a dead latent, a frequent one, tiny positive values, tokens with nothing active."""
    main = torch.relu(torch.randn(41, 7) - 0.4) * torch.rand(41, 7) * 3
    main[main > 0] += 0.05  # ordinary activations lie above every small cut-off (up to 1e-2) used instead of 0
    main[:, 2] = 0.0  # a dead latent
    main[:, 5] = torch.rand(41) + 0.1  # one that fires on every token with anything active
    main[::4, 0] = 1e-6  # tiny but active
    main[1::6, 3] = 1e-30  # tinier still
    main[[7, 19, 33]] = 0.0  # tokens on which no latent is active
    square = (torch.relu(torch.randn(9, 9) - 0.2) * 2).double()  # tokens = d_sae, so only the values tell the axes apart
    square[4] = 0.0
    one_token = torch.tensor([[0.0, 0.7, 0.0, 2e-7, 1.3, 0.0]])
    return [main, square, one_token]


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
        "L0 is counted over the wrong dimension: count active latents per token (over d_sae), then average over tokens.": [active.sum(dim=0).mean()],
        "L0 is summed over tokens; average the per-token counts instead.": [active.sum()],
        "This is the fraction of latents active; L0 is their number per token (do not divide by d_sae).": [active.mean()],
        "L0 counts exact zeros too (>= 0): a latent is active only when its value is > 0.": [torch.tensor(float(latents.shape[1]))],
        "L0 was rounded down to a whole number (integer division?): divide as floating-point numbers.": [counts.mean().floor()],
        "L0 counts only latents above some threshold; a latent is active when its value is > 0, however small.": [
            mask.sum(dim=1).mean() for mask in _above_thresholds(latents)
        ],
        "L0 should count active latents, not measure their size (a sum or a norm of their values).": [
            latents.sum(dim=1).mean(), latents.norm(dim=1).mean(), latents.sum()
        ],
        "L0 is averaged only over tokens with some latent active; average over every token (one with none active counts 0).": [
            counts.sum() / (counts > 0).sum()
        ],
    }


def frequency_mistakes(latents: Tensor) -> dict[str, list[Tensor]]:
    latents = latents.double()
    active = (latents > 0).double()
    return {
        "These are counts of tokens; divide by the number of tokens to get a frequency.": [active.sum(dim=0)],
        "These are percentages; return fractions between 0 and 1.": [100 * active.mean(dim=0)],
        "The counts are divided by d_sae; divide each latent's count by the number of tokens.": [active.sum(dim=0) / latents.shape[1]],
        "This averages the activation values; a firing frequency averages whether each latent is active (> 0).": [latents.mean(dim=0)],
        "The frequency is taken over the wrong axis: average over tokens (dim 0), one value per latent.": [active.mean(dim=1)],
        "The frequencies count exact zeros too (>= 0): a latent is active only when its value is > 0.": [torch.ones(latents.shape[1], dtype=torch.float64)],
        "The frequencies count only values above some threshold; a latent is active when its value is > 0, however small.": [
            mask.mean(dim=0) for mask in _above_thresholds(latents)
        ],
        "Each latent's firings are divided by the number of firings of all latents; divide by the number of tokens.": [
            active.sum(dim=0) / active.sum().clamp_min(1)
        ],
    }


def _call_sparsity(function: Callable[..., Any], latents: Tensor, what: str) -> Any:
    """The learner's metric on a copy of `latents`, naming torch.mean's refusal of integer and bool tensors."""
    try:
        return call_learner(function, latents.clone(), what=what)
    except CheckFailure as failure:
        if isinstance(failure.__cause__, RuntimeError) and "could not infer output dtype" in str(failure.__cause__):
            raise CheckFailure(
                f"`{what}` averaged a bool or integer tensor, which torch.mean refuses: convert the mask `latents > 0` with .float() first."
            ) from failure.__cause__
        raise


def _frequency_result(value: object, latents: Tensor, what: str) -> Tensor:
    """The learner's frequencies as float64, naming bool and integer results and a per-token shape."""
    n_tokens, d_sae = latents.shape
    if isinstance(value, Tensor) and tuple(value.shape) == (n_tokens,) and n_tokens != d_sae:
        raise CheckFailure(f"`{what}` returned one value per token ([tokens]); the frequency is one value per latent: average over tokens (dim 0).")
    if isinstance(value, Tensor) and tuple(value.shape) == (1, d_sae):
        raise CheckFailure(f"`{what}` returned shape (1, d_sae): return one value per latent, [d_sae] (without keepdim=True).")
    if isinstance(value, Tensor) and value.dtype == torch.bool:
        raise CheckFailure(f"`{what}` returned a bool tensor (whether each latent fired at all?); return, as floats, the fraction of tokens on which each is > 0.")
    if isinstance(value, Tensor) and tuple(value.shape) == (d_sae,) and not torch.is_floating_point(value):
        if close(value.double(), (latents > 0).double().sum(dim=0)):
            raise CheckFailure("These are counts of tokens; divide by the number of tokens to get a frequency.")
        raise CheckFailure(f"`{what}` returned an integer tensor ({value.dtype}); frequencies are fractions: convert the mask with .float() before averaging.")
    return expect_tensor(value, (d_sae,), what=what, axes="d_sae")


@check("l0_norm and firing_frequency")
def test_sparsity_metrics(l0_norm: object, firing_frequency: object) -> str:
    l0_function = learner_callable(l0_norm, "l0_norm")
    frequency_function = learner_callable(firing_frequency, "firing_frequency")
    for latents in latent_cases():
        n_tokens, d_sae = latents.shape
        per_axis = {
            d_sae: "`l0_norm` returned one value per latent ([d_sae]): count the active latents of each token (over d_sae), then average those counts over tokens.",
            n_tokens: "`l0_norm` returned one count per token ([tokens]): average these counts over tokens, so the result is one number.",
        }
        actual = expect_number(_call_sparsity(l0_function, latents, "l0_norm(latents)"), "l0_norm", per_axis=per_axis)
        diagnose_among(
            actual,
            reference.l0_norm(latents).double(),
            l0_mistakes(latents),
            otherwise="L0 differs from the reference: the number of latents > 0 on each token, averaged over tokens.",
        )
        frequency = _frequency_result(_call_sparsity(frequency_function, latents, "firing_frequency(latents)"), latents, "firing_frequency")
        diagnose_among(
            frequency,
            reference.firing_frequency(latents).double(),
            frequency_mistakes(latents),
            otherwise="The firing frequencies differ from the reference: for each latent, the fraction of tokens on which it is > 0.",
        )
    return "41 tokens × 7 latents (dead, frequent, tiny and empty ones), 9 × 9 in float64, and a single token"


# Spliced loss -----------------------------------------------------------------------------

HOOKS = ("blocks.0.hook_attn_out", "blocks.0.hook_mlp_out")
HOOK_TABLES = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
Hook = tuple[str, str, int]  # module name, which table, handle id


def _attached_hooks(model: TransformerBridge) -> frozenset[Hook]:
    """Every PyTorch hook on every submodule, TransformerLens's hook points included."""
    return frozenset(
        (name, table, key) for name, module in model.named_modules() for table in HOOK_TABLES for key in getattr(module, table, {})
    )


@dataclasses.dataclass(frozen=True, eq=False)  # hashed by identity: one set of expectations per model built
class PristineModel:
    """The palindrome model as shipped, with what it looked like before any learner code ran."""

    model: TransformerBridge
    tensors: dict[str, Tensor]  # name -> the very object
    values: dict[str, Tensor]  # name -> a private copy
    hooks: frozenset[Hook]  # the bridge's own

    def is_intact(self) -> bool:
        now = dict(itertools.chain(self.model.named_parameters(), self.model.named_buffers()))
        return (
            now.keys() == self.tensors.keys()
            and all(now[name] is tensor and torch.equal(tensor.detach(), self.values[name]) for name, tensor in self.tensors.items())
            and _attached_hooks(self.model) == self.hooks
        )


@functools.cache
def _pristine_model() -> PristineModel:
    model = load_palindrome_model(device=get_device())
    with torch.no_grad():
        model(_tokens()[:1].to(get_device()))  # the bridge wires its own capture hooks on the first forward pass
    tensors = dict(itertools.chain(model.named_parameters(), model.named_buffers()))
    return PristineModel(model, tensors, {name: tensor.detach().clone() for name, tensor in tensors.items()}, _attached_hooks(model))


def clean_model() -> TransformerBridge:
    """The check's model, rebuilt if learner code left a hook, changed a weight, or replaced one."""
    if not _pristine_model().is_intact():
        _pristine_model.cache_clear()
    return _pristine_model().model.eval().requires_grad_(False)


@functools.cache
def _tokens() -> Tensor:
    return palindrome_dataset().test_tokens[:24]


def _replacement(vector: Tensor) -> Callable[[Tensor], Tensor]:
    def replace(act: Tensor) -> Tensor:
        return 0.3 * act + vector

    return replace


def _hook_name(model: TransformerBridge, module_name: str, preferred: str) -> str:
    """The hook-point name a learner would write for a submodule (the one the check asked for, when it is that)."""
    module = model.get_submodule(module_name)
    names = [name for name, point in model.hook_dict.items() if point is module]
    return preferred if preferred in names else (names[0] if names else module_name.replace("._original_component", ""))


def _run_with_hook(model: TransformerBridge, tokens: Tensor, hook: str, replace: Callable[[Tensor], Tensor]) -> Tensor:
    return model.run_with_hooks(tokens, return_type="logits", fwd_hooks=[(hook, lambda act, hook: replace(act))])


@dataclasses.dataclass(frozen=True)
class SplicedExpectations:
    """What the spliced-loss check compares with, computed once per model built, before any learner code ran on it."""

    tokens: Tensor  # on the model's device
    replace: Callable[[Tensor], Tensor]
    clean: Tensor
    outcomes: dict[str, dict[str, Tensor]]  # hook name -> the right loss and what mistaken splices give


@functools.lru_cache(maxsize=1)
def _expectations(pristine: PristineModel) -> SplicedExpectations:
    model = pristine.model
    device = next(model.parameters()).device
    tokens = _tokens().to(device)
    replace = _replacement(torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(6)).to(device))
    with torch.no_grad():
        clean = next_token_loss(model(tokens), tokens).cpu().double()
    return SplicedExpectations(tokens, replace, clean, {hook: spliced_outcomes(model, tokens, hook, replace) for hook in HOOKS})


@torch.no_grad()
def spliced_outcomes(model: TransformerBridge, tokens: Tensor, hook: str, replace: Callable[[Tensor], Tensor]) -> dict[str, Tensor]:
    """The right spliced loss and what two mistaken splices give, in float64."""
    logits = _run_with_hook(model, tokens, hook, replace)
    first_kept = _run_with_hook(model, tokens, hook, lambda act: torch.cat([act[:, :1], replace(act)[:, 1:]], dim=1))
    outcomes = {
        "loss": next_token_loss(logits, tokens),
        "unshifted": F.cross_entropy(logits.flatten(0, 1), tokens.flatten()),
        "shifted backwards": F.cross_entropy(logits[:, 1:].flatten(0, 1), tokens[:, :-1].flatten()),
        "first position kept": next_token_loss(first_kept, tokens),
    }
    return {name: loss.cpu().double() for name, loss in outcomes.items()}


def _call_on_model(function: Callable[..., Any], model: TransformerBridge, tokens: Tensor, hook: str, replace: Callable[[Tensor], Tensor], what: str) -> Any:
    """Call the learner's spliced_loss; name a hook it leaves behind, and never let its changes reach the next check."""
    before = _attached_hooks(model)
    try:
        result = call_learner(function, model, tokens, hook, replace, what=what)
    except NotImplementedYet:
        raise
    except CheckFailure as failure:
        raise CheckFailure(_explain_failure(failure, what)) from failure.__cause__
    finally:
        leaked = sorted(_attached_hooks(model) - before)
        if leaked:
            _pristine_model.cache_clear()
    if leaked:
        where = _hook_name(model, leaked[0][0], hook)
        raise CheckFailure(
            f"`{what}` left a hook attached to the model at {where!r} after it returned, so every later run of the model would still be "
            "changed: add hooks through `model.run_with_hooks(...)` or `with model.hooks(...):`, which remove them afterwards."
        )
    return result


def _explain_failure(failure: CheckFailure, what: str) -> str:
    """Name the two ways of calling `replace` wrongly; give the model's tensors the names a learner writes."""
    cause, message = failure.__cause__, str(failure)
    if isinstance(cause, TypeError) and "replace()" in str(cause):
        if "unexpected keyword argument 'hook'" in str(cause):
            return (
                f"`{what}` handed `replace` itself to the model as the hook function, but TransformerLens calls a hook as "
                "hook_fn(act, hook=...): define a hook function of (act, hook) that returns replace(act)."
            )
        if "positional argument" in str(cause):
            return f"`{what}` called `replace` with more than the activation: inside your hook function, call replace(act)."
    if isinstance(cause, RuntimeError) and "same device" in str(cause):
        return f"`{what}` mixed devices ({cause}): keep everything on the model's device, next(model.parameters()).device, where the tokens already are."
    return message.replace("._original_component", "")


def _spliced_number(result: object, tokens: Tensor, what: str) -> Tensor:
    n_strings, n_positions = tokens.shape
    if isinstance(result, Tensor) and result.ndim == 3:
        raise CheckFailure(f"`{what}` returned the logits: ask the model for return_type='loss' and return that number (a float, via .item()).")
    if isinstance(result, Tensor) and tuple(result.shape) in ((n_strings, n_positions - 1), (n_strings, n_positions)):
        raise CheckFailure(f"`{what}` returned a loss for every token: return their mean, one number (return_type='loss' gives it).")
    per_string = f"`{what}` returned one loss per string: return the mean over every predicted token, one number."
    return expect_number(result, what, per_axis={n_strings: per_string})


@check("spliced_loss")
def test_spliced_loss(learner: object) -> str:
    function = learner_callable(learner, "spliced_loss")
    clean_model()  # rebuilds the model if earlier learner code left it changed
    expectations = _expectations(_pristine_model())
    tokens, replace, clean, outcomes = expectations.tokens, expectations.replace, expectations.clean, expectations.outcomes
    n_predicted = tokens.shape[0] * (tokens.shape[1] - 1)
    for hook in HOOKS:
        what = f"spliced_loss(model, tokens, {hook!r}, replace)"
        result = _call_on_model(function, clean_model(), tokens.clone(), hook, replace, what)
        expected, other = outcomes[hook], next(h for h in HOOKS if h != hook)
        diagnose_among(
            _spliced_number(result, tokens, what),
            expected["loss"],
            {
                f"Asked to splice at {hook!r}, your code changed {other!r}: use the `hook_name` argument.": [outcomes[other]["loss"]],
                "This is the clean loss: the replacement had no effect. Does your hook function return `replace(act)` (or write it into `act` in place)?": [clean],
                "Your hook left position 0 as it was: replace the whole activation with replace(act); the replacement function itself decides which positions change.": [
                    expected["first position kept"]
                ],
                "The loss compares each position's logits with that position's own token; position p predicts token p + 1 (logits[:, :-1] against tokens[:, 1:]), as return_type='loss' does.": [
                    expected["unshifted"], expected["shifted backwards"]
                ],
                "The loss is summed over tokens (or positions); return the mean over every predicted token, as return_type='loss' gives it.": [
                    expected["loss"] * n_predicted, expected["loss"] * (tokens.shape[1] - 1), expected["loss"] * tokens.shape[0]
                ],
            },
            otherwise="The spliced loss differs from the reference: run the model with one hook at `hook_name` that returns `replace(act)`, with return_type='loss'.",
            atol=1e-5,
        )
    return f"two hooks on {len(tokens)} held-out strings, from a clean model each time"


# Loss recovered ---------------------------------------------------------------------------

Losses = tuple[float | Tensor, float | Tensor, float | Tensor]
LOSS_NAMES = ("clean", "spliced", "ablated")


def loss_cases() -> list[Losses]:
    """(clean, spliced, ablated): typical cases, then the edges the text defines, then 0-dimensional tensors."""
    return [
        (1.2, 1.6, 3.0),
        (0.8, 0.85, 2.1),
        (2.0, 2.6, 2.9),
        (1.3, 1.3, 2.7),  # spliced = clean: 1
        (1.1, 2.4, 2.4),  # spliced = ablated: 0
        (1.25, 1.2, 2.0),  # better than clean: above 1
        (1.0, 3.5, 2.5),  # worse than the ablation: negative
        (torch.tensor(1.4), torch.tensor(1.9), torch.tensor(3.1)),
    ]


def loss_recovered_mistakes(clean: float, spliced: float, ablated: float) -> dict[str, list[float]]:
    recovered = (ablated - spliced) / (ablated - clean)
    return {
        "The clean and ablated losses are swapped: this is the fraction lost, 1 minus the fraction recovered.": [1 - recovered],
        "This is a percentage; return the fraction (1.0 for nothing lost), not 100 times it.": [100 * recovered],
        "Loss recovered is clipped to [0, 1]; do not clip: a spliced loss below the clean loss gives more than 1, one above the ablated loss less than 0.": [
            min(1.0, max(0.0, recovered))
        ],
        "An absolute value hides the sign: a spliced loss above the ablated loss must give a negative fraction.": [abs(recovered)],
        "The numerator should be ablated − spliced, how much of the ablation's damage the splice undoes.": [recovered - 1],
        "The sign is flipped: loss recovered is (ablated − spliced) / (ablated − clean), 1 when the spliced loss equals the clean loss.": [-recovered],
        "This is a ratio of losses; loss recovered measures where the spliced loss sits between the clean and the ablated loss.": [
            clean / spliced, spliced / clean, spliced / ablated, ablated / spliced
        ],
        "The denominator should be the whole range, ablated − clean.": [
            (ablated - spliced) / (spliced - clean) if spliced != clean else float("nan"), (ablated - spliced) / ablated, (ablated - spliced) / clean
        ],
    }


def _argument_order(function: Callable[..., Any]) -> tuple[str, ...] | None:
    """The learner's parameter names when they are clean, spliced and ablated in another order."""
    try:
        names = tuple(inspect.signature(function).parameters)[:3]
    except (TypeError, ValueError):
        return None
    return names if sorted(names) == sorted(LOSS_NAMES) and names != LOSS_NAMES else None


@check("loss_recovered")
def test_loss_recovered(learner: object) -> str:
    function = learner_callable(learner, "loss_recovered")
    order = _argument_order(function)
    cases = loss_cases()
    for losses in cases:
        clean, spliced, ablated = (float(loss) for loss in losses)
        what = f"loss_recovered({clean:g}, {spliced:g}, {ablated:g})"
        actual = expect_number(call_learner(function, *[loss.clone() if isinstance(loss, Tensor) else loss for loss in losses], what=what), "loss_recovered")
        mistakes = loss_recovered_mistakes(clean, spliced, ablated)
        if order is not None:
            as_named = dict(zip(order, (clean, spliced, ablated)))
            mistakes = {
                f"Your loss_recovered takes its arguments as ({', '.join(order)}), but it is called as loss_recovered(clean, spliced, ablated): put them in that order.": [
                    reference.loss_recovered(as_named["clean"], as_named["spliced"], as_named["ablated"])
                ],
                **mistakes,
            }
        diagnose_among(
            actual,
            torch.tensor(reference.loss_recovered(clean, spliced, ablated), dtype=torch.float64),
            {message: [torch.tensor(value, dtype=torch.float64) for value in values] for message, values in mistakes.items()},
            otherwise="Loss recovered differs from the reference: (ablated − spliced) / (ablated − clean), unclipped.",
        )
    return f"{len(cases)} cases, with spliced equal to clean, equal to ablated, better than clean and worse than ablated"
