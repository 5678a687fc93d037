"""Checks for Part 4 (SAEs on the toy model). Call them from the notebook, e.g. `test_forward(ToySAE)`.

The shapes used differ from each other (3 instances, d_in 4, 6 features, 7 latents) so that a
transposed weight or a reduction over the wrong axis fails instead of passing by accident.
"""

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from part_utils.device import get_device
from part_utils.reference import part1_toy_models as toy
from part_utils.reference import part4_toy_sae as reference
from tests.checking import CheckFailure, call_learner, check, close, diagnose, expect_tensor, learner_callable

N_INST, D_IN, N_FEATURES, D_SAE = 3, 4, 6, 7


def _toy_model() -> toy.ToyModel:
    model = toy.ToyModel(
        toy.ToyModelConfig(n_inst=N_INST, n_features=N_FEATURES, d_hidden=D_IN),
        feature_probability=torch.linspace(0.1, 0.4, N_INST)[:, None],
        device=get_device(),
    )
    with torch.no_grad():
        model.W.normal_()
    return model


def _reference_sae(*, tied: bool = False, d_sae: int = D_SAE) -> reference.ToySAE:
    """A reference SAE with random weights of varied norms and non-zero biases."""
    cfg = reference.ToySAEConfig(n_inst=N_INST, d_in=D_IN, d_sae=d_sae, sparsity_coeff=0.3, tied_weights=tied)
    sae = reference.ToySAE(cfg, _toy_model())
    with torch.no_grad():
        sae.W_enc.normal_()
        if sae._W_dec is not None:
            sae._W_dec.copy_(torch.randn_like(sae._W_dec) * torch.rand(N_INST, d_sae, 1, device=sae._W_dec.device) * 3)
        sae.b_enc.normal_(0.0, 0.5)
        sae.b_dec.normal_(0.0, 0.5)
    return sae


def _no_grad(function):
    @functools.wraps(function)  # keeps the learner's signature, so snapshots name the arguments
    def run(*args, **kwargs):
        with torch.no_grad():
            return function(*args, **kwargs)

    return run


# __init__ ---------------------------------------------------------------------------------


@check("__init__")
def test_init(learner: object) -> str:
    init = learner_callable(learner, "__init__")
    for tied in (False, True):
        cfg = reference.ToySAEConfig(n_inst=N_INST, d_in=D_IN, d_sae=D_SAE, tied_weights=tied)
        model = _toy_model()
        sae = reference.ToySAE.__new__(reference.ToySAE)
        call_learner(init, sae, cfg, model, what="__init__")
        _check_initialised(sae, model, tied)
    return "untied and tied: shapes, initialisation, zero biases, frozen model"


def _check_initialised(sae: nn.Module, model: toy.ToyModel, tied: bool) -> None:
    kind = "tied" if tied else "untied"
    parameters = dict(sae.named_parameters())
    if any(p.requires_grad for p in model.parameters()):
        raise CheckFailure("The toy model is not frozen: call `model.requires_grad_(False)` so that only the SAE trains.")
    for name, shape, axes in (("W_enc", (N_INST, D_IN, D_SAE), "inst, d_in, d_sae"), ("b_enc", (N_INST, D_SAE), "inst, d_sae"), ("b_dec", (N_INST, D_IN), "inst, d_in")):
        value = getattr(sae, name, None)
        if not isinstance(value, nn.Parameter):
            raise CheckFailure(f"`self.{name}` should be an nn.Parameter ({kind} SAE), got {type(value).__name__}.")
        if tuple(value.shape) != shape:
            raise CheckFailure(f"`self.{name}` has shape {tuple(value.shape)}; it should be [{axes}] = {shape}.")
        if value.device.type != model.W.device.type:
            raise CheckFailure(f"`self.{name}` is on {value.device}; create it on the model's device ({model.W.device}).")
    if tied:
        if getattr(sae, "_W_dec", "missing") is not None:
            raise CheckFailure("A tied SAE must set `self._W_dec = None`: its decoder is W_encᵀ, not a separate parameter.")
        if any(tuple(p.shape) == (N_INST, D_SAE, D_IN) for p in parameters.values()):
            raise CheckFailure("Your tied SAE still creates a separate decoder parameter; tied means W_dec is W_encᵀ.")
    else:
        W_dec = getattr(sae, "_W_dec", None)
        if not isinstance(W_dec, nn.Parameter) or tuple(W_dec.shape) != (N_INST, D_SAE, D_IN):
            raise CheckFailure(f"An untied SAE needs `self._W_dec`, an nn.Parameter of shape [inst, d_sae, d_in] = {(N_INST, D_SAE, D_IN)}.")
    if sae.b_enc.abs().max() > 0 or sae.b_dec.abs().max() > 0:
        raise CheckFailure("Both biases must start at zero.")
    weights = [sae.W_enc] + ([] if tied else [sae._W_dec])
    for weight in weights:
        values = weight.detach().cpu().double()
        if values.abs().max() == 0:
            raise CheckFailure("The weights are all zero: initialise them with nn.init.kaiming_uniform_.")
        if torch.allclose(values[0], values[1]):
            raise CheckFailure("Every instance got the same weights: initialise the whole [inst, ...] tensor at once.")
        bound = math.sqrt(6 / min(D_IN, D_SAE))
        if values.abs().max() > bound * 1.001 or values.std() / values.abs().max() < 0.45:
            raise CheckFailure("The weights do not look Kaiming-uniform: use nn.init.kaiming_uniform_ on an empty tensor.")


