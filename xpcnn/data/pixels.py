"""Pixel arithmetic that in-memory and folder datasets share: normalization, per-channel statistics, and which
samples a validation split holds out."""

from __future__ import annotations

from typing import Any

import numpy as np

from .files import DataError

__all__ = ["MEAN", "STD", "held_out", "normalize", "statistics"]

MEAN, STD = 0.1307, 0.3081          # of the MNIST training pixels scaled to [0, 1]


def normalize(images: np.ndarray, dtype: str = "float32", mean: Any = MEAN, std: Any = STD) -> np.ndarray:
    """Images (N, H, W) or (N, C, H, W) -> (N, C, H, W) floats standardized with ``mean`` and ``std`` (one value,
    or one per channel; MNIST's by default). uint8 pixels are scaled to [0, 1] first; floating ones are taken
    as they are."""
    images = np.asarray(images)
    if images.dtype != np.uint8 and not np.issubdtype(images.dtype, np.floating):
        raise TypeError(f"normalize: images must be uint8 pixels 0..255 or floats; got {images.dtype}")
    if images.ndim == 3:
        images = images[:, None]
    if images.ndim != 4:
        raise ValueError(f"normalize: images must be (N, H, W) or (N, C, H, W); got shape {images.shape}")
    shape = (1, -1, 1, 1)
    scaled = images.astype(dtype) / np.asarray(255, dtype) if images.dtype == np.uint8 else images.astype(dtype)
    return (scaled - np.asarray(mean, dtype).reshape(shape)) / np.asarray(std, dtype).reshape(shape)


def statistics(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of (N, C, H, W) images, uint8 on the [0, 1] scale (a constant channel's std is
    taken as 1)."""
    values = np.asarray(images, np.float64) / (255.0 if np.asarray(images).dtype == np.uint8 else 1.0)
    mean = values.mean(axis=(0, 2, 3))
    std = values.std(axis=(0, 2, 3))
    return tuple(float(m) for m in mean), tuple(float(s) if s > 0 else 1.0 for s in std)


def held_out(n: int, fraction: float, seed: int) -> np.ndarray:
    """Which of ``n`` samples a split holds out (a boolean mask): ``fraction`` of them, rounded, at least one and
    at least one left, chosen by ``seed`` alone. Fewer than 2 samples cannot be split: a DataError."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float, np.floating)) or not 0 < fraction < 1:
        raise ValueError(f"Dataset.split: fraction must be a number in (0, 1); got {fraction!r}")
    if n < 2:
        raise DataError(f"Dataset.split: cannot hold out {float(fraction):.0%} of {n} sample"
                               f"{'s' if n != 1 else ''}: a split needs at least 2 (one to train on, one held out)")
    count = min(max(round(fraction * n), 1), n - 1)
    held = np.zeros(n, dtype=bool)
    held[np.random.default_rng([seed, 2]).permutation(n)[:count]] = True
    return held
