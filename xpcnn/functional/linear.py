"""Dense (fully connected) layer and flatten, forward and backward."""

from __future__ import annotations

import math
from typing import Any

from ._checks import check_floating, check_ndim, check_same_dtype, check_shape, namespace

__all__ = ["flatten", "flatten_backward", "flatten_forward", "linear", "linear_backward", "linear_forward"]


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
    return y, (x, w, b is not None)


def linear_backward(dy: Any, cache: tuple) -> tuple[Any, Any, Any]:
    """Gradients ``(dx, dw, db)``; ``db`` is None when there was no bias."""
    x, w, has_bias = cache
    xp = namespace("linear_backward", dy=dy, w=w)
    check_shape("linear_backward", "dy", dy, (*x.shape[:-1], w.shape[0]))
    rows = math.prod(x.shape[:-1])
    dy2 = xp.reshape(dy, (rows, w.shape[0]))
    dx = dy @ w
    dw = dy2.T @ xp.reshape(x, (rows, w.shape[1]))
    db = xp.sum(dy2, axis=0) if has_bias else None
    return dx, dw, db


def linear(x: Any, w: Any, b: Any = None) -> Any:
    return linear_forward(x, w, b)[0]


def flatten_forward(x: Any) -> tuple[Any, tuple]:
    """(N, ...) -> (N, prod(...)); the cache is the input shape."""
    xp = namespace("flatten", x=x)
    if x.ndim < 1:
        raise ValueError("flatten: x must have a batch axis; got a 0-d array")
    return xp.reshape(x, (x.shape[0], math.prod(x.shape[1:]))), tuple(x.shape)


def flatten_backward(dy: Any, cache: tuple) -> Any:
    xp = namespace("flatten_backward", dy=dy)
    check_shape("flatten_backward", "dy", dy, (cache[0], math.prod(cache[1:])))
    return xp.reshape(dy, cache)


def flatten(x: Any) -> Any:
    return flatten_forward(x)[0]
