"""Exercise 2, `W_dec_normalized`: unit decoder rows with ε added to the norm, gradients through the norm, tied
and untied, and computed afresh on every call (training calls it again after each step)."""

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from part_utils.reference import part4_toy_sae as reference
from tests.checking import CheckFailure, call_learner, check, diagnose, expect_tensor, learner_callable
from tests.part4_toy_sae._common import (
    D_IN,
    D_SAE,
    N_INST,
    _backpropagate,
    _case,
    _explained,
    _float64,
    _fresh_call,
    _naming_tied_decoder,
    _normalised,
    _reference_sae,
)

TINY_ROW_NORM = 1e-3  # small enough that ε inside the square root shows, large enough that ε outside does not


def _normalising_sae(tied: bool, *, special_rows: bool) -> reference.ToySAE:
    """Decoder rows with norms between 0.1 and 3; with `special_rows`, also a zero row and a tiny one."""
    sae = _reference_sae(tied=tied)
    rows = F.normalize(torch.randn(N_INST, D_SAE, D_IN), dim=-1) * (torch.rand(N_INST, D_SAE, 1) * 2.9 + 0.1)
    if special_rows:
        rows[1, 2] = 0.0
        rows[2, 5] *= TINY_ROW_NORM / rows[2, 5].norm()
    with torch.no_grad():
        if tied:
            sae.W_enc.copy_(rows.transpose(-1, -2))
        else:
            sae._W_dec.copy_(rows)
    return sae


def _normalising_mistakes(W: Tensor, W_enc: Tensor | None, eps: float) -> dict[str, Tensor]:
    """What plausible wrong versions return for the raw decoder W (and, untied, the encoder W_enc)."""
    mistakes = {
        "The decoder is returned unnormalised: divide each row by its norm.": W,
        "You normalised over the wrong dimension: each latent's row (over d_in, the last axis) must have unit norm.": (
            W / (W.norm(dim=-2, keepdim=True) + eps)
        ),
        "You normalised each instance's whole matrix at once; normalise every latent's row separately (dim=-1, "
        "keepdim=True).": W / (W.norm(dim=(-2, -1), keepdim=True) + eps),
        "You normalised over instances (dim 0); normalise every latent's row over d_in (the last axis).": (
            W / (W.norm(dim=0, keepdim=True) + eps)
        ),
        "You divided by the squared norm; divide by the norm itself.": W / (W.pow(2).sum(-1, keepdim=True) + eps),
        "You divided by the L1 norm (sum of absolute values); use the L2 norm, ‖w‖ = sqrt(sum of squares).": (
            W / (W.abs().sum(-1, keepdim=True) + eps)
        ),
        "You added ε inside the square root; the text adds it to the norm itself: w / (‖w‖ + ε).": (
            W / (W.pow(2).sum(-1, keepdim=True) + eps).sqrt()
        ),
    }
    if W_enc is not None:
        mistakes["You normalised W_encᵀ, but an untied SAE has its own decoder: use the `self.W_dec` property."] = (
            _normalised(W_enc.transpose(-1, -2), eps)
        )
    return mistakes


def _call_normaliser(getter: Callable[..., object], sae: reference.ToySAE) -> object:
    """The learner's W_dec_normalized of `sae`, naming a tied SAE's crash and norms that do not broadcast."""
    what = "W_dec_normalized"
    return _explained(
        lambda: _naming_tied_decoder(lambda: call_learner(getter, sae, what=what), what=what),
        {
            "must match the size of tensor b": "The norms [inst, d_sae] do not broadcast against W_dec [inst, d_sae, "
            "d_in]: keep the reduced axis (norm(dim=-1, keepdim=True))."
        },
    )


def _check_normalised_rows(getter: Callable[..., object], tied: bool) -> None:
    """The values: every row divided by its norm plus ε, finite for a zero row, right for a tiny one."""
    sae = _normalising_sae(tied, special_rows=True)
    W, eps = _float64(sae.W_dec), sae.cfg.weight_normalize_eps
    W_enc = None if tied else _float64(sae.W_enc)
    raw = _call_normaliser(getter, sae)
    if isinstance(raw, Tensor) and raw.shape == W.shape and not torch.isfinite(raw).all():
        raise CheckFailure("A zero decoder row gives NaN: add cfg.weight_normalize_eps to the norm before dividing.")
    actual = expect_tensor(raw, tuple(W.shape), what="W_dec_normalized", axes="inst, d_sae, d_in")
    diagnose(
        actual,
        _normalised(W, eps),
        _normalising_mistakes(W, W_enc, eps),
        otherwise="The rows of your W_dec_normalized are not W_dec's rows divided by (their norm + "
        "cfg.weight_normalize_eps).",
    )


