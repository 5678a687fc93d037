"""Exercise 7, `resample_advanced`: loss²-weighted draws with replacement from a batch of `batch_size`, new on
every call, centred unit decoder rows, encoder columns at the live encoder scale and zero biases, rarely firing
latents left alive; with no dead latent, no live one, all-zero losses, tied.

Each designed case (see `_advanced_design`) is checked in steps, in this order: what the method may change
and the mask it returns, then each new latent's decoder row and encoder column, then the sampling weights."""

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from tests.checking import CheckFailure, check, diagnose, frequencies_match, learner_callable
from tests.part4_toy_sae._advanced_design import (
    ADVANCED_BATCH,
    ADVANCED_SCALE,
    DEAD_BIAS,
    N_GROUPS,
    AdvancedCase,
    _edge_advanced_cases,
    _fresh_draws_case,
    _main_advanced_case,
    _row_groups,
)
from tests.part4_toy_sae._common import (
    FALSE_ALARM,
    _case,
    _explained,
    _float64,
    _fresh_call,
    _naming_tied_decoder,
    _no_grad,
    _sae_parameters,
    _sae_terms,
)
from tests.part4_toy_sae._resampling import (
    SAEState,
    _changed_latents,
    _check_only_these_changed,
    _check_returned_mask,
    _resample,
)


@dataclass
class DrawnBatch:
    """The batch the learner's code drew, with the reference's terms on the SAE as it was: [inst, batch, ...]."""

    h: Tensor
    h_reconstructed: Tensor
    reconstruction: Tensor
    sparsity: Tensor
    groups: Tensor  # [batch]

    @classmethod
    def of(cls, case: AdvancedCase, parameters: Mapping[str, Tensor]) -> "DrawnBatch":
        """The first batch drawn; fails when the learner's code drew none."""
        if not case.recorder.sizes:
            raise CheckFailure(
                "`resample_advanced` never drew a fresh batch: call self.generate_batch(batch_size) (or "
                "self.model.generate_batch, then W) and compute its reconstruction losses."
            )
        h = case.recorder.rows(case.recorder.sizes[0])
        cfg = case.sae.cfg
        terms = _sae_terms(_can_fire(parameters), h, coeff=cfg.sparsity_coeff, eps=cfg.weight_normalize_eps)
        return cls(
            h.transpose(0, 1),
            terms.h_reconstructed.transpose(0, 1),
            terms.reconstruction.T,
            terms.sparsity.T,
            _row_groups(len(h)),
        )


