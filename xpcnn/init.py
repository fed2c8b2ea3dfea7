"""Weight initializers.

Every initializer draws from a NumPy ``Generator`` and returns a NumPy array; layers then
move it to the backend. One seed therefore gives bit-identical initial weights on every backend.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

__all__ = [
    "INITIALIZERS", "default_rng", "get", "glorot_normal", "glorot_uniform", "he_normal", "he_uniform",
    "manual_seed", "notebook_normal", "zeros",
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
    """An initializer by name (or a callable ``(shape, fan_in, fan_out, rng) -> ndarray`` as is)."""
    if callable(name):
        return name
    try:
        return INITIALIZERS[name]
    except KeyError:
        raise ValueError(f"init must be one of {', '.join(INITIALIZERS)}; got {name!r}") from None
