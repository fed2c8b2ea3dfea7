"""Padding and 2-D convolution (cross-correlation, as in PyTorch), forward and backward.

Layouts: activations NCHW, weights OIHW (out_channels, in_channels, kh, kw).
The only Python loops run over kernel offsets (kh * kw): the forward gathers one
strided slice of the input per offset (im2col) and does one matrix product; the
backward does one matrix product for each gradient and adds one slice per offset.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from array_api_compat import device

from ._checks import (
    check_floating,
    check_ndim,
    check_same_dtype,
    check_shape,
    namespace,
    pair,
    padding4,
)

__all__ = [
    "conv2d",
    "conv2d_backward",
    "conv2d_forward",
    "pad2d",
    "pad2d_backward",
    "pad2d_forward",
]


# --------------------------------------------------------------------------- padding
def _pad(x: Any, xp: Any, pads: tuple[int, int, int, int], value: float = 0) -> Any:
    """``x`` with the last two axes padded by (top, bottom, left, right); ``x`` itself when no padding."""
    top, bottom, left, right = pads
    if not any(pads):
        return x
    height, width = x.shape[-2:]
    out = xp.full(
        (*x.shape[:-2], height + top + bottom, width + left + right), value, dtype=x.dtype, device=device(x)
    )
    out[..., top:top + height, left:left + width] = x
    return out


def _crop(x: Any, pads: tuple[int, int, int, int]) -> Any:
    top, bottom, left, right = pads
    height, width = x.shape[-2:]
    return x[..., top:height - bottom, left:width - right]


def pad2d_forward(x: Any, padding: Any, value: float = 0) -> tuple[Any, tuple]:
    """Pad the last two axes of ``x`` (any ndim >= 2) with ``value``.

    ``padding`` is an int (all sides), a pair ``(h, w)`` (top/bottom, left/right)
    or four values ``(top, bottom, left, right)``. The classic notebook's ``f_padd(I, p)``
    is ``pad2d(I, p)``.
    """
    xp = namespace("pad2d", x=x)
    if x.ndim < 2:
        raise ValueError(f"pad2d: x must have at least 2 dimensions (..., H, W); got shape {tuple(x.shape)}")
    pads = padding4("pad2d", padding)
    return _pad(x, xp, pads, value) if any(pads) else xp.asarray(x, copy=True), (tuple(x.shape), pads)


def pad2d_backward(dy: Any, cache: tuple) -> Any:
    """Gradient of :func:`pad2d_forward`: the centre of ``dy``."""
    shape, pads = cache
    xp = namespace("pad2d_backward", dy=dy)
    top, bottom, left, right = pads
    check_shape("pad2d_backward", "dy", dy, (*shape[:-2], shape[-2] + top + bottom, shape[-1] + left + right))
    return xp.asarray(_crop(dy, pads), copy=True)


def pad2d(x: Any, padding: Any, value: float = 0) -> Any:
    """:func:`pad2d_forward` without the cache."""
    return pad2d_forward(x, padding, value)[0]


# --------------------------------------------------------------------------- convolution
class ConvGeometry(NamedTuple):
    """Everything about a convolution's shapes that forward works out and backward reuses."""

    x_shape: tuple
    kernel: tuple[int, int]
    stride: tuple[int, int]
    dilation: tuple[int, int]
    pads: tuple[int, int, int, int]
    out_hw: tuple[int, int]

    @property
    def padded_hw(self) -> tuple[int, int]:
        top, bottom, left, right = self.pads
        return self.x_shape[2] + top + bottom, self.x_shape[3] + left + right

    def windows(self):
        """For each kernel offset (row-major), the strided slices of the padded input it reads."""
        (kh, kw), (sh, sw), (dh, dw), (ho, wo) = self.kernel, self.stride, self.dilation, self.out_hw
        for i in range(kh):
            for j in range(kw):
                yield (
                    slice(i * dh, i * dh + sh * (ho - 1) + 1, sh),
                    slice(j * dw, j * dw + sw * (wo - 1) + 1, sw),
                )


def _conv_pads(padding: Any, kernel, dilation, stride) -> tuple[int, int, int, int]:
    if isinstance(padding, str):
        mode = padding.lower()
        if mode == "valid":
            return 0, 0, 0, 0
        if mode == "same":
            if stride != (1, 1):
                raise ValueError(f"conv2d: padding='same' needs stride 1; got stride={stride}")
            # PyTorch's rule: the odd pixel of an even total goes to the bottom/right
            total_h, total_w = dilation[0] * (kernel[0] - 1), dilation[1] * (kernel[1] - 1)
            return total_h // 2, total_h - total_h // 2, total_w // 2, total_w - total_w // 2
        raise ValueError(f"conv2d: padding must be an int, a pair, 'valid' or 'same'; got {padding!r}")
    ph, pw = pair("conv2d", "padding", padding, 0)
    return ph, ph, pw, pw


