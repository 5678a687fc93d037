"""Train the SAEs of Parts 4 and 5 on stored activations instead of a toy model.

Those SAE classes draw batches from a frozen toy model: `model.generate_batch` gives
feature values and the SAE maps them through `model.W` into its input space. An
`ActivationSource` plays that model's part for real activations: its "features" are the
activation vectors themselves and its `W` is the identity, so every SAE class, the training
loop and both resampling methods work unchanged.

`PublishedAuxKTopKSAE` is Part 5's TopK SAE with the AuxK loss as Gao et al. (2024) publish it.
"""

from types import SimpleNamespace

import torch
from jaxtyping import Float
from torch import Tensor, nn

from part_utils.reference.part5_sae_variants import TopKToySAE


class ActivationSource(nn.Module):
    """Serves random rows of an activation buffer, the same rows to every SAE instance."""

    activations: Float[Tensor, "tokens d"]
    W: Float[Tensor, "inst d d"]

    def __init__(self, activations: Float[Tensor, "tokens d"], n_inst: int, seed: int = 0) -> None:
        super().__init__()
        if activations.ndim != 2:
            raise ValueError(
                f"expected activations of shape [tokens, d]; got {tuple(activations.shape)} "
                "(flatten batch and position first)"
            )
        d = activations.shape[1]
        self.cfg = SimpleNamespace(n_inst=n_inst, d_hidden=d)
        self.register_buffer("activations", activations)
        self.register_buffer("W", torch.eye(d, device=activations.device).expand(n_inst, d, d).contiguous())
        self.generator = torch.Generator(device=activations.device).manual_seed(seed)

    def generate_batch(self, batch_size: int) -> Float[Tensor, "batch inst d"]:
        rows = torch.randint(
            len(self.activations), (batch_size,), generator=self.generator, device=self.activations.device
        )
        return self.activations[rows].unsqueeze(1).expand(-1, self.cfg.n_inst, -1)


class PublishedAuxKTopKSAE(TopKToySAE):
    """TopK with AuxK as in Gao et al. 2024 and openai/sparse_autoencoder.

    Part 5's AuxK multiplies the auxiliary error by min(n_dead / k_aux, 1), EleutherAI sparsify's
    heuristic, and leaves it unnormalised. The published loss has no such factor and divides the
    error by the residual's variance (about its mean over the batch), so that it keeps its weight
    as the residual shrinks during training; the paper pairs it with k_aux a power of two near
    d_in / 2 and aux_coeff 1/32, set through the config.
    """

    def auxk_loss(self, pre_acts: Tensor, h: Tensor, h_reconstructed: Tensor, dead: Tensor) -> Tensor:
        """Arguments and shapes as Part 5's `auxk_loss`; its loss without the heuristic factor, over the variance."""
        scaled = super().auxk_loss(pre_acts, h, h_reconstructed, dead)
        # Undo the parent's factor: it is at least 1 / k_aux when a latent is dead; with none dead the loss is 0.
        heuristic = (dead.sum(dim=-1) / self.cfg.k_aux).clamp(min=1 / self.cfg.k_aux, max=1.0)
        residual = (h - h_reconstructed).detach()
        variance = (residual - residual.mean(dim=0)).pow(2).mean(dim=(0, 2)).clamp_min(1e-12)
        return scaled / heuristic / variance
