"""Generate exercise notebooks, solution notebooks and reference modules from `source/`.

Each part is authored once, as a jupytext percent file `source/NN_<name>.py`:

- `# BEGIN SOLUTION` ... `# END SOLUTION` lines inside a code cell enclose the answer to an
  exercise. The exercise notebook gets `raise NotImplementedError(...)` in their place; the
  solution notebook and the reference module get the answer without the markers.
- Cells tagged `reference` also go, in order, into `part_utils/reference/partN_<name>.py`,
  which the checks and later parts import. They must only define things.
- A cell tagged `workbook-setup` is replaced by `source/_setup_cell.py`, shared by all parts,
  with the repository URL (from pyproject.toml) and the notebook's build id filled in: a hash
  of the part's source and the setup cell, by which the Colab setup finds the commit that
  introduced this version of the notebook (see tooling/colab.py).
- Numbers in the markdown are placeholders filled in from the part's results file
  (`section_data/results/partN.json`, written by its full-mode run; see tooling/claims.py).
- The first cell of each notebook gets a link that opens it in Colab, and the README's
  notebook table gets a Colab badge per notebook.

Output is deterministic (fixed cell ids, no execution metadata) so a test can regenerate
everything and compare it with what is committed.
"""

import sys
from dataclasses import dataclass
from pathlib import Path

import jupytext
import nbformat

from part_utils.results import load_results
from tooling.claims import ClaimError, part_number, render
from tooling.colab import readme_with_badges, setup_code, with_colab_link

ROOT = Path(__file__).resolve().parent
SOURCE_DIR = ROOT / "source"
BEGIN, END = "# BEGIN SOLUTION", "# END SOLUTION"
STUB = 'raise NotImplementedError("Exercise: write this part, run the cell, then run the check below.")'
README = ROOT / "README.md"
KERNELSPEC = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}


@dataclass(frozen=True)
class Outputs:
    exercise_notebook: str
    solution_notebook: str
    reference_module: str


def source_files() -> list[Path]:
    return sorted(path for path in SOURCE_DIR.glob("[0-9][0-9]_*.py"))


def output_paths(source: Path, root: Path = ROOT) -> dict[str, Path]:
    number, name = source.stem.split("_", 1)
    return {
        "exercise_notebook": root / "notebooks" / f"{source.stem}.ipynb",
        "solution_notebook": root / "solutions" / f"{source.stem}.ipynb",
        "reference_module": root / "part_utils" / "reference" / f"part{int(number)}_{name}.py",
    }


def generate(source: Path) -> Outputs:
    notebook = jupytext.reads(source.read_text(), fmt="py:percent")
    setup = setup_code(source)
    results = load_results(part_number(source))
    exercise_cells, solution_cells, reference_chunks = [], [], []
    for index, cell in enumerate(notebook.cells):
        tags = cell.metadata.get("tags", [])
        text = setup if "workbook-setup" in tags else cell.source
        if cell.cell_type == "markdown":
            try:
                # Measured numbers come from the part's results file; `claims --check` fails on any still missing.
                text = render(text, results, strict=False)
            except ClaimError as error:
                raise ClaimError(f"{source.name}: {error}") from None
            for cells, folder in ((exercise_cells, "notebooks"), (solution_cells, "solutions")):
                linked = with_colab_link(text, folder, source.stem) if index == 0 else text
                cells.append(nbformat.v4.new_markdown_cell(linked))
            continue
        solution_text = _solution_version(text, source)
        exercise_cells.append(nbformat.v4.new_code_cell(_exercise_version(text, source)))
        solution_cells.append(nbformat.v4.new_code_cell(solution_text))
        if "reference" in tags:
            reference_chunks.append(solution_text)
    header = (
        f'"""Reference implementation for {source.stem}, generated from source/{source.name}.\n\n'
        'Do not edit: change the source and run `python workbook.py build`."""\n'
    )
    return Outputs(
        exercise_notebook=_write_notebook(exercise_cells, source.stem),
        solution_notebook=_write_notebook(solution_cells, source.stem),
        reference_module=header + "\n" + "\n\n\n".join(chunk.strip() for chunk in reference_chunks) + "\n",
    )


def _solution_version(code: str, source: Path) -> str:
    _validate_markers(code, source)
    return "\n".join(line for line in code.splitlines() if line.strip() not in (BEGIN, END))


def _exercise_version(code: str, source: Path) -> str:
    lines, inside = [], False
    for line in code.splitlines():
        stripped = line.strip()
        if stripped == BEGIN:
            inside = True
            indent = line[: len(line) - len(line.lstrip())]
            lines.append(indent + STUB)
        elif stripped == END:
            inside = False
        elif not inside:
            lines.append(line)
    return "\n".join(lines)


def _validate_markers(code: str, source: Path) -> None:
    markers = [line.strip() for line in code.splitlines() if line.strip() in (BEGIN, END)]
    if markers != [BEGIN, END] * (len(markers) // 2) or len(markers) % 2:
        raise ValueError(f"{source.name}: unbalanced solution markers in cell starting {code[:60]!r}")


def _write_notebook(cells: list, stem: str) -> str:
    for index, cell in enumerate(cells):
        cell.id = f"{stem[:2]}-{index:03d}"
    notebook = nbformat.v4.new_notebook(
        cells=cells,
        metadata={"kernelspec": KERNELSPEC, "language_info": {"name": "python"}},
    )
    nbformat.validate(notebook)
    return nbformat.writes(notebook) + "\n"


def generated_files(root: Path = ROOT, parts: list[int] | None = None) -> dict[Path, str]:
    """Every generated file (or only those of `parts`) and its content."""
    files = {}
    for source in source_files():
        if parts and int(source.stem[:2]) not in parts:
            continue
        outputs = generate(source)
        for kind, path in output_paths(source, root).items():
            files[path] = getattr(outputs, kind)
    if not parts:  # the README's badges list every part
        readme = root / "README.md"
        files[readme] = readme_with_badges(readme.read_text(), source_files())
    return files


def build(root: Path = ROOT, parts: list[int] | None = None) -> list[Path]:
    """Write every generated file (or only those of `parts`) under `root`; return the paths written."""
    written = []
    for path, content in generated_files(root, parts).items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
        written.append(path)
    return written


def stale_files(root: Path = ROOT) -> list[Path]:
    """Generated files that differ from a fresh generation (or are missing)."""
    return [path for path, content in generated_files(root).items() if not path.exists() or path.read_text() != content]


if __name__ == "__main__":
    for path in build(parts=[int(part) for part in sys.argv[1:]]):  # e.g. `notebook_build.py 4 5`: those parts only
        print(f"wrote {path.relative_to(ROOT)}")
    sys.exit(0)
