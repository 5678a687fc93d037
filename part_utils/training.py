"""A lean training loop for models that make their own data (toy models, SAEs on toy data).

The loop avoids per-step host synchronisation: losses stay on the device and are read
only at logging steps, so the Python overhead per step is a forward, a backward and one
fused optimiser step.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from jaxtyping import Float
from torch import Tensor

from part_utils.progress import progress_bar

LearningRateSchedule = Callable[[int, int], float]
"""Maps (step, total steps) to a multiplier of the base learning rate."""


def constant_lr(step: int, steps: int) -> float:
    return 1.0


def linear_decay_lr(step: int, steps: int) -> float:
    return 1.0 - step / steps


def cosine_decay_lr(step: int, steps: int) -> float:
    return 0.5 * (1.0 + math.cos(math.pi * step / steps))


def warmup_cosine_lr(step: int, steps: int, warmup_fraction: float = 0.05) -> float:
    """Linear warm-up over the first steps (Adam's early updates are noisy), then cosine decay."""
    warmup = max(1, int(steps * warmup_fraction))
    if step < warmup:
        return (step + 1) / warmup
    return cosine_decay_lr(step - warmup, steps - warmup)


class SelfSupervisedModel(Protocol):
    """What the loop needs: a model that samples its own batches and scores its outputs."""

    def parameters(self) -> Any: ...
    def generate_batch(self, batch_size: int) -> Tensor: ...
    def __call__(self, batch: Tensor) -> Tensor: ...
    def calculate_loss(self, output: Tensor, batch: Tensor) -> Float[Tensor, ""]: ...


@dataclass
class TrainingLog:
    steps: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    snapshots: list[Any] = field(default_factory=list)


def make_adam(parameters: Any, lr: float, betas: tuple[float, float] = (0.9, 0.999)) -> torch.optim.Adam:
    """Adam with the fused kernel where PyTorch has one for every parameter's device."""
    parameters = [p for p in parameters if p.requires_grad]
    fused = all(p.device.type in ("cpu", "cuda", "mps") for p in parameters)
    return torch.optim.Adam(parameters, lr=lr, betas=betas, fused=fused)


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def train_self_supervised(
    model: SelfSupervisedModel,
    *,
    steps: int,
    batch_size: int = 1024,
    lr: float = 1e-3,
    lr_schedule: LearningRateSchedule = constant_lr,
    log_every: int = 100,
    snapshot: Callable[[], Any] | None = None,
    description: str = "training",
) -> TrainingLog:
    """Train `model` on batches it generates; log the loss (and an optional snapshot) every `log_every` steps."""
    optimizer = make_adam(model.parameters(), lr)
    log = TrainingLog()
    progress = progress_bar(range(steps), description)
    for step in progress:
        step_lr = lr * lr_schedule(step, steps)
        set_learning_rate(optimizer, step_lr)
        batch = model.generate_batch(batch_size)
        loss = model.calculate_loss(model(batch), batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % log_every == 0 or step == steps - 1:
            loss_value = loss.item()  # the only host sync, and only at log steps
            log.steps.append(step)
            log.losses.append(loss_value)
            if snapshot is not None:
                log.snapshots.append(snapshot())
            progress.set_postfix(loss=f"{loss_value:.4g}", lr=f"{step_lr:.2g}")
    return log
