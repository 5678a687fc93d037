"""What every SAE in the workbook offers: `encode`, `decode`, and a forward pass with named outputs.

Every architecture (Part 4's L1 SAE; Part 5's Gated, JumpReLU, TopK and BatchTopK SAEs; Part 8's
Matryoshka SAE; the SAEs Parts 6 and 7 train on a transformer's activations) is a subclass of
Part 4's `ToySAE` and keeps this contract, so the training loop, the evaluation helpers and the
plots work with any of them. `TrainableSAE` states what `part_utils.sae_training.train_sae` needs.
"""

from typing import Any, NamedTuple, Protocol

from jaxtyping import Bool, Float
from torch import Tensor, nn


class SAEOutput(NamedTuple):
    """One forward pass of an SAE over `n_inst` instances side by side."""

    loss_dict: dict[str, Float[Tensor, "batch inst"]]
    """Each loss term per input and instance, before any coefficient."""
    loss: Float[Tensor, ""]
    """The scalar that training backpropagates: the weighted terms, mean over the batch, summed over instances."""
    acts: Float[Tensor, "batch inst d_sae"]
    """The latent activations."""
    h_reconstructed: Float[Tensor, "batch inst d_in"]


class TrainableSAE(Protocol):
    """What `train_sae` calls. `reset_latent_state(resampled)` is optional (per-latent state beyond the weights)."""

    cfg: Any
    """Holds `sparsity_coeff`, which the loop may scale per step with a schedule."""
    W_enc: nn.Parameter

    @property
    def W_dec_normalized(self) -> Float[Tensor, "inst d_sae d_in"]: ...

    def generate_batch(self, batch_size: int) -> Float[Tensor, "batch inst d_in"]: ...

    def encode(self, h: Float[Tensor, "batch inst d_in"]) -> Float[Tensor, "batch inst d_sae"]: ...

    def decode(self, acts: Float[Tensor, "batch inst d_sae"]) -> Float[Tensor, "batch inst d_in"]: ...

    def __call__(self, h: Float[Tensor, "batch inst d_in"]) -> SAEOutput: ...

    def latent_axes(self) -> dict[str, int]:
        """Which axis of each parameter indexes latents, so the optimiser's state of resampled latents can be reset."""
        ...

    def resample_simple(
        self, frac_active_in_window: Float[Tensor, "inst d_sae"], resample_scale: float
    ) -> Bool[Tensor, "inst d_sae"]: ...

    def resample_advanced(
        self, frac_active_in_window: Float[Tensor, "inst d_sae"], resample_scale: float
    ) -> Bool[Tensor, "inst d_sae"]: ...

    def parameters(self, recurse: bool = True) -> Any: ...

    def train(self, mode: bool = True) -> Any: ...
