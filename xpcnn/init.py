"""Weight initializers.

Every initializer draws from a NumPy ``Generator`` and returns a NumPy array; layers then
move it to the backend. One seed therefore gives bit-identical initial weights on every backend.
"""

from __future__ import annotations

import contextlib
import math
from contextvars import ContextVar
from typing import Callable, Iterator

import numpy as np

__all__ = [
    "INITIALIZERS", "AllocationLimitError", "allocation_limit", "default_rng", "filled", "get", "glorot_normal",
    "glorot_uniform", "he_normal", "he_uniform", "manual_seed", "notebook_normal", "zeros",
]

_generator = np.random.default_rng(0)


def manual_seed(seed: int) -> None:
    """Reset the generator used by layers created without an explicit ``rng``."""
    global _generator
    _generator = np.random.default_rng(seed)


def default_rng() -> np.random.Generator:
    return _generator


def he_uniform(shape, fan_in, fan_out, rng):
    """U(-b, b) with b = sqrt(6 / fan_in): variance 2 / fan_in, for ReLU networks (He et al. 2015)."""
    bound = math.sqrt(6.0 / fan_in)
    return rng.uniform(-bound, bound, size=shape)


def he_normal(shape, fan_in, fan_out, rng):
    return rng.standard_normal(shape) * math.sqrt(2.0 / fan_in)


def glorot_uniform(shape, fan_in, fan_out, rng):
    """U(-b, b) with b = sqrt(6 / (fan_in + fan_out)) (Glorot & Bengio 2010)."""
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-bound, bound, size=shape)


def glorot_normal(shape, fan_in, fan_out, rng):
    return rng.standard_normal(shape) * math.sqrt(2.0 / (fan_in + fan_out))


def notebook_normal(shape, fan_in, fan_out, rng):
    """0.01 * randn, the classic notebook's f_initParams."""
    return 0.01 * rng.standard_normal(shape)


def zeros(shape, fan_in, fan_out, rng):
    return np.zeros(shape)


INITIALIZERS: dict[str, Callable] = {
    f.__name__: f for f in (he_uniform, he_normal, glorot_uniform, glorot_normal, notebook_normal, zeros)
}


def get(name: str | Callable) -> Callable:
    """An initializer by name (or a callable ``(shape, fan_in, fan_out, rng) -> ndarray``), drawing within the
    current :func:`allocation_limit`."""
    if callable(name):
        chosen = name
    else:
        try:
            chosen = INITIALIZERS[name]
        except KeyError:
            raise ValueError(f"init must be one of {', '.join(INITIALIZERS)}; got {name!r}") from None

    def draw(shape, fan_in, fan_out, rng):
        _spend(shape)
        return chosen(shape, fan_in, fan_out, rng)

    return draw


def filled(shape, value: float) -> np.ndarray:
    """An array of ``value`` (a bias's zeros, BatchNorm's ones), within the current :func:`allocation_limit`."""
    _spend(shape)
    return np.full(shape, float(value))


class AllocationLimitError(ValueError):
    """Building a module asked for more elements than :func:`allocation_limit` allows."""


class _Limit:
    def __init__(self, elements: int, what: str):
        self.left, self.total, self.what = elements, elements, what


_limit: ContextVar[_Limit | None] = ContextVar("xpcnn_allocation_limit", default=None)


@contextlib.contextmanager
def allocation_limit(elements: int, what: str = "the limit") -> Iterator[None]:
    """Modules built inside may create parameters and buffers of ``elements`` elements in all; one more is an
    :class:`AllocationLimitError`, raised before the array is made. How a checkpoint's configuration is rebuilt:
    it may ask for no more than the file holds (``what`` says so in the error)."""
    token = _limit.set(_Limit(int(elements), what))
    try:
        yield
    finally:
        _limit.reset(token)


def _spend(shape) -> None:
    limit = _limit.get()
    if limit is None:
        return
    count = math.prod(int(n) for n in shape)
    if count > limit.left:
        raise AllocationLimitError(f"an array of shape {tuple(shape)} ({count:,} elements) would take the model past "
                                   f"{limit.total:,} elements, {limit.what}")
    limit.left -= count