# W_dec_normalized -------------------------------------------------------------------------


@check("W_dec_normalized")
def test_W_dec_normalized(learner: object) -> str:
    normalized = learner_callable(learner, "W_dec_normalized")
    sae = _reference_sae()
    with torch.no_grad():
        sae._W_dec[1, 2] = 0.0  # a zero row: the epsilon must keep it finite
    raw = call_learner(normalized, sae, what="W_dec_normalized")
    if isinstance(raw, Tensor) and raw.shape == (N_INST, D_SAE, D_IN) and not torch.isfinite(raw).all():
        raise CheckFailure("A zero decoder row gives NaN: add cfg.weight_normalize_eps to the norm before dividing.")
    actual = expect_tensor(raw, (N_INST, D_SAE, D_IN), what="W_dec_normalized", axes="inst, d_sae, d_in")
    W_dec, eps = sae.W_dec.detach().cpu().double(), sae.cfg.weight_normalize_eps
    diagnose(
        actual,
        W_dec / (W_dec.norm(dim=-1, keepdim=True) + eps),
        {
            "The decoder is returned unnormalised: divide each row by its norm.": W_dec,
            "You normalised over the wrong dimension: each latent's row (over d_in, the last axis) must have unit norm.": W_dec / (W_dec.norm(dim=-2, keepdim=True) + eps),
            "You divided by the squared norm; divide by the norm itself.": W_dec / (W_dec.pow(2).sum(-1, keepdim=True) + eps),
        },
        otherwise="The rows of your W_dec_normalized are not W_dec's rows scaled to unit norm.",
    )
    tied = _reference_sae(tied=True)
    try:
        tied_result = normalized(tied)
    except (TypeError, AttributeError) as error:
        raise CheckFailure("It fails for a tied SAE: use the `self.W_dec` property, which a tied SAE computes from W_enc, not `self._W_dec`.") from error
    expected_tied = F.normalize(tied.W_enc.detach().transpose(-1, -2), dim=-1)
    if not close(expect_tensor(tied_result, (N_INST, D_SAE, D_IN), what="W_dec_normalized", axes="inst, d_sae, d_in"), expected_tied.cpu()):
        raise CheckFailure("For a tied SAE the result should be W_encᵀ normalised: use the `self.W_dec` property.")
    return "unit rows, finite for a zero row, tied and untied"


# generate_batch ---------------------------------------------------------------------------


