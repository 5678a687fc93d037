"""One-to-one matching of true features to SAE latents (the Hungarian algorithm).

MMCS lets several features claim the same latent: two features served by one latent between
them both score well. A one-to-one matching gives each feature its own latent (when there are
at least as many latents as features), so a dictionary that merges features scores lower.
"""

import numpy as np
import torch
from jaxtyping import Float, Int
from scipy.optimize import linear_sum_assignment
from torch import Tensor


def hungarian_match(
    cosine: Float[Tensor, "inst feats d_sae"],
) -> tuple[Float[Tensor, "inst feats"], Int[Tensor, "inst feats"]]:
    """Per instance, the matching of features to distinct latents with the largest total cosine.

    Returns each feature's matched cosine and latent index; with fewer latents than features, the
    unmatched features get cosine 0 and latent -1.
    """
    n_inst, n_feats, _ = cosine.shape
    matched_cosine = torch.zeros(n_inst, n_feats, dtype=cosine.dtype)
    matched_latent = torch.full((n_inst, n_feats), -1, dtype=torch.long)
    for instance, matrix in enumerate(cosine.detach().cpu().double().numpy()):
        features, latents = linear_sum_assignment(matrix, maximize=True)
        matched_cosine[instance, features] = torch.from_numpy(matrix[features, latents]).to(cosine.dtype)
        matched_latent[instance, features] = torch.from_numpy(latents.astype(np.int64))
    return matched_cosine, matched_latent


def matched_recall(
    features: Float[Tensor, "batch inst feats"],
    acts: Float[Tensor, "batch inst d_sae"],
    matched_latent: Int[Tensor, "inst feats"],
) -> Float[Tensor, "inst feats"]:
    """How often each feature's matched latent fires when the feature is active (0 for an unmatched feature)."""
    index = matched_latent.clamp_min(0).to(acts.device)
    fires = (acts > 0).gather(-1, index.expand(acts.shape[0], -1, -1))  # [batch, inst, feats]
    active = features > 0
    recall = (fires & active).sum(dim=0) / active.sum(dim=0).clamp_min(1)
    return torch.where(matched_latent.to(acts.device) >= 0, recall, torch.zeros_like(recall)).cpu()
