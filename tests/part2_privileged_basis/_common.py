"""What Part 2's checks share: the sizes and models they run on, signed inputs, the learner's method (not
Part 1's inherited one) and the inputs of a two-layer model's ReLUs."""

import inspect
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from part_utils.device import get_device
from part_utils.reference import part1_toy_models
from part_utils.reference import part2_privileged_basis as reference
from part_utils.reference.part1_toy_models import ToyModelConfig
from tests.checking import CheckFailure, learner_callable
from tests.fixtures import ForwardCase

N_INST, N_FEATURES, D_HIDDEN, BATCH = 3, 7, 4, 32


def random_model(kind: type, n_inst: int = N_INST, d_hidden: int = D_HIDDEN) -> reference.ToyModel:
    """A reference model of `kind` with normal parameters and varied probabilities and importances."""
    cfg = ToyModelConfig(n_inst=n_inst, n_features=N_FEATURES, d_hidden=d_hidden)
    probability = torch.linspace(0.05, 0.6, n_inst * N_FEATURES).reshape(n_inst, N_FEATURES)
    probability = probability[:, torch.randperm(N_FEATURES)]
    importance = 0.8 * torch.rand(n_inst, N_FEATURES) + 0.1
    model = kind(cfg, feature_probability=probability, importance=importance, device=get_device())
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_()
    return model


def signed_batch(shape: tuple[int, int, int] = (BATCH, N_INST, N_FEATURES)) -> Tensor:
    """[batch, inst, feats]: values uniform on [-1, 1], each present with probability 0.6."""
    values = 2 * torch.rand(shape) - 1
    return values * (torch.rand(shape) < 0.6)


def forward_cases(kind: type) -> list[ForwardCase]:
    """The model a forward check runs on, then one with a single instance and a single neuron."""
    single = ForwardCase(random_model(kind, n_inst=1, d_hidden=1), 9, "one with a single instance and d_hidden = 1")
    return [ForwardCase(random_model(kind), BATCH), single]


def part2_method(learner: object, name: str, owner_hint: str) -> Callable[..., object]:
    """The learner's method; one inherited from Part 1's ToyModel means this part's cell was never run."""
    function = learner_callable(learner, name, owner_hint=owner_hint)
    if function is inspect.getattr_static(part1_toy_models.ToyModel, name, None):
        owner = learner.__name__ if inspect.isclass(learner) else type(learner).__name__
        raise CheckFailure(
            f"`{owner}.{name}` is still Part 1's ToyModel.{name}: the method was never attached to the class. Run the "
            f"exercise cell that defines it (with `@add_to_class({owner_hint})` right above `def {name}`), then this "
            "check."
        )
    return function


def two_layer_relu_inputs(W_in: Tensor, W_out: Tensor, b_final: Tensor, x: Tensor) -> list[Tensor]:
    """The inputs of both ReLUs of `ReLU(W_out ReLU(W_in x) + b_final)`, with W_out [inst, feats, d_hidden]."""
    pre_hidden = torch.einsum("ihf,bif->bih", W_in, x.double())
    return [pre_hidden, torch.einsum("ifh,bih->bif", W_out, F.relu(pre_hidden)) + b_final]