@check("generate_batch")
def test_generate_batch(learner: object) -> str:
    generate = learner_callable(learner, "generate_batch")
    sae = _reference_sae()
    batch = 20_000
    state = torch.get_rng_state()
    output = call_learner(_no_grad(generate), sae, batch, what="generate_batch")
    if isinstance(output, Tensor) and output.shape == (batch, N_INST, N_FEATURES):
        raise CheckFailure("`generate_batch` returned the features x; the SAE's data is the hidden vector h = W x.")
    actual = expect_tensor(output, (batch, N_INST, D_IN), what="generate_batch", axes="batch, inst, d_in")
    torch.set_rng_state(state)
    with torch.no_grad():
        expected = reference.ToySAE.generate_batch(sae, batch).cpu().double()
    if close(actual, expected):
        return "h = W x from the model's own features"
    # Drawn differently (e.g. another random call order): compare what h must look like on average.
    W = sae.model.W.detach().cpu().double()
    mean_features = sae.model.feature_probability.cpu().double() * 0.5
    expected_mean = torch.einsum("ihf,if->ih", W, mean_features)
    tolerance = 6 * actual.std(0) / math.sqrt(batch) + 1e-3
    if ((actual.mean(0) - expected_mean).abs() > tolerance).any():
        transposed_mean = torch.einsum("ihf,if->ih", W.flip(-1), mean_features)
        if ((actual.mean(0) - transposed_mean).abs() <= tolerance).all():
            raise CheckFailure("Features and weights are paired up wrongly: contract W's feats axis with x's feats axis.")
        raise CheckFailure("Your h does not average to W E[x] per instance: compute h = W x with the model's W and generate_batch.")
    return "h = W x from the model's own features"


# forward ----------------------------------------------------------------------------------


@check("forward")
def test_forward(learner: object) -> str:
    forward = learner_callable(learner, "forward")
    sae = _reference_sae()
    batch = 32
    h = torch.randn(batch, N_INST, D_IN, device=sae.W_enc.device)
    result = call_learner(_no_grad(forward), sae, h, what="forward")
    if not isinstance(result, tuple) or len(result) != 4:
        raise CheckFailure("`forward` should return a tuple of four things: (loss_dict, loss, acts, h_reconstructed).")
    loss_dict, loss, acts, h_reconstructed = result
    if not isinstance(loss_dict, dict) or set(loss_dict) != {"L_reconstruction", "L_sparsity"}:
        raise CheckFailure('`loss_dict` should be a dict with exactly the keys "L_reconstruction" and "L_sparsity".')

    W_enc, b_enc = sae.W_enc.detach().cpu().double(), sae.b_enc.detach().cpu().double()
    W_dec, b_dec = sae.W_dec.detach().cpu().double(), sae.b_dec.detach().cpu().double()
    W_dec_unit = W_dec / (W_dec.norm(dim=-1, keepdim=True) + sae.cfg.weight_normalize_eps)
    x = h.cpu().double()
    encode = lambda inputs: torch.einsum("bid,ids->bis", inputs, W_enc) + b_enc  # noqa: E731
    z = F.relu(encode(x - b_dec))
    diagnose(
        expect_tensor(acts, (batch, N_INST, D_SAE), what="acts", axes="batch, inst, d_sae"),
        z,
        {
            "`acts` ignores b_dec: subtract b_dec from h before encoding.": F.relu(encode(x)),
            "`acts` has negative values: apply the ReLU after adding b_enc.": encode(x - b_dec),
            "`acts` adds b_dec before encoding; it should be subtracted.": F.relu(encode(x + b_dec)),
        },
        otherwise="`acts` does not match ReLU((h - b_dec) W_enc + b_enc): check the einsum axes and the biases.",
    )
    decode = lambda weights: torch.einsum("bis,isd->bid", z, weights)  # noqa: E731
    h_rec = decode(W_dec_unit) + b_dec
    diagnose(
        expect_tensor(h_reconstructed, (batch, N_INST, D_IN), what="h_reconstructed", axes="batch, inst, d_in"),
        h_rec,
        {
            "The reconstruction uses the unnormalised decoder: decode with self.W_dec_normalized.": decode(W_dec) + b_dec,
            "The reconstruction forgets to add b_dec back after decoding.": decode(W_dec_unit),
        },
        otherwise="`h_reconstructed` does not match acts @ W_dec_normalized + b_dec.",
    )
    reconstruction = (h_rec - x).pow(2)
    diagnose(
        expect_tensor(loss_dict["L_reconstruction"], (batch, N_INST), what='loss_dict["L_reconstruction"]', axes="batch, inst"),
        reconstruction.mean(-1),
        {"L_reconstruction is summed over d_in; average it (mean over d_in).": reconstruction.sum(-1)},
        otherwise="L_reconstruction should be the mean over d_in of (h_reconstructed - h)².",
    )
    diagnose(
        expect_tensor(loss_dict["L_sparsity"], (batch, N_INST), what='loss_dict["L_sparsity"]', axes="batch, inst"),
        z.sum(-1),
        {
            "L_sparsity is averaged over latents; the L1 norm sums over d_sae.": z.mean(-1),
            "L_sparsity is the L2 norm; use the L1 norm (sum of absolute values).": z.norm(dim=-1),
        },
        otherwise="L_sparsity should be the L1 norm of acts, summed over d_sae.",
    )
    per_input = reconstruction.mean(-1) + sae.cfg.sparsity_coeff * z.sum(-1)
    actual_loss = expect_tensor(loss.reshape(()) if isinstance(loss, Tensor) and loss.numel() == 1 else loss, (), what="loss", axes="a scalar")
    diagnose(
        actual_loss,
        per_input.mean(0).sum(),
        {
            "The loss is averaged over instances; sum over instances (they train independently).": per_input.mean(),
            "The loss is summed over the batch; average over the batch.": per_input.sum(),
            "The loss leaves out sparsity_coeff: total = reconstruction + sparsity_coeff * sparsity.": (reconstruction.mean(-1) + z.sum(-1)).mean(0).sum(),
            "The loss leaves out the sparsity term.": reconstruction.mean(-1).mean(0).sum(),
        },
        otherwise="The loss should be (L_reconstruction + sparsity_coeff * L_sparsity), averaged over the batch and summed over instances.",
    )
    return "activations, reconstruction, both loss terms and the total"


