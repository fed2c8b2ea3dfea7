"""How xpcnn uses a CPU well: batch shards over the cores, and a malloc that keeps its memory.

NumPy runs each array operation on one core (only the matrix products use every core), so
:class:`BatchShards` wraps a model and, on the numpy backend, splits a big enough batch into one contiguous
shard per core and runs the model's own ``_forward``/``_backward`` on each shard in its own thread, BLAS held to
one thread meanwhile. Each shard gets a :class:`~xpcnn.nn.Run` of its own:

- ``reduce`` sums a per-channel statistic over the shards (a barrier), so BatchNorm normalizes with the whole
  batch's mean and variance, as PyTorch's ``SyncBatchNorm`` does;
- ``accumulate`` keeps the shard's parameter gradients, summed over the shards in shard order afterwards;
- ``update`` lets the first shard alone store the new running statistics (every shard computed the same).

Outputs and input gradients are concatenated. The result is deterministic and differs from one thread only in
summation order (~1e-7 relative in float32, ~1e-16 in float64; tested). The wrapper is transparent: parameters,
names, checkpoints and ``summary()`` are the wrapped model's. :func:`xpcnn.models.build` (and every model
builder there), :func:`xpcnn.load`, :func:`xpcnn.fit` and the command line wrap their models; wrap your own with
:func:`shard`.

A batch is sharded when all of these hold: numpy arrays; more than one thread allowed (``threads=``, else
``XPCNN_THREADS``, else the usable cores, shared among the MPI ranks of a node by
:func:`xpcnn.distributed.init`); every module of the model is ``shardable`` (xpcnn's layers and containers
except Dropout, whose masks come from one generator in order; a module you write promises it by setting
``shardable = True``: it keeps nothing on the object during a call and goes through ``run`` for gradients and
state); shards big enough (:data:`xpcnn.thresholds.MIN_SHARD_ELEMENTS`); and no other sharded call running in
the process: a call that overlaps one (another thread, or a model called inside a shard) runs in one piece
instead of waiting, so threads never deadlock and BLAS's thread count is set and restored by one owner.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, NamedTuple

from array_api_compat import array_namespace, is_numpy_array

from . import settings as _settings
from . import thresholds, tuning
from .functional import layout as _layout
from .nn.module import Module, Run, add_gradient, check_gradient, set_buffer

__all__ = ["BARRIER_TIMEOUT_S", "BatchShards", "ShardTimeoutError", "limit_threads", "shard", "shard_sizes",
           "threads", "tune_allocator", "usable_cores"]

BARRIER_TIMEOUT_S = 600.0      # how long a shard waits for the others at a BatchNorm sum before giving up

_core_share: int | None = None            # set by xpcnn.distributed.init: the cores of a node per rank
_busy = threading.Lock()                  # held by the one sharded call running in this process
_pool: ThreadPoolExecutor | None = None
_pool_pid: int | None = None
_blas = None


def usable_cores() -> int:
    """The CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:          # not on Linux
        return os.cpu_count() or 1


def threads(settings: _settings.Settings | None = None) -> int:
    """How many shards a batch may be split into by default: ``XPCNN_THREADS``, else the cores this process may
    run on (divided among the MPI ranks on this node under :func:`xpcnn.distributed.init`)."""
    configured = (settings or _settings.get()).threads
    if configured is not None:
        return configured
    cores = usable_cores()
    return cores if _core_share is None else max(1, min(cores, _core_share))


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


def _discard(param: Any, grad: Any) -> None:
    """A trial's gradients (measuring, :meth:`BatchShards._trial`) go nowhere."""


class ShardedCache(NamedTuple):
    caches: tuple          # one per shard
    grads: tuple           # the _Gradients of each shard, which its Run adds to
    sizes: tuple           # the shards' batch sizes


