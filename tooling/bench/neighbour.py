"""A bounded busy process beside a measurement, standing in for a browser tab or another notebook."""

import contextlib
import subprocess
import sys
from collections.abc import Iterator

SPIN = "import time\nend = time.monotonic() + {limit}\nwhile time.monotonic() < end:\n    pass\n"


@contextlib.contextmanager
def busy_neighbour(limit_seconds: float = 900.0) -> Iterator[subprocess.Popen]:
    """One single-threaded process spinning on a core for the duration of the block.

    It stops itself after `limit_seconds` even if this process dies, and is killed when the
    block ends.
    """
    process = subprocess.Popen([sys.executable, "-c", SPIN.format(limit=limit_seconds)])
    try:
        yield process
    finally:
        process.kill()
        process.wait()
