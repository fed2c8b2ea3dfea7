"""Max and average pooling over NCHW inputs, forward and backward.

Each window offset is one strided view of the (padded) input; the pooled value is
an elementwise maximum or sum over those views, so the only loop runs over the
kh * kw offsets. Max pooling records, per output element, the offset of the FIRST
maximum in its window and sends the whole gradient there: with ties (zero borders
in MNIST are everywhere) exactly one input element receives it, as in PyTorch.
"""

from __future__ import annotations

from typing import Any

from array_api_compat import device

from ._checks import check_floating, check_ndim, check_shape, namespace, pair
from .conv import ConvGeometry, _crop, _pad

__all__ = [
    "avg_pool2d",
    "avg_pool2d_backward",
    "avg_pool2d_forward",
    "max_pool2d",
    "max_pool2d_backward",
    "max_pool2d_forward",
]


def _pool_geometry(op: str, x: Any, kernel_size: Any, stride: Any, padding: Any) -> tuple[Any, ConvGeometry]:
    xp = namespace(op, x=x)
    check_ndim(op, "x", x, 4, "N, C, H, W")
    check_floating(op, "x", x, xp)
    kernel = pair(op, "kernel_size", kernel_size, 1)
    stride = kernel if stride is None else pair(op, "stride", stride, 1)
    ph, pw = pair(op, "padding", padding, 0)
    if ph > kernel[0] // 2 or pw > kernel[1] // 2:
        raise ValueError(
            f"{op}: padding must be at most half the kernel size ({kernel[0] // 2}, {kernel[1] // 2}) "
            f"for kernel_size {kernel}; got padding ({ph}, {pw})"
        )
    padded = (x.shape[2] + 2 * ph, x.shape[3] + 2 * pw)
    if kernel[0] > padded[0] or kernel[1] > padded[1]:
        raise ValueError(
            f"{op}: kernel_size {kernel} is larger than the padded input {padded} "
            f"(input {tuple(x.shape[2:])}, padding ({ph}, {pw}))"
        )
    out_hw = ((padded[0] - kernel[0]) // stride[0] + 1, (padded[1] - kernel[1]) // stride[1] + 1)
    return xp, ConvGeometry(tuple(x.shape), kernel, stride, (1, 1), (ph, ph, pw, pw), out_hw)


def max_pool2d_forward(x: Any, kernel_size: Any, stride: Any = None, padding: Any = 0) -> tuple[Any, tuple]:
    """Max pooling; ``stride`` defaults to ``kernel_size``, padding counts as -inf.

    Returns ``(y, cache)``; the cache holds, per output element, the window offset of its first maximum.
    """
    xp, geometry = _pool_geometry("max_pool2d", x, kernel_size, stride, padding)
    xpad = _pad(x, xp, geometry.pads, value=-float("inf"))
    windows = geometry.windows()
    rows, columns = next(windows)
    y = xpad[:, :, rows, columns]
    argmax = xp.zeros(y.shape, dtype=xp.int16 if geometry.kernel[0] * geometry.kernel[1] < 2**15 else xp.int32,
                      device=device(x))
    for offset, (rows, columns) in enumerate(windows, start=1):
        candidate = xpad[:, :, rows, columns]
        # strict: an equal later value never displaces the first maximum; NaN wins and stays, as in PyTorch
        better = (candidate > y) | xp.isnan(candidate)
        y = xp.where(better, candidate, y)
        argmax = xp.where(better, xp.asarray(offset, dtype=argmax.dtype, device=device(x)), argmax)
    if geometry.kernel == (1, 1):
        y = xp.asarray(y, copy=True)      # never hand back a view of the caller's array
    return y, (argmax, geometry)


def max_pool2d_backward(dy: Any, cache: tuple) -> Any:
    """Gradient of :func:`max_pool2d_forward`: each window's gradient goes to its first maximum."""
    argmax, geometry = cache
    xp = namespace("max_pool2d_backward", dy=dy)
    check_shape("max_pool2d_backward", "dy", dy, argmax.shape)
    n, c = geometry.x_shape[:2]
    dxpad = xp.zeros((n, c, *geometry.padded_hw), dtype=dy.dtype, device=device(dy))
    zero = xp.zeros_like(dy)
    for offset, (rows, columns) in enumerate(geometry.windows()):
        dxpad[:, :, rows, columns] += xp.where(argmax == offset, dy, zero)
    return _crop(dxpad, geometry.pads)


def max_pool2d(x: Any, kernel_size: Any, stride: Any = None, padding: Any = 0) -> Any:
    """:func:`max_pool2d_forward` without the cache."""
    return max_pool2d_forward(x, kernel_size, stride, padding)[0]


def avg_pool2d_forward(x: Any, kernel_size: Any, stride: Any = None, padding: Any = 0) -> tuple[Any, tuple]:
    """Average pooling; ``stride`` defaults to ``kernel_size``; padded zeros count in the average."""
    xp, geometry = _pool_geometry("avg_pool2d", x, kernel_size, stride, padding)
    xpad = _pad(x, xp, geometry.pads)
    total = None
    for rows, columns in geometry.windows():
        window = xpad[:, :, rows, columns]
        total = window if total is None else total + window
    return total / float(geometry.kernel[0] * geometry.kernel[1]), (geometry,)


def avg_pool2d_backward(dy: Any, cache: tuple) -> Any:
    """Gradient of :func:`avg_pool2d_forward`: each window shares its gradient equally."""
    (geometry,) = cache
    xp = namespace("avg_pool2d_backward", dy=dy)
    n, c = geometry.x_shape[:2]
    check_shape("avg_pool2d_backward", "dy", dy, (n, c, *geometry.out_hw))
    share = dy / float(geometry.kernel[0] * geometry.kernel[1])
    dxpad = xp.zeros((n, c, *geometry.padded_hw), dtype=dy.dtype, device=device(dy))
    for rows, columns in geometry.windows():
        dxpad[:, :, rows, columns] += share
    return _crop(dxpad, geometry.pads)


def avg_pool2d(x: Any, kernel_size: Any, stride: Any = None, padding: Any = 0) -> Any:
    """:func:`avg_pool2d_forward` without the cache."""
    return avg_pool2d_forward(x, kernel_size, stride, padding)[0]
