"""One entry point for learners, instructors and CI. Needs only Python 3.11+ to start.

    python3 workbook.py lab [ARGS]    set up .venv (first time only) and open JupyterLab at the
                                      workbook's folder, showing notebooks/; ARGS go to JupyterLab
    python3 workbook.py progress [NN ...]
                                      run your exercise notebooks (fast mode, fresh kernels) and
                                      show which exercises pass their checks
    python3 workbook.py grade DIR [--out OUT] [--time-limit S]
                                      the same for a folder of submitted notebooks: OUT/grades.csv
                                      and OUT/grades.md (learners × exercises)
    python3 workbook.py test [ARGS]   run the whole test suite (fast mode); ARGS go to pytest
    python3 workbook.py build         regenerate notebooks, reference modules and README badges
    python3 workbook.py bench [ARGS]  benchmarks (`bench --help` lists them)
    python3 workbook.py claims [--part N] [--check]
                                      re-run parts in full mode and list every sentence whose numbers
                                      changed; --check verifies the prose against the results (seconds)
    python3 workbook.py zip           write sae-workbook.zip (tracked files only) for Colab's upload route

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


def project() -> dict:
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def install_stamped(name: str, fingerprint: str, *pip_arguments: str) -> None:
    """Run one pip install unless the same one (same fingerprint) already ran in this .venv."""
    stamp = VENV / f".workbook-{name}.sha256"
    if stamp.exists() and stamp.read_text() == fingerprint:
        return
    pip(*pip_arguments)
    stamp.write_text(fingerprint)


def setup(*, develop: bool = False) -> None:
    """The notebooks' packages (torch first); with `develop`, also the build and test tools."""
    if sys.version_info < (3, 11):  # noqa: UP036  (this script may be started by an older python3)
        sys.exit(f"The workbook needs Python 3.11 or newer; this is {platform.python_version()}.")
    if not venv_python().exists():
        print(f"Creating a virtual environment in {VENV.relative_to(ROOT)} ...", flush=True)
        venv.create(VENV, with_pip=True)
    if not has_torch():
        install_torch()
    settings = project()
    without_dependencies = settings["tool"]["workbook"]["without-dependencies"]
    their_dependencies = settings["project"]["optional-dependencies"]["transformer-lens"]
    fingerprint = hashlib.sha256(
        REQUIREMENTS.read_bytes() + "\n".join(without_dependencies + their_dependencies).encode()
    ).hexdigest()
    install_stamped("requirements", fingerprint, "-r", str(REQUIREMENTS), *their_dependencies)
    install_stamped("without-dependencies", fingerprint, "--no-deps", *without_dependencies)
    if develop:
        tools = settings["project"]["optional-dependencies"]["develop"]
        install_stamped("develop", hashlib.sha256("\n".join(tools).encode()).hexdigest(), *tools)


def in_venv(*arguments: str, environment: dict[str, str] | None = None) -> int:
    env = {**os.environ, **(environment or {})}
    return run(venv_python(), *arguments, check=False, cwd=ROOT, env=env)


def lab(arguments: list[str]) -> int:
    setup()
    options = [f"--ServerApp.root_dir={ROOT}", "--LabApp.default_url=/lab/tree/notebooks"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        print("Running as root (as in Docker or many cloud machines): passing --allow-root to JupyterLab.", flush=True)
        options.append("--allow-root")
    return in_venv("-m", "jupyterlab", *options, *arguments)


def make_zip() -> int:
    """The workbook's tracked files (never .venv or outputs) as sae-workbook.zip, for Colab's upload route."""
    import zipfile

    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True)
    if listed.returncode != 0:
        print("workbook.py zip needs a git checkout (it zips the tracked files only).", file=sys.stderr)
        return 1
    archive = ROOT / "sae-workbook.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as bundle:
        for name in filter(None, listed.stdout.split("\0")):
            if (ROOT / name).is_file():
                bundle.write(ROOT / name, f"sae-workbook/{name}")
    print(
        f"wrote {archive.name} ({archive.stat().st_size / 1e6:.1f} MB): "
        "upload it to /content in Colab, then run the setup cell"
    )
    return 0


def in_venv_after_setup(*command: str, environment: dict[str, str] | None = None, develop: bool = False) -> int:
    setup(develop=develop)
    return in_venv(*command, environment=environment)


# Fast mode, quiet progress bars, and the notebooks' own thread policy (part_utils/threads.py) for pytest too.
TEST_ENVIRONMENT = {
    "WORKBOOK_FAST": "1",
    "TQDM_DISABLE": "1",
    "PYTHONHASHSEED": "0",
    "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE"),
}
COMMANDS = {
    "lab": lab,
    "progress": lambda rest: in_venv_after_setup("-m", "tooling.grading_cli", "progress", *rest),
    "grade": lambda rest: in_venv_after_setup("-m", "tooling.grading_cli", "grade", *rest),
    "test": lambda rest: in_venv_after_setup("-m", "pytest", *rest, environment=TEST_ENVIRONMENT, develop=True),
    "build": lambda rest: in_venv_after_setup("notebook_build.py", *rest, develop=True),
    "bench": lambda rest: in_venv_after_setup("-m", "tooling.benchmark", *rest),
    "claims": lambda rest: in_venv_after_setup("-m", "tooling.claims", *rest, develop=True),
    "zip": lambda rest: make_zip(),
}


def main(arguments: list[str]) -> int:
    command, rest = (arguments[0], arguments[1:]) if arguments else ("help", [])
    if command in ("help", "-h", "--help"):
        print(__doc__)
        return 0
    if command not in COMMANDS:
        print(
            f"workbook.py: unknown command {command!r}; "
            f"the commands are {', '.join(COMMANDS)} (see `python3 workbook.py help`).",
            file=sys.stderr,
        )
        return 2
    return COMMANDS[command](rest)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
