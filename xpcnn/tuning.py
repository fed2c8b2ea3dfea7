"""Convolution routes and batch-shard counts chosen by measurement on the machine that runs them, kept per machine
(cuDNN's benchmark mode, FFTW's wisdom).

Every convolution route and every shard count gives the same numbers up to summation order (tested), and which is
fastest depends on the CPU, its BLAS and the shape. :func:`xpcnn.functional.conv.choose_route`'s size rules and
:data:`xpcnn.thresholds.MIN_SHARD_ELEMENTS` were measured on one machine; where a measurement for this machine, BLAS
and shape exists, it decides instead:

- ``XPCNN_TUNE`` unset: use what was measured before (``xpcnn tune``, or a run with ``XPCNN_TUNE=1``), and the
  size rules for shapes never measured;
- ``XPCNN_TUNE=1``: also measure each new model and input shape on its first training call, once
  (:func:`tune_model`, called by :class:`xpcnn.parallel.BatchShards`): whole forward-and-backward steps of the
  call's batch that change nothing, first one piece against the rule's shard count and every core, then for that
  count each convolution shape met, its routes tried in turn with the others held. The rule's choice stays unless
  another beats it by more than ``1 - MARGIN``; what is chosen is kept and used from then on, so the run stays
  deterministic;
- ``XPCNN_TUNE=0``: the size rules alone, nothing read or written (the test suite runs so).

Only NumPy arrays are measured (a GPU library's calls return before their kernels finish, so host timers would
mislead); other backends keep the size rules. The measurements live in ``~/.cache/xpcnn/tuning.json``, keyed by
the CPU (its model name, family, model and stepping), the core count, the NumPy and BLAS versions and BLAS's
kernels, and whether BLAS runs on one thread (inside batch shards) or on all; each entry keeps the time of every
candidate, so ``xpcnn tune`` and ``xpcnn info`` can show why. Delete the file to measure again.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import pathlib
import platform
import statistics
import threading
import time
from typing import Any, Callable, Sequence

from array_api_compat import is_numpy_namespace

from . import settings as _settings

__all__ = ["AVX512_KERNELS", "BUDGET_S", "MARGIN", "BLOCK_S", "ROUNDS", "WARM_S", "blas_kernels", "cache_path",
           "cpu", "entries", "forget", "machine", "measuring", "mode", "route", "tune_model"]

ROUNDS = 3           # timed rounds (each candidate's median is kept)
BLOCK_S = 0.05       # a candidate's timed block in a round: runs in a row for at least this long (one at least)
WARM_S = 0.15        # shard counts run untimed this long before their block: BLAS's spinning threads stop meanwhile
BUDGET_S = 1.0       # no round starts after a candidate has spent this many seconds of timed runs
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


def _first_processor(cpuinfo: str) -> dict:
    """The first processor's fields in ``cpuinfo`` (Linux's /proc/cpuinfo); empty where there is none."""
    fields = {}
    try:
        with open(cpuinfo) as handle:
            for line in handle:
                field, _, value = line.partition(":")
                if not field.strip() and fields:
                    break
                fields.setdefault(field.strip(), value.strip())
    except OSError:
        pass
    return fields


def cpu(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The CPU as /proc/cpuinfo names it, with its family, model and stepping where it gives them: a VM's "AMD EPYC"
    names Zen 4 (family 25) and Zen 5 (family 26) alike, and both have run this project, at different speeds."""
    fields = _first_processor(cpuinfo)
    name = fields.get("model name") or platform.processor() or platform.machine()
    ids = [f"{field.replace('cpu ', '').lower()} {fields[field]}"
           for field in ("cpu family", "model", "stepping", "CPU implementer", "CPU part") if field in fields]
    return f"{name} ({', '.join(ids)})" if ids else name


AVX512_KERNELS = ("SkylakeX", "Cooperlake", "SapphireRapids")   # OpenBLAS's core types that use AVX-512


