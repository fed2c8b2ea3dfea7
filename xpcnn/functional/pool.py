"""Max and average pooling over NCHW inputs, forward and backward.

Each window offset is one strided view of the (padded) input; the pooled value is
an elementwise maximum or sum over those views, so the only loop runs over the
kh * kw offsets. Max pooling records, per output element, the offset of the FIRST
maximum in its window and sends the whole gradient there: with ties (zero borders
in MNIST are everywhere) exactly one input element receives it, as in PyTorch.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from array_api_compat import device

from ._checks import check_cache, check_floating, check_ndim, check_shape, namespace, pair
from .layout import axes_name, check_layout, spatial_axes
from .windows import ConvGeometry, add_at, crop, pad, set_at

__all__ = [
    "AvgPool2DCache",
    "GlobalAvgPool2DCache",
    "MaxPool2DCache",
    "avg_pool2d",
    "avg_pool2d_backward",
    "avg_pool2d_forward",
    "global_avg_pool2d",
    "global_avg_pool2d_backward",
    "global_avg_pool2d_forward",
    "max_pool2d",
    "max_pool2d_backward",
    "max_pool2d_forward",
]


def _pool_geometry(op: str, x: Any, kernel_size: Any, stride: Any, padding: Any, layout: str) -> tuple[Any, ConvGeometry]:
    xp = namespace(op, x=x)
    check_layout(op, layout)
    check_ndim(op, "x", x, 4, axes_name(layout))
    check_floating(op, "x", x, xp)
    kernel = pair(op, "kernel_size", kernel_size, 1)
    stride = kernel if stride is None else pair(op, "stride", stride, 1)
    ph, pw = pair(op, "padding", padding, 0)
    if ph > kernel[0] // 2 or pw > kernel[1] // 2:
        raise ValueError(
            f"{op}: padding must be at most half the kernel size ({kernel[0] // 2}, {kernel[1] // 2}) "
            f"for kernel_size {kernel}; got padding ({ph}, {pw})"
        )
    geometry = ConvGeometry(tuple(x.shape), kernel, stride, (1, 1), (ph, ph, pw, pw), (0, 0), layout)
    padded = geometry.padded_hw
    if kernel[0] > padded[0] or kernel[1] > padded[1]:
        raise ValueError(
            f"{op}: kernel_size {kernel} is larger than the padded input {padded} "
            f"(input {geometry.in_hw}, padding ({ph}, {pw}))"
        )
    out_hw = ((padded[0] - kernel[0]) // stride[0] + 1, (padded[1] - kernel[1]) // stride[1] + 1)
    return xp, geometry._replace(out_hw=out_hw)


def max_pool2d_forward(x: Any, kernel_size: Any, stride: Any = None, padding: Any = 0,
                       layout: str = "NCHW") -> tuple[Any, tuple]:
    """Max pooling; ``stride`` defaults to ``kernel_size``, padding counts as -inf. NaN propagates.

    Returns ``(y, cache)``. ``layout="CHWN"`` works on (C, H, W, N) arrays (see :func:`conv2d_forward`).
    """
    xp, geometry = _pool_geometry("max_pool2d", x, kernel_size, stride, padding, layout)
    xpad = pad(x, xp, geometry.pads, value=-float("inf"), layout=layout)
    y = None
    for index in geometry.windows():     # an elementwise maximum of strided views, one per window offset
        y = xpad[index] if y is None else xp.maximum(y, xpad[index])
    if geometry.kernel == (1, 1):
        y = xp.asarray(y, copy=True)      # never hand back a view of the caller's array
    return y, MaxPool2DCache(xpad, y, geometry)


class MaxPool2DCache(NamedTuple):
    xpad: Any          # the (padded) input
    y: Any             # the output: where the input equals it, a window's maximum is
    geometry: ConvGeometry


def max_pool2d_backward(dy: Any, cache: MaxPool2DCache) -> Any:
    """Gradient of :func:`max_pool2d_forward`: each window's gradient goes to its FIRST maximum
    (row-major), as in PyTorch; tied elements after it get nothing.

    The gradient not yet given out (``remaining``) passes the window offsets in order; each offset
    holding the maximum takes all of it. Masks are applied as products with 0/1 arrays, not
    ``where()`` (NumPy's is ~15x slower on random masks); the last offset takes what is left
    without a comparison, so a window whose maximum is NaN sends its gradient there.
    """
    check_cache("max_pool2d_backward", cache, MaxPool2DCache)
    xpad, y, geometry = cache
    xp = namespace("max_pool2d_backward", dy=dy)
    check_shape("max_pool2d_backward", "dy", dy, y.shape)
    (kh, kw), (sh, sw), (ho, wo) = geometry.kernel, geometry.stride, geometry.out_hw
    overlapping = sh < kh or sw < kw
    tiling = (sh, sw) == (kh, kw) and (kh * ho, kw * wo) == geometry.padded_hw   # every element in one window
    # written offset by offset into a fresh array (kh * kw + 1 array operations). Stacking the shares into
    # place would take kh + 1 operations, but NumPy runs that slower
    new = xp.empty if tiling else xp.zeros
    dxpad = new(geometry.shape(geometry.channels, geometry.padded_hw), dtype=dy.dtype, device=device(dy))
    windows = geometry.windows()
    remaining = dy
    for k, index in enumerate(windows):
        if k < len(windows) - 1:
            share = remaining * xp.astype(xpad[index] == y, dy.dtype)
            remaining = remaining - share          # exact: each element loses all of it or nothing
        else:
            share = remaining
        if overlapping:
            dxpad = add_at(dxpad, index, share)
        else:                                       # disjoint windows: each element written once
            dxpad = set_at(dxpad, index, share)
    return crop(dxpad, geometry.pads, geometry.layout)


def max_pool2d(x: Any, kernel_size: Any, stride: Any = None, padding: Any = 0, layout: str = "NCHW") -> Any:
    """:func:`max_pool2d_forward` without the cache."""
    return max_pool2d_forward(x, kernel_size, stride, padding, layout)[0]


def avg_pool2d_forward(x: Any, kernel_size: Any, stride: Any = None, padding: Any = 0,
                       layout: str = "NCHW") -> tuple[Any, tuple]:
    """Average pooling; ``stride`` defaults to ``kernel_size``; padded zeros count in the average."""
    xp, geometry = _pool_geometry("avg_pool2d", x, kernel_size, stride, padding, layout)
    xpad = pad(x, xp, geometry.pads, layout=layout)
    total = None
    for index in geometry.windows():
        total = xpad[index] if total is None else total + xpad[index]
    return total / float(geometry.kernel[0] * geometry.kernel[1]), AvgPool2DCache(geometry)


class AvgPool2DCache(NamedTuple):
    geometry: ConvGeometry


def avg_pool2d_backward(dy: Any, cache: AvgPool2DCache) -> Any:
    """Gradient of :func:`avg_pool2d_forward`: each window shares its gradient equally."""
    check_cache("avg_pool2d_backward", cache, AvgPool2DCache)
    geometry = cache.geometry
    xp = namespace("avg_pool2d_backward", dy=dy)
    check_shape("avg_pool2d_backward", "dy", dy, geometry.shape(geometry.channels, geometry.out_hw))
    share = dy / float(geometry.kernel[0] * geometry.kernel[1])
    dxpad = xp.zeros(geometry.shape(geometry.channels, geometry.padded_hw), dtype=dy.dtype, device=device(dy))
    for index in geometry.windows():
        dxpad = add_at(dxpad, index, share)
    return crop(dxpad, geometry.pads, geometry.layout)


def avg_pool2d(x: Any, kernel_size: Any, stride: Any = None, padding: Any = 0, layout: str = "NCHW") -> Any:
    """:func:`avg_pool2d_forward` without the cache."""
    return avg_pool2d_forward(x, kernel_size, stride, padding, layout)[0]


# --------------------------------------------------------------------------- global average pooling
class GlobalAvgPool2DCache(NamedTuple):
    x_shape: tuple
    layout: str


def global_avg_pool2d_forward(x: Any, layout: str = "NCHW") -> tuple[Any, GlobalAvgPool2DCache]:
    """The mean of each channel over its H x W positions: (N, C, H, W) -> (N, C); with ``layout="CHWN"``
    (C, H, W, N) -> (C, N). What a ResNet does before its classifier."""
    op = "global_avg_pool2d"
    xp = namespace(op, x=x)
    check_layout(op, layout)
    check_ndim(op, "x", x, 4, axes_name(layout))
    check_floating(op, "x", x, xp)
    return xp.mean(x, axis=spatial_axes(4, layout)), GlobalAvgPool2DCache(tuple(x.shape), layout)


def global_avg_pool2d_backward(dy: Any, cache: GlobalAvgPool2DCache) -> Any:
    """Gradient of :func:`global_avg_pool2d_forward`: each position gets 1/(H*W) of its channel's gradient."""
    op = "global_avg_pool2d_backward"
    check_cache(op, cache, GlobalAvgPool2DCache)
    xp = namespace(op, dy=dy)
    shape, layout = cache
    rows, columns = spatial_axes(4, layout)
    pooled = list(shape)
    pooled[rows] = pooled[columns] = 1
    check_shape(op, "dy", dy, tuple(n for axis, n in enumerate(shape) if axis not in (rows, columns)))
    return xp.broadcast_to(xp.reshape(dy, tuple(pooled)), shape) * (1.0 / (shape[rows] * shape[columns]))


def global_avg_pool2d(x: Any, layout: str = "NCHW") -> Any:
    """:func:`global_avg_pool2d_forward` without the cache."""
    return global_avg_pool2d_forward(x, layout)[0]
