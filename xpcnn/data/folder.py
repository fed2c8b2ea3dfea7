"""Image folders, one subfolder per class (torchvision's ``ImageFolder``, Keras's ``image_dataset_from_directory``),
read batch by batch: only a batch of images is ever decoded at once, so memory does not grow with the folder.

``Dataset.from_folder(path)`` returns a :class:`FolderDataset`, which offers what training reads of a
:class:`~xpcnn.data.Dataset` (``len``, ``sample_shape``, ``labels``, ``batches``, ``split``, ``normalization``)."""

from __future__ import annotations

import os
import pathlib
from typing import Any, Iterator

import numpy as np

from .. import backend as _backend
from ..distributed import shard
from .checks import check_labels, check_statistics
from .pixels import held_out, normalize
from .files import DataError
from .images import _picture, pillow

__all__ = ["EXTENSIONS", "FolderDataset", "from_folder"]

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")
STATISTICS_BATCH = 256          # images decoded at once by the statistics pass
_GRAY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")


def _scan(root: pathlib.Path, classes: Any = None) -> tuple[tuple[str, ...], tuple[pathlib.Path, ...], np.ndarray]:
    """(classes, files, labels) of a folder: its sorted subfolders are the classes (or, given ``classes``, some of
    them), and each holds images with one of :data:`EXTENSIONS` (at any depth, in sorted order; hidden files and
    folders skipped)."""
    if not root.is_dir():
        raise DataError(f"image folder {root}: " + ("is a file; give the folder holding one subfolder per class"
                                                    if root.exists() else "does not exist"))
    found = tuple(sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")))
    if not found:
        raise DataError(f"image folder {root}: has no subfolders; put each class's images in a subfolder named "
                        "after it (e.g. cats/, dogs/)")
    classes = found if classes is None else tuple(str(c) for c in classes)
    unknown = [name for name in found if name not in classes]
    if unknown:
        raise DataError(f"image folder {root}: the folder(s) {', '.join(unknown)} are not among the classes "
                        f"{', '.join(classes)}")
    files, labels = [], []
    for name in found:
        label = classes.index(name)
        found = sorted(f for f in (root / name).rglob("*") if f.suffix.lower() in EXTENSIONS and f.is_file()
                       and not any(part.startswith(".") for part in f.relative_to(root).parts))
        if not found:
            raise DataError(f"image folder {root}: the class folder {name}/ holds no images "
                            f"({', '.join(EXTENSIONS)}); remove it or add its images")
        files += found
        labels += [label] * len(found)
    return classes, tuple(files), np.asarray(labels, np.int64)


def _size(mode: str | None, image_size: Any) -> tuple[int, int] | None:
    """``image_size`` as (height, width) (None stays None), after checking both arguments."""
    if mode not in (None, "grayscale", "rgb"):
        raise ValueError(f"from_folder: mode must be None, 'grayscale' or 'rgb'; got {mode!r}")
    if image_size is None:
        return None
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(np.atleast_1d(image_size).tolist())
    if len(size) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size):
        raise ValueError(f"from_folder: image_size must be a positive int or (height, width); got {image_size!r}")
    return size


def _probe(files: tuple[pathlib.Path, ...], mode: str | None, size: tuple[int, int] | None) -> tuple[int, int, int]:
    """The sample shape (C, H, W): from ``mode`` and ``size`` where given, else from the files' headers (RGB if any
    file is in colour; every file the same size). Reads headers only; an unreadable file is a DataError."""
    if mode is not None and size is not None:
        return (1 if mode == "grayscale" else 3), *size
    Image, _, UnidentifiedImageError = pillow()
    colour, sizes = False, {}
    for file in files:
        try:
            with Image.open(file) as opened:
                colour = colour or opened.mode not in _GRAY_MODES
                sizes.setdefault((opened.height, opened.width), file)
        except Image.DecompressionBombError as exc:
            raise DataError(f"{file}: too many pixels to read safely ({exc})") from None
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
            raise DataError(f"{file}: not an image Pillow can read ({type(exc).__name__}: {exc})") from None
    channels = (3 if colour else 1) if mode is None else (1 if mode == "grayscale" else 3)
    if size is None:
        if len(sizes) > 1:
            (a, first), (b, second) = list(sizes.items())[:2]
            raise DataError(f"images of different sizes: {first} is {a[0]}x{a[1]}, {second} is {b[0]}x{b[1]} "
                            "(height x width); pass image_size=(height, width) to resize them all")
        size = next(iter(sizes))
    return channels, *size


def decode(files: Any, shape: tuple[int, int, int]) -> np.ndarray:
    """``files`` decoded as uint8 pixels (N, C, H, W) of ``shape`` (resized, converted to grayscale or RGB, the way
    ``xpcnn predict`` reads a picture); a file that cannot be read is a DataError naming it."""
    out = np.empty((len(files), *shape), np.uint8)
    for i, file in enumerate(files):
        out[i] = _picture(file, *shape)[0]
    return out


