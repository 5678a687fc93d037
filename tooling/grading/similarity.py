"""Static checks of a submitted notebook, nothing run: how close each answer is to the solution, and
which routes to the reference implementation (or out of the exercise) the learner's code takes.

Similarity compares what a learner wrote in place of each stub with what the solution has there,
as token streams with comments, docstrings and layout dropped and local names renamed in order of
appearance, so a copy with renamed variables and rewritten comments still scores close to 1."""

import ast
import copy
import io
import re
import tokenize
from difflib import SequenceMatcher
from pathlib import Path

import nbformat

from tooling.grading.catalogue import EXERCISES, ROOT, code_of

TOKEN_LIMIT = 5_000
"""Tokens compared per answer at most: a huge cell must not stall the grader."""
LAYOUT = {tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER, tokenize.COMMENT}
DEFINITION = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


def parsed(source: str) -> ast.Module | None:
    """A cell's code (magic and shell lines blanked), or None when it is not Python."""
    try:
        return ast.parse(code_of(source))
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None


def code_cells(notebook: nbformat.NotebookNode) -> list[str]:
    """The sources of a notebook's code cells; a malformed cell is left out."""
    cells = notebook.get("cells")
    return [
        cell["source"]
        for cell in (cells if isinstance(cells, list) else [])
        if isinstance(cell, dict) and cell.get("cell_type") == "code" and isinstance(cell.get("source"), str)
    ]


def is_stub(node: ast.AST) -> bool:
    """`raise NotImplementedError(...)`, the exercise notebook's stand-in for an answer."""
    raised = node.exc if isinstance(node, ast.Raise) else None
    raised = raised.func if isinstance(raised, ast.Call) else raised
    return isinstance(raised, ast.Name) and raised.id == "NotImplementedError"


def label(node: ast.stmt) -> str:
    """A definition's name; `Class.method` for a method added with `@add_to_class(Class)`."""
    for decorator in node.decorator_list:
        if isinstance(decorator, ast.Call) and getattr(decorator.func, "id", None) == "add_to_class" and decorator.args:
            return f"{ast.unparse(decorator.args[0])}.{node.name}"
    return node.name


def definitions(sources: list[str]) -> dict[str, ast.stmt]:
    """Top-level functions and classes of the cells by label; a later definition replaces an earlier one."""
    found = {}
    for source in sources:
        tree = parsed(source)
        found.update({label(node): node for node in (tree.body if tree else []) if isinstance(node, DEFINITION)})
    return found


class Normaliser(ast.NodeTransformer):
    """Drops docstrings and stubs, and renames local names `_0`, `_1`, ... in order of appearance."""

    def __init__(self, local: set[str]) -> None:
        self.local, self.renamed = local, {}

    def rename(self, name: str) -> str:
        return self.renamed.setdefault(name, f"_{len(self.renamed)}") if name in self.local else name

    def visit_Name(self, node: ast.Name) -> ast.Name:
        node.id = self.rename(node.id)
        return node

    def visit_arg(self, node: ast.arg) -> ast.arg:
        node.arg = self.rename(node.arg)
        return node

    def generic_visit(self, node: ast.AST) -> ast.AST:
        body = getattr(node, "body", None)
        if (
            isinstance(node, DEFINITION)
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
        ):
            node.body = body[1:] or [ast.Pass()]
        if isinstance(node, DEFINITION):
            node.body = [statement for statement in node.body if not is_stub(statement)] or [ast.Pass()]
        return super().generic_visit(node)


def tokens(node: ast.stmt) -> list[str]:
    """The definition as a normalised token stream."""
    local = {name.id for name in ast.walk(node) if isinstance(name, ast.Name) and not isinstance(name.ctx, ast.Load)}
    local |= {argument.arg for argument in ast.walk(node) if isinstance(argument, ast.arg)}
    text = ast.unparse(Normaliser(local).visit(copy.deepcopy(node)))
    stream = tokenize.generate_tokens(io.StringIO(text).readline)
    return [token.string for token in stream if token.type not in LAYOUT][:TOKEN_LIMIT]


def answer(written: list[str], stub: list[str]) -> list[str]:
    """The tokens written in place of the stub: those not matched with the exercise's own code."""
    opcodes = SequenceMatcher(None, stub, written, autojunk=False).get_opcodes()
    return [token for tag, _, _, start, end in opcodes if tag in ("replace", "insert") for token in written[start:end]]


