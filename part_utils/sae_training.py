"""Training loop for SAEs on toy data, with dead-latent resampling and a log for animations.

The SAE keeps the contract in `part_utils.sae_interface.TrainableSAE`: `generate_batch`, a forward pass
returning an `SAEOutput`, `encode`, `resample_simple` / `resample_advanced` (each returning which latents it
resampled), optionally `reset_latent_state(resampled)` for per-latent state beyond the weights (called after
each resampling), `W_dec_normalized` and `latent_axes()`. Like the toy-model loop, it reads nothing back from
the device except at log and resample steps.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from part_utils.progress import progress_bar
from part_utils.sae_interface import TrainableSAE
from part_utils.training import LearningRateSchedule, constant_lr, make_adam, set_learning_rate

ResampleMethod = Literal["simple", "advanced"] | None


@dataclass
class SAESnapshot:
    """One logged moment of training, on the CPU."""

    step: int
    W_enc: Float[Tensor, "inst d_in d_sae"]
    W_dec_normalized: Float[Tensor, "inst d_sae d_in"]
    h_reconstructed: Float[Tensor, "sample inst d_in"]
    reconstruction_loss: Float[Tensor, "sample inst"]
    frac_active: Float[Tensor, "inst d_sae"]
    resampled: Bool[Tensor, "inst d_sae"]
    """Latents resampled since the previous snapshot."""


@dataclass
class SAETrainingLog:
    h_sample: Float[Tensor, "sample inst d_in"]
    snapshots: list[SAESnapshot] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    resample_counts: list[int] = field(default_factory=list)
    """Latents resampled at each resampling step (all instances together)."""


def redundant_latents(
    W_dec_normalized: Float[Tensor, "inst d_sae d_in"], frac_active: Float[Tensor, "inst d_sae"], threshold: float
) -> Bool[Tensor, "inst d_sae"]:
    """Live latents whose decoder direction duplicates a more active live latent's (cosine > threshold)."""
    cosine = W_dec_normalized @ W_dec_normalized.transpose(1, 2)  # [inst, d_sae, d_sae]
    live = frac_active > 0
    both_live = live[:, :, None] & live[:, None, :]
    # Latent i is redundant if some j fires more often (ties broken by index) along the same direction.
    fires_more = (frac_active[:, None, :] > frac_active[:, :, None]) | (
        (frac_active[:, None, :] == frac_active[:, :, None])
        & (
            torch.arange(cosine.shape[-1], device=cosine.device)[None, None, :]
            < torch.arange(cosine.shape[-1], device=cosine.device)[None, :, None]
        )
    )
    return ((cosine > threshold) & both_live & fires_more).any(dim=-1)


def reset_adam_moments(
    optimizer: torch.optim.Optimizer, sae: TrainableSAE, resampled: Bool[Tensor, "inst d_sae"]
) -> None:
    """Zero Adam's running moments for the resampled latents' weights.

    For a latent that was live until now (a redundant or starved one) this stops the old
    momentum from pushing the new direction back where the latent was. For a latent dead for
    the whole window the momentum has already decayed; what the reset removes is its stale
    second moment. Either way it is no fresh start: torch's Adam corrects the moments' bias with
    the tensor's global step count, so the first steps after a reset are several times lr.
    """
    for name, latent_axis in sae.latent_axes().items():
        parameter = getattr(sae, name)
        state = optimizer.state.get(parameter)
        if not state:
            continue
        mask = resampled.reshape(_mask_shape(parameter.ndim, latent_axis, resampled.shape))
        for key in ("exp_avg", "exp_avg_sq"):
            state[key].masked_fill_(mask, 0.0)


def _mask_shape(ndim: int, latent_axis: int, mask_shape: torch.Size) -> tuple[int, ...]:
    """Shape that broadcasts an [inst, d_sae] mask over a parameter whose latent axis is `latent_axis`."""
    shape = [1] * ndim
    shape[0], shape[latent_axis] = mask_shape[0], mask_shape[1]
    return tuple(shape)