def _normalising_gradients(W: Tensor, upstream: Tensor, eps: float, *, detach_norm: bool) -> Tensor:
    leaf = W.clone().requires_grad_(True)
    norm = leaf.norm(dim=-1, keepdim=True)
    output = leaf / ((norm.detach() if detach_norm else norm) + eps)
    return torch.autograd.grad((output * upstream).sum(), leaf)[0]


def _check_normalised_gradient(getter: Callable[..., object], tied: bool) -> None:
    """Backpropagate the result against a fixed random upstream gradient into the raw weight."""
    sae = _normalising_sae(tied, special_rows=False)
    name, eps = ("W_enc" if tied else "_W_dec"), sae.cfg.weight_normalize_eps
    weight = getattr(sae, name)
    W = _float64(sae.W_dec)
    output = _call_normaliser(getter, sae)
    expect_tensor(output, tuple(W.shape), what="W_dec_normalized", axes="inst, d_sae, d_in")
    upstream = torch.randn(W.shape, dtype=torch.float64)
    actual = _backpropagate(
        lambda: (output * upstream.to(output.device, output.dtype)).sum(), {name: weight}, what="W_dec_normalized"
    )
    to_weight = (lambda grad: grad.transpose(-1, -2)) if tied else (lambda grad: grad)  # noqa: E731
    expected = {name: to_weight(_normalising_gradients(W, upstream, eps, detach_norm=False))}
    detached = {name: to_weight(_normalising_gradients(W, upstream, eps, detach_norm=True))}
    diagnose(
        actual,
        expected,
        {
            "The norm is detached (.detach(), .data or .item() in the denominator), so the gradient ignores the "
            "normalisation: divide by the norm itself.": detached
        },
        otherwise=(
            "W_dec_normalized has the right values but not the gradient of W_dec / (‖W_dec‖ + ε): part of it is cut "
            "off from the graph (.detach(), .data or torch.no_grad())."
        ),
    )


def _check_fresh_after_a_step(getter: Callable[..., object], tied: bool) -> None:
    """Called as training calls it: once, a backward pass that frees the graph, a step that changes the decoder in
    place, then again. A result kept from the first call is stale (and its graph is gone)."""
    sae = _normalising_sae(tied, special_rows=False)
    name, eps = ("W_enc" if tied else "_W_dec"), sae.cfg.weight_normalize_eps
    weight = getattr(sae, name)
    first = _call_normaliser(getter, sae)
    expect_tensor(first, tuple(sae.W_dec.shape), what="W_dec_normalized", axes="inst, d_sae, d_in")
    if first.requires_grad:
        torch.autograd.grad(first.sum(), weight, allow_unused=True)  # frees the graph, as loss.backward() does
    with torch.no_grad():
        weight.add_(torch.randn_like(weight))  # an optimiser step, in place: the same tensor, new values
    second = _fresh_call(getter, sae, what="W_dec_normalized")
    stale = (
        "`W_dec_normalized` returned its earlier result after W_dec changed (as every training step changes it): it "
        "keeps a result from a previous call. Compute it afresh on every call; a kept graph also makes the next "
        "backward pass fail."
    )
    if second is first:
        raise CheckFailure(stale)
    actual = expect_tensor(second, tuple(sae.W_dec.shape), what="W_dec_normalized", axes="inst, d_sae, d_in")
    diagnose(
        actual,
        _normalised(_float64(sae.W_dec), eps),
        {stale: _float64(first)},
        otherwise="`W_dec_normalized` is right on a first call but not on the next, after W_dec changed: it depends on "
        "something kept from an earlier call; compute it from self.W_dec afresh every time.",
    )
    _explained(
        lambda: _backpropagate(lambda: second.sum(), {name: weight}, what="W_dec_normalized"),
        {"backward through the graph a second time": stale},
    )


@check("W_dec_normalized")
def test_W_dec_normalized(learner: object) -> str:
    getter = learner_callable(learner, "W_dec_normalized", owner_hint="ToySAE", as_property=True)
    for tied in (False, True):
        with _case("For a tied SAE" if tied else None):
            _check_normalised_rows(getter, tied)
            _check_normalised_gradient(getter, tied)
            _check_fresh_after_a_step(getter, tied)
    return (
        "unit rows, ε added to the norm (finite for a zero row), gradients through the norm, W_dec left as it is, "
        "tied and untied"
    )
