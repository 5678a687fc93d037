"""Where in the learner's own code an error happened, said the way a learner reads their cell.

Used by the checks (`tests/checking.py`) and by the grader's sandboxed worker, so that a crash is reported
at the same place either way: the innermost line of the learner's function (counted from its `def`, with the
line's text), naming the helper it was inside if the error came from deeper, in code the notebook gives.
"""

import dis
import linecache
import numbers
import sys
import types
from collections.abc import Callable, Iterator

import torch

_INSTALLED = ("-packages", sys.prefix, sys.base_prefix)


def _installed(filename: str) -> bool:
    return any(marker in filename for marker in _INSTALLED) or filename.startswith("<frozen")


def _def_line(code: types.CodeType) -> int:
    """The line of `def`: a decorated function's code starts at its first decorator."""
    for line in range(code.co_firstlineno, code.co_firstlineno + 50):
        text = linecache.getline(code.co_filename, line).lstrip()
        if text.startswith(("def ", "async def ")):
            return line
        if not text:
            break
    return code.co_firstlineno


def _describe(frame: types.FrameType, lineno: int) -> str:
    code = frame.f_code
    if code.co_name == "<module>":
        where = f"line {lineno} of the cell"
    else:
        where = f"line {lineno - _def_line(code) + 1} of `{code.co_name}`"
    text = linecache.getline(code.co_filename, lineno).strip()
    return f"{where}: `{text[:90]}`" if text else where


def learner_location(error: BaseException, *, ours: Callable[[str], bool], learner_file: str | None = None) -> str:
    """The innermost line of learner code in the error's traceback.

    `ours` tells the checks' (or grader's) own files; installed packages are skipped too. With
    `learner_file` (the file of the function under check, i.e. its cell), a crash deeper in other code,
    such as a helper the notebook gives, is reported at the learner's line that called into it.
    """
    frames = [
        (entry.tb_frame, entry.tb_lineno)
        for entry in _walk(error.__traceback__)
        if not ours(entry.tb_frame.f_code.co_filename) and not _installed(entry.tb_frame.f_code.co_filename)
    ]
    if not frames:
        return "your code"
    innermost = frames[-1]
    own = [frame for frame in frames if frame[0].f_code.co_filename == learner_file] if learner_file else []
    if not own or own[-1] is innermost:
        return _describe(*innermost)
    return f"{_describe(*own[-1])}, inside `{innermost[0].f_code.co_name}`, which it calls"


def _walk(traceback: types.TracebackType | None) -> Iterator[types.TracebackType]:
    while traceback is not None:
        yield traceback
        traceback = traceback.tb_next


def notebook_globals(function: Callable[..., object]) -> dict[str, object]:
    """The notebook's data (numbers and tensors) that a function reads as globals, e.g. `d_sae` or `n_parents`.

    A function that uses those instead of its arguments or its object's config breaks on other sizes.
    """
    code = getattr(function, "__code__", None)
    namespace = getattr(function, "__globals__", None)
    if code is None or not isinstance(namespace, dict) or namespace.get("__name__") != "__main__":
        return {}  # only a notebook's (or script's) own functions have the notebook's variables as globals
    names = set(_global_names(code))
    return {
        name: namespace[name]
        for name in sorted(names)
        if name in namespace
        and not name.isupper()  # a constant in capitals is meant to be shared
        and isinstance(namespace[name], (numbers.Number, torch.Tensor))
        and not isinstance(namespace[name], bool)
    }


def _global_names(code: types.CodeType) -> Iterator[str]:
    """Names read as globals (not attributes, which share `co_names`)."""
    for instruction in dis.get_instructions(code):
        if instruction.opname in ("LOAD_GLOBAL", "LOAD_NAME"):
            yield instruction.argval
    for constant in code.co_consts:
        if isinstance(constant, types.CodeType):  # lambdas, comprehensions and inner functions
            yield from _global_names(constant)
