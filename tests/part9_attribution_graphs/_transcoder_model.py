"""The float64 transcoder forward that `transcoder_forward` checks against, each misreading of it, and the cases.

The model runs the reference transcoder's given methods (`pre_activations`, `activation`, `decode`,
`auxk_loss`) on a float64 copy whose parameters are the leaves of the expected gradients; only what the
exercise writes (what is compared with what, the reductions, the order of the counters) varies.
"""

import copy
from dataclasses import dataclass

import torch
from torch import Tensor

from part_utils.reference import part9_attribution_graphs as reference
from tests.checking import KINK_MARGIN

PARAMETERS = ("W_enc", "W_dec", "b_enc", "b_dec")


@dataclass
class TranscoderCase:
    description: str | None
    transcoder: reference.Transcoder
    x: Tensor
    target: Tensor
    training: bool = True


@dataclass(frozen=True)
class TranscoderVariant:
    """The text's forward (the defaults), or one misreading of it."""

    compared_with: str = "target"  # target, x (reconstructs its input)
    aux_residual: str = "target - prediction"  # or x - prediction, target + prediction, prediction - target
    squared: str = "mean"  # mean, sum (over d_out)
    batch: str = "mean"  # mean, sum
    instances: str = "sum"  # sum, mean
    aux: str = "weighted"  # weighted, unweighted, none, default (1/32 whatever the config), on reconstruction
    aux_in_dict: str = "L_aux"  # L_aux, weighted (loss_dict["L_aux"] already times aux_coeff)
    dead: str = "before"  # before, after (read after record_firing counted this batch)
    aux_input: str = "pre_acts"  # pre_acts, acts
    encoder_input: str = "x"  # x, x - b_dec (Part 4's pre-encoder bias)
    records: int = 1  # how many times record_firing counts this batch


@dataclass
class TranscoderTerms:
    acts: Tensor
    h_reconstructed: Tensor
    L_reconstruction: Tensor
    L_aux: Tensor
    loss: Tensor
    steps_since_fired: Tensor


def float64_copy(transcoder: reference.Transcoder) -> reference.Transcoder:
    """A float64 copy (of the reference class) whose parameters are fresh leaves."""
    return copy.deepcopy(transcoder).double().train(transcoder.training)


def counted(steps: Tensor, acts: Tensor, times: int) -> Tensor:
    """The counters after `record_firing(acts)` ran `times` times in training."""
    fired = (acts > 0).any(dim=0)
    for _ in range(times):
        steps = (steps + 1).masked_fill(fired, 0)
    return steps


def transcoder_terms(
    twin: reference.Transcoder, steps: Tensor, case: TranscoderCase, v: TranscoderVariant = TranscoderVariant()
) -> TranscoderTerms:
    """What `v` computes on the float64 `twin`, whose counters were `steps` before the forward."""
    x, target = case.x.detach().cpu().double(), case.target.detach().cpu().double()
    pre_acts = twin.pre_activations(x - twin.b_dec if v.encoder_input == "x - b_dec" else x)
    acts = twin.activation(pre_acts)
    prediction = twin.decode(acts)
    goal = x if v.compared_with == "x" else target
    squared = (prediction - goal).pow(2)
    L_reconstruction = squared.mean(dim=-1) if v.squared == "mean" else squared.sum(dim=-1)
    after = counted(steps, acts, 1) if case.training else steps
    dead = (after if v.dead == "after" else steps) >= twin.cfg.dead_after_steps
    residual = {
        "target - prediction": lambda: goal - prediction,
        "x - prediction": lambda: x - prediction,
        "target + prediction": lambda: goal + prediction,
        "prediction - target": lambda: prediction - goal,
    }[v.aux_residual]()
    L_aux = twin.auxk_loss(acts if v.aux_input == "acts" else pre_acts, residual, dead)
    coefficient = {"weighted": twin.cfg.aux_coeff, "unweighted": 1.0, "none": 0.0, "default": 1 / 32}.get(v.aux, 1.0)
    main = twin.cfg.aux_coeff * L_reconstruction if v.aux == "on reconstruction" else L_reconstruction
    per_input = main + coefficient * L_aux
    per_instance = per_input.mean(dim=0) if v.batch == "mean" else per_input.sum(dim=0)
    loss = per_instance.sum() if v.instances == "sum" else per_instance.mean()
    in_dict = twin.cfg.aux_coeff * L_aux if v.aux_in_dict == "weighted" else L_aux
    final = counted(steps, acts, v.records) if case.training else steps
    return TranscoderTerms(acts, prediction, L_reconstruction, in_dict, loss, final)