def _blas_libraries() -> list[dict] | None:
    """threadpoolctl's description of each BLAS NumPy loaded; None without threadpoolctl."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    return [info for info in threadpool_info() if info.get("user_api") == "blas"]


def blas_kernels(cpuinfo: str = "/proc/cpuinfo") -> str:
    """Which kernels NumPy's BLAS runs, and whether the CPU has AVX-512 that OpenBLAS's detection left unused (it
    runs its Haswell kernels on Zen 5, family 26, as on this project's machines)."""
    found = _blas_libraries()
    if found is None:
        return "unknown (threadpoolctl is not installed)"
    if not found:
        return "none found"
    avx512 = {"avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512cd"} <= set(
        _first_processor(cpuinfo).get("flags", "").split())
    described = []
    for info in found:
        text = f"{info.get('internal_api')} {info.get('version')}"
        kernels = info.get("architecture")
        if kernels:
            text += f", {kernels} kernels"
            if info.get("internal_api") == "openblas" and kernels not in AVX512_KERNELS and avx512:
                text += (" on a CPU with AVX-512 (OPENBLAS_CORETYPE=SkylakeX, set before NumPy is imported, selects "
                         "OpenBLAS's AVX-512 kernels; see the README's performance section)")
        described.append(text)
    return "; ".join(described)


def machine() -> dict:
    """What a measurement holds for: the CPU (:func:`cpu`), the cores this process may use, NumPy's and its BLAS's
    versions and the kernels the BLAS chose for this CPU."""
    import numpy as np

    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    found = [f"{i.get('internal_api')} {i.get('version')} {i.get('architecture') or ''}".strip()
             for i in _blas_libraries() or []]
    return {"cpu": cpu(), "cores": cores, "numpy": np.__version__, "blas": ", ".join(found) or "unknown"}


def _machine_key() -> str:
    return hashlib.sha256(json.dumps(machine(), sort_keys=True).encode()).hexdigest()[:16]


def _load() -> dict:
    """This machine's table (``{"machine": ..., "choices": {key: entry}}``), read from the cache file once."""
    global _table
    if _table is None:
        table = {"machine": machine(), "choices": {}}
        try:
            saved = json.loads(cache_path().read_text())
            mine = saved.get("machines", {}).get(_machine_key()) if saved.get("version") == VERSION else None
            if isinstance(mine, dict) and isinstance(mine.get("choices"), dict):
                table["choices"] = mine["choices"]
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
    """This machine's measured choices: ``{key: {"route": [...], "rule": [...], "ms": {choice: ms}, "measured": date}}``
    (keys begin with "conv" for a convolution's route, "shards" for a model call's shard count)."""
    with _lock:
        return dict(_load()["choices"])


MARGIN = 0.85        # another choice replaces the size rules' only when it took at most this fraction of its time

_tuning = threading.Lock()           # one model's measurement at a time
_overrides: dict[str, tuple] = {}    # while measuring: the convolution routes being tried, by key
_seen: dict[str, tuple] | None = None   # while measuring: each convolution key met -> (candidates, rule's choice)


def _full_key(key: str) -> str:
    return f"{key} blas={'1' if one_blas_thread else 'all'}"


def route(key: Callable[[], str], candidates: Sequence[tuple], default: tuple, xp: Any) -> tuple | None:
    """A convolution's route for the shape ``key()``: the one being tried while a model is measured, else the one
    measured for this machine, else None (the size rules' ``default`` then). Nothing is timed here: routes are
    measured in context, inside a model's training step (:func:`tune_model`), where they compete for the caches as
    they will in training; a layer timed alone was measured to mislead (see benchmarks/RESULTS.md, issue 22)."""
    if len(candidates) < 2 or not is_numpy_namespace(xp):
        return None
    if _seen is None and not _overrides:              # the usual path: not measuring
        if mode() == "off":
            return None
        table = _load()["choices"]
        if not table:
            return None
        entry = table.get(_full_key(key()))
        return None if entry is None else tuple(entry["route"])
    full = _full_key(key())
    if _seen is not None:
        with _lock:
            _seen.setdefault(full, (tuple(candidates), tuple(default)))
    if full in _overrides:
        return _overrides[full]
    entry = _load()["choices"].get(full)
    return None if entry is None else tuple(entry["route"])


def tune_model(key: Callable[[], str], shard_counts: Sequence[int], rule: int, trial: Callable[[int], None],
               xp: Any) -> int | None:
    """The shard count for a wrapped model's training call on inputs shaped as in ``key()`` (``trial(n)`` runs one
    forward and backward in ``n`` shards, changing nothing), measured with the routes of its convolutions where
    this machine has no answer yet; None where nothing was measured and nothing may be (the size rule decides).

    Measured as one training step, in context: first each shard count in ``shard_counts`` against the rule's
    ``rule``, then, for that count, each convolution shape met in turn: its routes tried one after another with the
    others held, the rule's kept unless another is faster by more than ``1 - MARGIN``. Everything chosen is kept."""
    if not is_numpy_namespace(xp):
        return None
    current = mode()
    if current == "off":
        return None
    with _lock:
        table = _load()["choices"]
        if not table and current != "measure":
            return None
        full = _full_key(key())
        entry = table.get(full)
    if entry is not None:
        return int(entry["route"][0])
    if current != "measure" or not _tuning.acquire(blocking=False):     # another thread measures: the rule now
        return None
    global _seen
    try:
        counts = [(str(n),) for n in shard_counts]
        times = _time(lambda c: trial(int(c[0])), counts, warm=WARM_S) if len(counts) > 1 else {}
        best = _best(times, (str(rule),)) if times else (str(rule),)
        chosen = int(best[0])
        _seen = {}
        trial(chosen)                                            # which convolutions this step runs, and how
        seen, _seen = _seen, None
        routes = {}
        for conv, (candidates, default) in seen.items():
            stored = table.get(conv)
            held = tuple(stored["route"]) if stored else default
            _overrides[conv] = held
            spent = _time(lambda c: (_overrides.__setitem__(conv, c), trial(chosen)), candidates)
            _overrides[conv] = _best(spent, held)
            routes[conv] = (default, spent)
        with _lock:
            table = _load()
            today = datetime.date.today().isoformat()
            for conv, (default, spent) in routes.items():
                table["choices"][conv] = {"route": list(_overrides[conv]), "rule": list(default),
                                          "ms": _ms(spent), "measured": today, "in": full}
            table["choices"][full] = {"route": [str(chosen)], "rule": [str(rule)], "ms": _ms(times), "measured": today}
            _save(table)
        return chosen
    finally:
        _seen = None
        _overrides.clear()
        _tuning.release()


def _best(times: dict, held: tuple) -> tuple:
    """The fastest candidate, unless ``held`` is within the noise (``MARGIN``) of it."""
    best = min(times, key=times.get)
    return held if held in times and times[best] > MARGIN * times[held] else best


def _ms(times: dict) -> dict:
    return {"/".join(c): round(t * 1e3, 4) for c, t in times.items()}


def _time(run: Callable[[tuple], Any], candidates: Sequence[tuple], warm: float = 0.0) -> dict:
    """Each candidate's time per run: the median over ``ROUNDS`` rounds (fewer once a candidate has spent
    ``BUDGET_S``), the order reversed every other round so a drifting machine favours none. In a round a candidate
    first runs untimed, once and for at least ``warm`` seconds, then is timed over a block of runs of at least
    ``BLOCK_S`` seconds: in training the same choice runs step after step, and what ran just before matters.

    ``warm`` is for candidates that differ in BLAS's thread count (shard counts): OpenBLAS's threads keep spinning
    for about 0.1 s after their last product (2**28 cycles), and after one-piece steps they took the second core
    from the batch shards for the next five steps (18-23 ms a step instead of 12-14, LeNet-5 at batch 256 on
    Zen 5). One untimed step before one timed step, two rounds and the fastest kept chose, in three measurements of
    that shape, two shards, two, then one piece (13.9 vs 20.0 ms) where blocks of steps found them equal."""
    samples = {candidate: [] for candidate in candidates}
    spent = dict.fromkeys(candidates, 0.0)
    for round_ in range(ROUNDS):
        for candidate in (candidates if round_ % 2 == 0 else list(reversed(candidates))):
            start = time.perf_counter()
            run(candidate)
            while time.perf_counter() - start < warm:
                run(candidate)
            runs, start = 0, time.perf_counter()
            while runs == 0 or time.perf_counter() - start < BLOCK_S:
                run(candidate)
                runs += 1
            elapsed = time.perf_counter() - start
            samples[candidate].append(elapsed / runs)
            spent[candidate] += elapsed
        if max(spent.values()) > BUDGET_S:
            break
    return {candidate: statistics.median(times) for candidate, times in samples.items()}


def forget() -> None:
    """Drop what this process loaded (the file is left as it is): the next choice reads it again."""
    global _table
    with _lock:
        _table = None
