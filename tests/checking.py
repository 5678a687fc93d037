"""The machinery behind every learner-facing check.

A check calls the learner's code on seeded, non-trivial inputs inside a forked random
state, compares with the reference, and on a mismatch names the most likely mistake in
one sentence. It never shows reference values. In IPython, a failed check prints only
its message (no traceback into this module), and still stops "Run all".
"""

import contextlib
import dataclasses
import functools
import inspect
import math
import numbers
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import torch
from torch import Tensor, nn

from part_utils.seeding import forked_rng
from part_utils.tracebacks import learner_location, notebook_globals

CHECKS_DIR = Path(__file__).resolve().parent
GRADING_SEED: int | None = None
"""Set by the grader for one check: inputs then come from a seed secret to that grading run."""
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


@contextlib.contextmanager
def single_threaded() -> Iterator[None]:
    """Run a block on one thread, then restore the learner's setting.

    A check is many small operations: on a machine whose other cores are busy, every parallel
    one waits for a descheduled thread, which made checks ten times slower; on one thread each
    takes a fraction of a second anywhere, and no verdict depends on the thread count.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def check(exercise: str, seed: int = 0) -> Callable[[Callable[P, R]], Callable[P, None]]:
    """Decorate a check: forked seeded random state, one thread, clear failures, one pass line at the end."""

    def decorate(body: Callable[P, R]) -> Callable[P, None]:
        @functools.wraps(body)
        def run(*args: P.args, **kwargs: P.kwargs) -> None:
            secret = seed if GRADING_SEED is None else (seed * 1_000_003 + GRADING_SEED) % 2**32
            with forked_rng(secret), single_threaded():
                summary = body(*args, **kwargs)
            suffix = f" ({summary})" if summary else ""
            print(f"✔ {exercise}: all checks passed{suffix}.")

        return run

    return decorate


def learner_callable(
    thing: object, name: str, *, owner_hint: str | None = None, as_property: bool = False
) -> Callable[..., Any]:
    """The learner's function: given directly, or looked up on the class (or an instance's class).

    `owner_hint` names the class the exercise belongs to (None for a free function);
    `as_property` says the exercise is a property (such as `W_dec_normalized`): its getter is
    returned, and a plain method in its place is named as the mistake.
    """
    if inspect.isfunction(thing):
        return thing
    if not inspect.isclass(thing) and not isinstance(thing, nn.Module):
        wanted = (
            f"the class that has your `{name}` (e.g. `{owner_hint}`) or the function itself"
            if owner_hint
            else f"your `{name}` function itself"
        )
        raise CheckFailure(f"Pass {wanted}; this got {type(thing).__name__} `{thing!r:.60}`.")
    owner = thing if inspect.isclass(thing) else type(thing)
    candidate = inspect.getattr_static(owner, name, None)
    if isinstance(candidate, property):
        candidate = candidate.fget
    elif as_property and inspect.isfunction(candidate):
        raise CheckFailure(
            f"`{owner.__name__}.{name}` is a plain method, but the rest of the workbook reads it as an attribute "
            f"(`self.{name}`, no brackets): put `@property` between `@add_to_class({owner.__name__})` and `def {name}`."
        )
    elif isinstance(candidate, (staticmethod, classmethod)):
        candidate = candidate.__func__
    if not inspect.isfunction(candidate) or candidate.__module__.split(".")[0] in ("torch", "builtins"):
        # Missing, or inherited from torch or Python, such as nn.Module.__init__.
        raise CheckFailure(
            f"`{owner.__name__}` has no `{name}` of yours: the method was never attached to the "
            "class. Run the exercise "
            f"cell that defines it (with `@add_to_class({owner.__name__})` right above `def {name}`), then this check."
        )
    return candidate


def learner_function(thing: object, name: str) -> Callable[..., Any]:
    """The learner's free function; a class or a model handed in instead is named as such."""
    if inspect.isclass(thing) or isinstance(thing, nn.Module):
        kind = thing.__name__ if inspect.isclass(thing) else type(thing).__name__
        raise CheckFailure(
            f"`{name}` is a function of its own, not a method of `{kind}`: pass the function itself, "
            f"`test_{name}({name})`."
        )
    return learner_callable(thing, name)


