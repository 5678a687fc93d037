"""Checks for Part 4 (SAEs on the toy model). Call them from the notebook, e.g. `test_forward(ToySAE)`.

The shapes used differ from each other (3 instances, d_in 4, 6 features, 7 latents) so that a
transposed weight or a reduction over the wrong axis fails instead of passing by accident; each
check then repeats on the shapes where hidden assumptions break (a tied SAE, one instance, a
batch of one, d_in equal to d_sae, an instance with nothing to do).

Learner code always gets copies of the check's inputs; expectations come from the originals, and
every tensor the SAE holds is guarded against in-place changes. Where training depends on an
exercise, the check backpropagates through the learner's code and compares the gradients.
Statistical verdicts compare counts with bounds that a correct implementation exceeds with
probability below 1e-9 (`binomial_tolerance`), so they never depend on how many random numbers
the learner's code draws, or in which order.
"""

import contextlib
import functools
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from part_utils.device import get_device
from part_utils.reference import part1_toy_models as toy
from part_utils.reference import part4_toy_sae as reference
from tests.checking import (
    call_learner,
    check,
    check_random_directions,
    CheckFailure,
    close,
    diagnose,
    expect_tensor,
    first_gradient_mismatch,
    frequencies_match,
    gradients,
    inputs_clear_of_kinks,
    learner_callable,
    NotImplementedYet,
)
from tests.sampling import check_sparse_unit_sample

N_INST, D_IN, N_FEATURES, D_SAE = 3, 4, 6, 7
FALSE_ALARM = 1e-9  # the chance that a correct implementation fails any one check


def _toy_model(n_inst: int = N_INST, d_hidden: int = D_IN, n_features: int = N_FEATURES, device: torch.device | None = None) -> toy.ToyModel:
    """A frozen-to-be toy model with standard-normal weights and feature probabilities 0.1 to 0.4 by instance."""
    model = toy.ToyModel(
        toy.ToyModelConfig(n_inst=n_inst, n_features=n_features, d_hidden=d_hidden),
        feature_probability=torch.linspace(0.1, 0.4, n_inst)[:, None],
        device=device if device is not None else get_device(),
    )
    with torch.no_grad():
        model.W.normal_()
    return model


def _reference_sae(*, tied: bool = False, n_inst: int = N_INST, d_in: int = D_IN, d_sae: int = D_SAE) -> reference.ToySAE:
    """A reference SAE with random weights of varied norms and non-zero biases."""
    cfg = reference.ToySAEConfig(n_inst=n_inst, d_in=d_in, d_sae=d_sae, sparsity_coeff=0.3, tied_weights=tied)
    sae = reference.ToySAE(cfg, _toy_model(n_inst=n_inst, d_hidden=d_in))
    with torch.no_grad():
        sae.W_enc.normal_()
        if sae._W_dec is not None:
            sae._W_dec.copy_(torch.randn_like(sae._W_dec) * (torch.rand(n_inst, d_sae, 1, device=sae._W_dec.device) * 2.9 + 0.1))
        sae.b_enc.normal_(0.0, 0.5)
        sae.b_dec.normal_(0.0, 0.5)
    return sae


def _no_grad(function: Callable[..., object]) -> Callable[..., object]:
    """Run learner code under torch.no_grad(), as train_sae runs resampling."""

    @functools.wraps(function)  # keeps the learner's signature, so snapshots name the arguments
    def run(*args: object, **kwargs: object) -> object:
        with torch.no_grad():
            return function(*args, **kwargs)

    return run


def _float64(tensor: Tensor) -> Tensor:
    return tensor.detach().to("cpu", torch.float64).clone()


def _lower_first(message: str) -> str:
    """`message` with its first word lower-cased when it is an ordinary word ("The", "Every"), so it reads after a colon."""
    first = message.split(" ", 1)[0]
    return message[0].lower() + message[1:] if first.isalpha() and first[1:].islower() else message


@contextlib.contextmanager
def _case(description: str | None) -> Iterator[None]:
    """Name the special case (a tied SAE, one instance...) in front of any failure inside it."""
    if description is None:
        yield
        return
    try:
        yield
    except NotImplementedYet:
        raise
    except CheckFailure as failure:
        raise CheckFailure(f"{description}: {_lower_first(str(failure))}") from failure


def _naming_tied_decoder(call: Callable[[], object], *, what: str) -> object:
    """Run learner code on a tied SAE, naming the usual crash: reading `self._W_dec`, which is None there."""
    try:
        return call()
    except CheckFailure as failure:
        if "NoneType" in str(failure.__cause__ or ""):
            raise CheckFailure(
                f"`{what}` reads `self._W_dec`, which a tied SAE sets to None: use the `self.W_dec` property, which "
                "gives W_encᵀ there."
            ) from failure
        raise


def _backpropagate(loss: Callable[[], Tensor], tensors: Mapping[str, Tensor], *, what: str) -> dict[str, Tensor]:
    """Gradients of the learner-built `loss()` into `tensors`, naming an in-place operation that autograd still needed."""
    try:
        return call_learner(lambda: gradients(loss(), tensors, what=what), what=f"backpropagating through {what}")
    except CheckFailure as failure:
        if "modified by an inplace operation" in str(failure.__cause__ or ""):
            raise CheckFailure(
                f"Backpropagating through `{what}` fails: an in-place operation (such as `/=` or `+=`) changed a tensor "
                "that autograd still needed; compute a new tensor instead (e.g. `W / (norm + eps)`)."
            ) from failure
        raise


def _model_attributes(model: nn.Module) -> dict[str, Tensor]:
    """Copies of the toy model's plain tensor attributes (feature_probability, importance), which the
    snapshots of the SAE do not reach (its parameters they do)."""
    return {name: value.detach().clone() for name, value in vars(model).items() if isinstance(value, Tensor)}


def _assert_model_untouched(model: nn.Module, before: Mapping[str, Tensor], *, what: str) -> None:
    for name, value in before.items():
        now = getattr(model, name, None)
        if not isinstance(now, Tensor) or now.shape != value.shape or not torch.equal(now, value):
            raise CheckFailure(f"`{what}` changed the toy model's `{name}` (self.model.{name}): the SAE only reads the model.")


# __init__ ---------------------------------------------------------------------------------

INIT_SIZES = {"n_inst": 3, "d_in": 16, "d_sae": 36}  # 1,728 weights per matrix: enough to pin the bound to ~1 %
INIT_TESTS = 3 * 2  # (untied W_enc, _W_dec, tied W_enc) x (bound, uniformity)


def _fans(shape: Sequence[int]) -> tuple[int, int]:
    """(fan_in, fan_out) as torch.nn.init computes them for a tensor of this shape."""
    receptive = math.prod(shape[2:])
    return shape[1] * receptive, shape[0] * receptive


def _uniform_bounds(shape: tuple[int, ...], name: str, axes: str) -> tuple[list[float], dict[str, list[float]]]:
    """The bounds of a Kaiming-uniform `name` (on the whole tensor, or on each instance's matrix), and
    the bounds that plausible mistakes give, by message."""
    whole, per_instance, transposed = shape, shape[1:], shape[1:][::-1]
    kaiming = lambda s, gain=math.sqrt(2): gain * math.sqrt(3 / _fans(s)[0])  # noqa: E731
    mistakes = {
        f"`self.{name}` has Kaiming's scale for the transposed matrix (or mode='fan_out'): initialise an empty tensor of "
        f"`{name}`'s own shape, [{axes}], with the default arguments.": [kaiming(transposed), math.sqrt(6 / _fans(whole)[1])],
        f"`self.{name}` uses nn.Linear's `a=math.sqrt(5)`: call nn.init.kaiming_uniform_ with its default arguments.": [
            kaiming(s, math.sqrt(1 / 3)) for s in (whole, per_instance)
        ],
        f"`self.{name}` uses Kaiming-uniform with gain 1 (nonlinearity='linear'): keep the default (ReLU, gain √2).": [
            kaiming(s, 1.0) for s in (whole, per_instance)
        ],
        f"`self.{name}` is Xavier-uniform: use nn.init.kaiming_uniform_.": [math.sqrt(6 / sum(_fans(s))) for s in (whole, per_instance)],
    }
    return [kaiming(whole), kaiming(per_instance)], mistakes


def _has_bound(values: Tensor, bound: float) -> bool:
    """Whether uniform values on [-bound, bound] explain the largest |value|: none above it, and the
    largest within the slack that n uniform draws stay below with probability FALSE_ALARM / INIT_TESTS."""
    slack = -math.log(FALSE_ALARM / INIT_TESTS) / values.numel()
    largest = float(values.abs().max())
    return bound * (1 - slack) <= largest <= bound * (1 + 1e-6)


def _uniform_between(values: Tensor, bound: float) -> bool:
    """The fraction of values below each of the 19 twentieths of [-bound, bound] is binomial with its twentieth."""
    cuts = torch.linspace(-bound, bound, 21, dtype=torch.float64)[1:-1]
    below = (values[None, :] < cuts[:, None]).double().mean(-1)
    return frequencies_match(below, torch.arange(1, 20, dtype=torch.float64) / 20, values.numel(), false_alarm=FALSE_ALARM / INIT_TESTS)