def train_sae(
    sae: TrainableSAE,
    *,
    steps: int,
    batch_size: int = 1024,
    lr: float = 1e-3,
    lr_schedule: LearningRateSchedule = constant_lr,
    sparsity_schedule: LearningRateSchedule = constant_lr,
    resample_method: ResampleMethod = None,
    resample_every: int = 2_500,
    resample_window: int = 500,
    resample_scale: float = 0.5,
    resample_redundant_above: float | None = None,
    resample_rarer_than: float | None = None,
    log_every: int = 100,
    sample_size: int = 1024,
    description: str = "training SAE",
    on_log: Callable[[SAESnapshot], None] | None = None,
) -> SAETrainingLog:
    """Train `sae` with Adam; resample dead latents every `resample_every` steps.

    A latent is dead if it did not fire once in the last `resample_window` steps before a
    resampling step. With `resample_redundant_above`, a live latent whose decoder direction
    has cosine similarity above that value with a more active latent is resampled too; with
    `resample_rarer_than`, so is a latent that fired on a smaller fraction of the window's inputs.
    No resampling in the last `resample_window` steps' worth of training before the end.
    `sparsity_schedule` scales the SAE's sparsity coefficient per step (a warm-up from 0 keeps
    the penalty from killing latents before they have found anything to reconstruct).
    """
    optimizer = make_adam(sae.parameters(), lr)
    with torch.no_grad():
        h_sample = sae.generate_batch(sample_size)
    log = SAETrainingLog(h_sample=h_sample.cpu())
    fire_counts, window_inputs = None, 0
    resampled_since_log = None
    progress = progress_bar(range(steps), description)
    sparsity_coeff = sae.cfg.sparsity_coeff
    for step in progress:
        step_lr = lr * lr_schedule(step, steps)
        set_learning_rate(optimizer, step_lr)
        sae.cfg.sparsity_coeff = sparsity_coeff * sparsity_schedule(step, steps)
        h = sae.generate_batch(batch_size)
        output = sae(h)
        loss, acts = output.loss, output.acts
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

        if resample_method is not None:
            steps_to_resample = resample_every - (step + 1) % resample_every
            in_window = steps_to_resample < resample_window or steps_to_resample == resample_every
            if in_window:
                batch_counts = (acts.detach() > 0).sum(dim=0)
                fire_counts = batch_counts if fire_counts is None else fire_counts + batch_counts
                window_inputs += batch_size
            if (step + 1) % resample_every == 0 and step + 1 < steps - resample_window and fire_counts is not None:
                frac_active = fire_counts / window_inputs
                if resample_rarer_than is not None:
                    frac_active = frac_active.masked_fill(frac_active < resample_rarer_than, 0.0)
                if resample_redundant_above is not None:
                    with torch.no_grad():
                        redundant = redundant_latents(
                            sae.W_dec_normalized, _firing_rates(sae, h), resample_redundant_above
                        )
                    frac_active = frac_active.masked_fill(redundant, 0.0)
                resampled = _resample(sae, resample_method, frac_active, resample_scale)
                reset_adam_moments(optimizer, sae, resampled)
                log.resample_counts.append(int(resampled.sum()))
                resampled_since_log = resampled if resampled_since_log is None else resampled_since_log | resampled
                fire_counts, window_inputs = None, 0

        if step % log_every == 0 or step == steps - 1:
            snapshot = _snapshot(sae, step, log.h_sample, resampled_since_log)
            resampled_since_log = None
            log.snapshots.append(snapshot)
            log.losses.append(loss.item())
            if on_log is not None:
                on_log(snapshot)
            progress.set_postfix(loss=f"{log.losses[-1]:.4g}", lr=f"{step_lr:.2g}")
    sae.cfg.sparsity_coeff = sparsity_coeff
    return log


def _resample(sae: TrainableSAE, method: str, frac_active: Tensor, resample_scale: float) -> Tensor:
    """Resample, then let the SAE reset any per-latent state of its own (thresholds, counters...)."""
    if method not in ("simple", "advanced"):
        raise ValueError(f"resample_method must be None, 'simple' or 'advanced', got {method!r}")
    with torch.no_grad():
        resample = sae.resample_simple if method == "simple" else sae.resample_advanced
        resampled = resample(frac_active, resample_scale)
        reset_latent_state = getattr(sae, "reset_latent_state", None)
        if reset_latent_state is not None:
            reset_latent_state(resampled)
    return resampled


@torch.no_grad()
def _firing_rates(sae: TrainableSAE, h: Tensor) -> Float[Tensor, "inst d_sae"]:
    return (sae.encode(h) > 0).float().mean(dim=0)


@torch.no_grad()
def _snapshot(sae: TrainableSAE, step: int, h_sample: Tensor, resampled: Tensor | None) -> SAESnapshot:
    h = h_sample.to(sae.W_enc.device)
    output = sae(h)
    acts = output.acts
    n_inst, d_sae = acts.shape[1], acts.shape[2]
    return SAESnapshot(
        step=step,
        W_enc=sae.W_enc.detach().cpu().clone(),
        W_dec_normalized=sae.W_dec_normalized.detach().cpu().clone(),
        h_reconstructed=output.h_reconstructed.cpu(),
        reconstruction_loss=output.loss_dict["L_reconstruction"].cpu(),
        frac_active=(acts > 0).float().mean(dim=0).cpu(),
        resampled=(resampled if resampled is not None else torch.zeros(n_inst, d_sae, dtype=torch.bool)).cpu(),
    )
