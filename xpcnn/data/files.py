"""Data files: where they are looked for, how they are downloaded, how they are checked.

One search order for every dataset: ``data_dir`` (``--data-dir``), ``XPCNN_DATA_DIR``, the cache
``~/.cache/xpcnn/<dataset>``, then a download from the dataset's mirrors into the cache (with a progress
bar; each file written under a hidden name and renamed only once its SHA-256 matches). A failure lists
every place that was looked at. (pooch does the same for SciPy; these ~100 lines keep the failure message
and the search order the same for every dataset, without one more dependency.)
"""

from __future__ import annotations

import hashlib
import http.client
import math
import os
import pathlib
import time
import urllib.request
import zipfile
from dataclasses import dataclass
from typing import IO, Callable

import numpy as np

from .. import settings as _settings
from ..atomic import replacing

__all__ = ["DataError", "DataNotFoundError", "Source", "cache_dir", "download", "find", "read_npy", "read_npz",
           "sha256_file"]


class DataError(ValueError):
    """A data file exists but is not what it should be (bad magic, wrong size, checksum mismatch)."""


class DataNotFoundError(FileNotFoundError):
    """The data files are in none of the places searched."""


@dataclass(frozen=True)
class Source:
    """A dataset's files: ``files`` maps each name to its published SHA-256; ``check(path, name)`` verifies the
    file ``name`` held at ``path`` (raising DataError); ``raw_ok``: the file may also be found decompressed
    (without .gz), when ``check`` hashes decompressed content."""

    name: str                       # the --dataset name, also the cache folder
    title: str
    files: dict[str, str]
    mirrors: tuple[str, ...]
    check: Callable[[pathlib.Path, str], None]
    raw_ok: bool = False
    limits: dict[str, int] | None = None    # the most bytes each file may have: a download stops beyond it

    def file_in(self, directory: pathlib.Path, name: str) -> pathlib.Path | None:
        names = (name, name.removesuffix(".gz")) if self.raw_ok else (name,)
        for candidate in (directory / n for n in names):
            if candidate.is_file():
                return candidate
        return None