def _check_kaiming_uniform(weight: Tensor, name: str, axes: str) -> None:
    values = _float64(weight).flatten()
    accepted, mistakes = _uniform_bounds(tuple(weight.shape), name, axes)
    if (values >= 0).all():
        raise CheckFailure(f"Every weight in `self.{name}` is positive (torch.rand?): use nn.init.kaiming_uniform_, symmetric about 0.")
    bound = next((b for b in accepted if _has_bound(values, b)), None)
    if bound is not None:
        if not _uniform_between(values, bound):
            raise CheckFailure(f"`self.{name}` has Kaiming's bound but its values are not uniform between ±bound: use nn.init.kaiming_uniform_.")
        return
    for message, bounds in mistakes.items():
        if any(_has_bound(values, b) for b in bounds):
            raise CheckFailure(message)
    if (values.abs() < values.abs().max() / 2).double().mean() > 0.75:
        raise CheckFailure(f"`self.{name}` looks normally distributed (torch.randn or kaiming_normal_): use nn.init.kaiming_uniform_.")
    raise CheckFailure(
        f"`self.{name}` is not Kaiming-uniform: use nn.init.kaiming_uniform_ with its default arguments on an empty "
        f"tensor of shape [{axes}]."
    )


def _check_independent_draws(weight: Tensor, name: str) -> None:
    """Instances, and the entries along each axis, must be drawn separately, not one draw broadcast."""
    values = weight.detach()
    if any(torch.equal(values[i], values[j]) for i in range(len(values)) for j in range(i)):
        raise CheckFailure(f"Two instances got the same `self.{name}`: initialise the whole [inst, ...] tensor at once, not one matrix copied.")
    for axis, label in ((1, "rows"), (2, "columns")):
        if torch.equal(values, values.narrow(axis, 0, 1).expand_as(values)):
            raise CheckFailure(f"All {label} of each instance's `self.{name}` are the same: draw every entry, not one draw broadcast.")


def _check_parameter(sae: nn.Module, name: str, shape: tuple[int, ...], axes: str, model: nn.Module, kind: str) -> nn.Parameter:
    value = getattr(sae, name, None)
    if not isinstance(value, nn.Parameter):
        raise CheckFailure(f"`self.{name}` should be an nn.Parameter ({kind} SAE), got {type(value).__name__}.")
    if tuple(value.shape) != shape:
        raise CheckFailure(f"`self.{name}` has shape {tuple(value.shape)}; it should be [{axes}] = {shape}.")
    if value.device.type != model.W.device.type:
        raise CheckFailure(f"`self.{name}` is on {value.device}; create it on the model's device (`device=model.W.device`).")
    if value.dtype != torch.float32:
        raise CheckFailure(f"`self.{name}` is {value.dtype}; keep the default float32, like the model.")
    if not value.requires_grad:
        raise CheckFailure(f"`self.{name}` does not require grad, so it would never train: freeze only the toy model.")
    return value


def _check_initialised(sae: nn.Module, cfg: reference.ToySAEConfig, model: toy.ToyModel) -> None:
    kind = "tied" if cfg.tied_weights else "untied"
    if getattr(sae, "model", None) is not model:
        raise CheckFailure("Store the toy model itself as `self.model` (not a copy): generate_batch reads its weights.")
    if getattr(sae, "cfg", None) != cfg:
        raise CheckFailure("Store the config as `self.cfg`: the other methods read it.")
    if any(p.requires_grad for p in model.parameters()):
        raise CheckFailure("The toy model is not frozen: call `model.requires_grad_(False)` so that only the SAE trains.")
    n, d_in, d_sae = cfg.n_inst, cfg.d_in, cfg.d_sae
    W_enc = _check_parameter(sae, "W_enc", (n, d_in, d_sae), "inst, d_in, d_sae", model, kind)
    b_enc = _check_parameter(sae, "b_enc", (n, d_sae), "inst, d_sae", model, kind)
    b_dec = _check_parameter(sae, "b_dec", (n, d_in), "inst, d_in", model, kind)
    weights = {"W_enc": (W_enc, "inst, d_in, d_sae")}
    if cfg.tied_weights:
        if getattr(sae, "_W_dec", "missing") is not None:
            raise CheckFailure("A tied SAE must set `self._W_dec = None`: its decoder is W_encᵀ, not a separate parameter.")
        if any(tuple(p.shape) == (n, d_sae, d_in) for name, p in sae.named_parameters() if not name.startswith("model.")):
            raise CheckFailure("Your tied SAE still creates a separate decoder parameter; tied means W_dec is W_encᵀ.")
    else:
        if not isinstance(getattr(sae, "_W_dec", None), nn.Parameter):
            raise CheckFailure(f"An untied SAE needs `self._W_dec`, an nn.Parameter of shape [inst, d_sae, d_in] = {(n, d_sae, d_in)}.")
        weights["_W_dec"] = (_check_parameter(sae, "_W_dec", (n, d_sae, d_in), "inst, d_sae, d_in", model, kind), "inst, d_sae, d_in")
    if b_enc.detach().abs().max() > 0 or b_dec.detach().abs().max() > 0:
        raise CheckFailure("Both biases must start at zero.")
    for name, (weight, axes) in weights.items():
        if weight.detach().abs().max() == 0:
            raise CheckFailure(f"`self.{name}` is all zeros: initialise it with nn.init.kaiming_uniform_.")
        _check_independent_draws(weight, name)
        _check_kaiming_uniform(weight, name, axes)
    if not cfg.tied_weights and torch.equal(W_enc.detach().transpose(-1, -2), weights["_W_dec"][0].detach()):
        raise CheckFailure("`self._W_dec` is a copy of W_encᵀ: an untied SAE initialises its decoder separately, with its own draw.")


def _initialise(init: Callable[..., object], cfg: reference.ToySAEConfig, model: toy.ToyModel) -> reference.ToySAE:
    sae = reference.ToySAE.__new__(reference.ToySAE)
    call_learner(init, sae, cfg, model, what="__init__")
    return sae


def _check_device_on_meta(init: Callable[..., object]) -> None:
    """Build an SAE for a model on PyTorch's "meta" device, so that parameters made on a fixed device
    (the CPU by default) show up even on a machine without a GPU.

    Only a wrong device is a verdict here: code that cannot run on meta tensors at all was already
    checked on a real device above, so any other failure is ignored.
    """
    cfg = reference.ToySAEConfig(n_inst=2, d_in=3, d_sae=5)
    # Made on the CPU and moved: drawing random numbers on meta tensors first imports seconds of PyTorch code.
    model = toy.ToyModel(toy.ToyModelConfig(n_inst=2, n_features=4, d_hidden=3), device=torch.device("cpu")).to("meta")
    for name, value in _model_attributes(model).items():
        setattr(model, name, value.to("meta"))
    sae = reference.ToySAE.__new__(reference.ToySAE)
    try:
        # Bound in a partial, so that call_learner takes no snapshot: meta tensors hold no values to compare (the
        # calls above were guarded on a real device).
        call_learner(functools.partial(init, sae, cfg, model), what="__init__")
    except CheckFailure:  # the learner's code cannot run on meta tensors: no verdict here
        return
    for name, parameter in sae.named_parameters():
        if parameter.device.type != "meta" and not name.startswith("model."):
            raise CheckFailure(f"`self.{name}` is on {parameter.device}, not on the model's device: create it with `device=model.W.device`.")


@check("__init__")
def test_init(learner: object) -> str:
    init = learner_callable(learner, "__init__", owner_hint="ToySAE")
    for tied in (False, True):
        with _case("For a tied SAE" if tied else None):
            cfg = reference.ToySAEConfig(**INIT_SIZES, tied_weights=tied)
            model = _toy_model(n_inst=cfg.n_inst, d_hidden=cfg.d_in)
            _check_initialised(_initialise(init, cfg, model), cfg, model)
    _check_device_on_meta(init)
    return "untied and tied: shapes, Kaiming-uniform weights drawn per instance, zero biases, the model's device, frozen model"


# W_dec_normalized -------------------------------------------------------------------------

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


def _normalised(W: Tensor, eps: float) -> Tensor:
    return W / (W.norm(dim=-1, keepdim=True) + eps)


def _normalising_mistakes(W: Tensor, W_enc: Tensor | None, eps: float) -> dict[str, Tensor]:
    """What plausible wrong versions return for the raw decoder W (and, untied, the encoder W_enc)."""
    mistakes = {
        "The decoder is returned unnormalised: divide each row by its norm.": W,
        "You normalised over the wrong dimension: each latent's row (over d_in, the last axis) must have unit norm.": W / (W.norm(dim=-2, keepdim=True) + eps),
        "You normalised each instance's whole matrix at once; normalise every latent's row separately (dim=-1, keepdim=True).": W / (W.norm(dim=(-2, -1), keepdim=True) + eps),
        "You normalised over instances (dim 0); normalise every latent's row over d_in (the last axis).": W / (W.norm(dim=0, keepdim=True) + eps),
        "You divided by the squared norm; divide by the norm itself.": W / (W.pow(2).sum(-1, keepdim=True) + eps),
        "You divided by the L1 norm (sum of absolute values); use the L2 norm, ‖w‖ = sqrt(sum of squares).": W / (W.abs().sum(-1, keepdim=True) + eps),
        "You added ε inside the square root; the text adds it to the norm itself: w / (‖w‖ + ε).": W / (W.pow(2).sum(-1, keepdim=True) + eps).sqrt(),
    }
    if W_enc is not None:
        mistakes["You normalised W_encᵀ, but an untied SAE has its own decoder: use the `self.W_dec` property."] = _normalised(W_enc.transpose(-1, -2), eps)
    return mistakes


