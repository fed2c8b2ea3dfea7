"""The CUDA-only part of data-parallel training: device arrays summed with NCCL, one GPU per rank.

Not yet run on a GPU (no GPU has been lent to this project); ``ci/gpu.sh`` runs it on a machine with 2+ GPUs, and
tests/test_distributed.py runs this code against test doubles of CuPy, NCCL and MPI. Only device arrays come
here: host values (a stop flag, metric sums) go through MPI (:meth:`xpcnn.distributed.Context.allreduce`).
The NCCL id is made on rank 0 and broadcast over MPI; every rank first checks that NCCL is there, and any
rank's failure is shared, so every rank raises the same error and none waits for an id that never comes.
"""

from __future__ import annotations

from typing import Any

NCCL_PACKAGE = ('pip install "nvidia-nccl-cu12>=2.18.1,<3" (CUDA 12; nvidia-nccl-cu13 for CUDA 13), from a '
                "checkout of xpcnn pip install -e '.[cuda12-nccl]'")


def load() -> Any:
    """``cupy.cuda.nccl`` with the functions xpcnn calls, or RuntimeError saying what to install. (CuPy imports
    the module without libnccl too, then as a module without functions.)"""
    try:
        from cupy.cuda import nccl
    except ImportError as exc:
        raise RuntimeError(f"NCCL is not available to CuPy here ({exc}); install it: {NCCL_PACKAGE}") from None
    missing = [name for name in ("get_unique_id", "NcclCommunicator", "NCCL_SUM", "NCCL_FLOAT32", "NCCL_FLOAT64")
               if not hasattr(nccl, name)]
    if missing or not getattr(nccl, "available", True):
        lacks = ", ".join(missing) or "its library"
        raise RuntimeError(f"NCCL is not available to CuPy here (cupy.cuda.nccl lacks {lacks}); install it: "
                           f"{NCCL_PACKAGE}")
    return nccl


class Allreducer:
    """Sums CUDA arrays over the ranks of ``comm`` (an MPI communicator) with NCCL, on ``device`` (a
    ``cupy.cuda.Device``, this rank's own)."""

    def __init__(self, comm: Any, rank: int, size: int, device: Any):
        import cupy

        uid, error = None, None
        try:
            nccl = load()
            if rank == 0:
                uid = nccl.get_unique_id()
        except Exception as exc:              # NCCL missing or broken here: tell every rank, then fail everywhere
            error = f"{type(exc).__name__}: {exc}"
        errors = comm.allgather(error)
        if any(errors):
            raise RuntimeError("NCCL could not start: "
                               + "; ".join(f"rank {r}: {e}" for r, e in enumerate(errors) if e))
        uid = comm.bcast(uid, root=0)
        with device:
            self.comm = nccl.NcclCommunicator(size, uid, rank)
        self.nccl, self.cupy, self.device = nccl, cupy, device
        self.kinds = {"float32": nccl.NCCL_FLOAT32, "float64": nccl.NCCL_FLOAT64}

    def allreduce(self, flat: Any) -> Any:
        """The element-wise sum over the ranks of the 1-D CUDA array ``flat``, on this rank's device."""
        if not isinstance(flat, self.cupy.ndarray):
            raise TypeError(f"NCCL sums CUDA arrays; got {type(flat).__module__}.{type(flat).__name__} (host values "
                            f"go through MPI: use xpcnn.distributed.Context.allreduce)")
        if flat.device.id != self.device.id or flat.dtype.name not in self.kinds:
            raise ValueError(f"NCCL all-reduce: expected float32 or float64 on CUDA device {self.device.id}; got "
                             f"{flat.dtype.name} on device {flat.device.id}")
        with self.device:
            flat = self.cupy.ascontiguousarray(flat)
            out = self.cupy.empty_like(flat)
            self.comm.allReduce(flat.data.ptr, out.data.ptr, flat.size, self.kinds[flat.dtype.name],
                                self.nccl.NCCL_SUM, self.cupy.cuda.get_current_stream().ptr)
        return out