def call_learner(
    function: Callable[..., R], *args: Any, what: str, may_change: Collection[str] = (), **kwargs: Any
) -> R:
    """Call learner code, turning a stub or a crash into a one-sentence failure.

    Every tensor handed in, and every tensor held by a module or small container handed in
    (parameters, buffers, tensor attributes), is snapshotted first; if the learner's code
    changed one in place, or replaced it, the check fails naming it. `may_change` lists the
    names (e.g. "self.W_enc", or "self" for everything it holds) that the exercise is meant
    to modify; the check then tests those changes itself.
    """
    named = _name_arguments(function, args, kwargs)
    before = Snapshot.of(named)
    grad_mode = torch.is_grad_enabled()
    try:
        result = function(*args, **kwargs)
    except CheckFailure:
        raise
    except NotImplementedError as error:
        raise NotImplementedYet(
            f"`{what}` is not implemented yet: replace its `raise NotImplementedError(...)` with your code, "
            "run that cell, then run this check again."
        ) from error
    except Exception as error:
        raise CheckFailure(
            f"`{what}` raised {type(error).__name__}: {error} (at {learner_line(error, function)})."
            f"{globals_hint(function, what, error)} Fix that error first, then run this check again."
        ) from error
    if torch.is_grad_enabled() != grad_mode:
        torch.set_grad_enabled(grad_mode)
        raise CheckFailure(
            f"`{what}` switched gradient tracking {'off' if grad_mode else 'on'} for everything after it "
            "(torch.set_grad_enabled): use `with torch.no_grad():` around just the lines that need it."
        )
    before.assert_unchanged(what=what, may_change=may_change)
    return result


