"""The designed SAEs and batches that `resample_advanced` is checked on.

Each SAE is built so that the losses of its inputs are known: three live latents per
instance read and write along the first three axes (the first with gain 1, which gives the
sparsity term; the others never fire), and every dead latent has a very negative bias, so it
never fires. Each instance sees one *spike* input with a very large reconstruction loss and
four groups of inputs, each group with its own (reconstruction, sparsity) losses; the inputs
of a group differ slightly along the third axis, so that every input can be told from every
other by its direction. The chance of drawing each group follows exactly from the batch the
learner's code drew, so the verdict does not depend on its random numbers; 800 dead latents
per instance make every plausible wrong weighting miss its cells by several tolerances (the
suite checks these margins), and a batch of 1,000 inputs makes a repeat certain when drawing
with replacement (the chance of none is below e^-300 for any weights), so sampling without
replacement shows as well.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from part_utils.reference import part1_toy_models as toy
from part_utils.reference import part4_toy_sae as reference
from tests.fixtures import toy_model
from tests.part4_toy_sae._common import D_IN, _float64

ADVANCED_SCALE = 0.2
# Neither the notebook's batch size (1,024) nor the default (4,096): a batch size not read from the argument shows.
ADVANCED_BATCH = 1000
RARE_FRACTION = 5e-8  # a live latent that fired once in 20 million inputs: alive, however small a threshold looks
SPIKE_ROW = 7
N_GROUPS = 4
DESIGN_RECONSTRUCTION = (  # spike, groups
    (128.0, 0.25, 0.1, 8.0, 2.0),
    (128.0, 1.0, 0.5, 0.5, 0.5),
    (32.0, 0.1, 4.0, 0.25, 0.25),
)
DESIGN_SPARSITY = ((0.0, 5.0, 0.0, 50.0, 1.0), (0.0, 10.0, 5.0, 0.0, 5.0), (0.0, 0.0, 0.0, 20.0, 1.0))
LIVE_GAINS = ((1.0, 0.5, 2.0), (1.0, 0.25, 3.0), (1.0, 1.5, 0.2))  # live encoder norms: means 1.17, 1.42, 0.9
LIVE_BIAS, DEAD_BIAS = -0.05, -1000.0
DIRECTION_SPREAD = (1.0, 0.2, 0.4, 0.6, 0.8)  # a non-firing component per group keeps the groups' directions apart
ROW_SPREAD = 0.25  # how far the last input of a group leans along the third axis, relative to its residual


def _row_groups(batch_size: int) -> Tensor:
    """The group of every row of a designed batch: 0 for the spike row, 1..N_GROUPS in turn for the others."""
    others = 1 + torch.arange(max(batch_size - 1, 0)) % N_GROUPS
    if batch_size <= SPIKE_ROW:
        return 1 + torch.arange(batch_size) % N_GROUPS
    return torch.cat([others[:SPIKE_ROW], torch.zeros(1, dtype=torch.long), others[SPIKE_ROW:]])


def _centred_design(profile: int) -> Tensor:
    """[groups, d_in]: h - b_dec for the spike and each group of one instance profile."""
    rows = []
    for group, (loss, sparsity) in enumerate(zip(DESIGN_RECONSTRUCTION[profile], DESIGN_SPARSITY[profile])):
        spread = DIRECTION_SPREAD[group] * math.sqrt(loss)
        first = sparsity - LIVE_BIAS if sparsity > 0 else 0.0  # the gain-1 latent fires with sparsity as its activation
        # The mean of the squares over d_in is the loss.
        rows.append([first, -spread, 0.0, math.sqrt(max(4 * loss - spread**2, 0.0))])
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
    rare: Tensor  # [inst, d_sae]: frac_active_in_window of the live latents that fired rarely, 0 elsewhere
    recorder: _DesignedBatches
    statistics: bool  # whether this case is big enough for the test of the sampling weights

    @property
    def resampled(self) -> Tensor:
        """[inst, d_sae]: the latents resample_advanced should resample, the dead ones of instances not skipped."""
        return self.dead & ~self.skipped[:, None]


def _signed_permutations(n_inst: int, d: int) -> Tensor:
    """[inst, d, d]: a random signed permutation matrix per instance."""
    eye = torch.eye(d)
    return torch.stack([eye[torch.randperm(d)] * torch.where(torch.rand(d) < 0.5, -1.0, 1.0) for _ in range(n_inst)])


def _advanced_case(
    kinds: Sequence[str], profiles: Sequence[int], *, d_sae: int, tied: bool = False, description: str | None = None
) -> AdvancedCase:
    """kinds per instance: "mixed" (3 live latents, the rest dead), "no dead", "no live" or "zero loss"."""
    n_inst, d_in = len(kinds), D_IN
    live_at = [2, d_sae // 2, d_sae - 2]
    cfg = reference.ToySAEConfig(n_inst=n_inst, d_in=d_in, d_sae=d_sae, sparsity_coeff=0.3, tied_weights=tied)
    sae = reference.ToySAE(cfg, toy_model(n_inst=n_inst, d_hidden=d_in, n_features=d_in))
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
    rare = torch.zeros(dead.shape)
    rare[:, live_at[0]] = torch.where(dead[:, live_at[0]], 0.0, RARE_FRACTION)
    frac_active = torch.where(dead, 0.0, torch.rand(dead.shape) * 0.5 + 0.01)
    frac_active = torch.where(rare > 0, rare, frac_active).to(sae.W_enc.device)
    skipped = torch.tensor([kind == "zero loss" for kind in kinds])
    return AdvancedCase(description, sae, frac_active, dead, skipped, rare, recorder, statistics=d_sae > 100)


def _main_advanced_case() -> AdvancedCase:
    """Three instances of 803 latents, 800 of them dead: large enough for the test of the sampling weights."""
    return _advanced_case(["mixed"] * 3, [0, 1, 2], d_sae=803)


def _edge_advanced_cases() -> list[AdvancedCase]:
    """Small cases where hidden assumptions break: nothing dead, nothing live, all-zero losses, a tied SAE."""
    no_dead = "With an instance that has no dead latent"
    no_live = "With an instance whose latents are all dead"
    zero_loss = "With an instance whose reconstruction losses are all zero"
    return [
        _advanced_case(["no dead", "mixed"], [0, 1], d_sae=10, description=no_dead),
        _advanced_case(["no live", "mixed"], [1, 2], d_sae=10, description=no_live),
        _advanced_case(["zero loss", "mixed"], [2, 0], d_sae=10, description=zero_loss),
        _advanced_case(["mixed", "mixed"], [0, 2], d_sae=10, tied=True, description="For a tied SAE"),
    ]


def _fresh_draws_case() -> AdvancedCase:
    """One instance of 40 latents, 37 of them dead, whose inputs no single one dominates (the spike draws about half
    of the weight): two correct calls choose the same inputs for every dead latent with probability below 1e-20."""
    return _advanced_case(["mixed"], [0], d_sae=40)
