"""MNIST: IDX reading with checks, where to find the files, and batches on the current backend.

Two datasets:
- ``bundled``: 10,000 training and 2,000 test images that ship inside the package (the first
  records of the canonical files), so everything works offline on a fresh machine;
- ``mnist``: the full 60,000 / 10,000, looked for in order in ``data_dir`` (``--data-dir``),
  ``XPCNN_DATA_DIR``, the cache ``~/.cache/xpcnn/mnist``, then downloaded from public mirrors.

Every file is checked: its IDX magic number, its size against its header, and the SHA-256
of its decompressed content against the published one.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import pathlib
import struct
import tempfile
import urllib.request
import zlib
from importlib import resources
from typing import Any, Iterator

import numpy as np

from . import backend as _backend

__all__ = [
    "BUNDLED_SHA256", "DataError", "DataNotFoundError", "Dataset", "MEAN", "MIRRORS", "MNIST_SHA256", "STD",
    "cache_dir", "download_mnist", "find_mnist", "load_dataset", "load_mnist", "normalize", "read_idx",
]

MEAN, STD = 0.1307, 0.3081          # of the MNIST training pixels scaled to [0, 1]
SPLITS = {"train": "train", "test": "t10k"}
FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
MNIST_SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
BUNDLED_SHA256 = {   # written by tools/make_bundled_mnist.py
    "train-images-idx3-ubyte": "2889698e6bc3614913e76901316712919d1998fc2b44512451bfe65bc1e668b1",
    "train-labels-idx1-ubyte": "651e38e2ac0632f5113ec18f1df4977117f953197819034009971a6675a0df78",
    "t10k-images-idx3-ubyte": "3f6bd66dee48df299584c67669bceee490faa25f931496bd7473b42106d7daed",
    "t10k-labels-idx1-ubyte": "7b098e5f6a3065807cebeabf36fb1724a8aff19f2673ac08b4923e0e8c715bce",
}
MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
_IDX_DTYPES = {0x08: np.uint8}


class DataError(ValueError):
    """A data file exists but is not what it should be (bad magic, wrong size, checksum mismatch)."""


class DataNotFoundError(FileNotFoundError):
    """The data files are in none of the places searched."""


# --------------------------------------------------------------------------- files
def read_idx(path: str | os.PathLike, expected_sha256: str | None = None) -> np.ndarray:
    """An IDX file (raw or .gz) as a NumPy array, after checking its header, size and checksum."""
    path = pathlib.Path(path)
    try:
        raw = path.read_bytes()
        if path.suffix == ".gz":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise DataError(f"{path}: cannot be read or decompressed ({type(exc).__name__}: {exc}); "
                        "the file is damaged or truncated: delete it and supply it again") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES or not 1 <= raw[3] <= 4:
        raise DataError(f"{path}: bad IDX magic number {raw[:4].hex() or '(empty file)'}; expected 0000080N "
                        "(unsigned bytes, N dimensions): this is not an MNIST IDX file")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated header ({len(raw)} bytes)")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = math.prod(dims)
    if len(raw) - header != expected:
        raise DataError(f"{path}: holds {len(raw) - header:,} bytes of data but its header {dims} needs {expected:,}; "
                        "the file is truncated or damaged")
    if expected_sha256 is not None:
        digest = hashlib.sha256(raw).hexdigest()
        if digest != expected_sha256:
            raise DataError(f"{path}: SHA-256 of the decompressed content is {digest}, expected {expected_sha256}; "
                            "the file is altered or not the canonical MNIST file")
    return np.frombuffer(raw, dtype=_IDX_DTYPES[raw[2]], offset=header).reshape(dims)


def _file_in(directory: pathlib.Path, name: str) -> pathlib.Path | None:
    for candidate in (directory / f"{name}.gz", directory / name):
        if candidate.is_file():
            return candidate
    return None


def cache_dir() -> pathlib.Path:
    return pathlib.Path.home() / ".cache" / "xpcnn" / "mnist"


def download_mnist(destination: str | os.PathLike, mirrors: tuple[str, ...] = MIRRORS, progress: bool = True) -> None:
    """Fetch the four files into ``destination`` (verified, each written atomically); raises OSError if none works."""
    from tqdm.auto import tqdm

    destination = pathlib.Path(destination)
    destination.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        if _file_in(destination, name):
            continue
        errors = []
        for mirror in mirrors:
            url = f"{mirror}{name}.gz"
            # a hidden partial file: never mistaken for the real one, renamed only once verified
            handle, temp = tempfile.mkstemp(dir=destination, prefix=f".{name}.", suffix=".gz")
            try:
                with os.fdopen(handle, "wb") as out, urllib.request.urlopen(url, timeout=30) as response:
                    total = int(response.headers.get("Content-Length") or 0) or None
                    with tqdm(total=total, unit="B", unit_scale=True, desc=f"{name}.gz", disable=not progress,
                              leave=False) as bar:
                        while chunk := response.read(1 << 16):
                            out.write(chunk)
                            bar.update(len(chunk))
                read_idx(temp, MNIST_SHA256[name])
                os.replace(temp, destination / f"{name}.gz")
                break
            except (OSError, DataError) as exc:
                errors.append(f"{url}: {exc}")
            finally:
                if os.path.exists(temp):
                    os.remove(temp)
        else:
            raise OSError("could not download " + name + ".gz:\n  " + "\n  ".join(errors))


def find_mnist(data_dir: str | os.PathLike | None = None, download: bool = True,
               mirrors: tuple[str, ...] = MIRRORS, cache: str | os.PathLike | None = None) -> pathlib.Path:
    """The folder holding the four MNIST files: ``data_dir``, then ``XPCNN_DATA_DIR``, then the cache,
    then a download into the cache. A failure lists every place it looked."""
    cache = pathlib.Path(cache) if cache is not None else cache_dir()
    looked = []
    for label, folder in (("--data-dir", data_dir), ("XPCNN_DATA_DIR", _backend.data_dir_from_env()), ("cache", cache)):
        if folder is None:
            looked.append(f"{label}: not set")
            continue
        folder = pathlib.Path(folder).expanduser()
        missing = [name for name in FILES if _file_in(folder, name) is None]
        if not missing:
            return folder
        looked.append(f"{label} {folder}: " + ("no such folder" if not folder.is_dir() else "missing " + ", ".join(missing)))
    if download:
        try:
            download_mnist(cache, mirrors)
            return cache
        except OSError as exc:
            looked.append(f"download into {cache}: {exc}")
    else:
        looked.append("download: not attempted (download=False)")
    raise DataNotFoundError(
        "MNIST files not found. Looked in:\n  - " + "\n  - ".join(looked) + "\n"
        "Supply the four files (" + ", ".join(f"{n}[.gz]" for n in FILES) + ") in a folder and pass it with "
        "--data-dir DIR (Python: data_dir=DIR) or XPCNN_DATA_DIR=DIR, or copy them to " + str(cache) + ". "
        "Without them, --dataset bundled trains on the subset that ships with xpcnn."
    )


def load_mnist(split: str = "train", data_dir: str | os.PathLike | None = None, download: bool = True,
               **find: Any) -> tuple[np.ndarray, np.ndarray]:
    """Full MNIST ``split`` ('train' or 'test') as uint8 images (N, 28, 28) and labels (N,)."""
    prefix = _split_prefix(split)
    folder = find_mnist(data_dir, download, **find)
    return tuple(read_idx(_file_in(folder, f"{prefix}-{kind}"), MNIST_SHA256[f"{prefix}-{kind}"])
                 for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"))


def load_bundled(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """The MNIST subset shipped with xpcnn (10,000 train / 2,000 test) as uint8 images and labels."""
    prefix = _split_prefix(split)
    folder = resources.files("xpcnn") / "datasets" / "mnist_subset"
    out = []
    for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
        with resources.as_file(folder / f"{prefix}-{kind}.gz") as path:
            out.append(read_idx(path, BUNDLED_SHA256[f"{prefix}-{kind}"]))
    return tuple(out)


def _split_prefix(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}; got {split!r}")
    return SPLITS[split]


# --------------------------------------------------------------------------- arrays on the backend
def normalize(images: np.ndarray, dtype: str = "float32") -> np.ndarray:
    """uint8 images (N, 28, 28) -> (N, 1, 28, 28) floats with MNIST's mean 0 and standard deviation 1."""
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise TypeError(f"normalize: images must be uint8 pixels 0..255; got {images.dtype}")
    if images.ndim == 3:
        images = images[:, None]
    scaled = images.astype(dtype) / np.asarray(255, dtype)
    return (scaled - np.asarray(MEAN, dtype)) / np.asarray(STD, dtype)


