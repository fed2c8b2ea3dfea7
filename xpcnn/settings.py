"""xpcnn's settings from the environment: read in this one place, checked by one rule, reported in one format.

| variable | meaning | default |
| --- | --- | --- |
| ``XPCNN_BACKEND`` | the array library new arrays are made with (:mod:`xpcnn.backend`) | numpy |
| ``XPCNN_DEVICE`` | its device, where it has several | the library's default |
| ``XPCNN_THREADS`` | batch shards per call at most (:mod:`xpcnn.parallel`); 1 turns them off | the usable cores |
| ``XPCNN_TUNE_MALLOC`` | 0 leaves glibc's malloc alone when training (:func:`xpcnn.parallel.tune_allocator`) | 1 |
| ``XPCNN_DATA_DIR`` | where datasets are looked for first (:mod:`xpcnn.data`) | unset |

Also read here, as facts about the process rather than choices: whether an MPI launcher started it and how many
threads BLAS was told to use. :func:`get` returns the settings for the environment as it is now; it reads and
checks again only when one of these variables changed.

And the environment handed to a child process: :func:`for_child` (the OpenBLAS kernels timed in child processes,
the ``xpcnn`` command started again with others, :mod:`xpcnn.cli.blas`), and :func:`take_restart`, the choice
that command hands the process it starts in ``XPCNN_BLAS_CHOSEN`` (never a user's setting).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping

__all__ = ["ENV", "RESTART", "Settings", "SettingsError", "for_child", "get", "read", "take_restart"]

ENV = {"backend": "XPCNN_BACKEND", "device": "XPCNN_DEVICE", "threads": "XPCNN_THREADS",
       "tune_malloc": "XPCNN_TUNE_MALLOC", "data_dir": "XPCNN_DATA_DIR"}
_MPI_SIZES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MPI_LOCALNRANKS")
_BLAS_THREADS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
_WATCHED = (*ENV.values(), *_MPI_SIZES, *_BLAS_THREADS)
RESTART = "XPCNN_BLAS_CHOSEN"


class SettingsError(ValueError):
    """An environment variable holds a value xpcnn cannot use."""


@dataclass(frozen=True)
class Settings:
    backend: str = "numpy"            # the name as given (lower-cased); backend.py checks it is one it knows
    device: str | None = None
    threads: int | None = None        # None: the usable cores
    tune_malloc: bool = True
    data_dir: str | None = None
    mpi_launched: bool = False        # an MPI launcher started several processes, this one among them
    blas_threads: int | None = None   # what OPENBLAS/OMP/MKL_NUM_THREADS asks for, None when unset


def _whole(text: str) -> bool:
    """ASCII digits only (str.isdigit also takes '²', which int() refuses)."""
    return text.isascii() and text.isdigit()


def _fail(variable: str, expected: str, text: str) -> SettingsError:
    return SettingsError(f"{variable} must be {expected}; got {text!r}")


def read(environ: Mapping[str, str] | None = None) -> Settings:
    """The settings in ``environ`` (default: ``os.environ``); :class:`SettingsError` names a bad value."""
    env = os.environ if environ is None else environ
    text = {key: (env.get(name) or "").strip() for key, name in ENV.items()}
    threads = None
    if text["threads"]:
        if not _whole(text["threads"]) or int(text["threads"]) < 1:
            raise _fail(ENV["threads"], "a whole number >= 1 (1: no batch shards)", text["threads"])
        threads = int(text["threads"])
    if text["tune_malloc"] not in ("", "0", "1"):
        raise _fail(ENV["tune_malloc"], "0 or 1", text["tune_malloc"])
    mpi = False
    for name in _MPI_SIZES:
        value = (env.get(name) or "").strip()
        mpi = mpi or (_whole(value) and int(value) > 1)
    blas = next((int(v) for name in _BLAS_THREADS if _whole(v := (env.get(name) or "").strip())), None)
    return Settings(backend=text["backend"].lower() or "numpy", device=text["device"] or None, threads=threads,
                    tune_malloc=text["tune_malloc"] != "0", data_dir=text["data_dir"] or None, mpi_launched=mpi,
                    blas_threads=blas)


_cached: tuple[tuple, Settings] | None = None


def get() -> Settings:
    """The settings of the environment as it is now, read and checked once per distinct environment."""
    global _cached
    key = tuple(os.environ.get(name) for name in _WATCHED)
    if _cached is None or _cached[0] != key:
        _cached = (key, read())
    return _cached[1]


def for_child(**changes: str) -> dict[str, str]:
    """This process's environment with ``changes``, for a child process (or the process that replaces this one)."""
    return {**os.environ, **changes}


def take_restart() -> str | None:
    """The choice the process before this one handed over in :data:`RESTART`, removed so that no child sees it;
    None when this process was not started that way."""
    return os.environ.pop(RESTART, None)
