"""Files written whole or not at all: checkpoints, downloads and the benchmarks' RESULTS.md.

A file is written to a hidden temporary beside it, flushed, and renamed over it; a reader sees the old file or
the new one, never a part. The temporary's name is ``.NAME.PID.XXXXXXXX.SUFFIX`` (``XXXXXXXX``: tempfile's eight
random characters), so one left by a writer that died (``kill -9``, power loss) is recognised by that exact form
and a dead PID, and removed; no other file is ever touched.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pathlib
import re
import tempfile
from typing import Iterator

__all__ = ["check_folder", "replacing", "write_atomic"]


def _umask() -> int:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def _remove_stale_temporaries(path: pathlib.Path, suffix: str) -> None:
    """Temporaries of ``path`` of exactly the form :func:`replacing` makes, whose writer is dead."""
    form = re.compile(rf"\.{re.escape(path.name)}\.(\d+)\.[a-z0-9_]{{8}}{re.escape(suffix)}")
    for temp in path.parent.glob(f".{glob.escape(path.name)}.*{glob.escape(suffix)}"):
        match = form.fullmatch(temp.name)
        if match and not _alive(int(match.group(1))):
            with contextlib.suppress(OSError):
                temp.unlink()


def check_folder(path: str | os.PathLike, owner: str = "") -> pathlib.Path:
    """``path`` if its folder exists; FileNotFoundError naming the folder otherwise (NotADirectoryError when it is
    a file). The folder is never made: a typo in it must not write somewhere unexpected, as ``open`` refuses too."""
    path = pathlib.Path(path)
    folder = path.parent
    where = f"{owner}: " if owner else ""
    if not folder.exists():
        raise FileNotFoundError(f"{where}cannot write {path}: the folder {folder} does not exist; create it first (it "
                                f"is never made for you, so a typo cannot write somewhere unexpected)")
    if not folder.is_dir():
        raise NotADirectoryError(f"{where}cannot write {path}: {folder} is not a folder")
    return path


@contextlib.contextmanager
def replacing(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[pathlib.Path]:
    """``with replacing(path) as temp:`` write (and check) ``temp``; when the block ends normally, ``temp``
    replaces ``path`` durably; when it raises (KeyboardInterrupt included), ``temp`` is removed and ``path`` is
    as it was. The folder must exist (see :func:`check_folder`)."""
    path = check_folder(path)
    _remove_stale_temporaries(path, suffix)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=suffix)
    os.close(handle)
    try:
        yield pathlib.Path(temp)
        with open(temp, "rb+") as written:
            os.fsync(written.fileno())
        os.chmod(temp, 0o666 & ~_umask())          # mkstemp makes 0600; these are ordinary files
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(temp)
        raise
    try:                           # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` whole or not at all (see :func:`replacing`)."""
    with replacing(path) as temp:
        temp.write_bytes(data)
