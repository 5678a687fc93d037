"""The Colab path, simulated: a fake `google.colab` module imported at kernel start (as Colab
does), the notebook in a folder outside the workbook, and the workbook fetched by the setup
cell from a `file://` clone URL or an uploaded zip. Also the setup cell's message when a local
notebook is opened outside the workbook."""

import os
import subprocess
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import nbformat
import pytest

from notebook_build import ROOT, source_files
from tooling.colab import build_id
from tooling.notebook_runner import HeadlessClient, execute_notebook, temporary_environment

COLAB_SIZE_LIMIT = 3_000_000  # bytes for executed Part 1


@pytest.fixture(scope="module")
def workbook_repository(tmp_path_factory) -> Path:
    """A git repository holding the working tree's tracked files as they are now, in one commit."""
    repository = tmp_path_factory.mktemp("remote") / "sae-workbook"
    repository.mkdir()
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    for name in filter(None, tracked.split("\0")):
        if (ROOT / name).is_file():
            (repository / name).parent.mkdir(parents=True, exist_ok=True)
            (repository / name).write_bytes((ROOT / name).read_bytes())
    git = ["git", "-C", str(repository), "-c", "user.name=ci", "-c", "user.email=ci@example.invalid"]
    subprocess.run(["git", "init", "-q", str(repository)], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "workbook"], check=True)
    return repository


@contextmanager
def colab_kernel_environment(tmp_path: Path, **extra: str) -> Iterator[Path]:
    """Environment for a kernel that believes it runs in Colab; yields its /content folder."""
    fake = tmp_path / "fake-colab"
    (fake / "google" / "colab").mkdir(parents=True)
    (fake / "google" / "__init__.py").write_text("")
    (fake / "google" / "colab" / "__init__.py").write_text('"""Stands in for Colab\'s module in tests."""\n')
    startup = tmp_path / "ipython" / "profile_default" / "startup"
    startup.mkdir(parents=True)
    (startup / "00-colab.py").write_text("import google.colab\n")
    content = tmp_path / "content"
    content.mkdir()
    values = {
        "PYTHONPATH": str(fake),
        "IPYTHONDIR": str(tmp_path / "ipython"),
        "WORKBOOK_COLAB_ROOT": str(content / "sae-workbook"),
        **extra,
    }
    with temporary_environment(values):
        yield content


def run_setup_cell(notebook_path: Path, folder: Path) -> list[str]:
    """Run only the notebook's setup cell in a fresh kernel in `folder`; its printed lines and errors."""
    notebook = nbformat.read(notebook_path, as_version=4)
    setup = next(cell for cell in notebook.cells if cell.cell_type == "code")
    run = nbformat.v4.new_notebook(cells=[setup], metadata=notebook.metadata)
    HeadlessClient(
        run, timeout=300, kernel_name="python3", allow_errors=True, resources={"metadata": {"path": str(folder)}}
    ).execute()
    return [
        output.get("text", "") or f"{output.get('ename')}: {output.get('evalue')}" for output in run.cells[0].outputs
    ]


def test_part1_runs_in_simulated_colab_from_a_clone_at_its_own_commit(workbook_repository, tmp_path):
    with colab_kernel_environment(tmp_path, WORKBOOK_REPO_URL=workbook_repository.as_uri()) as content:
        notebook = content / "01_toy_models.ipynb"
        notebook.write_bytes((ROOT / "solutions" / "01_toy_models.ipynb").read_bytes())
        result = execute_notebook(notebook, fast=True)
    assert result.error is None, result.error
    setup_text = "".join(output.get("text", "") for output in result.notebook.cells[1].outputs)
    commit = subprocess.run(
        ["git", "-C", str(workbook_repository), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout
    assert f"at {commit[:10]}, the commit this notebook was built from" in setup_text
    figures = [
        output
        for cell in result.notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if "text/html" in output.get("data", {}) and "plotly" in output["data"]["text/html"]
    ]
    assert figures, "no figures were drawn"
    for output in figures:
        assert "application/vnd.plotly.v1+json" not in output["data"]
        html = output["data"]["text/html"]
        assert "cdn.plot.ly" in html and len(html) < 2_000_000, "a Colab figure should load plotly.js, not carry it"
    saved = content / "executed.ipynb"
    nbformat.write(result.notebook, saved)
    assert saved.stat().st_size <= COLAB_SIZE_LIMIT, f"executed Part 1 in Colab is {saved.stat().st_size / 1e6:.1f} MB"


def test_colab_setup_unpacks_an_uploaded_zip_whatever_its_name(tmp_path):
    with colab_kernel_environment(tmp_path, WORKBOOK_REPO_URL="file:///nonexistent") as content:
        tracked = subprocess.run(
            ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.split()
        with zipfile.ZipFile(content / "sae-workbook-main.zip", "w") as archive:
            for name in tracked:
                if (ROOT / name).is_file() and not name.endswith(".ipynb"):
                    archive.write(ROOT / name, f"sae-workbook-main/{name}")
        lines = run_setup_cell(ROOT / "notebooks" / "03_feature_geometry.ipynb", content)
    assert any("workbook unpacked from sae-workbook-main.zip" in line for line in lines), lines
    assert (content / "sae-workbook" / "part_utils").is_dir()
    assert any(line.startswith("CPU threads: 1") for line in lines), lines


def test_a_notebook_outside_the_workbook_says_what_to_do(tmp_path):
    os.environ.pop("WORKBOOK_ROOT", None)
    lines = run_setup_cell(ROOT / "notebooks" / "03_feature_geometry.ipynb", tmp_path)
    assert len(lines) == 1 and lines[0].startswith("RuntimeError: This notebook is not inside the workbook"), lines
    assert "python3 workbook.py lab" in lines[0] and "WORKBOOK_ROOT" in lines[0]


def test_every_notebook_carries_its_build_id_and_the_repository():
    for source in source_files():
        for folder in ("notebooks", "solutions"):
            text = (ROOT / folder / f"{source.stem}.ipynb").read_text()
            assert build_id(source) in text and "colab.research.google.com/github/" in text