def _call_normaliser(getter: Callable[..., object], sae: reference.ToySAE) -> object:
    try:
        return _naming_tied_decoder(lambda: call_learner(getter, sae, what="W_dec_normalized"), what="W_dec_normalized")
    except CheckFailure as failure:
        if "must match the size of tensor b" in str(failure.__cause__ or ""):
            raise CheckFailure(
                "The norms [inst, d_sae] do not broadcast against W_dec [inst, d_sae, d_in]: keep the reduced axis "
                "(norm(dim=-1, keepdim=True))."
            ) from failure
        raise


def _check_normalised_rows(getter: Callable[..., object], tied: bool) -> None:
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
        otherwise="The rows of your W_dec_normalized are not W_dec's rows divided by (their norm + cfg.weight_normalize_eps).",
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
    actual = _backpropagate(lambda: (output * upstream.to(output.device, output.dtype)).sum(), {name: weight}, what="W_dec_normalized")
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
            "W_dec_normalized has the right values but not the gradient of W_dec / (‖W_dec‖ + ε): part of it is cut off "
            "from the graph (.detach(), .data or torch.no_grad())."
        ),
    )


@check("W_dec_normalized")
def test_W_dec_normalized(learner: object) -> str:
    getter = learner_callable(learner, "W_dec_normalized", owner_hint="ToySAE", as_property=True)
    for tied in (False, True):
        with _case("For a tied SAE" if tied else None):
            _check_normalised_rows(getter, tied)
            _check_normalised_gradient(getter, tied)
    return "unit rows, ε added to the norm (finite for a zero row), gradients through the norm, W_dec left as it is, tied and untied"


# generate_batch ---------------------------------------------------------------------------

GENERATE_BATCH = 20_000
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
        raise CheckFailure("`generate_batch` drew fewer than batch_size examples from the model: call self.model.generate_batch(batch_size).")
    if any(close(h, _hidden(W, x)) for x in candidates):
        return
    x = candidates[0]
    n_inst, d_in, n_features = W.shape
    diagnose(
        h,
        _hidden(W, x),
        {
            "Your h has no negative values: the hidden vector is W x itself; the ReLU only comes after Wᵀ, in the model's output.": F.relu(_hidden(W, x)),
            "Every instance gets instance 0's features: use each instance's own features, x[:, inst].": _hidden(W, x[:, :1].expand_as(x)),
            "Your h sums the features of all instances: contract only the feats axis, per instance (einsum 'inst d_in feats, batch inst feats -> batch inst d_in').": torch.einsum("ihf,bjf->bih", W, x),
            "W is reshaped instead of transposed or indexed by its axes: W is [inst, d_in, feats]; contract its feats axis with x's.": torch.einsum("ifh,bif->bih", W.reshape(n_inst, n_features, d_in), x),
        },
        otherwise="Your h is not W x for the features that self.model.generate_batch returned: contract W's feats axis with x's feats axis, per instance.",
    )


def _recovered_features(h: Tensor, W: Tensor) -> Tensor:
    """The features x with W x = h, per instance (W has full column rank), rounded to 1e-5 so that
    exact zeros, ones and shared magnitudes stay exact after the least-squares round trip."""
    solution = torch.linalg.lstsq(W[None].expand(h.shape[0], -1, -1, -1), h[..., None]).solution[..., 0]
    if not close(_hidden(W, solution), h, rtol=1e-4, atol=1e-4):
        raise CheckFailure("Your h is not W x for any features x: compute it from the model's W and features (self.model.generate_batch).")
    return torch.round(solution * 1e5) / 1e5


@check("generate_batch")
def test_generate_batch(learner: object) -> str:
    generate = learner_callable(learner, "generate_batch", owner_hint="ToySAE")
    cfg = reference.ToySAEConfig(n_inst=N_INST, d_in=GENERATE_D_IN, d_sae=D_SAE)
    sae = reference.ToySAE(cfg, _toy_model(d_hidden=GENERATE_D_IN))
    recorder = _RecordingFeatures(sae.model)
    sae.model.generate_batch = recorder  # an instance attribute: self.model.generate_batch(...) records its draws
    output = call_learner(_no_grad(generate), sae, GENERATE_BATCH, what="generate_batch")  # the snapshot guards the model too
    if isinstance(output, Tensor) and output.shape == (GENERATE_BATCH, N_INST, N_FEATURES):
        raise CheckFailure(
            "`generate_batch` returned something of shape [batch, inst, feats] (the features x, or the model's output): "
            "the SAE's data is the hidden vector h = W x, [batch, inst, d_in]."
        )
    h = expect_tensor(output, (GENERATE_BATCH, N_INST, GENERATE_D_IN), what="generate_batch", axes="batch, inst, d_in")
    W = _float64(sae.model.W)
    if recorder.batches:
        _check_hidden_of_drawn_features(h, W, recorder.batches)
        return "h = W x from the model's own features"
    # Features drawn by the learner's own code: they must follow the model's distribution.
    features = _recovered_features(h, W)
    probability, importance = _float64(sae.model.feature_probability), _float64(sae.model.importance)
    check_sparse_unit_sample(features, probability, importance, what="the features behind your h")
    return "h = W x, with features distributed as the model's"


# forward ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ForwardCase:
    description: str | None
    tied: bool = False
    n_inst: int = N_INST
    d_in: int = D_IN
    d_sae: int = D_SAE
    batch: int = 32


FORWARD_CASES = (
    ForwardCase(None),
    ForwardCase("For a tied SAE", tied=True),
    ForwardCase("With one instance, a batch of one and d_in = d_sae = 5", n_inst=1, d_in=5, d_sae=5, batch=1),
)
# Where `_sae_terms` can cut the graph, and the sentence naming a loss whose gradient matches that cut.
GRADIENT_CUTS = {
    "decoder": "No gradient reaches the decoder: W_dec_normalized is detached (.detach() or .data) where you decode with it.",
    "encoder": "No gradient reaches W_enc: it is detached (.detach() or .data) where you encode with it.",
    "acts when decoding": "`acts` is detached where you decode it, so the reconstruction error cannot train the encoder: decode acts itself.",
    "b_dec when centring": "b_dec is detached where you subtract it from h: it must receive gradient there too.",
    "b_dec when adding back": "b_dec is detached where you add it back after decoding: it must receive gradient there too.",
    "sparsity": "The sparsity term carries no gradient (.detach(), .item() or torch.no_grad() around it), so the L1 penalty trains nothing.",
    "reconstruction": "The reconstruction term carries no gradient (.detach(), .item() or torch.no_grad() around it), so the SAE cannot learn to reconstruct.",
}


@dataclass
class SAETerms:
    pre_acts: Tensor
    acts: Tensor
    h_reconstructed: Tensor
    reconstruction: Tensor
    sparsity: Tensor
    loss: Tensor


def _sae_terms(p: Mapping[str, Tensor], x: Tensor, *, coeff: float, eps: float, cut: str | None = None) -> SAETerms:
    """The reference forward in float64 on the parameters `p`; `cut` detaches the graph at one place."""
    keep = lambda tensor, place: tensor.detach() if cut == place else tensor  # noqa: E731
    W_dec = p["_W_dec"] if "_W_dec" in p else p["W_enc"].transpose(-1, -2)
    W_unit = keep(_normalised(W_dec, eps), "decoder")
    pre_acts = torch.einsum("bid,ids->bis", x - keep(p["b_dec"], "b_dec when centring"), keep(p["W_enc"], "encoder")) + p["b_enc"]
    acts = F.relu(pre_acts)
    h_reconstructed = torch.einsum("bis,isd->bid", keep(acts, "acts when decoding"), W_unit) + keep(p["b_dec"], "b_dec when adding back")
    reconstruction = (h_reconstructed - x).pow(2).mean(-1)
    sparsity = acts.sum(-1)
    loss = (keep(reconstruction, "reconstruction") + coeff * keep(sparsity, "sparsity")).mean(0).sum()
    return SAETerms(pre_acts, acts, h_reconstructed, reconstruction, sparsity, loss)


def _sae_parameters(sae: reference.ToySAE) -> dict[str, nn.Parameter]:
    return {name: parameter for name, parameter in sae.named_parameters() if not name.startswith("model.")}


