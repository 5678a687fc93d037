"""What Part 5's checks share: the shapes they use, random SAE weights, float64 copies and gradients,
encoding and decoding, and keeping the top values with the gradient that should flow through them."""

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from part_utils.reference import part4_toy_sae as part4
from tests.checking import CheckFailure, close, diagnose, gradients, require_gradient

N_INST, D_IN, D_SAE = 3, 4, 7


def _fitting(
    actual: Tensor,
    expected: Tensor,
    mistakes: Sequence[tuple[str, Tensor | None]],
    *,
    rtol: float = 1e-4,
    atol: float = 1e-5,
) -> list[str] | None:
    """None when `actual` is right; else the messages of every listed mistake that gives the same numbers."""
    if close(actual, expected, rtol=rtol, atol=atol):
        return None
    fits = (message for message, wrong in mistakes if wrong is not None and close(actual, wrong, rtol=rtol, atol=atol))
    return list(dict.fromkeys(fits))


def _both(messages: Sequence[str]) -> str:
    if len(messages) == 1:
        return messages[0]
    return f"{messages[0].rstrip('.')}; or else, as these numbers fit both: {messages[1]}"


class _Narrowing:
    """Names a slip that two mistakes explain on one case by the next case that tells them apart.

    Each failing case offers the messages whose numbers it fits; the check fails as soon as one message
    fits every failing case so far, with the first case's messages when none does, and with both
    messages when every case leaves two (call `finish` after the last case).
    """

    def __init__(self) -> None:
        self.candidates: list[str] = []

    def add(self, fitting: list[str] | None, otherwise: str) -> None:
        if fitting is None:
            return
        if not fitting:
            raise CheckFailure(_both(self.candidates) if self.candidates else otherwise)
        narrowed = [message for message in self.candidates if message in fitting] if self.candidates else fitting
        if not narrowed:
            raise CheckFailure(_both(self.candidates))
        if len(narrowed) == 1:
            raise CheckFailure(narrowed[0])
        self.candidates = narrowed

    def finish(self) -> None:
        if self.candidates:
            raise CheckFailure(_both(self.candidates))


def _randomise(sae: part4.ToySAE) -> None:
    """Random weights with varied decoder norms and non-zero biases (the frozen toy model is left alone)."""
    with torch.no_grad():
        for name, parameter in sae.named_parameters():
            if name.startswith("model."):
                continue
            if name == "_W_dec":
                norms = torch.rand(*parameter.shape[:-1], 1, device=parameter.device) * 3 + 0.1
                parameter.copy_(torch.randn_like(parameter) * norms)
            elif name == "W_enc":
                parameter.normal_()
            else:
                parameter.normal_(0.0, 0.5)


def _float64(tensor: Tensor | None, like: Tensor) -> Tensor:
    return (
        torch.zeros_like(like, dtype=torch.float64, device="cpu")
        if tensor is None
        else tensor.detach().to("cpu", torch.float64)
    )


def _as_float64(tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Float64 CPU leaf copies, to compute expectations (and their gradients) independently of the learner."""
    return {
        name: tensor.detach().to("cpu", torch.float64).clone().requires_grad_(True) for name, tensor in tensors.items()
    }


def _gradient_dict(loss: Tensor, leaves: Mapping[str, Tensor]) -> dict[str, Tensor]:
    grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True, retain_graph=True)
    return {
        name: torch.zeros_like(leaf) if grad is None else grad.detach()
        for (name, leaf), grad in zip(leaves.items(), grads)
    }


def _scalar(loss: object) -> object:
    """A one-element tensor as a 0-d tensor, so that expect_tensor reports any other shape."""
    return loss.reshape(()) if isinstance(loss, Tensor) and loss.numel() == 1 else loss


def _encode(inputs: Tensor, W: Tensor, b: Tensor) -> Tensor:
    return torch.einsum("bid,ids->bis", inputs, W) + b


def _decode(latents: Tensor, W: Tensor, b: Tensor | float = 0.0) -> Tensor:
    return torch.einsum("bis,isd->bid", latents, W) + b


def _autograd_function(thing: object, name: str) -> type[torch.autograd.Function]:
    if isinstance(thing, torch.autograd.Function):
        raise CheckFailure(f"Pass the class `{name}` itself, not an instance of it: `test_{name.lower()}({name})`.")
    if not (isinstance(thing, type) and issubclass(thing, torch.autograd.Function)):
        raise CheckFailure(
            f"Pass your `{name}` class itself (a torch.autograd.Function subclass), e.g. `test_{name.lower()}({name})`."
        )
    return thing


def _keep_top(
    values: Tensor, k: int, *, dim: int = -1, largest: bool = True, rank_by: Tensor | None = None
) -> Tensor | None:
    """The k entries of `values` ranked highest (by `rank_by`) along `dim`, zeros elsewhere; None if k does not fit."""
    ranking = values if rank_by is None else rank_by
    if not 0 <= k <= values.shape[dim]:
        return None
    indices = ranking.topk(k, dim=dim, largest=largest).indices
    return torch.zeros_like(values).scatter(dim, indices, values.gather(dim, indices))


def _check_kept_gradient(output: Tensor, leaf: Tensor, expected: Tensor, *, what: str) -> None:
    """The gradient reaching the input must be grad_output at the kept (positive) entries and 0 elsewhere."""
    require_gradient(output, what=what, towards="pre_acts")
    upstream = torch.randn(output.shape, dtype=torch.float64).to(output.device, output.dtype)
    grad = gradients(
        (output * upstream).sum(), {"pre_acts": leaf}, what=f"{what}(...) weighted by a random grad_output"
    )["pre_acts"]
    kept = (expected > 0).double()
    diagnose(
        grad,
        kept * upstream.cpu().double(),
        {
            (
                f"The gradient of `{what}` reaches every pre-activation (a "
                "straight-through trick?); it should reach only the kept positive ones."
            ): upstream.cpu().double(),
            (
                f"No gradient reaches pre_acts through `{what}`: build the output "
                "from pre_acts itself, not from detached values."
            ): torch.zeros_like(grad),
        },
        otherwise=(
            f"The gradient of `{what}` should be grad_output at the kept positive "
            "entries and 0 elsewhere: keep pre_acts' own values there."
        ),
    )
