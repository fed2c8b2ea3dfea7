"""Elementwise activations and the softmax family (over the last axis unless told ``axis``), forward and backward.

sigmoid, softmax and log_softmax never exponentiate a positive number, so they are
finite and warning-free for any finite input (sigmoid(-1000) == 0, softmax([1000, 0]) == [1, 0]).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from ._checks import as_float, as_int, check_cache, check_floating, check_shape, namespace

__all__ = [
    "LeakyReLUCache", "LogSoftmaxCache", "ReLUCache", "SigmoidCache", "SoftmaxCache", "TanhCache",
    "leaky_relu", "leaky_relu_backward", "leaky_relu_forward",
    "log_softmax", "log_softmax_backward", "log_softmax_forward",
    "relu", "relu_backward", "relu_forward",
    "sigmoid", "sigmoid_backward", "sigmoid_forward",
    "softmax", "softmax_backward", "softmax_forward",
    "tanh", "tanh_backward", "tanh_forward",
]


def _input(op: str, x: Any) -> Any:
    xp = namespace(op, x=x)
    check_floating(op, "x", x, xp)
    return xp


def _grad_input(op: str, dy: Any, cache: Any, kind: type) -> Any:
    check_cache(op, cache, kind)
    reference = cache[0]
    xp = namespace(op, dy=dy, cache=reference)
    check_shape(op, "dy", dy, reference.shape)
    return xp


class ReLUCache(NamedTuple):
    y: Any        # the output: positive exactly where the input is


class LeakyReLUCache(NamedTuple):
    mask: Any     # x > 0
    negative_slope: float


class SigmoidCache(NamedTuple):
    y: Any


class TanhCache(NamedTuple):
    y: Any


class SoftmaxCache(NamedTuple):
    y: Any
    axis: int = -1     # the axis normalized over


class LogSoftmaxCache(NamedTuple):
    y: Any


# --------------------------------------------------------------------------- ReLU family
def relu_forward(x: Any) -> tuple[Any, Any]:
    """max(x, 0) (NaN stays NaN); the cache is the output, positive exactly where x is
    (so the gradient at 0 is 0, as in PyTorch)."""
    xp = _input("relu", x)
    y = xp.maximum(x, xp.zeros_like(x))     # an array, not 0.0: a Python scalar costs conversions on torch
    return y, ReLUCache(y)


def relu_backward(dy: Any, cache: ReLUCache) -> Any:
    xp = _grad_input("relu_backward", dy, cache, ReLUCache)
    # a product with the 0/1 mask, not where(): NumPy's where on a random mask is ~15x slower
    return dy * xp.astype(cache.y > 0, dy.dtype)


def relu(x: Any) -> Any:
    return relu_forward(x)[0]


def leaky_relu_forward(x: Any, negative_slope: float = 0.01) -> tuple[Any, tuple]:
    """x where x > 0, else negative_slope * x."""
    xp = _input("leaky_relu", x)
    negative_slope = as_float("leaky_relu", "negative_slope", negative_slope)
    mask = x > 0
    return xp.where(mask, x, x * negative_slope), LeakyReLUCache(mask, negative_slope)


def leaky_relu_backward(dy: Any, cache: LeakyReLUCache) -> Any:
    xp = _grad_input("leaky_relu_backward", dy, cache, LeakyReLUCache)
    mask, negative_slope = cache
    return dy * (negative_slope + (1 - negative_slope) * xp.astype(mask, dy.dtype))


def leaky_relu(x: Any, negative_slope: float = 0.01) -> Any:
    return leaky_relu_forward(x, negative_slope)[0]


# --------------------------------------------------------------------------- sigmoid, tanh
def sigmoid_forward(x: Any) -> tuple[Any, Any]:
    """1 / (1 + exp(-x)), computed from exp(-|x|) so nothing overflows; the cache is the output."""
    xp = _input("sigmoid", x)
    e = xp.exp(-xp.abs(x))                # in (0, 1]
    y = xp.where(x >= 0, 1 / (1 + e), e / (1 + e))
    return y, SigmoidCache(y)


def sigmoid_backward(dy: Any, cache: SigmoidCache) -> Any:
    _grad_input("sigmoid_backward", dy, cache, SigmoidCache)
    y = cache.y
    return dy * y * (1 - y)


def sigmoid(x: Any) -> Any:
    return sigmoid_forward(x)[0]


def tanh_forward(x: Any) -> tuple[Any, Any]:
    xp = _input("tanh", x)
    y = xp.tanh(x)
    return y, TanhCache(y)


def tanh_backward(dy: Any, cache: TanhCache) -> Any:
    _grad_input("tanh_backward", dy, cache, TanhCache)
    y = cache.y
    return dy * (1 - y * y)


def tanh(x: Any) -> Any:
    return tanh_forward(x)[0]


# --------------------------------------------------------------------------- softmax family
def _shifted(xp: Any, x: Any, axis: int = -1) -> Any:
    """x minus its maximum along ``axis``: every entry <= 0, so exp never overflows."""
    return x - xp.max(x, axis=axis, keepdims=True)


def _axis(op: str, x: Any, axis: Any) -> int:
    return as_int(op, "axis", axis, -x.ndim, x.ndim - 1) if x.ndim else -1


def softmax_forward(x: Any, axis: int = -1) -> tuple[Any, Any]:
    """exp(x) / sum(exp(x)) along ``axis`` (the last by default; 1 for the channels of NCHW images); the cache is
    the output and the axis."""
    xp = _input("softmax", x)
    axis = _axis("softmax", x, axis)
    e = xp.exp(_shifted(xp, x, axis))
    y = e / xp.sum(e, axis=axis, keepdims=True)
    return y, SoftmaxCache(y, axis)


def softmax_backward(dy: Any, cache: SoftmaxCache) -> Any:
    xp = _grad_input("softmax_backward", dy, cache, SoftmaxCache)
    y = cache.y
    return y * (dy - xp.sum(dy * y, axis=cache.axis, keepdims=True))


def softmax(x: Any, axis: int = -1) -> Any:
    return softmax_forward(x, axis)[0]


def log_softmax_forward(x: Any) -> tuple[Any, Any]:
    """x - log(sum(exp(x))) along the last axis, computed after the max shift; the cache is the output."""
    xp = _input("log_softmax", x)
    z = _shifted(xp, x)
    y = z - xp.log(xp.sum(xp.exp(z), axis=-1, keepdims=True))
    return y, LogSoftmaxCache(y)


def log_softmax_backward(dy: Any, cache: LogSoftmaxCache) -> Any:
    xp = _grad_input("log_softmax_backward", dy, cache, LogSoftmaxCache)
    return dy - xp.exp(cache.y) * xp.sum(dy, axis=-1, keepdims=True)


def log_softmax(x: Any) -> Any:
    return log_softmax_forward(x)[0]
