"""The check of `TopKToySAE.auxk_loss`, the auxiliary loss that revives dead latents."""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from part_utils.reference import part5_sae_variants as reference
from tests.checking import (
    CheckFailure,
    call_learner,
    check,
    close,
    diagnose_among,
    expect_tensor,
    gradients,
    handed_in,
    learner_callable,
    require_gradient,
)
from tests.fixtures import toy_model
from tests.part5_sae_variants._common import D_IN, D_SAE, N_INST, _as_float64, _decode, _gradient_dict, _randomise


def _topk_sae() -> reference.TopKToySAE:
    sae = reference.TopKToySAE(
        reference.TopKToySAEConfig(n_inst=N_INST, d_in=D_IN, d_sae=D_SAE, k=2, k_aux=3), toy_model()
    )
    _randomise(sae)
    return sae


def _auxk(
    x: Tensor,
    target: Tensor,
    W: Tensor,
    b_dec: Tensor,
    dead: Tensor,
    k_aux: int,
    *,
    select: Tensor | None = None,
    rank: str = "value",
    relu: bool = True,
    bias: bool = False,
    clamp: bool = True,
    scale: str = "per instance",
    mean: bool = True,
    dim: int = -1,
) -> Tensor:
    """AuxK as the text defines it (float64, differentiable), or with one deliberate change."""
    pool = dead if select is None else select
    masked = x.masked_fill(~pool, -torch.inf)
    n_top = min(k_aux, x.shape[dim])
    ranking = {
        "value": masked,
        "absolute value": x.abs().masked_fill(~pool, -torch.inf),
        "batch mean": masked.mean(0, keepdim=True).expand_as(x),
        "smallest": -x.masked_fill(~pool, torch.inf),
    }[rank]
    indices = ranking.topk(n_top, dim=dim).indices
    chosen = masked.gather(dim, indices)  # -inf where a live latent fills a place
    values = F.relu(chosen) if relu else torch.where(torch.isinf(chosen), 0.0, chosen)
    latents = torch.zeros_like(x).scatter(dim, indices, values)
    error = (_decode(latents, W, b_dec if bias else 0.0) - target).pow(2)
    error = error.mean(-1) if mean else error.sum(-1)
    n_dead = dead.sum(-1).double()
    factors = {
        "per instance": n_dead / k_aux,
        "over all instances": dead.sum().double().expand(dead.shape[0]) / k_aux,
        "fraction": n_dead / dead.shape[-1] / k_aux,
        "over d_sae": n_dead / dead.shape[-1],
        "at least 1": (n_dead / k_aux).clamp(min=1.0),
    }
    if scale == "none":
        return error
    factor = factors[scale]
    return error * (factor.clamp(max=1.0) if clamp else factor)


