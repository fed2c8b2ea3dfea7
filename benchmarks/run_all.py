"""Run every benchmark on the selected backend and write its section of benchmarks/RESULTS.md.

    python benchmarks/run_all.py                         # CPU: numpy vs PyTorch CPU (a few minutes)
    XPCNN_BACKEND=cupy python benchmarks/run_all.py      # GPU: cupy vs PyTorch CUDA

Each backend has its own section in RESULTS.md (between markers); a run replaces only its own, so
CPU and GPU figures taken on different machines live side by side. Needs PyTorch (the reference)
and, for the tutorial comparison on CPU, SciPy.
"""

from __future__ import annotations

import argparse
import datetime
import pathlib
import platform
import subprocess
import sys

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_distributed  # noqa: E402
import bench_fit_vs_loop  # noqa: E402
import bench_memory  # noqa: E402
import bench_networks  # noqa: E402
import bench_ops  # noqa: E402
import bench_tutorial  # noqa: E402
import count_ops  # noqa: E402
import mnist_lenet5  # noqa: E402
import xpcnn  # noqa: E402
from harness import gemm_gflops, machine, write_section  # noqa: E402


def versions(backend) -> str:
    import array_api_compat
    import numpy
    import torch

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=HERE, check=True).stdout.strip()
        changed = subprocess.run(["git", "status", "--porcelain", "--", "..", ":!RESULTS.md"], capture_output=True,
                                 text=True, cwd=HERE, check=True).stdout.strip()
        commit += " with uncommitted changes" if changed else ""
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return (f"xpcnn {xpcnn.__version__} (commit {commit}), backend {backend}, numpy {numpy.__version__}, "
            f"array-api-compat {array_api_compat.__version__}, torch {torch.__version__}, "
            f"Python {platform.python_version()}")


def gpu_name() -> str:
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()
    except Exception:  # no CuPy or no device: this is a CPU run
        return ""


def section(args) -> str:
    backend = xpcnn.get_backend()
    gpu = backend.name == "cupy"
    parts = [f"## {backend.name} ({'GPU: ' + gpu_name() if gpu else 'CPU'})", "",
             f"Measured {datetime.date.today()} on {machine()} by `benchmarks/run_all.py`.",
             f"Versions: {versions(backend)}.", ""]
    gemm = None
    if not gpu:
        gemm = gemm_gflops()
        parts += [f"float32 GEMM rate of this machine (NumPy, 1024^3): {gemm:.0f} GFLOP/s.", ""]
    batches = (256, 1024) if gpu else (64, 256)
    print(f"LeNet-5 step and inference, batches {batches} ...", flush=True)
    rows = bench_networks.run(["lenet5"], batches, args.blocks)[2]
    cifar_batches = batches if gpu else (64,)      # on a CPU, a batch-256 step of it takes ~0.5 s
    print(f"CIFAR-like network and ResNet-8 step and inference, batches {cifar_batches} ...", flush=True)
    backend_, device, cifar_rows = bench_networks.run(["cifar", "resnet8"], cifar_batches, args.blocks)
    parts += [bench_networks.report(backend_, device, rows + cifar_rows, gemm), ""]
    if not gpu:
        print("xpcnn.fit vs the hand-written loop ...", flush=True)
        parts += [bench_fit_vs_loop.report(bench_fit_vs_loop.run(batches, args.blocks)), ""]
        print("array operations per step (torch backend) ...", flush=True)
        parts += [count_ops.report(count_ops.rows(["lenet5", "resnet8"]), detail=True), ""]
        if bench_distributed.available():
            print("data-parallel throughput (MPI) ...", flush=True)
            parts += [bench_distributed.report(["lenet5", "resnet8"]), ""]
    print("per-op timings ...", flush=True)
    parts += [bench_ops.report(*bench_ops.run(256 if gpu else 64, args.blocks)), ""]
    if not gpu:
        print("the tutorial layer ...", flush=True)
        parts += [bench_tutorial.report(*bench_tutorial.run(64, args.blocks)), ""]
        print("memory ...", flush=True)
        parts += [bench_memory.report(bench_memory.run()), ""]
    if not args.skip_mnist:
        print("full-MNIST time to accuracy ...", flush=True)
        parts += [mnist_lenet5.report(mnist_lenet5.run(args.data_dir, progress=False)), ""]
    return "\n".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocks", type=int, default=7, help="timed blocks per contender (at least 7)")
    parser.add_argument("--data-dir", default=str(mnist_lenet5.FULL_MNIST))
    parser.add_argument("--skip-mnist", action="store_true", help="leave out the full-MNIST run")
    parser.add_argument("--output", default=str(HERE / "RESULTS.md"))
    args = parser.parse_args()
    text = section(args)
    print(text)
    write_section(pathlib.Path(args.output), xpcnn.get_backend().name, text)
    print(f"\nwritten to {args.output}")


if __name__ == "__main__":
    main()
