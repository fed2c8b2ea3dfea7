"""Per-op timings against PyTorch: convolution forward and backward, max pooling, at LeNet's shapes
and at a larger CIFAR-like shape (3x32x32 input, 64 output channels, 3x3 'same').

    python benchmarks/bench_ops.py [--batch 64]
    XPCNN_BACKEND=cupy python benchmarks/bench_ops.py --batch 256

xpcnn's ops run in the batch-innermost layout (C, H, W, N) that its layers use; PyTorch's in NCHW.
Backward means all gradients of the op (for conv: input, weight and bias; the first layer of a
network skips the input gradient, measured separately).
"""

from __future__ import annotations

import argparse

import numpy as np

import xpcnn
from harness import compare, synchronizers
from xpcnn import functional as F

CONVS = {
    "LeNet conv1 1x28x28 -> 6@5x5 pad 2": ((1, 28, 28), (6, 1, 5, 5), 2),
    "LeNet conv2 6x14x14 -> 16@5x5": ((6, 14, 14), (16, 6, 5, 5), 0),
    "CIFAR-like 3x32x32 -> 64@3x3 pad 1": ((3, 32, 32), (64, 3, 3, 3), 1),
}
POOLS = {
    "LeNet pool1 6x28x28, 2x2": (6, 28, 28),
    "CIFAR-like pool 64x32x32, 2x2": (64, 32, 32),
}


def run(batch=64, blocks=7):
    import torch

    xpcnn.parallel.tune_allocator()
    backend = xpcnn.get_backend()
    device, sync, tsync = synchronizers(backend, torch)
    xp = backend.xp
    rng = np.random.default_rng(0)
    rows = []
    for name, (chw, wshape, padding) in CONVS.items():
        x_host = rng.standard_normal((batch, *chw)).astype(np.float32)
        w_host = (0.1 * rng.standard_normal(wshape)).astype(np.float32)
        b_host = rng.standard_normal(wshape[0]).astype(np.float32)
        x = xpcnn.asarray(np.ascontiguousarray(x_host.transpose(1, 2, 3, 0)))   # CHWN
        w, b = xpcnn.asarray(w_host), xpcnn.asarray(b_host)
        y, cache = F.conv2d_forward(x, w, b, padding=padding, layout="CHWN")
        dy = xp.ones(y.shape, dtype=y.dtype, device=backend.device)
        tx, tw, tb = (torch.as_tensor(a, device=device) for a in (x_host, w_host, b_host))
        ty = torch.nn.functional.conv2d(tx, tw, tb, padding=padding)
        tdy = torch.ones_like(ty)

        def ours_forward():
            F.conv2d_forward(x, w, b, padding=padding, layout="CHWN")
            sync()

        def ours_backward(input_grad=True):
            F.conv2d_backward(dy, cache, input_grad=input_grad)
            sync()

        def theirs_forward():
            torch.nn.functional.conv2d(tx, tw, tb, padding=padding)
            tsync()

        def theirs_backward(input_grad=True):
            torch.ops.aten.convolution_backward(tdy, tx, tw, [tw.shape[0]], [1, 1], [padding, padding], [1, 1],
                                                False, [0, 0], 1, [input_grad, True, True])
            tsync()

        calls = max(1, 2000 // batch)
        for kind, ours, theirs in (("forward", ours_forward, theirs_forward),
                                   ("backward", ours_backward, theirs_backward),
                                   ("backward, no input grad", lambda: ours_backward(False),
                                    lambda: theirs_backward(False))):
            t = compare({"xpcnn": ours, "torch": theirs}, calls, blocks)
            rows.append((f"conv {name}", kind, t["xpcnn"], t["torch"]))

    for name, chw in POOLS.items():
        x_host = rng.standard_normal((batch, *chw)).astype(np.float32)
        x = xpcnn.asarray(np.ascontiguousarray(x_host.transpose(1, 2, 3, 0)))
        y, cache = F.max_pool2d_forward(x, 2, layout="CHWN")
        dy = xp.ones(y.shape, dtype=y.dtype, device=backend.device)
        tx = torch.as_tensor(x_host, device=device)
        ty, indices = torch.nn.functional.max_pool2d(tx, 2, return_indices=True)
        tdy = torch.ones_like(ty)

        def ours_forward():
            F.max_pool2d_forward(x, 2, layout="CHWN")
            sync()

        def ours_backward():
            F.max_pool2d_backward(dy, cache)
            sync()

        def theirs_forward():
            torch.nn.functional.max_pool2d(tx, 2, return_indices=True)
            tsync()

        def theirs_backward():
            torch.ops.aten.max_pool2d_with_indices_backward(tdy, tx, [2, 2], [2, 2], [0, 0], [1, 1], False, indices)
            tsync()

        calls = max(1, 4000 // batch)
        for kind, ours, theirs in (("forward", ours_forward, theirs_forward),
                                   ("backward", ours_backward, theirs_backward)):
            t = compare({"xpcnn": ours, "torch": theirs}, calls, blocks)
            rows.append((f"max pool {name}", kind, t["xpcnn"], t["torch"]))
    return backend, device, batch, rows


def report(backend, device, batch, rows):
    import torch

    lines = [f"Per-op timings, float32, batch {batch}: xpcnn ({backend}, CHWN layout) vs PyTorch "
             f"{torch.__version__} ({device}, NCHW); milliseconds per call, min / median", "",
             "| op | pass | xpcnn min / median | PyTorch min / median | ratio (median) |",
             "| --- | --- | ---: | ---: | ---: |"]
    for op, kind, ours, theirs in rows:
        lines.append(f"| {op} | {kind} | {1e3 * ours.min:.3f} / {1e3 * ours.median:.3f} | "
                     f"{1e3 * theirs.min:.3f} / {1e3 * theirs.median:.3f} | {ours.median / theirs.median:.2f} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--blocks", type=int, default=7)
    args = parser.parse_args()
    print(report(*run(args.batch, args.blocks)))


if __name__ == "__main__":
    main()
