"""Whole-network training step and inference: xpcnn on the selected backend vs PyTorch, timed in one process.

    python benchmarks/bench_networks.py                          # numpy vs PyTorch CPU: LeNet-5 at 64 and 256
    python benchmarks/bench_networks.py --network cifar --batch 64
    XPCNN_BACKEND=cupy python benchmarks/bench_networks.py --network lenet5 cifar --batch 256 1024   # vs CUDA

A training step is forward, cross-entropy, backward and an SGD (momentum 0.9) update, float32. Two networks:
LeNet-5 on MNIST images from the bundled subset (about 2.5 MFLOP per image and step), a CIFAR-like
network on random 3x32x32 inputs (conv 64@3x3 'same', ReLU, pool 2, conv 64@3x3 'same', ReLU, pool 2,
dense 10; about 66 MFLOP per image and step), ResNet-8 (BatchNorm, residual blocks) on random 3x32x32
inputs, and MobileNet (depthwise-separable blocks, grouped convolutions) on the MNIST images. PyTorch runs the
same layers with the same initial weights.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import xpcnn
from harness import compare, gemm_gflops, synchronizers, training_step
from xpcnn import nn


def cifar_like(seed: int = 0) -> nn.Sequential:
    rng = np.random.default_rng(seed)
    return nn.Sequential(
        nn.Conv2D(3, 64, 3, padding=1, rng=rng), nn.ReLU(), nn.MaxPool2D(2),
        nn.Conv2D(64, 64, 3, padding=1, rng=rng), nn.ReLU(), nn.MaxPool2D(2),
        nn.Flatten(), nn.Linear(64 * 8 * 8, 10, init="glorot_uniform", rng=rng),
        input_shape=(3, 32, 32), name="cifar_like")


NETWORKS = {
    "lenet5": ("LeNet-5", lambda: xpcnn.models.lenet5(seed=0)),
    "cifar": ("CIFAR-like", cifar_like),
    "resnet8": ("ResNet-8", lambda: xpcnn.models.resnet8(in_channels=3, seed=0)),
    "mobilenet": ("MobileNet", lambda: xpcnn.models.mobilenet(seed=0)),
}


def torch_twin(torch, model: nn.Module, device):
    """The same network in PyTorch (containers, residual blocks and BatchNorm included), with the xpcnn
    model's current weights and running statistics."""
    tnn = torch.nn

    class Residual(tnn.Module):
        def __init__(self, body, shortcut):
            super().__init__()
            self.body, self.shortcut = body, shortcut

        def forward(self, x):
            return self.body(x) + (x if self.shortcut is None else self.shortcut(x))

    def build(layer):
        config = layer.config()
        if isinstance(layer, nn.Sequential):
            return tnn.Sequential(*(build(child) for child in layer.layers))
        if isinstance(layer, nn.Residual):
            return Residual(build(layer.body), None if layer.shortcut is None else build(layer.shortcut))
        if isinstance(layer, nn.Conv2D):
            return tnn.Conv2d(config["in_channels"], config["out_channels"], config["kernel_size"],
                              stride=config["stride"], padding=config["padding"], dilation=config["dilation"],
                              groups=config.get("groups", 1), bias=layer.bias is not None)
        if isinstance(layer, nn.BatchNorm2D):
            return tnn.BatchNorm2d(config["num_features"], eps=config["eps"], momentum=config["momentum"],
                                   affine=config["affine"])
        if isinstance(layer, nn.Linear):
            return tnn.Linear(config["in_features"], config["out_features"], bias=layer.bias is not None)
        if isinstance(layer, nn.MaxPool2D):
            return tnn.MaxPool2d(config["kernel_size"], config["stride"], config["padding"])
        if isinstance(layer, nn.GlobalAvgPool2D):
            return tnn.Sequential(tnn.AdaptiveAvgPool2d(1), tnn.Flatten())
        if isinstance(layer, (nn.ReLU, nn.Flatten)):
            return tnn.ReLU() if isinstance(layer, nn.ReLU) else tnn.Flatten()
        raise TypeError(f"torch_twin: no PyTorch counterpart for {layer!r}")

    net = build(model).to(device)
    with torch.no_grad():   # both list parameters (and buffers) in the order the layers were given
        for theirs, ours in zip(net.parameters(), model.parameters(), strict=True):
            theirs.copy_(torch.as_tensor(xpcnn.to_numpy(ours.data)))
        buffers = [b for name, b in net.named_buffers() if not name.endswith("num_batches_tracked")]
        for theirs, ours in zip(buffers, model.buffers(), strict=True):
            theirs.copy_(torch.as_tensor(xpcnn.to_numpy(ours.data)))
    return net


