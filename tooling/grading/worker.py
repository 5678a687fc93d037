"""The submission's side of grading: runs the notebook's cells in an IPython shell and serves the
grader's calls into the learner's functions. It runs inside the sandbox; nothing it says is
trusted, and the checks never run here.

Usage (by the grader): python -m tooling.grading.worker READ_FD WRITE_FD
"""

import sys
from typing import Any

from tooling.grading.bridge import BridgeError, Decoder, Peer, describe_error
from tooling.grading.wire import Channel


def library_class(path: str) -> bool:
    """Classes named by path (the grader has them too); the learner's own go by handle."""
    module = path.partition(":")[0]
    library = ("torch.", "part_utils.", "transformer_lens.")
    return module in ("builtins", "collections", "torch") or module.startswith(library)


def main(read_fd: int, write_fd: int) -> None:
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    peer = Peer(Channel(read_fd, write_fd), resolvable=library_class, exportable=lambda value: True)
    peer.learner_namespace = shell.user_ns

    def run_cell(decoder: Decoder, *, source: str) -> dict:
        result = shell.run_cell(str(source), store_history=True)
        error = result.error_before_exec or result.error_in_exec
        return {"ok": error is None, "error": None if error is None else describe_error(error)}

    def lookup(decoder: Decoder, *, name: str) -> Any:
        if name not in shell.user_ns:
            raise NameError(f"name '{name}' is not defined")
        return shell.user_ns[name]

    def ready(decoder: Decoder) -> bool:
        return True

    peer.ops.update(run_cell=run_cell, lookup=lookup, ready=ready)
    try:
        peer.serve_forever()
    except (ConnectionError, BridgeError):
        pass


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