def _reference_gradients(p: Mapping[str, Tensor], x: Tensor, *, coeff: float, eps: float, cut: str | None = None) -> dict[str, Tensor]:
    leaves = {name: value.clone().requires_grad_(True) for name, value in p.items()}
    loss = _sae_terms(leaves, x, coeff=coeff, eps=eps, cut=cut).loss
    grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
    return {name: torch.zeros_like(leaf) if grad is None else grad for (name, leaf), grad in zip(leaves.items(), grads)}


def _forward_inputs(case: ForwardCase) -> tuple[reference.ToySAE, Tensor]:
    """An SAE and a batch h whose every pre-activation is clear of the ReLU's kink, so that float32 and
    float64 code agree on which latents fire and get the same gradients."""
    sae = _reference_sae(tied=case.tied, n_inst=case.n_inst, d_in=case.d_in, d_sae=case.d_sae)
    p = {name: _float64(value) for name, value in _sae_parameters(sae).items()}
    device = sae.W_enc.device
    h = inputs_clear_of_kinks(
        lambda: torch.randn(case.batch, case.n_inst, case.d_in),
        lambda h: [_sae_terms(p, h.double(), coeff=0.0, eps=sae.cfg.weight_normalize_eps).pre_acts],
    )
    return sae, h.to(device)


def _acts_mistakes(p: Mapping[str, Tensor], x: Tensor, tied: bool) -> dict[str, Tensor]:
    encode = lambda inputs, W=p["W_enc"]: torch.einsum("bid,ids->bis", inputs, W)  # noqa: E731
    centred = x - p["b_dec"]
    mistakes = {
        "`acts` ignores b_dec: subtract b_dec from h before encoding.": F.relu(encode(x) + p["b_enc"]),
        "`acts` has negative values: apply the ReLU after adding b_enc.": encode(centred) + p["b_enc"],
        "`acts` adds b_dec before encoding; it should be subtracted.": F.relu(encode(x + p["b_dec"]) + p["b_enc"]),
        "b_enc is added after the ReLU; it belongs inside it: ReLU((h - b_dec) W_enc + b_enc).": F.relu(encode(centred)) + p["b_enc"],
        "`acts` leaves out b_enc: ReLU((h - b_dec) W_enc + b_enc).": F.relu(encode(centred)),
        "`acts` subtracts b_enc; add it: ReLU((h - b_dec) W_enc + b_enc).": F.relu(encode(centred) - p["b_enc"]),
    }
    if not tied:
        W_dec_t = p["_W_dec"].transpose(-1, -2)
        mistakes["`acts` encodes with the decoder (W_decᵀ); an untied SAE encodes with W_enc."] = F.relu(encode(centred, W_dec_t) + p["b_enc"])
    return mistakes


def _reconstruction_mistakes(p: Mapping[str, Tensor], acts: Tensor, eps: float, tied: bool) -> dict[str, Tensor]:
    W_dec = p["_W_dec"] if not tied else p["W_enc"].transpose(-1, -2)
    decode = lambda W: torch.einsum("bis,isd->bid", acts, W)  # noqa: E731
    W_unit = _normalised(W_dec, eps)
    mistakes = {
        "The reconstruction uses the unnormalised decoder: decode with self.W_dec_normalized.": decode(W_dec) + p["b_dec"],
        "The reconstruction forgets to add b_dec back after decoding.": decode(W_unit),
        "The reconstruction subtracts b_dec after decoding; add it back.": decode(W_unit) - p["b_dec"],
        "The decoder is normalised over the wrong axis: use self.W_dec_normalized (each latent's row over d_in).": decode(W_dec / (W_dec.norm(dim=-2, keepdim=True) + eps)) + p["b_dec"],
    }
    if not tied:
        W_enc_t = p["W_enc"].transpose(-1, -2)
        message = "The reconstruction decodes with W_encᵀ; an untied SAE decodes with its own decoder, self.W_dec_normalized."
        mistakes[message] = decode(_normalised(W_enc_t, eps)) + p["b_dec"]
        mistakes[message + " "] = decode(W_enc_t) + p["b_dec"]
    return mistakes


def _reconstruction_terms(p: Mapping[str, Tensor], latents: Tensor, eps: float, tied: bool) -> Tensor:
    W_dec = p["W_enc"].transpose(-1, -2) if tied else p["_W_dec"]
    return torch.einsum("bis,isd->bid", latents, _normalised(W_dec, eps)) + p["b_dec"]


def _loss_term(value: object, shape: tuple[int, int], key: str) -> Tensor:
    if isinstance(value, Tensor) and value.numel() == 1 and math.prod(shape) > 1:
        raise CheckFailure(
            f'loss_dict["{key}"] is a single number (F.mse_loss or a reduction over everything): keep one value per input '
            "and instance, [batch, inst], reducing only over d_in or d_sae."
        )
    return expect_tensor(value, shape, what=f'loss_dict["{key}"]', axes="batch, inst")


def _acts_fallback(acts: Tensor, expected: Tensor, pre_acts: Tensor) -> str:
    """Name a non-ReLU nonlinearity: right wherever the ReLU is on, wrong only where it should give 0."""
    on = pre_acts > 0
    if torch.allclose(acts[on], expected[on], rtol=1e-4, atol=1e-5) and not torch.allclose(acts[~on], expected[~on], atol=1e-5):
        return "`acts` is right where the pre-activation is positive but not where it is negative: there it must be exactly 0 (a ReLU, not a leaky or smooth version)."
    return "`acts` does not match ReLU((h - b_dec) W_enc + b_enc): check the einsum axes and the biases."


def _scalar_loss(loss: object, n_inst: int) -> Tensor:
    if isinstance(loss, float):
        raise CheckFailure("`loss` is a Python float (from .item()?): return the tensor itself, so that training can backpropagate through it.")
    if isinstance(loss, Tensor) and loss.numel() == n_inst > 1:
        raise CheckFailure("`loss` has one value per instance: sum them into a single scalar.")
    if isinstance(loss, Tensor) and loss.numel() == 1:
        loss = loss.reshape(())
    return expect_tensor(loss, (), what="loss", axes="a scalar")


def _check_forward_values(result: object, p: Mapping[str, Tensor], x: Tensor, case: ForwardCase, coeff: float, eps: float) -> Tensor:
    """Compare the four outputs with the reference in float64; returns the learner's loss tensor."""
    if not isinstance(result, tuple) or len(result) != 4:
        raise CheckFailure("`forward` should return a tuple of four things: (loss_dict, loss, acts, h_reconstructed).")
    loss_dict, loss, acts, h_reconstructed = result
    if not isinstance(loss_dict, dict) or set(loss_dict) != {"L_reconstruction", "L_sparsity"}:
        raise CheckFailure('`loss_dict` should be a dict with exactly the keys "L_reconstruction" and "L_sparsity".')
    b, n, d_in, d_sae = case.batch, case.n_inst, case.d_in, case.d_sae
    right = _sae_terms(p, x, coeff=coeff, eps=eps)
    z = right.acts
    actual_acts = expect_tensor(acts, (b, n, d_sae), what="acts", axes="batch, inst, d_sae")
    diagnose(actual_acts, z, _acts_mistakes(p, x, case.tied), otherwise=_acts_fallback(actual_acts, z, right.pre_acts))
    diagnose(
        expect_tensor(h_reconstructed, (b, n, d_in), what="h_reconstructed", axes="batch, inst, d_in"),
        right.h_reconstructed,
        {
            **_reconstruction_mistakes(p, z, eps, case.tied),
            "The reconstruction decodes the pre-activations; decode acts, after the ReLU.": _reconstruction_terms(p, right.pre_acts, eps, case.tied),
        },
        otherwise="`h_reconstructed` does not match acts @ W_dec_normalized + b_dec.",
    )
    squared = (right.h_reconstructed - x).pow(2)
    diagnose(
        _loss_term(loss_dict["L_reconstruction"], (b, n), "L_reconstruction"),
        right.reconstruction,
        {
            "L_reconstruction is summed over d_in; average it (mean over d_in).": squared.sum(-1),
            "L_reconstruction compares h_reconstructed with h - b_dec; compare it with h itself.": (right.h_reconstructed - (x - p["b_dec"])).pow(2).mean(-1),
            "L_reconstruction is the root of the mean squared error; leave out the square root.": squared.mean(-1).sqrt(),
            "L_reconstruction is the norm of the error; use the mean over d_in of its square.": squared.sum(-1).sqrt(),
            "L_reconstruction uses the absolute error; square it: the mean over d_in of (h_reconstructed - h)².": squared.sqrt().mean(-1),
        },
        otherwise="L_reconstruction should be the mean over d_in of (h_reconstructed - h)².",
    )
    diagnose(
        _loss_term(loss_dict["L_sparsity"], (b, n), "L_sparsity"),
        right.sparsity,
        {
            "L_sparsity is averaged over latents; the L1 norm sums over d_sae.": z.mean(-1),
            "L_sparsity is the L2 norm; use the L1 norm (sum of absolute values).": z.norm(dim=-1),
            "L_sparsity is the sum of squares; use the L1 norm (sum of absolute values).": z.pow(2).sum(-1),
            "L_sparsity includes sparsity_coeff: keep the bare L1 norm in loss_dict and apply the coefficient only in the total.": coeff * z.sum(-1),
            "L_sparsity uses the pre-activations; take the L1 norm of acts, after the ReLU.": right.pre_acts.abs().sum(-1),
        },
        otherwise="L_sparsity should be the L1 norm of acts, summed over d_sae.",
    )
    rec, sparsity = right.reconstruction, right.sparsity
    diagnose(
        _scalar_loss(loss, n),
        right.loss,
        {
            "The loss is averaged over instances; sum over instances (they train independently).": (rec + coeff * sparsity).mean(),
            "The loss is summed over the batch; average over the batch.": (rec + coeff * sparsity).sum(),
            "The loss leaves out sparsity_coeff: total = reconstruction + sparsity_coeff * sparsity.": (rec + sparsity).mean(0).sum(),
            "The loss leaves out the sparsity term.": rec.mean(0).sum(),
            "The loss multiplies the wrong term by sparsity_coeff: total = reconstruction + sparsity_coeff * sparsity.": (coeff * rec + sparsity).mean(0).sum(),
            "The loss applies sparsity_coeff twice: L_sparsity is the bare L1 norm, and only the total multiplies it by the coefficient.": (rec + coeff**2 * sparsity).mean(0).sum(),
        },
        otherwise="The loss should be (L_reconstruction + sparsity_coeff * L_sparsity), averaged over the batch and summed over instances.",
    )
    return loss


