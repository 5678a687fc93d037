"""Packages a notebook needs beyond what Colab preinstalls (locally, `workbook.py` installs them)."""

import subprocess
import sys


def install_on_colab(*requirements: str) -> None:
    """pip-install `requirements` when running in Colab; do nothing elsewhere."""
    if "google.colab" in sys.modules:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", *requirements], check=True)
