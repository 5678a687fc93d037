"""The spliced-loss check's own copy of the palindrome model, clean for every call of learner code.

It runs on the device the notebook uses (so that code which moves tokens there works in the
check as in the notebook), as shipped: the shipped weights, eval mode, no hook but the bridge's
own. Whatever learner code changed, the next check rebuilds the model instead of inheriting it.
"""

import dataclasses
import functools
import itertools

import torch
from torch import Tensor
from transformer_lens import TransformerBridge

from part_utils.device import get_device
from part_utils.palindromes import load_palindrome_model, palindrome_dataset

HOOK_TABLES = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
Hook = tuple[str, str, int]  # module name, which table, handle id


def _attached_hooks(model: TransformerBridge) -> frozenset[Hook]:
    """Every PyTorch hook on every submodule, TransformerLens's hook points included."""
    return frozenset(
        (name, table, key)
        for name, module in model.named_modules()
        for table in HOOK_TABLES
        for key in getattr(module, table, {})
    )


@dataclasses.dataclass(frozen=True, eq=False)  # hashed by identity: one set of expectations per model built
class PristineModel:
    """The palindrome model as shipped, with what it looked like before any learner code ran."""

    model: TransformerBridge
    tensors: dict[str, Tensor]  # name -> the very object
    values: dict[str, Tensor]  # name -> a private copy
    hooks: frozenset[Hook]  # the bridge's own

    def is_intact(self) -> bool:
        now = dict(itertools.chain(self.model.named_parameters(), self.model.named_buffers()))
        return (
            now.keys() == self.tensors.keys()
            and all(
                now[name] is tensor and torch.equal(tensor.detach(), self.values[name])
                for name, tensor in self.tensors.items()
            )
            and _attached_hooks(self.model) == self.hooks
        )


@functools.cache
def _pristine_model() -> PristineModel:
    model = load_palindrome_model(device=get_device())
    with torch.no_grad():
        model(_tokens()[:1].to(get_device()))  # the bridge wires its own capture hooks on the first forward pass
    tensors = dict(itertools.chain(model.named_parameters(), model.named_buffers()))
    values = {name: tensor.detach().clone() for name, tensor in tensors.items()}
    return PristineModel(model, tensors, values, _attached_hooks(model))


def clean_model() -> TransformerBridge:
    """The check's model, rebuilt if learner code left a hook, changed a weight, or replaced one."""
    if not _pristine_model().is_intact():
        _pristine_model.cache_clear()
    return _pristine_model().model.eval().requires_grad_(False)


@functools.cache
def _tokens() -> Tensor:
    return palindrome_dataset().test_tokens[:24]