def solution_similarity(notebook: nbformat.NotebookNode, part: str, root: Path = ROOT) -> list[tuple[str, float]]:
    """For each exercise cell the learner answered (defined its function or class again): the label
    of what it defines and how alike, from 0 to 1, the learner's answer and the solution's are."""
    exercise = nbformat.read(root / "notebooks" / f"{part}.ipynb", as_version=4)
    solution = nbformat.read(root / "solutions" / f"{part}.ipynb", as_version=4)
    learner = definitions(code_cells(notebook))
    scores = []
    for stub_cell, solution_cell in zip(exercise.cells, solution.cells):
        given = definitions([stub_cell.source]) if stub_cell.cell_type == "code" else {}
        stubs = {name: node for name, node in given.items() if any(is_stub(inner) for inner in ast.walk(node))}
        answered = [name for name in stubs if name in learner]
        if not answered:
            continue
        reference = definitions([solution_cell.source])
        try:
            theirs = [token for name in answered for token in answer(tokens(learner[name]), tokens(stubs[name]))]
            ours = [token for name in answered for token in answer(tokens(reference[name]), tokens(stubs[name]))]
        except (RecursionError, MemoryError, tokenize.TokenError):
            continue
        scores.append((", ".join(answered), SequenceMatcher(None, theirs, ours, autojunk=False).ratio()))
    return scores


def flag_similar(scores: list[tuple[str, float]], threshold: float = 0.9) -> list[str]:
    """Problems such as "`forward`: 97% like the solution" for the answers at or above the threshold."""
    return [f"`{name}`: {score:.0%} like the solution" for name, score in scores if score >= threshold]


ROUTE_MODULE = re.compile(r"(?:^|\.)(?:reference|solutions|source)(?:\.|$)|^tests\.")
"""Modules that lead to the reference implementation, the solutions or the checks."""
ROUTE_TEXT = re.compile(
    r"(?:^|[./\\])(?:reference|solutions)(?:[./\\]|$)|(?:^|[/\\])source[/\\]|(?:^|[./\\])tests[./\\]part\d"
)
OUTSIDE_MODULES = {
    "importlib",
    "subprocess",
    "socket",
    "ctypes",
    "signal",
    "builtins",
    "runpy",
    "pty",
    "multiprocessing",
}
OUTSIDE_ATTRIBUTE = re.compile(
    r"^(?:os\.(?:system|popen|kill|killpg|fork|forkpty|exec\w*|(?:posix_)?spawn\w*)|sys\.modules)$"
)
ESCAPE_ATTRIBUTES = {"reference", "__globals__", "__builtins__", "__subclasses__", "__code__"}
ESCAPE_NAMES = {"__import__", "exec", "eval", "compile", "__builtins__", "get_ipython"}
READERS = {"open", "read_text", "read_bytes"}
SOURCE_FILE = re.compile(r"\.(?:py|ipynb)\b")
MAGIC = re.compile(r"^\s*(%%?|!)\s*(\w*)(.*)$")
QUIET_MAGICS = {"time", "timeit", "prun", "matplotlib", "autoreload"}
"""Magics that change nothing outside the notebook; the Python after a timing magic is scanned like any other."""


