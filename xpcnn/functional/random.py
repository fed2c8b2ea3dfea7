"""Counter-based random numbers in the array API's int32 arithmetic, and dropout built on them.

Element ``i`` of :func:`uniform` is a hash of (``key``, ``i``): no generator state, nothing drawn on the host,
nothing copied to the device. The same key gives the same bits on NumPy, CuPy, PyTorch, JAX and
array_api_strict (tested), inside a compiled step as well as eagerly, and a layer gets a new stream every call by
passing a new key (:func:`key`, from a seed and a call counter).

The hash is ``lowbias32`` (Chris Wellons' integer hash prospector), applied twice. Everything is int32:
multiplication wraps modulo 2**32 in every library, and the logical right shifts the hash needs are arithmetic
shifts masked to their low bits.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from array_api_compat import array_namespace, device

from ._checks import as_float, check_cache, check_floating, check_shape, namespace

__all__ = ["DropoutCache", "dropout", "dropout_backward", "dropout_forward", "key", "uniform"]

_M1, _M2 = 0x7FEB352D, 0x846CA68B - (1 << 32)      # lowbias32's multipliers, the second as a signed int32
_GOLDEN = 0x9E3779B9 - (1 << 32)                   # 2**32 / golden ratio, as a signed int32


def _mix(h: Any, wrap: Any = lambda v: v) -> Any:
    """lowbias32 on int32 arrays, or on Python ints in [-2**31, 2**31) with ``wrap=_int32`` (Python's shifts of
    negative ints are arithmetic too, so both give the same bits)."""
    h = wrap(h ^ ((h >> 16) & 0xFFFF))
    h = wrap(h * _M1)
    h = wrap(h ^ ((h >> 15) & 0x1FFFF))
    h = wrap(h * _M2)
    return wrap(h ^ ((h >> 16) & 0xFFFF))


def _int32(value: int) -> int:
    """The signed 32-bit integer with the low 32 bits of ``value``."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value


def _wrap_for(value: Any) -> Any:
    """How to keep ``value``'s arithmetic in int32: :func:`_int32` for a Python int; nothing for an int32 array,
    whose arithmetic wraps by itself."""
    return _int32 if isinstance(value, int) else (lambda v: v)


def key(seed: int, counter: Any) -> Any:
    """The key of call number ``counter`` (0, 1, ...) of a stream seeded with ``seed``: a signed 32-bit int, or a
    0-d int32 array when ``counter`` is one (a compiled step's counter is an input, not a constant); both give the
    same bits."""
    if not isinstance(counter, int):
        xp = array_namespace(counter)       # one element, as int32 (a 0-d array's arithmetic would be a scalar's)
        counter = xp.reshape(xp.astype(counter, xp.int32), (1,))
    wrap = _wrap_for(counter)
    return _mix(_mix(_int32(seed), _int32) ^ wrap(counter * _GOLDEN), wrap)


def uniform(key_: Any, shape: tuple, xp: Any, dev: Any, dtype: Any) -> Any:
    """Numbers in [0, 1) on multiples of 2**-24, one per element of ``shape`` (row-major), from ``key_`` (a
    Python int or a 0-d int32 array, see :func:`key`)."""
    index = xp.reshape(xp.arange(math.prod(shape), dtype=xp.int32, device=dev), tuple(shape))
    if not isinstance(key_, int):
        key_ = xp.reshape(key_, (1,) * len(shape))
    bits = _mix(_mix(index ^ key_) ^ _wrap_for(key_)(key_ * _GOLDEN))
    return xp.astype((bits >> 8) & 0xFFFFFF, dtype) * (1.0 / (1 << 24))


class DropoutCache(NamedTuple):
    mask: Any          # 0 or 1/(1-p) per element; None when the op was the identity


def dropout_forward(x: Any, p: float, key_: int, index_shape: tuple | None = None,
                    to_layout: Any = None) -> tuple[Any, DropoutCache]:
    """Zero each element of ``x`` with probability ``p`` and scale the rest by 1/(1-p), the mask drawn from
    ``key_`` (see :func:`key`). ``index_shape`` and ``to_layout`` let a layer draw the mask in another order than
    ``x``'s (xpcnn draws in NCHW order, then moves it to the layout ``x`` is in)."""
    op = "dropout"
    xp = namespace(op, x=x)
    check_floating(op, "x", x, xp)
    p = as_float(op, "p", p, 0, 1, high_open=True)
    if p == 0:
        return x, DropoutCache(None)
    u = uniform(key_, tuple(x.shape) if index_shape is None else index_shape, xp, device(x), x.dtype)
    if to_layout is not None:
        u = to_layout(u)
    mask = xp.astype(u >= p, x.dtype) * (1.0 / (1.0 - p))
    return x * mask, DropoutCache(mask)


def dropout_backward(dy: Any, cache: DropoutCache) -> Any:
    """Gradient of :func:`dropout_forward`: ``dy`` times the same mask."""
    check_cache("dropout_backward", cache, DropoutCache)
    if cache.mask is None:
        return dy
    namespace("dropout_backward", dy=dy, cache=cache.mask)
    check_shape("dropout_backward", "dy", dy, cache.mask.shape)
    return dy * cache.mask


def dropout(x: Any, p: float, key_: int) -> Any:
    """:func:`dropout_forward` without the cache."""
    return dropout_forward(x, p, key_)[0]
