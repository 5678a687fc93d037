"""Checks for Part 1 (toy models of superposition). Call them from the notebook, e.g. `test_forward(ToyModel)`."""

import torch
import torch.nn.functional as F
from torch import Tensor

from part_utils.device import get_device
from part_utils.reference import part1_toy_models as reference
from tests.checking import CheckFailure, call_learner, check, diagnose, expect_tensor, learner_callable


def _random_toy_model(n_inst: int = 3, n_features: int = 7, d_hidden: int = 4) -> reference.ToyModel:
    """A reference model with non-trivial weights, a non-zero bias and varied probabilities and importances."""
    cfg = reference.ToyModelConfig(n_inst=n_inst, n_features=n_features, d_hidden=d_hidden)
    probability = torch.linspace(0.05, 0.9, n_inst * n_features).reshape(n_inst, n_features)
    probability = probability[:, torch.randperm(n_features)]
    importance = torch.rand(n_inst, n_features) + 0.1
    model = reference.ToyModel(cfg, feature_probability=probability, importance=importance, device=get_device())
    with torch.no_grad():
        model.W.normal_()
        model.b_final.normal_(0.0, 0.5)
    return model


@check("forward")
def test_forward(learner: object) -> str:
    forward = learner_callable(learner, "forward")
    model = _random_toy_model()
    batch, n_inst, n_feats = 32, model.cfg.n_inst, model.cfg.n_features
    features = torch.rand(batch, n_inst, n_feats) * (torch.rand(batch, n_inst, n_feats) < 0.6)
    with torch.no_grad():
        output = call_learner(forward, model, features.to(model.W.device), what="forward")
    actual = expect_tensor(output, (batch, n_inst, n_feats), what="forward", axes="batch, inst, feats")

    W, b, x = model.W.detach().cpu().double(), model.b_final.detach().cpu().double(), features.double()
    hidden = torch.einsum("ihf,bif->bih", W, x)
    pre_bias = torch.einsum("ihf,bih->bif", W, hidden)
    diagnose(
        actual,
        F.relu(pre_bias + b),
        {
            "The output has negative values where it should not: apply the ReLU after adding b_final.": pre_bias + b,
            "b_final is missing: add it to Wᵀh before the ReLU.": F.relu(pre_bias),
            "b_final is added after the ReLU; it belongs inside it: ReLU(Wᵀh + b_final).": F.relu(pre_bias) + b,
            "You applied a ReLU to the hidden layer; in this model h = Wx is linear (the ReLU comes in Part 2).": F.relu(
                torch.einsum("ihf,bih->bif", W, F.relu(hidden)) + b
            ),
        },
        otherwise="The output does not match ReLU(Wᵀ W x + b_final) per instance: check which axes your einsum or matmul contracts.",
    )
    return f"{n_inst} instances, {n_feats} features, d_hidden {model.cfg.d_hidden}"


def _presence(values: Tensor) -> Tensor:
    return (values != 0).double()


def _check_magnitudes(values: Tensor, *, what: str, reused_draw_hint: bool = False) -> None:
    """Values must lie in [0, 1] and the non-zero ones must look uniform on [0, 1]."""
    if values.min() < 0 or values.max() > 1:
        raise CheckFailure(
            f"`{what}` returned values outside [0, 1]: magnitudes must be uniform on [0, 1] (torch.rand, not torch.randn)."
        )
    present = values[values != 0]
    if present.numel() == 0:
        raise CheckFailure(f"`{what}` returned only zeros: features must be present with their probability.")
    if torch.allclose(present, torch.ones_like(present)):
        raise CheckFailure(f"Every present feature in `{what}` has magnitude 1: draw magnitudes uniformly on [0, 1].")
    quartiles = torch.stack([(present < q).double().mean() for q in (0.25, 0.5, 0.75)])
    if (quartiles - torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64)).abs().max() > 0.02:
        hint = " If you reuse the presence draw as the magnitude, divide it by the probability." if reused_draw_hint else ""
        raise CheckFailure(f"The magnitudes of present features in `{what}` are not uniform on [0, 1].{hint}")


def _frequency_tolerance(probability: Tensor, n: int) -> Tensor:
    return 5 * (probability * (1 - probability) / n).sqrt() + 1e-3


