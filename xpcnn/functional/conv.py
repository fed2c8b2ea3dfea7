"""Padding and 2-D convolution (cross-correlation, as in PyTorch), forward and backward.

Layouts: activations NCHW, weights OIHW (out_channels, in_channels, kh, kw).
The only Python loops run over kernel offsets: the forward gathers one strided slice
of the input per offset (im2col) and does one matrix product, or, for large layers with
stride-1 rows, gathers the kw column offsets only and does one product per kernel row
(3x less memory for 3x3 kernels); the backward does one matrix product for each
gradient and, where the input gradient is not itself a convolution, adds one slice per
kernel row and column (col2im).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

from array_api_compat import device

from ._checks import (
    check_cache,
    check_floating,
    check_ndim,
    check_same_dtype,
    check_shape,
    namespace,
    pair,
    padding4,
)
from .layout import check_layout, spatial_axes

__all__ = [
    "Conv2DCache",
    "ConvGeometry",
    "Pad2DCache",
    "conv2d",
    "conv2d_backward",
    "conv2d_forward",
    "pad2d",
    "pad2d_backward",
    "pad2d_forward",
]


# --------------------------------------------------------------------------- padding
def _region(ndim: int, axes: tuple[int, int], rows: slice, columns: slice) -> tuple:
    index = [slice(None)] * ndim
    index[axes[0]], index[axes[1]] = rows, columns
    return tuple(index)


def _pad(x: Any, xp: Any, pads: tuple[int, int, int, int], value: float = 0, layout: str = "NCHW") -> Any:
    """``x`` with its spatial axes padded by (top, bottom, left, right); ``x`` itself when no padding."""
    if not any(pads):
        return x
    top, bottom, left, right = pads
    axes = spatial_axes(x.ndim, layout)
    shape = list(x.shape)
    height, width = shape[axes[0]], shape[axes[1]]
    shape[axes[0]], shape[axes[1]] = height + top + bottom, width + left + right
    out = xp.full(tuple(shape), value, dtype=x.dtype, device=device(x))
    out[_region(x.ndim, axes, slice(top, top + height), slice(left, left + width))] = x
    return out


def _add_at(target: Any, index: tuple, value: Any) -> None:
    """``target[index] += value`` as ONE array operation: the in-place add of the view writes through, since
    basic slicing gives views in every library xpcnn runs on (numpy, cupy, torch, array_api_strict; the tests
    check the results on each). Python's ``target[index] += value`` would then also assign the view back onto
    itself: a second operation that copies nothing new (a kernel launch on torch and CuPy)."""
    view = target[index]
    view += value


def _crop(x: Any, pads: tuple[int, int, int, int], layout: str = "NCHW") -> Any:
    if not any(pads):
        return x
    top, bottom, left, right = pads
    axes = spatial_axes(x.ndim, layout)
    height, width = x.shape[axes[0]], x.shape[axes[1]]
    return x[_region(x.ndim, axes, slice(top, height - bottom), slice(left, width - right))]


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
    return _pad(x, xp, pads, value) if any(pads) else xp.asarray(x, copy=True), Pad2DCache(tuple(x.shape), pads)


class Pad2DCache(NamedTuple):
    x_shape: tuple
    pads: tuple[int, int, int, int]


def pad2d_backward(dy: Any, cache: Pad2DCache) -> Any:
    """Gradient of :func:`pad2d_forward`: the centre of ``dy``."""
    check_cache("pad2d_backward", cache, Pad2DCache)
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
    """Everything about a convolution's (or pooling's) shapes that forward works out and backward reuses."""

    x_shape: tuple
    kernel: tuple[int, int]
    stride: tuple[int, int]
    dilation: tuple[int, int]
    pads: tuple[int, int, int, int]
    out_hw: tuple[int, int]
    layout: str = "NCHW"

    @property
    def batch(self) -> int:
        return self.x_shape[3] if self.layout == "CHWN" else self.x_shape[0]

    @property
    def channels(self) -> int:
        return self.x_shape[0] if self.layout == "CHWN" else self.x_shape[1]

    @property
    def in_hw(self) -> tuple[int, int]:
        h, w = spatial_axes(4, self.layout)
        return self.x_shape[h], self.x_shape[w]

    @property
    def padded_hw(self) -> tuple[int, int]:
        top, bottom, left, right = self.pads
        height, width = self.in_hw
        return height + top + bottom, width + left + right

    def shape(self, channels: int, hw: tuple[int, int]) -> tuple:
        """A 4-D shape in this geometry's layout."""
        return (channels, *hw, self.batch) if self.layout == "CHWN" else (self.batch, channels, *hw)

    def windows(self) -> tuple[tuple, ...]:
        """For each kernel offset (row-major), the index of the strided view of the padded input it reads."""
        return _windows(self)


