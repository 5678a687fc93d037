"""JumpReLU SAE (Rajamanoharan et al. 2024) in plain float64 numpy, with gradients derived by hand.

This is the independent run that the torch/autograd implementation is checked against:
it shares no code with it and uses no autograd, so agreement to ~1e-8 tests the
straight-through estimators, the loss and the optimiser step rather than a common library.

Layout: `z = (x - b_dec) @ W_enc + b_enc`, `f = z * H(z - θ)`, `x̂ = f @ W_dec + b_dec`,
with θ = exp(log_threshold) so the threshold stays positive while being trained.
"""

from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields, replace
from typing import NamedTuple

import numpy as np
from jaxtyping import Bool, Float

PROJECTION_EPS = 1e-6
"""The published training projects the decoder gradient onto rows normalised as v / (‖v‖ + 1e-6)."""


@dataclass
class JumpReLUParams:
    """SAE parameters; the same container also holds their gradients and Adam moments."""

    W_enc: Float[np.ndarray, "d_in d_sae"]
    b_enc: Float[np.ndarray, " d_sae"]
    W_dec: Float[np.ndarray, "d_sae d_in"]
    b_dec: Float[np.ndarray, " d_in"]
    log_threshold: Float[np.ndarray, " d_sae"]

    def copy(self) -> "JumpReLUParams":
        return self.map(np.copy)

    def map(self, fn: Callable[..., np.ndarray], *others: "JumpReLUParams") -> "JumpReLUParams":
        """Apply `fn` field by field to this container and `others` (all with the same fields)."""
        return JumpReLUParams(
            **{f.name: fn(getattr(self, f.name), *(getattr(o, f.name) for o in others)) for f in fields(self)}
        )


class ForwardPass(NamedTuple):
    """What the backward pass needs from the forward pass."""

    x_in: Float[np.ndarray, "batch d_in"]
    """Encoder input: x, minus b_dec when the pre-encoder bias is used."""
    pre_activations: Float[np.ndarray, "batch d_sae"]
    threshold: Float[np.ndarray, " d_sae"]
    active: Bool[np.ndarray, "batch d_sae"]
    features: Float[np.ndarray, "batch d_sae"]
    reconstruction: Float[np.ndarray, "batch d_in"]


def forward(params: JumpReLUParams, x: Float[np.ndarray, "batch d_in"], *, use_pre_encoder_bias: bool) -> ForwardPass:
    x_in = x - params.b_dec if use_pre_encoder_bias else x
    z = x_in @ params.W_enc + params.b_enc
    threshold = np.exp(params.log_threshold)
    active = z > threshold
    features = z * active
    reconstruction = features @ params.W_dec + params.b_dec
    return ForwardPass(x_in, z, threshold, active, features, reconstruction)


def rectangle(u: np.ndarray) -> np.ndarray:
    """Kernel of the straight-through estimators: 1 on the open interval (-1/2, 1/2), else 0."""
    return (np.abs(u) < 0.5).astype(np.float64)


def loss_and_grads(
    params: JumpReLUParams,
    x: Float[np.ndarray, "batch d_in"],
    *,
    bandwidth: float,
    sparsity_coefficient: float,
    use_pre_encoder_bias: bool,
) -> tuple[float, JumpReLUParams, ForwardPass]:
    """Loss = batch mean of (squared reconstruction error summed over d_in + λ · number of active latents).

    Returns the loss, its gradient with respect to every parameter, and the forward pass.
    """
    fp = forward(params, x, use_pre_encoder_bias=use_pre_encoder_bias)
    batch = x.shape[0]
    error = fp.reconstruction - x
    loss = float((error**2).sum(-1).mean() + sparsity_coefficient * fp.active.sum(-1).mean())

    d_reconstruction = 2 * error / batch
    d_W_dec = fp.features.T @ d_reconstruction
    d_features = d_reconstruction @ params.W_dec.T

    # The step function has zero derivative in z, so only the identity part of z·H(z-θ) passes through;
    # the threshold only gets gradient from the kernel's pseudo-derivatives, which are nonzero within ε/2 of θ.
    d_pre = d_features * fp.active
    kernel = rectangle((fp.pre_activations - fp.threshold) / bandwidth)
    d_threshold_jump = (d_features * -(fp.threshold / bandwidth) * kernel).sum(0)
    d_threshold_l0 = (sparsity_coefficient / batch) * (-kernel / bandwidth).sum(0)
    d_threshold = d_threshold_jump + d_threshold_l0

    d_b_dec = d_reconstruction.sum(0)
    if use_pre_encoder_bias:
        # b_dec also enters the encoder as x - b_dec.
        d_b_dec = d_b_dec - (d_pre @ params.W_enc.T).sum(0)

    grads = JumpReLUParams(
        W_enc=fp.x_in.T @ d_pre,
        b_enc=d_pre.sum(0),
        W_dec=d_W_dec,
        b_dec=d_b_dec,
        log_threshold=d_threshold * fp.threshold,  # chain rule through θ = exp(log θ)
    )
    return loss, grads, fp


