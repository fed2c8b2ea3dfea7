"""LeNet-5 training step and inference: xpcnn on the selected backend vs PyTorch, timed in one process.

    python benchmarks/bench_lenet.py                    # numpy vs PyTorch CPU, batch 64 and 256
    XPCNN_BACKEND=cupy python benchmarks/bench_lenet.py --batch 256 1024   # vs PyTorch CUDA

A training step is forward, cross-entropy, backward and an SGD (momentum 0.9) update, float32,
MNIST-shaped input; about 2.5 MFLOP per image.
"""

from __future__ import annotations

import argparse

import numpy as np

import xpcnn
from harness import compare, gemm_gflops

FLOP_PER_IMAGE_STEP = 2.5e6      # 3 x the 0.83 MFLOP of one LeNet-5 forward pass


def torch_lenet(torch, model, device):
    """PyTorch's LeNet-5 with xpcnn's initial weights."""
    nn = torch.nn
    net = nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10)).to(device)
    with torch.no_grad():
        for theirs, (_, ours) in zip(net.parameters(), model.named_parameters()):
            theirs.copy_(torch.as_tensor(xpcnn.to_numpy(ours.data)))
    return net


def synchronizer(backend_name):
    if backend_name == "cupy":
        import cupy

        return cupy.cuda.Device().synchronize
    return lambda: None


def run(batches=(64, 256), blocks=7, seconds_per_block=0.6):
    import torch

    xpcnn.backend.tune_allocator()    # what `xpcnn.fit` and `xpcnn train` do; affects both contenders alike
    backend = xpcnn.get_backend()
    device = "cuda" if backend.name == "cupy" or str(backend.device).startswith("cuda") else "cpu"
    sync = synchronizer(backend.name)
    torch_sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    images, labels = xpcnn.data.load_bundled("train")
    rows = []
    for batch in batches:
        x_host = xpcnn.data.normalize(images[:batch])
        y_host = labels[:batch].astype(np.int64)
        model = xpcnn.models.lenet5(seed=0)
        opt = xpcnn.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        loss_fn = xpcnn.nn.CrossEntropyLoss()
        x, y = xpcnn.asarray(x_host), xpcnn.asarray(y_host)
        net = torch_lenet(torch, model, device)
        topt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
        tx, ty = torch.as_tensor(x_host, device=device), torch.as_tensor(y_host, device=device)

        def ours_step():
            loss_fn(model(x), y)
            model.backward(loss_fn.backward())
            opt.step()
            model.zero_grad()
            sync()

        def torch_step():
            topt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(net(tx), ty).backward()
            topt.step()
            torch_sync()

        def ours_infer():
            model.eval()
            model(x)
            sync()
            model.train()

        def torch_infer():
            with torch.no_grad():
                net(tx)
            torch_sync()

        calls = max(1, int(seconds_per_block * 3000 / batch))
        for kind, contenders in (("train step", {"xpcnn": ours_step, "torch": torch_step}),
                                 ("inference", {"xpcnn": ours_infer, "torch": torch_infer})):
            t = compare(contenders, calls if kind == "train step" else 3 * calls, blocks=blocks)
            rows.append(dict(kind=kind, batch=batch, ours=t["xpcnn"], theirs=t["torch"]))
    return backend, device, rows


def report(backend, device, rows, gemm=None):
    import torch

    lines = [f"LeNet-5, float32, xpcnn ({backend}) vs PyTorch {torch.__version__} ({device}, "
             f"{torch.get_num_threads()} threads); seconds per call, min / median of the blocks",
             "",
             "| what | batch | xpcnn min / median (ms) | PyTorch min / median (ms) | ratio (median) | xpcnn img/s | PyTorch img/s |"
             + (" xpcnn GFLOP/s (of GEMM) |" if gemm else ""),
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |" + (" ---: |" if gemm else "")]
    for r in rows:
        ours, theirs = r["ours"], r["theirs"]
        line = (f"| {r['kind']} | {r['batch']} | {1e3 * ours.min:.2f} / {1e3 * ours.median:.2f} | "
                f"{1e3 * theirs.min:.2f} / {1e3 * theirs.median:.2f} | {ours.median / theirs.median:.2f} | "
                f"{r['batch'] / ours.median:,.0f} | {r['batch'] / theirs.median:,.0f} |")
        if gemm and r["kind"] == "train step":
            rate = FLOP_PER_IMAGE_STEP * r["batch"] / ours.median / 1e9
            line += f" {rate:.1f} ({100 * rate / gemm:.0f}%) |"
        elif gemm:
            line += " |"
        lines.append(line)
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--blocks", type=int, default=7)
    args = parser.parse_args()
    backend, device, rows = run(args.batch, args.blocks)
    gemm = gemm_gflops() if device == "cpu" else None
    print(report(backend, device, rows, gemm))
    if gemm:
        print(f"\nfloat32 GEMM rate of this machine (NumPy, 1024^3): {gemm:.0f} GFLOP/s")


if __name__ == "__main__":
    main()
