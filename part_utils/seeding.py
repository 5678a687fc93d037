"""Seeding, and a context that borrows the random state without disturbing it."""

import contextlib
import random
from collections.abc import Iterator

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds CUDA and MPS generators


@contextlib.contextmanager
def forked_rng(seed: int) -> Iterator[None]:
    """Run a block with its own seed, then put every random state back as it was.

    Checks use this so that running a check never changes what the learner's next
    random draw would have been.
    """
    python_state = random.getstate()
    numpy_state = np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        mps_state = torch.mps.get_rng_state() if torch.backends.mps.is_available() else None
        try:
            seed_everything(seed)
            yield
        finally:
            if mps_state is not None:
                torch.mps.set_rng_state(mps_state)
            random.setstate(python_state)
            np.random.set_state(numpy_state)
