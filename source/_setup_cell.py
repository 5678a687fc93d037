# Setup: make the workbook's helpers (`part_utils`, `tests`) importable. Run this cell first.
import os
import subprocess
import sys
import zipfile
from pathlib import Path

# Before torch starts: OpenMP threads that wait should sleep, not spin (part_utils/threads.py says why).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
IN_COLAB = "google.colab" in sys.modules
if IN_COLAB:
    # Colab: bring the workbook in once per runtime, from an uploaded zip or a git URL.
    WORKBOOK_ROOT = Path("/content/sae-workbook")
    if not (WORKBOOK_ROOT / "part_utils").is_dir():
        archive, repo_url = Path("/content/sae-workbook.zip"), os.environ.get("WORKBOOK_REPO_URL", "")
        if archive.exists():
            zipfile.ZipFile(archive).extractall("/content/sae-workbook-unzipped")
            unpacked = next(Path("/content/sae-workbook-unzipped").rglob("part_utils")).parent
            unpacked.rename(WORKBOOK_ROOT)
        elif repo_url:
            subprocess.run(["git", "clone", "--depth", "1", repo_url, str(WORKBOOK_ROOT)], check=True)
        else:
            raise RuntimeError(
                "Colab setup: upload the workbook as /content/sae-workbook.zip (Files panel), or run "
                "`%env WORKBOOK_REPO_URL=<git URL of the workbook>`, then run this cell again."
            )
        # Colab already has torch, plotly, ipywidgets and tqdm; leave its torch alone.
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "jaxtyping", "einops"], check=True)
else:
    WORKBOOK_ROOT = next(folder for folder in [Path.cwd(), *Path.cwd().parents] if (folder / "part_utils").is_dir())
if str(WORKBOOK_ROOT) not in sys.path:
    sys.path.insert(0, str(WORKBOOK_ROOT))

from part_utils.threads import use_threads

print(use_threads("toy"))
