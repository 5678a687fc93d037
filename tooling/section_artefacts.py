"""Makes the small trained artefacts in `section_data/` that notebooks load (with
`part_utils.section_artefacts`), each from its recipe here.

Regenerate with `python -m tooling.section_artefacts`.
"""

from pathlib import Path

import numpy as np
import torch

from part_utils.section_artefacts import PART1_EXPLORER_GRID, ExplorerGrid

# The grid the Part 1 explorer offers, and how each model in it was trained.
EXPLORER_PROBABILITIES = (1.0, 0.5, 0.25, 0.15, 0.1, 0.06, 0.04, 0.025, 0.015, 0.01)
EXPLORER_DECAYS = (0.5, 0.7, 0.8, 0.9, 0.95, 1.0)
EXPLORER_TRAINING = {"steps": 6_000, "batch_size": 1024, "lr": 3e-3, "seed": 0}


def make_part1_explorer_grid() -> ExplorerGrid:
    """Train one 5-feature, 2-dimension toy model per (probability, importance decay) pair, all at once."""
    from part_utils.reference.part1_toy_models import ToyModel, ToyModelConfig
    from part_utils.seeding import seed_everything
    from part_utils.training import cosine_decay_lr, train_self_supervised

    seed_everything(EXPLORER_TRAINING["seed"])
    n_p, n_d, n_features = len(EXPLORER_PROBABILITIES), len(EXPLORER_DECAYS), 5
    probability = torch.tensor(EXPLORER_PROBABILITIES)[:, None].expand(n_p, n_d).reshape(-1, 1)
    decay = torch.tensor(EXPLORER_DECAYS)[None, :].expand(n_p, n_d).reshape(-1, 1)
    importance = decay ** torch.arange(n_features)
    model = ToyModel(
        ToyModelConfig(n_inst=n_p * n_d, n_features=n_features, d_hidden=2),
        feature_probability=probability,
        importance=importance,
        device=torch.device("cpu"),
    )
    train_self_supervised(
        model,
        steps=EXPLORER_TRAINING["steps"],
        batch_size=EXPLORER_TRAINING["batch_size"],
        lr=EXPLORER_TRAINING["lr"],
        lr_schedule=cosine_decay_lr,
        description="explorer grid",
    )
    return ExplorerGrid(EXPLORER_PROBABILITIES, EXPLORER_DECAYS, model.W.detach().reshape(n_p, n_d, 2, n_features))


def save_part1_explorer_grid(grid: ExplorerGrid, path: Path = PART1_EXPLORER_GRID) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        path,
        feature_probabilities=np.array(grid.feature_probabilities),
        importance_decays=np.array(grid.importance_decays),
        W=grid.W.numpy().astype(np.float32),
        training=np.array([EXPLORER_TRAINING[key] for key in ("steps", "batch_size", "lr", "seed")]),
    )


if __name__ == "__main__":
    save_part1_explorer_grid(make_part1_explorer_grid())
    print(f"wrote {PART1_EXPLORER_GRID}")