def _auxk_value_mistakes(
    x: Tensor, target: Tensor, W: Tensor, W_raw: Tensor, b_dec: Tensor, dead: Tensor, k: int, k_aux: int
) -> list[tuple[str, Tensor]]:
    def aux(**change: Any) -> Tensor:
        inputs = {"x": x, "target": target, "W": W, "b_dec": b_dec, "dead": dead, "k_aux": k_aux}
        inputs.update({key: change.pop(key) for key in list(change) if key in inputs})
        return _auxk(**inputs, **change).detach()

    return [
        ("AuxK uses live latents too: take the top k_aux among dead latents only.", aux(select=torch.ones_like(dead))),
        (
            "AuxK uses the live latents instead of the dead ones: pick among latents where `dead` is True.",
            aux(select=~dead),
        ),
        ("AuxK adds b_dec: decode the residual without the bias.", aux(bias=True)),
        ("AuxK keeps negative pre-activations: apply a ReLU to the chosen values.", aux(relu=False)),
        ("The residual's sign is flipped: AuxK reconstructs e = h - h_reconstructed.", aux(target=-target)),
        ("AuxK decodes with the unnormalised decoder: use self.W_dec_normalized.", aux(W=W_raw)),
        (
            "AuxK picks cfg.k latents; it picks the top k_aux (self.cfg.k_aux) dead latents.",
            aux(k_aux=k) if k != k_aux else aux(),
        ),
        ("The scale n_dead / k_aux must be capped at 1.", aux(clamp=False)),
        ("The loss is not scaled by min(n_dead / k_aux, 1).", aux(scale="none")),
        (
            "n_dead is counted over all instances; count the dead latents of each instance separately.",
            aux(scale="over all instances"),
        ),
        ("The error is summed over d_in; average it.", aux(mean=False)),
        ("The top k_aux are taken over the batch; take them over d_sae, for each input.", aux(dim=0)),
        (
            "AuxK ranks the dead latents by absolute value; rank them by the pre-activations themselves.",
            aux(rank="absolute value"),
        ),
        (
            "AuxK picks the same dead latents for every input (ranked over the batch); pick the top k_aux dead "
            "latents of each input separately.",
            aux(rank="batch mean"),
        ),
        ("AuxK picks the smallest dead pre-activations; pick the k_aux largest.", aux(rank="smallest")),
        (
            "n_dead is the fraction of latents that are dead; it is their number, dead.sum(dim=-1).",
            aux(scale="fraction"),
        ),
        ("The scale divides n_dead by d_sae; it is n_dead / k_aux, capped at 1.", aux(scale="over d_sae")),
        (
            "The scale is at least 1 (clamp(min=1)); it is n_dead / k_aux capped at 1 (clamp(max=1.0)).",
            aux(scale="at least 1", clamp=False),
        ),
    ]


@dataclass
class _AuxKCase:
    description: str
    dead: list[list[int]]  # the dead latents of each instance


AUXK_CASES = [
    _AuxKCase("one dead latent in each of two instances (fewer than k_aux in all)", [[2], [5], []]),
    _AuxKCase("one dead latent, more dead latents than k_aux, and none at all", [[4], [0, 2, 3, 5, 6], []]),
    _AuxKCase("exactly k_aux dead latents, every latent dead, and two dead", [[1, 3, 5], list(range(D_SAE)), [0, 6]]),
]


@dataclass
class _AuxKInputs:
    case: _AuxKCase
    sae: reference.TopKToySAE
    dead: Tensor
    pre_acts: Tensor
    h: Tensor
    h_reconstructed: Tensor


def _auxk_inputs(case: _AuxKCase) -> _AuxKInputs:
    dead = torch.zeros(N_INST, D_SAE, dtype=torch.bool)
    for instance, latents in enumerate(case.dead):
        dead[instance, latents] = True
    sae = _topk_sae()
    return _AuxKInputs(
        case,
        sae,
        dead,
        torch.randn(32, N_INST, D_SAE) + 0.3,
        torch.randn(32, N_INST, D_IN),
        torch.randn(32, N_INST, D_IN),
    )


def _reject_nan_from_placeholders(result: object, dead: Tensor, k_aux: int) -> None:
    """NaN only where topk has to pick masked-out latents (fewer than k_aux dead) comes from the -inf placeholders."""
    if not (isinstance(result, Tensor) and result.shape == (32, N_INST)) or torch.isfinite(result).all():
        return
    enough_dead = (dead.sum(-1) >= k_aux).to(result.device)
    if torch.isfinite(result[:, enough_dead]).all():
        raise CheckFailure(
            "auxk_loss gives NaN or inf for an instance with fewer than k_aux dead latents (or "
            "none, where it should be 0): the -inf placeholders that topk picks there must not "
            "reach a product, so ReLU them, or replace them by 0, before decoding."
        )