def sha256_file(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def check_file_sha256(path: pathlib.Path, expected: str) -> None:
    """The SHA-256 of the file as published (for archives checked before they are opened)."""
    digest = sha256_file(path)
    if digest != expected:
        raise DataError(f"{path}: SHA-256 is {digest}, expected {expected}; the file is altered, truncated or "
                        "not the official one: delete it and supply it again")


def cache_dir(name: str = "mnist") -> pathlib.Path:
    return pathlib.Path.home() / ".cache" / "xpcnn" / name


DOWNLOAD_GRACE_S = 60.0        # a download may always take this long ...
DOWNLOAD_MIN_RATE = 20_000     # ... plus one second per this many bytes of the file's limit; then it is abandoned
DOWNLOAD_WINDOW_S = 30.0       # and a mirror sending less than LOW_SPEED bytes/s over this long (or nothing:
DOWNLOAD_LOW_SPEED = 1_000     # the socket's timeout) is abandoned at once, as curl's --speed-limit/--speed-time


def download(source: Source, destination: str | os.PathLike, mirrors: tuple[str, ...] | None = None,
             progress: bool = True) -> None:
    """Fetch the source's missing files into ``destination`` (verified, each written atomically); raises OSError
    listing every mirror's failure if a file cannot be had. A response is read no further than the file's size
    limit (``source.limits``); a mirror that stalls, or trickles under ``DOWNLOAD_LOW_SPEED`` bytes per second over
    ``DOWNLOAD_WINDOW_S``, is abandoned for the next one, and so is one past ``DOWNLOAD_GRACE_S`` plus the limit
    at ``DOWNLOAD_MIN_RATE`` bytes per second."""
    destination = pathlib.Path(destination)
    destination.mkdir(parents=True, exist_ok=True)
    for name in source.files:
        if source.file_in(destination, name):
            continue
        limit = (source.limits or {}).get(name)
        errors = []
        for mirror in mirrors or source.mirrors:
            url = f"{mirror}{name}"
            try:
                # a hidden partial file: never mistaken for the real one, renamed only once verified
                with replacing(destination / name, suffix=".part" + pathlib.Path(name).suffix) as temp:
                    _fetch(url, temp, name, limit, progress)
                    source.check(temp, name)
                break
            except (OSError, DataError, http.client.HTTPException) as exc:
                kind = f"{type(exc).__name__}: " if isinstance(exc, http.client.HTTPException) else ""
                errors.append(f"{url}: {kind}{exc}")
        else:
            raise OSError(f"could not download {name}:\n  " + "\n  ".join(errors))


class _Pace:
    """A download's clock: past the deadline, or under the minimum rate over a window, it raises OSError."""

    def __init__(self, limit: int | None):
        self.start = self.window_start = time.monotonic()
        self.deadline = self.start + DOWNLOAD_GRACE_S + (limit or 0) / DOWNLOAD_MIN_RATE
        self.limit, self.window_bytes = limit, 0

    def check(self, written: int) -> None:
        now = time.monotonic()
        if now > self.deadline:
            raise OSError(f"too slow: {written:,} bytes in {now - self.start:.0f} s, past the deadline for "
                          f"{self.limit or 0:,} bytes at {DOWNLOAD_MIN_RATE:,} bytes/s; abandoned")
        if now - self.window_start >= DOWNLOAD_WINDOW_S:
            rate = (written - self.window_bytes) / (now - self.window_start)
            if rate < DOWNLOAD_LOW_SPEED:
                raise OSError(f"too slow: {rate:,.0f} bytes/s over the last {now - self.window_start:.0f} s, under "
                              f"the {DOWNLOAD_LOW_SPEED:,} bytes/s a mirror must keep up; abandoned")
            self.window_start, self.window_bytes = now, written


def _fetch(url: str, temp: pathlib.Path, name: str, limit: int | None, progress: bool) -> None:
    """``url`` into ``temp``, within ``limit`` bytes and the pace :class:`_Pace` keeps (OSError otherwise)."""
    from tqdm.auto import tqdm

    pace = _Pace(limit)
    with open(temp, "wb") as out, urllib.request.urlopen(url, timeout=DOWNLOAD_WINDOW_S) as response:
        total = int(response.headers.get("Content-Length") or 0) or None
        if limit is not None and total is not None and total > limit:
            raise OSError(f"the server announces {total:,} bytes; {name} is at most {limit:,}")
        written = 0
        with tqdm(total=total, unit="B", unit_scale=True, desc=name, leave=False,
                  disable=None if progress else True) as bar:     # None: off when not a terminal
            while chunk := _read(response):         # what has arrived: a trickle cannot stall it
                written += len(chunk)
                if limit is not None and written > limit:
                    raise OSError(f"sent more than {limit:,} bytes; {name} is at most that: not the expected file")
                pace.check(written)
                out.write(chunk)
                bar.update(len(chunk))
        out.flush()


def _read(response) -> bytes:
    """What has arrived of ``response`` (at most 64 KiB); a socket silent for the whole timeout is an OSError."""
    try:
        return response.read1(1 << 16)
    except TimeoutError:
        raise OSError(f"stalled: nothing arrived for {DOWNLOAD_WINDOW_S:g} s; abandoned") from None


def find(source: Source, data_dir: str | os.PathLike | None = None, download_missing: bool = True,
         mirrors: tuple[str, ...] | None = None, cache: str | os.PathLike | None = None) -> pathlib.Path:
    """The folder holding all of the source's files, searched in the documented order."""
    cache = pathlib.Path(cache) if cache is not None else cache_dir(source.name)
    looked = []
    for label, folder in (("--data-dir", data_dir), ("XPCNN_DATA_DIR", _settings.get().data_dir), ("cache", cache)):
        if folder is None:
            looked.append(f"{label}: not set")
            continue
        folder = pathlib.Path(folder).expanduser()
        missing = [name for name in source.files if source.file_in(folder, name) is None]
        if not missing:
            return folder
        looked.append(f"{label} {folder}: " + ("no such folder" if not folder.is_dir()
                                               else "missing " + ", ".join(missing)))
    if download_missing:
        try:
            download(source, cache, mirrors)
            return cache
        except OSError as exc:
            looked.append(f"download into {cache}: {exc}")
    else:
        looked.append("download: not attempted (download=False)")
    raise DataNotFoundError(
        f"{source.title} files not found. Looked in:\n  - " + "\n  - ".join(looked) + "\n"
        "Supply the file(s) (" + ", ".join(source.files) + ") in a folder and pass it with "
        "--data-dir DIR (Python: data_dir=DIR) or XPCNN_DATA_DIR=DIR, or copy them to " + str(cache) + ". "
        "Without them, --dataset bundled trains on the MNIST subset that ships with xpcnn."
    )


# --------------------------------------------------------------------------- arrays of your own
def _memory() -> int | None:
    """The bytes this process could still allocate: the least of the machine's memory, what the kernel counts
    as available and what a container's cgroup leaves; None when none of them can be read."""
    known = []
    try:
        known.append(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        pass
    try:
        with open("/proc/meminfo") as meminfo:
            known += [int(line.split()[1]) * 1024 for line in meminfo if line.startswith("MemAvailable:")]
    except (OSError, ValueError, IndexError):
        pass
    try:
        cgroup = pathlib.Path("/sys/fs/cgroup")
        limit = (cgroup / "memory.max").read_text().strip()
        if limit != "max":
            known.append(int(limit) - int((cgroup / "memory.current").read_text()))
    except (OSError, ValueError):
        pass
    return min(known) if known else None


def _npy(handle: IO[bytes], available: int, where: str) -> np.ndarray:
    """The .npy array in ``handle`` (at its start), whose content is ``available`` bytes long. Its header must
    declare exactly the bytes that follow it, no Python objects, and no more than this machine's memory: a small
    file claiming gigabytes is refused before anything is allocated."""
    try:
        version = np.lib.format.read_magic(handle)
        read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                       (2, 0): np.lib.format.read_array_header_2_0}.get(version)
        if read_header is None:
            raise ValueError(f".npy format version {version[0]}.{version[1]} (1.0 and 2.0 are read)")
        shape, _, dtype = read_header(handle)
    except ValueError as exc:
        raise DataError(f"{where}: not a readable .npy array ({exc})") from None
    if dtype.hasobject:
        raise DataError(f"{where}: holds Python objects, which xpcnn never loads (save plain numbers)")
    declared, held = math.prod(shape) * dtype.itemsize, available - handle.tell()
    if declared != held:
        raise DataError(f"{where}: its header declares shape {tuple(shape)} of {dtype} ({declared:,} bytes) but "
                        f"{held:,} bytes follow it; the file is truncated or not what it claims")
    memory = _memory()
    too_big = (f"{where}: holds {declared / 2**30:,.1f} GiB of {dtype}, more than the memory this machine has "
               "available")
    if memory is not None and declared > memory:
        raise DataError(f"{too_big} ({memory / 2**30:,.1f} GiB)")
    handle.seek(0)
    try:
        return np.lib.format.read_array(handle, allow_pickle=False)
    except MemoryError:
        raise DataError(too_big) from None


def read_npy(path: str | os.PathLike) -> np.ndarray:
    """A .npy file's array, its header checked against the file's size first (see ``_npy``)."""
    path = pathlib.Path(path)
    with open(path, "rb") as handle:
        return _npy(handle, os.fstat(handle.fileno()).st_size, str(path))


def read_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """An .npz archive's arrays by name, each member's header checked against its size first; DataError for
    anything that is not a plain array archive."""
    path = pathlib.Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            arrays = {}
            for info in archive.infolist():
                with archive.open(info) as member:
                    arrays[info.filename.removesuffix(".npy")] = _npy(member, info.file_size,
                                                                      f"{path}: {info.filename}")
            return arrays
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError) as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(f"{path}: not a readable .npz archive ({type(exc).__name__}: {exc})") from None