@dataclass
class AdamState:
    step: int
    exp_avg: JumpReLUParams
    exp_avg_sq: JumpReLUParams

    @classmethod
    def zeros_like(cls, params: JumpReLUParams) -> "AdamState":
        return cls(0, params.map(np.zeros_like), params.map(np.zeros_like))


def unit_rows(W: Float[np.ndarray, "rows cols"]) -> Float[np.ndarray, "rows cols"]:
    return W / np.linalg.norm(W, axis=1, keepdims=True)


def adam_step(
    params: JumpReLUParams,
    grads: JumpReLUParams,
    state: AdamState,
    *,
    lr: float,
    fixed_decoder_norms: bool,
    betas: tuple[float, float] = (0.0, 0.999),
    eps: float = 1e-8,
    projection_eps: float = PROJECTION_EPS,
) -> tuple[JumpReLUParams, AdamState]:
    """One Adam update with torch.optim.Adam's bias correction; returns new params and state.

    With fixed decoder norms, the component of each decoder row's gradient along the row is
    removed first, since it would only change the norm, which the renormalisation after the
    step undoes anyway. As in the published procedure, the row is normalised with
    `projection_eps` added to its norm for that projection, so the removal is not quite
    complete (by about 2·projection_eps of the parallel part).
    """
    b1, b2 = betas
    if fixed_decoder_norms:
        W = params.W_dec / (np.linalg.norm(params.W_dec, axis=1, keepdims=True) + projection_eps)
        radial = (grads.W_dec * W).sum(1, keepdims=True) * W
        grads = replace(grads, W_dec=grads.W_dec - radial)

    step = state.step + 1
    exp_avg = state.exp_avg.map(lambda m, g: b1 * m + (1 - b1) * g, grads)
    exp_avg_sq = state.exp_avg_sq.map(lambda v, g: b2 * v + (1 - b2) * g**2, grads)
    step_size = lr / (1 - b1**step)
    root_correction = np.sqrt(1 - b2**step)
    new = params.map(lambda p, m, v: p - step_size * m / (np.sqrt(v) / root_correction + eps), exp_avg, exp_avg_sq)

    if fixed_decoder_norms:
        new = replace(new, W_dec=unit_rows(new.W_dec))
    return new, AdamState(step, exp_avg, exp_avg_sq)


def train(
    params: JumpReLUParams,
    batches: Iterable[Float[np.ndarray, "batch d_in"]],
    *,
    lr: float,
    bandwidth: float,
    sparsity_coefficient: float,
    use_pre_encoder_bias: bool,
    fixed_decoder_norms: bool,
    betas: tuple[float, float] = (0.0, 0.999),
    projection_eps: float = PROJECTION_EPS,
) -> JumpReLUParams:
    """One Adam step per batch from fresh optimiser state; the input params are left untouched."""
    state = AdamState.zeros_like(params)
    for x in batches:
        _, grads, _ = loss_and_grads(
            params,
            x,
            bandwidth=bandwidth,
            sparsity_coefficient=sparsity_coefficient,
            use_pre_encoder_bias=use_pre_encoder_bias,
        )
        params, state = adam_step(
            params,
            grads,
            state,
            lr=lr,
            fixed_decoder_norms=fixed_decoder_norms,
            betas=betas,
            projection_eps=projection_eps,
        )
    return params


@dataclass
class ReferenceCase:
    """The published JumpReLU test case: data, initial parameters and hyperparameters."""

    data: Float[np.ndarray, "n_batches batch d_in"]
    params: JumpReLUParams
    bandwidth: float = 0.1
    sparsity_coefficient: float = 1.2
    use_pre_encoder_bias: bool = True


def reference_setup() -> ReferenceCase:
    d_in, d_sae = 16, 128
    data = np.random.default_rng(9328302).normal(size=(3, 1024, d_in)) / np.sqrt(d_in)
    # The draws must happen in exactly this order to reproduce the published numbers.
    rng = np.random.default_rng(24396)
    W_dec = unit_rows(rng.uniform(size=(d_sae, d_in)) - 0.5)
    W_enc = rng.uniform(size=(d_in, d_sae)) - 0.5
    b_enc = (rng.uniform(size=(d_sae,)) - 0.5) * 0.1
    b_dec = (rng.uniform(size=(d_in,)) - 0.5) * 0.1
    threshold = 0.15 * rng.uniform(size=(d_sae,)) * 0.1
    return ReferenceCase(data, JumpReLUParams(W_enc, b_enc, W_dec, b_dec, np.log(threshold)))
