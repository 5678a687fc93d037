"""Shape validation for plotting and training helpers, with messages that name the expected shape."""

import torch


def expect_shape(
    name: str,
    tensor: object,
    dims: str,
    *,
    where: str,
    fixed: dict[str, int] | None = None,
    bound: dict[str, int] | None = None,
) -> dict[str, int]:
    """Check that `tensor` has one axis per word of `dims`; return the size of each axis.

    `fixed` pins some axes to a size (e.g. {"d_hidden": 2}); `bound` holds sizes that
    earlier arguments already determined, so shapes across arguments must agree.
    """
    axis_names = dims.split()
    expected = "[" + ", ".join(_describe(axis, fixed, bound) for axis in axis_names) + "]"
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{where}: `{name}` must be a torch.Tensor of shape {expected}, got {type(tensor).__name__}.")
    if tensor.ndim != len(axis_names):
        raise ValueError(f"{where}: `{name}` must have shape {expected}, got {tuple(tensor.shape)}.")
    sizes = dict(zip(axis_names, tensor.shape, strict=True))
    for axis, size in sizes.items():
        wanted = (fixed or {}).get(axis, (bound or {}).get(axis))
        if wanted is not None and size != wanted:
            raise ValueError(f"{where}: `{name}` must have shape {expected}, got {tuple(tensor.shape)}.")
    return sizes


def _describe(axis: str, fixed: dict[str, int] | None, bound: dict[str, int] | None) -> str:
    size = (fixed or {}).get(axis, (bound or {}).get(axis))
    return axis if size is None else f"{axis}={size}"
