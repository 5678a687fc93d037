"""Packages a notebook needs beyond what Colab preinstalls (locally, `workbook.py` installs them)."""

import subprocess
import sys
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def install_on_colab(*requirements: str, without_dependencies: tuple[str, ...] = ()) -> None:
    """pip-install `requirements`, then `without_dependencies` with --no-deps, when running in Colab; nothing
    elsewhere."""
    if "google.colab" not in sys.modules:
        return
    if requirements:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", *requirements], check=True)
    if without_dependencies:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", *without_dependencies], check=True)


def install_transformer_lens_on_colab() -> None:
    """TransformerLens 4 and only the dependencies the workbook uses (the lists in pyproject.toml).

    It needs transformers 5.9 or newer, so on a Colab runtime with an older transformers this
    upgrades it; Colab's other packages built on transformers are not used by the workbook."""
    settings = tomllib.loads(PYPROJECT.read_text())
    install_on_colab(
        *settings["project"]["optional-dependencies"]["transformer-lens"],
        without_dependencies=tuple(settings["tool"]["workbook"]["without-dependencies"]),
    )