def with_statistics(model: nn.Module, seed: int = 7) -> nn.Module:
    """``model`` in eval mode with BatchNorm running statistics drawn far from their initial (0, 1), so that the
    eval-mode normalization shows in its outputs (an exporter or a converter that lost a buffer would)."""
    rng = np.random.default_rng(seed)
    for name, buffer in model.named_buffers():
        values = (rng.uniform(0.5, 2.0, buffer.shape) if name.endswith("running_var")
                  else rng.normal(0, 0.5, buffer.shape))
        buffer.data = xpcnn.asarray(values.astype(np.float32))
    return model.eval()


def forward_flops(model: nn.Module) -> float:
    """Multiply-adds x 2 of one image's forward pass through the convolutions and dense layers."""
    shapes = model._trace_shapes(model.input_shape)
    total = 0.0
    for layer in model.modules():
        if isinstance(layer, (nn.Conv2D, nn.Linear)):   # each output element: a dot product with a weight row
            total += 2 * int(np.prod(shapes[id(layer)])) * int(np.prod(layer.weight.shape[1:]))
    return total


def _inputs(network: str, batch: int):
    if network in ("lenet5", "mobilenet"):
        images, labels = xpcnn.data.load_bundled("train")
        return xpcnn.data.normalize(images[:batch]), labels[:batch].astype(np.int64)
    rng = np.random.default_rng(0)
    return rng.standard_normal((batch, 3, 32, 32)).astype(np.float32), rng.integers(0, 10, batch).astype(np.int64)


def run(networks=("lenet5",), batches=(64, 256), blocks=7, seconds_per_block=0.6):
    import torch

    xpcnn.parallel.tune_allocator()          # as the README's loop does (fit and the CLI call it too)
    backend = xpcnn.get_backend()
    device, sync, torch_sync = synchronizers(backend, torch)
    rows = []
    for network in networks:
        title, build = NETWORKS[network]
        for batch in batches:
            x_host, y_host = _inputs(network, batch)
            model = build()
            flops = 3 * forward_flops(model)
            x, y = xpcnn.asarray(x_host), xpcnn.asarray(y_host)
            step = training_step(model, x, y, xpcnn.optim.SGD(model.parameters(), lr=0.01, momentum=0.9))
            net = torch_twin(torch, model, device)
            topt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
            tx, ty = torch.as_tensor(x_host, device=device), torch.as_tensor(y_host, device=device)

            def ours_step():
                step()
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

            for kind, contenders in (("train step", {"xpcnn": ours_step, "torch": torch_step}),
                                     ("inference", {"xpcnn": ours_infer, "torch": torch_infer})):
                t = compare(contenders, _calls(contenders, seconds_per_block), blocks=blocks)
                rows.append(dict(network=title, kind=kind, batch=batch, ours=t["xpcnn"], theirs=t["torch"],
                                 flops=flops * batch if kind == "train step" else None))
    return backend, device, rows


def _calls(contenders, seconds_per_block) -> int:
    """Calls per block so that the slower contender's block lasts about ``seconds_per_block``."""
    slowest = 0.0
    for fn in contenders.values():
        fn()                                      # warm up: first calls allocate and build caches
        start = time.perf_counter()
        fn()
        slowest = max(slowest, time.perf_counter() - start)
    return max(1, round(seconds_per_block / max(slowest, 1e-6)))


def report(backend, device, rows, gemm=None):
    import torch

    lines = [f"Whole networks, float32, xpcnn ({backend}) vs PyTorch {torch.__version__} ({device}, "
             f"{torch.get_num_threads()} threads); seconds per call, min / median of the blocks",
             "",
             "| network | what | batch | xpcnn min / median (ms) | PyTorch min / median (ms) | ratio (median) "
             "| xpcnn img/s | PyTorch img/s | xpcnn GFLOP/s" + (" (of GEMM)" if gemm else "") + " |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        ours, theirs = r["ours"], r["theirs"]
        line = (f"| {r['network']} | {r['kind']} | {r['batch']} | {1e3 * ours.min:.2f} / {1e3 * ours.median:.2f} | "
                f"{1e3 * theirs.min:.2f} / {1e3 * theirs.median:.2f} | {ours.median / theirs.median:.2f} | "
                f"{r['batch'] / ours.median:,.0f} | {r['batch'] / theirs.median:,.0f} |")
        if r["flops"]:
            rate = r["flops"] / ours.median / 1e9
            line += f" {rate:.1f}" + (f" ({100 * rate / gemm:.0f}%)" if gemm else "") + " |"
        else:
            line += " |"
        lines.append(line)
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--network", nargs="+", choices=sorted(NETWORKS), default=["lenet5"])
    parser.add_argument("--batch", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--blocks", type=int, default=7)
    args = parser.parse_args()
    backend, device, rows = run(args.network, args.batch, args.blocks)
    gemm = gemm_gflops() if device == "cpu" else None
    print(report(backend, device, rows, gemm))
    if gemm:
        print(f"\nfloat32 GEMM rate of this machine (NumPy, 1024^3): {gemm:.0f} GFLOP/s")


if __name__ == "__main__":
    main()
