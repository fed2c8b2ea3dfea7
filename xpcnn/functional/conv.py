"""Padding and 2-D convolution (cross-correlation, as in PyTorch), forward and backward.

Layouts: activations NCHW (or CHWN, see :mod:`xpcnn.functional.layout`), weights OIHW (out_channels,
in_channels, kh, kw). The textbook route, which every convolution can take (``route="im2col"``):

- forward: gather one strided slice of the padded input per kernel offset into columns (im2col), then ONE
  matrix product with the weights;
- backward: the weight gradient is one product of ``dy`` with the columns, the input gradient one product of
  the weights with ``dy`` whose columns are added back where they were read (col2im).

Two more routes give the same numbers faster on some shapes; :func:`choose_route` picks, the forward records
the choice in its cache (:class:`ConvRoute`) and the backward follows it:

- ``columns="rows"``: gather only the kw column offsets and run one product per kernel row (3x less memory
  for 3x3 kernels), for large layers whose rows have stride 1;
- ``input_grad="transposed"``: the input gradient as a convolution of ``dy`` with the flipped kernels, for
  stride-1 'same'-like layers where ``dy``'s columns are no larger than col2im's.

The gathers and scatters themselves live in :mod:`xpcnn.functional.windows`, shared with pooling.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from ._checks import (
    as_int,
    check_cache,
    check_floating,
    check_ndim,
    check_same_dtype,
    check_shape,
    namespace,
    pair,
    padding4,
)
from .layout import axes_name, batch_last, channel_axis, channel_shape, check_layout
from .windows import ConvGeometry, col2im, crop, im2col, pad, row_columns, row_part

__all__ = [
    "COLUMN_ROUTES",
    "Conv2DCache",
    "ConvGeometry",
    "ConvRoute",
    "INPUT_GRAD_ROUTES",
    "Pad2DCache",
    "choose_route",
    "conv2d",
    "conv2d_backward",
    "conv2d_forward",
    "pad2d",
    "pad2d_backward",
    "pad2d_forward",
]

# The size rules that pick a route (speed only: every route gives the same numbers up to rounding, tested). They
# were measured in whole training steps on a 2-core AMD EPYC (benchmarks/RESULTS.md, "Thresholds").
# "rows" when the im2col columns would hold at least this many elements and the rows have stride 1:
ROW_SPLIT_MIN_ELEMENTS = 1 << 21
# Weight gradient: with fewer output channels than this and at most THIN_MAX_PATCH rows of columns (LeNet-5's
# first layer: 6 channels, 25 rows), one matrix-vector product per channel instead of one thin GEMM.
THIN_MAX_CHANNELS = 8
THIN_MAX_PATCH = 256


# --------------------------------------------------------------------------- padding
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
    return pad(x, xp, pads, value) if any(pads) else xp.asarray(x, copy=True), Pad2DCache(tuple(x.shape), pads)


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
    return xp.asarray(crop(dy, pads), copy=True)


def pad2d(x: Any, padding: Any, value: float = 0) -> Any:
    """:func:`pad2d_forward` without the cache."""
    return pad2d_forward(x, padding, value)[0]


# --------------------------------------------------------------------------- geometry and arguments
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


def _check_conv_args(x, w, b, layout, groups: int = 1) -> Any:
    op = "conv2d"
    xp = namespace(op, x=x, w=w, b=b)
    groups = as_int(op, "groups", groups, 1)
    check_layout(op, layout)
    check_ndim(op, "x", x, 4, axes_name(layout))
    check_ndim(op, "w", w, 4, "out_channels, in_channels, kh, kw")
    check_floating(op, "x", x, xp)
    check_same_dtype(op, "x", x, "w", w)
    check_same_dtype(op, "x", x, "b", b)
    channels = x.shape[channel_axis(4, layout)]
    if channels % groups or w.shape[0] % groups:
        raise ValueError(f"{op}: groups={groups} must divide the input channels ({channels}) and the output "
                         f"channels ({w.shape[0]})")
    if channels != w.shape[1] * groups:
        per_group = f" per group ({groups} groups)" if groups > 1 else ""
        raise ValueError(
            f"{op}: x has {channels} channels but w expects {w.shape[1]} input channels{per_group} "
            f"(x shape {tuple(x.shape)} in {layout}, w shape {tuple(w.shape)})"
        )
    if b is not None:
        check_shape(op, "b", b, (w.shape[0],))
    return xp


# --------------------------------------------------------------------------- routes
COLUMN_ROUTES = ("im2col", "rows")
INPUT_GRAD_ROUTES = ("col2im", "transposed")


class ConvRoute(NamedTuple):
    """How one convolution runs: chosen by the forward, kept in its cache, followed by the backward.

    ``columns``: "im2col" (every window offset gathered, one matrix product) or "rows" (the kw column offsets
    gathered, one product per kernel row; needs stride 1 along the rows). ``input_grad``: "col2im" (the
    columns' gradients added back where they were read) or "transposed" (a stride-1 convolution of ``dy``
    with the flipped kernels; needs stride and dilation 1 and symmetric padding of at most kernel - 1).
    """

    columns: str = "im2col"
    input_grad: str = "col2im"


def _transposed_pads(geometry: ConvGeometry) -> tuple[int, int] | None:
    """The padding of ``dy`` that makes the input gradient a plain stride-1 convolution; None where the geometry
    has none (strides, dilation, asymmetric padding, or padding wider than the kernel)."""
    (kh, kw) = geometry.kernel
    top, bottom, left, right = geometry.pads
    if geometry.stride != (1, 1) or geometry.dilation != (1, 1) or top != bottom or left != right:
        return None
    if top > kh - 1 or left > kw - 1:
        return None
    return kh - 1 - top, kw - 1 - left


def choose_route(geometry: ConvGeometry, out_channels: int, groups: int = 1) -> ConvRoute:
    """The fastest route measured for this shape (the size rules above): "rows" for columns
    of at least ``ROW_SPLIT_MIN_ELEMENTS`` elements with stride-1 rows and kernels of more than one row;
    "transposed" where ``dy``'s columns would be no larger than col2im's (out_channels * H_in * W_in <=
    in_channels * H_out * W_out, e.g. ResNet's 'same' 3x3 layers, not LeNet-5's second layer)."""
    (kh, kw), (ho, wo), (hi, wi) = geometry.kernel, geometry.out_hw, geometry.in_hw
    size = geometry.channels * kh * kw * ho * wo * geometry.batch
    rows = geometry.stride[0] == 1 and kh > 1 and size >= ROW_SPLIT_MIN_ELEMENTS and groups == 1
    transposed = (_transposed_pads(geometry) is not None
                  and out_channels * hi * wi <= geometry.channels * ho * wo)
    return ConvRoute("rows" if rows else "im2col", "transposed" if transposed else "col2im")


def _check_route(route: Any, geometry: ConvGeometry | None, groups: int = 1) -> ConvRoute:
    """A route given by the caller: "im2col" / "rows" (with col2im), or a pair; checked against ``geometry``
    unless that is None."""
    given = route
    if isinstance(route, str):
        route = ConvRoute(route, "col2im")
    if not (isinstance(route, tuple) and len(route) == 2):
        raise ValueError(f"conv2d: route must be None, 'im2col', 'rows' or a ConvRoute(columns, input_grad); "
                         f"got {given!r}")
    route = ConvRoute(*route)
    if route.columns not in COLUMN_ROUTES:
        raise ValueError(f"conv2d: route columns must be one of {', '.join(COLUMN_ROUTES)}; got {route.columns!r}")
    if route.input_grad not in INPUT_GRAD_ROUTES:
        raise ValueError(f"conv2d: route input_grad must be one of {', '.join(INPUT_GRAD_ROUTES)}; "
                         f"got {route.input_grad!r}")
    if geometry is None:
        return route
    if route.columns == "rows" and groups > 1:
        raise ValueError(f"conv2d: route columns='rows' takes one group; got groups={groups} (use 'im2col')")
    if route.columns == "rows" and geometry.stride[0] != 1:
        raise ValueError(f"conv2d: route columns='rows' needs stride 1 along the rows; got stride {geometry.stride}")
    if route.input_grad == "transposed" and _transposed_pads(geometry) is None:
        raise ValueError(f"conv2d: route input_grad='transposed' needs stride and dilation 1 and symmetric padding "
                         f"of at most kernel - 1; got stride {geometry.stride}, dilation {geometry.dilation}, "
                         f"padding {geometry.pads}")
    return route


# --------------------------------------------------------------------------- forward
def conv2d_forward(x: Any, w: Any, b: Any = None, stride: Any = 1, padding: Any = 0, dilation: Any = 1,
                   layout: str = "NCHW", route: Any = None, groups: int = 1):
    """2-D cross-correlation of ``x`` (N, C, H, W) with ``w`` (O, C // groups, kh, kw), plus ``b`` (O,).

    ``stride`` and ``dilation`` are an int or a pair; ``padding`` an int, a pair,
    ``"valid"`` or ``"same"`` (stride 1). Returns ``(y, cache)`` with y (N, O, out_h, out_w).
    ``layout="CHWN"`` takes x as (C, H, W, N) and returns y as (O, out_h, out_w, N): the
    batch-innermost layout xpcnn's layers use between themselves because it is faster.
    ``route`` forces a :class:`ConvRoute` (``"im2col"``: the textbook im2col + col2im); by default
    :func:`choose_route` picks one. Every route gives the same results up to rounding.
    ``groups``: the channels split into that many groups, each convolved with its own ``O // groups`` kernels
    (as PyTorch's ``groups``; depthwise when ``groups == C``), all groups in one batched matrix product; grouped
    convolutions take the im2col columns.
    """
    xp = _check_conv_args(x, w, b, layout, groups)
    geometry = conv_geometry("conv2d", x.shape, w.shape, stride, padding, dilation, layout)
    out_channels = w.shape[0]
    if route is None:
        route = choose_route(geometry, out_channels, groups)
    else:
        route = _check_route(route, geometry, groups)
    xpad = pad(x, xp, geometry.pads, layout=layout)
    if route.columns == "rows":
        cols = row_columns(xpad, xp, geometry)
        y = _rows_product(w, cols, xp, geometry)
    else:
        cols = im2col(xpad, xp, geometry)
        y = _grouped(xp, w, groups) @ _grouped(xp, cols, groups, -2)   # NCHW (N, [g,] O, L); CHWN ([g,] O, L * N)
    y = xp.reshape(y, geometry.shape(out_channels, geometry.out_hw))
    if b is not None:        # in place where it can be: y is a fresh array of ours
        y += xp.reshape(b, channel_shape(4, layout, out_channels))
    return y, Conv2DCache(w, cols, geometry, b is not None, route, groups)


def _grouped(xp: Any, a: Any, groups: int, axis: int | None = None) -> Any:
    """Weights (O, C/g, kh, kw) as ``groups`` matrices (g, O/g, C/g * kh * kw), or the rows of a matrix (the
    ``axis`` of ``a``: -2 for columns, the output channels of ``dy``) split into (g, rows/g) before the last axis;
    with one group, weights as one (O, C * kh * kw) matrix and matrices as they are."""
    if axis is None:
        rows = a.shape[0] // groups
        return xp.reshape(a, (rows, -1) if groups == 1 else (groups, rows, -1))
    if groups == 1:
        return a
    shape = tuple(a.shape)
    return xp.reshape(a, (*shape[:axis], groups, shape[axis] // groups, shape[-1]))


def _rows_product(w: Any, cols: Any, xp: Any, geometry: ConvGeometry) -> Any:
    """The "rows" route's forward: one (O, C * kw) weight matrix per kernel row times that row's columns, summed."""
    out_channels, channels, kh, kw = w.shape
    w_rows = xp.reshape(xp.permute_dims(w, (2, 0, 1, 3)), (kh, out_channels, channels * kw))
    y = None
    for i in range(kh):
        part = w_rows[i, ...] @ row_part(cols, xp, geometry, i)
        y = part if y is None else y + part
    return y


class Conv2DCache(NamedTuple):
    """What :func:`conv2d_backward` needs: the weights, the input's columns (:func:`~windows.im2col`, or
    :func:`~windows.row_columns` on the "rows" route), the geometry, the route taken and the groups."""

    w: Any
    cols: Any
    geometry: ConvGeometry
    has_bias: bool
    route: ConvRoute = ConvRoute()
    groups: int = 1


# --------------------------------------------------------------------------- backward
def conv2d_backward(dy: Any, cache: Conv2DCache, input_grad: bool = True) -> tuple[Any, Any, Any]:
    """Gradients ``(dx, dw, db)`` of :func:`conv2d_forward`, on the route its cache records; ``db`` is None when
    there was no bias, ``dx`` is None when ``input_grad=False`` (a network's first layer needs none)."""
    check_cache("conv2d_backward", cache, Conv2DCache)
    w, cols, geometry, has_bias, route, groups = cache
    xp = namespace("conv2d_backward", dy=dy, w=w)
    out_channels = w.shape[0]
    check_shape("conv2d_backward", "dy", dy, geometry.shape(out_channels, geometry.out_hw))
    (ho, wo), n = geometry.out_hw, geometry.batch
    if batch_last(geometry.layout):
        dy_flat = xp.reshape(dy, (out_channels, ho * wo * n))         # (O, L * N)
        db = xp.sum(dy_flat, axis=1) if has_bias else None
    else:
        dy_flat = xp.reshape(dy, (n, out_channels, ho * wo))          # (N, O, L)
        db = xp.sum(dy, axis=(0, 2, 3)) if has_bias else None
    if route.columns == "rows":
        kh, kw = geometry.kernel
        per_row = xp.stack([_weight_gradient(dy_flat, row_part(cols, xp, geometry, i), xp, geometry.layout,
                                             transposed=True) for i in range(kh)])          # (kh, O, C * kw)
        grad_w = xp.permute_dims(xp.reshape(per_row, (kh, out_channels, w.shape[1], kw)), (1, 2, 0, 3))
    elif groups > 1:
        grad_w = _grouped(xp, dy_flat, groups, -2) @ xp.matrix_transpose(_grouped(xp, cols, groups, -2))
        grad_w = grad_w if batch_last(geometry.layout) else xp.sum(grad_w, axis=0)     # over the batch
    else:
        grad_w = _weight_gradient(dy_flat, cols, xp, geometry.layout)
    if not input_grad:
        dx = None
    elif route.input_grad == "transposed":
        dx = _input_gradient_transposed(dy, w, xp, geometry, groups)
    else:
        dcols = _kernel_columns_first(w, xp, groups) @ _grouped(xp, dy_flat, groups, -2)
        if groups > 1:                     # (..., g, C/g * kw * kh, L) -> (..., C * kw * kh, L)
            dcols = xp.reshape(dcols, (*dcols.shape[:-3], -1, dcols.shape[-1]))
        dx = col2im(dcols, xp, geometry)
    return dx, xp.reshape(grad_w, w.shape), db


def _weight_gradient(dy_flat: Any, cols: Any, xp: Any, layout: str, transposed: bool = False) -> Any:
    """``dy_flat @ cols.T``: (O, K) times (K, P) with a huge shared dimension K (positions x batch); in NCHW,
    where both carry a leading batch axis, the same contracted over batch and positions.

    Three orientations of one product, all giving the same numbers: with few output channels and small patches
    (``THIN_MAX_*``), one matrix-vector product per channel, which streams the columns at memory speed
    where BLAS runs thin GEMMs slowly; ``transposed=True`` (the "rows" route, whose column rows are strided
    views) as ``(cols @ dy_flat.T).T``; otherwise the plain product.
    """
    if not batch_last(layout):
        return xp.tensordot(dy_flat, cols, axes=([0, 2], [0, 2]))
    if dy_flat.shape[0] < THIN_MAX_CHANNELS and cols.shape[0] <= THIN_MAX_PATCH:
        return xp.matmul(dy_flat[:, None, :], cols.T)[:, 0, :]
    return (cols @ dy_flat.T).T if transposed else dy_flat @ cols.T


def _kernel_columns_first(w: Any, xp: Any, groups: int = 1) -> Any:
    """``w`` (O, C, kh, kw) as a (C * kw * kh, O) matrix: rows ordered channel, kernel column, kernel row,
    the order :func:`~windows.col2im` takes its columns in; with groups, one such matrix per group
    (g, C/g * kw * kh, O/g)."""
    out_channels, channels, kh, kw = w.shape
    if groups == 1:
        return xp.reshape(xp.permute_dims(w, (1, 3, 2, 0)), (channels * kw * kh, out_channels))
    per_group = xp.reshape(w, (groups, out_channels // groups, channels, kh, kw))
    return xp.reshape(xp.permute_dims(per_group, (0, 2, 4, 3, 1)), (groups, channels * kw * kh, -1))


def _input_gradient_transposed(dy: Any, w: Any, xp: Any, geometry: ConvGeometry, groups: int = 1) -> Any:
    """dx = dy padded by kernel - 1 - padding, correlated with the kernels flipped and their channel axes
    swapped (within each group): one im2col and one matrix product instead of col2im's kh + kw strided adds."""
    out_channels, channels, kh, kw = w.shape
    if groups == 1:
        swapped = xp.permute_dims(w, (1, 0, 2, 3))
    else:
        per_group = xp.reshape(w, (groups, out_channels // groups, channels, kh, kw))
        swapped = xp.reshape(xp.permute_dims(per_group, (0, 2, 1, 3, 4)), (groups * channels, -1, kh, kw))
    flipped = xp.flip(swapped, axis=(2, 3))                       # (C_in, C_out / g, kh, kw)
    return conv2d_forward(dy, flipped, None, 1, _transposed_pads(geometry), 1, geometry.layout, None, groups)[0]


def conv2d(x: Any, w: Any, b: Any = None, stride: Any = 1, padding: Any = 0, dilation: Any = 1,
           layout: str = "NCHW", route: Any = None, groups: int = 1) -> Any:
    """:func:`conv2d_forward` without the cache."""
    return conv2d_forward(x, w, b, stride, padding, dilation, layout, route, groups)[0]