def _check_forward_gradients(loss: Tensor, sae: reference.ToySAE, p: Mapping[str, Tensor], x: Tensor) -> None:
    coeff, eps = sae.cfg.sparsity_coeff, sae.cfg.weight_normalize_eps
    actual = _backpropagate(lambda: loss, _sae_parameters(sae), what="loss")
    expected = _reference_gradients(p, x, coeff=coeff, eps=eps)
    name = first_gradient_mismatch(actual, expected)
    if name is None:
        return
    diagnose(
        actual,
        expected,
        {message: _reference_gradients(p, x, coeff=coeff, eps=eps, cut=cut) for cut, message in GRADIENT_CUTS.items()},
        otherwise=(
            f"The loss has the right value but the wrong gradient for `{name}`: a step on its way to the loss is cut off "
            "from the graph (.detach(), .data, .item() or torch.no_grad())."
        ),
        rtol=1e-4,
        atol=1e-6,
    )


@check("forward")
def test_forward(learner: object) -> str:
    forward = learner_callable(learner, "forward", owner_hint="ToySAE")
    for case in FORWARD_CASES:
        with _case(case.description):
            sae, h = _forward_inputs(case)
            p = {name: _float64(value) for name, value in _sae_parameters(sae).items()}
            x = _float64(h)
            result = _naming_tied_decoder(lambda: call_learner(forward, sae, h.clone(), what="forward"), what="forward")
            loss = _check_forward_values(result, p, x, case, sae.cfg.sparsity_coeff, sae.cfg.weight_normalize_eps)
            _check_forward_gradients(loss, sae, p, x)
    return "activations, reconstruction, both loss terms, the total and its gradients; tied, one instance, a batch of one"


# max_cosine_similarity --------------------------------------------------------------------

COSINE_CASES = ((None, D_SAE), ("With as many latents as features", N_FEATURES), ("With a single latent", 1))


def _cosine_mistakes(W: Tensor, f: Tensor) -> dict[str, Tensor]:
    dots = torch.einsum("ifd,isd->ifs", f, W)
    norms_f, norms_W = f.norm(dim=-1)[:, :, None], W.norm(dim=-1)[:, None, :]
    cosine = dots / (norms_f * norms_W)
    mistakes = {
        "The decoder rows are not normalised: divide by each row's norm before the dot product.": (dots / norms_f).max(-1).values,
        "The feature directions are not normalised: divide by each feature's norm before the dot product.": (dots / norms_W).max(-1).values,
        "Neither side is normalised: use cosine similarity, not the raw dot product.": dots.max(-1).values,
        "You took the absolute cosine; a latent pointing opposite to a feature does not recover it.": cosine.abs().max(-1).values,
        "You squared the cosine; a latent pointing opposite to a feature does not recover it.": cosine.pow(2).max(-1).values,
        "You averaged over latents; take the maximum over latents for each feature.": cosine.mean(-1),
        "The decoder is normalised over latents (dim 1); normalise each decoder row over d_in (the last axis).": torch.einsum(
            "ifd,isd->ifs", F.normalize(f, dim=-1), F.normalize(W, dim=1)
        ).max(-1).values,
        "The features are normalised over features (dim 1); normalise each feature direction over d_in (the last axis).": torch.einsum(
            "ifd,isd->ifs", F.normalize(f, dim=1), F.normalize(W, dim=-1)
        ).max(-1).values,
    }
    if W.shape[1] == f.shape[1]:  # only here does a maximum over the wrong axis have the right shape
        mistakes["You took the maximum over features for each latent; take it over latents for each feature."] = cosine.max(-2).values
    return mistakes


def _check_cosine_case(function: Callable[..., object], d_sae: int) -> None:
    W_dec = F.normalize(torch.randn(N_INST, d_sae, D_IN), dim=-1) * (torch.rand(N_INST, d_sae, 1) * 2.9 + 0.1)
    features = F.normalize(torch.randn(N_INST, N_FEATURES, D_IN), dim=-1) * (torch.rand(N_INST, N_FEATURES, 1) * 1.9 + 0.1)
    device = get_device()
    output = call_learner(function, W_dec.clone().to(device), features.clone().to(device), what="max_cosine_similarity")
    if isinstance(output, tuple) and hasattr(output, "indices"):
        raise CheckFailure("`max_cosine_similarity` returned torch.max's (values, indices) pair: return its `.values`.")
    if isinstance(output, Tensor) and not torch.is_floating_point(output):
        raise CheckFailure("`max_cosine_similarity` returned integers (indices, from argmax?): return the cosine values themselves.")
    if isinstance(output, Tensor) and d_sae != N_FEATURES and output.shape == (N_INST, d_sae):
        raise CheckFailure("You took the maximum over features for each latent; take it over latents for each feature, giving [inst, feats].")
    actual = expect_tensor(output, (N_INST, N_FEATURES), what="max_cosine_similarity", axes="inst, feats")
    W, f = W_dec.double(), features.double()
    expected = torch.einsum("ifd,isd->ifs", F.normalize(f, dim=-1), F.normalize(W, dim=-1)).max(-1).values
    diagnose(actual, expected, _cosine_mistakes(W, f), otherwise="For each feature, return the largest cosine similarity with any decoder row.")


@check("max_cosine_similarity")
def test_max_cosine_similarity(learner: object) -> str:
    function = learner_callable(learner, "max_cosine_similarity")
    for description, d_sae in COSINE_CASES:
        with _case(description):
            _check_cosine_case(function, d_sae)
    return "cosines normalised on both sides, best latent per feature, inputs left as they are"


# resampling: shared -----------------------------------------------------------------------

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
        return cls(dict(_sae_parameters(sae)), _float64(sae.W_enc), _float64(sae.W_dec), _float64(sae.b_enc), _model_attributes(sae.model))

    def assert_parameters_kept(self, sae: reference.ToySAE, *, what: str) -> None:
        for name, parameter in self.parameters.items():
            now = getattr(sae, name)
            if now is not parameter:
                raise CheckFailure(
                    f"`{what}` replaced `self.{name}` with a new object; the optimiser still holds the old one, so the new "
                    f"values would never train: write into it in place (`self.{name}.data[...] = ...`)."
                )
            if now.dtype != torch.float32:
                raise CheckFailure(f"`{what}` turned `self.{name}` into {now.dtype}: write float32 values into it.")
        _assert_model_untouched(sae.model, self.model, what=what)


def _resample(resample: Callable[..., object], sae: reference.ToySAE, frac_active: Tensor, scale: float, *, what: str, **kwargs: object) -> tuple[object, SAEState]:
    """Call the learner's resampling method (under no_grad, as train_sae does) and check what it must keep."""
    before = SAEState.of(sae)
    returned = call_learner(
        _no_grad(resample), sae, frac_active.clone(), scale, what=what, may_change=RESAMPLED_PARAMETERS, **kwargs
    )
    before.assert_parameters_kept(sae, what=what)
    return returned, before


def _check_returned_mask(returned: object, expected: Tensor, device: torch.device, *, what: str, skipped: Tensor | None = None) -> None:
    shape = tuple(expected.shape)
    if not isinstance(returned, Tensor):
        raise CheckFailure(f"`{what}` should return the boolean mask [inst, d_sae] of the latents it resampled; it returned {type(returned).__name__}.")
    if tuple(returned.shape) != shape:
        raise CheckFailure(f"`{what}` returned a mask of shape {tuple(returned.shape)}; it should be [inst, d_sae] = {shape}.")
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
            f"`{what}` marks the dead latents of the instance it skipped (all losses zero) as resampled: return only the "
            "latents you resampled."
        )
    raise CheckFailure(f"`{what}` should return the boolean mask [inst, d_sae] of exactly the latents it resampled.")


