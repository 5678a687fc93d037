"""Progress bars that stay quiet in CI.

tqdm reads `TQDM_DISABLE` for its console bar, but its notebook bar ignores it, so the
switch is applied here for every kind of bar.
"""

import os
from collections.abc import Iterable
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def progress_disabled() -> bool:
    return os.environ.get("TQDM_DISABLE", "0") not in ("", "0", "false", "False")


def progress_bar(iterable: Iterable[T], description: str, total: int | None = None) -> tqdm:
    return tqdm(iterable, desc=description, total=total, mininterval=0.5, disable=progress_disabled())
