"""Which notebooks a folder of submissions holds, and whose they are.

Two layouts, mixed freely: `DIR/<learner>/.../NN_name.ipynb` and `DIR/<learner>_NN_name.ipynb`.
Nothing is followed or opened that could be a trap: symbolic links, FIFOs, devices and huge files
are reported, not graded; every notebook is read once here so that one that is not a notebook is
reported too. A learner who hands in a part twice is graded on one copy, chosen deterministically.
"""

import os
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path

import nbformat

from tooling.grading.catalogue import EXERCISES, part_of

SIZE_LIMIT = 20 * 2**20
SKIPPED_FOLDERS = {".ipynb_checkpoints"}
NO_PART = "no part name such as 04_toy_sae in its file name"
LINK = "a symbolic link, not graded"


@dataclass(frozen=True)
class Submission:
    learner: str
    part: str
    path: Path


def learner_of_file(name: str, part: str | None) -> str:
    """The learner of a notebook handed in directly in DIR: its name without the part's name."""
    stem = name[: -len(".ipynb")] if name.lower().endswith(".ipynb") else name
    return (stem.replace(part, "").strip(" _-.") if part else "") or stem


def notebook_problem(path: Path) -> str | None:
    """Why the file cannot be graded, or None: it is read without following a link or blocking on a FIFO."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as error:
        return LINK if os.path.islink(path) else f"could not be opened ({error.strerror})"
    with os.fdopen(descriptor, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            return "not a regular file, not graded"
        if info.st_size > SIZE_LIMIT:
            return f"{info.st_size / 2**20:.0f} MB, over the {SIZE_LIMIT // 2**20} MB limit, not graded"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                notebook = nbformat.reads(handle.read().decode("utf-8"), as_version=4)
            if not isinstance(notebook.get("cells"), list):
                return "not a notebook (it has no list of cells)"
        except Exception as error:  # anything a malformed file can raise: reported, never raised
            return f"not a readable notebook ({type(error).__name__})"
    return None


class Finder:
    """Walks DIR once, collecting submissions and problems."""

    def __init__(self, folder: Path, catalogue: Path) -> None:
        self.folder, self.catalogue = folder, catalogue
        self.found: list[Submission] = []
        self.problems: dict[str, list[str]] = {}

    def note(self, learner: str, path: Path, problem: str) -> None:
        self.problems.setdefault(learner, []).append(f"{path.relative_to(self.folder)}: {problem}")

    def consider(self, learner: str, path: Path) -> None:
        """One entry named `*.ipynb`, or a link: a submission, or a problem; never raises."""
        try:
            kind = os.lstat(path).st_mode
        except OSError as error:
            return self.note(learner, path, f"could not be read ({error.strerror})")
        part = part_of(path, self.catalogue)
        if stat.S_ISLNK(kind):
            self.note(learner, path, LINK)
        elif stat.S_ISDIR(kind):
            self.note(learner, path, "a folder, not a notebook")
        elif not stat.S_ISREG(kind):
            self.note(learner, path, "not a regular file, not graded")
        elif part is None:
            self.note(learner, path, NO_PART)
        elif problem := notebook_problem(path):
            self.note(learner, path, problem)
        else:
            self.found.append(Submission(learner, part, path))

    def walk(self, learner: str, top: Path) -> None:
        """Every notebook, link and odd entry below a learner's folder, without following links."""

        def unreadable(error: OSError) -> None:
            self.note(learner, Path(error.filename or top), f"could not be read ({error.strerror})")

        for here, folders, files in os.walk(top, followlinks=False, onerror=unreadable):
            for name in sorted(folders):
                path = Path(here, name)
                if name in SKIPPED_FOLDERS or path.is_symlink() or name.lower().endswith(".ipynb"):
                    folders.remove(name)
                    if name not in SKIPPED_FOLDERS:
                        self.consider(learner, path)
            folders.sort()
            for name in sorted(files):
                if name.lower().endswith(".ipynb") or Path(here, name).is_symlink():
                    self.consider(learner, Path(here, name))

    def top(self, entry: os.DirEntry) -> None:
        """An entry of DIR: a learner's folder, or a notebook (or link) named after its learner."""
        path = Path(entry.path)
        if entry.is_dir(follow_symlinks=False) and not entry.name.lower().endswith(".ipynb"):
            if entry.name not in SKIPPED_FOLDERS:
                self.walk(entry.name, path)
        elif entry.is_symlink() or entry.name.lower().endswith(".ipynb"):
            self.consider(learner_of_file(entry.name, part_of(path, self.catalogue)), path)


def find_submissions(folder: Path, catalogue: Path = EXERCISES) -> tuple[list[Submission], dict[str, list[str]]]:
    """The notebooks to grade, one per learner and part, sorted, and the problems found per learner
    (or per entry of DIR, when no learner can be told)."""
    finder = Finder(folder, catalogue)
    for entry in sorted(os.scandir(folder), key=lambda entry: entry.name):
        try:
            finder.top(entry)
        except OSError as error:
            finder.note(entry.name, Path(entry.path), f"could not be read ({error.strerror})")
    return keep_one_per_part(finder.found, folder, finder.problems), finder.problems


def keep_one_per_part(found: list[Submission], folder: Path, problems: dict[str, list[str]]) -> list[Submission]:
    """One submission per learner and part: the first in the learner's folder, else the first by path."""
    chosen: dict[tuple[str, str], list[Submission]] = {}
    for submission in sorted(found, key=lambda submission: (submission.path.parent == folder, str(submission.path))):
        chosen.setdefault((submission.learner, submission.part), []).append(submission)
    for (learner, part), copies in chosen.items():
        if len(copies) > 1:
            names = ", ".join(str(copy.path.relative_to(folder)) for copy in copies)
            graded = copies[0].path.relative_to(folder)
            problems.setdefault(learner, []).append(
                f"{part} handed in {len(copies)} times ({names}): graded {graded} only"
            )
    return sorted(
        (copies[0] for copies in chosen.values()), key=lambda submission: (submission.learner, submission.part)
    )