class BatchShards(Module):
    """``model`` run on shards of a batch, one per core (see the module's text); ``threads`` caps the shards
    (default :func:`threads`). Transparent: the tree, names, ``config()``, ``summary()`` and attributes such as
    ``layers`` or ``input_shape`` are ``model``'s, so checkpoints do not know it was there."""

    def __init__(self, model: Module, threads: int | None = None):
        if not isinstance(model, Module):
            raise TypeError(f"BatchShards: model must be an xpcnn.nn.Module; got {type(model).__name__}")
        if isinstance(model, BatchShards):
            raise TypeError("BatchShards: the model is already wrapped (use xpcnn.parallel.shard, which wraps once)")
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise ValueError(f"BatchShards: threads must be a whole number >= 1 or None; got {threads!r}")
        super().__init__()
        self.module = model
        self.threads = threads
        self._elements: dict[tuple, float] = {}      # per input shape: elements an average module outputs
        self._structure: str | None = None           # digest of the model's configuration (tuning keys)

    # -- transparent: the wrapped model's tree, names and attributes
    def named_children(self):
        yield "", self.module                 # no name of its own: parameter names stay the model's

    def __getattr__(self, name: str) -> Any:
        if name == "module" or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.module, name)

    def __getitem__(self, index: Any) -> Any:
        return self.module[index]

    def __len__(self) -> int:
        return len(self.module)

    name = property(lambda self: self.module.name)
    input_shape = property(lambda self: self.module.input_shape)
    run_layout = property(lambda self: self.module.run_layout)
    input_grad_default = property(lambda self: self.module.input_grad_default)

    def config(self) -> dict:
        return self.module.config()

    def short_repr(self) -> str:
        return self.module.short_repr()

    def __repr__(self) -> str:
        return repr(self.module)

    def _forward(self, x, run):
        return run.call(self.module, x)

    def _backward(self, dy, cache, run, input_grad):
        return self.module._backward(dy, cache, run, input_grad)

    def _root(self) -> Module:
        return self.module._root()             # one lock for the model, wrapped or not

    # -- the public pair, sharded where it pays
    def _run_public(self, x: Any, training: bool) -> tuple[Any, Any, Run]:
        settings = _settings.get()
        if settings.tune_malloc and not _allocator_tried and is_numpy_array(x):
            tune_allocator()
        most = self._most(x, settings)
        n = self._plan(x, settings, most)
        if training and is_numpy_array(x) and not _busy.locked():  # (a sharded call running: its cores are taken)
            n = self._measured_shards(x, n, most)
        if n < 2 or not _busy.acquire(blocking=False):      # busy: another sharded call owns the cores
            return super()._run_public(x, training)
        try:
            with _one_blas_thread():
                return self._sharded_forward(x, n, training)
        finally:
            _busy.release()

    def _plan(self, x: Any, settings: _settings.Settings | None = None, most: int | None = None) -> int:
        """How many shards for ``x`` by the size rule: 1 means one piece."""
        most = self._most(x, settings) if most is None else most
        if most < 2:
            return 1
        per_module = self._elements_per_module(tuple(x.shape[1:]))
        return max(1, min(most, int(x.shape[0] * per_module) // thresholds.MIN_SHARD_ELEMENTS))

    def _most(self, x: Any, settings: _settings.Settings | None = None) -> int:
        """The most shards ``x`` may run in (1: it cannot be sharded)."""
        if not is_numpy_array(x) or x.ndim < 2 or x.shape[0] < 2:
            return 1
        n = min(self.threads or threads(settings), x.shape[0])
        if n < 2 or not all(getattr(m, "shardable", False) for m in self.module.modules()):
            return 1
        return n

    def _measured_shards(self, x: Any, rule: int, most: int) -> int:
        """The shard count measured fastest for a training step of this model on inputs shaped like ``x``, with its
        convolutions' routes (:func:`xpcnn.tuning.tune_model`: one piece, the rule's count and every core allowed,
        each timed on a forward and backward of ``x`` that changes nothing), or ``rule`` where nothing was
        measured."""
        def key() -> str:
            return f"shards {self._signature()} x{tuple(x.shape)} {x.dtype} most={most}"

        chosen = tuning.tune_model(key, sorted({1, rule, most}), rule, lambda n: self._trial(x, n),
                                   array_namespace(x))
        return rule if chosen is None else chosen

    def _signature(self) -> str:
        """A short digest of the model's structure (its configuration), for :mod:`xpcnn.tuning`'s keys."""
        if self._structure is None:
            text = json.dumps(self.module.config(), sort_keys=True, default=str)
            self._structure = f"{self.module.name}:{hashlib.sha256(text.encode()).hexdigest()[:12]}"
        return self._structure

    def _trial(self, x: Any, n: int) -> None:
        """A training-mode forward and backward of ``x`` in ``n`` shards whose gradients and buffer updates are
        thrown away: what :meth:`_measured_shards` times."""
        xp = array_namespace(x)
        if n < 2:
            layout = self.run_layout if x.ndim in (2, 4) else "NCHW"
            run = Run(layout, True, accumulate=_discard, update=_ignore)
            y, cache = self.module._forward(_layout.from_nchw(x, xp, layout), run)
            self.module._backward(xp.ones_like(y), cache, run, False)
            return
        if not _busy.acquire(timeout=BARRIER_TIMEOUT_S):
            raise ShardTimeoutError(f"measuring {n} shards waited {BARRIER_TIMEOUT_S:g} s for another sharded call")
        try:
            with _one_blas_thread():
                y, cache, run = self._sharded_forward(x, n, True, keep=False)
                self._shards_backward(xp.ones_like(y), cache, run, False)
        finally:
            _busy.release()

    def _elements_per_module(self, sample_shape: tuple) -> float:
        """How many elements a module of the model outputs per sample on average: traced once per input shape
        (an empty batch through the model, as its summary does)."""
        if sample_shape not in self._elements:
            try:
                shapes = self.module._trace_shapes(sample_shape)
            except (ValueError, TypeError):     # the input does not fit: no shards; the call itself will say why
                return 0.0
            self._elements[sample_shape] = sum(math.prod(s) for s in shapes.values()) / max(1, len(shapes))
        return self._elements[sample_shape]

    def _sharded_forward(self, x: Any, n: int, training: bool, keep: bool = True) -> tuple[Any, Any, Run]:
        """``x`` in ``n`` shards; ``keep``: the first shard stores the buffers' new values (not in a trial)."""
        xp = self._check_input(x)
        layout = self.run_layout if x.ndim in (2, 4) else "NCHW"
        sizes = shard_sizes(x.shape[0], n)
        group = _Group(n, BARRIER_TIMEOUT_S)
        grads = tuple(_Gradients() for _ in range(n))
        runs = tuple(Run(layout, training, accumulate=grads[i].add, update=set_buffer if i == 0 and keep else _ignore,
                         reduce=functools.partial(group.sum, i)) for i in range(n))

        def work(i, part):
            y, cache = self.module._forward(_layout.from_nchw(part, xp, layout), runs[i])
            return _layout.to_nchw(y, xp, layout), cache

        outs = _run_shards(group, work, _split(x, sizes))
        y = xp.concat([y for y, _ in outs], axis=0)
        return y, ShardedCache(tuple(c for _, c in outs), grads, sizes), runs[0]

    def _public_backward(self, dy: Any, input_grad: bool | None) -> Any:
        if self._last is None or not isinstance(self._last.cache, ShardedCache):
            return super()._public_backward(dy, input_grad)
        pending, wanted = self._take_pending(dy, input_grad)
        cache = pending.cache
        if tuple(dy.shape[:1]) != (sum(cache.sizes),):
            raise ValueError(f"{type(self.module).__name__}.backward: dy must have the output's batch size "
                             f"{sum(cache.sizes)}; got shape {tuple(dy.shape)}")
        if not _busy.acquire(timeout=BARRIER_TIMEOUT_S):
            raise ShardTimeoutError(f"{type(self.module).__name__}.backward waited {BARRIER_TIMEOUT_S:g} s for "
                                    f"another sharded call to finish")
        try:
            with _one_blas_thread():
                dx = self._shards_backward(dy, cache, pending.run, wanted)
        finally:
            _busy.release()
        _add_gradients(cache.grads)
        return dx

    def _shards_backward(self, dy: Any, cache: ShardedCache, run: Run, wanted: bool) -> Any:
        """Every shard's backward (the caller holds ``_busy`` and BLAS at one thread); the shards' gradients stay in
        ``cache.grads``."""
        xp, layout = array_namespace(dy), run.layout
        group = _Group(len(cache.sizes), BARRIER_TIMEOUT_S)
        runs = tuple(dataclasses.replace(run, accumulate=part.add, reduce=functools.partial(group.sum, i))
                     for i, part in enumerate(cache.grads))

        def work(i, part):
            dx = self.module._backward(_layout.from_nchw(part, xp, layout), cache.caches[i], runs[i], wanted)
            return None if dx is None or not wanted else _layout.to_nchw(dx, xp, layout)

        parts = _run_shards(group, work, _split(dy, cache.sizes))
        return None if parts[0] is None else xp.concat(parts, axis=0)


def shard(model: Module, threads: int | None = None) -> BatchShards:
    """``model`` wrapped in :class:`BatchShards` (``model`` itself when it already is)."""
    return model if isinstance(model, BatchShards) else BatchShards(model, threads)


def _split(x: Any, sizes: tuple) -> list:
    """Views of ``x`` along its first axis."""
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    return [x[start:start + size, ...] for start, size in zip(starts, sizes)]


@contextlib.contextmanager
def _one_blas_thread():
    """BLAS held to one thread (every shard's thread runs its own products); restored after. Only the holder of
    ``_busy`` calls this, so limits are set and restored in order."""
    global _blas
    if _blas is None:
        from threadpoolctl import ThreadpoolController

        _blas = ThreadpoolController()
    with _blas.limit(limits=1, user_api="blas"):
        tuning.one_blas_thread = True           # measurements made meanwhile hold for one BLAS thread
        try:
            yield
        finally:
            tuning.one_blas_thread = False


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

    Applied once per process by what trains: a wrapped model's first call on NumPy arrays (every model xpcnn
    builds or loads is wrapped), :func:`xpcnn.fit` and the command line; importing xpcnn or selecting a backend
    changes nothing. ``XPCNN_TUNE_MALLOC=0`` leaves malloc alone (e.g. in a long-lived process that must hand
    memory back to the system).
    """
    global _ALLOCATOR_TUNED, _allocator_tried
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