# max_cosine_similarity --------------------------------------------------------------------


@check("max_cosine_similarity")
def test_max_cosine_similarity(learner: object) -> str:
    function = learner_callable(learner, "max_cosine_similarity")
    W_dec = torch.randn(N_INST, D_SAE, D_IN) * torch.rand(N_INST, D_SAE, 1) * 3
    features = torch.randn(N_INST, N_FEATURES, D_IN) * torch.rand(N_INST, N_FEATURES, 1) * 2
    device = get_device()
    output = call_learner(function, W_dec.to(device), features.to(device), what="max_cosine_similarity")
    if isinstance(output, Tensor) and output.shape == (N_INST, D_SAE):
        raise CheckFailure("You took the maximum over features for each latent; take it over latents for each feature, giving [inst, feats].")
    actual = expect_tensor(output, (N_INST, N_FEATURES), what="max_cosine_similarity", axes="inst, feats")
    W, f = W_dec.double(), features.double()
    dots = torch.einsum("ifd,isd->ifs", f, W)
    norms_f, norms_W = f.norm(dim=-1)[:, :, None], W.norm(dim=-1)[:, None, :]
    cosine = dots / (norms_f * norms_W)
    diagnose(
        actual,
        cosine.max(-1).values,
        {
            "The decoder rows are not normalised: divide by each row's norm before the dot product.": (dots / norms_f).max(-1).values,
            "The feature directions are not normalised: divide by each feature's norm before the dot product.": (dots / norms_W).max(-1).values,
            "Neither side is normalised: use cosine similarity, not the raw dot product.": dots.max(-1).values,
            "You took the absolute cosine; a latent pointing opposite to a feature does not recover it.": cosine.abs().max(-1).values,
        },
        otherwise="For each feature, return the largest cosine similarity with any decoder row.",
    )
    return "cosines normalised on both sides, best latent per feature"


# resampling -------------------------------------------------------------------------------


def _dead_mask() -> Tensor:
    """Dead latents in instances 0 and 2 (several), none in instance 1."""
    dead = torch.zeros(N_INST, D_SAE, dtype=torch.bool)
    dead[0, [1, 4]] = True
    dead[2, [0, 2, 3, 6]] = True
    return dead


def _frac_active(dead: Tensor, device: torch.device) -> Tensor:
    return torch.where(dead, 0.0, torch.rand(dead.shape) * 0.5 + 0.01).to(device)