def _name_arguments(function: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """Each argument under the name the learner's signature gives it (`arg0`... if it cannot be bound)."""
    try:
        bound = inspect.signature(function).bind(*args, **kwargs)
    except (TypeError, ValueError):
        return {**{f"argument {index + 1}": value for index, value in enumerate(args)}, **kwargs}
    named: dict[str, Any] = {}
    for name, value in bound.arguments.items():
        kind = inspect.signature(function).parameters[name].kind
        if kind is inspect.Parameter.VAR_POSITIONAL:
            named.update({f"{name}[{index}]": item for index, item in enumerate(value)})
        elif kind is inspect.Parameter.VAR_KEYWORD:
            named.update(value)
        else:
            named[name] = value
    return named


def _tensors_inside(name: str, value: Any, depth: int = 0) -> Iterator[tuple[str, Tensor]]:
    """The tensors an argument holds, each with the name a learner would write for it."""
    if isinstance(value, Tensor):
        yield name, value
    elif isinstance(value, nn.Module):
        if "_parameters" not in vars(value):  # not initialised yet (a check of __init__ hands one in)
            return
        seen: set[int] = set()
        for key, tensor in (*value.named_parameters(), *value.named_buffers()):
            seen.add(id(tensor))
            yield f"{name}.{key}", tensor
        for prefix, module in value.named_modules():  # plain tensor attributes, e.g. model.feature_probability
            for key, attribute in vars(module).items():
                if isinstance(attribute, Tensor) and id(attribute) not in seen:
                    seen.add(id(attribute))
                    yield f"{name}.{prefix + '.' if prefix else ''}{key}", attribute
    elif depth < 2 and isinstance(value, Mapping):
        for key, item in value.items():
            yield from _tensors_inside(f"{name}[{key!r}]", item, depth + 1)
    elif depth < 2 and isinstance(value, (list, tuple)):
        fields = getattr(value, "_fields", None)
        for index, item in enumerate(value):
            yield from _tensors_inside(f"{name}.{fields[index]}" if fields else f"{name}[{index}]", item, depth + 1)
    elif depth < 2 and dataclasses.is_dataclass(value) and not isinstance(value, type):
        for field in dataclasses.fields(value):
            yield from _tensors_inside(f"{name}.{field.name}", getattr(value, field.name), depth + 1)


@dataclasses.dataclass
class Snapshot:
    """Copies of the tensors handed to learner code, to tell afterwards what it changed."""

    arguments: dict[str, Any]
    originals: dict[str, Tensor]
    copies: dict[str, Tensor]

    @classmethod
    def of(cls, arguments: Mapping[str, Any]) -> "Snapshot":
        originals = {
            key: tensor
            for name, value in arguments.items()
            for key, tensor in _tensors_inside(name, value)
            if tensor.device.type != "meta"  # no values to compare
        }
        copies = {key: tensor.detach().clone() for key, tensor in originals.items()}
        return cls(dict(arguments), originals, copies)

    def changed(self, may_change: Collection[str] = ()) -> list[str]:
        """Names of tensors changed in place or replaced by another object, in the order they were handed in."""
        now = {key: tensor for name, value in self.arguments.items() for key, tensor in _tensors_inside(name, value)}
        allowed = lambda key: any(key == name or key.startswith(name + ".") for name in may_change)  # noqa: E731
        changed = []
        for key, original in self.originals.items():
            if allowed(key):
                continue
            replaced = key in now and now[key] is not original
            if replaced or not _same(original.detach(), self.copies[key]):
                changed.append(key)
        return changed

    def assert_unchanged(self, *, what: str, may_change: Collection[str] = ()) -> None:
        changed = self.changed(may_change)
        if not changed:
            return
        key = changed[0]
        inside_object = "." in key or "[" in key
        if inside_object:
            advice = (
                "compute the result as a new tensor and leave what the object holds as it is (an in-place "
                "operation there changes the model itself, on every call)."
            )
        else:
            advice = (
                "work on a new tensor (e.g. `x = x - b`, not `x -= b`, or `.clone()` first) and leave "
                "the input as it was."
            )
        raise CheckFailure(f"`{what}` changed `{key}` in place: {advice}")


def _same(a: Tensor, b: Tensor) -> bool:
    return (
        a.shape == b.shape
        and a.dtype == b.dtype
        and torch.equal(torch.nan_to_num(a, nan=0.0), torch.nan_to_num(b, nan=0.0))
    )


def _in_checks(filename: str) -> bool:
    """A file of the checks: a module in tests/, or one in a part's check package there (our suite is not)."""
    folder = Path(filename).resolve().parent
    return folder == CHECKS_DIR or (folder.parent == CHECKS_DIR and folder.name != "suite")


def learner_line(error: BaseException, function: Callable[..., Any]) -> str:
    """The learner's line: the innermost frame outside the checks and installed packages, at their function's line."""
    if getattr(error, "learner_location", None):  # raised in a grading worker, which located it there
        return str(error.learner_location)
    learner_file = getattr(getattr(function, "__code__", None), "co_filename", None)
    return learner_location(error, ours=_in_checks, learner_file=learner_file)


def globals_hint(function: Callable[..., Any], what: str, error: BaseException | None = None) -> str:
    """A sentence naming the notebook's numbers or tensors the function reads instead of its inputs, if any."""
    used = list(notebook_globals(function)) or getattr(error, "notebook_globals", [])  # found by a grading worker
    if not used:
        return ""
    names = ", ".join(f"`{name}`" for name in used)
    return (
        f" `{what}` reads the notebook's {names} rather than its arguments or the object's config, and this check "
        "uses other sizes: take each size from the inputs or from `self.cfg`."
    )


def expect_tensor(value: object, shape: tuple[int, ...], *, what: str, axes: str) -> Tensor:
    """Fail with the expected shape named, or return the value as a float64 CPU tensor."""
    if not isinstance(value, Tensor):
        raise CheckFailure(
            f"`{what}` should return a torch.Tensor of shape [{axes}], but returned {type(value).__name__}."
        )
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


def close(
    a: Tensor | Mapping[str, Tensor], b: Tensor | Mapping[str, Tensor], *, rtol: float = 1e-4, atol: float = 1e-5
) -> bool:
    """Tensors (or same-keyed mappings of tensors, such as gradients) equal within tolerance."""
    if isinstance(a, Mapping) or isinstance(b, Mapping):
        return (
            isinstance(a, Mapping)
            and isinstance(b, Mapping)
            and a.keys() == b.keys()
            and all(close(a[key], b[key], rtol=rtol, atol=atol) for key in a)
        )
    return a.shape == b.shape and torch.allclose(a.to(torch.float64), b.to(torch.float64), rtol=rtol, atol=atol)


def diagnose(
    actual: Tensor | Mapping[str, Tensor],
    expected: Tensor | Mapping[str, Tensor],
    mistakes: Mapping[str, Tensor | Mapping[str, Tensor]],
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


# Results: one number, several slips with the same numbers ----------------------------------


def expect_number(value: object, what: str, *, per_axis: Mapping[int, str] | None = None) -> Tensor:
    """One number (a float or a 0-dimensional floating-point tensor) as a float64 tensor.

    `per_axis` names the likely mistake behind a one-dimensional result of a given length,
    e.g. one value per token.
    """
    if isinstance(value, bool) or (isinstance(value, Tensor) and value.dtype == torch.bool):
        raise CheckFailure(f"`{what}` returned a bool; it should return a number.")
    if isinstance(value, numbers.Real):
        if not math.isfinite(value):
            raise CheckFailure(f"`{what}` returned {value}: look for a division by zero.")
        return torch.tensor(float(value), dtype=torch.float64)
    if not isinstance(value, Tensor):
        raise CheckFailure(
            f"`{what}` should return a number (a 0-dimensional tensor or a float), but returned {type(value).__name__}."
        )
    if value.ndim == 1 and per_axis and len(value) in per_axis:
        raise CheckFailure(per_axis[len(value)])
    if value.ndim > 0:
        raise CheckFailure(
            f"`{what}` returned a tensor of shape {tuple(value.shape)}; it should be one number, a "
            "0-dimensional tensor "
            "(reduce over every axis, without keepdim=True)."
        )
    if not torch.is_floating_point(value):
        raise CheckFailure(
            f"`{what}` returned an integer tensor ({value.dtype}); convert counts with .float() "
            "before dividing or averaging."
        )
    return expect_tensor(value, (), what=what, axes="a single number, 0-dimensional")


Result = Tensor | Mapping[str, Tensor]


def diagnose_among(
    actual: Result,
    expected: Result,
    mistakes: Sequence[tuple[str, Result]] | Mapping[str, Iterable[Result]],
    *,
    otherwise: str,
    rtol: float = 1e-4,
    atol: float = 1e-5,
) -> None:
    """`diagnose` where one message may stand for several wrong results: (message, result) pairs,
    or a mapping from each message to the results of the ways of making that slip.

    When two different slips give the same numbers on these inputs, the message names both.
    """
    if close(actual, expected, rtol=rtol, atol=atol):
        return
    pairs = (
        [(message, wrong) for message, results in mistakes.items() for wrong in results]
        if isinstance(mistakes, Mapping)
        else mistakes
    )
    matching = list(dict.fromkeys(message for message, wrong in pairs if close(actual, wrong, rtol=rtol, atol=atol)))
    if not matching:
        raise CheckFailure(otherwise)
    if len(matching) == 1:
        raise CheckFailure(matching[0])
    raise CheckFailure(f"{matching[0].rstrip('.')}; or else, as these numbers fit both: {matching[1]}")


# Gradients ---------------------------------------------------------------------------------


def gradients(loss: object, tensors: Mapping[str, Tensor], *, what: str) -> dict[str, Tensor]:
    """Backpropagate the learner's (scalar) loss into `tensors`; float64 CPU gradients, zeros where none flows.

    Fails with a named sentence when the loss is cut off from the graph, since training on it
    would then silently do nothing.
    """
    if not isinstance(loss, Tensor) or loss.numel() != 1:
        raise CheckFailure(f"`{what}` should be a single-number tensor to backpropagate, but is {type(loss).__name__}.")
    if not loss.requires_grad:
        raise CheckFailure(
            f"`{what}` carries no gradient: it was computed under torch.no_grad(), from .detach()-ed or .data tensors, "
            "or via .item(), so training on it would change nothing."
        )
    grads = torch.autograd.grad(loss.reshape(()), list(tensors.values()), allow_unused=True, retain_graph=True)
    return {
        name: torch.zeros_like(tensor, dtype=torch.float64, device="cpu")
        if grad is None
        else grad.detach().to("cpu", torch.float64)
        for (name, tensor), grad in zip(tensors.items(), grads)
    }


def first_gradient_mismatch(
    actual: Mapping[str, Tensor], expected: Mapping[str, Tensor], *, rtol: float = 1e-4, atol: float = 1e-6
) -> str | None:
    """The name of the first tensor whose gradient differs, or None when all agree."""
    return next((name for name in expected if not close(actual[name], expected[name], rtol=rtol, atol=atol)), None)


KINK_MARGIN = 1e-3  # how far every ReLU input stays from 0 in the forward checks


def inputs_clear_of_kinks(draw: Callable[[], Tensor], relu_inputs: Callable[[Tensor], Sequence[Tensor]]) -> Tensor:
    """Inputs whose every ReLU input is at least KINK_MARGIN from 0.

    float32 and float64 code then agree on which units are on, so a correct rewrite in
    another precision, or with clamp or torch.where instead of relu, gets the same gradients.
    """
    for _ in range(100):
        inputs = draw()
        if all(bool((pre.abs() > KINK_MARGIN).all()) for pre in relu_inputs(inputs)):
            return inputs
    raise RuntimeError("could not draw inputs clear of the ReLU kinks")


def handed_in(tensor: Tensor) -> tuple[Tensor, Tensor]:
    """A leaf that collects the gradient, and the copy of it that learner code gets.

    The copy is not a leaf, as in training: an in-place change to it is then recorded by autograd
    instead of refused, so the snapshot can name it.
    """
    leaf = tensor.detach().clone().requires_grad_(True)
    return leaf, leaf.clone()


def require_gradient(output: Tensor, *, what: str, towards: str) -> None:
    if not output.requires_grad:
        raise CheckFailure(
            f"`{what}` returns a tensor that carries no gradient back to {towards}: it was built "
            "under torch.no_grad(), "
            "from .detach()-ed or .data tensors, or from indices alone, so training through it would change nothing."
        )


def reference_with_gradients(
    formula: Callable[..., Tensor], parameters: Mapping[str, Tensor], upstream: Tensor
) -> tuple[Tensor, dict[str, Tensor]]:
    """The reference output in float64, and the gradient of `output · upstream` for each parameter."""
    leaves = {name: tensor.detach().to("cpu", torch.float64).requires_grad_() for name, tensor in parameters.items()}
    output = formula(**leaves)
    grads = torch.autograd.grad((output * upstream.double()).sum(), list(leaves.values()))
    return output.detach(), dict(zip(leaves, grads))


def check_output_gradients(
    output: Tensor, upstream: Tensor, parameters: Mapping[str, Tensor], expected: Mapping[str, Tensor], *, what: str
) -> None:
    """Backpropagate the learner's output against a fixed random upstream gradient; each parameter's
    gradient must match the reference's (the output itself is checked before)."""
    cut_off = "(.detach(), .data, torch.no_grad(), or a detour through NumPy or .tolist())"
    if not output.requires_grad:
        raise CheckFailure(
            f"The output of `{what}` carries no gradient: it is cut off from the graph {cut_off}, so "
            "training would never change the weights."
        )
    loss = (output * upstream.to(output.device, output.dtype)).sum()
    actual = gradients(loss, parameters, what=f"the output of `{what}`")
    scale = max(float(grad.abs().max()) for grad in expected.values())
    name = first_gradient_mismatch(actual, expected, rtol=1e-4, atol=1e-5 * scale)
    if name is None:
        return
    if not any(grad.any() for grad in actual.values()):
        raise CheckFailure(
            f"No gradient reaches any parameter, although the output of `{what}` is right: the output is cut off from "
            f"the graph {cut_off}, so training would never change the weights."
        )
    if not actual[name].any():
        raise CheckFailure(
            f"No gradient reaches `{name}`, although the output of `{what}` is right: a step that uses `{name}` is cut "
            "off from the graph (.detach(), .data or torch.no_grad()), so training would never change it."
        )
    raise CheckFailure(
        f"The output of `{what}` is right, but the gradient of `{name}` is not: a step that uses `{name}` is cut off "
        "from the graph (.detach(), .data or torch.no_grad()), so training would see only part of its effect."
    )


# Statistics --------------------------------------------------------------------------------


def binomial_tolerance(probability: Tensor | float, n: int, *, false_alarm: float = 1e-9) -> Tensor:
    """A deviation of an observed frequency from `probability` over `n` independent draws that a
    correct sampler exceeds with probability at most `false_alarm` (Bernstein's inequality).

    Checks that compare frequencies use it, so a correct implementation passes whatever random
    numbers it happens to draw, in whatever order.
    """
    p = torch.as_tensor(probability, dtype=torch.float64)
    log_term = math.log(2 / false_alarm)
    variance = p * (1 - p)
    return (log_term / 3 + (log_term**2 / 9 + 2 * n * variance * log_term).sqrt()) / n


def frequencies_match(frequency: Tensor, probability: Tensor, n: int, *, false_alarm: float = 1e-9) -> bool:
    """Every cell's frequency within its binomial tolerance (the false-alarm rate shared by all cells)."""
    tolerance = binomial_tolerance(probability, n, false_alarm=false_alarm / max(1, probability.numel()))
    return bool(((frequency.double() - probability.double()).abs() <= tolerance).all())


def check_random_directions(
    directions: Tensor, instance: Tensor, latent: Tensor, *, what: str, false_alarm: float = 1e-9
) -> None:
    """Fresh random unit directions [n, d], one per (instance, latent), must be drawn independently
    for each of them and spread over the whole sphere (no preferred orthant or direction)."""
    directions = directions.detach().to("cpu", torch.float64)
    instance, latent = instance.cpu(), latent.cpu()
    n, d = directions.shape
    unit = directions / directions.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    for index in instance.unique():
        rows = unit[instance == index]
        if len(rows) > 1 and (rows - rows[:1]).abs().max() < 1e-6:
            raise CheckFailure(
                f"`{what}` gave every resampled latent of an instance the same direction: draw one per latent."
            )
    shared = 0
    for index in latent.unique():
        rows = unit[latent == index]
        if len(rows) > 1 and (rows - rows[:1]).abs().max() < 1e-6:
            shared += 1
    if shared > 0 and shared == sum(int((latent == index).sum()) > 1 for index in latent.unique()):
        raise CheckFailure(
            f"`{what}` gave latent j the same direction in every instance: draw a separate direction "
            "for each (instance, latent)."
        )
    if (unit >= 0).all() or (unit <= 0).all():
        raise CheckFailure(
            f"Every direction from `{what}` lies in one orthant (all coordinates of one sign, as with torch.rand): "
            "draw them with torch.randn so they spread over the whole sphere."
        )
    positive = (unit > 0).double().mean(0)
    if not frequencies_match(positive, torch.full((d,), 0.5, dtype=torch.float64), n, false_alarm=false_alarm):
        raise CheckFailure(
            f"The directions from `{what}` favour one sign in some coordinate: draw them from a distribution symmetric "
            "about the origin (torch.randn, then normalise)."
        )
