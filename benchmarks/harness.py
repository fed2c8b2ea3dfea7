"""Timing helpers shared by the benchmarks: alternating blocks, min and median, ratios from one run.

OpenBLAS and PyTorch's OpenMP threads keep spinning for ~0.1 s after their last call, so running
one library right after the other slows the second. Every comparison here alternates short
blocks of each contender with a pause between them, repeats that at least 7 times, and reports
the minimum and the median per call; ratios compare figures taken in the same run.
"""

from __future__ import annotations

import gc
import pathlib
import platform
import re
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from xpcnn.atomic import write_atomic

PAUSE_S = 0.25


@dataclass
class Timing:
    name: str
    per_call: list[float]

    @property
    def min(self) -> float:
        return min(self.per_call)

    @property
    def median(self) -> float:
        return statistics.median(self.per_call)


def training_step(model, x, y, optimizer) -> Callable[[], None]:
    """One step of the README's hand-written loop, the step every benchmark times or counts: forward,
    cross-entropy, backward, optimizer step, zero_grad."""
    import xpcnn

    loss_fn = xpcnn.nn.CrossEntropyLoss()

    def step():
        loss_fn(model(x), y)
        model.backward(loss_fn.backward())
        optimizer.step()
        model.zero_grad()

    return step


def compare(contenders: dict[str, Callable[[], object]], calls_per_block: int, blocks: int = 7,
            warmup: int = 2) -> dict[str, Timing]:
    """Time each contender in alternating blocks; returns seconds per call for every block."""
    for fn in contenders.values():
        for _ in range(warmup):
            fn()
    results = {name: Timing(name, []) for name in contenders}
    for _ in range(blocks):
        for name, fn in contenders.items():
            gc.collect()
            time.sleep(PAUSE_S)
            start = time.perf_counter()
            for _ in range(calls_per_block):
                fn()
            results[name].per_call.append((time.perf_counter() - start) / calls_per_block)
    return results


def synchronizers(backend, torch) -> tuple[str, Callable[[], None], Callable[[], None]]:
    """PyTorch's device matching ``backend`` ("cuda" or "cpu"), and for each side a function that waits
    until its queued GPU work is done (a no-op on a CPU), so that a timed call includes that work."""
    device = "cuda" if backend.name == "cupy" or str(backend.device).startswith("cuda") else "cpu"
    sync = lambda: None  # noqa: E731
    if backend.name == "cupy":
        import cupy

        sync = cupy.cuda.Device().synchronize
    return device, sync, torch.cuda.synchronize if device == "cuda" else (lambda: None)


def gemm_gflops(n: int = 1024, repeats: int = 10) -> float:
    """This machine's float32 GEMM rate through NumPy's BLAS (best of ``repeats``)."""
    a = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    b = a.T.copy()
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def machine() -> str:
    import os

    from xpcnn.machine import cpu

    return f"{cpu()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def write_section(results: pathlib.Path, name: str, text: str) -> None:
    """Put ``text`` between ``name``'s markers in ``results``, replacing what was there (or appending)."""
    begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
    block = f"{begin}\n{text.rstrip()}\n{end}"
    current = results.read_text() if results.exists() else (
        "# Benchmark results\n\nWritten by `benchmarks/run_all.py`; each backend's section is replaced by its "
        "own run. Ratios are xpcnn time / PyTorch time from the same run (below 1: xpcnn is faster).\n")
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.S)
    updated = pattern.sub(lambda _: block, current) if pattern.search(current) else current.rstrip() + "\n\n" + block
    write_atomic(results, (updated.rstrip() + "\n").encode())      # an interrupted run leaves the old file whole
