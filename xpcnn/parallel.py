"""The one owner of the threads xpcnn runs: batch shards over the cores, BLAS's thread count, and malloc.

NumPy runs each array operation on one core (only matrix products use several), so the executor here splits a
big enough NumPy batch into one contiguous shard per core and runs the model's own ``_forward``/``_backward`` on
each shard in its own thread, BLAS held to one thread meanwhile. Models are not wrapped: a model's public call
(``model(x)``, ``model.backward(dy)``) asks the executor installed in :mod:`xpcnn.nn.module`, which is this
one once xpcnn is imported. Each shard gets a :class:`~xpcnn.nn.Run` of its own:

- ``reduce`` sums a per-channel statistic over the shards (a barrier), so BatchNorm normalizes with the whole
  batch's mean and variance, as PyTorch's ``SyncBatchNorm`` does;
- ``accumulate`` keeps the shard's parameter gradients, summed over the shards in shard order afterwards;
- ``update`` lets the first shard alone store the new running statistics (every shard computed the same).

The result is deterministic and differs from one piece only in summation order (~1e-7 relative in float32).

A batch is sharded when all of these hold: NumPy arrays; more than one thread allowed (:func:`use_threads` for a
block, else ``XPCNN_THREADS``, else the usable cores, shared among the MPI ranks of a node); every module of the
model is ``shardable`` (a module you write promises it by setting ``shardable = True``: it keeps nothing on the
object during a call and goes through ``run`` for gradients and state); shards of at least
:data:`MIN_SHARD_ELEMENTS`; and no other sharded call running in the process (an overlapping call runs in one
piece instead of waiting, so threads never deadlock and BLAS's thread count has one owner).

On a busy machine a call in one piece holds BLAS to the cores other processes leave free (:func:`busy_elsewhere`),
as spinning BLAS threads fight them for the cores otherwise, where BLAS's products give the same bits on any
thread count (:func:`blas_keeps_bits`). The shard count never follows the load: it decides the summation order,
and results must not depend on what else runs.

:func:`tune_allocator` is an explicit call (``fit`` and the command line make it), never a side effect of a
forward.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import math
import os
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterator, NamedTuple

from array_api_compat import array_namespace, is_numpy_array

from . import settings as _settings
from .functional import layout as _layout
from .nn import module as _module
from .nn.module import Module, Pending, Run, add_gradient, check_gradient, set_buffer

__all__ = ["BARRIER_TIMEOUT_S", "LOAD_INTERVAL_S", "MIN_SHARD_ELEMENTS", "ShardTimeoutError", "Shards",
           "blas_keeps_bits", "busy_elsewhere", "limit_threads", "plan", "shard_sizes", "threads", "tune_allocator",
           "usable_cores", "use_threads"]

BARRIER_TIMEOUT_S = 600.0      # how long a shard waits for the others at a BatchNorm sum before giving up
# A shard must hold at least this many elements, counted as its batch times the elements an average module of the
# model outputs per sample (measured in whole training steps: benchmarks/RESULTS.md, "Thresholds"). Speed only:
# every shard count gives the same numbers up to summation order.
MIN_SHARD_ELEMENTS = 1 << 17

_core_share: int | None = None            # set by xpcnn.distributed.init: the cores of a node per rank
_override: contextvars.ContextVar[int | None] = contextvars.ContextVar("xpcnn_threads", default=None)
_busy = threading.Lock()                  # held by the one sharded call running in this process
_pool: ThreadPoolExecutor | None = None
_pool_pid: int | None = None
_blas = None
_elements: "weakref.WeakKeyDictionary[Module, dict]" = weakref.WeakKeyDictionary()


def usable_cores() -> int:
    """The CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:          # not on Linux
        return os.cpu_count() or 1


def threads(settings: _settings.Settings | None = None) -> int:
    """How many shards a batch may be split into: :func:`use_threads`'s value inside its block, else
    ``XPCNN_THREADS``, else the cores this process may run on (divided among the MPI ranks on this node under
    :func:`xpcnn.distributed.init`). Never the machine's load: the shard count decides the summation order, and
    results must not depend on what else runs (a resumed run repeats the straight one bit for bit)."""
    explicit = _explicit(settings)
    return explicit if explicit is not None else _default_cores()


