"""The README's training step quiet and with one busy process per core: xpcnn and PyTorch at the same moments.

    python benchmarks/bench_loaded.py                       # LeNet-5 at 32 and 64, ResNet-8 1x28x28 at 32
    python benchmarks/bench_loaded.py --blocks 5
    python benchmarks/bench_loaded.py --case "LeNet-5 batch 256" "ResNet-8 1x28x28 batch 64"   # sharded steps

A user's laptop is never idle. Each case times both libraries in alternating blocks (benchmarks/harness.py),
first quiet, then while one pure-Python busy loop per core runs in its own process (with those, a fair share of
the CPU makes any step about 2x slower). Printed per case: quiet and loaded median milliseconds per step, each
library's slowdown (loaded / quiet) and the loaded ratio xpcnn / PyTorch. The busy processes are started and
stopped here; nothing else should run meanwhile.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import numpy as np

import xpcnn
from bench_networks import torch_twin
from harness import compare, machine, training_step

CASES = {   # name: (builder, sample shape, batch)
    "LeNet-5 batch 32": (lambda: xpcnn.models.lenet5(seed=0), (1, 28, 28), 32),
    "LeNet-5 batch 64": (lambda: xpcnn.models.lenet5(seed=0), (1, 28, 28), 64),
    "ResNet-8 1x28x28 batch 32": (lambda: xpcnn.models.resnet8(seed=0), (1, 28, 28), 32),
    # sharded by default (two shards on two cores): the shards meet at every BatchNorm
    "LeNet-5 batch 256": (lambda: xpcnn.models.lenet5(seed=0), (1, 28, 28), 256),
    "ResNet-8 1x28x28 batch 64": (lambda: xpcnn.models.resnet8(seed=0), (1, 28, 28), 64),
}
DEFAULT = ["LeNet-5 batch 32", "LeNet-5 batch 64", "ResNet-8 1x28x28 batch 32"]


def _steps(torch, name: str):
    build, shape, batch = CASES[name]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, *shape)).astype(np.float32)
    y = rng.integers(0, 10, batch).astype(np.int64)
    model = build()
    ours = training_step(model, xpcnn.asarray(x), xpcnn.asarray(y),
                         xpcnn.optim.SGD(model.parameters(), lr=0.01, momentum=0.9))
    twin = torch_twin(torch, model, "cpu")
    optimizer = torch.optim.SGD(twin.parameters(), lr=0.01, momentum=0.9)
    tx, ty, loss_fn = torch.as_tensor(x), torch.as_tensor(y), torch.nn.CrossEntropyLoss()

    def theirs():
        loss_fn(twin(tx), ty).backward()
        optimizer.step()
        optimizer.zero_grad()

    return {"xpcnn": ours, "PyTorch": theirs}


def _busy(count: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]


def run(names=tuple(CASES), blocks: int = 7, seconds_per_block: float = 0.4) -> list[dict]:
    import torch

    xpcnn.parallel.tune_allocator()          # as the README's loop does
    rows = []
    for name in names:
        steps = _steps(torch, name)
        calls = max(1, int(seconds_per_block / max(1e-4, _once(steps["xpcnn"]))))
        quiet = compare(steps, calls, blocks)
        procs = _busy(os.cpu_count() or 1)
        try:
            time.sleep(0.5)                          # the busy loops are running before anything is timed
            loaded = compare(steps, max(1, calls // 3), blocks)
        finally:
            for proc in procs:
                proc.kill()
                proc.wait()
        rows.append({"case": name, **{f"{side}_{lib}": t.median * 1e3 for side, timing in (("quiet", quiet),
                     ("loaded", loaded)) for lib, t in timing.items()}})
    return rows


def _once(step) -> float:
    step()
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def report(rows: list[dict]) -> str:
    lines = [f"The README's training step quiet and with one busy process per core ({machine()}; median ms per "
             f"step, xpcnn / PyTorch)", "",
             "| step | quiet | loaded | slowdown xpcnn | slowdown PyTorch | loaded ratio |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['case']} | {r['quiet_xpcnn']:.1f} / {r['quiet_PyTorch']:.1f} | "
                     f"{r['loaded_xpcnn']:.1f} / {r['loaded_PyTorch']:.1f} | "
                     f"{r['loaded_xpcnn'] / r['quiet_xpcnn']:.1f}x | {r['loaded_PyTorch'] / r['quiet_PyTorch']:.1f}x | "
                     f"{r['loaded_xpcnn'] / r['loaded_PyTorch']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", nargs="+", choices=sorted(CASES), default=DEFAULT)
    parser.add_argument("--blocks", type=int, default=7)
    args = parser.parse_args()
    print(report(run(tuple(args.case), args.blocks)))


if __name__ == "__main__":
    main()
