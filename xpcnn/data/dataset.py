"""Arrays on the backend: normalization, :class:`Dataset` and its batches, augmentation, ``load_dataset``."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np
from array_api_compat import array_namespace, device

from .. import backend as _backend
from .. import functional as F
from ..distributed import shard
from . import files as _files
from .checks import channels_first, check_images, check_labels, check_statistics
from .pixels import MEAN, STD, held_out, normalize, statistics
from .cifar import CIFAR10, load_cifar10
from .mnist import FASHION_MNIST, MNIST, load_bundled, load_fashion_mnist, load_mnist

__all__ = ["DATASETS", "Dataset", "MEAN", "STD", "load_dataset", "normalize", "random_crop_flip"]



@dataclass(frozen=True)
class _Spec:
    load: Callable[..., tuple[np.ndarray, np.ndarray]]
    mean: Any                       # of the training pixels scaled to [0, 1]: one value or one per channel
    std: Any
    title: str
    source: _files.Source | None = None    # where the files are looked for; None: shipped with xpcnn


DATASETS = {
    "bundled": _Spec(lambda split, *_, **__: load_bundled(split), MEAN, STD, "the bundled MNIST subset"),
    "mnist": _Spec(load_mnist, MEAN, STD, "MNIST", MNIST),
    "fashion-mnist": _Spec(load_fashion_mnist, 0.2860, 0.3530, "Fashion-MNIST", FASHION_MNIST),
    "cifar10": _Spec(load_cifar10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), "CIFAR-10", CIFAR10),
}


class Dataset:
    """Images (N, C, H, W) and labels on one backend, moved there once; batches are taken there. ``mean`` and
    ``std`` (one value per channel, or None) record how the images were normalized, to treat new images alike."""

    def __init__(self, images: Any, labels: Any, source: str = "arrays", mean: Any = None, std: Any = None):
        if images.shape[0] != labels.shape[0]:
            raise ValueError(f"Dataset: {images.shape[0]} images but {labels.shape[0]} labels")
        self.images, self.labels, self.source = images, labels, source
        self.mean, self.std = mean, std

    @classmethod
    def from_numpy(cls, images: np.ndarray, labels: np.ndarray, dtype: str = "float32", source: str = "arrays",
                   mean: Any = None, std: Any = None, layout: str | None = None) -> "Dataset":
        """Your own arrays as a Dataset on the current backend, normalized on the host, then moved in one transfer.

        ``images``: uint8 pixels (scaled to [0, 1] first) or floats, shaped (N, H, W), (N, C, H, W) or
        (N, H, W, C) (``layout`` "NCHW" or "NHWC"; None guesses, see :func:`channels_first`). ``mean`` and
        ``std`` (one value or one per channel, on the [0, 1] scale for uint8): the normalization; None uses these
        images' own per-channel statistics. Either way they are kept as ``dataset.mean`` and ``dataset.std``
        (normalize a test set or new images with the training set's). ``labels``: class indices (N,) or one-hot /
        probability targets (N, K) (kept as floats). Bad input (NaN pixels, fractional or string labels, a zero
        std, no images, ...) is a :class:`~xpcnn.data.DataError` (see :mod:`xpcnn.data.checks`)."""
        images = channels_first(check_images(images, "images"), layout)
        labels = check_labels(labels, "labels", images.shape[0])
        if mean is None or std is None:
            own_mean, own_std = statistics(images)
            mean = own_mean if mean is None else mean
            std = own_std if std is None else std
        mean, std = check_statistics(mean, std, images.shape[1])
        labels = labels if labels.ndim == 1 else labels.astype(dtype)
        return cls(_backend.asarray(normalize(images, dtype, mean, std)), _backend.asarray(labels), source, mean, std)

    @classmethod
    def from_folder(cls, path: str | os.PathLike, image_size: Any = None, mode: str | None = None,
                    mean: Any = None, std: Any = None, dtype: str = "float32", classes: Any = None) -> Any:
        """Images in a folder with one subfolder per class, read batch by batch (a :class:`FolderDataset`).

        The sorted subfolder names are the classes (``dataset.classes``; label i is ``classes[i]``); each holds
        .png, .jpg/.jpeg or .bmp files, read through Pillow as ``xpcnn predict`` reads a picture. ``mode``:
        "grayscale" or "rgb" (None: RGB if any file is in colour). ``image_size``: (height, width) or one int to
        resize every image to (None: the files' own size, which must then agree). ``mean``/``std``: the
        normalization as in :meth:`from_numpy`; None computes it in one streaming pass over the files. Only a
        batch of images is decoded at once, for the statistics and for every batch that training reads.
        ``classes``: the training set's class names, for a test folder (its subfolders may be some of them, and
        its labels index them); None takes the subfolders, which must then be at least two classes."""
        from .folder import from_folder

        return from_folder(path, image_size, mode, mean, std, dtype, classes)

    def like(self, reference: Any) -> "Dataset":
        """This dataset on the backend and device of the array ``reference`` (itself if already there)."""
        images, labels = (_backend.asarray_like(a, reference) for a in (self.images, self.labels))
        if images is self.images and labels is self.labels:
            return self
        return Dataset(images, labels, self.source, self.mean, self.std)

    def normalization(self) -> dict | None:
        """``{"mean": [...], "std": [...]}`` as checkpoints record it for ``xpcnn predict``; None if unknown."""
        return None if self.mean is None else {"mean": list(self.mean), "std": list(self.std)}

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def sample_shape(self) -> tuple:
        return tuple(self.images.shape[1:])

    def split(self, fraction: float, seed: int = 0) -> tuple["Dataset", "Dataset"]:
        """``(rest, held_out)``: ``held_out`` holds ``fraction`` of the samples (rounded, at least one, at least one
        left), chosen by ``seed`` alone; both keep the stored order. For a validation split that never touches
        the test data: ``train, val = train.split(0.1)``."""
        n = len(self)
        held = held_out(n, fraction, seed)
        xp = array_namespace(self.images)
        parts = []
        for rows, label in ((np.flatnonzero(~held), "rest"), (np.flatnonzero(held), "held out")):
            index = _backend.asarray_like(rows, self.labels)
            part = Dataset(xp.take(self.images, index, axis=0), xp.take(self.labels, index, axis=0),
                           f"{self.source} ({label}: {len(rows):,} of {n:,})", self.mean, self.std)
            parts.append(part)
        return parts[0], parts[1]

    def batches(self, batch_size: int, order: np.ndarray | None = None,
                part: tuple[int, int] = (0, 1)) -> Iterator[tuple[Any, Any]]:
        """``(x, y)`` batches in ``order`` (a permutation of range(N); None keeps the stored order).
        ``part=(rank, size)``: this rank's slice of each batch (data-parallel training; may be empty)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size!r}")
        n = len(self)
        spans = [shard(start, min(start + batch_size, n), *part) for start in range(0, n, batch_size)]
        if order is None:
            for start, stop in spans:
                yield self.images[start:stop, ...], self.labels[start:stop]
            return
        xp = array_namespace(self.images)
        index = _backend.asarray_like(np.asarray(order, np.int64), self.labels)   # one transfer per epoch
        for start, stop in spans:
            rows = index[start:stop]
            yield xp.take(self.images, rows, axis=0), xp.take(self.labels, rows, axis=0)


def random_crop_flip(x: Any, rng: np.random.Generator, padding: int = 4, flip: bool = True) -> Any:
    """CIFAR's standard augmentation on a batch (N, C, H, W) on any backend: each image is zero-padded by
    ``padding`` pixels, cropped back to H x W at a random offset, and mirrored left-right with probability
    1/2. The random draws come from ``rng`` (NumPy) and the whole batch moves as one gather."""
    xp = array_namespace(x)
    n, c, h, w = x.shape
    padded = F.pad2d(x, padding) if padding else x
    width = w + 2 * padding
    rows = rng.integers(0, 2 * padding + 1, n)                                   # each image's offsets
    cols = rng.integers(0, 2 * padding + 1, n)
    flips = rng.random(n) < 0.5 if flip else np.zeros(n, bool)
    # the draws go up as one small (3, N) array and the (N, H*W) gather index is built on the device: a host-built
    # index was N*H*W integers to upload every step
    drawn = _backend.asarray_like(np.stack([rows, cols, flips]).astype(np.int64), x)
    offset, flipped = xp.reshape(drawn[1, :], (n, 1)), xp.reshape(drawn[2, :], (n, 1)) == 1
    across = xp.arange(w, dtype=drawn.dtype, device=device(drawn))
    cols = xp.where(flipped, offset + (w - 1) - across, offset + across)                              # (N, W)
    rows = xp.reshape(drawn[0, :], (n, 1)) + xp.arange(h, dtype=drawn.dtype, device=device(drawn))     # (N, H)
    index = xp.reshape(rows[:, :, None] * width + cols[:, None, :], (n, 1, h * w))
    index = xp.broadcast_to(index, (n, c, h * w))
    flat = xp.reshape(padded, (n, c, (h + 2 * padding) * width))
    return xp.reshape(xp.take_along_axis(flat, index, axis=2), (n, c, h, w))


def load_dataset(name: str = "bundled", split: str = "train", data_dir: str | os.PathLike | None = None,
                 download: bool = True, dtype: str = "float32", **find: Any) -> Dataset:
    """A dataset of :data:`DATASETS` (``bundled``, ``mnist``, ``fashion-mnist``, ``cifar10``), ``split``
    ('train' or 'test'), normalized with its own statistics, as a :class:`Dataset` on the current backend."""
    if name not in DATASETS:
        raise ValueError(f"dataset must be one of {', '.join(DATASETS)}; got {name!r}")
    spec = DATASETS[name]
    if spec.source is None:
        images, labels = spec.load(split)
        title = spec.title
    else:
        folder = _files.find(spec.source, data_dir, download, **find)
        images, labels = spec.load(split, folder, download=False)
        title = f"{spec.title} from {folder}"
    return Dataset.from_numpy(images, labels, dtype, title, spec.mean, spec.std)


def load_arrays(path: str | os.PathLike, split: str = "train", dtype: str = "float32") -> Dataset | None:
    """Your own arrays from an ``.npz`` file as a :class:`Dataset`: ``x_train`` and ``y_train``, and optionally
    ``x_test`` and ``y_test`` (None for the test split when they are absent). Images are uint8 or floats in any
    layout :meth:`Dataset.from_numpy` takes; labels integer class indices (N,). Both splits are normalized with the
    training images' statistics. Every split is checked whichever is asked for (so a bad test split is refused
    before training); a missing file or key, or bad content, is a DataError naming it."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be one of train, test; got {split!r}")
    try:
        arrays = _files.read_npz(path)
    except FileNotFoundError:
        raise _files.DataNotFoundError(f"--data {path}: no such file") from None
    except _files.DataError as exc:
        raise _files.DataError(f"--data {exc}") from None
    except OSError as exc:
        raise _files.DataError(f"--data {path}: cannot be read ({exc})") from None
    _check_arrays(path, arrays)
    if split == "test" and "x_test" not in arrays:
        return None
    mean, std = statistics(channels_first(arrays["x_train"]))
    images = channels_first(arrays[f"x_{split}"])
    return Dataset.from_numpy(images, arrays[f"y_{split}"], dtype, f"{path} ({split})", mean, std)


def load_data(path: str | os.PathLike, split: str = "train", dtype: str = "float32", **folder: Any) -> Any:
    """``--data PATH``: an image folder (one subfolder per class) as a :class:`~xpcnn.data.FolderDataset`, whose
    only split is "train" (None for "test"), ``folder`` passed on to :meth:`Dataset.from_folder` (``image_size``,
    ``mode``, ``mean``, ``std``, ``classes``); anything else as an ``.npz`` file (:func:`load_arrays`)."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be one of train, test; got {split!r}")
    if not os.path.isdir(path):
        return load_arrays(path, split, dtype)
    if split == "test":
        return None
    try:
        return Dataset.from_folder(path, dtype=dtype, **folder)
    except _files.DataError as exc:
        raise _files.DataError(f"--data {exc}") from None


