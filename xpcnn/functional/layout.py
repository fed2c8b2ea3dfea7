"""Where the batch, channel and spatial axes are: the two activation layouts, in one place.

- ``"NCHW"``: (N, C, H, W) images and (N, features) vectors, what users pass and get back;
- ``"CHWN"``: (C, H, W, N) and (features, N), the batch innermost. Every window of a convolution is
  then a few long contiguous runs, a whole convolution is one matrix product, a per-channel
  reduction reads contiguous rows, and flattening is free. xpcnn's containers run their layers in it.

Ops that care take ``layout=`` and ask these helpers; nothing else spells out axis numbers.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "CHWN", "LAYOUTS", "NCHW", "axes_name", "batch_axis", "batch_last", "broadcast_sample", "channel_axis",
    "channel_shape", "check_layout", "for_ndim", "from_nchw", "from_nchw_shape", "nchw_shape", "reduce_axes",
    "sample_shape", "spatial_axes", "to_nchw",
]

NCHW, CHWN = LAYOUTS = ("NCHW", "CHWN")


def check_layout(op: str, layout: str) -> str:
    if layout not in LAYOUTS:
        raise ValueError(f"{op}: layout must be one of {', '.join(LAYOUTS)}; got {layout!r}")
    return layout


def batch_last(layout: str) -> bool:
    """Whether the batch is the innermost axis (CHWN): then a convolution is one matrix product over all
    samples, where NCHW needs a batched one."""
    return layout == CHWN


def for_ndim(layout: str, ndim: int) -> str:
    """The layout an ``ndim``-D activation runs in: ``layout`` for images (4-D) and vectors (2-D), NCHW (the
    user's own order) for anything else."""
    return layout if ndim in (2, 4) else NCHW


def axes_name(layout: str) -> str:
    """The axes of a 4-D activation in ``layout``, for error messages: "N, C, H, W" or "C, H, W, N"."""
    return "C, H, W, N" if layout == CHWN else "N, C, H, W"


def spatial_axes(ndim: int, layout: str = "NCHW") -> tuple[int, int]:
    """Where H and W are: the last two axes for NCHW (and for plain images), axes 1 and 2 for CHWN."""
    return (1, 2) if layout == "CHWN" else (ndim - 2, ndim - 1)


def channel_axis(ndim: int, layout: str = "NCHW") -> int:
    """The channel (or feature) axis of a 4-D or 2-D activation."""
    return 0 if layout == "CHWN" else 1


def batch_axis(ndim: int, layout: str = "NCHW") -> int:
    return ndim - 1 if layout == "CHWN" else 0


def reduce_axes(ndim: int, layout: str = "NCHW") -> tuple[int, ...]:
    """Every axis but the channel axis: what a per-channel statistic sums over."""
    keep = channel_axis(ndim, layout)
    return tuple(axis for axis in range(ndim) if axis != keep)


def channel_shape(ndim: int, layout: str, channels: int) -> tuple[int, ...]:
    """The shape that makes a (C,) vector broadcast along the channel axis."""
    shape = [1] * ndim
    shape[channel_axis(ndim, layout)] = channels
    return tuple(shape)


def sample_shape(shape: tuple, layout: str = "NCHW") -> tuple:
    """One sample's shape in NCHW terms ((C, H, W) or (features,)), from a batch's shape in ``layout``."""
    shape = tuple(shape)
    if layout == "CHWN" and len(shape) in (2, 4):
        return shape[:-1]
    return shape[1:]


def nchw_shape(shape: tuple, layout: str = "NCHW") -> tuple:
    """The NCHW shape of an activation of ``shape`` in ``layout``."""
    shape = tuple(shape)
    if layout == "CHWN" and len(shape) in (2, 4):
        return (shape[-1], *shape[:-1])
    return shape


def from_nchw_shape(shape: tuple, layout: str = "NCHW") -> tuple:
    """The shape in ``layout`` of an activation whose NCHW shape is ``shape`` (the inverse of :func:`nchw_shape`)."""
    shape = tuple(shape)
    if layout == CHWN and len(shape) in (2, 4):
        return (*shape[1:], shape[0])
    return shape


def broadcast_sample(a: Any, xp: Any, layout: str) -> Any:
    """An array shaped like one sample ((C, H, W) or (features,)) made to broadcast along ``layout``'s batch axis."""
    return xp.expand_dims(a, axis=a.ndim) if layout == CHWN else a


def from_nchw(x: Any, xp: Any, layout: str) -> Any:
    """An NCHW (or (N, features)) array in ``layout``: a contiguous copy for CHWN images, a view otherwise."""
    if layout == "NCHW":
        return x
    if x.ndim == 4:
        return xp.reshape(xp.permute_dims(x, (1, 2, 3, 0)), (*x.shape[1:], x.shape[0]), copy=True)
    if x.ndim == 2:
        return x.T
    raise ValueError(f"inputs must be (N, C, H, W) or (N, features); got shape {tuple(x.shape)}")


def to_nchw(y: Any, xp: Any, layout: str) -> Any:
    """The inverse of :func:`from_nchw` (a view)."""
    if layout == "NCHW":
        return y
    return xp.permute_dims(y, (3, 0, 1, 2)) if y.ndim == 4 else y.T
