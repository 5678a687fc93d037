"""Exercise 3, `generate_batch`: the hidden vectors h = W x of features drawn as the toy model draws them, a new
batch on every call, every axis kept when it has length 1."""

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from part_utils.reference import part1_toy_models as toy
from part_utils.reference import part4_toy_sae as reference
from tests.checking import CheckFailure, call_learner, check, close, diagnose, expect_tensor, learner_callable
from tests.fixtures import toy_model
from tests.part4_toy_sae._common import (
    D_SAE,
    N_FEATURES,
    N_INST,
    _case,
    _expect_axes_kept,
    _float64,
    _fresh_call,
    _no_grad,
)
from tests.sampling import check_sparse_unit_sample

GENERATE_BATCH = 20_000
FRESH_BATCH = 200  # two calls of this size never give the same batch, unless seeded or kept
GENERATE_D_IN = 8  # more hidden dimensions than features: W has full column rank, so h = W x gives x back


class _RecordingFeatures:
    """Stands in for the toy model's generate_batch: draws real features and keeps a copy of each batch."""

    def __init__(self, model: toy.ToyModel) -> None:
        self.draw = model.generate_batch
        self.batches: list[Tensor] = []

    def __call__(self, batch_size: int) -> Tensor:
        features = self.draw(batch_size)
        self.batches.append(_float64(features))
        return features


def _hidden(W: Tensor, x: Tensor) -> Tensor:
    return torch.einsum("ihf,bif->bih", W, x)


def _check_hidden_of_drawn_features(h: Tensor, W: Tensor, drawn: Sequence[Tensor]) -> None:
    """The learner drew through self.model.generate_batch: h must be exactly W x for one of those draws."""
    batch = h.shape[0]
    candidates = [x[:batch] for x in drawn if len(x) >= batch]
    if not candidates:
        raise CheckFailure(
            "`generate_batch` drew fewer than batch_size examples from the model: call "
            "self.model.generate_batch(batch_size)."
        )
    if any(close(h, _hidden(W, x)) for x in candidates):
        return
    x = candidates[0]
    n_inst, d_in, n_features = W.shape
    diagnose(
        h,
        _hidden(W, x),
        {
            "Your h has no negative values: the hidden vector is W x itself; the ReLU only comes after Wᵀ, in the "
            "model's output.": F.relu(_hidden(W, x)),
            "Every instance gets instance 0's features: use each instance's own features, x[:, inst].": (
                _hidden(W, x[:, :1].expand_as(x))
            ),
            "Your h sums the features of all instances: contract only the feats axis, per instance (einsum 'inst "
            "d_in feats, batch inst feats -> batch inst d_in').": torch.einsum("ihf,bjf->bih", W, x),
            "W is reshaped instead of transposed or indexed by its axes: W is [inst, d_in, feats]; contract its feats "
            "axis with x's.": torch.einsum("ifh,bif->bih", W.reshape(n_inst, n_features, d_in), x),
        },
        otherwise="Your h is not W x for the features that self.model.generate_batch returned: contract W's feats "
        "axis with x's feats axis, per instance.",
    )


def _recovered_features(h: Tensor, W: Tensor) -> Tensor:
    """The features x with W x = h, per instance (W has full column rank), rounded to 1e-5 so that
    exact zeros, ones and shared magnitudes stay exact after the least-squares round trip."""
    solution = torch.linalg.lstsq(W[None].expand(h.shape[0], -1, -1, -1), h[..., None]).solution[..., 0]
    if not close(_hidden(W, solution), h, rtol=1e-4, atol=1e-4):
        raise CheckFailure(
            "Your h is not W x for any features x: compute it from the model's W and features "
            "(self.model.generate_batch)."
        )
    return torch.round(solution * 1e5) / 1e5


def _sae_recording_draws(n_inst: int, d_in: int) -> tuple[reference.ToySAE, _RecordingFeatures]:
    cfg = reference.ToySAEConfig(n_inst=n_inst, d_in=d_in, d_sae=D_SAE)
    sae = reference.ToySAE(cfg, toy_model(n_inst=n_inst, d_hidden=d_in))
    recorder = _RecordingFeatures(sae.model)
    sae.model.generate_batch = recorder  # an instance attribute: self.model.generate_batch(...) records its draws
    return sae, recorder


def _check_fresh_batches(generate: Callable[..., object]) -> None:
    """A second call must give a new batch: a seed set inside, or a batch kept in self, would train on one batch."""
    sae, recorder = _sae_recording_draws(N_INST, GENERATE_D_IN)
    first = call_learner(_no_grad(generate), sae, FRESH_BATCH, what="generate_batch")
    drawn = len(recorder.batches)
    second = _fresh_call(_no_grad(generate), sae, FRESH_BATCH, what="generate_batch")
    if not (isinstance(second, Tensor) and isinstance(first, Tensor) and second.shape == first.shape):
        return
    if torch.equal(second, first):
        if second is first or drawn == len(recorder.batches) > 0:
            raise CheckFailure(
                "`generate_batch` returned the batch of an earlier call again: draw fresh features on every call (keep "
                "no batch in self), or training would see one batch over and over."
            )
        raise CheckFailure(
            "`generate_batch` returned the same batch on two calls: don't set a seed inside it (torch.manual_seed), "
            "or training would see one batch over and over."
        )


def _check_length_one_axes(generate: Callable[..., object]) -> None:
    """One instance, d_in = 1 and a batch of one: every axis kept, and h = W x for the features drawn."""
    sae, recorder = _sae_recording_draws(1, 1)
    output = call_learner(_no_grad(generate), sae, 1, what="generate_batch")
    h = _expect_axes_kept(output, (1, 1, 1), what="generate_batch", axes="batch, inst, d_in")
    if recorder.batches:
        _check_hidden_of_drawn_features(h, _float64(sae.model.W), recorder.batches)


@check("generate_batch")
def test_generate_batch(learner: object) -> str:
    generate = learner_callable(learner, "generate_batch", owner_hint="ToySAE")
    sae, recorder = _sae_recording_draws(N_INST, GENERATE_D_IN)
    # The snapshot that call_learner takes guards the model too.
    output = call_learner(_no_grad(generate), sae, GENERATE_BATCH, what="generate_batch")
    if isinstance(output, Tensor) and output.shape == (GENERATE_BATCH, N_INST, N_FEATURES):
        raise CheckFailure(
            "`generate_batch` returned something of shape [batch, inst, feats] (the features x, or the model's "
            "output): the SAE's data is the hidden vector h = W x, [batch, inst, d_in]."
        )
    h = expect_tensor(output, (GENERATE_BATCH, N_INST, GENERATE_D_IN), what="generate_batch", axes="batch, inst, d_in")
    W = _float64(sae.model.W)
    if recorder.batches:
        _check_hidden_of_drawn_features(h, W, recorder.batches)
        summary = "h = W x from the model's own features"
    else:  # features drawn by the learner's own code: they must follow the model's distribution
        features = _recovered_features(h, W)
        probability, importance = _float64(sae.model.feature_probability), _float64(sae.model.importance)
        check_sparse_unit_sample(features, probability, importance, what="the features behind your h")
        summary = "h = W x, with features distributed as the model's"
    _check_fresh_batches(generate)
    with _case("With one instance, d_in = 1 and a batch of one"):
        _check_length_one_axes(generate)
    return summary
