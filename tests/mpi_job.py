"""A job the distributed tests launch with mpiexec (and once as a single process, for comparison).

    python mpi_job.py MODE OUT          MODE: sgd32 | adam64 | fail | mismatch | single-sgd32 | single-adam64
    python mpi_job.py accumulate OUT RANKS LR [N]
    XPCNN_BACKEND=array_api_strict mpiexec -n 2 python mpi_job.py devices OUT

``accumulate`` is data-parallel arithmetic in one process: each global batch is cut into the ranks' shards
and their gradients are summed in rank order, which is what the all-reduce does. ``devices`` trains on one
array_api_strict device per rank, with a device communicator (NCCL's role) that refuses host arrays.
"""

from __future__ import annotations

import pathlib
import sys

import numpy as np

import xpcnn
from xpcnn import distributed, nn


def train(optimizer: str, dtype: str, ctx):
    images, labels = xpcnn.data.load_bundled("train")
    mnist = {"mean": xpcnn.data.MEAN, "std": xpcnn.data.STD}       # as load_dataset("bundled"), the reference's
    data = xpcnn.data.Dataset.from_numpy(images[:600], labels[:600], dtype=dtype, **mnist)
    test = xpcnn.data.Dataset.from_numpy(images[600:850], labels[600:850], dtype=dtype, **mnist)
    model = xpcnn.models.lenet5(seed=0, dtype=dtype)
    if optimizer == "sgd":
        opt = xpcnn.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    else:
        opt = xpcnn.optim.Adam(model.parameters(), lr=1e-3)
    # 600 images in global batches of 64: 9 full batches and one of 24 (uneven on 3 ranks: 22/21/21 and 8/8/8).
    # float32 runs one epoch: after it, rounding differences of 1e-7 start flipping near-ties of max pooling,
    # which moves gradients by 1e-3 (any two summation orders do this, one process with two batch sizes too)
    epochs = 1 if dtype == "float32" else 2
    history = xpcnn.fit(model, nn.CrossEntropyLoss(), opt, data, epochs=epochs, batch_size=64, progress=False,
                        validation_data=test, distributed=ctx)
    return opt.flat_parameters(), history


def accumulate(out: str, ranks: int, lr: float, n: int | None = None):
    """LeNet-5, SGD (momentum 0.9), global batch 64, one epoch of the bundled training data (its first ``n``
    images), as the command line trains it, with every batch's gradient summed over ``ranks`` shards: the
    one-process arithmetic of benchmarks/dp_rounding.py."""
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
    from dp_rounding import ours

    bundled = xpcnn.data.load_dataset("bundled", "train")
    data = (xpcnn.to_numpy(bundled.images)[:n], xpcnn.to_numpy(bundled.labels)[:n])
    np.savez(out, flat=ours(data, lr, "float32", ranks).astype(np.float32))


class DeviceComm:
    """Sums device arrays over the ranks as NCCL would, and refuses host arrays and arrays off its device."""

    def __init__(self, ctx, device):
        self.ctx, self.device, self.sums = ctx, device, 0

    def allreduce(self, flat):
        if isinstance(flat, np.ndarray):
            raise TypeError("a host array was handed to the device communicator")
        if flat.device != self.device:
            raise ValueError(f"an array on {flat.device} was handed to the communicator of {self.device}")
        host = xpcnn.to_numpy(flat)
        out = np.empty_like(host)
        self.ctx.comm.Allreduce(host, out)
        self.sums += 1
        return xpcnn.backend.asarray_like(out, flat)


def devices(out: str):
    distributed.DEVICE_COMMS["array_api_strict"] = lambda ctx, backend: DeviceComm(ctx, backend.device)
    ctx = distributed.init()
    images, labels = xpcnn.data.load_bundled("train")
    data = xpcnn.data.Dataset.from_numpy(images[:64], labels[:64], mean=xpcnn.data.MEAN, std=xpcnn.data.STD)
    model = nn.Sequential(nn.Conv2D(1, 4, 3, padding=1), nn.BatchNorm2D(4), nn.ReLU(), nn.MaxPool2D(2), nn.Flatten(),
                          nn.Linear(4 * 14 * 14, 10))
    opt = xpcnn.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    xpcnn.fit(model, nn.CrossEntropyLoss(), opt, data, epochs=1, batch_size=32, progress=False, validation_data=data,
              distributed=ctx)
    where = {str(p.data.device) for p in model.parameters()}
    print(f"rank {ctx.rank}: backend device {xpcnn.get_backend().device}, "
          f"parameters on {', '.join(sorted(where))}, "
          f"{ctx.device_comm.sums} device sums", flush=True)


def main():
    mode, out = sys.argv[1], sys.argv[2]
    if mode == "devices":
        devices(out)
        return
    if mode == "accumulate":
        accumulate(out, int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5]) if len(sys.argv) > 5 else None)
        return
    if mode.startswith("single-"):
        optimizer, dtype = ("sgd", "float32") if mode == "single-sgd32" else ("adam", "float64")
        flat, history = train(optimizer, dtype, None)
        np.savez(out, flat=xpcnn.to_numpy(flat), loss=history.loss, val=history.val_accuracy, size=1)
        return
    ctx = distributed.init()
    if mode == "fail":
        if ctx.rank == ctx.size - 1:
            raise RuntimeError("this rank fails on purpose")
        ctx.barrier()                     # the others would wait here forever without the abort hook
        return
    if mode == "mismatch":
        model = xpcnn.models.lenet5(num_classes=10 if ctx.rank == 0 else 11)
        try:
            ctx.sync_model(model)
        except ValueError as exc:
            print(f"rank {ctx.rank}: {exc}", flush=True)
        return
    optimizer, dtype = ("sgd", "float32") if mode == "sgd32" else ("adam", "float64")
    flat, history = train(optimizer, dtype, ctx)
    every = ctx.comm.gather(xpcnn.to_numpy(flat), root=0)
    if ctx.is_root:
        assert all(np.array_equal(every[0], other) for other in every), "the ranks' weights differ"
        np.savez(out, flat=every[0], loss=history.loss, val=history.val_accuracy, size=ctx.size)


if __name__ == "__main__":
    main()
