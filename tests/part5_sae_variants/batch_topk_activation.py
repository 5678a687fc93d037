"""The check of `batch_topk_activation`: the round(k · batch) largest values of each instance across the batch."""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from part_utils.device import get_device
from tests.checking import call_learner, check, close, diagnose_among, expect_tensor, handed_in, learner_function
from tests.part5_sae_variants._common import D_SAE, _check_kept_gradient, _keep_top


def _keep_per_instance(
    values: Tensor, n_keep: int, *, transpose_first: bool = True, transpose_back: bool | None = None
) -> Tensor:
    """The n_keep largest of each instance; `transpose_first`/`transpose_back`: whether inst is moved first before
    flattening, and moved back after (by default, as it was moved)."""
    batch, n_inst, d_sae = values.shape
    transpose_back = transpose_first if transpose_back is None else transpose_back
    flat = values.transpose(0, 1).reshape(n_inst, -1) if transpose_first else values.reshape(n_inst, -1)
    top = flat.topk(min(n_keep, flat.shape[-1]), dim=-1)
    kept = torch.zeros_like(flat).scatter(-1, top.indices, top.values)
    return kept.reshape(n_inst, batch, d_sae).transpose(0, 1) if transpose_back else kept.reshape(batch, n_inst, d_sae)


@dataclass
class _BatchTopKCase:
    description: str
    batch: int
    n_inst: int
    k: float
    shift: tuple[float, ...]  # per instance: a large shift leaves fewer positive values than are kept


BATCH_TOPK_CASES = [
    _BatchTopKCase("", 40, 3, 0.62, (1.5, 0.5, 0.0)),  # 24.8 values: round gives 25, int 24
    _BatchTopKCase(" on a batch of 10 with k = 0.43", 10, 2, 0.43, (0.0, 0.3)),  # 4.3: round 4, ceil 5
    _BatchTopKCase(" on a batch of one input with one instance", 1, 1, 2.6, (0.0,)),
]


def _batch_topk_mistakes(x: Tensor, k: float) -> list[tuple[str, Tensor]]:
    batch, n_inst, d_sae = x.shape
    n_keep = round(k * batch)
    pooled = _keep_top(x.reshape(1, 1, -1), n_keep * n_inst)
    mistakes = [
        ("Negative values are kept: apply a ReLU.", _keep_per_instance(x, n_keep)),
        (
            "k · batch is truncated with int(); the text rounds it to the nearest integer, round(k · batch).",
            F.relu(_keep_per_instance(x, int(k * batch))),
        ),
        (
            "k · batch is rounded up; the text rounds it to the nearest integer, round(k · batch).",
            F.relu(_keep_per_instance(x, -int(-k * batch // 1))),
        ),
        (
            "You kept k values per instance; keep round(k · batch) (k is the average per input).",
            F.relu(_keep_per_instance(x, max(1, round(k)))),
        ),
        (
            "This is per-input TopK; BatchTopK ranks all batch × d_sae values of an instance together.",
            F.relu(_keep_top(x, min(d_sae, max(1, round(k))))),
        ),
        (
            "The [batch, inst, d_sae] values were reshaped to [inst, batch · d_sae] without moving "
            "inst first, which mixes instances: transpose (or permute) before flattening.",
            F.relu(_keep_per_instance(x, n_keep, transpose_first=False)),
        ),
    ]
    mistakes += [
        (
            "The count uses the number of instances (shape[1]) as the batch size; the batch is pre_acts.shape[0].",
            F.relu(_keep_per_instance(x, round(k * n_inst))),
        ),
        (
            "The count uses d_sae (shape[-1]) as the batch size; the batch is pre_acts.shape[0].",
            F.relu(_keep_per_instance(x, round(k * d_sae))),
        ),
        (
            "You took the top values of each latent over the batch (topk along dim 0); BatchTopK ranks all "
            "batch × d_sae values of an instance together.",
            F.relu(_keep_top(x, min(n_keep, batch), dim=0)),
        ),
        (
            "The kept values were put back with a plain reshape to [batch, inst, d_sae], which scrambles them: "
            "reshape to [inst, batch, d_sae] first, then transpose back.",
            F.relu(_keep_per_instance(x, n_keep, transpose_back=False)),
        ),
    ]
    if n_inst > 1 and pooled is not None:
        mistakes.append(
            (
                "The top values are pooled across instances; pick them separately for each instance.",
                F.relu(pooled.reshape_as(x)),
            )
        )
    return [(message, wrong) for message, wrong in mistakes if wrong.shape == x.shape]


def _count_kept(actual: Tensor, x: Tensor, k: float) -> str | None:
    """The right values, but another number of them than round(k · batch): the sentence naming the count kept."""
    batch, n_inst, _ = x.shape
    kept = int((actual > 0).sum(dim=(0, 2)).max())
    if kept == round(k * batch) or not close(actual, F.relu(_keep_per_instance(x, kept))):
        return None
    return (
        f"You keep {kept} values per instance, but round(k · batch) = {round(k * batch)} here "
        f"(k = {k}, batch = {batch}): keep round(k · batch) per instance."
    )


def _batch_topk_input(case: _BatchTopKCase) -> Tensor:
    spread = torch.linspace(0.5, 2.0, case.n_inst)[:, None] if case.n_inst > 1 else torch.ones(1, 1)
    return torch.randn(case.batch, case.n_inst, D_SAE) * spread - torch.tensor(case.shift)[:, None]


@check("batch_topk_activation")
def test_batch_topk_activation(learner: object) -> str:
    function = learner_function(learner, "batch_topk_activation")
    inputs = [_batch_topk_input(case) for case in BATCH_TOPK_CASES]  # drawn before the learner's code runs
    for case, pre_acts in zip(BATCH_TOPK_CASES, inputs):
        shape = tuple(pre_acts.shape)
        leaf, learner_input = handed_in(pre_acts.to(get_device()))
        output = call_learner(function, learner_input, case.k, what="batch_topk_activation")
        actual = expect_tensor(output, shape, what="batch_topk_activation", axes="batch, inst, d_sae")
        x = pre_acts.double()
        expected = F.relu(_keep_per_instance(x, round(case.k * case.batch)))
        mistakes = [] if close(actual, expected) else _batch_topk_mistakes(x, case.k)
        count = None if any(close(actual, wrong) for _, wrong in mistakes) else _count_kept(actual, x, case.k)
        diagnose_among(
            actual,
            expected,
            [*mistakes, *([(count, actual)] if count else [])],
            otherwise=(
                "For each instance keep the round(k · batch) largest values across the whole "
                f"batch (ReLU applied) and zero the rest{case.description}."
            ),
        )
        _check_kept_gradient(output, leaf, expected, what="batch_topk_activation")
    return (
        "round(k · batch) largest per instance across the batch, ReLU applied, "
        "gradient only through the kept values, input left unchanged"
    )
