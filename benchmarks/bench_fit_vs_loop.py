"""``xpcnn.fit`` against the README's hand-written loop, step for step (issue 11: "fit no faster than that loop
by more than noise": speed must not depend on which entry a user calls).

    python benchmarks/bench_fit_vs_loop.py                 # LeNet-5, batches 64 and 256, numpy backend

Both train LeNet-5 on the same 4,096 random images (a multiple of both batches) for one epoch: ``fit`` (shuffling, batching, its progress
counters and one loss read-back every 10 steps included; no progress bar, no validation) and the loop of
"Training from Python" over the same batches in order. Blocks alternate (see ``harness.compare``); the table
gives milliseconds per step, min / median of the blocks, and fit's median over the loop's.
"""

from __future__ import annotations

import argparse

import numpy as np

import xpcnn
from harness import compare, training_step

IMAGES = 4096


def run(batches=(64, 256), blocks=5, images=IMAGES):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, images)
    images = rng.integers(0, 256, (images, 1, 28, 28), dtype=np.uint8)
    data = xpcnn.data.Dataset.from_numpy(images, labels)
    rows = []
    for batch in batches:
        steps = len(labels) // batch
        model = xpcnn.models.lenet5()
        optimizer = xpcnn.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        loss_fn = xpcnn.nn.CrossEntropyLoss()

        def by_fit():
            xpcnn.fit(model, loss_fn, optimizer, data, epochs=1, batch_size=batch, progress=False)

        chunks = [(data.images[i * batch:(i + 1) * batch], data.labels[i * batch:(i + 1) * batch])
                  for i in range(steps)]

        def by_loop():
            for x, y in chunks:
                training_step(model, x, y, optimizer)()

        timings = compare({"fit": by_fit, "loop": by_loop}, calls_per_block=1, blocks=blocks)
        per_step = {name: (t.min / steps * 1e3, t.median / steps * 1e3) for name, t in timings.items()}
        rows.append((batch, per_step["fit"], per_step["loop"]))
    return rows


def report(rows, images=IMAGES) -> str:
    lines = [f"LeNet-5, one epoch of {images:,} images: xpcnn.fit vs the README's hand-written loop "
             f"({xpcnn.get_backend()}), ms per step, min / median of the blocks", "",
             "| batch | fit | loop | fit / loop (median) |", "| ---: | ---: | ---: | ---: |"]
    for batch, fit, loop in rows:
        lines.append(f"| {batch} | {fit[0]:.2f} / {fit[1]:.2f} | {loop[0]:.2f} / {loop[1]:.2f} | "
                     f"{fit[1] / loop[1]:.2f} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--blocks", type=int, default=5)
    args = parser.parse_args()
    print(report(run(args.batch, args.blocks)))


if __name__ == "__main__":
    main()