def constant_text(node: ast.AST) -> str | None:
    """A string the code spells out, also when split: `"refer" + "ence"`, f-strings of constants, `"".join([...])`."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = constant_text(node.left), constant_text(node.right)
        return left + right if left is not None and right is not None else None
    if isinstance(node, ast.JoinedStr):
        pieces = [
            constant_text(value.value if isinstance(value, ast.FormattedValue) else value) for value in node.values
        ]
        return "".join(pieces) if None not in pieces else None
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "join"
        and len(node.args) == 1
    ):
        separator, items = constant_text(node.func.value), node.args[0]
        pieces = [constant_text(item) for item in items.elts] if isinstance(items, (ast.List, ast.Tuple)) else [None]
        return separator.join(pieces) if separator is not None and None not in pieces else None
    return None


def aliases_of(trees: list[ast.Module]) -> dict[str, str]:
    """Local name → what it was imported as: `np` → `numpy`, `system` → `os.system`."""
    aliases = {}
    for node in (node for tree in trees for node in ast.walk(tree)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                top = alias.name.split(".")[0]
                aliases[alias.asname or top] = alias.name if alias.asname else top
        elif isinstance(node, ast.ImportFrom):
            aliases.update({alias.asname or alias.name: f"{node.module or ''}.{alias.name}" for alias in node.names})
    return aliases


def dotted(node: ast.AST, aliases: dict[str, str]) -> str | None:
    """The imported thing an attribute chain names (`os.system`, also when `os` was imported under
    another name); None when it does not start with an imported name."""
    if isinstance(node, ast.Name):
        return aliases.get(node.id)
    if isinstance(node, ast.Attribute):
        base = dotted(node.value, aliases)
        return f"{base}.{node.attr}" if base else None
    return None


def outside(name: str) -> bool:
    """Whether an imported name runs programs, reaches other processes or the network, or builds code."""
    return name.split(".")[0] in OUTSIDE_MODULES or OUTSIDE_ATTRIBUTE.match(name) is not None


def short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def routes_in(tree: ast.Module, aliases: dict[str, str]) -> tuple[set[str], set[str]]:
    """What one cell's code does that leads outside the exercise: route modules it imports, and other findings."""
    modules, found = set(), set()
    called = {id(node.func) for node in ast.walk(tree) if isinstance(node, ast.Call)}
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            # `from m import x` names the module m when m is a route (`from part_utils.reference.part1 import f`),
            # else m.x
            named = [alias.name for alias in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            if isinstance(node, ast.ImportFrom) and not ROUTE_MODULE.search(named[0]):
                named = [f"{node.module or ''}.{alias.name}" for alias in node.names]
            modules |= {name for name in named if ROUTE_MODULE.search(name)}
            found |= {f"imports {name}" for name in named if outside(name)}
        elif isinstance(node, ast.Attribute):
            name = dotted(node, aliases)
            if name and outside(name):
                found.add(f"uses {name}")
            elif node.attr in ESCAPE_ATTRIBUTES:
                found.add(f"uses {short(ast.unparse(node))}")
        elif isinstance(node, ast.Name) and node.id in ESCAPE_NAMES:
            found.add(f"{'calls' if id(node) in called else 'uses'} {node.id}")
        if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) in READERS:
            files = [
                text
                for inner in ast.walk(node)
                if (text := constant_text(inner)) is not None and SOURCE_FILE.search(text)
            ]
            found |= {f"reads {short(text)!r}" for text in files}
        text = constant_text(node) if isinstance(node, (ast.Constant, ast.BinOp, ast.JoinedStr, ast.Call)) else None
        if text is not None and ROUTE_TEXT.search(text):
            found.add(f"names {short(text)!r} in a string")
    return modules, found


def cell_routes(source: str, aliases: dict[str, str]) -> tuple[set[str], set[str]]:
    """`routes_in` for a cell, with its shell lines and magics, and the Python that `%time x` runs."""
    modules, found, trees = set(), set(), [parsed(source)]
    for line in source.splitlines():
        sign, name, rest = match.groups() if (match := MAGIC.match(line)) else ("", "", "")
        trees.append(parsed(rest.strip()) if sign and name in QUIET_MAGICS else None)
        if sign == "!":
            found.add("runs a shell command")
        elif sign and trees[-1] is None:
            found.add(f"uses the magic {sign}{name}")
    for tree in filter(None, trees):
        more_modules, more = routes_in(tree, aliases)
        modules, found = modules | more_modules, found | more
    return modules, found


def imported_modules(trees: list[ast.Module]) -> set[str]:
    """Every module the code imports, or imports from."""
    nodes = [node for tree in trees for node in ast.walk(tree)]
    return {alias.name for node in nodes if isinstance(node, ast.Import) for alias in node.names} | {
        node.module for node in nodes if isinstance(node, ast.ImportFrom) and node.module
    }


def reference_routes(notebook: nbformat.NotebookNode, part: str, catalogue: Path = EXERCISES) -> list[str]:
    """Routes to the reference implementation, the solutions or the checks, or out of the exercise
    (running programs, other processes, the network, code built at run time), in the learner's code.

    Only the learner's own cells count (those that are not verbatim copies of a cell of the
    workbook's exercise notebook), and a finding counts only when the exercise notebook does not
    have it in a cell the learner changed or left out; a module the exercise notebook imports may
    be imported anywhere."""
    exercise, theirs = code_cells(nbformat.read(catalogue / f"{part}.ipynb", as_version=4)), code_cells(notebook)
    kept, given = {source.strip() for source in theirs}, {source.strip() for source in exercise}
    ours = [tree for tree in map(parsed, exercise) if tree]
    allowed, aliases = imported_modules(ours), aliases_of(ours)
    changed = [source for source in exercise if source.strip() not in kept]
    allowed_findings = {finding for source in changed for finding in cell_routes(source, aliases)[1]}
    aliases = aliases_of([tree for tree in map(parsed, theirs) if tree])
    findings = set()
    for source in theirs:
        if source.strip() in given:
            continue
        modules, found = cell_routes(source, aliases)
        findings |= found - allowed_findings
        findings |= {
            f"imports {name}" for name in modules if not any(name == ok or name.startswith(f"{ok}.") for ok in allowed)
        }
    return sorted(findings)
