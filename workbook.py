"""One entry point for learners, instructors and CI. Needs only Python 3.11+ to start.

    python3 workbook.py lab      # set up .venv (first time only) and open the workbook in JupyterLab
    python3 workbook.py test     # set up .venv and run the whole test suite (fast mode)
    python3 workbook.py build    # regenerate notebooks and reference modules from source/
    python3 workbook.py bench    # time every solution notebook (full and fast) and the toy training loop

Setup installs PyTorch before anything else: a torch that is already importable is kept;
otherwise the CPU build of torch 2.13.0 is installed (from a local wheel where pip has one,
from PyTorch's CPU index on Linux machines without an NVIDIA driver, else from PyPI).
"""

import hashlib
import os
import platform
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
REQUIREMENTS = ROOT / "requirements.txt"
STAMP = VENV / ".workbook-requirements.sha256"
TORCH_VERSION = "2.13.0"
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def venv_python() -> Path:
    return VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def run(*command: str | Path, check: bool = True, **kwargs) -> int:
    print("+", " ".join(str(part) for part in command), flush=True)
    return subprocess.run([str(part) for part in command], check=check, **kwargs).returncode


def pip(*arguments: str, check: bool = True) -> int:
    return run(venv_python(), "-m", "pip", "install", "--disable-pip-version-check", *arguments, check=check)


def has_torch() -> bool:
    probe = subprocess.run([str(venv_python()), "-c", "import torch"], capture_output=True)
    return probe.returncode == 0


def install_torch() -> None:
    if has_torch():
        return
    # A wheel pip can see locally (its find-links) is used with no download at all.
    if pip("--no-index", "--no-deps", f"torch=={TORCH_VERSION}", check=False) == 0:
        pip(f"torch=={TORCH_VERSION}")  # now only torch's small dependencies
        return
    linux_without_nvidia = platform.system() == "Linux" and shutil.which("nvidia-smi") is None
    if linux_without_nvidia:
        cpu_index = ("--index-url", TORCH_CPU_INDEX, "--extra-index-url", "https://pypi.org/simple")
        if pip(*cpu_index, "--timeout", "20", "--retries", "1", f"torch=={TORCH_VERSION}", check=False) == 0:
            return
    pip(f"torch=={TORCH_VERSION}")


def setup() -> None:
    if sys.version_info < (3, 11):
        sys.exit(f"The workbook needs Python 3.11 or newer; this is {platform.python_version()}.")
    if not venv_python().exists():
        print(f"Creating a virtual environment in {VENV.relative_to(ROOT)} ...", flush=True)
        venv.create(VENV, with_pip=True)
    wanted = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == wanted and has_torch():
        return
    install_torch()
    pip("-r", str(REQUIREMENTS))
    STAMP.write_text(wanted)


def in_venv(*arguments: str, environment: dict[str, str] | None = None) -> int:
    env = {**os.environ, **(environment or {})}
    return run(venv_python(), *arguments, check=False, cwd=ROOT, env=env)


def main(arguments: list[str]) -> int:
    command, rest = (arguments[0], arguments[1:]) if arguments else ("help", [])
    if command == "lab":
        setup()
        return in_venv("-m", "jupyterlab", "--notebook-dir", str(ROOT), "notebooks/", *rest)
    if command == "test":
        setup()
        # The notebooks' own thread policy (part_utils/threads.py) also holds for the pytest process.
        fast = {"WORKBOOK_FAST": "1", "TQDM_DISABLE": "1", "PYTHONHASHSEED": "0", "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
        return in_venv("-m", "pytest", *rest, environment=fast)
    if command == "build":
        setup()
        return in_venv("notebook_build.py")
    if command == "bench":
        setup()
        return in_venv("-m", "part_utils.benchmark", *rest)
    print(__doc__)
    return 0 if command in ("help", "-h", "--help") else 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
