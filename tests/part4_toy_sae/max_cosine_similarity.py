"""Exercise 5, `max_cosine_similarity`: for each feature, the best cosine with any decoder row, normalised on
both sides."""

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from part_utils.device import get_device
from tests.checking import CheckFailure, call_learner, check, diagnose, learner_callable
from tests.part4_toy_sae._common import D_IN, D_SAE, N_FEATURES, N_INST, _case, _expect_axes_kept

COSINE_CASES = (  # (description, n_inst, feats, d_sae)
    (None, N_INST, N_FEATURES, D_SAE),
    ("With as many latents as features", N_INST, N_FEATURES, N_FEATURES),
    ("With a single latent", N_INST, N_FEATURES, 1),
    ("With one instance and one feature", 1, 1, D_SAE),
)


def _cosine_mistakes(W: Tensor, f: Tensor) -> dict[str, Tensor]:
    dots = torch.einsum("ifd,isd->ifs", f, W)
    norms_f, norms_W = f.norm(dim=-1)[:, :, None], W.norm(dim=-1)[:, None, :]
    cosine = dots / (norms_f * norms_W)
    mistakes = {
        "The decoder rows are not normalised: divide by each row's norm before the dot product.": (
            (dots / norms_f).max(-1).values
        ),
        "The feature directions are not normalised: divide by each feature's norm before the dot product.": (
            (dots / norms_W).max(-1).values
        ),
        "Neither side is normalised: use cosine similarity, not the raw dot product.": dots.max(-1).values,
        "The decoder is divided by the norm of the whole tensor (.norm() with no dim); normalise each decoder row "
        "over d_in (dim=-1).": (dots / (norms_f * W.norm())).max(-1).values,
        "The features are divided by the norm of the whole tensor (.norm() with no dim); normalise each feature "
        "direction over d_in (dim=-1).": (dots / (f.norm() * norms_W)).max(-1).values,
        "You took the absolute cosine; a latent pointing opposite to a feature does not recover it.": (
            cosine.abs().max(-1).values
        ),
        "You squared the cosine; a latent pointing opposite to a feature does not recover it.": (
            cosine.pow(2).max(-1).values
        ),
        "You averaged over latents; take the maximum over latents for each feature.": cosine.mean(-1),
        "Your negative cosines became 0 (a maximum started from zeros, a clamp or a ReLU): a feature that every latent "
        "points away from has a negative best cosine; keep its sign.": cosine.max(-1).values.clamp_min(0),
        "The decoder is normalised over latents (dim 1); normalise each decoder row over d_in (the last axis).": (
            torch.einsum("ifd,isd->ifs", F.normalize(f, dim=-1), F.normalize(W, dim=1)).max(-1).values
        ),
        "The features are normalised over features (dim 1); normalise each feature direction over d_in (the last "
        "axis).": torch.einsum("ifd,isd->ifs", F.normalize(f, dim=1), F.normalize(W, dim=-1)).max(-1).values,
    }
    if W.shape[1] == f.shape[1]:  # only here does a maximum over the wrong axis have the right shape
        mistakes["You took the maximum over features for each latent; take it over latents for each feature."] = (
            cosine.max(-2).values
        )
    return mistakes


def _check_cosine_case(function: Callable[..., object], n_inst: int, n_features: int, d_sae: int) -> None:
    """Decoder rows and features of varied norms: the learner's [inst, feats] against the reference."""
    W_dec = F.normalize(torch.randn(n_inst, d_sae, D_IN), dim=-1) * (torch.rand(n_inst, d_sae, 1) * 2.9 + 0.1)
    features = F.normalize(torch.randn(n_inst, n_features, D_IN), dim=-1) * (
        torch.rand(n_inst, n_features, 1) * 1.9 + 0.1
    )
    device = get_device()
    output = call_learner(function, W_dec.clone().to(device), features.clone().to(device), what="max_cosine_similarity")
    if isinstance(output, tuple) and hasattr(output, "indices"):
        raise CheckFailure("`max_cosine_similarity` returned torch.max's (values, indices) pair: return its `.values`.")
    if isinstance(output, Tensor) and not torch.is_floating_point(output):
        raise CheckFailure(
            "`max_cosine_similarity` returned integers (indices, from argmax?): return the cosine values themselves."
        )
    if isinstance(output, Tensor) and d_sae != n_features and output.shape == (n_inst, d_sae):
        raise CheckFailure(
            "You took the maximum over features for each latent; take it over latents for each feature, giving "
            "[inst, feats]."
        )
    actual = _expect_axes_kept(output, (n_inst, n_features), what="max_cosine_similarity", axes="inst, feats")
    W, f = W_dec.double(), features.double()
    expected = torch.einsum("ifd,isd->ifs", F.normalize(f, dim=-1), F.normalize(W, dim=-1)).max(-1).values
    diagnose(
        actual,
        expected,
        _cosine_mistakes(W, f),
        otherwise="For each feature, return the largest cosine similarity with any decoder row.",
    )


@check("max_cosine_similarity")
def test_max_cosine_similarity(learner: object) -> str:
    function = learner_callable(learner, "max_cosine_similarity")
    for description, n_inst, n_features, d_sae in COSINE_CASES:
        with _case(description):
            _check_cosine_case(function, n_inst, n_features, d_sae)
    return "cosines normalised on both sides, best latent per feature, inputs left as they are"
