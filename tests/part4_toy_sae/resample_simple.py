"""Exercise 6, `resample_simple`: only dead latents change (a tiny positive fraction is alive), to fresh random
directions uniform over the sphere and new on every call, with scaled encoders and zero biases, tied and untied."""

import copy
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from part_utils.reference import part4_toy_sae as reference
from tests.checking import (
    CheckFailure,
    check,
    check_random_directions,
    diagnose,
    frequencies_match,
    learner_callable,
)
from tests.part4_toy_sae._common import (
    D_IN,
    D_SAE,
    FALSE_ALARM,
    N_INST,
    _case,
    _float64,
    _fresh_call,
    _no_grad,
    _reference_sae,
)
from tests.part4_toy_sae._resampling import SAEState, _check_only_these_changed, _check_returned_mask, _resample

SIMPLE_SCALE = 0.3
SIMPLE_D_SAE = 160  # 260 dead latents in all: enough for the tests of how the directions spread
SPHERE_D_SAE = 1_200  # one instance, all dead: enough directions to tell the sphere from a cube's corners
AXIS_LEAN = 0.8  # above 1/√2, so at most one coordinate of a unit vector exceeds it
DIRECTION_TESTS = 3  # (untied, tied) spread of signs and sharing, and the uniformity test: FALSE_ALARM shared


def _simple_case(tied: bool) -> tuple[reference.ToySAE, Tensor, Tensor, Tensor]:
    """(SAE, frac_active, dead, rare): instance 0 has 100 dead latents and one that fired rarely, instance 1 none
    dead and one that fired very rarely, instance 2 only dead ones; `rare` holds the rare latents' fractions."""
    sae = _reference_sae(tied=tied, d_sae=SIMPLE_D_SAE)
    order = torch.randperm(SIMPLE_D_SAE)
    dead = torch.zeros(N_INST, SIMPLE_D_SAE, dtype=torch.bool)
    dead[0, order[:100]] = True
    dead[2] = True
    rare = torch.zeros(dead.shape)
    rare[0, order[100]] = 2e-6  # fired once in a window of 500 batches of 1024
    rare[1, order[0]] = 5e-8  # once in 20 million inputs: still alive, however small a threshold looks
    frac_active = torch.where(dead, 0.0, torch.rand(dead.shape) * 0.5 + 0.01)
    frac_active = torch.where(rare > 0, rare, frac_active)
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
    check_random_directions(
        direction, instance, latent, what="resample_simple", false_alarm=FALSE_ALARM / DIRECTION_TESTS
    )


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


def _check_fresh_directions(resample: Callable[..., object]) -> None:
    """Two calls on the same SAE must draw other directions: a seed set inside would send the dead latents of
    every resampling the same way."""
    sae = _reference_sae()
    frac_active = torch.where(torch.rand(N_INST, D_SAE) < 0.5, 0.0, 0.2).to(sae.W_enc.device)
    twin = copy.deepcopy(sae)
    _resample(resample, sae, frac_active, SIMPLE_SCALE, what="resample_simple")
    _fresh_call(_no_grad(resample), twin, frac_active.clone(), SIMPLE_SCALE, what="resample_simple")
    if (frac_active == 0).any() and torch.equal(_float64(twin.W_enc), _float64(sae.W_enc)):
        raise CheckFailure(
            "`resample_simple` gave the same new directions on two calls: don't set a seed inside it "
            "(torch.manual_seed), or every resampling would send the dead latents the same way again."
        )


def _check_nothing_dead(resample: Callable[..., object]) -> None:
    """With every latent alive, nothing changes and the mask is all False."""
    sae = _reference_sae()
    frac_active = torch.rand(N_INST, D_SAE, device=sae.W_enc.device) + 0.01
    returned, before = _resample(resample, sae, frac_active, SIMPLE_SCALE, what="resample_simple")
    none = torch.zeros(N_INST, D_SAE, dtype=torch.bool)
    _check_only_these_changed(before, sae, none, what="resample_simple")
    _check_returned_mask(returned, none, sae.W_enc.device, what="resample_simple")


def _near_axis_probability(d_in: int) -> float:
    """The chance that a direction uniform on the sphere has a coordinate above AXIS_LEAN in absolute value. At
    most one coordinate can, so it is d_in times the chance for one; in 4 dimensions a coordinate has the
    semicircle density (2/π)√(1 - x²)."""
    if d_in != 4:
        raise ValueError("the exact chance is written out for d_in = 4")
    t = AXIS_LEAN
    return d_in * (1 - (2 / math.pi) * (t * math.sqrt(1 - t * t) + math.asin(t)))


def _check_uniform_on_sphere(resample: Callable[..., object]) -> None:
    """Many fresh directions: as many lie near an axis as uniform directions do. A normalised cube draw
    (torch.rand * 2 - 1) has every sign and no shared direction, but crowds towards the diagonals."""
    sae = _reference_sae(n_inst=1, d_sae=SPHERE_D_SAE)
    frac_active = torch.zeros(1, SPHERE_D_SAE, device=sae.W_enc.device)
    _resample(resample, sae, frac_active, SIMPLE_SCALE, what="resample_simple")
    directions = F.normalize(_float64(sae.W_dec)[0], dim=-1)
    near_axis = (directions.abs().amax(-1) > AXIS_LEAN).double().mean()
    expected = torch.tensor(_near_axis_probability(D_IN), dtype=torch.float64)
    if frequencies_match(near_axis, expected, SPHERE_D_SAE, false_alarm=FALSE_ALARM / DIRECTION_TESTS):
        return
    if near_axis < expected:
        raise CheckFailure(
            "The directions from `resample_simple` are not uniform over the sphere: they crowd towards the diagonals, "
            "as a normalised torch.rand(...) * 2 - 1 (a cube) does. Normalise a torch.randn vector instead."
        )
    raise CheckFailure(
        "The directions from `resample_simple` are not uniform over the sphere: they crowd towards the axes. "
        "Normalise a torch.randn vector."
    )


@check("resample_simple")
def test_resample_simple(learner: object) -> str:
    resample = learner_callable(learner, "resample_simple", owner_hint="ToySAE")
    for tied in (False, True):
        with _case("For a tied SAE" if tied else None):
            _check_dead_latents_resampled(resample, tied)
    with _case("With no dead latent at all"):
        _check_nothing_dead(resample)
    _check_fresh_directions(resample)
    _check_uniform_on_sphere(resample)
    return (
        "only dead latents change, fresh directions spread over the sphere, scaled encoders, zero biases, tied and "
        "untied"
    )
