"""Peak memory of an epoch over an image folder (``Dataset.from_folder``) for two folder sizes.

    python benchmarks/bench_folder.py                 # 5,000 and 20,000 MNIST digits as PNG files
    python benchmarks/bench_folder.py --images 500 2000

The digits of the bundled MNIST subset are written as PNG files, one subfolder per class, in a temporary folder;
then, in a fresh process per folder, the statistics pass and one epoch of ``xpcnn.fit`` (LeNet-5, batch 64) run
on ``Dataset.from_folder``. Reported: the peak of NumPy's and Python's allocations (tracemalloc) during the epoch,
the growth of the process's peak resident memory (VmHWM) over it, and what the whole set would take as one float32
array. A folder dataset decodes one batch at a time, so neither figure should grow with the number of images.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys
import tempfile

import numpy as np

import xpcnn

CHILD = r"""
import json, sys, tracemalloc
import xpcnn

def hwm_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM"):
                return int(line.split()[1]) / 1024

data = xpcnn.data.Dataset.from_folder(FOLDER)
model = xpcnn.models.lenet5(seed=0)
loss = xpcnn.nn.CrossEntropyLoss()
opt = xpcnn.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
xpcnn.fit(model, loss, opt, data, epochs=1, batch_size=64, progress=False)     # warm: buffers, pools, imports
before = hwm_mb()
tracemalloc.start()
xpcnn.fit(model, loss, opt, data, epochs=2, start_epoch=1, batch_size=64, progress=False)
peak = tracemalloc.get_traced_memory()[1]
tracemalloc.stop()
print(json.dumps({"images": len(data), "tracemalloc_peak_mb": peak / 2**20, "rss_growth_mb": hwm_mb() - before}))
"""


def write_folder(root: pathlib.Path, count: int) -> pathlib.Path:
    """``count`` digits of the bundled subset as PNG files under ``root/<count>/<class>/``."""
    from PIL import Image

    images, labels = xpcnn.data.load_bundled("train")
    folder = root / str(count)
    for i in range(count):
        j = i % len(images)
        target = folder / str(int(labels[j]))
        target.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.asarray(images[j]).reshape(28, 28).astype(np.uint8)).save(target / f"{i}.png")
    return folder


def measure(folder: pathlib.Path) -> dict:
    child = CHILD.replace("FOLDER", repr(str(folder)))
    done = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(counts=(5000, 20000)) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        return [measure(write_folder(pathlib.Path(tmp), count)) for count in counts]


def report(rows: list[dict]) -> str:
    lines = ["Peak memory of a training epoch over an image folder (LeNet-5, batch 64, numpy, float32)", "",
             "| images | peak allocations in the epoch (tracemalloc) | growth of peak RSS | the set as one float32 "
             "array |", "| ---: | ---: | ---: | ---: |"]
    for r in rows:
        whole = r["images"] * 28 * 28 * 4 / 2**20
        lines.append(f"| {r['images']:,} | {r['tracemalloc_peak_mb']:.1f} MB | {r['rss_growth_mb']:.1f} MB | "
                     f"{whole:.1f} MB |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, nargs="+", default=[5000, 20000])
    print(report(run(tuple(parser.parse_args().images))))


if __name__ == "__main__":
    main()
