"""Exercise 6, `resample_simple`: only dead latents change, to fresh random directions spread over the sphere,
with scaled encoders and zero biases, tied and untied."""

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from part_utils.reference import part4_toy_sae as reference
from tests.checking import CheckFailure, check, check_random_directions, diagnose, learner_callable
from tests.part4_toy_sae._common import D_SAE, FALSE_ALARM, N_INST, _case, _float64, _reference_sae
from tests.part4_toy_sae._resampling import SAEState, _check_only_these_changed, _check_returned_mask, _resample

SIMPLE_SCALE = 0.3
SIMPLE_D_SAE = 160  # 260 dead latents in all: enough for the tests of how the directions spread


def _simple_case(tied: bool) -> tuple[reference.ToySAE, Tensor, Tensor, Tensor]:
    """(SAE, frac_active, dead, rare): instance 0 has 100 dead latents and one that fired rarely,
    instance 1 none dead, instance 2 only dead ones."""
    sae = _reference_sae(tied=tied, d_sae=SIMPLE_D_SAE)
    order = torch.randperm(SIMPLE_D_SAE)
    dead = torch.zeros(N_INST, SIMPLE_D_SAE, dtype=torch.bool)
    dead[0, order[:100]] = True
    dead[2] = True
    rare = torch.zeros_like(dead)
    rare[0, order[100]] = True
    frac_active = torch.where(dead, 0.0, torch.rand(dead.shape) * 0.5 + 0.01)
    frac_active[rare] = 2e-6  # fired once in a window of 500 batches of 1024
    return sae, frac_active.to(sae.W_enc.device), dead, rare


def _check_simple_weights(before: SAEState, sae: reference.ToySAE, dead: Tensor, tied: bool) -> None:
    """Each dead latent gets a unit decoder row in a fresh random direction and that row times resample_scale as
    its encoder column (a tied SAE: the scaled direction as its W_enc column)."""
    encoder = _float64(sae.W_enc).transpose(1, 2)[dead]  # [n_dead, d_in]
    old_direction = F.normalize(before.W_dec[dead], dim=-1)
    if tied:
        norms = encoder.norm(dim=-1)
        if torch.allclose(norms, torch.ones_like(norms), atol=1e-5):
            raise CheckFailure(
                "Each resampled W_enc column should be a unit direction times resample_scale; yours are unit vectors."
            )
        if not torch.allclose(norms, torch.full_like(norms, SIMPLE_SCALE), atol=1e-5):
            raise CheckFailure(
                "For a tied SAE, each resampled W_enc column should be a unit direction times resample_scale."
            )
        direction = encoder / SIMPLE_SCALE
    else:
        direction = _float64(sae.W_dec)[dead]
        if not torch.allclose(direction.norm(dim=-1), torch.ones(len(direction), dtype=torch.float64), atol=1e-5):
            raise CheckFailure("The resampled decoder rows do not have unit norm: normalise the random direction.")
        diagnose(
            encoder,
            direction * SIMPLE_SCALE,
            {
                "The encoder columns equal the decoder rows: scale them down by resample_scale.": direction,
                "The encoder columns are divided by resample_scale; multiply the direction by it.": (
                    direction / SIMPLE_SCALE
                ),
            },
            otherwise="Each resampled encoder column should be its decoder row times resample_scale.",
            atol=1e-5,
        )
    if torch.allclose(direction, old_direction, atol=1e-4):
        raise CheckFailure(
            "The resampled latents keep their old direction (rescaled): draw a fresh random direction for each."
        )
    instance, latent = dead.nonzero(as_tuple=True)
    # The same test, tied and untied.
    check_random_directions(direction, instance, latent, what="resample_simple", false_alarm=FALSE_ALARM / 2)


def _check_dead_latents_resampled(resample: Callable[..., object], tied: bool) -> None:
    """On an SAE with dead, rarely firing and live latents: only the dead ones change, the mask names them,
    and their new weights are right."""
    sae, frac_active, dead, rare = _simple_case(tied)
    returned, before = _resample(resample, sae, frac_active, SIMPLE_SCALE, what="resample_simple")
    if tied and torch.equal(before.W_enc, _float64(sae.W_enc)):
        raise CheckFailure("Nothing changed: set the dead latents' W_enc columns (there is no _W_dec).")
    _check_only_these_changed(before, sae, dead, what="resample_simple", rare=rare)
    _check_returned_mask(returned, dead, sae.W_enc.device, what="resample_simple")
    _check_simple_weights(before, sae, dead, tied)


def _check_nothing_dead(resample: Callable[..., object]) -> None:
    """With every latent alive, nothing changes and the mask is all False."""
    sae = _reference_sae()
    frac_active = torch.rand(N_INST, D_SAE, device=sae.W_enc.device) + 0.01
    returned, before = _resample(resample, sae, frac_active, SIMPLE_SCALE, what="resample_simple")
    none = torch.zeros(N_INST, D_SAE, dtype=torch.bool)
    _check_only_these_changed(before, sae, none, what="resample_simple")
    _check_returned_mask(returned, none, sae.W_enc.device, what="resample_simple")


@check("resample_simple")
def test_resample_simple(learner: object) -> str:
    resample = learner_callable(learner, "resample_simple", owner_hint="ToySAE")
    for tied in (False, True):
        with _case("For a tied SAE" if tied else None):
            _check_dead_latents_resampled(resample, tied)
    with _case("With no dead latent at all"):
        _check_nothing_dead(resample)
    return (
        "only dead latents change, fresh directions spread over the sphere, scaled encoders, zero biases, tied and "
        "untied"
    )
