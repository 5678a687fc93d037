"""Exercise 1, `__init__`: parameters of the right shapes, device and dtype, Kaiming-uniform weights drawn per
instance (and per SAE built: no seed inside), zero biases and a frozen toy model, untied and tied."""

import functools
import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from part_utils.reference import part1_toy_models as toy
from part_utils.reference import part4_toy_sae as reference
from tests.checking import CheckFailure, call_learner, check, frequencies_match, learner_callable
from tests.fixtures import toy_model
from tests.part4_toy_sae._common import FALSE_ALARM, _case, _float64, _model_attributes

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
    kaiming = lambda s, gain=math.sqrt(2): gain * math.sqrt(3 / _fans(s)[0])  # noqa: E731, B008
    mistakes = {
        f"`self.{name}` has Kaiming's scale for the transposed matrix (or mode='fan_out'): initialise an empty tensor "
        f"of `{name}`'s own shape, [{axes}], with the default arguments.": [
            kaiming(transposed),
            math.sqrt(6 / _fans(whole)[1]),
        ],
        f"`self.{name}` uses nn.Linear's `a=math.sqrt(5)`: call nn.init.kaiming_uniform_ with its default arguments.": [
            kaiming(s, math.sqrt(1 / 3)) for s in (whole, per_instance)
        ],
        f"`self.{name}` uses Kaiming-uniform with gain 1 (nonlinearity='linear'): keep the default (ReLU, gain √2).": [
            kaiming(s, 1.0) for s in (whole, per_instance)
        ],
        f"`self.{name}` is Xavier-uniform: use nn.init.kaiming_uniform_.": [
            math.sqrt(6 / sum(_fans(s))) for s in (whole, per_instance)
        ],
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
    twentieths = torch.arange(1, 20, dtype=torch.float64) / 20
    return frequencies_match(below, twentieths, values.numel(), false_alarm=FALSE_ALARM / INIT_TESTS)


def _check_kaiming_uniform(weight: Tensor, name: str, axes: str) -> None:
    """The weights are uniform on Kaiming's bound (for the whole tensor or each instance's matrix); otherwise the
    distribution or bound they do follow is named."""
    values = _float64(weight).flatten()
    accepted, mistakes = _uniform_bounds(tuple(weight.shape), name, axes)
    if (values >= 0).all():
        raise CheckFailure(
            f"Every weight in `self.{name}` is positive (torch.rand?): use nn.init.kaiming_uniform_, symmetric about 0."
        )
    bound = next((b for b in accepted if _has_bound(values, b)), None)
    if bound is not None:
        if not _uniform_between(values, bound):
            raise CheckFailure(
                f"`self.{name}` has Kaiming's bound but its values are not uniform between ±bound: use "
                "nn.init.kaiming_uniform_."
            )
        return
    for message, bounds in mistakes.items():
        if any(_has_bound(values, b) for b in bounds):
            raise CheckFailure(message)
    if (values.abs() < values.abs().max() / 2).double().mean() > 0.75:
        raise CheckFailure(
            f"`self.{name}` looks normally distributed (torch.randn or kaiming_normal_): use nn.init.kaiming_uniform_."
        )
    raise CheckFailure(
        f"`self.{name}` is not Kaiming-uniform: use nn.init.kaiming_uniform_ with its default arguments on an empty "
        f"tensor of shape [{axes}]."
    )


def _check_independent_draws(weight: Tensor, name: str) -> None:
    """Instances, and the entries along each axis, must be drawn separately, not one draw broadcast."""
    values = weight.detach()
    if any(torch.equal(values[i], values[j]) for i in range(len(values)) for j in range(i)):
        raise CheckFailure(
            f"Two instances got the same `self.{name}`: initialise the whole [inst, ...] tensor at once, not one "
            "matrix copied."
        )
    for axis, label in ((1, "rows"), (2, "columns")):
        if torch.equal(values, values.narrow(axis, 0, 1).expand_as(values)):
            raise CheckFailure(
                f"All {label} of each instance's `self.{name}` are the same: draw every entry, not one draw broadcast."
            )


def _check_parameter(
    sae: nn.Module, name: str, shape: tuple[int, ...], axes: str, model: nn.Module, kind: str
) -> nn.Parameter:
    """`self.{name}` is a trainable float32 parameter of this shape, on the model's device."""
    value = getattr(sae, name, None)
    if not isinstance(value, nn.Parameter):
        raise CheckFailure(f"`self.{name}` should be an nn.Parameter ({kind} SAE), got {type(value).__name__}.")
    if tuple(value.shape) != shape:
        raise CheckFailure(f"`self.{name}` has shape {tuple(value.shape)}; it should be [{axes}] = {shape}.")
    if value.device.type != model.W.device.type:
        raise CheckFailure(
            f"`self.{name}` is on {value.device}; create it on the model's device (`device=model.W.device`)."
        )
    if value.dtype != torch.float32:
        raise CheckFailure(f"`self.{name}` is {value.dtype}; keep the default float32, like the model.")
    if not value.requires_grad:
        raise CheckFailure(f"`self.{name}` does not require grad, so it would never train: freeze only the toy model.")
    return value


def _check_initialised(sae: nn.Module, cfg: reference.ToySAEConfig, model: toy.ToyModel) -> None:
    """The stored model and config, the frozen model, every parameter, zero biases and weights drawn as they
    should be, in that order."""
    kind = "tied" if cfg.tied_weights else "untied"
    if getattr(sae, "model", None) is not model:
        raise CheckFailure("Store the toy model itself as `self.model` (not a copy): generate_batch reads its weights.")
    if getattr(sae, "cfg", None) != cfg:
        raise CheckFailure("Store the config as `self.cfg`: the other methods read it.")
    if any(p.requires_grad for p in model.parameters()):
        raise CheckFailure(
            "The toy model is not frozen: call `model.requires_grad_(False)` so that only the SAE trains."
        )
    n, d_in, d_sae = cfg.n_inst, cfg.d_in, cfg.d_sae
    W_enc = _check_parameter(sae, "W_enc", (n, d_in, d_sae), "inst, d_in, d_sae", model, kind)
    b_enc = _check_parameter(sae, "b_enc", (n, d_sae), "inst, d_sae", model, kind)
    b_dec = _check_parameter(sae, "b_dec", (n, d_in), "inst, d_in", model, kind)
    weights = {"W_enc": (W_enc, "inst, d_in, d_sae")}
    if cfg.tied_weights:
        if getattr(sae, "_W_dec", "missing") is not None:
            raise CheckFailure(
                "A tied SAE must set `self._W_dec = None`: its decoder is W_encᵀ, not a separate parameter."
            )
        own = (p for name, p in sae.named_parameters() if not name.startswith("model."))
        if any(tuple(p.shape) == (n, d_sae, d_in) for p in own):
            raise CheckFailure("Your tied SAE still creates a separate decoder parameter; tied means W_dec is W_encᵀ.")
    else:
        if not isinstance(getattr(sae, "_W_dec", None), nn.Parameter):
            raise CheckFailure(
                f"An untied SAE needs `self._W_dec`, an nn.Parameter of shape [inst, d_sae, d_in] = {(n, d_sae, d_in)}."
            )
        W_dec = _check_parameter(sae, "_W_dec", (n, d_sae, d_in), "inst, d_sae, d_in", model, kind)
        weights["_W_dec"] = (W_dec, "inst, d_sae, d_in")
    if b_enc.detach().abs().max() > 0 or b_dec.detach().abs().max() > 0:
        raise CheckFailure("Both biases must start at zero.")
    for name, (weight, axes) in weights.items():
        if weight.detach().abs().max() == 0:
            raise CheckFailure(f"`self.{name}` is all zeros: initialise it with nn.init.kaiming_uniform_.")
        _check_independent_draws(weight, name)
        _check_kaiming_uniform(weight, name, axes)
    if not cfg.tied_weights and torch.equal(W_enc.detach().transpose(-1, -2), weights["_W_dec"][0].detach()):
        raise CheckFailure(
            "`self._W_dec` is a copy of W_encᵀ: an untied SAE initialises its decoder separately, with its own draw."
        )
    if not cfg.tied_weights and torch.equal(
        W_enc.detach().flatten().sort().values, weights["_W_dec"][0].detach().flatten().sort().values
    ):
        raise CheckFailure(
            "`self._W_dec` holds the numbers of `self.W_enc`, rearranged: the same draw was reused (or the seed reset "
            "between the two); give the decoder its own draw."
        )


def _initialise(init: Callable[..., object], cfg: reference.ToySAEConfig, model: toy.ToyModel) -> reference.ToySAE:
    sae = reference.ToySAE.__new__(reference.ToySAE)
    call_learner(init, sae, cfg, model, what="__init__")
    return sae


def _check_fresh_draw_per_sae(
    init: Callable[..., object], first: reference.ToySAE, cfg: reference.ToySAEConfig, model: toy.ToyModel
) -> None:
    """A second SAE built right after the first must start from other weights: the notebook seeds before each
    SAE it builds, so a seed set inside __init__ would give every run the same start."""
    second = _initialise(init, cfg, model)
    if torch.equal(first.W_enc.detach(), second.W_enc.detach()):
        raise CheckFailure(
            "Two SAEs built one after the other start from the same `self.W_enc`: don't set a seed inside __init__ "
            "(torch.manual_seed); the notebook seeds before building each SAE, and each must get its own draw."
        )


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
            raise CheckFailure(
                f"`self.{name}` is on {parameter.device}, not on the model's device: create it with "
                "`device=model.W.device`."
            )


@check("__init__")
def test_init(learner: object) -> str:
    init = learner_callable(learner, "__init__", owner_hint="ToySAE")
    for tied in (False, True):
        with _case("For a tied SAE" if tied else None):
            cfg = reference.ToySAEConfig(**INIT_SIZES, tied_weights=tied)
            model = toy_model(n_inst=cfg.n_inst, d_hidden=cfg.d_in)
            sae = _initialise(init, cfg, model)
            _check_initialised(sae, cfg, model)
    _check_fresh_draw_per_sae(init, sae, cfg, model)
    _check_device_on_meta(init)
    return (
        "untied and tied: shapes, Kaiming-uniform weights drawn per instance, zero biases, the model's device, frozen "
        "model"
    )