def _changed_latents(before: SAEState, sae: reference.ToySAE) -> Tensor:
    """[inst, d_sae]: latents whose encoder column, decoder row or encoder bias changed."""
    W_enc, W_dec, b_enc = _float64(sae.W_enc), _float64(sae.W_dec), _float64(sae.b_enc)
    return (W_enc != before.W_enc).any(1) | (W_dec != before.W_dec).any(-1) | (b_enc != before.b_enc)


def _check_only_these_changed(before: SAEState, sae: reference.ToySAE, resampled: Tensor, *, what: str, rare: Tensor | None = None) -> None:
    """Only the `resampled` latents may change, and each of them must."""
    changed = _changed_latents(before, sae)
    rare = torch.zeros_like(resampled) if rare is None else rare
    if (changed & rare).any() and not (changed & ~resampled & ~rare).any():
        raise CheckFailure(
            f"`{what}` resampled a latent that fired, if rarely (frac_active_in_window 2e-6): only latents whose "
            "frac_active_in_window is exactly 0 are dead."
        )
    if (changed & ~resampled).any():
        raise CheckFailure(f"`{what}` changed live latents; only latents with frac_active_in_window == 0 may change.")
    W_enc, W_dec = _float64(sae.W_enc), _float64(sae.W_dec)
    if (resampled & (W_enc == before.W_enc).all(1) & (W_dec == before.W_dec).all(-1)).any():
        raise CheckFailure(
            f"Some dead latents kept their old weights: `{what}` must write new ones into the parameters in place, e.g. "
            "`self.W_enc.data[inst, :, latent] = ...` (indexing with a list or mask first makes a copy)."
        )
    if resampled.any() and _float64(sae.b_enc)[resampled].abs().max() > 0:
        raise CheckFailure(f"`{what}` leaves a non-zero encoder bias on resampled latents; set b_enc to 0 for them.")


# resample_simple --------------------------------------------------------------------------

SIMPLE_SCALE = 0.3
SIMPLE_D_SAE = 160  # 260 dead latents in all: enough for the tests of how the directions spread


def _simple_case(tied: bool) -> tuple[reference.ToySAE, Tensor, Tensor, Tensor]:
    """(SAE, frac_active, dead, rare): instance 0 has 100 dead latents and one that fired rarely,
    instance 1 none dead, instance 2 only dead ones."""
    sae = _reference_sae(tied=tied, d_sae=SIMPLE_D_SAE)
    order = torch.randperm(SIMPLE_D_SAE)
    dead = torch.zeros(N_INST, SIMPLE_D_SAE, dtype=torch.bool)
    dead[0, order[:100]] = True
    dead[2] = True
    rare = torch.zeros_like(dead)
    rare[0, order[100]] = True
    frac_active = torch.where(dead, 0.0, torch.rand(dead.shape) * 0.5 + 0.01)
    frac_active[rare] = 2e-6  # fired once in a window of 500 batches of 1024
    return sae, frac_active.to(sae.W_enc.device), dead, rare


def _check_simple_weights(before: SAEState, sae: reference.ToySAE, dead: Tensor, tied: bool) -> None:
    encoder = _float64(sae.W_enc).transpose(1, 2)[dead]  # [n_dead, d_in]
    old_direction = F.normalize(before.W_dec[dead], dim=-1)
    if tied:
        norms = encoder.norm(dim=-1)
        if torch.allclose(norms, torch.ones_like(norms), atol=1e-5):
            raise CheckFailure("Each resampled W_enc column should be a unit direction times resample_scale; yours are unit vectors.")
        if not torch.allclose(norms, torch.full_like(norms, SIMPLE_SCALE), atol=1e-5):
            raise CheckFailure("For a tied SAE, each resampled W_enc column should be a unit direction times resample_scale.")
        direction = encoder / SIMPLE_SCALE
    else:
        direction = _float64(sae.W_dec)[dead]
        if not torch.allclose(direction.norm(dim=-1), torch.ones(len(direction), dtype=torch.float64), atol=1e-5):
            raise CheckFailure("The resampled decoder rows do not have unit norm: normalise the random direction.")
        diagnose(
            encoder,
            direction * SIMPLE_SCALE,
            {
                "The encoder columns equal the decoder rows: scale them down by resample_scale.": direction,
                "The encoder columns are divided by resample_scale; multiply the direction by it.": direction / SIMPLE_SCALE,
            },
            otherwise="Each resampled encoder column should be its decoder row times resample_scale.",
            atol=1e-5,
        )
    if torch.allclose(direction, old_direction, atol=1e-4):
        raise CheckFailure("The resampled latents keep their old direction (rescaled): draw a fresh random direction for each.")
    instance, latent = dead.nonzero(as_tuple=True)
    check_random_directions(direction, instance, latent, what="resample_simple", false_alarm=FALSE_ALARM / 2)  # tied and untied


@check("resample_simple")
def test_resample_simple(learner: object) -> str:
    resample = learner_callable(learner, "resample_simple", owner_hint="ToySAE")
    for tied in (False, True):
        with _case("For a tied SAE" if tied else None):
            sae, frac_active, dead, rare = _simple_case(tied)
            returned, before = _resample(resample, sae, frac_active, SIMPLE_SCALE, what="resample_simple")
            if tied and torch.equal(before.W_enc, _float64(sae.W_enc)):
                raise CheckFailure("Nothing changed: set the dead latents' W_enc columns (there is no _W_dec).")
            _check_only_these_changed(before, sae, dead, what="resample_simple", rare=rare)
            _check_returned_mask(returned, dead, sae.W_enc.device, what="resample_simple")
            _check_simple_weights(before, sae, dead, tied)
    with _case("With no dead latent at all"):
        sae = _reference_sae()
        returned, before = _resample(resample, sae, torch.rand(N_INST, D_SAE, device=sae.W_enc.device) + 0.01, SIMPLE_SCALE, what="resample_simple")
        none = torch.zeros(N_INST, D_SAE, dtype=torch.bool)
        _check_only_these_changed(before, sae, none, what="resample_simple")
        _check_returned_mask(returned, none, sae.W_enc.device, what="resample_simple")
    return "only dead latents change, fresh directions spread over the sphere, scaled encoders, zero biases, tied and untied"


# resample_advanced ------------------------------------------------------------------------
#
# The SAE below is built so that the losses of its inputs are known: three live latents per
# instance read and write along the first three axes (the first with gain 1, which gives the
# sparsity term; the others never fire), and every dead latent has a very negative bias, so it
# never fires. Each instance sees one *spike* input with a very large reconstruction loss and
# four groups of inputs, each group with its own (reconstruction, sparsity) losses; the inputs
# of a group differ slightly along the third axis, so that every input can be told from every
# other by its direction. The chance of drawing each group follows exactly from the batch the
# learner's code drew, so the verdict does not depend on its random numbers; 800 dead latents
# per instance make every plausible wrong weighting miss its cells by several tolerances (the
# suite checks these margins), and a batch of 1,024 inputs makes a repeat certain when drawing
# with replacement (the chance of none is below e^-300 for any weights), so sampling without
# replacement shows as well.

ADVANCED_SCALE = 0.2
ADVANCED_BATCH = 1024
SPIKE_ROW = 7
N_GROUPS = 4
DESIGN_RECONSTRUCTION = ((128.0, 0.25, 0.1, 8.0, 2.0), (128.0, 1.0, 0.5, 0.5, 0.5), (32.0, 0.1, 4.0, 0.25, 0.25))  # spike, groups
DESIGN_SPARSITY = ((0.0, 5.0, 0.0, 50.0, 1.0), (0.0, 10.0, 5.0, 0.0, 5.0), (0.0, 0.0, 0.0, 20.0, 1.0))
LIVE_GAINS = ((1.0, 0.5, 2.0), (1.0, 0.25, 3.0), (1.0, 1.5, 0.2))  # live encoder norms: means 1.17, 1.42, 0.9
LIVE_BIAS, DEAD_BIAS = -0.05, -1000.0
DIRECTION_SPREAD = (1.0, 0.2, 0.4, 0.6, 0.8)  # a non-firing component per group keeps the groups' directions apart
ROW_SPREAD = 0.25  # how far the last input of a group leans along the third axis, relative to its residual


def _row_groups(batch_size: int) -> Tensor:
    """The group of every row of a designed batch: 0 for the spike row, 1..N_GROUPS in turn for the others."""
    others = 1 + torch.arange(max(batch_size - 1, 0)) % N_GROUPS
    if batch_size <= SPIKE_ROW:
        return (1 + torch.arange(batch_size) % N_GROUPS)
    return torch.cat([others[:SPIKE_ROW], torch.zeros(1, dtype=torch.long), others[SPIKE_ROW:]])


def _centred_design(profile: int) -> Tensor:
    """[groups, d_in]: h - b_dec for the spike and each group of one instance profile."""
    rows = []
    for group, (loss, sparsity) in enumerate(zip(DESIGN_RECONSTRUCTION[profile], DESIGN_SPARSITY[profile])):
        spread = DIRECTION_SPREAD[group] * math.sqrt(loss)
        first = sparsity - LIVE_BIAS if sparsity > 0 else 0.0  # the gain-1 latent fires with sparsity as its activation
        rows.append([first, -spread, 0.0, math.sqrt(max(4 * loss - spread**2, 0.0))])  # mean of squares over d_in = loss
    return torch.tensor(rows, dtype=torch.float64)


