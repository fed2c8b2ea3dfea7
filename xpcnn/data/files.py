"""Data files: where they are looked for, how they are downloaded, how they are checked.

One search order for every dataset: ``data_dir`` (``--data-dir``), ``XPCNN_DATA_DIR``, the cache
``~/.cache/xpcnn/<dataset>``, then a download from the dataset's mirrors into the cache (with a progress
bar; each file written under a hidden name and renamed only once its SHA-256 matches). A failure lists
every place that was looked at. (pooch does the same for SciPy; these ~100 lines keep the failure message
and the search order the same for every dataset, without one more dependency.)
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import urllib.request
from dataclasses import dataclass
from typing import Callable

from .. import settings as _settings
from ..atomic import replacing

__all__ = ["DataError", "DataNotFoundError", "Source", "cache_dir", "download", "find", "sha256_file"]


class DataError(ValueError):
    """A data file exists but is not what it should be (bad magic, wrong size, checksum mismatch)."""


class DataNotFoundError(FileNotFoundError):
    """The data files are in none of the places searched."""


@dataclass(frozen=True)
class Source:
    """A dataset's files: ``files`` maps each name to its published SHA-256; ``check(path, sha256)``
    verifies one file (raising DataError); ``raw_ok``: the file may also be found decompressed (without
    .gz), when ``check`` hashes decompressed content."""

    name: str                       # the --dataset name, also the cache folder
    title: str
    files: dict[str, str]
    mirrors: tuple[str, ...]
    check: Callable[[pathlib.Path, str], None]
    raw_ok: bool = False

    def file_in(self, directory: pathlib.Path, name: str) -> pathlib.Path | None:
        for candidate in (directory / name, directory / name.removesuffix(".gz")) if self.raw_ok else (directory / name,):
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


def download(source: Source, destination: str | os.PathLike, mirrors: tuple[str, ...] | None = None,
             progress: bool = True) -> None:
    """Fetch the source's missing files into ``destination`` (verified, each written atomically);
    raises OSError listing every mirror's failure if a file cannot be had."""
    from tqdm.auto import tqdm

    destination = pathlib.Path(destination)
    destination.mkdir(parents=True, exist_ok=True)
    for name, expected in source.files.items():
        if source.file_in(destination, name):
            continue
        errors = []
        for mirror in mirrors or source.mirrors:
            url = f"{mirror}{name}"
            try:
                # a hidden partial file: never mistaken for the real one, renamed only once verified
                with replacing(destination / name, suffix=".part" + pathlib.Path(name).suffix) as temp, \
                        open(temp, "wb") as out, urllib.request.urlopen(url, timeout=30) as response:
                    total = int(response.headers.get("Content-Length") or 0) or None
                    with tqdm(total=total, unit="B", unit_scale=True, desc=name, leave=False,
                              disable=None if progress else True) as bar:     # None: off when not a terminal
                        while chunk := response.read(1 << 16):
                            out.write(chunk)
                            bar.update(len(chunk))
                    out.flush()
                    source.check(temp, expected)
                break
            except (OSError, DataError) as exc:
                errors.append(f"{url}: {exc}")
        else:
            raise OSError(f"could not download {name}:\n  " + "\n  ".join(errors))


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
        looked.append(f"{label} {folder}: " + ("no such folder" if not folder.is_dir() else "missing " + ", ".join(missing)))
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