def _explicit(settings: _settings.Settings | None = None) -> int | None:
    override = _override.get()
    return override if override is not None else (settings or _settings.get()).threads


def _default_cores() -> int:
    cores = usable_cores()
    return cores if _core_share is None else max(1, min(cores, _core_share))


LOAD_INTERVAL_S = 0.2          # how often the load of the other processes is read (a read costs ~0.1 ms)
_load_lock = threading.Lock()
_load_readings: list = [float("-inf"), 0, 0]     # when last read, the last two counts of others' running tasks


def busy_elsewhere() -> int:
    """How many tasks of other processes are running now (Linux's /proc/loadavg, less this process's own running
    threads), the smaller of the last two readings (one reading at most every ``LOAD_INTERVAL_S``), so that a
    passing process does not halve a step; 0 where /proc is not there."""
    now = time.monotonic()
    with _load_lock:
        checked, _, last = _load_readings
        if now - checked >= LOAD_INTERVAL_S:
            _load_readings[:] = [now, last, _others_running()]
        return min(_load_readings[1:])


def _others_running() -> int:
    try:
        with open("/proc/loadavg") as handle:
            running = int(handle.read().split()[3].partition("/")[0])
        tasks = list(os.scandir("/proc/self/task"))
    except (OSError, ValueError, IndexError):
        return 0
    own = 0
    for task in tasks:
        try:
            with open(os.path.join(task.path, "stat")) as handle:
                text = handle.read()
        except OSError:                # a thread that ended meanwhile runs nothing
            continue
        own += text[text.rindex(")") + 2] == "R"
    return max(0, running - own)


@contextlib.contextmanager
def use_threads(n: int) -> Iterator[None]:
    """Run the model calls of this block (this thread or task) in at most ``n`` shards; 1: in one piece."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"use_threads: n must be a whole number >= 1; got {n!r}")
    token = _override.set(n)
    try:
        yield
    finally:
        _override.reset(token)


def limit_threads(n: int | None) -> None:
    """Cap the default of :func:`threads` (``XPCNN_THREADS`` still wins); None removes the cap."""
    global _core_share
    _core_share = n


def shard_sizes(batch: int, n: int) -> tuple[int, ...]:
    """``n`` contiguous shard sizes for ``batch`` samples, the first ones larger by one where it does not divide."""
    return tuple(batch // n + (i < batch % n) for i in range(n))


class ShardTimeoutError(RuntimeError):
    """A shard waited longer than ``BARRIER_TIMEOUT_S`` for the others at a statistic's sum."""


class _Group:
    """The threads running one batch's shards; :meth:`sum` adds a value over all of them."""

    def __init__(self, size: int, timeout: float):
        self.size, self.timeout = size, timeout
        self.barrier = threading.Barrier(size, timeout=timeout)
        self.failed = False
        self._slots = ([None] * size, [None] * size)
        self._calls = [0] * size

    def sum(self, index: int, value: Any) -> Any:
        """Every shard calls this with its part, in the same order; each gets the total (shard order, so every
        shard computes the same bits). Two alternating slot lists make one barrier enough: a shard can write a
        list again only after all have passed the next barrier, that is, after all have read this one."""
        call = self._calls[index]
        self._calls[index] += 1
        slots = self._slots[call % 2]
        slots[index] = value
        try:
            self.barrier.wait()
        except threading.BrokenBarrierError:
            if self.failed:              # another shard raised: its error is the one to report
                raise
            raise ShardTimeoutError(
                f"batch shard {index} of {self.size} waited {self.timeout:g} s for the other shards at a "
                f"per-channel sum (BatchNorm) and gave up: a module of the model runs a different number of sums "
                f"on different shards, or one shard is stuck; XPCNN_THREADS=1 runs without shards") from None
        total = slots[0]
        for part in slots[1:]:
            total = total + part
        return total

    def fail(self) -> None:
        """One shard raised: wake the others (their sums raise BrokenBarrierError) instead of letting them wait."""
        self.failed = True
        self.barrier.abort()


