"""What the checks of both resampling methods share: calling the method as train_sae does, and verifying
what it may change, what it must change and the mask it returns."""

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from part_utils.reference import part4_toy_sae as reference
from tests.checking import CheckFailure, call_learner
from tests.part4_toy_sae._common import (
    _assert_model_untouched,
    _float64,
    _model_attributes,
    _no_grad,
    _sae_parameters,
)

RESAMPLED_PARAMETERS = {"self.W_enc", "self._W_dec", "self.b_enc"}  # all else the SAE holds must stay as it is


@dataclass
class SAEState:
    """What a resampling method may and may not change, captured before it runs."""

    parameters: dict[str, nn.Parameter]
    W_enc: Tensor  # float64 CPU copies: [inst, d_in, d_sae]
    W_dec: Tensor  # [inst, d_sae, d_in] (W_encᵀ for a tied SAE)
    b_enc: Tensor
    model: dict[str, Tensor]

    @classmethod
    def of(cls, sae: reference.ToySAE) -> "SAEState":
        return cls(
            dict(_sae_parameters(sae)),
            _float64(sae.W_enc),
            _float64(sae.W_dec),
            _float64(sae.b_enc),
            _model_attributes(sae.model),
        )

    def assert_parameters_kept(self, sae: reference.ToySAE, *, what: str) -> None:
        """Every parameter is still the object the optimiser holds, in float32, and the toy model is untouched."""
        for name, parameter in self.parameters.items():
            now = getattr(sae, name)
            if now is not parameter:
                raise CheckFailure(
                    f"`{what}` replaced `self.{name}` with a new object; the optimiser still holds the old one, so the "
                    f"new values would never train: write into it in place (`self.{name}.data[...] = ...`)."
                )
            if now.dtype != torch.float32:
                raise CheckFailure(f"`{what}` turned `self.{name}` into {now.dtype}: write float32 values into it.")
        _assert_model_untouched(sae.model, self.model, what=what)


def _resample(
    resample: Callable[..., object],
    sae: reference.ToySAE,
    frac_active: Tensor,
    scale: float,
    *,
    what: str,
    **kwargs: object,
) -> tuple[object, SAEState]:
    """Call the learner's resampling method (under no_grad, as train_sae does) and check what it must keep."""
    before = SAEState.of(sae)
    returned = call_learner(
        _no_grad(resample), sae, frac_active.clone(), scale, what=what, may_change=RESAMPLED_PARAMETERS, **kwargs
    )
    before.assert_parameters_kept(sae, what=what)
    return returned, before


def _check_returned_mask(
    returned: object, expected: Tensor, device: torch.device, *, what: str, skipped: Tensor | None = None
) -> None:
    """The returned mask is a bool [inst, d_sae] tensor on the SAE's device that marks exactly `expected`."""
    shape = tuple(expected.shape)
    if not isinstance(returned, Tensor):
        raise CheckFailure(
            f"`{what}` should return the boolean mask [inst, d_sae] of the latents it resampled; it returned "
            f"{type(returned).__name__}."
        )
    if tuple(returned.shape) != shape:
        raise CheckFailure(
            f"`{what}` returned a mask of shape {tuple(returned.shape)}; it should be [inst, d_sae] = {shape}."
        )
    if returned.dtype != torch.bool:
        raise CheckFailure(
            f"`{what}` returned a {returned.dtype} mask: train_sae resets Adam's moments with it (masked_fill_), which "
            "needs a bool tensor (e.g. `frac_active_in_window == 0`)."
        )
    if returned.device.type != device.type:
        raise CheckFailure(f"`{what}` returned its mask on {returned.device}; keep it on the SAE's device ({device}).")
    mask = returned.cpu()
    if torch.equal(mask, expected):
        return
    if torch.equal(mask, ~expected):
        raise CheckFailure(f"`{what}` returned the live latents; return the mask of the latents it resampled.")
    if skipped is not None and torch.equal(mask, expected | skipped):
        raise CheckFailure(
            f"`{what}` marks the dead latents of the instance it skipped (all losses zero) as resampled: return only "
            "the latents you resampled."
        )
    raise CheckFailure(f"`{what}` should return the boolean mask [inst, d_sae] of exactly the latents it resampled.")


def _changed_latents(before: SAEState, sae: reference.ToySAE) -> Tensor:
    """[inst, d_sae]: latents whose encoder column, decoder row or encoder bias changed."""
    W_enc, W_dec, b_enc = _float64(sae.W_enc), _float64(sae.W_dec), _float64(sae.b_enc)
    return (W_enc != before.W_enc).any(1) | (W_dec != before.W_dec).any(-1) | (b_enc != before.b_enc)


def _check_only_these_changed(
    before: SAEState, sae: reference.ToySAE, resampled: Tensor, *, what: str, rare: Tensor | None = None
) -> None:
    """Only the `resampled` latents may change, and each of them must. `rare` [inst, d_sae] holds the small
    positive frac_active_in_window of latents that fired rarely (0 elsewhere): they are alive."""
    changed = _changed_latents(before, sae)
    rare = torch.zeros(resampled.shape, dtype=torch.float64) if rare is None else rare.cpu().double()
    is_rare = rare > 0
    if (changed & is_rare).any() and not (changed & ~resampled & ~is_rare).any():
        fraction = float(rare[changed & is_rare].max())
        raise CheckFailure(
            f"`{what}` resampled a latent that fired, if rarely (frac_active_in_window {fraction:.0e}): only latents "
            "whose frac_active_in_window is exactly 0 are dead."
        )
    if (changed & ~resampled).any():
        raise CheckFailure(f"`{what}` changed live latents; only latents with frac_active_in_window == 0 may change.")
    W_enc, W_dec = _float64(sae.W_enc), _float64(sae.W_dec)
    if (resampled & (W_enc == before.W_enc).all(1) & (W_dec == before.W_dec).all(-1)).any():
        raise CheckFailure(
            f"Some dead latents kept their old weights: `{what}` must write new ones into the parameters in place, "
            "e.g. `self.W_enc.data[inst, :, latent] = ...` (indexing with a list or mask first makes a copy)."
        )
    if resampled.any() and _float64(sae.b_enc)[resampled].abs().max() > 0:
        raise CheckFailure(f"`{what}` leaves a non-zero encoder bias on resampled latents; set b_enc to 0 for them.")
