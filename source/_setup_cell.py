# Setup: make the workbook's helpers (`part_utils`, `tests`) importable. Run this cell first.
import os
import subprocess
import sys
import zipfile
from pathlib import Path

# Before torch starts: OpenMP threads that wait should sleep, not spin (part_utils/threads.py says why).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
WORKBOOK_REPOSITORY = "__WORKBOOK_REPOSITORY__"  # from pyproject.toml, written by `workbook.py build`
WORKBOOK_BUILD = "__WORKBOOK_BUILD__"  # this notebook's build; Colab checks out the commit that introduced it


def find_workbook() -> Path:
    """The folder holding part_utils/: WORKBOOK_ROOT, or this notebook's folder or one above it."""
    candidates = (
        [Path(os.environ["WORKBOOK_ROOT"])] if os.environ.get("WORKBOOK_ROOT") else [Path.cwd(), *Path.cwd().parents]
    )
    for folder in candidates:
        if (folder / "part_utils").is_dir():
            return folder
    raise RuntimeError(
        f"This notebook is not inside the workbook (no part_utils/ in {candidates[0]} or above): open it from the "
        "workbook folder (`python3 workbook.py lab`), or set WORKBOOK_ROOT to that folder before running this cell."
    )


def bring_workbook_to_colab(root: Path) -> None:
    """Unpack an uploaded zip of the workbook, or clone it at the commit this notebook was built from."""
    archives = [
        path
        for path in sorted(root.parent.glob("*.zip"))
        if any(name.endswith("part_utils/__init__.py") for name in zipfile.ZipFile(path).namelist())
    ]
    if archives:
        unpacked = root.parent / "sae-workbook-unzipped"
        zipfile.ZipFile(archives[0]).extractall(unpacked)
        next(unpacked.rglob("part_utils")).parent.rename(root)
        print(f"workbook unpacked from {archives[0].name}")
        return
    url = os.environ.get("WORKBOOK_REPO_URL", WORKBOOK_REPOSITORY)
    subprocess.run(["git", "clone", "--quiet", url, str(root)], check=True)
    found = subprocess.run(
        [
            "git",
            "-C",
            str(root),
            "log",
            "--reverse",
            "--format=%H",
            "-S",
            WORKBOOK_BUILD,
            "--",
            "notebooks",
            "solutions",
        ],
        capture_output=True,
        text=True,
    )
    commit = next(iter(found.stdout.split()), "")
    if commit:
        subprocess.run(["git", "-C", str(root), "checkout", "--quiet", commit], check=True)
        print(f"workbook cloned from {url} at {commit[:10]}, the commit this notebook was built from")
    else:
        print(f"workbook cloned from {url}; this notebook's build is not in its history, so the latest version is used")


IN_COLAB = "google.colab" in sys.modules
if IN_COLAB:
    WORKBOOK_ROOT = Path(os.environ.get("WORKBOOK_COLAB_ROOT", "/content/sae-workbook"))
    if not (WORKBOOK_ROOT / "part_utils").is_dir():
        bring_workbook_to_colab(WORKBOOK_ROOT)
        # Colab has torch, plotly, ipywidgets and tqdm; add the rest and leave its torch alone.
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "jaxtyping", "einops", "latex2mathml"], check=True
        )
else:
    WORKBOOK_ROOT = find_workbook()
if str(WORKBOOK_ROOT) not in sys.path:
    sys.path.insert(0, str(WORKBOOK_ROOT))

from part_utils.threads import use_threads

print(use_threads("toy"))