@functools.lru_cache(maxsize=256)     # a training loop asks for the same few geometries every step
def _windows(geometry: ConvGeometry) -> tuple[tuple, ...]:
    (kh, kw), (sh, sw), (dh, dw), (ho, wo) = geometry.kernel, geometry.stride, geometry.dilation, geometry.out_hw
    axes = spatial_axes(4, geometry.layout)
    return tuple(_region(4, axes, slice(i * dh, i * dh + sh * (ho - 1) + 1, sh),
                         slice(j * dw, j * dw + sw * (wo - 1) + 1, sw))
                 for i in range(kh) for j in range(kw))


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


def conv_geometry(op: str, x_shape, w_shape, stride, padding, dilation, layout: str = "NCHW") -> ConvGeometry:
    """Check the hyper-parameters against the shapes and work out the output size."""
    stride = pair(op, "stride", stride, 1)
    dilation = pair(op, "dilation", dilation, 1)
    kernel = (w_shape[2], w_shape[3])
    pads = _conv_pads(padding, kernel, dilation, stride)
    geometry = ConvGeometry(tuple(x_shape), kernel, stride, dilation, pads, (0, 0), layout)
    padded, (height, width) = geometry.padded_hw, geometry.in_hw
    span = tuple(d * (k - 1) + 1 for d, k in zip(dilation, kernel))
    if span[0] > padded[0] or span[1] > padded[1]:
        raise ValueError(
            f"{op}: kernel {kernel[0]}x{kernel[1]} (spanning {span[0]}x{span[1]} with dilation {dilation}) "
            f"is larger than the padded input {padded[0]}x{padded[1]} (input {height}x{width}, padding {pads})"
        )
    out_hw = ((padded[0] - span[0]) // stride[0] + 1, (padded[1] - span[1]) // stride[1] + 1)
    return geometry._replace(out_hw=out_hw)


def _check_conv_args(x, w, b, layout) -> Any:
    op = "conv2d"
    xp = namespace(op, x=x, w=w, b=b)
    check_layout(op, layout)
    check_ndim(op, "x", x, 4, "N, C, H, W" if layout == "NCHW" else "C, H, W, N")
    check_ndim(op, "w", w, 4, "out_channels, in_channels, kh, kw")
    check_floating(op, "x", x, xp)
    check_same_dtype(op, "x", x, "w", w)
    check_same_dtype(op, "x", x, "b", b)
    channels = x.shape[0] if layout == "CHWN" else x.shape[1]
    if channels != w.shape[1]:
        raise ValueError(
            f"{op}: x has {channels} channels but w expects {w.shape[1]} input channels "
            f"(x shape {tuple(x.shape)} in {layout}, w shape {tuple(w.shape)})"
        )
    if b is not None:
        check_shape(op, "b", b, (w.shape[0],))
    return xp


def im2col(xpad: Any, xp: Any, geometry: ConvGeometry) -> Any:
    """The padded input's windows as columns.

    NCHW: (N, C * kh * kw, out_h * out_w), for a batched matrix product.
    CHWN: (C * kh * kw, out_h * out_w * N), for ONE matrix product; with the batch innermost every
    window's slice is a few long contiguous runs, which is what makes this layout fast.
    """
    (kh, kw), (ho, wo) = geometry.kernel, geometry.out_hw
    c, n = geometry.channels, geometry.batch
    views = [xpad[index] for index in geometry.windows()]
    if geometry.layout == "CHWN":
        return xp.reshape(xp.stack(views, axis=1), (c * kh * kw, ho * wo * n))
    return xp.reshape(xp.stack(views, axis=2), (n, c * kh * kw, ho * wo))


# The kernel rows get one matrix product each (see row_columns) when im2col's columns would hold at least this
# many elements. Measured (numpy, 2 cores, interleaved A/B of whole training steps): ResNet-8 0.90-0.94 of the
# time at batch 64 (0.68 in a first, warm-up block) and 0.73-0.98 at 256; LeNet-5 0.86-0.99 at 256 and 0.92-0.98
# at 128. Below it (LeNet-5 at batch 64: 1.25M and 0.96M elements) one product and one gather are as fast
# and fewer array operations.
ROW_SPLIT_MIN_ELEMENTS = 1 << 21


def _splits_rows(geometry: ConvGeometry) -> bool:
    """Whether to gather only the kw column offsets and run one matrix product per kernel row (see
    :func:`row_columns`): stride-1 rows (a row offset is then a contiguous slab), kernels of more than one
    row, and im2col columns of at least ``ROW_SPLIT_MIN_ELEMENTS`` elements."""
    (kh, kw), (ho, wo) = geometry.kernel, geometry.out_hw
    size = geometry.channels * kh * kw * ho * wo * geometry.batch
    return geometry.stride[0] == 1 and kh > 1 and size >= ROW_SPLIT_MIN_ELEMENTS


def row_columns(xpad: Any, xp: Any, geometry: ConvGeometry) -> Any:
    """im2col with the kw column offsets only: CHWN (C, kw, H_padded, out_w, N), NCHW (N, C, kw, H_padded, out_w).

    With stride 1 along the rows, kernel row i reads rows i*dh .. i*dh + out_h - 1 of every (channel, column
    offset) slab: a view that is ONE matrix (rows: C * kw, columns: out_h * out_w [* N], each row contiguous),
    see :func:`_row_part`. A kh x kw convolution is then kh matrix products with inner dimension C * kw over
    kw/(kh*kw) of im2col's memory: 3x less to write for 3x3 kernels, 5x for 5x5. Measured on this 2-core
    machine (numpy, CHWN): a 16@32x32 3x3 layer 9.7 -> 4.5 ms at batch 64 and 38 -> 28 ms at 256; LeNet's
    second layer 3.3 -> 2.1 ms at batch 256; equal for a 64@8x8 layer.
    """
    (kh, kw), sw, (dh, dw), (ho, wo) = geometry.kernel, geometry.stride[1], geometry.dilation, geometry.out_hw
    rows = slice(0, (kh - 1) * dh + ho)
    axes = spatial_axes(4, geometry.layout)
    views = [xpad[_region(4, axes, rows, slice(j * dw, j * dw + sw * (wo - 1) + 1, sw))] for j in range(kw)]
    return xp.stack(views, axis=1 if geometry.layout == "CHWN" else 2)


def _row_part(cols: Any, xp: Any, geometry: ConvGeometry, i: int) -> Any:
    """Kernel row ``i``'s columns out of :func:`row_columns`: (C * kw, out_h * out_w * N) in CHWN,
    (N, C * kw, out_h * out_w) in NCHW; a view (no copy) where the library can express it as one."""
    (ho, wo), dh = geometry.out_hw, geometry.dilation[0]
    c, n, kw = geometry.channels, geometry.batch, geometry.kernel[1]
    if geometry.layout == "CHWN":
        return xp.reshape(cols[:, :, i * dh:i * dh + ho, ...], (c * kw, ho * wo * n))
    return xp.reshape(cols[:, :, :, i * dh:i * dh + ho, :], (n, c * kw, ho * wo))


def _kernel_rows_first(w: Any, xp: Any) -> Any:
    """``w`` (O, C, kh, kw) as (kh, O, C * kw): one (O, C * kw) matrix per kernel row."""
    out_channels, channels, kh, kw = w.shape
    return xp.reshape(xp.permute_dims(w, (2, 0, 1, 3)), (kh, out_channels, channels * kw))


def _kernel_columns_first(w: Any, xp: Any) -> Any:
    """``w`` (O, C, kh, kw) as a (C * kw * kh, O) matrix: rows ordered channel, kernel column, kernel row,
    the order :func:`col2im` takes its columns in."""
    out_channels, channels, kh, kw = w.shape
    return xp.reshape(xp.permute_dims(w, (1, 3, 2, 0)), (channels * kw * kh, out_channels))


def col2im(dcols: Any, xp: Any, geometry: ConvGeometry) -> Any:
    """Adjoint of :func:`im2col`: add each column back to the input position it was read from.

    ``dcols`` has its rows ordered (channel, kernel column j, kernel row i) (see
    :func:`_kernel_columns_first`). The adds run in two stages: first the kh kernel rows into a
    buffer of full padded height, then the kw kernel columns into the image. In the first stage
    every add covers whole output rows, long contiguous runs, and NumPy adds strided views with
    short runs ~4x slower per element than contiguous ones, so kh + kw adds of which kh are fast
    beat kh * kw short-run adds (0.87 -> 0.62 ms for LeNet's second layer at batch 64, GEMM included).
    """
    (kh, kw), (sh, sw), (dh, dw), (ho, wo) = geometry.kernel, geometry.stride, geometry.dilation, geometry.out_hw
    c, n = geometry.channels, geometry.batch
    hp, wp = geometry.padded_hw
    chwn = geometry.layout == "CHWN"
    lead = (c, kw) if chwn else (n, c, kw)             # the axes before H in the column buffer
    tail = (n,) if chwn else ()                        # the axes after W
    cols = xp.reshape(dcols, (*lead, kh, ho, wo, *tail))
    rows = xp.zeros((*lead, hp, wo, *tail), dtype=dcols.dtype, device=device(dcols))
    before = (slice(None),) * len(lead)
    for i in range(kh):
        _add_at(rows, (*before, slice(i * dh, i * dh + sh * (ho - 1) + 1, sh), ...), cols[(*before, i, ...)])
    dxpad = xp.zeros(geometry.shape(c, (hp, wp)), dtype=dcols.dtype, device=device(dcols))
    for j in range(kw):
        columns = slice(j * dw, j * dw + sw * (wo - 1) + 1, sw)
        if chwn:
            _add_at(dxpad, (slice(None), slice(None), columns, slice(None)), rows[:, j, ...])
        else:
            _add_at(dxpad, (Ellipsis, columns), rows[:, :, j, ...])
    return _crop(dxpad, geometry.pads, geometry.layout)


def conv2d_forward(x: Any, w: Any, b: Any = None, stride: Any = 1, padding: Any = 0, dilation: Any = 1,
                   layout: str = "NCHW"):
    """2-D cross-correlation of ``x`` (N, C, H, W) with ``w`` (O, C, kh, kw), plus ``b`` (O,).

    ``stride`` and ``dilation`` are an int or a pair; ``padding`` an int, a pair,
    ``"valid"`` or ``"same"`` (stride 1). Returns ``(y, cache)`` with y (N, O, out_h, out_w).
    ``layout="CHWN"`` takes x as (C, H, W, N) and returns y as (O, out_h, out_w, N): the
    batch-innermost layout xpcnn's layers use between themselves because it is faster.
    """
    xp = _check_conv_args(x, w, b, layout)
    geometry = conv_geometry("conv2d", x.shape, w.shape, stride, padding, dilation, layout)
    out_channels = w.shape[0]
    xpad = _pad(x, xp, geometry.pads, layout=layout)
    if _splits_rows(geometry):
        cols = row_columns(xpad, xp, geometry)
        w_rows = _kernel_rows_first(w, xp)
        y = None
        for i in range(geometry.kernel[0]):                       # NCHW (N, O, L); CHWN (O, L * N)
            part = w_rows[i, ...] @ _row_part(cols, xp, geometry, i)
            y = part if y is None else y + part
    else:
        cols = im2col(xpad, xp, geometry)
        y = xp.reshape(w, (out_channels, cols.shape[-2])) @ cols
    y = xp.reshape(y, geometry.shape(out_channels, geometry.out_hw))
    if b is not None:        # in place: y is a fresh array of ours
        y += xp.reshape(b, (out_channels, 1, 1, 1) if layout == "CHWN" else (1, out_channels, 1, 1))
    return y, Conv2DCache(w, cols, geometry, b is not None)


class Conv2DCache(NamedTuple):
    """What :func:`conv2d_backward` needs: the weights, the input's columns (:func:`im2col`, or
    :func:`row_columns` where the geometry splits rows) and the geometry."""

    w: Any
    cols: Any
    geometry: ConvGeometry
    has_bias: bool


def _weight_gradient(dy_flat: Any, cols: Any, xp: Any, layout: str = "CHWN", transposed: bool = False) -> Any:
    """``dy_flat @ cols.T``: (O, K) times (K, P) with a huge shared dimension K (positions x batch); in
    NCHW, where both carry a leading batch axis, the same contracted over batch and positions.

    With fewer than 8 output channels and small patches (LeNet's first layer: O=6, P=25, K=50k at
    batch 64), one matrix-vector product per channel, as a batched matmul, streams the columns at
    memory speed, while OpenBLAS's GEMM kernels run such thin matrices 2.4x slower (0.70 -> 0.29 ms
    measured here). With larger patches reading the columns O times costs more than it saves.

    ``transposed=True`` (row-split columns, whose rows are strided views) takes the product as
    ``(cols @ dy_flat.T).T``, which OpenBLAS runs faster there (LeNet's second layer at batch 256: 1.79 vs
    2.34 ms; ResNet's 16@32x32 layer 2.75 vs 3.19 ms); its result is a transposed view, copied once when the
    rows are stacked. On whole im2col columns the two orders run alike and this one would cost that copy.
    """
    if layout == "NCHW":
        return xp.tensordot(dy_flat, cols, axes=([0, 2], [0, 2]))
    if dy_flat.shape[0] < 8 and cols.shape[0] <= 256:
        return xp.matmul(dy_flat[:, None, :], cols.T)[:, 0, :]
    return (cols @ dy_flat.T).T if transposed else dy_flat @ cols.T


def conv2d_backward(dy: Any, cache: Conv2DCache, input_grad: bool = True) -> tuple[Any, Any, Any]:
    """Gradients ``(dx, dw, db)`` of :func:`conv2d_forward`; ``db`` is None when there was no bias,
    ``dx`` is None when ``input_grad=False`` (the first layer of a network needs no input gradient)."""
    check_cache("conv2d_backward", cache, Conv2DCache)
    w, cols, geometry, has_bias = cache
    xp = namespace("conv2d_backward", dy=dy, w=w)
    out_channels = w.shape[0]
    check_shape("conv2d_backward", "dy", dy, geometry.shape(out_channels, geometry.out_hw))
    (ho, wo), n = geometry.out_hw, geometry.batch
    if geometry.layout == "CHWN":
        dy_flat = xp.reshape(dy, (out_channels, ho * wo * n))         # (O, L * N)
        db = xp.sum(dy_flat, axis=1) if has_bias else None
    else:
        dy_flat = xp.reshape(dy, (n, out_channels, ho * wo))          # (N, O, L)
        db = xp.sum(dy, axis=(0, 2, 3)) if has_bias else None
    if _splits_rows(geometry):
        kh, kw = geometry.kernel
        per_row = xp.stack([_weight_gradient(dy_flat, _row_part(cols, xp, geometry, i), xp, geometry.layout,
                                             transposed=True) for i in range(kh)])          # (kh, O, C * kw)
        dw = xp.permute_dims(xp.reshape(per_row, (kh, out_channels, w.shape[1], kw)), (1, 2, 0, 3))
    else:
        dw = _weight_gradient(dy_flat, cols, xp, geometry.layout)
    dy_pads = _transposed_pads(geometry, w.shape[1], out_channels) if input_grad else None
    if not input_grad:
        dx = None
    elif dy_pads is not None:
        dx = _input_gradient_as_convolution(dy, w, xp, geometry.layout, dy_pads)
    else:
        dx = col2im(_kernel_columns_first(w, xp) @ dy_flat, xp, geometry)
    return dx, xp.reshape(dw, w.shape), db


def _transposed_pads(geometry: ConvGeometry, in_channels: int, out_channels: int) -> tuple[int, int] | None:
    """The padding of ``dy`` that turns the input gradient into a plain convolution, when that is the cheaper
    way: stride and dilation 1, symmetric padding of at most kernel - 1, and ``dy``'s columns no larger than
    col2im's (out_channels * H_in * W_in <= in_channels * H_out * W_out, e.g. ResNet's 'same' 3x3 layers; not
    LeNet's second layer, whose dy columns would be 5x larger). None otherwise."""
    (kh, kw), (ho, wo), (hi, wi) = geometry.kernel, geometry.out_hw, geometry.in_hw
    top, bottom, left, right = geometry.pads
    if geometry.stride != (1, 1) or geometry.dilation != (1, 1) or top != bottom or left != right:
        return None
    if top > kh - 1 or left > kw - 1 or out_channels * hi * wi > in_channels * ho * wo:
        return None
    return kh - 1 - top, kw - 1 - left


def _input_gradient_as_convolution(dy: Any, w: Any, xp: Any, layout: str, dy_pads: tuple[int, int]) -> Any:
    """dx = dy padded by kernel - 1 - padding, correlated with the kernels flipped and their channel axes
    swapped: one im2col and one matrix product (3 array operations for the flipped weights and the padding)
    instead of col2im's kh + kw strided adds. Measured on ResNet-8 (3x32x32, batch 64): see the commit."""
    flipped = xp.flip(xp.permute_dims(w, (1, 0, 2, 3)), axis=(2, 3))          # (C_in, C_out, kh, kw)
    return conv2d_forward(dy, flipped, None, stride=1, padding=dy_pads, layout=layout)[0]


def conv2d(x: Any, w: Any, b: Any = None, stride: Any = 1, padding: Any = 0, dilation: Any = 1,
           layout: str = "NCHW") -> Any:
    """:func:`conv2d_forward` without the cache."""
    return conv2d_forward(x, w, b, stride, padding, dilation, layout)[0]