class Dataset:
    """Images (N, C, H, W) and integer labels (N,) on one backend, moved there once; batches are taken there."""

    def __init__(self, images: Any, labels: Any, source: str = "arrays"):
        if images.shape[0] != labels.shape[0]:
            raise ValueError(f"Dataset: {images.shape[0]} images but {labels.shape[0]} labels")
        self.images, self.labels, self.source = images, labels, source

    @classmethod
    def from_numpy(cls, images: np.ndarray, labels: np.ndarray, dtype: str = "float32", source: str = "arrays"):
        """uint8 MNIST-style arrays, normalized on the host, then put on the current backend in one transfer."""
        return cls(_backend.asarray(normalize(images, dtype)), _backend.asarray(np.asarray(labels, np.int64)), source)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def sample_shape(self) -> tuple:
        return tuple(self.images.shape[1:])

    def batches(self, batch_size: int, order: np.ndarray | None = None) -> Iterator[tuple[Any, Any]]:
        """``(x, y)`` batches in ``order`` (a permutation of range(N); None keeps the stored order)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size!r}")
        n = len(self)
        spans = [(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]  # in-bounds stops
        if order is None:
            for start, stop in spans:
                yield self.images[start:stop, ...], self.labels[start:stop]
            return
        from array_api_compat import array_namespace

        xp = array_namespace(self.images)
        index = _backend.asarray_like(np.asarray(order, np.int64), self.labels)   # one transfer per epoch
        for start, stop in spans:
            rows = index[start:stop]
            yield xp.take(self.images, rows, axis=0), xp.take(self.labels, rows, axis=0)


def load_dataset(name: str = "bundled", split: str = "train", data_dir: str | os.PathLike | None = None,
                 download: bool = True, dtype: str = "float32", **find: Any) -> Dataset:
    """``bundled`` or ``mnist`` ``split`` as a normalized :class:`Dataset` on the current backend."""
    if name == "bundled":
        images, labels = load_bundled(split)
        source = "the bundled MNIST subset"
    elif name == "mnist":
        folder = find_mnist(data_dir, download, **find)
        images, labels = load_mnist(split, folder, download=False)
        source = f"MNIST from {folder}"
    else:
        raise ValueError(f"dataset must be 'bundled' or 'mnist'; got {name!r}")
    return Dataset.from_numpy(images, labels, dtype, source)