def conv_geometry(op: str, x_shape, w_shape, stride, padding, dilation) -> ConvGeometry:
    """Check the hyper-parameters against the shapes and work out the output size."""
    stride = pair(op, "stride", stride, 1)
    dilation = pair(op, "dilation", dilation, 1)
    kernel = (w_shape[2], w_shape[3])
    pads = _conv_pads(padding, kernel, dilation, stride)
    padded = (x_shape[2] + pads[0] + pads[1], x_shape[3] + pads[2] + pads[3])
    span = tuple(d * (k - 1) + 1 for d, k in zip(dilation, kernel))
    if span[0] > padded[0] or span[1] > padded[1]:
        raise ValueError(
            f"{op}: kernel {kernel[0]}x{kernel[1]} (spanning {span[0]}x{span[1]} with dilation {dilation}) "
            f"is larger than the padded input {padded[0]}x{padded[1]} (input {x_shape[2]}x{x_shape[3]}, "
            f"padding {pads})"
        )
    out_hw = ((padded[0] - span[0]) // stride[0] + 1, (padded[1] - span[1]) // stride[1] + 1)
    return ConvGeometry(tuple(x_shape), kernel, stride, dilation, pads, out_hw)


def _check_conv_args(x, w, b) -> Any:
    xp = namespace("conv2d", x=x, w=w, b=b)
    check_ndim("conv2d", "x", x, 4, "N, C, H, W")
    check_ndim("conv2d", "w", w, 4, "out_channels, in_channels, kh, kw")
    check_floating("conv2d", "x", x, xp)
    check_same_dtype("conv2d", "x", x, "w", w)
    check_same_dtype("conv2d", "x", x, "b", b)
    if x.shape[1] != w.shape[1]:
        raise ValueError(
            f"conv2d: x has {x.shape[1]} channels but w expects {w.shape[1]} input channels "
            f"(x shape {tuple(x.shape)}, w shape {tuple(w.shape)})"
        )
    if b is not None:
        check_shape("conv2d", "b", b, (w.shape[0],))
    return xp


def im2col(xpad: Any, xp: Any, geometry: ConvGeometry) -> Any:
    """The padded input's windows as columns: shape (N, C * kh * kw, out_h * out_w)."""
    n, c = xpad.shape[:2]
    (kh, kw), (ho, wo) = geometry.kernel, geometry.out_hw
    cols = xp.stack([xpad[:, :, rows, columns] for rows, columns in geometry.windows()], axis=2)
    return xp.reshape(cols, (n, c * kh * kw, ho * wo))


def col2im(dcols: Any, xp: Any, geometry: ConvGeometry) -> Any:
    """Adjoint of :func:`im2col`: add each column back to the input position it was read from."""
    n, c = geometry.x_shape[:2]
    (kh, kw), (ho, wo) = geometry.kernel, geometry.out_hw
    dcols = xp.reshape(dcols, (n, c, kh * kw, ho, wo))
    dxpad = xp.zeros((n, c, *geometry.padded_hw), dtype=dcols.dtype, device=device(dcols))
    for offset, (rows, columns) in enumerate(geometry.windows()):
        dxpad[:, :, rows, columns] += dcols[:, :, offset, :, :]
    return _crop(dxpad, geometry.pads)


def conv2d_forward(x: Any, w: Any, b: Any = None, stride: Any = 1, padding: Any = 0, dilation: Any = 1):
    """2-D cross-correlation of ``x`` (N, C, H, W) with ``w`` (O, C, kh, kw), plus ``b`` (O,).

    ``stride`` and ``dilation`` are an int or a pair; ``padding`` an int, a pair,
    ``"valid"`` or ``"same"`` (stride 1). Returns ``(y, cache)`` with y (N, O, out_h, out_w).
    """
    xp = _check_conv_args(x, w, b)
    geometry = conv_geometry("conv2d", x.shape, w.shape, stride, padding, dilation)
    n, out_channels = x.shape[0], w.shape[0]
    cols = im2col(_pad(x, xp, geometry.pads), xp, geometry)
    y = xp.reshape(w, (out_channels, cols.shape[1])) @ cols          # (N, O, out_h * out_w)
    y = xp.reshape(y, (n, out_channels, *geometry.out_hw))
    if b is not None:
        y = y + xp.reshape(b, (1, out_channels, 1, 1))
    return y, (w, cols, geometry, b is not None)


def conv2d_backward(dy: Any, cache: tuple) -> tuple[Any, Any, Any]:
    """Gradients ``(dx, dw, db)`` of :func:`conv2d_forward`; ``db`` is None when there was no bias."""
    w, cols, geometry, has_bias = cache
    xp = namespace("conv2d_backward", dy=dy, w=w)
    n, out_channels = geometry.x_shape[0], w.shape[0]
    check_shape("conv2d_backward", "dy", dy, (n, out_channels, *geometry.out_hw))
    dy_flat = xp.reshape(dy, (n, out_channels, cols.shape[2]))      # (N, O, L)
    dw = xp.reshape(xp.tensordot(dy_flat, cols, axes=([0, 2], [0, 2])), w.shape)
    dcols = xp.reshape(w, (out_channels, cols.shape[1])).T @ dy_flat  # (N, C*kh*kw, L)
    dx = col2im(dcols, xp, geometry)
    db = xp.sum(dy, axis=(0, 2, 3)) if has_bias else None
    return dx, dw, db


def conv2d(x: Any, w: Any, b: Any = None, stride: Any = 1, padding: Any = 0, dilation: Any = 1) -> Any:
    """:func:`conv2d_forward` without the cache."""
    return conv2d_forward(x, w, b, stride, padding, dilation)[0]
