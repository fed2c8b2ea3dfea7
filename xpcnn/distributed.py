"""Data-parallel training on MPI: ``mpiexec -n N xpcnn train --distributed`` or ``fit(..., distributed=init())``.

Every rank holds the whole model and walks the same epoch order; each takes its slice of every global batch
(uneven splits allowed), computes the gradient of its share of the global mean loss, and ONE all-reduce per
step sums the flat gradient array (with the loss and correct-count sums appended) across ranks; then every
rank applies the same optimizer step. MPI (mpi4py, imported only here and only when asked for) launches the
processes and moves host values; where the backend has several devices each rank takes its own (one GPU per
rank), and between CUDA GPUs device arrays are summed with NCCL (``xpcnn/_nccl.py``; not yet run on GPUs).

BatchNorm computes batch statistics per rank, as PyTorch's DistributedDataParallel does by default; the
running statistics are taken from rank 0 (broadcast) before every evaluation and checkpoint, as DDP's
``broadcast_buffers`` does.
"""

from __future__ import annotations

import os
import sys
import traceback
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import backend as _backend
from . import parallel as _parallel
from . import settings as _settings
from .nn.module import flatten, unflatten

__all__ = ["Context", "SettingsMismatch", "abort", "current", "init", "launched_by_mpi", "shard"]

_current: "Context | None" = None        # the job this process joined (init), for abort()


class SettingsMismatch(ValueError):
    """The ranks of one job were given different settings (raised on every rank alike)."""


def launched_by_mpi() -> bool:
    """Whether this process looks like one of several started by an MPI launcher (mpiexec, srun)."""
    return _settings.get().mpi_launched


def shard(start: int, stop: int, rank: int, size: int) -> tuple[int, int]:
    """Rank ``rank``'s part of rows ``start:stop``: as even as possible, the first ranks one row more."""
    count = stop - start
    base, extra = divmod(count, size)
    first = start + rank * base + min(rank, extra)
    return first, first + base + (1 if rank < extra else 0)


@dataclass
class Context:
    """What :func:`init` returns: this process's place in the job and the collective operations."""

    comm: Any
    rank: int
    size: int
    local_rank: int
    local_size: int
    device_comm: Any = field(default=None, repr=False)   # sums device arrays (NCCL); None: all through MPI

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        self.comm.Barrier()

    def allreduce(self, flat: Any) -> Any:
        """The element-wise sum over all ranks of the 1-D array ``flat`` (a new array, same backend and device).
        Host arrays (NumPy: a stop flag, metric sums) go through MPI; device arrays through :attr:`device_comm`
        where the job has one (NCCL between GPUs), else through MPI by way of the host."""
        if self.device_comm is not None and not isinstance(flat, np.ndarray):
            return self.device_comm.allreduce(flat)
        host = np.ascontiguousarray(_backend.to_numpy(flat))
        out = np.empty_like(host)
        self.comm.Allreduce(host, out)
        return out if isinstance(flat, np.ndarray) else _backend.asarray_like(out, flat)

    def broadcast(self, flat: Any) -> Any:
        """Rank 0's 1-D array ``flat`` on every rank."""
        host = np.ascontiguousarray(_backend.to_numpy(flat))
        self.comm.Bcast(host, root=0)
        return host if isinstance(flat, np.ndarray) else _backend.asarray_like(host, flat)

    def check_same(self, settings: dict, what: str = "settings") -> None:
        """Every rank must have been given the same ``settings`` (name -> a printable value): one allgather,
        and on every rank alike a :class:`SettingsMismatch` naming each rank and setting that differs from rank
        0's, so no rank goes on alone and none waits forever."""
        every = self.comm.allgather({key: repr(value) for key, value in settings.items()})
        lines = []
        for rank, other in enumerate(every[1:], start=1):
            diff = [f"{key} {other.get(key, '(none)')} (rank 0: {every[0].get(key, '(none)')})"
                    for key in sorted(set(other) | set(every[0])) if other.get(key) != every[0].get(key)]
            if diff:
                lines.append(f"rank {rank} has " + ", ".join(diff))
        if lines:
            raise SettingsMismatch(f"the ranks were given different {what}: " + "; ".join(lines) + ". Start every "
                                   f"rank with the same settings")

    def sync_model(self, model: Any) -> None:
        """Check every rank has the same parameter and buffer shapes and dtypes (a clear error naming the ranks
        and arrays that differ), then give every rank rank 0's values."""
        slots = [*model.named_parameters(), *model.named_buffers()]
        shapes = [(name, tuple(slot.shape), str(slot.data.dtype)) for name, slot in slots]
        every = self.comm.allgather(shapes)
        if any(other != every[0] for other in every):
            lines = []
            for rank, other in enumerate(every):
                if other != every[0]:
                    diff = sorted(set(other) ^ set(every[0]))[:6]
                    lines.append(f"rank {rank} differs from rank 0 in {diff}")
            raise ValueError("the ranks hold different models: " + "; ".join(lines))
        self._broadcast([slot for _, slot in slots])

    def sync_buffers(self, model: Any) -> None:
        """Rank 0's buffers (BatchNorm's running statistics) on every rank."""
        self._broadcast(model.buffers())

    def _broadcast(self, slots: list) -> None:
        """Rank 0's ``.data`` of every slot (parameters, buffers) on every rank, in one broadcast."""
        if slots:
            unflatten(self.broadcast(flatten([s.data for s in slots])), slots)


