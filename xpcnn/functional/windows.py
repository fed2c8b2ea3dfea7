"""Sliding windows over images: the geometry, padding, and the gathers and scatters that convolution and pooling
share (Chainer keeps the same in ``utils/conv.py``).

Every window offset of a kernel is one strided view of the padded input (:meth:`ConvGeometry.windows`), so the
only Python loops here run over kernel offsets. Arrays are never written through views: :func:`pad` and
:func:`add_at` write into arrays made here, and on an immutable array (JAX) they return an updated copy instead.
"""

from __future__ import annotations

import functools
import operator
from typing import Any, NamedTuple

import array_api_extra as xpx
from array_api_compat import device, is_writeable_array

from .layout import batch_axis, batch_last, channel_axis, from_nchw_shape, spatial_axes

__all__ = ["ConvGeometry", "add_at", "col2im", "crop", "im2col", "pad", "region", "row_columns", "row_part",
           "set_at"]


class ConvGeometry(NamedTuple):
    """Everything about a convolution's (or pooling's) shapes that forward works out and backward reuses."""

    x_shape: tuple
    kernel: tuple[int, int]
    stride: tuple[int, int]
    dilation: tuple[int, int]
    pads: tuple[int, int, int, int]        # top, bottom, left, right
    out_hw: tuple[int, int]
    layout: str = "NCHW"

    @property
    def batch(self) -> int:
        return self.x_shape[batch_axis(4, self.layout)]

    @property
    def channels(self) -> int:
        return self.x_shape[channel_axis(4, self.layout)]

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
        return from_nchw_shape((self.batch, channels, *hw), self.layout)

    def windows(self) -> tuple[tuple, ...]:
        """For each kernel offset (row-major), the index of the strided view of the padded input it reads."""
        return _windows(self)


@functools.lru_cache(maxsize=256)     # a training loop asks for the same few geometries every step
def _windows(geometry: ConvGeometry) -> tuple[tuple, ...]:
    (kh, kw), (sh, sw), (dil_h, dil_w), (ho, wo) = geometry.kernel, geometry.stride, geometry.dilation, geometry.out_hw
    axes = spatial_axes(4, geometry.layout)
    return tuple(region(4, axes, slice(i * dil_h, i * dil_h + sh * (ho - 1) + 1, sh),
                        slice(j * dil_w, j * dil_w + sw * (wo - 1) + 1, sw))
                 for i in range(kh) for j in range(kw))


def region(ndim: int, axes: tuple[int, int], rows: slice, columns: slice) -> tuple:
    """The index selecting ``rows`` and ``columns`` along the two spatial ``axes`` of an ``ndim`` array."""
    index = [slice(None)] * ndim
    index[axes[0]], index[axes[1]] = rows, columns
    return tuple(index)


# --------------------------------------------------------------------------- updates that immutable arrays accept
def set_at(target: Any, index: tuple, value: Any) -> Any:
    """``target[index] = value``, returned: in place where ``target`` is writeable (the standard's item
    assignment, straight: ``array_api_extra.at`` would do the same after ~8 us of checks, which a LeNet-5 step
    pays nine times), a new array where it is not (JAX), through ``array_api_extra.at``."""
    if is_writeable_array(target):
        target[index] = value
        return target
    return xpx.at(target, index).set(value)


def add_at(target: Any, index: tuple, value: Any) -> Any:
    """``target[index] += value``, returned.

    On a writeable array this is ONE array operation: the in-place add of the view. (``array_api_extra.at``'s
    ``add`` runs ``target[index] = target[index] + value`` there, whose assignment is a second operation, a copy
    kernel on torch and CuPy.) An array that is not writeable (JAX), or whose view refuses an in-place add, gets
    ``array_api_extra.at``'s functional update, so the result is never silently lost.
    """
    if is_writeable_array(target):
        view = target[index]
        if operator.iadd(view, value) is view:
            return target
    return xpx.at(target, index).add(value)


# --------------------------------------------------------------------------- padding
def pad(x: Any, xp: Any, pads: tuple[int, int, int, int], value: float = 0, layout: str = "NCHW") -> Any:
    """``x`` with its spatial axes padded by (top, bottom, left, right); ``x`` itself when no padding."""
    if not any(pads):
        return x
    top, bottom, left, right = pads
    axes = spatial_axes(x.ndim, layout)
    shape = list(x.shape)
    height, width = shape[axes[0]], shape[axes[1]]
    shape[axes[0]], shape[axes[1]] = height + top + bottom, width + left + right
    out = xp.full(tuple(shape), value, dtype=x.dtype, device=device(x))
    return set_at(out, region(x.ndim, axes, slice(top, top + height), slice(left, left + width)), x)


def crop(x: Any, pads: tuple[int, int, int, int], layout: str = "NCHW") -> Any:
    """The inverse of :func:`pad` (a view)."""
    if not any(pads):
        return x
    top, bottom, left, right = pads
    axes = spatial_axes(x.ndim, layout)
    height, width = x.shape[axes[0]], x.shape[axes[1]]
    return x[region(x.ndim, axes, slice(top, height - bottom), slice(left, width - right))]


