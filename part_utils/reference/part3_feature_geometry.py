"""Reference implementation for 03_feature_geometry, generated from source/03_feature_geometry.py.

Do not edit: change the source and run `python workbook.py build`."""

from einops import einsum
from jaxtyping import Float
from torch import Tensor


def compute_dimensionality(W: Float[Tensor, "inst d_hidden feats"]) -> Float[Tensor, "inst feats"]:
    squared_norms = W.pow(2).sum(dim=1)  # [inst, feats]
    W_unit = W / W.norm(dim=1, keepdim=True)
    overlaps = einsum(W_unit, W, "inst d_hidden feat_i, inst d_hidden feat_j -> inst feat_i feat_j")
    return squared_norms / overlaps.pow(2).sum(dim=-1)