def _snapshot(sae: reference.ToySAE) -> dict[str, Tensor]:
    return {
        "W_enc": sae.W_enc.detach().cpu().double().clone(),
        "W_dec": sae.W_dec.detach().cpu().double().clone(),
        "b_enc": sae.b_enc.detach().cpu().double().clone(),
    }


def _check_live_untouched_and_biases(before: dict[str, Tensor], after: dict[str, Tensor], dead: Tensor, what: str) -> None:
    live = ~dead
    if not torch.equal(before["W_enc"].transpose(1, 2)[live], after["W_enc"].transpose(1, 2)[live]) or not torch.equal(
        before["W_dec"][live], after["W_dec"][live]
    ) or not torch.equal(before["b_enc"][live], after["b_enc"][live]):
        raise CheckFailure(f"`{what}` changed live latents; only latents with frac_active_in_window == 0 may change.")
    if after["b_enc"][dead].abs().max() > 0:
        raise CheckFailure(f"`{what}` leaves a non-zero encoder bias on resampled latents; set b_enc to 0 for them.")


def _check_returned_mask(returned: object, dead: Tensor, what: str) -> None:
    if not isinstance(returned, Tensor) or returned.shape != dead.shape or not torch.equal(returned.cpu().bool(), dead):
        raise CheckFailure(f"`{what}` should return the boolean mask [inst, d_sae] of the latents it resampled (the dead ones).")


@check("resample_simple")
def test_resample_simple(learner: object) -> str:
    resample = learner_callable(learner, "resample_simple")
    for tied in (False, True):
        sae, dead, scale = _reference_sae(tied=tied), _dead_mask(), 0.3
        before = _snapshot(sae)
        returned = call_learner(_no_grad(resample), sae, _frac_active(dead, sae.W_enc.device), scale, what="resample_simple", may_change={"self"})
        after = _snapshot(sae)
        if tied and torch.equal(before["W_enc"], after["W_enc"]):
            raise CheckFailure("For a tied SAE nothing changed: set the dead latents' W_enc columns (there is no _W_dec).")
        _check_live_untouched_and_biases(before, after, dead, "resample_simple")
        _check_returned_mask(returned, dead, "resample_simple")
        encoder = after["W_enc"].transpose(1, 2)[dead]  # [n_dead, d_in]
        decoder = after["W_dec"][dead]
        if tied:
            if not torch.allclose(encoder.norm(dim=-1), torch.full((len(encoder),), scale, dtype=torch.float64), atol=1e-5):
                raise CheckFailure("For a tied SAE, each resampled W_enc column should be a unit direction times resample_scale.")
            continue
        if not torch.allclose(decoder.norm(dim=-1), torch.ones(len(decoder), dtype=torch.float64), atol=1e-5):
            raise CheckFailure("The resampled decoder rows do not have unit norm: normalise the random direction.")
        if torch.allclose(encoder, decoder, atol=1e-5):
            raise CheckFailure("The encoder columns equal the decoder rows: scale them down by resample_scale.")
        if not torch.allclose(encoder, decoder * scale, atol=1e-5):
            raise CheckFailure("Each resampled encoder column should be its decoder row times resample_scale.")
        if torch.allclose(decoder, decoder[:1].expand_as(decoder), atol=1e-4):
            raise CheckFailure("Every dead latent got the same direction: draw one random direction per dead latent.")
    return "only dead latents change, unit directions, scaled encoders, zero biases, tied and untied"