class _DesignedBatches:
    """Stands in for the toy model's generate_batch: features whose hidden vectors W x are the designed
    inputs, so that self.generate_batch and self.model.generate_batch followed by W give the same batch."""

    def __init__(self, model: toy.ToyModel, centred: Tensor, b_dec: Tensor) -> None:
        self.W = model.W.detach().clone()
        self.centred, self.b_dec = centred, b_dec  # [inst, groups, d_in], [inst, d_in]: float64
        self.sizes: list[int] = []

    def rows(self, batch_size: int) -> Tensor:
        """[batch, inst, d_in]: the designed batch of this size, in float64."""
        groups = _row_groups(batch_size)
        rank = torch.zeros(batch_size)  # each row's place within its group, from 0 to just below 1
        for group in range(N_GROUPS + 1):
            members = groups == group
            rank[members] = torch.arange(int(members.sum()), dtype=torch.float32) / max(1, int(members.sum()))
        centred = self.centred[:, groups]  # [inst, batch, d_in]
        lean = torch.zeros_like(centred)
        # Negative, so the third live latent stays off; scaled by the part the SAE leaves unreconstructed (all but the
        # first axis), so each input's reconstruction loss grows by at most ROW_SPREAD² / 4 and its sparsity not at all.
        lean[..., 2] = -ROW_SPREAD * centred[..., 1:].norm(dim=-1) * rank.double()
        return (centred + lean + self.b_dec[:, None, :]).transpose(0, 1)

    def __call__(self, batch_size: int) -> Tensor:
        self.sizes.append(int(batch_size))
        # W is a signed permutation in each instance, so Wᵀ h gives features with W x = h exactly.
        features = torch.einsum("ihf,bih->bif", self.W.double().cpu(), self.rows(int(batch_size)))
        return features.to(self.W.device, torch.float32)


@dataclass
class AdvancedCase:
    """A designed SAE for resample_advanced, with what the check needs to know about it."""

    description: str | None
    sae: reference.ToySAE
    frac_active: Tensor
    dead: Tensor
    skipped: Tensor  # [inst]: instances whose losses are all zero
    recorder: _DesignedBatches
    statistics: bool  # whether this case is big enough for the test of the sampling weights

    @property
    def resampled(self) -> Tensor:
        return self.dead & ~self.skipped[:, None]


def _signed_permutations(n_inst: int, d: int) -> Tensor:
    eye = torch.eye(d)
    return torch.stack([eye[torch.randperm(d)] * torch.where(torch.rand(d) < 0.5, -1.0, 1.0) for _ in range(n_inst)])


