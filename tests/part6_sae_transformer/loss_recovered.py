"""Exercise 5.3's checks: the spliced loss, and the fraction of the loss it recovers.

The spliced-loss check runs learner code on the check's own clean model (`_model.py`); code
that leaves a hook attached is told so, and the next check rebuilds the model instead of
inheriting the hook. The last call repeats a hook with another `replace`, so that a loss kept
from an earlier call (or one that ignores `replace`) shows.
"""

import dataclasses
import functools
import inspect
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from transformer_lens import TransformerBridge

from part_utils.palindromes import next_token_loss
from part_utils.reference import part6_sae_transformer as reference
from tests.checking import (
    CheckFailure,
    NotImplementedYet,
    call_learner,
    check,
    diagnose_among,
    expect_number,
    globals_hint,
    learner_callable,
)
from tests.part6_sae_transformer._model import PristineModel, _attached_hooks, _pristine_model, _tokens, clean_model

# Spliced loss -----------------------------------------------------------------------------

HOOKS = ("blocks.0.hook_attn_out", "blocks.0.hook_mlp_out")


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
    other_replace: Callable[[Tensor], Tensor]  # for the repeated call at HOOKS[-1]
    other_loss: Tensor


@functools.lru_cache(maxsize=1)
def _expectations(pristine: PristineModel) -> SplicedExpectations:
    model = pristine.model
    device = next(model.parameters()).device
    tokens = _tokens().to(device)
    replace = _replacement(torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(6)).to(device))
    with torch.no_grad():
        clean = next_token_loss(model(tokens), tokens).cpu().double()
    outcomes = {hook: spliced_outcomes(model, tokens, hook, replace) for hook in HOOKS}
    other_replace = _replacement(torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(7)).to(device))
    with torch.no_grad():
        other_loss = next_token_loss(_run_with_hook(model, tokens, HOOKS[-1], other_replace), tokens).cpu().double()
    return SplicedExpectations(tokens, replace, clean, outcomes, other_replace, other_loss)


@torch.no_grad()
def spliced_outcomes(
    model: TransformerBridge, tokens: Tensor, hook: str, replace: Callable[[Tensor], Tensor]
) -> dict[str, Tensor]:
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


def _call_on_model(
    function: Callable[..., Any],
    model: TransformerBridge,
    tokens: Tensor,
    hook: str,
    replace: Callable[[Tensor], Tensor],
    what: str,
) -> Any:
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
            f"`{what}` left a hook attached to the model at {where!r} after it returned, so every later run of the "
            "model would still be changed: add hooks through `model.run_with_hooks(...)` or `with model.hooks(...):`, "
            "which remove them afterwards."
        )
    return result


def _explain_failure(failure: CheckFailure, what: str) -> str:
    """Name the two ways of calling `replace` wrongly; give the model's tensors the names a learner writes."""
    cause, message = failure.__cause__, str(failure)
    if isinstance(cause, TypeError) and "replace()" in str(cause):
        if "unexpected keyword argument 'hook'" in str(cause):
            return (
                f"`{what}` handed `replace` itself to the model as the hook function, but TransformerLens calls a "
                "hook as hook_fn(act, hook=...): define a hook function of (act, hook) that returns replace(act)."
            )
        if "positional argument" in str(cause):
            return (
                f"`{what}` called `replace` with more than the activation: inside your hook function, "
                "call replace(act)."
            )
    if isinstance(cause, RuntimeError) and "same device" in str(cause):
        return (
            f"`{what}` mixed devices ({cause}): keep everything on the model's device, "
            "next(model.parameters()).device, where the tokens already are."
        )
    return message.replace("._original_component", "")


def _spliced_number(result: object, tokens: Tensor, what: str) -> Tensor:
    n_strings, n_positions = tokens.shape
    if isinstance(result, Tensor) and result.ndim == 3:
        raise CheckFailure(
            f"`{what}` returned the logits: ask the model for return_type='loss' and return that number "
            "(a float, via .item())."
        )
    if isinstance(result, Tensor) and tuple(result.shape) in ((n_strings, n_positions - 1), (n_strings, n_positions)):
        raise CheckFailure(
            f"`{what}` returned a loss for every token: return their mean, one number (return_type='loss' gives it)."
        )
    per_string = f"`{what}` returned one loss per string: return the mean over every predicted token, one number."
    return expect_number(result, what, per_axis={n_strings: per_string})


def _splice_mistakes(expectations: SplicedExpectations, hook: str, n_predicted: int) -> dict[str, list[Tensor]]:
    """What mistaken splices at `hook` give, each under the sentence that names it."""
    tokens, outcomes = expectations.tokens, expectations.outcomes
    expected, other = outcomes[hook], next(h for h in HOOKS if h != hook)
    return {
        f"Asked to splice at {hook!r}, your code changed {other!r}: use the `hook_name` argument.": [
            outcomes[other]["loss"]
        ],
        (
            "This is the clean loss: the replacement had no effect. Does your hook function return `replace(act)` "
            "(or write it into `act` in place)?"
        ): [expectations.clean],
        (
            "Your hook left position 0 as it was: replace the whole activation with replace(act); "
            "the replacement function itself decides which positions change."
        ): [expected["first position kept"]],
        (
            "The loss compares each position's logits with that position's own token; position p predicts "
            "token p + 1 (logits[:, :-1] against tokens[:, 1:]), as return_type='loss' does."
        ): [expected["unshifted"], expected["shifted backwards"]],
        (
            "The loss is summed over tokens (or positions); return the mean over every predicted token, "
            "as return_type='loss' gives it."
        ): [
            expected["loss"] * n_predicted,
            expected["loss"] * (tokens.shape[1] - 1),
            expected["loss"] * tokens.shape[0],
        ],
    }


