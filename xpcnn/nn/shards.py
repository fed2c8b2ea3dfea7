"""Batch shards: the one place where xpcnn runs work on more than one CPU core itself.

NumPy runs each array operation on one core (its loops release the GIL but do not split the work); only the
matrix products (BLAS) use every core. So on the numpy backend a public call of a model (``model(x)`` and
``model.backward(dy)``, the README's loop and ``fit`` alike) whose batch is big enough splits the batch into
one contiguous shard per core and runs the whole model on each shard in its own thread, BLAS held to one
thread meanwhile. What must see the whole batch does: BatchNorm sums its statistics over the shards
(:meth:`ShardGroup.sum`, a barrier), so training mode normalizes with the batch's mean and variance as
before; parameter gradients are summed over the shards in shard order; the outputs and input gradients are
concatenated. The result is deterministic (the same bits on every run) and differs from one thread only in
summation order (~1e-7 relative in float32, ~1e-16 in float64; tested).

Used when all of these hold: the numpy backend; more than one core (``XPCNN_THREADS``, default: the cores
this process may run on; ``1`` turns sharding off); every module of the model is ``shardable`` (xpcnn's
layers and containers, except Dropout, whose masks come from one generator in order; a module you write
runs unsharded unless it sets ``shardable = True``, which promises that it keeps nothing on the object
during a call and adds its gradients with ``accumulate``); and shards big enough (``MIN_SHARD_ELEMENTS``:
LeNet-5 from batch 256, ResNet-8 from 64). Not on torch, CuPy or array_api_strict: they run the one
array-API source unchanged.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, NamedTuple

from array_api_compat import is_numpy_namespace

from .. import backend as _backend

__all__ = ["MIN_SHARD_ELEMENTS", "ShardGroup", "ShardedCache", "current", "limit_threads", "plan", "reducer", "run",
           "sizes", "split", "threads"]

# How big a shard must be: its batch times the elements an average module of the model outputs per sample.
# Measured on 2 cores (numpy, two shards vs one thread, whole training steps): LeNet-5 (1,155 per module and
# sample) gains 16% at batch 256 (148k per shard), breaks even at 128 (74k) and loses 60% at 64 (37k);
# ResNet-8 on 1x28x28 (6,710) gains 13% at batch 64 (215k), breaks even at 32 (107k), loses 18% at 16 (54k).
# Below this the Python work of the shards, which takes turns under the GIL, costs more than the second core
# gives.
MIN_SHARD_ELEMENTS = 1 << 17

_local = threading.local()
_pool: ThreadPoolExecutor | None = None
_pool_pid: int | None = None
_blas = None
_limit: int | None = None         # set by xpcnn.distributed.init: cores per rank


def threads() -> int:
    """How many shards a batch may be split into: ``XPCNN_THREADS``, else the cores this process may run on
    (divided among the MPI ranks on this node under :func:`xpcnn.distributed.init`)."""
    configured = _backend.threads_from_env()
    if configured is not None:
        return configured
    cores = _backend.usable_cores()
    return cores if _limit is None else max(1, min(cores, _limit))


def limit_threads(n: int | None) -> None:
    """Cap the default of :func:`threads` (``XPCNN_THREADS`` still wins); None removes the cap."""
    global _limit
    _limit = n


class ShardGroup:
    """The threads running one batch's shards; :meth:`sum` adds a value over all of them."""

    def __init__(self, size: int):
        self.size = size
        self.barrier = threading.Barrier(size)
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
        self.barrier.wait()
        total = slots[0]
        for part in slots[1:]:
            total = total + part
        return total


class _Shard(NamedTuple):
    index: int
    group: ShardGroup
    grads: dict            # id(parameter) -> [parameter, gradient]: this shard's gradients, summed after


def current() -> _Shard | None:
    """The shard this thread is running, or None outside sharded work."""
    return getattr(_local, "shard", None)


