"""Training a transcoder: batches of (MLP input, MLP output) pairs from stored activations.

`train_sae` draws one tensor per batch from the SAE's own `generate_batch`; a transcoder needs an input
and a different target, so it gets this loop. The transcoder keeps the SAE interface otherwise
(`pre_activations`, `encode`, `decode`, a forward pass that returns an `SAEOutput`).
"""

from typing import Protocol

import torch
from jaxtyping import Float
from torch import Tensor

from part_utils.progress import progress_bar
from part_utils.sae_interface import SAEOutput
from part_utils.training import LearningRateSchedule, cosine_decay_lr, make_adam, set_learning_rate


class PairedSAE(Protocol):
    def parameters(self, recurse: bool = True) -> object: ...

    def train(self, mode: bool = True) -> object: ...

    def __call__(self, x: Float[Tensor, "batch inst d_in"], target: Float[Tensor, "batch inst d_out"]) -> SAEOutput: ...


def train_transcoder(
    transcoder: PairedSAE,
    inputs: Float[Tensor, "tokens inst d_in"],
    targets: Float[Tensor, "tokens inst d_out"],
    *,
    steps: int,
    batch_size: int = 1024,
    lr: float = 2e-3,
    lr_schedule: LearningRateSchedule = cosine_decay_lr,
    seed: int = 0,
    description: str = "training transcoder",
) -> list[float]:
    """Adam on random rows of `inputs`/`targets` (the same rows for every instance); returns the losses."""
    if inputs.shape[:2] != targets.shape[:2]:
        raise ValueError(f"inputs {tuple(inputs.shape)} and targets {tuple(targets.shape)} must pair row by row")
    generator = torch.Generator(device=inputs.device).manual_seed(seed)
    optimizer = make_adam(transcoder.parameters(), lr)
    transcoder.train()
    losses = []
    for step in (progress := progress_bar(range(steps), description)):
        set_learning_rate(optimizer, lr * lr_schedule(step, steps))
        rows = torch.randint(len(inputs), (batch_size,), generator=generator, device=inputs.device)
        loss = transcoder(inputs[rows], targets[rows]).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % 100 == 0 or step == steps - 1:
            losses.append(loss.item())
            progress.set_postfix(loss=f"{losses[-1]:.4g}")
    transcoder.train(False)
    return losses
