"""Data-parallel throughput on this machine, and what it implies for N machines.

    python benchmarks/bench_distributed.py                 # LeNet-5 and ResNet-8; needs pip install -e ".[mpi]"

Runs ``xpcnn.fit`` on random data (global batch 128) as 1 rank x 1 thread (BLAS and batch shards), 2 ranks x 1 thread and 1 rank
x 2 threads, each launched with the venv's ``mpiexec``, and reports images/s of the second epoch. Then a cost
model for N nodes: a ring all-reduce moves 2 (N-1)/N of the gradient bytes over each link and takes 2 (N-1)
latency hops; with no overlap of communication and computation, scaling efficiency is
t_compute / (t_compute + t_allreduce), t_compute being one rank's measured step time at 64 images.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
MODELS = {"lenet5": ("LeNet-5", (1, 28, 28)), "resnet8": ("ResNet-8", (3, 32, 32))}
GLOBAL_BATCH = 128
LATENCY_S = 5e-6                    # per hop, a typical cluster interconnect; ethernet is ~10x more


def worker(network: str, images: int) -> None:
    """One rank of a measurement: two epochs of fit on random data; rank 0 prints images/s of the second."""
    import xpcnn
    from xpcnn import distributed

    ctx = distributed.init()
    shape = MODELS[network][1]
    rng = np.random.default_rng(0)
    data = xpcnn.data.Dataset(xpcnn.asarray(rng.standard_normal((images, *shape)).astype(np.float32)),
                              xpcnn.asarray(rng.integers(0, 10, images).astype(np.int64)))
    model = xpcnn.models.build(network, **({"in_channels": shape[0]} if network == "resnet8" else {}))
    opt = xpcnn.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    history = xpcnn.fit(model, xpcnn.nn.CrossEntropyLoss(), opt, data, epochs=2, batch_size=GLOBAL_BATCH,
                        progress=False, distributed=ctx if ctx.size > 1 else None)
    if ctx.is_root:
        params = sum(int(np.prod(p.shape)) for p in model.parameters())
        print(json.dumps({"images_per_s": history.images_per_s[-1], "parameters": params}))


def measure(network: str, ranks: int, threads: int, images: int) -> dict:
    mpiexec = pathlib.Path(sys.executable).parent / "mpiexec"
    env = {**os.environ, "OPENBLAS_NUM_THREADS": str(threads), "OMP_NUM_THREADS": str(threads),
           "XPCNN_THREADS": str(threads)}     # batch shards (xpcnn.nn.shards) count as threads too
    done = subprocess.run([str(mpiexec), "-n", str(ranks), sys.executable, __file__, "--worker", network, str(images)],
                          capture_output=True, text=True, env=env, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def cost_model(title: str, params: int, step_s: float) -> list[str]:
    """Scaling efficiency for N nodes and link speeds, from one rank's step time at 64 images."""
    grad_bytes = 4 * params
    lines = [f"{title}: {params:,} parameters ({grad_bytes / 1e6:.2f} MB of float32 gradients), one rank's step "
             f"{1e3 * step_s:.1f} ms at 64 images", "",
             "| nodes | 1 Gb/s | 10 Gb/s | 25 Gb/s | 100 Gb/s |", "| ---: | ---: | ---: | ---: | ---: |"]
    for nodes in (2, 8, 64):
        cells = []
        for gbit in (1, 10, 25, 100):
            allreduce = 2 * (nodes - 1) / nodes * grad_bytes / (gbit * 1e9 / 8) + 2 * (nodes - 1) * LATENCY_S
            cells.append(f"{100 * step_s / (step_s + allreduce):.0f}%")
        lines.append(f"| {nodes} | " + " | ".join(cells) + " |")
    return lines


def available() -> bool:
    """mpi4py and the venv's mpiexec are installed (pip install -e ".[mpi]")."""
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return False
    return (pathlib.Path(sys.executable).parent / "mpiexec").is_file()


def report(networks) -> str:
    lines = [f"Data-parallel training, global batch {GLOBAL_BATCH}, images/s of the second epoch of xpcnn.fit "
             "(numpy backend, MPI from the mpich wheel)", "",
             "| network | 1 rank x 1 thread | 2 ranks x 1 thread | 1 rank x 2 threads | 2 ranks / 1 rank x 1 |",
             "| --- | ---: | ---: | ---: | ---: |"]
    models = []
    for network in networks:
        images = 2560 if network == "lenet5" else 640
        one = measure(network, 1, 1, images)
        two = measure(network, 2, 1, images)
        threads = measure(network, 1, 2, images)
        lines.append(f"| {MODELS[network][0]} | {one['images_per_s']:,.0f} | {two['images_per_s']:,.0f} | "
                     f"{threads['images_per_s']:,.0f} | {two['images_per_s'] / one['images_per_s']:.2f} |")
        models.append((MODELS[network][0], one["parameters"], 64 / (one["images_per_s"])))
    lines += ["", "Cost model (no overlap of communication and computation; ring all-reduce, "
              f"{LATENCY_S * 1e6:.0f} us per hop): scaling efficiency with 64 images per node and step", ""]
    for title, params, step_s in models:
        lines += cost_model(title, params, step_s) + [""]
    resnet20 = 272_474
    lines += cost_model("ResNet-20 (parameters only; its step taken as 3x ResNet-8's)", resnet20,
                        3 * models[-1][2] if models else 0.1)
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--network", nargs="+", choices=sorted(MODELS), default=sorted(MODELS))
    args = parser.parse_args()
    if args.worker:
        worker(args.worker[0], int(args.worker[1]))
        return
    print(report(args.network))


if __name__ == "__main__":
    main()
