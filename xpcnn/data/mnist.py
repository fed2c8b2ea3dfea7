"""MNIST and Fashion-MNIST: IDX files, read with checks.

- ``bundled``: 10,000 training and 2,000 test MNIST images that ship inside the package (the first
  records of the canonical files), so everything works offline on a fresh machine;
- ``mnist``: the full 60,000 / 10,000. Every file is checked: its IDX magic number, its size against its
  header, and the SHA-256 of its decompressed content against the published one (so .gz or raw both do);
- ``fashion-mnist``: Zalando's 60,000 / 10,000 clothing images in the same format, checked against the
  SHA-256 of the published .gz files (so the .gz files are needed as published).
"""

from __future__ import annotations

import hashlib
import math
import os
import pathlib
import struct
import zlib
from importlib import resources
from typing import Any

import numpy as np

from . import files as _files
from .files import DataError, Source

__all__ = [
    "BUNDLED_SHA256", "FASHION_MNIST", "FASHION_MNIST_SHA256", "FILES", "MIRRORS", "MNIST", "MNIST_SHA256",
    "download_mnist", "find_mnist", "load_bundled", "load_fashion_mnist", "load_mnist", "read_idx",
]

SPLITS = {"train": "train", "test": "t10k"}
FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
MNIST_SHA256 = {   # of the decompressed files
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
FASHION_MNIST_SHA256 = {   # of the published .gz files
    "train-images-idx3-ubyte.gz": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
    "train-labels-idx1-ubyte.gz": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
    "t10k-images-idx3-ubyte.gz": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
    "t10k-labels-idx1-ubyte.gz": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
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
IDX_BYTES = {      # each file's size decompressed (MNIST's and Fashion-MNIST's are the same): the most ever read
    "train-images-idx3-ubyte": 16 + 60_000 * 28 * 28, "train-labels-idx1-ubyte": 8 + 60_000,
    "t10k-images-idx3-ubyte": 16 + 10_000 * 28 * 28, "t10k-labels-idx1-ubyte": 8 + 10_000,
}


def read_idx(path: str | os.PathLike, expected_sha256: str | None = None, *, max_bytes: int | None = None,
             file_sha256: str | None = None) -> np.ndarray:
    """An IDX file (raw or .gz) as a NumPy array, after checking its header, size and SHA-256.

    ``expected_sha256``: of the (decompressed) content; ``file_sha256``: of the file as stored (Fashion-MNIST
    publishes the .gz files' digests). Both are computed over the very bytes that are parsed, read in one pass.
    Memory follows the data: the file is read (and decompressed) no further than its header declares, and no
    further than ``max_bytes`` of content, so a small file claiming gigabytes is refused, not allocated."""
    path = pathlib.Path(path)
    try:
        with open(path, "rb") as handle:
            on_disk = os.fstat(handle.fileno()).st_size
            if max_bytes is not None and on_disk > max_bytes + _SLACK:
                raise DataError(f"{path}: is {on_disk:,} bytes on disk; this file is at most {max_bytes:,} bytes "
                                f"of content: it is not the expected file")
            if path.suffix != ".gz":           # raw: the size the header declares must be the size on disk
                head = handle.read(64)
                _check_declared(path, head, max_bytes, on_disk)
                stored = head + handle.read(on_disk - len(head))
            else:
                stored = handle.read()         # compressed: bounded by its size on disk
    except OSError as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise DataError(f"{path}: cannot be read ({type(exc).__name__}: {exc})") from exc
    if file_sha256 is not None:
        digest = hashlib.sha256(stored).hexdigest()
        if digest != file_sha256:
            raise DataError(f"{path}: SHA-256 is {digest}, expected {file_sha256}; the file is altered, truncated "
                            "or not the official one: delete it and supply it again")
    raw = _content(path, stored, max_bytes)
    ndim, header, dims = _idx_header(path, raw)
    if expected_sha256 is not None:
        digest = hashlib.sha256(raw).hexdigest()
        if digest != expected_sha256:
            raise DataError(f"{path}: SHA-256 of the decompressed content is {digest}, expected {expected_sha256}; "
                            "the file is altered or not the canonical MNIST file")
    return np.frombuffer(raw, dtype=_IDX_DTYPES[raw[2]], offset=header).reshape(dims)


_SLACK = 1 << 20        # a compressed file may exceed its content by a little (incompressible data)


def _idx_header(path: pathlib.Path, raw: bytes | bytearray) -> tuple[int, int, tuple]:
    """(dimensions, header bytes, shape) of IDX content whose first bytes are ``raw``; DataError if malformed."""
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES or not 1 <= raw[3] <= 4:
        raise DataError(f"{path}: bad IDX magic number {bytes(raw[:4]).hex() or '(empty file)'}; expected 0000080N "
                        "(unsigned bytes, N dimensions): this is not an MNIST IDX file")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated header ({len(raw)} bytes)")
    return ndim, header, struct.unpack(f">{ndim}I", bytes(raw[4:header]))


def _check_declared(path: pathlib.Path, head: bytes, max_bytes: int | None, held: int | None = None) -> int:
    """The content size the IDX header at the start of ``head`` declares, checked against ``max_bytes`` and, when
    known, against the bytes the content ``held``."""
    _, header, dims = _idx_header(path, head)
    declared = header + math.prod(dims)
    if max_bytes is not None and declared > max_bytes:
        raise DataError(f"{path}: its header declares {dims} ({declared:,} bytes); this file holds at most "
                        f"{max_bytes:,}: it is not the expected file")
    if held is not None and held != declared:
        relation = "more data than" if held > declared else "less data than"
        raise DataError(f"{path}: holds {relation} its header {dims} declares ({declared - header:,} bytes of data); "
                        "the file is truncated or damaged")
    return declared


def _content(path: pathlib.Path, stored: bytes, max_bytes: int | None) -> bytes:
    """The IDX content of a stored file, decompressed if it is .gz: never more than the header declares (nor
    ``max_bytes``) is decompressed, and the content must be exactly that long."""
    if path.suffix != ".gz":
        _check_declared(path, stored, max_bytes, len(stored))
        return stored
    declared = _check_declared(path, _inflate(path, stored, 64), max_bytes)     # 64 bytes hold any IDX header
    raw = _inflate(path, stored, declared)
    _check_declared(path, raw, max_bytes, len(raw))
    return raw


def _inflate(path: pathlib.Path, stored: bytes, limit: int) -> bytes:
    """The gzip data ``stored`` decompressed, stopping after ``limit`` + 1 bytes (one more shows it holds more)."""
    out = bytearray()
    rest = stored
    try:
        while rest and len(out) <= limit:
            inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)       # one gzip member (a file may hold several)
            pending = rest
            while pending and not inflater.eof and len(out) <= limit:
                out += inflater.decompress(pending, limit + 1 - len(out))
                pending = inflater.unconsumed_tail
            if len(out) > limit:
                break                                               # more than wanted: the caller says so
            if not inflater.eof:
                raise EOFError("the compressed stream ends early")
            rest = inflater.unused_data
    except (zlib.error, EOFError) as exc:
        raise DataError(f"{path}: cannot be decompressed ({type(exc).__name__}: {exc}); the file is damaged or "
                        "truncated: delete it and supply it again") from exc
    return bytes(out)


def _check_idx(path: pathlib.Path, name: str) -> None:
    stem = name.removesuffix(".gz")
    read_idx(path, MNIST_SHA256[stem], max_bytes=IDX_BYTES[stem])


def _check_fashion(path: pathlib.Path, name: str) -> None:
    read_idx(path, file_sha256=FASHION_MNIST_SHA256[name], max_bytes=IDX_BYTES[name.removesuffix(".gz")])


MNIST = Source("mnist", "MNIST", {f"{n}.gz": MNIST_SHA256[n] for n in FILES}, MIRRORS, _check_idx, raw_ok=True,
               limits={f"{n}.gz": IDX_BYTES[n] + _SLACK for n in FILES})
# the digests are pinned, so a mirror can only fail to deliver, never alter a file: the plain-http one is a fallback
FASHION_MNIST = Source("fashion-mnist", "Fashion-MNIST", FASHION_MNIST_SHA256,
                       ("https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
                        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"), _check_fashion,
                       limits={f"{n}.gz": IDX_BYTES[n] + _SLACK for n in FILES})


def download_mnist(destination: str | os.PathLike, mirrors: tuple[str, ...] = MIRRORS, progress: bool = True) -> None:
    """Fetch the four MNIST files into ``destination`` (verified, each written atomically); OSError if none works."""
    _files.download(MNIST, destination, mirrors, progress)


def find_mnist(data_dir: str | os.PathLike | None = None, download: bool = True,
               mirrors: tuple[str, ...] = MIRRORS, cache: str | os.PathLike | None = None) -> pathlib.Path:
    """The folder holding the four MNIST files: ``data_dir``, then ``XPCNN_DATA_DIR``, then the cache,
    then a download into the cache. A failure lists every place it looked."""
    return _files.find(MNIST, data_dir, download, mirrors, cache)


def _split_prefix(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}; got {split!r}")
    return SPLITS[split]


def load_mnist(split: str = "train", data_dir: str | os.PathLike | None = None, download: bool = True,
               **find: Any) -> tuple[np.ndarray, np.ndarray]:
    """Full MNIST ``split`` ('train' or 'test') as uint8 images (N, 28, 28) and labels (N,)."""
    prefix = _split_prefix(split)
    folder = find_mnist(data_dir, download, **find)
    return tuple(read_idx(MNIST.file_in(folder, f"{prefix}-{kind}.gz"), MNIST_SHA256[f"{prefix}-{kind}"],
                          max_bytes=IDX_BYTES[f"{prefix}-{kind}"])
                 for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"))


def load_fashion_mnist(split: str = "train", data_dir: str | os.PathLike | None = None, download: bool = True,
                       **find: Any) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST ``split`` as uint8 images (N, 28, 28) and labels (N,), from the published .gz files."""
    prefix = _split_prefix(split)
    folder = _files.find(FASHION_MNIST, data_dir, download, **find)
    out = []
    for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
        name = f"{prefix}-{kind}.gz"       # the digest is of the bytes parsed: one read, nothing to swap between
        out.append(read_idx(folder / name, file_sha256=FASHION_MNIST_SHA256[name],
                            max_bytes=IDX_BYTES[f"{prefix}-{kind}"]))
    return tuple(out)


def load_bundled(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """The MNIST subset shipped with xpcnn (10,000 train / 2,000 test) as uint8 images and labels."""
    prefix = _split_prefix(split)
    folder = resources.files("xpcnn") / "datasets" / "mnist_subset"
    out = []
    for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
        with resources.as_file(folder / f"{prefix}-{kind}.gz") as path:
            out.append(read_idx(path, BUNDLED_SHA256[f"{prefix}-{kind}"], max_bytes=IDX_BYTES[f"{prefix}-{kind}"]))
    return tuple(out)
