"""Check of `ToyModel.forward`: ReLU(Wᵀ W x + b_final) per instance, its value and its gradients."""

import torch
import torch.nn.functional as F
from torch import Tensor

from tests.checking import check, learner_callable
from tests.fixtures import ForwardCase, Parameters, check_forward, sparse_features
from tests.part1_toy_models._common import random_toy_model


def _toy_forward(W: Tensor, b_final: Tensor, x: Tensor) -> Tensor:
    hidden = torch.einsum("ihf,bif->bih", W, x)
    return F.relu(torch.einsum("ihf,bih->bif", W, hidden) + b_final)


def _forward_mistakes(W: Tensor, b: Tensor, x: Tensor) -> dict[str, Tensor]:
    hidden = torch.einsum("ihf,bif->bih", W, x)
    pre_bias = torch.einsum("ihf,bih->bif", W, hidden)
    first = lambda tensor: tensor[:1].expand_as(tensor)  # noqa: E731  (instance 0 for every instance)
    mixed_hidden = torch.einsum("ihf,bjf->bih", W, x)
    return {
        "The output has negative values where it should not: apply the ReLU after adding b_final.": pre_bias + b,
        "b_final is missing: add it to Wᵀh before the ReLU.": F.relu(pre_bias),
        "b_final is added after the ReLU; it belongs inside it: ReLU(Wᵀh + b_final).": F.relu(pre_bias) + b,
        "b_final is subtracted; add it: ReLU(Wᵀh + b_final).": F.relu(pre_bias - b),
        "You applied a ReLU to the hidden layer; in this model h = Wx is linear (the ReLU comes in Part 2).": F.relu(
            torch.einsum("ihf,bih->bif", W, F.relu(hidden)) + b
        ),
        "The output is also clamped at 1; only the ReLU's floor at 0 belongs there.": (pre_bias + b).clamp(0, 1),
        "A ReLU comes before b_final as well as after it: the output is ReLU(Wᵀh + b_final), one ReLU.": F.relu(
            F.relu(pre_bias) + b
        ),
        "Every instance uses instance 0's weights: keep the inst axis of W (and of b_final) in every step.": (
            _toy_forward(first(W), b, x)
        ),
        "Every instance uses instance 0's weights and bias: keep the inst axis of W and b_final in every step.": (
            _toy_forward(first(W), first(b), x)
        ),
        "The hidden layer sums the features of every instance: contract instance i's W with instance i's features "
        "only.": F.relu(torch.einsum("ihf,bih->bif", W, mixed_hidden) + b),
    }


def _pre_output(parameters: Parameters, x: Tensor) -> list[Tensor]:
    W, b = parameters["W"], parameters["b_final"]
    return [torch.einsum("ihf,bih->bif", W, torch.einsum("ihf,bif->bih", W, x.double())) + b]


@check("forward")
def test_forward(learner: object) -> str:
    forward = learner_callable(learner, "forward", owner_hint="ToyModel")
    model = random_toy_model()
    phase_diagram = ForwardCase(
        random_toy_model(n_inst=4, n_features=2, d_hidden=1), 16, "one with d_hidden = 1, as in the phase diagram"
    )
    check_forward(
        forward,
        [ForwardCase(model, 32), phase_diagram],
        ("W", "b_final"),
        draw=sparse_features,
        relu_inputs=_pre_output,
        reference_forward=_toy_forward,
        mistakes=lambda parameters, x: _forward_mistakes(parameters["W"], parameters["b_final"], x),
        formula="ReLU(Wᵀ W x + b_final)",
    )
    cfg = model.cfg
    return f"{cfg.n_inst} instances, {cfg.n_features} features, d_hidden {cfg.d_hidden}, gradients too"