# --------------------------------------------------------------------------- gathers and scatters
def im2col(xpad: Any, xp: Any, geometry: ConvGeometry) -> Any:
    """The padded input's windows as columns.

    NCHW: (N, C * kh * kw, out_h * out_w), for a batched matrix product.
    CHWN: (C * kh * kw, out_h * out_w * N), for ONE matrix product; with the batch innermost every
    window's slice is a few long contiguous runs, which is what makes this layout fast.
    """
    (kh, kw), (ho, wo) = geometry.kernel, geometry.out_hw
    c, n = geometry.channels, geometry.batch
    views = [xpad[index] for index in geometry.windows()]
    if batch_last(geometry.layout):
        return xp.reshape(xp.stack(views, axis=1), (c * kh * kw, ho * wo * n))
    return xp.reshape(xp.stack(views, axis=2), (n, c * kh * kw, ho * wo))


def col2im(dcols: Any, xp: Any, geometry: ConvGeometry) -> Any:
    """Adjoint of :func:`im2col`: add each column back to the input position it was read from.

    ``dcols`` has its rows ordered (channel, kernel column j, kernel row i). The adds run in two stages: first
    the kh kernel rows into a buffer of full padded height, then the kw kernel columns into the image. In the
    first stage every add covers whole output rows, long contiguous runs, so kh + kw adds of which kh are fast
    replace kh * kw adds of short runs.
    """
    (kh, kw), (sh, sw), (dil_h, dil_w), (ho, wo) = geometry.kernel, geometry.stride, geometry.dilation, geometry.out_hw
    c, n = geometry.channels, geometry.batch
    hp, wp = geometry.padded_hw
    chwn = batch_last(geometry.layout)
    lead = (c, kw) if chwn else (n, c, kw)             # the axes before H in the column buffer
    tail = (n,) if chwn else ()                        # the axes after W
    cols = xp.reshape(dcols, (*lead, kh, ho, wo, *tail))
    rows = xp.zeros((*lead, hp, wo, *tail), dtype=dcols.dtype, device=device(dcols))
    before = (slice(None),) * len(lead)
    for i in range(kh):
        rows = add_at(rows, (*before, slice(i * dil_h, i * dil_h + sh * (ho - 1) + 1, sh), ...),
                      cols[(*before, i, ...)])
    dxpad = xp.zeros(geometry.shape(c, (hp, wp)), dtype=dcols.dtype, device=device(dcols))
    for j in range(kw):
        columns = slice(j * dil_w, j * dil_w + sw * (wo - 1) + 1, sw)
        if chwn:
            dxpad = add_at(dxpad, (slice(None), slice(None), columns, slice(None)), rows[:, j, ...])
        else:
            dxpad = add_at(dxpad, (Ellipsis, columns), rows[:, :, j, ...])
    return crop(dxpad, geometry.pads, geometry.layout)


def row_columns(xpad: Any, xp: Any, geometry: ConvGeometry) -> Any:
    """im2col with the kw column offsets only: CHWN (C, kw, H_padded, out_w, N), NCHW (N, C, kw, H_padded, out_w).

    With stride 1 along the rows, kernel row i reads rows i*dil_h .. i*dil_h + out_h - 1 of every (channel,
    column offset) slab: a view that is ONE matrix (rows: C * kw, columns: out_h * out_w [* N], each row
    contiguous), see :func:`row_part`. A kh x kw convolution is then kh matrix products with inner dimension
    C * kw over kw/(kh*kw) of im2col's memory: 3x less to write for 3x3 kernels, 5x for 5x5.
    """
    (kh, kw), sw, (dil_h, dil_w), (ho, wo) = geometry.kernel, geometry.stride[1], geometry.dilation, geometry.out_hw
    rows = slice(0, (kh - 1) * dil_h + ho)
    axes = spatial_axes(4, geometry.layout)
    views = [xpad[region(4, axes, rows, slice(j * dil_w, j * dil_w + sw * (wo - 1) + 1, sw))] for j in range(kw)]
    return xp.stack(views, axis=channel_axis(4, geometry.layout) + 1)     # the offsets right after the channels


def row_part(cols: Any, xp: Any, geometry: ConvGeometry, i: int) -> Any:
    """Kernel row ``i``'s columns out of :func:`row_columns`: (C * kw, out_h * out_w * N) in CHWN,
    (N, C * kw, out_h * out_w) in NCHW; a view (no copy) where the library can express it as one."""
    (ho, wo), dil_h = geometry.out_hw, geometry.dilation[0]
    c, n, kw = geometry.channels, geometry.batch, geometry.kernel[1]
    if batch_last(geometry.layout):
        return xp.reshape(cols[:, :, i * dil_h:i * dil_h + ho, ...], (c * kw, ho * wo * n))
    return xp.reshape(cols[:, :, :, i * dil_h:i * dil_h + ho, :], (n, c * kw, ho * wo))
