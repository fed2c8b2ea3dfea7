"""Memory of a LeNet-5 training step at batch 256: what one step adds beyond the model and the data.

    python benchmarks/bench_memory.py

Runs in a fresh subprocess per measurement. Two figures: the peak of NumPy's allocations during one
step (tracemalloc, which NumPy reports to), and the growth of the process's peak resident memory
(VmHWM) from before the first step to after several steps, which also counts allocator overhead.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

CHILD = r"""
import json, sys, tracemalloc
import numpy as np
import xpcnn
sys.path.insert(0, HERE)
from harness import training_step

def hwm_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM"):
                return int(line.split()[1]) / 1024

xpcnn.parallel.tune_allocator()
batch = BATCH
images, labels = xpcnn.data.load_bundled("train")
x = xpcnn.asarray(xpcnn.data.normalize(images[:batch]))
y = xpcnn.asarray(labels[:batch].astype(np.int64))
model = xpcnn.models.lenet5(seed=0)
step = training_step(model, x, y, xpcnn.optim.SGD(model.parameters(), lr=0.01, momentum=0.9))

before = hwm_mb()
tracemalloc.start()
step()                                   # momentum buffers are created here: measure the next step
tracemalloc.reset_peak()
base = tracemalloc.get_traced_memory()[0]
step()
peak = tracemalloc.get_traced_memory()[1] - base
tracemalloc.stop()
for _ in range(5):
    step()
print(json.dumps({"batch": batch, "tracemalloc_peak_mb": peak / 2**20, "rss_growth_mb": hwm_mb() - before}))
"""


def measure(batch: int) -> dict:
    child = CHILD.replace("BATCH", str(batch)).replace("HERE", repr(str(pathlib.Path(__file__).resolve().parent)))
    done = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(batches=(64, 256)):
    return [measure(b) for b in batches]


def report(rows):
    lines = ["Memory one LeNet-5 training step adds (numpy backend, float32)", "",
             "| batch | peak allocations during a step (tracemalloc) | growth of peak RSS over 7 steps |",
             "| ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['batch']} | {r['tracemalloc_peak_mb']:.1f} MB | {r['rss_growth_mb']:.1f} MB |")
    return "\n".join(lines)


def main():
    print(report(run()))


if __name__ == "__main__":
    main()