def _transcoder(n_inst: int, d_in: int, d_out: int, d_latent: int, k: int, k_aux: int) -> reference.Transcoder:
    """Random weights and biases; latents dead for long, at exactly the threshold, and recently fired."""
    cfg = reference.TranscoderConfig(
        n_inst=n_inst, d_in=d_in, d_out=d_out, d_latent=d_latent, k=k, k_aux=k_aux, aux_coeff=0.3, dead_after_steps=10
    )
    transcoder = reference.Transcoder(cfg)
    with torch.no_grad():
        transcoder.W_enc.copy_(torch.randn_like(transcoder.W_enc))
        transcoder.W_dec.copy_(torch.randn_like(transcoder.W_dec) * (torch.rand(n_inst, d_latent, 1) + 0.5))
        transcoder.b_enc.copy_(torch.randn_like(transcoder.b_enc) * 0.5)
        transcoder.b_dec.copy_(torch.randn_like(transcoder.b_dec) * 0.5)
        steps = torch.randint(0, 9, (n_inst, d_latent))
        for inst in range(n_inst):
            latents = torch.randperm(d_latent)[:4]
            steps[inst, latents[:3]] = 15 + inst
            steps[inst, latents[3]] = cfg.dead_after_steps  # dead from exactly dead_after_steps on (>=)
        transcoder.steps_since_fired.copy_(steps)
    return transcoder


def _kink_distances(transcoder: reference.Transcoder, x: Tensor) -> list[Tensor]:
    """Distances that must all exceed KINK_MARGIN for float32 and float64 to keep the same latents."""
    twin = float64_copy(transcoder)
    with torch.no_grad():
        pre_acts = twin.pre_activations(x.double())
    k, k_aux = twin.cfg.k, twin.cfg.k_aux
    ordered = pre_acts.sort(dim=-1, descending=True).values
    distances = [pre_acts, ordered[..., k - 1] - ordered[..., k]]
    dead = transcoder.steps_since_fired >= twin.cfg.dead_after_steps
    for inst in range(pre_acts.shape[1]):
        among = pre_acts[:, inst, dead[inst]].sort(dim=-1, descending=True).values
        if among.shape[-1] > k_aux:
            distances.append(among[:, k_aux - 1] - among[:, k_aux])
    return distances


def _case(description: str | None, transcoder: reference.Transcoder, batch: int, training: bool) -> TranscoderCase:
    cfg = transcoder.cfg
    for _ in range(200):
        x = torch.randn(batch, cfg.n_inst, cfg.d_in) * 1.5
        if all(bool((distance.abs() > KINK_MARGIN).all()) for distance in _kink_distances(transcoder, x)):
            return TranscoderCase(description, transcoder, x, torch.randn(batch, cfg.n_inst, cfg.d_out), training)
    raise RuntimeError("could not draw transcoder inputs clear of top-k ties")


def transcoder_cases() -> list[TranscoderCase]:
    main = _transcoder(n_inst=2, d_in=6, d_out=6, d_latent=13, k=3, k_aux=6)
    other_sizes = _transcoder(n_inst=3, d_in=7, d_out=5, d_latent=11, k=2, k_aux=3)
    evaluating = _transcoder(n_inst=2, d_in=6, d_out=6, d_latent=13, k=3, k_aux=6)
    return [
        _case(None, main, 12, True),
        _case("With d_in 7 and d_out 5 (input and output in different spaces)", other_sizes, 8, True),
        _case("In evaluation (model.eval(), under torch.no_grad())", evaluating, 6, False),
    ]
