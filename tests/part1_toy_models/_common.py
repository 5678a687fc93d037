"""The model that Part 1's forward, sampler and loss checks run the learner's methods on."""

import torch

from part_utils.device import get_device
from part_utils.reference import part1_toy_models as reference


def random_toy_model(n_inst: int = 3, n_features: int = 7, d_hidden: int = 4) -> reference.ToyModel:
    """A reference model with non-trivial weights, a non-zero bias and varied probabilities and importances."""
    cfg = reference.ToyModelConfig(n_inst=n_inst, n_features=n_features, d_hidden=d_hidden)
    probability = torch.linspace(0.05, 0.9, n_inst * n_features).reshape(n_inst, n_features)
    probability = probability[:, torch.randperm(n_features)]
    importance = 0.8 * torch.rand(n_inst, n_features) + 0.1
    model = reference.ToyModel(cfg, feature_probability=probability, importance=importance, device=get_device())
    with torch.no_grad():
        model.W.normal_()
        model.b_final.normal_(0.0, 0.5)
    return model
