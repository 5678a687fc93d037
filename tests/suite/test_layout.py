"""The codebase's rooms stay apart, and the checks stay small enough to read."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHECK_PACKAGES = sorted(path.parent for path in (ROOT / "tests").glob("part*/__init__.py"))
MAX_CHECK_FILE_LINES = 500
MAX_FUNCTION_LINES = 120


def imports_of(path: Path) -> set[str]:
    """Every module a Python file (or a notebook source) imports."""
    modules = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules.add(node.module)
    return modules


def test_every_part_has_a_package_of_checks_and_no_module_beside_it():
    parts = sorted(f"part{int(path.stem[:2])}_{path.stem[3:]}" for path in (ROOT / "source").glob("0*.py"))
    assert [package.name for package in CHECK_PACKAGES] == parts
    assert not list((ROOT / "tests").glob("part*.py"))


@pytest.mark.parametrize("package", CHECK_PACKAGES, ids=lambda package: package.name)
def test_check_files_and_functions_stay_small(package: Path):
    for path in package.glob("*.py"):
        assert not path.name.startswith("test_"), f"{path}: pytest would collect a learner check"
        source = path.read_text()
        assert source.count("\n") <= MAX_CHECK_FILE_LINES, f"{path} has more than {MAX_CHECK_FILE_LINES} lines"
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.FunctionDef):
                length = node.end_lineno - node.lineno + 1
                assert length <= MAX_FUNCTION_LINES, f"{path}:{node.name} has {length} lines"


@pytest.mark.parametrize("package", CHECK_PACKAGES, ids=lambda package: package.name)
def test_no_part_borrows_another_parts_checks(package: Path):
    for path in package.glob("*.py"):
        borrowed = {module for module in imports_of(path) if module.startswith("tests.part")}
        assert all(module.startswith(f"tests.{package.name}") for module in borrowed), (path, borrowed)


def test_notebooks_and_their_helpers_never_import_the_tooling():
    learner_side = [
        *(ROOT / "source").glob("*.py"),
        *(ROOT / "part_utils").rglob("*.py"),
        *(ROOT / "tests").glob("*.py"),
    ]
    learner_side += [path for package in CHECK_PACKAGES for path in package.glob("*.py")]
    for path in learner_side:
        assert not any(module.split(".")[0] == "tooling" for module in imports_of(path)), path
