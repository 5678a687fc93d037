"""What several of Part 4's checks share: the shapes, a reference SAE, the reference forward in float64,
and the wrappers that call learner code and name its usual crashes."""

import contextlib
import functools
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from part_utils.reference import part4_toy_sae as reference
from tests.checking import CheckFailure, NotImplementedYet, call_learner, expect_tensor, gradients
from tests.fixtures import toy_model

N_INST, D_IN, N_FEATURES, D_SAE = 3, 4, 6, 7
FALSE_ALARM = 1e-9  # the chance that a correct implementation fails any one check
T = TypeVar("T")


def _reference_sae(
    *, tied: bool = False, n_inst: int = N_INST, d_in: int = D_IN, d_sae: int = D_SAE
) -> reference.ToySAE:
    """A reference SAE with random weights of varied norms and non-zero biases."""
    cfg = reference.ToySAEConfig(n_inst=n_inst, d_in=d_in, d_sae=d_sae, sparsity_coeff=0.3, tied_weights=tied)
    sae = reference.ToySAE(cfg, toy_model(n_inst=n_inst, d_hidden=d_in))
    with torch.no_grad():
        sae.W_enc.normal_()
        if sae._W_dec is not None:
            sae._W_dec.copy_(
                torch.randn_like(sae._W_dec) * (torch.rand(n_inst, d_sae, 1, device=sae._W_dec.device) * 2.9 + 0.1)
            )
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


def _expect_axes_kept(value: object, shape: tuple[int, ...], *, what: str, axes: str) -> Tensor:
    """`expect_tensor`, naming a result whose axes of length 1 were squeezed away (a bare `.squeeze()`), which
    passes on shapes without such axes and breaks on a batch of one, a single instance or d_in = 1."""
    squeezed = tuple(size for size in shape if size != 1)
    if (
        isinstance(value, Tensor)
        and tuple(value.shape) != shape
        and tuple(size for size in value.shape if size != 1) == squeezed
    ):
        raise CheckFailure(
            f"`{what}` returned shape {tuple(value.shape)}: its axes of length 1 were squeezed away (a bare "
            f".squeeze()?), but [{axes}] here is {shape}. Squeeze only the axis you added, e.g. .squeeze(-1)."
        )
    return expect_tensor(value, shape, what=what, axes=axes)


def _fresh_call(function: Callable[..., T], *args: object, what: str, **kwargs: object) -> T:
    """Learner code called again on objects a first call already guarded: no snapshot, so a result it keeps in
    `self` (a correct habit as long as it is recomputed) is not taken for an in-place change."""
    return call_learner(functools.partial(function, *args, **kwargs), what=what)


def _lower_first(message: str) -> str:
    """`message` with its first word lower-cased when it is an ordinary word ("The", "Every"), so it reads after a
    colon."""
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


def _explained(call: Callable[[], T], explanations: Mapping[str, str]) -> T:
    """Run learner code through `call`; a failure whose cause mentions one of the markers (the keys of
    `explanations`, tried in order) is replaced by that marker's sentence."""
    try:
        return call()
    except CheckFailure as failure:
        cause = str(failure.__cause__ or "")
        explanation = next((sentence for marker, sentence in explanations.items() if marker in cause), None)
        if explanation is None:
            raise
        raise CheckFailure(explanation) from failure


def _naming_tied_decoder(call: Callable[[], T], *, what: str) -> T:
    """Run learner code on a tied SAE, naming the usual crash: reading `self._W_dec`, which is None there."""
    return _explained(
        call,
        {
            "NoneType": f"`{what}` reads `self._W_dec`, which a tied SAE sets to None: use the `self.W_dec` property, "
            "which gives W_encᵀ there."
        },
    )


def _backpropagate(loss: Callable[[], Tensor], tensors: Mapping[str, Tensor], *, what: str) -> dict[str, Tensor]:
    """Gradients of the learner-built `loss()` into `tensors`, naming an in-place operation that autograd still
    needed."""
    return _explained(
        lambda: call_learner(lambda: gradients(loss(), tensors, what=what), what=f"backpropagating through {what}"),
        {
            "modified by an inplace operation": f"Backpropagating through `{what}` fails: an in-place operation (such "
            "as `/=` or `+=`) changed a tensor that autograd still needed; compute a new tensor instead (e.g. "
            "`W / (norm + eps)`)."
        },
    )


def _model_attributes(model: nn.Module) -> dict[str, Tensor]:
    """Copies of the toy model's plain tensor attributes (feature_probability, importance), which the
    snapshots of the SAE do not reach (its parameters they do)."""
    return {name: value.detach().clone() for name, value in vars(model).items() if isinstance(value, Tensor)}


def _assert_model_untouched(model: nn.Module, before: Mapping[str, Tensor], *, what: str) -> None:
    for name, value in before.items():
        now = getattr(model, name, None)
        if not isinstance(now, Tensor) or now.shape != value.shape or not torch.equal(now, value):
            raise CheckFailure(
                f"`{what}` changed the toy model's `{name}` (self.model.{name}): the SAE only reads the model."
            )


def _normalised(W: Tensor, eps: float) -> Tensor:
    return W / (W.norm(dim=-1, keepdim=True) + eps)


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
    centred = x - keep(p["b_dec"], "b_dec when centring")
    pre_acts = torch.einsum("bid,ids->bis", centred, keep(p["W_enc"], "encoder")) + p["b_enc"]
    acts = F.relu(pre_acts)
    decoded = torch.einsum("bis,isd->bid", keep(acts, "acts when decoding"), W_unit)
    h_reconstructed = decoded + keep(p["b_dec"], "b_dec when adding back")
    reconstruction = (h_reconstructed - x).pow(2).mean(-1)
    sparsity = acts.sum(-1)
    loss = (keep(reconstruction, "reconstruction") + coeff * keep(sparsity, "sparsity")).mean(0).sum()
    return SAETerms(pre_acts, acts, h_reconstructed, reconstruction, sparsity, loss)


def _sae_parameters(sae: reference.ToySAE) -> dict[str, nn.Parameter]:
    return {name: parameter for name, parameter in sae.named_parameters() if not name.startswith("model.")}