def _check_auxk_case(function: Callable[..., Any], inputs: _AuxKInputs) -> None:
    sae, dead = inputs.sae, inputs.dead
    device = sae.W_enc.device
    pre_leaf, pre_in = handed_in(inputs.pre_acts.to(device))
    rec_leaf, rec_in = handed_in(inputs.h_reconstructed.to(device))
    result = call_learner(
        function, sae, pre_in, inputs.h.clone().to(device), rec_in, dead.clone().to(device), what="auxk_loss"
    )
    _reject_nan_from_placeholders(result, dead, sae.cfg.k_aux)
    actual = expect_tensor(result, (32, N_INST), what="auxk_loss", axes="batch, inst")

    k_aux = sae.cfg.k_aux
    leaves = _as_float64({"pre_acts": inputs.pre_acts, "h_reconstructed": inputs.h_reconstructed, "W_dec": sae._W_dec})
    W = leaves["W_dec"] / (leaves["W_dec"].norm(dim=-1, keepdim=True) + sae.cfg.weight_normalize_eps)
    b_dec = sae.b_dec.detach().cpu().double()
    residual = inputs.h.double() - leaves["h_reconstructed"]
    expected = _auxk(leaves["pre_acts"], residual.detach(), W, b_dec, dead, k_aux)
    x, target = leaves["pre_acts"].detach(), residual.detach()
    right = close(actual, expected.detach())
    diagnose_among(
        actual,
        expected.detach(),
        []
        if right
        else _auxk_value_mistakes(x, target, W.detach(), leaves["W_dec"].detach(), b_dec, dead, int(sae.cfg.k), k_aux),
        otherwise=(
            f"auxk_loss is wrong with {inputs.case.description}: it should be the mean over "
            "d_in of (ê - e)², ê decoded from the top k_aux dead pre-activations (ReLU "
            "applied), scaled by min(n_dead / k_aux, 1) per instance."
        ),
    )
    require_gradient(result, what="auxk_loss", towards="the dead latents' pre-activations")
    weights = torch.rand(result.shape, dtype=torch.float64) + 0.5
    learner = gradients(
        (result * weights.to(result.device, result.dtype)).sum(),
        {"pre_acts": pre_leaf, "h_reconstructed": rec_leaf, "W_dec": sae._W_dec},
        what="auxk_loss (weighted)",
    )
    if not all(torch.isfinite(grad).all() for grad in learner.values()):
        raise CheckFailure(
            "auxk_loss's gradient has NaN or inf values (often -inf placeholders "
            "multiplied by 0): keep them out of every product."
        )
    expected_grads = _gradient_dict((expected * weights).sum(), leaves)
    undetached = _auxk(leaves["pre_acts"], residual, W, b_dec, dead, k_aux)
    live = (~dead).expand_as(expected_grads["pre_acts"])
    diagnose_among(
        learner,
        expected_grads,
        [
            (
                "AuxK sends gradient into h_reconstructed: detach the residual h - h_reconstructed.",
                _gradient_dict((undetached * weights).sum(), leaves),
            ),
            (
                "AuxK leaves the decoder without a gradient: do not detach W_dec_normalized "
                "here; the dead latents' decoder rows learn from AuxK too.",
                {**expected_grads, "W_dec": torch.zeros_like(expected_grads["W_dec"])},
            ),
        ],
        otherwise=(
            "AuxK sends gradient to latents that are not dead."
            if bool((learner["pre_acts"].abs() * live).max() > 0)
            else "The gradient of auxk_loss differs from the reference although its values match: build it from "
            "pre_acts and W_dec_normalized without .detach(), detaching only the residual."
        ),
    )


@check("auxk_loss")
def test_auxk_loss(learner: object) -> str:
    function = learner_callable(learner, "auxk_loss", owner_hint="TopKToySAE")
    cases = [_auxk_inputs(case) for case in AUXK_CASES]  # drawn before the learner's code runs
    for inputs in cases:
        _check_auxk_case(function, inputs)
    return (
        "dead latents only, ReLU, no bias, detached residual, scaled by min(n_dead "
        "/ k_aux, 1), gradients, instances with 0 to 7 dead latents"
    )
