"""CIFAR-10 from its official binary archive (``cifar-10-binary.tar.gz``), read without extracting it.

The binary version is used, not the Python one: the Python archive holds pickles, which xpcnn never
loads. The archive's SHA-256 is checked before it is opened. Each member ``data_batch_1.bin`` ..
``data_batch_5.bin`` (train) and ``test_batch.bin`` (test) is a run of records of 1 label byte
followed by 3 x 32 x 32 pixel bytes (red, green, blue planes, rows top to bottom).
"""

from __future__ import annotations

import hashlib
import io
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
                 lambda path, name: _files.check_file_sha256(path, CIFAR10_SHA256[name]),
                 limits={ARCHIVE: 170_052_171})
MEMBERS = {"train": tuple(f"cifar-10-batches-bin/data_batch_{i}.bin" for i in range(1, 6)),
           "test": ("cifar-10-batches-bin/test_batch.bin",)}
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
SHAPE = (3, 32, 32)
RECORD = 1 + 3 * 32 * 32
BATCH = 10_000          # records in each member of the archive: the most a member may declare


def read_cifar10_archive(path: str | os.PathLike, split: str = "train",
                         expected_sha256: str | None = CIFAR10_SHA256[ARCHIVE]) -> tuple[np.ndarray, np.ndarray]:
    """``split`` of the binary archive at ``path`` as uint8 images (N, 3, 32, 32) and int64 labels (N,).

    The archive is read once, as a stream: its SHA-256 (pass ``expected_sha256=None`` to skip it, e.g. for test
    files) is of the very bytes the members come from, and nothing is returned unless it matches. A member is
    read only if its declared size is a whole number of records, at most a batch's ``BATCH`` records.
    """
    if split not in MEMBERS:
        raise ValueError(f"split must be one of {', '.join(MEMBERS)}; got {split!r}")
    path = pathlib.Path(path)
    found: dict[str, bytes] = {}
    try:
        with open(path, "rb") as handle:
            stream = _Hashing(handle)
            with tarfile.open(fileobj=io.BufferedReader(stream, 1 << 20), mode="r|gz") as archive:
                for member in archive:
                    if member.name not in MEMBERS[split]:
                        continue
                    if not member.isfile() or not 0 < member.size <= BATCH * RECORD or member.size % RECORD:
                        raise DataError(f"{path}: {member.name} declares {member.size:,} bytes, not a whole number "
                                        f"of {RECORD}-byte records up to {BATCH:,} of them; the archive is damaged")
                    found[member.name] = archive.extractfile(member).read()
            while stream.read(1 << 20):           # the rest of the file: the digest covers all of it
                pass
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise DataError(f"{path}: cannot be read as a .tar.gz archive ({type(exc).__name__}: {exc}); "
                        "it is damaged or truncated: delete it and supply it again") from exc
    if expected_sha256 is not None and (digest := stream.digest.hexdigest()) != expected_sha256:
        raise DataError(f"{path}: SHA-256 is {digest}, expected {expected_sha256}; the file is altered, truncated or "
                        "not the official one: delete it and supply it again")
    images, labels = [], []
    for name in MEMBERS[split]:
        if name not in found:
            raise DataError(f"{path}: has no member {name}; this is not the CIFAR-10 binary archive")
        records = np.frombuffer(found[name], np.uint8).reshape(-1, RECORD)
        if records[:, 0].max() >= len(CLASSES):
            raise DataError(f"{path}: {name} has labels up to {records[:, 0].max()}; CIFAR-10 has 10 classes")
        labels.append(records[:, 0].astype(np.int64))
        images.append(records[:, 1:].reshape(-1, *SHAPE))
    return np.concatenate(images), np.concatenate(labels)


class _Hashing(io.RawIOBase):
    """A file read through SHA-256: ``digest`` covers every byte handed out."""

    def __init__(self, handle: Any):
        self.handle, self.digest = handle, hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        count = self.handle.readinto(buffer)
        self.digest.update(memoryview(buffer)[:count])
        return count


def load_cifar10(split: str = "train", data_dir: str | os.PathLike | None = None, download: bool = True,
                 **find: Any) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10 ``split`` (50,000 train / 10,000 test) as uint8 images (N, 3, 32, 32) and labels (N,),
    from ``cifar-10-binary.tar.gz`` found in the usual order (see :func:`xpcnn.data.files.find`)."""
    folder = _files.find(CIFAR10, data_dir, download, **find)
    return read_cifar10_archive(folder / ARCHIVE, split, CIFAR10_SHA256[ARCHIVE])