@check("spliced_loss")
def test_spliced_loss(learner: object) -> str:
    function = learner_callable(learner, "spliced_loss")
    clean_model()  # rebuilds the model if earlier learner code left it changed
    expectations = _expectations(_pristine_model())
    tokens, replace = expectations.tokens, expectations.replace
    n_predicted = tokens.shape[0] * (tokens.shape[1] - 1)
    for hook in HOOKS:
        what = f"spliced_loss(model, tokens, {hook!r}, replace)"
        result = _call_on_model(function, clean_model(), tokens.clone(), hook, replace, what)
        diagnose_among(
            _spliced_number(result, tokens, what),
            expectations.outcomes[hook]["loss"],
            _splice_mistakes(expectations, hook, n_predicted),
            otherwise=_spliced_differs(function, what),
            atol=1e-5,
        )
    _check_fresh_each_call(function, expectations)
    return f"two hooks on {len(tokens)} held-out strings, from a clean model each time"


def _spliced_differs(function: Callable[..., Any], what: str) -> str:
    return (
        "The spliced loss differs from the reference: run the model with one hook at `hook_name` that "
        "returns `replace(act)`, with return_type='loss'." + globals_hint(function, what)
    )


def _check_fresh_each_call(function: Callable[..., Any], expectations: SplicedExpectations) -> None:
    """The same hook again with another `replace`: the loss must follow `replace`, not an earlier call."""
    hook, tokens = HOOKS[-1], expectations.tokens
    what = f"spliced_loss(model, tokens, {hook!r}, another_replace)"
    result = _call_on_model(function, clean_model(), tokens.clone(), hook, expectations.other_replace, what)
    diagnose_among(
        _spliced_number(result, tokens, what),
        expectations.other_loss,
        {
            (
                f"`{what}` returned the loss of the previous call at this hook, although `replace` changed: "
                "compute the loss afresh on every call, from the `replace` it is given (keep no result from an "
                "earlier call)."
            ): [expectations.outcomes[hook]["loss"]]
        },
        otherwise=_spliced_differs(function, what),
        atol=1e-5,
    )


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
        "The clean and ablated losses are swapped: this is the fraction lost, 1 minus the fraction recovered.": [
            1 - recovered
        ],
        "This is a percentage; return the fraction (1.0 for nothing lost), not 100 times it.": [100 * recovered],
        (
            "Loss recovered is clipped to [0, 1]; do not clip: a spliced loss below the clean loss gives more than 1, "
            "one above the ablated loss less than 0."
        ): [min(1.0, max(0.0, recovered))],
        "An absolute value hides the sign: a spliced loss above the ablated loss must give a negative fraction.": [
            abs(recovered)
        ],
        "The numerator should be ablated − spliced, how much of the ablation's damage the splice undoes.": [
            recovered - 1
        ],
        (
            "The sign is flipped: loss recovered is (ablated − spliced) / (ablated − clean), 1 when the spliced loss "
            "equals the clean loss."
        ): [-recovered],
        (
            "This is a ratio of losses; loss recovered measures where the spliced loss sits between the clean and "
            "the ablated loss."
        ): [clean / spliced, spliced / clean, spliced / ablated, ablated / spliced],
        (
            "Brackets are missing: division comes before subtraction, so write both differences in brackets, "
            "(ablated − spliced) / (ablated − clean)."
        ): [
            ablated - spliced / (ablated - clean),
            (ablated - spliced) / ablated - clean,
            ablated - spliced / ablated - clean,
        ],
        "The denominator should be the whole range, ablated − clean.": [
            (ablated - spliced) / (spliced - clean) if spliced != clean else float("nan"),
            (ablated - spliced) / ablated,
            (ablated - spliced) / clean,
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
        copies = [loss.clone() if isinstance(loss, Tensor) else loss for loss in losses]
        actual = expect_number(call_learner(function, *copies, what=what), "loss_recovered")
        mistakes = loss_recovered_mistakes(clean, spliced, ablated)
        if order is not None:
            as_named = dict(zip(order, (clean, spliced, ablated)))
            mistakes = {
                (
                    f"Your loss_recovered takes its arguments as ({', '.join(order)}), but it is called as "
                    "loss_recovered(clean, spliced, ablated): put them in that order."
                ): [reference.loss_recovered(as_named["clean"], as_named["spliced"], as_named["ablated"])],
                **mistakes,
            }
        diagnose_among(
            actual,
            torch.tensor(reference.loss_recovered(clean, spliced, ablated), dtype=torch.float64),
            {
                message: [torch.tensor(value, dtype=torch.float64) for value in values]
                for message, values in mistakes.items()
            },
            otherwise=(
                "Loss recovered differs from the reference: (ablated − spliced) / (ablated − clean), unclipped."
                + globals_hint(function, "loss_recovered")
            ),
        )
    return (
        f"{len(cases)} cases, with spliced equal to clean, equal to ablated, better than clean and worse than ablated"
    )
