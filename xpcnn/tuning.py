"""Convolution routes chosen by measurement on the machine that runs them, kept per machine (cuDNN's benchmark
mode, FFTW's wisdom).

Every convolution route gives the same numbers up to rounding (tested against the textbook one), and which is
fastest depends on the CPU, its BLAS and the shape. :func:`xpcnn.functional.conv.choose_route`'s size rules were
measured on one machine; where a measurement for this machine, BLAS and shape exists, it decides instead:

- ``XPCNN_TUNE`` unset: use what was measured before (``xpcnn tune``, or a run with ``XPCNN_TUNE=1``), and the
  size rules for shapes never measured;
- ``XPCNN_TUNE=1``: also measure each new shape on first use, once: every route the geometry allows runs its
  forward and backward on the call's own inputs (one warm-up, then up to ``REPEATS`` timed runs within
  ``BUDGET_S`` per route), the fastest is kept and used from then on, so the run stays deterministic;
- ``XPCNN_TUNE=0``: the size rules alone, nothing read or written (the test suite runs so).

Only NumPy arrays are measured (a GPU library's calls return before their kernels finish, so host timers would
mislead); other backends keep the size rules. The measurements live in ``~/.cache/xpcnn/tuning.json``, keyed by
the CPU model, the core count, the NumPy and BLAS versions and whether BLAS runs on one thread (inside batch
shards) or on all; each entry keeps the time of every route, so ``xpcnn tune`` and ``xpcnn info`` can show why.
Delete the file to measure again.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import pathlib
import platform
import threading
import time
from typing import Any, Callable, Sequence

from array_api_compat import is_numpy_namespace

from . import settings as _settings

__all__ = ["BUDGET_S", "REPEATS", "cache_path", "choose", "entries", "forget", "machine", "measuring", "mode"]

REPEATS = 3          # timed runs per route at most (the minimum is kept), after one warm-up
BUDGET_S = 0.25      # seconds of timed runs per route at most
VERSION = 1

_lock = threading.RLock()
_table: dict | None = None          # this machine's entries, loaded once
_forced: list[bool] = []            # measuring() blocks: measure new shapes whatever XPCNN_TUNE says
one_blas_thread = False             # set by xpcnn.parallel while batch shards hold BLAS to one thread


def mode() -> str:
    """"off", "cached" or "measure" (see the module's text)."""
    if _forced:
        return "measure"
    return _settings.get().tune


class measuring:
    """``with tuning.measuring():`` new shapes are measured on first use, as with ``XPCNN_TUNE=1`` (``xpcnn tune``)."""

    def __enter__(self):
        _forced.append(True)
        return self

    def __exit__(self, *exc):
        _forced.pop()


def cache_path() -> pathlib.Path:
    return pathlib.Path.home() / ".cache" / "xpcnn" / "tuning.json"


def machine() -> dict:
    """What a measurement holds for: the CPU model, the cores this process may use, NumPy's and its BLAS's
    versions."""
    import numpy as np

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), cpu)
    except OSError:
        pass
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    blas = "unknown"
    try:
        from threadpoolctl import threadpool_info

        found = [f"{i.get('internal_api')} {i.get('version')} {i.get('architecture') or ''}".strip()
                 for i in threadpool_info() if i.get("user_api") == "blas"]
        blas = ", ".join(found) or blas
    except ImportError:
        pass
    return {"cpu": cpu, "cores": cores, "numpy": np.__version__, "blas": blas}


def _machine_key() -> str:
    return hashlib.sha256(json.dumps(machine(), sort_keys=True).encode()).hexdigest()[:16]


def _load() -> dict:
    """This machine's table (``{"machine": ..., "conv": {key: entry}}``), read from the cache file once."""
    global _table
    if _table is None:
        table = {"machine": machine(), "conv": {}}
        try:
            saved = json.loads(cache_path().read_text())
            mine = saved.get("machines", {}).get(_machine_key()) if saved.get("version") == VERSION else None
            if isinstance(mine, dict) and isinstance(mine.get("conv"), dict):
                table["conv"] = mine["conv"]
        except (OSError, ValueError, AttributeError):
            pass                     # no file, or one this version cannot read: measure again
        _table = table
    return _table


def _save(table: dict) -> None:
    """Write this machine's table into the cache file (other machines' entries kept), atomically."""
    from .atomic import write_atomic

    path = cache_path()
    try:
        saved = json.loads(path.read_text())
        if saved.get("version") != VERSION or not isinstance(saved.get("machines"), dict):
            saved = None
    except (OSError, ValueError, AttributeError):
        saved = None
    saved = saved or {"version": VERSION, "machines": {}}
    saved["machines"][_machine_key()] = table
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps(saved, indent=1, sort_keys=True).encode())
    except OSError:
        pass                         # a read-only home: the choice still holds for this process


def entries() -> dict:
    """This machine's measured shapes: ``{key: {"route": [...], "ms": {route: ms}, "measured": date}}``."""
    with _lock:
        return dict(_load()["conv"])


MARGIN = 0.9         # another route replaces the size rules' choice only when it took at most this fraction of its time


def choose(key: Callable[[], str], candidates: Sequence[tuple], run: Callable[[tuple], Any], xp: Any,
           default: tuple) -> tuple | None:
    """The route measured fastest for the shape ``key()`` among ``candidates`` (``run(candidate)`` does the work once),
    or None where nothing was measured and nothing may be (then the caller's size rules decide). The size rules'
    ``default`` is kept unless another route was faster by more than the machine's noise (``MARGIN``). NumPy only."""
    if len(candidates) < 2:
        return None
    current = mode()
    if current == "off" or not is_numpy_namespace(xp):
        return None
    with _lock:
        table = _load()["conv"]
        if not table and current != "measure":
            return None
        key = f"{key()} blas={'1' if one_blas_thread else 'all'}"
        entry = table.get(key)
        if entry is not None:
            return tuple(entry["route"])
        if current != "measure":
            return None
        times = _time(run, candidates)
        best = min(candidates, key=times.get)
        if default in times and times[best] > MARGIN * times[default]:
            best = default
        table = _load()
        table["conv"][key] = {"route": list(best), "rule": list(default),
                              "ms": {"/".join(c): round(t * 1e3, 4) for c, t in times.items()},
                              "measured": datetime.date.today().isoformat()}
        _save(table)
        return best


def _time(run: Callable[[tuple], Any], candidates: Sequence[tuple]) -> dict:
    """Each candidate's fastest run: one warm-up each, then up to ``REPEATS`` rounds taking the candidates in turn
    (so a drifting machine favours none), stopping once a candidate has spent ``BUDGET_S``."""
    for candidate in candidates:
        run(candidate)
    best = {candidate: float("inf") for candidate in candidates}
    spent = dict.fromkeys(candidates, 0.0)
    for _ in range(REPEATS):
        for candidate in candidates:
            start = time.perf_counter()
            run(candidate)
            elapsed = time.perf_counter() - start
            best[candidate], spent[candidate] = min(best[candidate], elapsed), spent[candidate] + elapsed
        if max(spent.values()) > BUDGET_S:
            break
    return best


def forget() -> None:
    """Drop what this process loaded (the file is left as it is): the next choice reads it again."""
    global _table
    with _lock:
        _table = None
