"""The machinery behind every learner-facing check.

A check calls the learner's code on seeded, non-trivial inputs inside a forked random
state, compares with the reference, and on a mismatch names the most likely mistake in
one sentence. It never shows reference values. In IPython, a failed check prints only
its message (no traceback into this module), and still stops "Run all".
"""

import functools
import inspect
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import torch
from torch import Tensor

from part_utils.seeding import forked_rng

CHECKS_DIR = Path(__file__).resolve().parent
P = ParamSpec("P")
R = TypeVar("R")


class CheckFailure(AssertionError):
    """A check found a problem; the message says what is probably wrong."""


class NotImplementedYet(CheckFailure):
    """The learner's function still raises NotImplementedError."""


def _short_traceback(shell: Any, etype: type, value: BaseException, tb: Any, tb_offset: int | None = None) -> list[str]:
    red, reset = "\x1b[31m", "\x1b[0m"
    structured = [f"{red}✘ {value}{reset}"]
    shell._showtraceback(etype, value, structured)
    return structured


def _install_short_tracebacks() -> None:
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is not None:
        shell.set_custom_exc((CheckFailure,), _short_traceback)


_install_short_tracebacks()


def check(exercise: str, seed: int = 0) -> Callable[[Callable[P, R]], Callable[P, None]]:
    """Decorate a check: forked seeded random state, clear failures, one pass line at the end."""

    def decorate(body: Callable[P, R]) -> Callable[P, None]:
        @functools.wraps(body)
        def run(*args: P.args, **kwargs: P.kwargs) -> None:
            with forked_rng(seed):
                summary = body(*args, **kwargs)
            suffix = f" ({summary})" if summary else ""
            print(f"✔ {exercise}: all checks passed{suffix}.")

        return run

    return decorate


def learner_callable(thing: object, name: str) -> Callable[..., Any]:
    """The learner's function: given directly, or looked up on the class (or an instance's class)."""
    if inspect.isfunction(thing):
        return thing
    owner = thing if inspect.isclass(thing) else type(thing)
    candidate = inspect.getattr_static(owner, name, None)
    if isinstance(candidate, property):  # e.g. W_dec_normalized: check its getter
        candidate = candidate.fget
    else:
        candidate = getattr(owner, name, None)
    if not inspect.isfunction(candidate):  # missing, or inherited from a builtin such as object.__init__
        raise CheckFailure(
            f"Expected your `{name}` function or the class that has it as a method, but got "
            f"{type(thing).__name__} `{thing!r:.60}`; pass e.g. `ToyModel` or the function itself."
        )
    return candidate


def call_learner(function: Callable[..., R], *args: Any, what: str, **kwargs: Any) -> R:
    """Call learner code, turning a stub or a crash into a one-sentence failure."""
    try:
        return function(*args, **kwargs)
    except CheckFailure:
        raise
    except NotImplementedError as error:
        raise NotImplementedYet(
            f"`{what}` is not implemented yet: replace its `raise NotImplementedError(...)` with your code, "
            "run that cell, then run this check again."
        ) from error
    except Exception as error:
        raise CheckFailure(
            f"`{what}` raised {type(error).__name__}: {error} (at {_learner_location(error)}); "
            "fix that error first, then run this check again."
        ) from error


def _learner_location(error: BaseException) -> str:
    """The innermost frame outside the check modules and installed packages, i.e. the learner's line."""
    location = "your code"
    traceback = error.__traceback__
    while traceback is not None:
        filename = traceback.tb_frame.f_code.co_filename
        if Path(filename).resolve().parent != CHECKS_DIR and "-packages" not in filename:
            location = f"line {traceback.tb_lineno} of `{traceback.tb_frame.f_code.co_name}`"
        traceback = traceback.tb_next
    return location


def expect_tensor(value: object, shape: tuple[int, ...], *, what: str, axes: str) -> Tensor:
    """Fail with the expected shape named, or return the value as a float64 CPU tensor."""
    if not isinstance(value, Tensor):
        raise CheckFailure(f"`{what}` should return a torch.Tensor of shape [{axes}], but returned {type(value).__name__}.")
    if tuple(value.shape) != shape:
        raise CheckFailure(
            f"`{what}` returned shape {tuple(value.shape)}, but [{axes}] here is {shape}: check which dimensions you "
            "reduce, keep, or put in which order."
        )
    if not torch.is_floating_point(value):
        raise CheckFailure(f"`{what}` returned a {value.dtype} tensor; it should hold floating-point values.")
    if not torch.isfinite(value).all():
        raise CheckFailure(f"`{what}` returned NaN or infinite values.")
    return value.detach().to("cpu", torch.float64)


def close(a: Tensor, b: Tensor, *, rtol: float = 1e-4, atol: float = 1e-5) -> bool:
    return a.shape == b.shape and torch.allclose(a.to(torch.float64), b.to(torch.float64), rtol=rtol, atol=atol)


def diagnose(
    actual: Tensor,
    expected: Tensor,
    mistakes: Mapping[str, Tensor],
    *,
    otherwise: str,
    rtol: float = 1e-4,
    atol: float = 1e-5,
) -> None:
    """Pass if `actual` matches `expected`; else name the first known mistake it matches.

    `mistakes` maps a one-sentence description to what a specific wrong implementation
    returns on the same inputs.
    """
    if close(actual, expected, rtol=rtol, atol=atol):
        return
    for description, wrong_result in mistakes.items():
        if close(actual, wrong_result, rtol=rtol, atol=atol):
            raise CheckFailure(description)
    raise CheckFailure(otherwise)