def reducer() -> Callable[[Any], Any] | None:
    """For BatchNorm: a function summing a per-channel array (or a count) over the shards; None outside."""
    shard = current()
    if shard is None:
        return None
    return lambda value: shard.group.sum(shard.index, value)


class ShardedCache(NamedTuple):
    caches: tuple          # one per shard
    sizes: tuple           # the shards' batch sizes


def plan(module: Any, x: Any, xp: Any) -> int:
    """How many shards to split the batch ``x`` (batch first) into for ``module``: 1 means no split."""
    if current() is not None or not is_numpy_namespace(xp) or x.ndim < 2:
        return 1
    n = min(threads(), x.shape[0])
    if n < 2 or not all(getattr(m, "shardable", False) for m in module.modules()):
        return 1
    return max(1, min(n, int(x.shape[0] * _elements_per_module(module, tuple(x.shape[1:]))) // MIN_SHARD_ELEMENTS))


def _elements_per_module(module: Any, sample_shape: tuple) -> float:
    """How many elements a module of ``module`` outputs per sample on average: traced once per input shape
    (an empty batch through the model, as its summary does) and kept on the model."""
    known = module.__dict__.setdefault("_shard_elements", {})
    if sample_shape not in known:
        try:
            shapes = module._trace_shapes(sample_shape)
        except (ValueError, TypeError):     # the input does not fit: no shards; the call itself will say why
            return 0.0
        known[sample_shape] = sum(math.prod(shape) for shape in shapes.values()) / max(1, len(shapes))
    return known[sample_shape]


def sizes(batch: int, n: int) -> tuple[int, ...]:
    """``n`` contiguous shard sizes for ``batch`` samples, the first ones larger by one where it does not divide."""
    return tuple(batch // n + (i < batch % n) for i in range(n))


def split(x: Any, shard_sizes: tuple) -> list:
    """Views of ``x`` along its first axis."""
    starts = [sum(shard_sizes[:i]) for i in range(len(shard_sizes))]
    return [x[start:start + size, ...] for start, size in zip(starts, shard_sizes)]


@contextlib.contextmanager
def _one_blas_thread():
    """BLAS held to one thread (every shard's thread runs its own products); restored after."""
    global _blas
    if _blas is None:
        from threadpoolctl import ThreadpoolController

        _blas = ThreadpoolController()
    with _blas.limit(limits=1, user_api="blas"):
        yield


def run(n: int, work: Callable[[int, Any], Any], parts: list) -> list:
    """``work(i, parts[i])`` for every shard, shard 0 in this thread and the others in a pool; returns the
    results in shard order after adding the shards' parameter gradients (in shard order) to ``.grad``.

    An exception in any shard breaks the group's barrier (no shard waits forever for a BatchNorm sum) and is
    raised here, the first real one rather than the broken barriers it caused elsewhere."""
    global _pool, _pool_pid
    if _pool is None or _pool_pid != os.getpid() or _pool._max_workers < n - 1:
        # a forked child inherits the pool object but not its threads: it gets a pool of its own
        _pool, _pool_pid = ThreadPoolExecutor(max_workers=n - 1, thread_name_prefix="xpcnn-shard"), os.getpid()
    group = ShardGroup(n)
    shards = [_Shard(i, group, {}) for i in range(n)]

    def call(i):
        _local.shard = shards[i]
        try:
            return work(i, parts[i])
        except BaseException:
            group.barrier.abort()
            raise
        finally:
            _local.shard = None

    results, errors = [None] * n, []
    with _one_blas_thread():
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
    _add_gradients(shards)
    return results


def _add_gradients(shards: list) -> None:
    """Each parameter's gradients summed over the shards in shard order, then added to ``.grad`` by the one
    rule every gradient takes (:func:`xpcnn.nn.module.accumulate`; no shard is running now)."""
    from .module import accumulate       # module imports this file

    total: dict = {}
    for shard in shards:
        for key, (param, grad) in shard.grads.items():
            if key in total:
                total[key][1] = total[key][1] + grad
            else:
                total[key] = [param, grad]
    for param, grad in total.values():
        accumulate(param, grad)