def _advanced_case(kinds: Sequence[str], profiles: Sequence[int], *, d_sae: int, tied: bool = False, description: str | None = None) -> AdvancedCase:
    """kinds per instance: "mixed" (3 live latents, the rest dead), "no dead", "no live" or "zero loss"."""
    n_inst, d_in = len(kinds), D_IN
    live_at = [2, d_sae // 2, d_sae - 2]
    cfg = reference.ToySAEConfig(n_inst=n_inst, d_in=d_in, d_sae=d_sae, sparsity_coeff=0.3, tied_weights=tied)
    sae = reference.ToySAE(cfg, _toy_model(n_inst=n_inst, d_hidden=d_in, n_features=d_in))
    W_enc = F.normalize(torch.randn(n_inst, d_in, d_sae), dim=1) * (torch.rand(n_inst, 1, d_sae) * 3 + 1)
    W_dec = torch.randn(n_inst, d_sae, d_in) * (torch.rand(n_inst, d_sae, 1) + 0.5)
    b_enc = torch.full((n_inst, d_sae), DEAD_BIAS)
    b_dec = torch.randn(n_inst, d_in) * 0.5
    centred = torch.stack([_centred_design(profile) for profile in profiles])
    dead = torch.ones(n_inst, d_sae, dtype=torch.bool)
    for inst, profile in enumerate(profiles):
        for axis, (latent, gain) in enumerate(zip(live_at, LIVE_GAINS[profile])):
            W_enc[inst, :, latent] = gain * torch.eye(d_in)[axis]
            W_dec[inst, latent] = (0.5 + axis) * torch.eye(d_in)[axis]
            b_enc[inst, latent] = LIVE_BIAS
        dead[inst, live_at] = kinds[inst] == "no live"
        if kinds[inst] == "no dead":
            dead[inst] = False
        if kinds[inst] == "zero loss":  # every input at b_dec = 0, and nothing fires: h_reconstructed = h exactly
            b_dec[inst], centred[inst] = 0.0, 0.0
    with torch.no_grad():
        sae.model.W.copy_(_signed_permutations(n_inst, d_in))
        sae.W_enc.copy_(W_enc)
        if not tied:
            sae._W_dec.copy_(W_dec)
        sae.b_enc.copy_(b_enc)
        sae.b_dec.copy_(b_dec)
    recorder = _DesignedBatches(sae.model, centred, _float64(sae.b_dec))
    sae.model.generate_batch = recorder  # an instance attribute: both ways of drawing a fresh batch come here
    frac_active = torch.where(dead, 0.0, torch.rand(dead.shape) * 0.5 + 0.01).to(sae.W_enc.device)
    skipped = torch.tensor([kind == "zero loss" for kind in kinds])
    return AdvancedCase(description, sae, frac_active, dead, skipped, recorder, statistics=d_sae > 100)


def _main_advanced_case() -> AdvancedCase:
    return _advanced_case(["mixed"] * 3, [0, 1, 2], d_sae=803)


def _edge_advanced_cases() -> list[AdvancedCase]:
    return [
        _advanced_case(["no dead", "mixed"], [0, 1], d_sae=10, description="With an instance that has no dead latent"),
        _advanced_case(["no live", "mixed"], [1, 2], d_sae=10, description="With an instance whose latents are all dead"),
        _advanced_case(["zero loss", "mixed"], [2, 0], d_sae=10, description="With an instance whose reconstruction losses are all zero"),
        _advanced_case(["mixed", "mixed"], [0, 2], d_sae=10, tied=True, description="For a tied SAE"),
    ]


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
        if not case.recorder.sizes:
            raise CheckFailure(
                "`resample_advanced` never drew a fresh batch: call self.generate_batch(batch_size) (or "
                "self.model.generate_batch, then W) and compute its reconstruction losses."
            )
        h = case.recorder.rows(case.recorder.sizes[0])
        terms = _sae_terms(_can_fire(parameters), h, coeff=case.sae.cfg.sparsity_coeff, eps=case.sae.cfg.weight_normalize_eps)
        return cls(h.transpose(0, 1), terms.h_reconstructed.transpose(0, 1), terms.reconstruction.T, terms.sparsity.T, _row_groups(len(h)))


def _can_fire(parameters: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The parameters of the latents that can fire on the designed inputs: the dead ones' bias keeps them
    at exactly 0 (the suite checks it), so leaving them out changes no term and saves most of the work."""
    keep = (parameters["b_enc"] > DEAD_BIAS / 2).any(0)
    latent_axes = {"W_enc": 2, "_W_dec": 1, "b_enc": 1}
    return {name: value.index_select(latent_axes[name], keep.nonzero()[:, 0]) if name in latent_axes else value for name, value in parameters.items()}


def _decoder_forms(batch: DrawnBatch, b_dec: Tensor, inst: int) -> dict[str, Tensor]:
    """[batch, d_in] rows that a resampled decoder row can equal, by the sentence naming each (the right one first)."""
    h, h_rec, b = batch.h[inst], batch.h_reconstructed[inst], b_dec[inst]
    return {
        "right": F.normalize(h - b, dim=-1),
        "The new decoder rows are not centred: subtract b_dec from the input before normalising.": F.normalize(h, dim=-1),
        "The new decoder rows are not normalised: divide the centred input by its norm.": h - b,
        "The new decoder rows add b_dec to the input; centre it by subtracting b_dec.": F.normalize(h + b, dim=-1),
        "The new decoder rows point along the residual h - h_reconstructed; use the input itself, centred (h - b_dec).": F.normalize(h - h_rec, dim=-1),
        "The new decoder rows point along the residual h_reconstructed - h; use the input itself, centred (h - b_dec).": F.normalize(h_rec - h, dim=-1),
        "The new decoder rows are the reconstructions, not the inputs: use the input h itself, centred (h - b_dec).": F.normalize(h_rec - b, dim=-1),
    }


def _match_rows(rows: Tensor, forms: Tensor) -> Tensor | None:
    """The index of the form each row equals (within float32 rounding), or None when some row equals none."""
    distance = torch.cdist(rows, forms)  # [rows, forms]
    matches = distance <= 2e-4 * forms.norm(dim=-1).clamp_min(1.0)[None, :]
    return distance.argmin(-1) if bool(matches.any(-1).all()) else None


def _chosen_inputs(case: AdvancedCase, batch: DrawnBatch, inst: int, latents: Tensor) -> tuple[Tensor, Tensor]:
    """The new decoder directions of one instance's resampled latents, and the batch row each came from."""
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
    if _match_rows(F.normalize(rows, dim=-1), F.normalize(batch.h[inst] - b_dec[inst], dim=-1)) is not None:
        raise CheckFailure("The new decoder rows point the right way but do not have unit norm: normalise each row over d_in.")
    for other in range(len(b_dec)):
        if other != inst and _match_rows(F.normalize(rows, dim=-1), F.normalize(batch.h[other] - b_dec[other], dim=-1)) is not None:
            raise CheckFailure("The new decoder rows of one instance come from another instance's inputs: use h[chosen, inst] for instance inst.")
    raise CheckFailure(
        "The new decoder rows are not inputs of the fresh batch (self.generate_batch(batch_size)), centred (minus b_dec) "
        "and normalised: draw the batch, then use the chosen inputs of each instance."
    )


def _encoder_norms(before: SAEState, live: Tensor, inst: int) -> dict[str, Tensor]:
    """The mean encoder norm under the right reading (live columns, before resampling, 1 if none) and wrong ones."""
    norms = before.W_enc.norm(dim=1)  # [inst, d_sae]: each latent's encoder column
    one = torch.tensor(1.0, dtype=torch.float64)
    if not live[inst].any():
        return {"live": one, "all": norms[inst].mean(), "global": norms[live].mean() if live.any() else one, "axis": one, "decoder": one}
    return {
        "decoder": before.W_dec[inst][live[inst]].norm(dim=-1).mean(),
        "live": norms[inst][live[inst]].mean(),
        "all": norms[inst].mean(),
        "global": norms[live].mean(),
        "axis": before.W_enc[inst][:, live[inst]].norm(dim=1).mean(),
    }


def _check_advanced_encoder(case: AdvancedCase, before: SAEState, batch: DrawnBatch, inst: int, latents: Tensor, directions: Tensor, chosen: Tensor) -> None:
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
        "The encoder scale uses the mean norm of all encoder columns; use only the live latents' columns.": directions * norm["all"] * scale,
        "The encoder scale averages the live encoder norms of all instances; use the instance's own live columns.": directions * norm["global"] * scale,
        "The encoder scale takes norms over the wrong axis of W_enc: each latent's column is W_enc[inst][:, latent], of size d_in.": directions * norm["axis"] * scale,
        "The encoder scale uses the live latents' decoder norms; use the norms of their encoder columns, W_enc[inst][:, live].": directions * norm["decoder"] * scale,
        "The encoder columns are not scaled by the mean live encoder norm, only by resample_scale.": directions * scale,
        "The encoder columns are scaled by the mean live encoder norm but not by resample_scale.": directions * norm["live"],
        "The encoder columns are the bare directions: scale them by resample_scale times the mean live encoder norm.": directions,
        "The encoder columns use the unnormalised centred input; use its normalised direction.": centred * norm["live"] * scale,
    }
    if not live[inst].any():
        mistakes["An instance with no live latent gets zero encoder columns: use 1 as the mean live encoder norm there."] = directions * 0.0
    diagnose(
        encoder,
        directions * norm["live"] * scale,
        mistakes,
        otherwise="Each resampled encoder column should be its decoder direction times resample_scale times the mean norm of the instance's live encoder columns.",
        atol=1e-5,
    )


def _wrong_weightings(L: Tensor, S: Tensor, coeff: float) -> list[tuple[str, Tensor]]:
    """The sampling weights [inst, batch] that plausible mistakes use, from each input's reconstruction
    loss L and sparsity term S, each with the sentence naming it."""
    total, squared = L + coeff * S, L.pow(2)
    shared = "The sampling weights are shared across instances (summed or averaged over them): each instance draws by its own squared losses, loss[:, inst]²."
    sparsity = 'Inputs are drawn by the sparsity term; use the squared reconstruction loss (loss_dict["L_reconstruction"]²).'
    return [
        ("Inputs are drawn uniformly; draw them with probability proportional to the squared reconstruction loss.", torch.ones_like(L)),
        ("Inputs are drawn in proportion to the reconstruction loss itself; square it (weights L_reconstruction²).", L),
        ("Inputs are drawn by the squared total loss (reconstruction + sparsity_coeff × sparsity); use the squared reconstruction loss alone.", total.pow(2)),
        ("Inputs are drawn in proportion to the total loss; use the squared reconstruction loss alone.", total),
        (sparsity, S.pow(2)),
        (sparsity, S),
        ("Inputs are drawn by the reconstruction loss to the fourth power (squared twice); square it once.", squared.pow(2)),
        (shared, squared.sum(0, keepdim=True).expand_as(L)),
        (shared, L.sum(0, keepdim=True).pow(2).expand_as(L)),
        (
            "The squared losses are normalised over instances; each instance draws by its own column, loss[:, inst]² "
            "(torch.multinomial normalises it over the batch for you).",
            squared / squared.sum(0, keepdim=True).clamp_min(1e-300),
        ),
    ]


def _group_probabilities(weights: Tensor, groups: Tensor) -> Tensor:
    """[inst, groups]: the chance that one draw lands in each group, given a weight for every row [inst, batch]."""
    mass = torch.zeros(weights.shape[0], N_GROUPS + 1, dtype=torch.float64).index_add_(1, groups, weights)
    return mass / mass.sum(-1, keepdim=True)


def _counts_match(counts: Tensor, probability: Tensor) -> bool:
    n = int(counts[0].sum())
    return frequencies_match(counts / n, probability, n, false_alarm=FALSE_ALARM) and bool((counts[probability == 0] == 0).all())


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
        raise CheckFailure("The inputs with the largest losses were taken (topk, sort or argmax): draw them at random, with probability proportional to the squared loss.")
    if all(len(row.unique()) == n_draws for row in chosen):
        raise CheckFailure(
            "No input was drawn twice: draw with replacement (torch.multinomial(..., replacement=True)), so that one "
            "input with a large loss can serve several dead latents."
        )
    if (chosen == chosen[:1]).all():
        raise CheckFailure("Every instance got the same draws (the same batch rows): draw for each instance by its own losses.")
    for message, weights in _wrong_weightings(L, S, case.sae.cfg.sparsity_coeff):
        if _counts_match(counts, _group_probabilities(weights, batch.groups)):
            raise CheckFailure(message)
    raise CheckFailure(
        "The inputs chosen for the dead latents are not drawn with probability proportional to their squared "
        "reconstruction loss (independently for each dead latent, with replacement, per instance)."
    )


def _call_advanced(resample: Callable[..., object], case: AdvancedCase) -> tuple[object, SAEState]:
    try:
        return _resample(resample, case.sae, case.frac_active, ADVANCED_SCALE, what="resample_advanced", batch_size=ADVANCED_BATCH)
    except CheckFailure as failure:
        cause = str(failure.__cause__ or "")
        if "without replacement" in cause:
            raise CheckFailure(
                "torch.multinomial draws without replacement by default: pass replacement=True, so that one input can "
                "serve several dead latents."
            ) from failure
        if case.skipped.any() and ("multinomial" in cause or "probabilit" in cause):
            raise CheckFailure("`resample_advanced` cannot draw from all-zero losses: skip an instance whose losses are all zero.") from failure
        raise


def _check_advanced_case(resample: Callable[..., object], case: AdvancedCase) -> None:
    parameters = {name: _float64(value) for name, value in _sae_parameters(case.sae).items()}
    returned, before = _naming_tied_decoder(lambda: _call_advanced(resample, case), what="resample_advanced")
    resampled, skipped = case.resampled, case.dead & case.skipped[:, None]
    if (_changed_latents(before, case.sae) & skipped).any():
        raise CheckFailure("`resample_advanced` resampled an instance whose losses are all zero: skip it and leave its latents as they are.")
    _check_only_these_changed(before, case.sae, resampled, what="resample_advanced")
    _check_returned_mask(returned, resampled, case.sae.W_enc.device, what="resample_advanced", skipped=skipped)
    if not resampled.any():
        return
    batch = DrawnBatch.of(case, parameters)
    chosen = {}
    for inst in range(len(resampled)):
        latents = resampled[inst].nonzero(as_tuple=True)[0]
        if len(latents) > 0:
            directions, chosen[inst] = _chosen_inputs(case, batch, inst, latents)
            _check_advanced_encoder(case, before, batch, inst, latents, directions, chosen[inst])
    if case.statistics:
        _check_sampling(case, batch, torch.stack([chosen[inst] for inst in sorted(chosen)]))


@check("resample_advanced")
def test_resample_advanced(learner: object) -> str:
    resample = learner_callable(learner, "resample_advanced", owner_hint="ToySAE")
    for case in [_main_advanced_case(), *_edge_advanced_cases()]:
        with _case(case.description):
            _check_advanced_case(resample, case)
    return (
        "loss²-weighted draws with replacement, centred unit decoders, live-norm encoders, zero biases; no dead, no live, "
        "all-zero losses, tied"
    )
