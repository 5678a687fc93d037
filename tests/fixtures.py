"""Fixtures that the checks of several parts build their cases from."""

import torch

from part_utils.device import get_device
from part_utils.reference import part1_toy_models as toy

N_INST, D_IN, N_FEATURES = 3, 4, 6


def toy_model(
    n_inst: int = N_INST, d_hidden: int = D_IN, n_features: int = N_FEATURES, device: torch.device | None = None
) -> toy.ToyModel:
    """A frozen-to-be toy model with standard-normal weights and feature probabilities 0.1 to 0.4 by instance."""
    model = toy.ToyModel(
        toy.ToyModelConfig(n_inst=n_inst, n_features=n_features, d_hidden=d_hidden),
        feature_probability=torch.linspace(0.1, 0.4, n_inst)[:, None],
        device=device if device is not None else get_device(),
    )
    with torch.no_grad():
        model.W.normal_()
    return model
