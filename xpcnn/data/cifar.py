"""CIFAR-10 from its official binary archive (``cifar-10-binary.tar.gz``), read without extracting it.

The binary version is used, not the Python one: the Python archive holds pickles, which xpcnn never
loads. The archive's SHA-256 is checked before it is opened. Each member ``data_batch_1.bin`` ..
``data_batch_5.bin`` (train) and ``test_batch.bin`` (test) is a run of records of 1 label byte
followed by 3 x 32 x 32 pixel bytes (red, green, blue planes, rows top to bottom).
"""

from __future__ import annotations

import os
import pathlib
import tarfile
import zlib
from typing import Any

import numpy as np

from . import files as _files
from .files import DataError, Source

__all__ = ["CIFAR10", "CIFAR10_SHA256", "CLASSES", "load_cifar10", "read_cifar10_archive"]

ARCHIVE = "cifar-10-binary.tar.gz"
CIFAR10_SHA256 = {ARCHIVE: "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd"}   # 170,052,171 bytes
CIFAR10 = Source("cifar10", "CIFAR-10", CIFAR10_SHA256, ("https://www.cs.toronto.edu/~kriz/",),
                 _files.check_file_sha256)
MEMBERS = {"train": tuple(f"cifar-10-batches-bin/data_batch_{i}.bin" for i in range(1, 6)),
           "test": ("cifar-10-batches-bin/test_batch.bin",)}
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
SHAPE = (3, 32, 32)
RECORD = 1 + 3 * 32 * 32


def read_cifar10_archive(path: str | os.PathLike, split: str = "train",
                         expected_sha256: str | None = CIFAR10_SHA256[ARCHIVE]) -> tuple[np.ndarray, np.ndarray]:
    """``split`` of the binary archive at ``path`` as uint8 images (N, 3, 32, 32) and int64 labels (N,).

    The file's SHA-256 is checked first (pass ``expected_sha256=None`` to skip it, e.g. for test files).
    """
    if split not in MEMBERS:
        raise ValueError(f"split must be one of {', '.join(MEMBERS)}; got {split!r}")
    path = pathlib.Path(path)
    if expected_sha256 is not None:
        _files.check_file_sha256(path, expected_sha256)
    images, labels = [], []
    try:
        with tarfile.open(path, "r:gz") as archive:
            for name in MEMBERS[split]:
                try:
                    member = archive.extractfile(name)
                except KeyError:
                    member = None
                if member is None:
                    raise DataError(f"{path}: has no member {name}; this is not the CIFAR-10 binary archive")
                raw = member.read()
                if not raw or len(raw) % RECORD:
                    raise DataError(f"{path}: {name} holds {len(raw):,} bytes, not a whole number of "
                                    f"{RECORD}-byte records; the archive is damaged")
                records = np.frombuffer(raw, np.uint8).reshape(-1, RECORD)
                if records[:, 0].max() >= len(CLASSES):
                    raise DataError(f"{path}: {name} has labels up to {records[:, 0].max()}; CIFAR-10 has 10 classes")
                labels.append(records[:, 0].astype(np.int64))
                images.append(records[:, 1:].reshape(-1, *SHAPE))
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise DataError(f"{path}: cannot be read as a .tar.gz archive ({type(exc).__name__}: {exc}); "
                        "it is damaged or truncated: delete it and supply it again") from exc
    return np.concatenate(images), np.concatenate(labels)


def load_cifar10(split: str = "train", data_dir: str | os.PathLike | None = None, download: bool = True,
                 **find: Any) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10 ``split`` (50,000 train / 10,000 test) as uint8 images (N, 3, 32, 32) and labels (N,),
    from ``cifar-10-binary.tar.gz`` found in the usual order (see :func:`xpcnn.data.files.find`)."""
    folder = _files.find(CIFAR10, data_dir, download, **find)
    return read_cifar10_archive(folder / ARCHIVE, split, CIFAR10_SHA256[ARCHIVE])