def _check_independent_across(presence: Tensor, axis: int, *, what: str, label: str) -> None:
    """Co-occurrence across slices of `axis` must match the product of the marginals."""
    moved = presence.movedim(axis, -1)
    freq = moved.mean(0)
    joint = torch.einsum("b...i,b...j->...ij", moved, moved) / moved.shape[0]
    excess = joint - freq[..., :, None] * freq[..., None, :]
    off_diagonal = ~torch.eye(moved.shape[-1], dtype=torch.bool)
    if excess[..., off_diagonal].mean() > 0.01:
        raise CheckFailure(
            f"Features in `{what}` are correlated across {label}: draw random numbers of the full "
            f"shape instead of broadcasting one draw over {label}."
        )


@check("generate_batch")
def test_generate_batch(learner: object) -> str:
    generate_batch = learner_callable(learner, "generate_batch")
    model = _random_toy_model(n_inst=6, n_features=7, d_hidden=3)
    batch = 20_000
    output = call_learner(generate_batch, model, batch, what="generate_batch")
    if isinstance(output, Tensor) and output.device.type != model.W.device.type:
        raise CheckFailure(f"`generate_batch` returned a tensor on {output.device}; make it on the model's device ({model.W.device}).")
    values = expect_tensor(output, (batch, 6, 7), what="generate_batch", axes="batch, inst, feats")
    if values.min() < 0 or values.max() > 1:
        _check_magnitudes(values, what="generate_batch")
    probability = model.feature_probability.cpu().double()
    frequency = _presence(values).mean(0)
    tolerance = _frequency_tolerance(probability, batch)
    if ((frequency - probability).abs() > tolerance).any():
        if (frequency > 0.999).all():
            raise CheckFailure("Every feature is present in every example: absent features must be exactly 0.")
        if ((frequency - (1 - probability)).abs() <= tolerance).all():
            raise CheckFailure(
                "Features are present with probability 1 - p: the comparison is reversed (present when the draw is below p)."
            )
        if ((frequency - frequency[:1]).abs() <= tolerance).all():
            raise CheckFailure(
                "Every instance uses the same feature probabilities: use feature_probability[inst, feat] for each instance."
            )
        raise CheckFailure(
            "Features are present with the wrong probability: feature f of instance i must be non-zero with "
            "probability feature_probability[i, f]."
        )
    _check_magnitudes(values, what="generate_batch", reused_draw_hint=True)
    _check_independent_across(_presence(values), 1, what="generate_batch", label="instances")
    _check_independent_across(_presence(values), 2, what="generate_batch", label="features")
    both_present = (values[:, :-1] != 0) & (values[:, 1:] != 0)
    if (values[:, :-1] == values[:, 1:])[both_present].double().mean() > 0.5:
        raise CheckFailure("Present features have the same magnitude in different instances: draw magnitudes for each instance.")
    return f"presence frequencies and magnitudes match on {batch} samples"


@check("calculate_loss")
def test_calculate_loss(learner: object) -> str:
    calculate_loss = learner_callable(learner, "calculate_loss")
    model = _random_toy_model(n_inst=5, n_features=7, d_hidden=3)
    batch = torch.rand(16, 5, 7, dtype=torch.float64)
    out = (batch + 0.3 * torch.randn_like(batch)).clamp_min(0)
    out_for_learner = out.float().to(model.W.device).requires_grad_(True)
    loss = call_learner(calculate_loss, model, out_for_learner, batch.float().to(model.W.device), what="calculate_loss")
    if isinstance(loss, Tensor) and loss.numel() == 5:
        raise CheckFailure("`calculate_loss` returned one loss per instance: sum them into a single scalar.")
    if isinstance(loss, Tensor) and loss.numel() == 1 and not loss.requires_grad:
        raise CheckFailure("`calculate_loss` returned a value cut off from the graph: don't use .item(), .detach() or torch.no_grad().")
    actual = expect_tensor(loss.reshape(()) if isinstance(loss, Tensor) and loss.numel() == 1 else loss, (), what="calculate_loss", axes="a scalar")
    importance = model.importance.cpu().double()
    error = (batch - out).pow(2)
    weighted = importance * error
    diagnose(
        actual,
        weighted.mean((0, 2)).sum(),
        {
            "Importance is missing: weight each feature's squared error by importance[inst, feat].": error.mean((0, 2)).sum(),
            "The loss is averaged over instances; sum over instances (they train independently).": weighted.mean(),
            "The loss is summed over features; average over batch and features.": weighted.sum(2).mean(0).sum(),
            "The loss is summed over the batch; average over batch and features.": weighted.sum(0).mean(-1).sum(),
            "Importance multiplies the difference before squaring; it should weight the squared error.": (importance * (batch - out)).pow(2).mean((0, 2)).sum(),
            "The error is not squared: use (x - x')², not |x - x'|.": (importance * (batch - out).abs()).mean((0, 2)).sum(),
        },
        otherwise="The loss does not match the importance-weighted squared error, averaged over batch and features and summed over instances.",
    )
    return "importance weighting and reductions are right"


