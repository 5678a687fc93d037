"""Which exercises a part has, read from the workbook's own exercise notebook: every
`checks.test_...(...)` call, grouped under the exercise heading above it."""

import ast
import re
from pathlib import Path

import nbformat

from tooling.grading.verdicts import CheckCall, Exercise

ROOT = Path(__file__).resolve().parents[2]
EXERCISES = ROOT / "notebooks"
HEADING = re.compile(r"^#+\s*(Exercise[^\n]*)", re.MULTILINE)


def parts(catalogue: Path = EXERCISES) -> list[str]:
    """Every part's notebook name, e.g. `04_toy_sae`, in order."""
    return sorted(path.stem for path in catalogue.glob("[0-9][0-9]_*.ipynb"))


def part_of(path: Path, catalogue: Path = EXERCISES) -> str | None:
    """The part a notebook belongs to, from the `NN_name` in its file name."""
    return next((part for part in parts(catalogue) if part in path.name), None)


def code_of(source: str) -> str:
    """A cell's Python, with IPython's magic and shell lines blanked (line numbers kept)."""
    return "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines())


def parsed_cells(notebook: nbformat.NotebookNode) -> list[ast.Module]:
    """The syntax trees of a notebook's code cells (cells that do not parse are left out)."""
    trees = []
    for cell in notebook.cells:
        if cell.cell_type == "code":
            try:
                trees.append(ast.parse(code_of(cell.source)))
            except SyntaxError:
                continue
    return trees


def check_modules(notebook: nbformat.NotebookNode) -> dict[str, str]:
    """Alias → checks module, from lines such as `import tests.part1_toy_models as checks`."""
    aliases = {}
    for tree in parsed_cells(notebook):
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                aliases.update(
                    {
                        alias.asname: alias.name
                        for alias in node.names
                        if alias.asname and alias.name.startswith("tests.")
                    }
                )
    return aliases


def imported_modules(notebook: nbformat.NotebookNode) -> set[str]:
    """Every module a notebook's code cells import."""
    found = set()
    for tree in parsed_cells(notebook):
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                found.add(node.module)
    return found


def check_calls(source: str, aliases: dict[str, str]) -> list[CheckCall] | None:
    """The check calls of a cell that holds only check calls; None for any other cell."""
    try:
        tree = ast.parse(code_of(source))
    except SyntaxError:
        return None
    calls = []
    for statement in tree.body:
        call = statement.value if isinstance(statement, ast.Expr) else None
        function = call.func if isinstance(call, ast.Call) else None
        if not (
            isinstance(function, ast.Attribute)
            and isinstance(function.value, ast.Name)
            and function.value.id in aliases
        ):
            return None
        if not all(
            isinstance(argument, ast.Name) for argument in [*call.args, *(keyword.value for keyword in call.keywords)]
        ):
            raise ValueError(f"a check call hands the check something other than a name: {ast.unparse(call)}")
        calls.append(
            CheckCall(
                aliases[function.value.id],
                function.attr,
                tuple(argument.id for argument in call.args),
                tuple((keyword.arg, keyword.value.id) for keyword in call.keywords),
                source.strip(),
            )
        )
    return calls or None


def exercises_of(part: str, catalogue: Path = EXERCISES) -> list[Exercise]:
    """The checked exercises of a part in notebook order; checks under one heading are one exercise."""
    notebook = nbformat.read(catalogue / f"{part}.ipynb", as_version=4)
    aliases = check_modules(notebook)
    grouped: dict[str, list[CheckCall]] = {}
    title = ""
    for cell in notebook.cells:
        if cell.cell_type == "markdown":
            heading = HEADING.search(cell.source)
            title = heading.group(1).strip() if heading else title
        elif cell.cell_type == "code":
            for call in check_calls(cell.source, aliases) or []:
                grouped.setdefault(title or call.check, []).append(call)
    return [Exercise(part, title, tuple(calls)) for title, calls in grouped.items()]
