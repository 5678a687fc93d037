"""What the build writes for Colab: the shared setup cell with the repository URL and the notebook's
build id filled in, the "Open in Colab" link atop each notebook, and the README's badge table.

What a notebook itself runs in Colab (installing packages) is `part_utils.colab`.
"""

import hashlib
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SETUP_CELL = ROOT / "source" / "_setup_cell.py"
BADGES_BEGIN, BADGES_END = "<!-- colab-badges: written by `workbook.py build` -->", "<!-- /colab-badges -->"
COLAB_BADGE_IMAGE = "https://colab.research.google.com/assets/colab-badge.svg"


def repository_url(root: Path = ROOT) -> str:
    return tomllib.loads((root / "pyproject.toml").read_text())["project"]["urls"]["Repository"].rstrip("/")


def colab_url(repository: str, folder: str, stem: str) -> str:
    """Colab opens a notebook straight from GitHub:
    colab.research.google.com/github/<owner>/<repo>/blob/<branch>/<path>."""
    match = re.fullmatch(r"https://github\.com/([^/]+)/([^/]+?)(?:\.git)?", repository)
    if match is None:
        raise ValueError(f"pyproject.toml's Repository URL must be a GitHub URL for Colab links, got {repository!r}")
    owner, name = match.groups()
    return f"https://colab.research.google.com/github/{owner}/{name}/blob/main/{folder}/{stem}.ipynb"


def build_id(source: Path) -> str:
    """Changes whenever the part's source or the shared setup cell changes, and only then."""
    return hashlib.sha256(source.read_bytes() + SETUP_CELL.read_bytes()).hexdigest()[:16]


def setup_code(source: Path) -> str:
    code = SETUP_CELL.read_text().strip()
    return code.replace("__WORKBOOK_REPOSITORY__", repository_url()).replace("__WORKBOOK_BUILD__", build_id(source))


def with_colab_link(markdown: str, folder: str, stem: str) -> str:
    """The notebook's title, then a link that opens this notebook in Colab, then the rest."""
    title, _, rest = markdown.partition("\n")
    link = f"[Open this notebook in Colab]({colab_url(repository_url(), folder, stem)})"
    return f"{title}\n\n{link}\n{rest}"


def readme_with_badges(readme: str, sources: list[Path]) -> str:
    """The README with its Colab badge list (between the markers) regenerated, one row per part's source."""
    if BADGES_BEGIN not in readme or BADGES_END not in readme:
        raise ValueError(f"README.md needs the markers {BADGES_BEGIN!r} and {BADGES_END!r} around its Colab badges")
    repository = repository_url()
    lines = [
        f"| {int(source.stem[:2])} | `{source.stem}` "
        f"| [![Open in Colab]({COLAB_BADGE_IMAGE})]({colab_url(repository, 'notebooks', source.stem)}) "
        f"| [![Open in Colab]({COLAB_BADGE_IMAGE})]({colab_url(repository, 'solutions', source.stem)}) |"
        for source in sources
    ]
    table = "\n".join(["| # | Notebook | Exercises | Solutions |", "|---|---|---|---|", *lines])
    head, rest = readme.split(BADGES_BEGIN, 1)
    _, tail = rest.split(BADGES_END, 1)
    return f"{head}{BADGES_BEGIN}\n{table}\n{BADGES_END}{tail}"
