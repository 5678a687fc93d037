"""Inputs that the checks of several parts build alike."""

import torch

from part_utils.device import get_device
from part_utils.reference import part1_toy_models as toy


# The default shapes are those of Parts 4 and 5's checks (3 instances, d_hidden 4, 6 features).
def toy_model(
    n_inst: int = 3, d_hidden: int = 4, n_features: int = 6, device: torch.device | None = None
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
