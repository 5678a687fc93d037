"""Small trained artefacts that notebooks load from `section_data/`.

They are made by `python -m tooling.section_artefacts`, which holds each one's recipe.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Float

SECTION_DATA = Path(__file__).resolve().parent.parent / "section_data"
PART1_EXPLORER_GRID = SECTION_DATA / "part1_explorer_grid.npz"


@dataclass(frozen=True)
class ExplorerGrid:
    feature_probabilities: tuple[float, ...]
    importance_decays: tuple[float, ...]
    W: Float[torch.Tensor, "probabilities decays d_hidden=2 feats"]

    @property
    def n_features(self) -> int:
        return self.W.shape[-1]


def load_part1_explorer_grid(path: Path = PART1_EXPLORER_GRID) -> ExplorerGrid:
    with np.load(path) as data:
        return ExplorerGrid(
            tuple(data["feature_probabilities"].tolist()),
            tuple(data["importance_decays"].tolist()),
            torch.from_numpy(data["W"]),
        )