def folder_statistics(files: tuple[pathlib.Path, ...], shape: tuple[int, int, int]
                      ) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of the images on the [0, 1] scale, in one streaming pass of
    ``STATISTICS_BATCH`` images at a time (a constant channel's std is taken as 1)."""
    total = np.zeros(shape[0])
    squares = np.zeros(shape[0])
    for start in range(0, len(files), STATISTICS_BATCH):
        values = decode(files[start:start + STATISTICS_BATCH], shape).astype(np.float64) / 255
        total += values.sum(axis=(0, 2, 3))
        squares += np.square(values).sum(axis=(0, 2, 3))
    count = len(files) * shape[1] * shape[2]
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean ** 2, 0))
    return tuple(float(m) for m in mean), tuple(float(s) if s > 1e-7 else 1.0 for s in std)


class FolderDataset:
    """Image files and their class labels, decoded and normalized batch by batch on the host, each batch then
    moved to the backend (beside ``like``'s array when :meth:`like` was called). ``classes``: the class names,
    label i being ``classes[i]``; ``mean`` and ``std``: the normalization, per channel, on the [0, 1] scale."""

    def __init__(self, files: tuple[pathlib.Path, ...], labels: np.ndarray, classes: tuple[str, ...],
                 shape: tuple[int, int, int], mean: tuple, std: tuple, dtype: str = "float32",
                 source: str = "images", like: Any = None):
        self.files, self.classes, self.shape = tuple(files), tuple(classes), tuple(shape)
        self.mean, self.std, self.dtype, self.source, self._like = mean, std, dtype, source, like
        self._labels = np.asarray(labels, np.int64)
        self.labels = self._place(self._labels)

    def _place(self, array: np.ndarray) -> Any:
        return _backend.asarray(array) if self._like is None else _backend.asarray_like(array, self._like)

    def __len__(self) -> int:
        return len(self.files)

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        return self.shape

    def normalization(self) -> dict:
        """``{"mean": [...], "std": [...]}`` as checkpoints record it for ``xpcnn predict``."""
        return {"mean": list(self.mean), "std": list(self.std)}

    def _subset(self, rows: np.ndarray, source: str) -> "FolderDataset":
        return FolderDataset(tuple(self.files[i] for i in rows), self._labels[rows], self.classes, self.shape,
                             self.mean, self.std, self.dtype, source, self._like)

    def like(self, reference: Any) -> "FolderDataset":
        """The same images, their batches placed on the backend and device of the array ``reference``."""
        return FolderDataset(self.files, self._labels, self.classes, self.shape, self.mean, self.std, self.dtype,
                             self.source, reference)

    def split(self, fraction: float, seed: int = 0) -> tuple["FolderDataset", "FolderDataset"]:
        """``(rest, held_out)`` as :meth:`Dataset.split` chooses them (the same samples for the same seed)."""
        n = len(self)
        held = held_out(n, fraction, seed)
        rest, out = np.flatnonzero(~held), np.flatnonzero(held)
        return (self._subset(rest, f"{self.source} (rest: {len(rest):,} of {n:,})"),
                self._subset(out, f"{self.source} (held out: {len(out):,} of {n:,})"))

    def batches(self, batch_size: int, order: np.ndarray | None = None,
                part: tuple[int, int] = (0, 1)) -> Iterator[tuple[Any, Any]]:
        """``(x, y)`` batches as :meth:`Dataset.batches` gives them, each decoded when it is reached."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size!r}")
        n = len(self)
        rows = np.arange(n) if order is None else np.asarray(order, np.int64)
        for start in range(0, n, batch_size):
            first, stop = shard(start, min(start + batch_size, n), *part)
            chosen = rows[first:stop]
            pixels = decode([self.files[i] for i in chosen], self.shape)
            yield self._place(normalize(pixels, self.dtype, self.mean, self.std)), self._place(self._labels[chosen])


def from_folder(path: str | os.PathLike, image_size: Any = None, mode: str | None = None, mean: Any = None,
                std: Any = None, dtype: str = "float32", classes: Any = None) -> FolderDataset:
    """A :class:`FolderDataset` of the folder ``path``: see :meth:`xpcnn.data.Dataset.from_folder`."""
    size = _size(mode, image_size)
    root = pathlib.Path(path)
    names, files, labels = _scan(root, classes)
    check_labels(labels, f"image folder {root}", training=classes is None)
    shape = _probe(files, mode, size)
    if mean is None or std is None:
        own_mean, own_std = folder_statistics(files, shape)
        mean = own_mean if mean is None else mean
        std = own_std if std is None else std
    mean, std = check_statistics(mean, std, shape[0])
    return FolderDataset(files, labels, names, shape, mean, std, dtype, str(root))