def _check_arrays(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> None:
    """An --data file's arrays, all splits: the keys, the training labels as a classifier's (two classes at least),
    the test split in the training images' shape and classes."""
    for key in ("x_train", "y_train"):
        if key not in arrays:
            raise _files.DataError(f"--data {path}: no array named {key!r} (found {', '.join(sorted(arrays)) or 'none'}"
                                   f"; it needs x_train, y_train and optionally x_test, y_test)")
    if ("x_test" in arrays) != ("y_test" in arrays):
        given, missing = ("x_test", "y_test") if "x_test" in arrays else ("y_test", "x_test")
        raise _files.DataError(f"--data {path}: has {given} but no {missing}; give both or neither")
    images = check_images(arrays["x_train"], f"--data {path}: x_train")
    train = check_labels(arrays["y_train"], f"--data {path}: y_train", images.shape[0], training=True)
    if train.ndim != 1:
        raise _files.DataError(f"--data {path}: y_train must be integer class indices of shape ({images.shape[0]},); "
                               f"got shape {train.shape}")
    if "x_test" in arrays:
        shape = channels_first(images[:1]).shape[1:]
        test = check_images(arrays["x_test"], f"--data {path}: x_test", shape)
        check_labels(arrays["y_test"], f"--data {path}: y_test", test.shape[0], int(train.max()) + 1)
