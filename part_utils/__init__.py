"""Helpers the notebooks import at run time: device, seeding, fast mode, threads, training loops, SAE training,
plotting, timing, results and section artefacts. `part_utils/reference/` holds the reference code generated
from `source/` (never edited by hand). Checks live in `tests/`, tooling in `tooling/`."""
