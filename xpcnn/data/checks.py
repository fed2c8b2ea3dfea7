"""Checks of images, labels and normalization where data enters xpcnn: ``Dataset.from_numpy``, ``--data`` files,
folders, ``fit`` and ``evaluate``. One helper for every entry, so a NaN pixel, a label of 10**9 or a single class
is one clear :class:`~xpcnn.data.DataError` before anything is normalized, allocated or trained, never a dataset
that is silently all NaN or a model with a billion outputs."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from .files import DataError

__all__ = ["MAX_CLASSES", "channels_first", "check_dataset", "check_images", "check_labels", "check_statistics"]

MAX_CLASSES = 100_000       # more classes than any image dataset has: a larger label is a mistake, not a class
_CHUNK = 1 << 24            # values scanned at once for NaN: the check's memory stays bounded


def _first_bad(images: np.ndarray) -> tuple[int, int, tuple | None]:
    """(NaN count, infinite count, index of the first non-finite value), scanning ``images`` in chunks."""
    nan = inf = 0
    first = None
    per = max(1, _CHUNK // max(1, int(np.prod(images.shape[1:]))))
    for start in range(0, images.shape[0], per):
        block = images[start:start + per]
        finite = np.isfinite(block)
        if finite.all():
            continue
        nans = int(np.isnan(block).sum())
        nan, inf = nan + nans, inf + int(finite.size - finite.sum()) - nans
        if first is None:
            where = np.argwhere(~finite)[0]
            first = (start + int(where[0]), *(int(i) for i in where[1:]))
    return nan, inf, first


def channels_first(images: np.ndarray, layout: str | None = None) -> np.ndarray:
    """(N, H, W), (N, C, H, W) or (N, H, W, C) images as (N, C, H, W). ``layout``: "NCHW" or "NHWC" for 4-D
    arrays; None guesses NHWC when the last axis has 1, 3 or 4 entries and the second does not, else NCHW."""
    images = np.asarray(images)
    if layout not in (None, "NCHW", "NHWC"):
        raise ValueError(f"layout must be None, 'NCHW' or 'NHWC'; got {layout!r}")
    if images.ndim == 3:
        return images[:, None]
    if images.ndim != 4:
        raise ValueError(f"images must be (N, H, W), (N, C, H, W) or (N, H, W, C); got shape {images.shape}")
    if layout is None:
        layout = "NHWC" if images.shape[3] in (1, 3, 4) and images.shape[1] not in (1, 3, 4) else "NCHW"
    return np.moveaxis(images, 3, 1) if layout == "NHWC" else images


def check_images(images: Any, name: str = "images", sample_shape: tuple | None = None) -> np.ndarray:
    """``images`` as a host array of uint8 pixels or floats, (N, H, W) or 4-D, N >= 1, with no NaN or infinite
    value (counted, and the first one located), and, given ``sample_shape`` (another split's (C, H, W)), of that
    sample shape once channels come first. ``name`` opens every message (e.g. ``"--data d.npz: x_test"``)."""
    images = np.asarray(images)
    if images.dtype != np.uint8 and not np.issubdtype(images.dtype, np.floating):
        raise DataError(f"{name} must hold uint8 pixels 0..255 or floats; got {images.dtype}")
    if images.ndim not in (3, 4):
        raise DataError(f"{name} must be images (N, H, W), (N, C, H, W) or (N, H, W, C); got shape {images.shape}")
    if images.shape[0] == 0:
        raise DataError(f"{name} holds no images (shape {images.shape}); a dataset needs at least one sample")
    if np.issubdtype(images.dtype, np.floating):
        nan, inf, first = _first_bad(images)
        if first is not None:
            raise DataError(f"{name} holds {nan:,} NaN and {inf:,} infinite pixel values (the first at index "
                            f"{first}: image {first[0]}); replace or drop those images before training")
    if sample_shape is not None:
        shape = tuple(channels_first(images[:1]).shape[1:])
        if shape != tuple(sample_shape):
            raise DataError(f"{name} holds images of shape {shape} (C, H, W); the training images are "
                            f"{tuple(sample_shape)}: every split must have the training images' shape")
    return images


def _label_classes(labels: np.ndarray, name: str, classes: int | None) -> None:
    """Class indices within [0, classes) (or [0, MAX_CLASSES) when the classes come from the labels)."""
    low, high = int(labels.min()), int(labels.max())
    if low < 0:
        raise DataError(f"{name} holds the negative class index {low}; class indices count from 0")
    if classes is not None and high >= classes:
        raise DataError(f"{name} holds the class index {high:,}; a model with {classes} outputs takes class "
                        f"indices 0..{classes - 1}")
    if high >= MAX_CLASSES:
        raise DataError(f"{name} holds the class index {high:,}, which would mean {high + 1:,} classes (at most "
                        f"{MAX_CLASSES:,} are taken): labels must be class indices 0..K-1, not ids or codes "
                        "(map them: np.unique(labels, return_inverse=True)[1])")


def _training_classes(labels: np.ndarray, name: str, classes: int | None) -> None:
    """The classes a classifier learns from: at least two, and a warning for the ones never seen."""
    seen = np.unique(labels)
    if seen.size < 2:
        raise DataError(f"{name}: every label is {int(seen[0])}; a classifier needs at least two classes to learn "
                        "to tell apart")
    count = classes if classes is not None else int(seen[-1]) + 1
    unseen = np.setdiff1d(np.arange(count), seen)
    if unseen.size and unseen[0] == 0:
        warnings.warn(f"{name}: class 0 never appears (labels run {int(seen[0])}..{int(seen[-1])}); class indices "
                      "count from 0, so the model gets an output that is never trained: if yours count from 1, "
                      "subtract 1", UserWarning, stacklevel=3)
    elif unseen.size:
        listed = ", ".join(str(int(c)) for c in unseen[:10]) + (", ..." if unseen.size > 10 else "")
        warnings.warn(f"{name}: {unseen.size} of {count} classes never appear ({listed}); their outputs are never "
                      "trained", UserWarning, stacklevel=3)


def check_labels(labels: Any, name: str = "labels", count: int | None = None, classes: int | None = None,
                 training: bool = False) -> np.ndarray:
    """``labels`` as a host array: class indices (N,) as int64 (floats only when whole numbers), or float
    targets (N, K), all finite. ``count``: the number of images they label. ``classes``: the model's outputs,
    which the indices must stay below (without it, below :data:`MAX_CLASSES`). ``training``: labels a classifier
    learns from: at least two classes, and a warning for classes that never appear (class 0 above all)."""
    labels = np.asarray(labels)
    if labels.dtype.kind in "USOV":
        sample = ", ".join(repr(v) for v in labels.ravel()[:3].tolist())
        raise DataError(f"{name} must be integer class indices (N,) or float targets (N, K); got {labels.dtype} "
                        f"values ({sample}, ...): map class names to indices, e.g. "
                        "np.unique(labels, return_inverse=True)[1]")
    if labels.dtype.kind not in "biuf" or labels.ndim not in (1, 2):
        raise DataError(f"{name} must be integer class indices (N,) or float targets (N, K); got {labels.dtype} "
                        f"of shape {labels.shape}")
    if count is not None and labels.shape[0] != count:
        raise DataError(f"{name} holds {labels.shape[0]:,} labels for {count:,} images")
    if labels.shape[0] == 0:
        raise DataError(f"{name} holds no labels; a dataset needs at least one sample")
    if labels.dtype.kind == "f" and not np.all(np.isfinite(labels)):
        raise DataError(f"{name} holds {int(np.sum(~np.isfinite(labels))):,} NaN or infinite values")
    if labels.ndim == 2:
        return labels
    if labels.dtype.kind == "f":
        fractional = labels != np.round(labels)
        if fractional.any():
            sample = ", ".join(f"{v:g}" for v in labels[fractional][:3])
            raise DataError(f"{name}: {int(fractional.sum()):,} of {labels.size:,} labels are not whole numbers "
                            f"({sample}, ...); class indices are integers 0..K-1 (probability targets are shaped "
                            "(N, K))")
    labels = labels.astype(np.int64)
    _label_classes(labels, name, classes)
    if training:
        _training_classes(labels, name, classes)
    return labels


def check_statistics(mean: Any, std: Any, channels: int, name: str = "") -> tuple[tuple[float, ...],
                                                                                  tuple[float, ...]]:
    """``(mean, std)`` as one float per channel: each given as one value or ``channels`` values, finite, the std
    positive (it divides the pixels: 0 or less would make every pixel infinite or flip it)."""
    out = []
    for label, values in (("mean", mean), ("std", std)):
        array = np.asarray(values, dtype=np.float64) if np.asarray(values).dtype.kind in "biuf" else None
        if array is None or array.ndim > 1 or array.size not in (1, channels):
            raise DataError(f"{name}{label} must be one number or one per channel ({channels}); got {values!r}")
        if not np.all(np.isfinite(array)):
            raise DataError(f"{name}{label} must be finite; got {values!r}")
        out.append(tuple(float(v) for v in np.broadcast_to(array.reshape(-1), (channels,))))
    if min(out[1]) <= 0:
        raise DataError(f"{name}std must be positive (the pixels are divided by it); got {std!r}")
    return out[0], out[1]


def check_dataset(data: Any, name: str = "data", classes: int | None = None, training: bool = False) -> None:
    """A dataset (``Dataset`` or ``FolderDataset``) at ``fit``'s or ``evaluate``'s entry: at least one sample,
    and its labels checked as :func:`check_labels` does against the model's ``classes`` (one read-back)."""
    from .. import backend as _backend

    if len(data) == 0:
        raise DataError(f"{name} holds no samples; there is nothing to {'train on' if training else 'evaluate'}")
    check_labels(_backend.to_numpy(data.labels), f"{name} labels", len(data), classes, training)