def current() -> Context | None:
    """The job this process joined with :func:`init`, or None."""
    return _current


def abort(status: int) -> None:
    """End the whole job with ``status`` when this rank must stop alone (an error only it met): the other ranks
    would otherwise wait for it forever, in their next collective or, before :func:`init`, in MPI's own start-up.
    Nothing happens outside a job of several ranks."""
    sys.stdout.flush()
    sys.stderr.flush()
    comm = _current.comm if _current is not None else None
    if comm is None:
        try:
            from mpi4py import MPI          # joins the job the others are starting (a job of 1 if none), to end it
        except ImportError:
            return
        comm = MPI.COMM_WORLD
    if comm.Get_size() > 1:
        comm.Abort(status)


def _abort_on_exception(comm) -> None:
    """An uncaught exception on any rank ends the whole job at once instead of leaving the others waiting
    forever in their next collective."""
    previous = sys.excepthook

    def hook(kind, value, tb):
        if issubclass(kind, KeyboardInterrupt):
            previous(kind, value, tb)
        else:
            sys.stderr.write(f"[rank {comm.Get_rank()}] " + "".join(traceback.format_exception(kind, value, tb)))
        sys.stderr.flush()
        comm.Abort(1)

    sys.excepthook = hook


def _blas_threads() -> int:
    return _settings.get().blas_threads or os.cpu_count() or 1


def init(comm: Any = None) -> Context:
    """Join the MPI job this process was launched in (``mpiexec -n N ...``); a single process is a job of 1.

    Installs a hook so that an uncaught exception on any rank aborts the whole job; warns when the ranks on
    this node times their BLAS threads exceed its cores (set ``OPENBLAS_NUM_THREADS``); shares the node's
    cores among its ranks for batch shards (:mod:`xpcnn.parallel`). In a job of several ranks, where the backend
    has several devices each rank takes its own (:func:`assign_device`), and on cupy device arrays are summed with
    NCCL. A job of one builds no communicator.
    """
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise ImportError("distributed training needs mpi4py and an MPI: pip install -e '.[mpi]' from a checkout "
                          "of xpcnn (mpi4py plus the self-contained mpich wheel), or pip install mpi4py against "
                          f"your cluster's MPI ({exc})") from exc
    global _current
    comm = comm or MPI.COMM_WORLD
    local = comm.Split_type(MPI.COMM_TYPE_SHARED)
    context = Context(comm, comm.Get_rank(), comm.Get_size(), local.Get_rank(), local.Get_size())
    _current = context
    _abort_on_exception(comm)
    threads, cores = _blas_threads(), os.cpu_count() or 1
    _parallel.limit_threads(max(1, cores // context.local_size))     # batch shards: the node's cores, shared
    if context.local_rank == 0 and context.local_size * threads > cores:
        warnings.warn(f"{context.local_size} ranks on this node x {threads} BLAS threads each = "
                      f"{context.local_size * threads} > {cores} cores: they will compete; set "
                      f"OPENBLAS_NUM_THREADS={max(1, cores // context.local_size)}", RuntimeWarning, stacklevel=2)
    if context.size > 1:
        backend = assign_device(context, local)
        if backend.name in DEVICE_COMMS:
            context.device_comm = DEVICE_COMMS[backend.name](context, backend)
    return context


def _nccl_allreducer(context: Context, backend: Any) -> Any:
    from . import _nccl

    return _nccl.Allreducer(context.comm, context.rank, context.size, backend.device)


# Backends whose device arrays have a communicator of their own: name -> make(context, backend).
DEVICE_COMMS = {"cupy": _nccl_allreducer}


def _device_key(backend: Any) -> str:
    """What tells two devices apart on one node: a GPU's PCI bus id (the same GPU has another index in a rank
    whose CUDA_VISIBLE_DEVICES differs), else the device's name."""
    return backend.device.pci_bus_id if backend.name == "cupy" else str(backend.device)


def assign_device(context: Context, local: Any) -> Any:
    """Select this rank's own device where the backend has several (CUDA GPUs): ``XPCNN_DEVICE`` if set, else
    the one of its node-local rank (modulo the devices it sees, for ranks each shown one GPU). Two ranks of one
    node on one device (NCCL refuses it) raise the same ValueError on every rank. ``local``: the node's
    communicator. Returns the backend selected."""
    backend = _backend.get_backend()
    choices = _backend.devices(backend.name)
    if not choices:
        return backend
    chosen = _settings.get().device
    if chosen is None:
        backend = _backend.set_backend(backend.name, choices[context.local_rank % len(choices)])
    shared: dict[str, list[str]] = {}
    for rank, name, key in local.allgather((context.rank, str(backend.device), _device_key(backend))):
        shared.setdefault(key, []).append(f"rank {rank} ({name})")
    clashes = [" and ".join(ranks) for ranks in shared.values() if len(ranks) > 1]
    if clashes:
        hint = (f"XPCNN_DEVICE={chosen} puts every rank on one device: unset it" if chosen is not None else
                f"{len(choices)} {backend.name} device(s) are visible here: start at most that many ranks per node")
        raise ValueError(f"ranks on one node would share a device: {'; '.join(clashes)} (NCCL refuses two ranks on "
                         f"one GPU). {hint}, or give each rank its own GPU with CUDA_VISIBLE_DEVICES")
    return backend
