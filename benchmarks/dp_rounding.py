"""How far data-parallel arithmetic drifts from one process taking each batch whole, in xpcnn and in PyTorch.

    OPENBLAS_NUM_THREADS=1 python benchmarks/dp_rounding.py           # needs torch==2.13.0 (CPU)

The issue's command (`xpcnn train --epochs 1 --batch-size 64 --optimizer sgd --lr 0.05 --schedule none`, LeNet-5,
SGD momentum 0.9, 157 steps on the bundled data) trained twice in one process: once taking every batch of 64 whole,
once summing the gradients of its two shards of 32 (what 2 ranks and their all-reduce compute; the MPI tests show
`mpiexec -n 2` equals this bit for bit). The same is done with PyTorch (autograd, torch.optim.SGD), which is what
DistributedDataParallel computes. Printed: ||w_shards - w_whole|| / ||w_whole|| after the epoch, for float32 and
float64 and two learning rates. It shows whether a gap is xpcnn's or the arithmetic's.
"""

from __future__ import annotations

import numpy as np

import xpcnn
from bench_networks import torch_twin
from xpcnn import nn
from xpcnn import train as training
from xpcnn.distributed import shard

BATCH = 64


def _batches(n: int, ranks: int):
    """Each global batch as its ranks' index ranges, in the epoch order the command line uses."""
    order = training.epoch_order(0, 0, n)
    for start in range(0, n, BATCH):
        stop = min(start + BATCH, n)
        yield stop - start, [order[slice(*shard(start, stop, rank, ranks))] for rank in range(ranks)]


def ours(data, lr: float, dtype: str, ranks: int) -> np.ndarray:
    model = xpcnn.models.lenet5(seed=0, dtype=dtype)
    opt = xpcnn.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    images, labels = data
    for size, parts in _batches(len(labels), ranks):
        total = None
        for rows in parts:
            loss_fn(model(xpcnn.asarray(images[rows], dtype=dtype)), xpcnn.asarray(labels[rows]))
            model.backward(loss_fn.backward(len(rows) / size))
            grad = opt.flat_gradients()
            model.zero_grad()
            total = grad if total is None else total + grad
        opt.step(flat_grad=total)
    return np.asarray(xpcnn.to_numpy(opt.flat_parameters()), dtype=np.float64)


def theirs(torch, data, lr: float, dtype: str, ranks: int) -> np.ndarray:
    with xpcnn.use_backend("numpy"):
        model = xpcnn.models.lenet5(seed=0, dtype=dtype)
        net = torch_twin(torch, model, "cpu").to(getattr(torch, dtype))
        with torch.no_grad():              # the twin copies into float32: take float64 weights again
            for theirs_, ours_ in zip(net.parameters(), model.parameters(), strict=True):
                theirs_.copy_(torch.as_tensor(ours_.data))
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss(reduction="sum")
    images = torch.as_tensor(data[0]).to(getattr(torch, dtype))
    labels = torch.as_tensor(data[1]).long()
    for size, parts in _batches(len(labels), ranks):
        total = None
        for rows in parts:
            net.zero_grad()
            index = torch.as_tensor(rows)
            (loss_fn(net(images[index]), labels[index]) / size).backward()
            grads = [p.grad.clone() for p in net.parameters()]
            total = grads if total is None else [t + g for t, g in zip(total, grads)]
        for p, g in zip(net.parameters(), total):
            p.grad = g
        opt.step()
    return torch.cat([p.detach().reshape(-1) for p in net.parameters()]).double().numpy()


def main():
    import torch

    torch.set_num_threads(1)
    data = {}
    with xpcnn.use_backend("numpy"):
        for dtype in ("float32", "float64"):       # the images exactly as the command line normalizes them
            bundled = xpcnn.data.load_dataset("bundled", "train", dtype=dtype)
            data[dtype] = (xpcnn.to_numpy(bundled.images), xpcnn.to_numpy(bundled.labels))

    def gap(run, *args):
        whole, shards = run(*args, 1), run(*args, 2)
        return np.linalg.norm(shards - whole) / np.linalg.norm(whole)

    print("||w(2 shards of 32 summed) - w(batch of 64 whole)|| / ||w(whole)|| after the issue's epoch (157 steps)\n")
    print("| lr | dtype | xpcnn | PyTorch |\n| ---: | --- | ---: | ---: |")
    for lr in (0.05, 0.01):
        for dtype in ("float32", "float64"):
            with xpcnn.use_backend("numpy"):
                mine = gap(ours, data[dtype], lr, dtype)
            print(f"| {lr} | {dtype} | {mine:.2g} | {gap(lambda *a: theirs(torch, *a), data[dtype], lr, dtype):.2g} |",
                  flush=True)


if __name__ == "__main__":
    main()