def _can_fire(parameters: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The parameters of the latents that can fire on the designed inputs: the dead ones' bias keeps them
    at exactly 0 (the suite checks it), so leaving them out changes no term and saves most of the work."""
    keep = (parameters["b_enc"] > DEAD_BIAS / 2).any(0)
    latent_axes = {"W_enc": 2, "_W_dec": 1, "b_enc": 1}
    return {
        name: value.index_select(latent_axes[name], keep.nonzero()[:, 0]) if name in latent_axes else value
        for name, value in parameters.items()
    }


def _decoder_forms(batch: DrawnBatch, b_dec: Tensor, inst: int) -> dict[str, Tensor]:
    """[batch, d_in] rows that a resampled decoder row can equal, by the sentence naming each (the right one first)."""
    h, h_rec, b = batch.h[inst], batch.h_reconstructed[inst], b_dec[inst]
    return {
        "right": F.normalize(h - b, dim=-1),
        "The new decoder rows are not centred: subtract b_dec from the input before normalising.": (
            F.normalize(h, dim=-1)
        ),
        "The new decoder rows are not normalised: divide the centred input by its norm.": h - b,
        "The new decoder rows add b_dec to the input; centre it by subtracting b_dec.": F.normalize(h + b, dim=-1),
        "The new decoder rows point along the residual h - h_reconstructed; use the input itself, centred "
        "(h - b_dec).": F.normalize(h - h_rec, dim=-1),
        "The new decoder rows point along the residual h_reconstructed - h; use the input itself, centred "
        "(h - b_dec).": F.normalize(h_rec - h, dim=-1),
        "The new decoder rows are the reconstructions, not the inputs: use the input h itself, centred "
        "(h - b_dec).": F.normalize(h_rec - b, dim=-1),
    }


def _match_rows(rows: Tensor, forms: Tensor) -> Tensor | None:
    """The index of the form each row equals (within float32 rounding), or None when some row equals none."""
    distance = torch.cdist(rows, forms)  # [rows, forms]
    matches = distance <= 2e-4 * forms.norm(dim=-1).clamp_min(1.0)[None, :]
    return distance.argmin(-1) if bool(matches.any(-1).all()) else None


def _chosen_inputs(case: AdvancedCase, batch: DrawnBatch, inst: int, latents: Tensor) -> tuple[Tensor, Tensor]:
    """Verifies that one instance's resampled decoder rows are inputs of the fresh batch, centred and
    normalised, naming the form they have otherwise; returns their directions and the batch row each came from."""
    b_dec = _float64(case.sae.b_dec)
    raw = _float64(case.sae.W_dec)[inst, latents]
    tied = case.sae.cfg.tied_weights
    rows = F.normalize(raw, dim=-1) if tied else raw  # a tied decoder row carries the encoder's scale
    for message, forms in _decoder_forms(batch, b_dec, inst).items():
        chosen = _match_rows(rows, F.normalize(forms, dim=-1) if tied else forms)
        if chosen is not None and message == "right":
            return F.normalize(raw, dim=-1), chosen
        if chosen is not None:
            raise CheckFailure(message)
    unit_rows = F.normalize(rows, dim=-1)
    if _match_rows(unit_rows, F.normalize(batch.h[inst] - b_dec[inst], dim=-1)) is not None:
        raise CheckFailure(
            "The new decoder rows point the right way but do not have unit norm: normalise each row over d_in."
        )
    for other in range(len(b_dec)):
        if other != inst and _match_rows(unit_rows, F.normalize(batch.h[other] - b_dec[other], dim=-1)) is not None:
            raise CheckFailure(
                "The new decoder rows of one instance come from another instance's inputs: use h[chosen, inst] for "
                "instance inst."
            )
    raise CheckFailure(
        "The new decoder rows are not inputs of the fresh batch (self.generate_batch(batch_size)), centred (minus "
        "b_dec) and normalised: draw the batch, then use the chosen inputs of each instance."
    )


def _encoder_norms(before: SAEState, live: Tensor, inst: int) -> dict[str, Tensor]:
    """The mean encoder norm under the right reading (live columns, before resampling, 1 if none) and wrong ones."""
    norms = before.W_enc.norm(dim=1)  # [inst, d_sae]: each latent's encoder column
    one = torch.tensor(1.0, dtype=torch.float64)
    if not live[inst].any():
        global_norm = norms[live].mean() if live.any() else one
        return {"live": one, "all": norms[inst].mean(), "global": global_norm, "axis": one, "decoder": one}
    return {
        "decoder": before.W_dec[inst][live[inst]].norm(dim=-1).mean(),
        "live": norms[inst][live[inst]].mean(),
        "all": norms[inst].mean(),
        "global": norms[live].mean(),
        "axis": before.W_enc[inst][:, live[inst]].norm(dim=1).mean(),
    }


def _check_advanced_encoder(
    case: AdvancedCase,
    before: SAEState,
    batch: DrawnBatch,
    inst: int,
    latents: Tensor,
    directions: Tensor,
    chosen: Tensor,
) -> None:
    """Verifies that one instance's resampled encoder columns are their decoder directions times resample_scale
    times the mean norm of the instance's live encoder columns (1 where none is live), naming the scale used
    otherwise."""
    live = ~case.dead
    encoder = _float64(case.sae.W_enc)[inst][:, latents].T
    if not torch.isfinite(encoder).all():
        raise CheckFailure(
            "The encoder columns of an instance with no live latent are NaN (the mean of no norms): use 1 as the mean "
            "live encoder norm there."
        )
    norm, scale = _encoder_norms(before, live, inst), ADVANCED_SCALE
    centred = batch.h[inst][chosen] - _float64(case.sae.b_dec)[inst]
    mistakes = {
        "The encoder scale uses the mean norm of all encoder columns; use only the live latents' columns.": (
            directions * norm["all"] * scale
        ),
        "The encoder scale averages the live encoder norms of all instances; use the instance's own live columns.": (
            directions * norm["global"] * scale
        ),
        "The encoder scale takes norms over the wrong axis of W_enc: each latent's column is W_enc[inst][:, latent], "
        "of size d_in.": directions * norm["axis"] * scale,
        "The encoder scale uses the live latents' decoder norms; use the norms of their encoder columns, "
        "W_enc[inst][:, live].": directions * norm["decoder"] * scale,
        "The encoder columns are not scaled by the mean live encoder norm, only by resample_scale.": directions * scale,
        "The encoder columns are scaled by the mean live encoder norm but not by resample_scale.": (
            directions * norm["live"]
        ),
        "The encoder columns are the bare directions: scale them by resample_scale times the mean live encoder "
        "norm.": directions,
        "The encoder columns use the unnormalised centred input; use its normalised direction.": (
            centred * norm["live"] * scale
        ),
    }
    if not live[inst].any():
        message = (
            "An instance with no live latent gets zero encoder columns: use 1 as the mean live encoder norm there."
        )
        mistakes[message] = directions * 0.0
    diagnose(
        encoder,
        directions * norm["live"] * scale,
        mistakes,
        otherwise="Each resampled encoder column should be its decoder direction times resample_scale times the mean "
        "norm of the instance's live encoder columns.",
        atol=1e-5,
    )


def _wrong_weightings(L: Tensor, S: Tensor, coeff: float) -> list[tuple[str, Tensor]]:
    """The sampling weights [inst, batch] that plausible mistakes use, from each input's reconstruction
    loss L and sparsity term S, each with the sentence naming it."""
    total, squared = L + coeff * S, L.pow(2)
    shared = (
        "The sampling weights are shared across instances (summed or averaged over them): each instance draws by its "
        "own squared losses, loss[:, inst]²."
    )
    sparsity = (
        'Inputs are drawn by the sparsity term; use the squared reconstruction loss (loss_dict["L_reconstruction"]²).'
    )
    return [
        (
            "Inputs are drawn uniformly; draw them with probability proportional to the squared reconstruction loss.",
            torch.ones_like(L),
        ),
        ("Inputs are drawn in proportion to the reconstruction loss itself; square it (weights L_reconstruction²).", L),
        (
            (
                "Inputs are drawn by the squared total loss (reconstruction + sparsity_coeff × sparsity); use the "
                "squared reconstruction loss alone."
            ),
            total.pow(2),
        ),
        ("Inputs are drawn in proportion to the total loss; use the squared reconstruction loss alone.", total),
        (sparsity, S.pow(2)),
        (sparsity, S),
        (
            "Inputs are drawn by the reconstruction loss to the fourth power (squared twice); square it once.",
            squared.pow(2),
        ),
        (shared, squared.sum(0, keepdim=True).expand_as(L)),
        (shared, L.sum(0, keepdim=True).pow(2).expand_as(L)),
        (
            (
                "The squared losses are normalised over instances; each instance draws by its own column, "
                "loss[:, inst]² (torch.multinomial normalises it over the batch for you)."
            ),
            squared / squared.sum(0, keepdim=True).clamp_min(1e-300),
        ),
    ]


def _group_probabilities(weights: Tensor, groups: Tensor) -> Tensor:
    """[inst, groups]: the chance that one draw lands in each group, given a weight for every row [inst, batch]."""
    mass = torch.zeros(weights.shape[0], N_GROUPS + 1, dtype=torch.float64).index_add_(1, groups, weights)
    return mass / mass.sum(-1, keepdim=True)


def _counts_match(counts: Tensor, probability: Tensor) -> bool:
    """Whether the draws per group [inst, groups] fit these chances: within the binomial tolerance, none where
    the chance is 0."""
    n = int(counts[0].sum())
    never = probability == 0
    return frequencies_match(counts / n, probability, n, false_alarm=FALSE_ALARM) and bool((counts[never] == 0).all())


def _check_sampling(case: AdvancedCase, batch: DrawnBatch, chosen: Tensor) -> None:
    """The rows drawn for each instance's dead latents [inst, draws] against the exact chance of each
    group of rows, ∝ the sum of its rows' squared reconstruction losses."""
    L, S = batch.reconstruction, batch.sparsity
    counts = torch.stack([torch.bincount(batch.groups[row], minlength=N_GROUPS + 1) for row in chosen]).double()
    if _counts_match(counts, _group_probabilities(L.pow(2), batch.groups)):
        return
    n_draws = chosen.shape[1]
    if (chosen == chosen[:, :1]).all():
        raise CheckFailure("Every dead latent of an instance got the same input: draw one input per dead latent.")
    largest = L.topk(min(n_draws, L.shape[1]), dim=-1).indices
    if torch.equal(chosen.sort(-1).values, largest.sort(-1).values):
        raise CheckFailure(
            "The inputs with the largest losses were taken (topk, sort or argmax): draw them at random, with "
            "probability proportional to the squared loss."
        )
    if all(len(row.unique()) == n_draws for row in chosen):
        raise CheckFailure(
            "No input was drawn twice: draw with replacement (torch.multinomial(..., replacement=True)), so that one "
            "input with a large loss can serve several dead latents."
        )
    if (chosen == chosen[:1]).all():
        raise CheckFailure(
            "Every instance got the same draws (the same batch rows): draw for each instance by its own losses."
        )
    for message, weights in _wrong_weightings(L, S, case.sae.cfg.sparsity_coeff):
        if _counts_match(counts, _group_probabilities(weights, batch.groups)):
            raise CheckFailure(message)
    raise CheckFailure(
        "The inputs chosen for the dead latents are not drawn with probability proportional to their squared "
        "reconstruction loss (independently for each dead latent, with replacement, per instance)."
    )


def _call_advanced(resample: Callable[..., object], case: AdvancedCase) -> tuple[object, SAEState]:
    """Run the learner's method on the case, naming a draw without replacement and a crash on all-zero losses."""
    on_zero_losses = "`resample_advanced` cannot draw from all-zero losses: skip an instance whose losses are all zero."
    return _explained(
        lambda: _resample(
            resample, case.sae, case.frac_active, ADVANCED_SCALE, what="resample_advanced", batch_size=ADVANCED_BATCH
        ),
        {
            "without replacement": "torch.multinomial draws without replacement by default: pass replacement=True, so "
            "that one input can serve several dead latents.",
            **({"multinomial": on_zero_losses, "probabilit": on_zero_losses} if case.skipped.any() else {}),
        },
    )


def _check_changes_and_mask(case: AdvancedCase, before: SAEState, returned: object) -> None:
    """Verifies that an instance with all-zero losses is skipped, that only the other dead latents change, each
    of them, and that the returned mask marks exactly those."""
    resampled, skipped = case.resampled, case.dead & case.skipped[:, None]
    if (_changed_latents(before, case.sae) & skipped).any():
        raise CheckFailure(
            "`resample_advanced` resampled an instance whose losses are all zero: skip it and leave its latents as "
            "they are."
        )
    _check_only_these_changed(before, case.sae, resampled, what="resample_advanced", rare=case.rare)
    _check_returned_mask(returned, resampled, case.sae.W_enc.device, what="resample_advanced", skipped=skipped)


def _check_new_latents(case: AdvancedCase, before: SAEState, batch: DrawnBatch) -> dict[int, Tensor]:
    """Verifies, instance by instance, every resampled latent's decoder row (`_chosen_inputs`) and encoder
    column (`_check_advanced_encoder`); returns the batch rows chosen, by instance."""
    resampled, chosen = case.resampled, {}
    for inst in range(len(resampled)):
        latents = resampled[inst].nonzero(as_tuple=True)[0]
        if len(latents) > 0:
            directions, chosen[inst] = _chosen_inputs(case, batch, inst, latents)
            _check_advanced_encoder(case, before, batch, inst, latents, directions, chosen[inst])
    return chosen


def _check_batch_size(case: AdvancedCase) -> None:
    """The fresh batch has `batch_size` inputs, the argument (the text's step 1)."""
    drawn = case.recorder.sizes[0] if case.recorder.sizes else ADVANCED_BATCH  # no batch at all: named later
    if drawn != ADVANCED_BATCH:
        raise CheckFailure(
            f"`resample_advanced` drew a batch of {drawn} inputs, but was asked for batch_size = {ADVANCED_BATCH}: "
            "draw self.generate_batch(batch_size), with the argument, not a number of your own or the notebook's."
        )


def _check_fresh_draws(resample: Callable[..., object]) -> None:
    """A second call on the same SAE and batch must choose other inputs: a seed set inside would send the dead
    latents of every resampling to the same inputs. In this design no input is drawn more than about half the
    time, so 37 draws agree on both calls by chance with probability below 1e-20."""
    case = _fresh_draws_case()
    twin = copy.deepcopy(case)
    _check_advanced_case(resample, case)
    _fresh_call(
        _no_grad(resample),
        twin.sae,
        twin.frac_active,
        ADVANCED_SCALE,
        batch_size=ADVANCED_BATCH,
        what="resample_advanced",
    )
    if torch.equal(_float64(twin.sae.W_enc), _float64(case.sae.W_enc)):
        raise CheckFailure(
            "`resample_advanced` chose the same inputs on two calls: don't set a seed inside it (torch.manual_seed), "
            "or every resampling would draw the same inputs again."
        )


def _check_advanced_case(resample: Callable[..., object], case: AdvancedCase) -> None:
    """One designed case, step by step: what changed and the mask, the batch size, then each new latent's weights,
    then (in a case large enough) the sampling weights."""
    parameters = {name: _float64(value) for name, value in _sae_parameters(case.sae).items()}
    returned, before = _naming_tied_decoder(lambda: _call_advanced(resample, case), what="resample_advanced")
    _check_changes_and_mask(case, before, returned)
    if not case.resampled.any():
        return
    _check_batch_size(case)
    batch = DrawnBatch.of(case, parameters)
    chosen = _check_new_latents(case, before, batch)
    if case.statistics:
        _check_sampling(case, batch, torch.stack([chosen[inst] for inst in sorted(chosen)]))


@check("resample_advanced")
def test_resample_advanced(learner: object) -> str:
    resample = learner_callable(learner, "resample_advanced", owner_hint="ToySAE")
    for case in [_main_advanced_case(), *_edge_advanced_cases()]:
        with _case(case.description):
            _check_advanced_case(resample, case)
    _check_fresh_draws(resample)
    return (
        "loss²-weighted draws with replacement, centred unit decoders, live-norm encoders, zero biases; no dead, no "
        "live, all-zero losses, tied"
    )
