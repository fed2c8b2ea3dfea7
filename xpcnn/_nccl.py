"""The CUDA-only part of data-parallel training: one GPU per local rank, gradients summed with NCCL.

UNTESTED: no GPU has been available to this project. ``ci/gpu.sh`` runs it on a machine with 2+ GPUs. The
NCCL id is made on rank 0 and broadcast over MPI; if rank 0 fails to make it, the failure is broadcast too,
so no rank waits forever for an id that never comes.
"""

from __future__ import annotations

from typing import Any

from . import backend as _backend


class Allreducer:
    def __init__(self, context: Any):
        import cupy
        from cupy.cuda import nccl

        count = cupy.cuda.runtime.getDeviceCount()
        device = context.local_rank % count
        _backend.set_backend("cupy", device)
        uid, error = None, None
        if context.rank == 0:
            try:
                uid = nccl.get_unique_id()
            except Exception as exc:           # NCCL missing or broken: tell every rank, then fail everywhere
                error = f"{type(exc).__name__}: {exc}"
        uid, error = context.comm.bcast((uid, error), root=0)
        if error is not None:
            raise RuntimeError(f"NCCL could not start on rank 0 ({error}); install the CUDA extra's NCCL")
        with cupy.cuda.Device(device):
            self.comm = nccl.NcclCommunicator(context.size, uid, context.rank)
        self.nccl, self.cupy = nccl, cupy

    def allreduce(self, flat: Any) -> Any:
        out = self.cupy.empty_like(flat)
        kinds = {"float32": self.nccl.NCCL_FLOAT32, "float64": self.nccl.NCCL_FLOAT64}
        self.comm.allReduce(flat.data.ptr, out.data.ptr, flat.size, kinds[flat.dtype.name], self.nccl.NCCL_SUM,
                            self.cupy.cuda.get_current_stream().ptr)
        return out