def _candidate_sae() -> tuple[reference.ToySAE, Tensor, Tensor, Tensor]:
    """An SAE whose generate_batch returns copies of 4 candidate inputs per instance with very different losses.

    Returns the SAE, the dead mask, the candidates [4, inst, d_in] and their reconstruction losses [4, inst].
    """
    d_sae = 40
    sae = _reference_sae(d_sae=d_sae)
    device = sae.W_enc.device
    dead = torch.zeros(N_INST, d_sae, dtype=torch.bool)
    dead[:, :30] = True
    with torch.no_grad():
        sae.W_enc[:, :, :30] *= 3  # dead columns with other norms than live ones
        scales = torch.tensor([0.05, 0.4, 1.0, 2.5], device=device)[:, None, None]
        candidates = F.normalize(torch.randn(4, N_INST, D_IN, device=device), dim=-1) * scales + sae.b_dec
        losses = reference.ToySAE.forward(sae, candidates)[0]["L_reconstruction"]
    repeats = lambda batch_size: candidates.repeat(-(-batch_size // 4), 1, 1)[:batch_size]  # noqa: E731
    sae.generate_batch = repeats  # the learner's code must draw through self.generate_batch
    return sae, dead, candidates.cpu().double(), losses.cpu().double()


@check("resample_advanced")
def test_resample_advanced(learner: object) -> str:
    resample = learner_callable(learner, "resample_advanced")
    counts = torch.zeros(4, N_INST, dtype=torch.float64)
    for _ in range(4):
        sae, dead, candidates, losses = _candidate_sae()
        before = _snapshot(sae)
        scale = 0.2
        returned = call_learner(_no_grad(resample), sae, _frac_active(dead, sae.W_enc.device), scale, what="resample_advanced", may_change={"self"})
        after = _snapshot(sae)
        _check_live_untouched_and_biases(before, after, dead, "resample_advanced")
        _check_returned_mask(returned, dead, "resample_advanced")
        b_dec = sae.b_dec.detach().cpu().double()
        for inst in range(N_INST):
            decoder = after["W_dec"][inst][dead[inst]]  # [n_dead, d_in]
            counts[:, inst] += _match_candidates(decoder, candidates[:, inst], b_dec[inst])
            live_norm = before["W_enc"][inst][:, ~dead[inst]].norm(dim=0).mean()
            all_norm = before["W_enc"][inst].norm(dim=0).mean()
            encoder = after["W_enc"][inst][:, dead[inst]].T
            direction = F.normalize(decoder, dim=-1)
            diagnose(
                encoder,
                direction * live_norm * scale,
                {
                    "The encoder scale uses the mean norm of all encoder columns; use only the live latents' columns.": direction * all_norm * scale,
                    "The encoder columns are not scaled by the mean live encoder norm times resample_scale.": direction * scale,
                    "The encoder columns are the bare directions: scale them by resample_scale times the mean live encoder norm.": direction,
                },
                otherwise="Each resampled encoder column should be its decoder direction times resample_scale times the mean norm of the live encoder columns.",
            )
    frequency = counts / counts.sum(0)
    expected = losses.pow(2) / losses.pow(2).sum(0)
    distance = lambda probabilities: (frequency - probabilities).abs().sum(0).max() / 2  # noqa: E731
    if distance(expected) > 0.12:
        uniform = torch.full_like(expected, 0.25)
        proportional = losses / losses.sum(0)
        if distance(uniform) < distance(expected) and distance(uniform) <= distance(proportional):
            raise CheckFailure("Inputs are drawn uniformly; draw them with probability proportional to the squared reconstruction loss.")
        if distance(proportional) < distance(expected):
            raise CheckFailure("Inputs are drawn in proportion to the loss; use the squared reconstruction loss.")
        raise CheckFailure("Inputs are not drawn with probability proportional to their squared reconstruction loss.")
    return "loss²-weighted sampling, centred unit decoders, live-norm encoders, zero biases"


def _match_candidates(decoder: Tensor, candidates: Tensor, b_dec: Tensor) -> Tensor:
    """How many new decoder rows equal each candidate, centred and normalised; name other forms."""
    forms = {
        "right": F.normalize(candidates - b_dec, dim=-1),
        "The new decoder rows are not centred: subtract b_dec from the input before normalising.": F.normalize(candidates, dim=-1),
        "The new decoder rows are not normalised: divide the centred input by its norm.": candidates - b_dec,
    }
    for description, rows in forms.items():
        matches = (decoder[:, None, :] - rows[None, :, :]).abs().amax(-1) < 1e-4  # [n_dead, 4]
        if matches.any(-1).all():
            if description != "right":
                raise CheckFailure(description)
            return matches.double().sum(0)
    raise CheckFailure(
        "The new decoder rows are not inputs from `self.generate_batch(batch_size)`, centred and normalised; "
        "draw the batch with self.generate_batch and use the chosen inputs."
    )

