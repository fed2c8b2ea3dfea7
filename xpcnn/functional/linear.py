"""Dense (fully connected) layer and flatten, forward and backward."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from ._checks import check_cache, check_floating, check_ndim, check_same_dtype, check_shape, namespace
from .layout import batch_axis, check_layout, from_nchw_shape

__all__ = ["FlattenCache", "LinearCache", "flatten", "flatten_backward", "flatten_forward", "linear", "linear_backward", "linear_forward"]


def linear_forward(x: Any, w: Any, b: Any = None) -> tuple[Any, tuple]:
    """y = x @ w.T + b with x (..., in_features), w (out_features, in_features), b (out_features,)."""
    xp = namespace("linear", x=x, w=w, b=b)
    check_ndim("linear", "w", w, 2, "out_features, in_features")
    check_floating("linear", "x", x, xp)
    check_same_dtype("linear", "x", x, "w", w)
    check_same_dtype("linear", "x", x, "b", b)
    if x.ndim < 1 or x.shape[-1] != w.shape[1]:
        raise ValueError(
            f"linear: x must end in in_features={w.shape[1]} (w has shape {tuple(w.shape)}); got x shape {tuple(x.shape)}"
        )
    if b is not None:
        check_shape("linear", "b", b, (w.shape[0],))
    y = x @ w.T
    if b is not None:
        y = y + b
    return y, LinearCache(x, w, b is not None)


class LinearCache(NamedTuple):
    x: Any
    w: Any
    has_bias: bool


def linear_backward(dy: Any, cache: LinearCache, input_grad: bool = True) -> tuple[Any, Any, Any]:
    """Gradients ``(dx, dw, db)``; ``db`` is None when there was no bias, ``dx`` when ``input_grad=False``."""
    check_cache("linear_backward", cache, LinearCache)
    x, w, has_bias = cache
    xp = namespace("linear_backward", dy=dy, w=w)
    check_shape("linear_backward", "dy", dy, (*x.shape[:-1], w.shape[0]))
    rows = math.prod(x.shape[:-1])
    # 2-D inputs as they are: reshaping a transposed view (the batch-innermost layout's) would copy it
    dy2 = dy if dy.ndim == 2 else xp.reshape(dy, (rows, w.shape[0]))
    x2 = x if x.ndim == 2 else xp.reshape(x, (rows, w.shape[1]))
    dx = dy @ w if input_grad else None
    dw = dy2.T @ x2
    db = xp.sum(dy2, axis=0) if has_bias else None
    return dx, dw, db


def linear(x: Any, w: Any, b: Any = None) -> Any:
    return linear_forward(x, w, b)[0]


class FlattenCache(NamedTuple):
    x_shape: tuple
    layout: str


def _flat_shape(shape: tuple, layout: str) -> tuple[int, int]:
    axis = batch_axis(len(shape), layout)
    return from_nchw_shape((shape[axis], math.prod(shape[:axis] + shape[axis + 1:])), layout)


def flatten_forward(x: Any, layout: str = "NCHW") -> tuple[Any, FlattenCache]:
    """(N, ...) -> (N, prod(...)); with ``layout="CHWN"`` (..., N) -> (prod(...), N). Both list the
    features in C, H, W order, so the weights of a Linear after it are the same, and both are free."""
    xp = namespace("flatten", x=x)
    check_layout("flatten", layout)
    if x.ndim < 1:
        raise ValueError("flatten: x must have a batch axis; got a 0-d array")
    return xp.reshape(x, _flat_shape(tuple(x.shape), layout)), FlattenCache(tuple(x.shape), layout)


def flatten_backward(dy: Any, cache: FlattenCache) -> Any:
    check_cache("flatten_backward", cache, FlattenCache)
    xp = namespace("flatten_backward", dy=dy)
    check_shape("flatten_backward", "dy", dy, _flat_shape(cache.x_shape, cache.layout))
    return xp.reshape(dy, cache.x_shape)


def flatten(x: Any, layout: str = "NCHW") -> Any:
    return flatten_forward(x, layout)[0]
