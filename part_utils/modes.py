"""Fast mode: WORKBOOK_FAST=1 shrinks every experiment so CI can run every notebook."""

import os
from typing import TypeVar

T = TypeVar("T")

FAST_MODE: bool = os.environ.get("WORKBOOK_FAST", "0") not in ("", "0", "false", "False")


def full_or_fast(full: T, fast: T) -> T:
    """The full-mode value normally, the fast-mode value under WORKBOOK_FAST=1."""
    return fast if FAST_MODE else full