def _pair_probability(n_inst: int = 5, n_pairs: int = 3) -> Tensor:
    probability = torch.linspace(0.06, 0.45, n_inst * n_pairs).reshape(n_inst, n_pairs)
    return probability[torch.randperm(n_inst)].to(get_device())


def _paired_output(function: object, name: str, batch: int, probability: Tensor) -> Tensor:
    generate = learner_callable(function, name)
    output = call_learner(generate, batch, probability, what=name)
    n_inst, n_pairs = probability.shape
    return expect_tensor(output, (batch, n_inst, 2 * n_pairs), what=name, axes="batch, inst, 2 * pairs")


def _check_pair_marginals(values: Tensor, probability: Tensor, *, what: str, halved_hint: bool) -> None:
    frequency = _presence(values).mean(0)
    expected = probability.cpu().double().repeat_interleave(2, dim=-1)
    tolerance = _frequency_tolerance(expected, values.shape[0])
    if ((frequency - expected).abs() > tolerance).any():
        if halved_hint and ((frequency - expected / 2).abs() <= tolerance).all():
            raise CheckFailure(
                f"Each feature in `{what}` is present with p/2: make the pair active with probability 2p, then pick one of its two features."
            )
        raise CheckFailure(
            f"Features in `{what}` are present with the wrong probability: both features of pair k must each be present "
            "with feature_probability[inst, k]."
        )


def _blocked_layout(values: Tensor) -> Tensor:
    """Reorder [first features..., second features...] into interleaved pairs."""
    n_pairs = values.shape[-1] // 2
    return torch.stack([values[..., :n_pairs], values[..., n_pairs:]], dim=-1).flatten(-2)


@check("generate_correlated_features")
def test_generate_correlated_features(learner: object) -> str:
    probability, batch = _pair_probability(), 40_000
    values = _paired_output(learner, "generate_correlated_features", batch, probability)
    _check_magnitudes(values, what="generate_correlated_features")
    presence = _presence(values)
    alone = (presence[..., 0::2] != presence[..., 1::2]).double().mean()
    if alone > 0.001:
        blocked = _presence(_blocked_layout(values))
        if (blocked[..., 0::2] != blocked[..., 1::2]).double().mean() < 0.001:
            raise CheckFailure(
                "Your pairs are laid out as [first features..., second features...]; pair k must be features 2k and 2k + 1."
            )
        raise CheckFailure("The two features of a pair are not always present together: use one presence draw per pair.")
    _check_pair_marginals(values, probability, what="generate_correlated_features", halved_hint=False)
    both = (values[..., 0::2] != 0) & (values[..., 1::2] != 0)
    if (values[..., 0::2] == values[..., 1::2])[both].double().mean() > 0.5:
        raise CheckFailure("Both features of a pair get the same magnitude: draw each feature's magnitude independently.")
    _check_independent_across(presence[..., 0::2], 1, what="generate_correlated_features", label="instances")
    _check_independent_across(presence[..., 0::2], 2, what="generate_correlated_features", label="pairs")
    return "pairs co-occur with the right probability"


@check("generate_anticorrelated_features")
def test_generate_anticorrelated_features(learner: object) -> str:
    probability, batch = _pair_probability(), 40_000
    values = _paired_output(learner, "generate_anticorrelated_features", batch, probability)
    _check_magnitudes(values, what="generate_anticorrelated_features")
    presence = _presence(values)
    together = (presence[..., 0::2] * presence[..., 1::2]).mean()
    if together > 0:
        blocked = _presence(_blocked_layout(values))
        if (blocked[..., 0::2] * blocked[..., 1::2]).mean() == 0:
            raise CheckFailure(
                "Your pairs are laid out as [first features..., second features...]; pair k must be features 2k and 2k + 1."
            )
        raise CheckFailure("The two features of a pair are sometimes present together: an anticorrelated pair has at most one present.")
    _check_pair_marginals(values, probability, what="generate_anticorrelated_features", halved_hint=True)
    pair_active = presence[..., 0::2] + presence[..., 1::2]
    _check_independent_across(pair_active, 1, what="generate_anticorrelated_features", label="instances")
    _check_independent_across(pair_active, 2, what="generate_anticorrelated_features", label="pairs")
    return "pairs never co-occur and each feature has the right probability"
