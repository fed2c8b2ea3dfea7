"""Where one training step's time goes, per kind of layer, xpcnn (numpy) against PyTorch on the same network.

    python benchmarks/profile_step.py                       # ResNet-8 on 3x32x32 and LeNet-5, batch 64
    python benchmarks/profile_step.py --network resnet8 --batch 64 256

On a GPU (``XPCNN_BACKEND=cupy``; PyTorch then runs on CUDA too) every timer waits for the device first
(:func:`xpcnn.backend.synchronize`, ``torch.cuda.synchronize``): unsynchronized, a GPU timer reads launch time.

Both run on ONE thread (XPCNN_THREADS=1 and BLAS held to one thread; torch.set_num_threads(1)), so each layer's
time is the work it does, not how it is spread over the cores; bench_networks.py times the whole steps as a user
runs them. xpcnn: every layer's ``_forward`` and ``_backward`` are timed (a container's own time is what is left
when its children's is taken out); the loss and the optimizer step too. PyTorch: its profiler's self time per
operator, summed by the layer kind the operator belongs to. The README's loop step is timed for both
(forward, cross-entropy, backward, SGD with momentum 0.9, gradients cleared), the median of ``--steps`` steps.
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import time

import numpy as np

import xpcnn
from bench_networks import NETWORKS, _inputs, torch_twin
from harness import machine
from xpcnn import nn

KINDS = ("conv", "batchnorm", "relu", "pool", "linear", "residual add", "loss", "optimizer", "other")
_TORCH_KINDS = (     # operator name fragments -> the layer kind they belong to, first match wins
    ("conv", "conv"), ("batch_norm", "batchnorm"), ("threshold_backward", "relu"), ("relu", "relu"),
    ("pool", "pool"), ("mean", "pool"), ("addmm", "linear"), ("aten::mm", "linear"), ("aten::t", "linear"),
    ("softmax", "loss"), ("nll_loss", "loss"), ("cross_entropy", "loss"), ("sgd", "optimizer"),
    ("_foreach", "optimizer"), ("aten::add", "residual add"),
)


def _kind(module) -> str:
    return {nn.Conv2D: "conv", nn.BatchNorm2D: "batchnorm", nn.ReLU: "relu", nn.MaxPool2D: "pool",
            nn.GlobalAvgPool2D: "pool", nn.AvgPool2D: "pool", nn.Linear: "linear",
            nn.Residual: "residual add"}.get(type(module), "other")


def _clock() -> float:
    """Seconds, read once the device has done the work queued on it (nothing to wait for on the CPU)."""
    xpcnn.backend.synchronize()
    return time.perf_counter()


def profile_xpcnn(model, x, y, steps: int) -> tuple[dict, float]:
    """Milliseconds per step by layer kind (the medians over ``steps``), and the step's median."""
    totals = collections.defaultdict(list)
    current = collections.Counter()
    inner = [0.0]                          # time spent in children, to subtract from a container's own

    def timed(module, method):
        kind = _kind(module)

        def call(*args):
            outer, inner[0] = inner[0], 0.0
            start = _clock()
            try:
                return method(*args)
            finally:
                elapsed = _clock() - start
                current[kind] += elapsed - inner[0]
                inner[0] = outer + elapsed
        return call

    for module in model.modules():
        module._forward = timed(module, module._forward)
        module._backward = timed(module, module._backward)
    loss_fn = nn.CrossEntropyLoss()
    optimizer = xpcnn.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    whole = []
    for step in range(steps + 2):
        current.clear()
        start = _clock()
        out = model(x)
        t = _clock()
        loss = loss_fn(out, y)
        grad = loss_fn.backward()
        current["loss"] += _clock() - t
        model.backward(grad)
        t = _clock()
        optimizer.step()
        model.zero_grad()
        current["optimizer"] += _clock() - t
        whole.append(_clock() - start)
        float(loss)
        if step >= 2:                      # two warm-up steps
            for kind in KINDS:
                totals[kind].append(current[kind])
    return {k: 1e3 * statistics.median(v) for k, v in totals.items()}, 1e3 * statistics.median(whole[2:])


def profile_torch(torch, net, x, y, steps: int) -> tuple[dict, float]:
    from torch.profiler import ProfilerActivity, profile

    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    cuda = x.device.type == "cuda"

    def clock():
        if cuda:
            torch.cuda.synchronize(x.device)
        return time.perf_counter()

    def step():
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(net(x), y).backward()
        optimizer.step()

    for _ in range(2):
        step()
    whole = []
    for _ in range(steps):
        start = clock()
        step()
        whole.append(clock() - start)
    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
    kinds = collections.Counter()
    for event in prof.key_averages():
        name = event.key
        kind = next((k for fragment, k in _TORCH_KINDS if fragment in name), "other")
        self_time = event.self_cpu_time_total + (getattr(event, "self_device_time_total", 0) if cuda else 0)
        kinds[kind] += self_time / 1e3 / steps
    return dict(kinds), 1e3 * statistics.median(whole)


def main():
    import torch

    os.environ.setdefault("XPCNN_THREADS", "1")          # one thread: no batch shards (read at each call)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--network", nargs="+", choices=sorted(NETWORKS), default=["resnet8", "lenet5"])
    parser.add_argument("--batch", type=int, nargs="+", default=[64])
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(1)
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, user_api="blas"):
        print(f"{machine()}; one thread each; PyTorch {torch.__version__}, NumPy {np.__version__}")
        for network in args.network:
            title, build = NETWORKS[network]
            for batch in args.batch:
                x_host, y_host = _inputs(network, batch)
                model = build()
                on = "cuda" if xpcnn.get_backend().name == "cupy" else "cpu"
                net = torch_twin(torch, model, on)
                ours, ours_step = profile_xpcnn(model, xpcnn.asarray(x_host), xpcnn.asarray(y_host), args.steps)
                theirs, theirs_step = profile_torch(torch, net, torch.as_tensor(x_host, device=on),
                                                    torch.as_tensor(y_host, device=on), args.steps)
                print(f"\n{title}, batch {batch}: step {ours_step:.1f} ms (xpcnn) vs {theirs_step:.1f} ms "
                      f"(PyTorch), ratio {ours_step / theirs_step:.2f}\n")
                print("| layer kind | xpcnn (ms) | PyTorch (ms, profiler self time) | ratio |")
                print("| --- | ---: | ---: | ---: |")
                for kind in KINDS:
                    a, b = ours.get(kind, 0.0), theirs.get(kind, 0.0)
                    if a or b:
                        ratio = f"{a / b:.2f}" if b > 0.005 else "-"
                        print(f"| {kind} | {a:.2f} | {b:.2f} | {ratio} |")


if __name__ == "__main__":
    main()