class _Gradients:
    """One shard's parameter gradients, kept until every shard is done (its ``Run.accumulate``)."""

    def __init__(self):
        self.grads: dict[int, list] = {}

    def add(self, param: Any, grad: Any) -> None:
        check_gradient(param, grad)
        entry = self.grads.get(id(param))
        self.grads[id(param)] = [param, grad] if entry is None else [param, entry[1] + grad]


def _ignore(buffer: Any, value: Any) -> None:
    """A shard after the first leaves buffers alone: the first stores what every shard computed alike."""


class ShardedCache(NamedTuple):
    caches: tuple          # one per shard
    grads: tuple           # the _Gradients of each shard, which its Run adds to
    sizes: tuple           # the shards' batch sizes


def plan(model: Module, x: Any) -> int:
    """How many shards a call of ``model`` on ``x`` runs in by the size rule: 1 means one piece."""
    if not is_numpy_array(x) or x.ndim < 2 or x.shape[0] < 2:
        return 1
    most = min(threads(), x.shape[0])
    modules = model.modules()
    if most < 2 or not all(getattr(m, "shardable", False) for m in modules):
        return 1
    per_module = _elements_per_module(model, tuple(x.shape[1:]), tuple(map(id, modules)))
    return max(1, min(most, int(x.shape[0] * per_module) // MIN_SHARD_ELEMENTS))


def _elements_per_module(model: Module, sample_shape: tuple, structure: tuple) -> float:
    """How many elements a module of ``model`` outputs per sample on average: traced once per input shape and
    structure (an empty batch through the model, as its summary does)."""
    known = _elements.setdefault(model, {})
    key = (sample_shape, structure)
    if key not in known:
        try:
            shapes = model._trace_shapes(sample_shape)
        except (ValueError, TypeError):     # the input does not fit: no shards; the call itself will say why
            return 0.0
        known[key] = sum(math.prod(s) for s in shapes.values()) / max(1, len(shapes))
    return known[key]


class Shards(_module.Serial):
    """The executor xpcnn installs: a public call in :func:`plan`'s number of shards, or in one piece."""

    def forward(self, model: Module, x: Any, training: bool) -> tuple[Any, Any, Run]:
        n = plan(model, x)
        if n < 2:
            return _one_piece(x, lambda: super(Shards, self).forward(model, x, training))
        if not _busy.acquire(blocking=False):      # another sharded call owns the cores: one piece
            return super().forward(model, x, training)
        try:
            with _blas_threads(1):
                return _sharded_forward(model, x, n, training)
        finally:
            _busy.release()

    def backward(self, model: Module, dy: Any, pending: Pending, wanted: bool) -> Any:
        cache = pending.cache
        if not isinstance(cache, ShardedCache):
            return _one_piece(dy, lambda: super(Shards, self).backward(model, dy, pending, wanted))
        if tuple(dy.shape[:1]) != (sum(cache.sizes),):
            raise ValueError(f"{type(model).__name__}.backward: dy must have the output's batch size "
                             f"{sum(cache.sizes)}; got shape {tuple(dy.shape)}")
        if not _busy.acquire(timeout=BARRIER_TIMEOUT_S):
            raise ShardTimeoutError(f"{type(model).__name__}.backward waited {BARRIER_TIMEOUT_S:g} s for "
                                    f"another sharded call to finish")
        try:
            with _blas_threads(1):
                dx = _shards_backward(model, dy, cache, pending.run, wanted)
        finally:
            _busy.release()
        _add_gradients(cache.grads)
        return dx


def _one_piece(x: Any, call: Callable[[], Any]) -> Any:
    """``call()``, a call in one piece on ``x``, with BLAS held to the free cores where other processes are busy
    (:func:`_one_piece_blas`). Only then does it take the cores lock, which BLAS's count needs (one owner sets
    and restores it); a quiet call leaves the lock to the sharded calls of other threads."""
    blas = _one_piece_blas(x)
    if blas is None or not _busy.acquire(blocking=False):
        return call()
    try:
        if not blas_keeps_bits():           # other bits on fewer threads: the load must not decide them
            return call()
        with _blas_threads(blas):
            return call()
    finally:
        _busy.release()


# Products a convolution and a dense layer make, rows and columns that leave remainders for any kernel's tiles:
# (rows, inner, columns), each big enough that BLAS splits it among threads.
_BIT_CHECKS = ((6, 25, 12544), (16, 150, 6400), (150, 16, 6400), (84, 120, 256), (120, 400, 256), (400, 256, 120))


@functools.lru_cache(maxsize=1)
def blas_keeps_bits() -> bool:
    """Whether NumPy's BLAS gives the same bits on one thread as on the cores xpcnn uses, checked once per process
    on a few float32 products (a few milliseconds). OpenBLAS's AVX-512 kernels did on the Zen 4 measured, its
    Haswell kernels did not (their tiles' remainders move with the split among threads). Where it does not, the
    machine's load never changes BLAS's thread count. Call it holding ``_busy``, which BLAS's count needs."""
    import numpy as np

    cores = _default_cores()
    if cores < 2:
        return True
    rng = np.random.default_rng(0)
    for m, k, n in _BIT_CHECKS:
        a, b = rng.standard_normal((m, k), dtype=np.float32), rng.standard_normal((k, n), dtype=np.float32)
        with _blas_threads(1):
            one = a @ b
        with _blas_threads(cores):
            if not np.array_equal(one, a @ b):
                return False
    return True


def _sharded_forward(model: Module, x: Any, n: int, training: bool) -> tuple[Any, Any, Run]:
    """``x`` in ``n`` shards; the first shard stores the buffers' new values."""
    xp = model._check_input(x)
    layout = model._layout_for(x)
    sizes = shard_sizes(x.shape[0], n)
    group = _Group(n, BARRIER_TIMEOUT_S)
    grads = tuple(_Gradients() for _ in range(n))
    runs = tuple(Run(layout, training, accumulate=grads[i].add, update=set_buffer if i == 0 else _ignore,
                     reduce=functools.partial(group.sum, i)) for i in range(n))

    def work(i, part):
        y, cache = _module.pair(model, model._forward(_layout.from_nchw(part, xp, layout), runs[i]))
        return _layout.to_nchw(y, xp, layout), cache

    outs = _run_shards(group, work, _split(x, sizes))
    y = xp.concat([y for y, _ in outs], axis=0)
    return y, ShardedCache(tuple(c for _, c in outs), grads, sizes), runs[0]


def _shards_backward(model: Module, dy: Any, cache: ShardedCache, run: Run, wanted: bool) -> Any:
    """Every shard's backward (the caller holds ``_busy`` and BLAS at one thread); the shards' gradients stay in
    ``cache.grads``."""
    xp, layout = array_namespace(dy), run.layout
    group = _Group(len(cache.sizes), BARRIER_TIMEOUT_S)
    runs = tuple(dataclasses.replace(run, accumulate=part.add, reduce=functools.partial(group.sum, i))
                 for i, part in enumerate(cache.grads))

    def work(i, part):
        dx = model._backward(_layout.from_nchw(part, xp, layout), cache.caches[i], runs[i], wanted)
        return None if dx is None or not wanted else _layout.to_nchw(dx, xp, layout)

    parts = _run_shards(group, work, _split(dy, cache.sizes))
    return None if parts[0] is None else xp.concat(parts, axis=0)


def _split(x: Any, sizes: tuple) -> list:
    """Views of ``x`` along its first axis."""
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    return [x[start:start + size, ...] for start, size in zip(starts, sizes)]


def _one_piece_blas(x: Any) -> int | None:
    """BLAS's thread count for a call in one piece: None (as it is) unless other processes are busy on the cores
    xpcnn would use by default, then the cores left (a BLAS thread more than the free cores only waits and spins).
    A thread count the user set is kept. :func:`_one_piece` holds BLAS only where :func:`blas_keeps_bits`."""
    if not is_numpy_array(x) or _explicit() is not None:
        return None
    cores = _default_cores()
    free = max(1, cores - busy_elsewhere())
    return None if free >= cores else free


@contextlib.contextmanager
def _blas_threads(n: int | None):
    """BLAS held to ``n`` threads (1 while shards run: each shard's thread runs its own products), restored after;
    None leaves it alone. Only the holder of ``_busy`` calls this, so limits are set and restored in order."""
    global _blas
    if n is None:
        yield
        return
    if _blas is None:
        from threadpoolctl import ThreadpoolController

        _blas = ThreadpoolController()
    with _blas.limit(limits=n, user_api="blas"):
        yield


def _run_shards(group: _Group, work: Callable[[int, Any], Any], parts: list) -> list:
    """``work(i, parts[i])`` for every shard, shard 0 in this thread and the others in a pool; the results in
    shard order. An exception in any shard wakes the others and is raised here, the first real one rather than
    the broken barriers it caused elsewhere."""
    global _pool, _pool_pid
    n = group.size
    if _pool is None or _pool_pid != os.getpid() or _pool._max_workers < n - 1:
        # a forked child inherits the pool object but not its threads: it gets a pool of its own
        _pool, _pool_pid = ThreadPoolExecutor(max_workers=n - 1, thread_name_prefix="xpcnn-shard"), os.getpid()

    def call(i):
        try:
            return work(i, parts[i])
        except BaseException:
            group.fail()
            raise

    results, errors = [None] * n, []
    futures = [_pool.submit(call, i) for i in range(1, n)]
    try:
        results[0] = call(0)
    except BaseException as exc:        # noqa: BLE001 -- raised below, after the other shards stopped
        errors.append(exc)
    for i, future in enumerate(futures, start=1):
        try:
            results[i] = future.result()
        except BaseException as exc:    # noqa: BLE001
            errors.append(exc)
    if errors:
        real = [e for e in errors if not isinstance(e, threading.BrokenBarrierError)]
        raise (real or errors)[0]
    return results


def _add_gradients(shards: list) -> None:
    """Each parameter's gradients summed over the shards in shard order, then added to ``.grad``."""
    total: dict = {}
    for part in shards:
        for key, (param, grad) in part.grads.items():
            if key in total:
                total[key][1] = total[key][1] + grad
            else:
                total[key] = [param, grad]
    for param, grad in total.values():
        add_gradient(param, grad)


_ALLOCATOR_TUNED = False          # whether glibc's malloc was tuned
_allocator_tried = False          # whether tune_allocator ran (it does nothing twice)


def tune_allocator() -> bool:
    """Make glibc's malloc keep freed memory in the process instead of returning it to the OS.

    A NumPy training step allocates and frees tens to hundreds of MB; by default glibc hands the pages back
    after every step and page-faults them in again on the next (up to 40% of a LeNet-5 step at batch 256 on a
    2-core machine). This serves every allocation from the heap (no ``mmap``: glibc maps arrays of 32 MB or more
    by itself and unmaps them on free, whatever its thresholds) and never trims the heap (as PyTorch's tuning
    guide does by recommending jemalloc or tcmalloc). The process keeps its peak working set resident until it
    exits. Returns True if applied; does nothing (False) where malloc is not glibc's.

    An explicit call, made once per process by :func:`xpcnn.fit` and the command line (and by your own training
    loop if you want it); importing xpcnn, selecting a backend or calling a model changes nothing.
    ``XPCNN_TUNE_MALLOC=0`` makes it do nothing (e.g. in a long-lived process that must hand memory back).
    """
    global _ALLOCATOR_TUNED, _allocator_tried
    if not _settings.get().tune_malloc:
        return False
    if _allocator_tried:
        return _ALLOCATOR_TUNED
    _allocator_tried = True
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_top_pad, m_mmap_max = -1, -2, -4
    # mallopt(3): a trim threshold of -1 disables trimming, an mmap maximum of 0 disables mmap for allocations
    ok = all(mallopt(option, value) == 1 for option, value in (
        (m_mmap_max, 0), (m_trim_threshold, -1), (m_top_pad, 64 << 20)))
    _ALLOCATOR_TUNED = ok
    return ok


_module.set_executor(Shards())
