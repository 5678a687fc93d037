"""The check of `topk_activation`: the k largest pre-activations of each input, ReLU applied."""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from part_utils.device import get_device
from tests.checking import (
    call_learner,
    check,
    close,
    diagnose_among,
    expect_tensor,
    handed_in,
    learner_function,
)
from tests.part5_sae_variants._common import _check_kept_gradient, _keep_top


def _topk_mistakes(x: Tensor, k: int) -> list[tuple[str, Tensor | None]]:
    batch, n_inst, d_sae = x.shape
    across = _keep_top(x.reshape(batch, 1, n_inst * d_sae), k)
    return [
        ("TopK keeps negative values: apply a ReLU to the k kept pre-activations.", _keep_top(x, k)),
        (
            "TopK keeps k - 1 values per input (a strict > against the k-th largest, or topk(k - 1)): keep exactly k.",
            F.relu(_keep_top(x, k - 1)),
        ),
        ("TopK keeps k + 1 values per input: keep exactly k.", F.relu(_keep_top(x, k + 1)) if k < d_sae else None),
        (
            "The top k are taken over the batch; take them over d_sae, for each input.",
            F.relu(_keep_top(x, k, dim=0)) if k <= batch and batch > 1 else None,
        ),
        (
            "The top k are taken over instances; take them over d_sae, for each input and instance.",
            F.relu(_keep_top(x, k, dim=1)) if k <= n_inst and n_inst > 1 else None,
        ),
        (
            "The top k are taken across all instances of an input at once; take them over d_sae within each instance.",
            F.relu(across.reshape(batch, n_inst, d_sae)) if n_inst > 1 and across is not None else None,
        ),
        ("You kept the k smallest values; keep the k largest.", F.relu(_keep_top(x, k, largest=False))),
        (
            "You ranked by absolute value; rank the pre-activations themselves.",
            F.relu(_keep_top(x, k, rank_by=x.abs())),
        ),
        *((_count_message(m, k), F.relu(_keep_top(x, m))) for m in range(d_sae + 1) if abs(m - k) > 1),
        (
            "You scattered the whole of ReLU(pre_acts), so its first k entries land at the top k places: scatter "
            "the top k values themselves (ReLU applied).",
            torch.zeros_like(x).scatter(-1, x.topk(k, dim=-1).indices, F.relu(x)),
        ),
    ]


def _count_message(m: int, k: int) -> str:
    if m < k:
        return f"TopK keeps fewer than k = {k} values per input: keep exactly k."
    return (
        f"TopK keeps more than k = {k} values per input: keep exactly k (if you used kthvalue, kthvalue(k) is the "
        "k-th smallest; the k-th largest is kthvalue(d_sae - k + 1))."
    )


@dataclass
class _TopKCase:
    description: str
    shape: tuple[int, int, int]
    k: int


TOPK_CASES = [
    _TopKCase("", (16, 5, 9), 3),
    _TopKCase(" on a batch of one input with one instance (k = 1)", (1, 1, 6), 1),
    _TopKCase(" with k = d_sae (every positive value kept)", (8, 2, 4), 4),
]


@check("topk_activation")
def test_topk_activation(learner: object) -> str:
    function = learner_function(learner, "topk_activation")
    # Many inputs have negative values among their top k. Drawn before the learner's code runs.
    inputs = [torch.randn(case.shape) - 0.8 for case in TOPK_CASES]
    for case, pre_acts in zip(TOPK_CASES, inputs):
        leaf, learner_input = handed_in(pre_acts.to(get_device()))
        output = call_learner(function, learner_input, case.k, what="topk_activation")
        actual = expect_tensor(output, case.shape, what="topk_activation", axes="batch, inst, d_sae")
        x = pre_acts.double()
        expected = F.relu(_keep_top(x, case.k))
        mistakes = [] if close(actual, expected) else _topk_mistakes(x, case.k)
        diagnose_among(
            actual,
            expected,
            [(message, wrong) for message, wrong in mistakes if wrong is not None],
            otherwise=(
                "Each input should keep its k largest pre-activations (ReLU "
                f"applied) and zero the rest{case.description}."
            ),
        )
        _check_kept_gradient(output, leaf, expected, what="topk_activation")
    return (
        "k largest per input, ReLU on the kept values, zeros elsewhere, "
        "gradient only through the kept values, input left unchanged"
    )
