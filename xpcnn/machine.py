"""Facts about the machine that benchmark figures and ``xpcnn info`` are reported with: the CPU by family, model
and stepping (a VM's "AMD EPYC" names Zen 4 and Zen 5 alike) and the kernels NumPy's BLAS runs. Read only: the
one thing measured here, which OpenBLAS kernels run convolution-shaped products fastest, is measured in child
processes (OpenBLAS picks its kernels when it loads, from ``OPENBLAS_CORETYPE``; a running process keeps them)."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from typing import NamedTuple

from . import settings

__all__ = ["AVX512_KERNELS", "KernelTiming", "blas_kernels", "cpu", "kernel_choices", "loaded_kernels", "time_kernels"]


def _first_processor(cpuinfo: str) -> dict:
    """The first processor's fields in ``cpuinfo`` (Linux's /proc/cpuinfo); empty where there is none."""
    fields = {}
    try:
        with open(cpuinfo) as handle:
            for line in handle:
                field, _, value = line.partition(":")
                if not field.strip() and fields:
                    break
                fields.setdefault(field.strip(), value.strip())
    except OSError:
        pass
    return fields


def cpu(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The CPU as /proc/cpuinfo names it, with its family, model and stepping where it gives them: a VM's "AMD EPYC"
    names Zen 4 (family 25) and Zen 5 (family 26) alike."""
    fields = _first_processor(cpuinfo)
    name = fields.get("model name") or platform.processor() or platform.machine()
    ids = [f"{field.replace('cpu ', '').lower()} {fields[field]}"
           for field in ("cpu family", "model", "stepping", "CPU implementer", "CPU part") if field in fields]
    return f"{name} ({', '.join(ids)})" if ids else name


AVX512_KERNELS = ("SkylakeX", "Cooperlake", "SapphireRapids")   # OpenBLAS's core types that use AVX-512


def _blas_libraries() -> list[dict] | None:
    """threadpoolctl's description of each BLAS NumPy loaded; None without threadpoolctl."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    return [info for info in threadpool_info() if info.get("user_api") == "blas"]


def blas_kernels(cpuinfo: str = "/proc/cpuinfo") -> str:
    """Which kernels NumPy's BLAS runs, and whether the CPU has AVX-512 that OpenBLAS's detection left unused."""
    found = _blas_libraries()
    if found is None:
        return "unknown (threadpoolctl is not installed)"
    if not found:
        return "none found"
    avx512 = {"avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512cd"} <= set(
        _first_processor(cpuinfo).get("flags", "").split())
    described = []
    for info in found:
        text = f"{info.get('internal_api')} {info.get('version')}"
        kernels = info.get("architecture")
        if kernels:
            text += f", {kernels} kernels"
            if info.get("internal_api") == "openblas" and kernels not in AVX512_KERNELS and avx512:
                text += " on a CPU with AVX-512"
        described.append(text)
    return "; ".join(described)


# OpenBLAS core types worth measuring, by what the CPU must run for them (the flags /proc/cpuinfo lists)
KERNEL_NEEDS = {"Haswell": {"avx2", "fma"},
                "SkylakeX": {"avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512cd"}}


def loaded_kernels() -> str | None:
    """The core type whose kernels this process's OpenBLAS runs (e.g. "SkylakeX"); None where NumPy's BLAS is not
    an OpenBLAS that picks its kernels when it loads (or threadpoolctl, which tells, is not installed)."""
    found = [info for info in _blas_libraries() or () if info.get("internal_api") == "openblas"]
    return found[0].get("architecture") or None if found else None


def kernel_choices(cpuinfo: str = "/proc/cpuinfo") -> tuple[str, ...]:
    """The OpenBLAS core types this CPU can run that are worth a measurement: the one OpenBLAS loaded (its own
    pick, or ``OPENBLAS_CORETYPE``'s) first, then AVX2's Haswell and AVX-512's SkylakeX where the CPU has their
    instructions; () where NumPy's BLAS does not pick kernels at load (not OpenBLAS, or one built for one CPU)."""
    loaded = loaded_kernels()
    if loaded is None:
        return ()
    flags = set(_first_processor(cpuinfo).get("flags", "").split())
    return (loaded, *(name for name, needs in KERNEL_NEEDS.items() if name != loaded and needs <= flags))


# The products one measurement times: the three of a 3x3 convolution (forward, weight and input gradient) at
# 16, 32 and 64 channels on 32x32, 16x16 and 8x8 images, batch 32, and LeNet-5's two layers' forwards, as
# (rows, inner, columns) the way im2col makes them.
_PRODUCTS = ((16, 144, 32768), (16, 32768, 144), (144, 16, 32768), (32, 288, 8192), (32, 8192, 288),
             (288, 32, 8192), (64, 576, 2048), (64, 2048, 576), (576, 64, 2048), (6, 25, 25088), (16, 150, 3200))
_TIMER = """
import sys
del sys.path[0]                     # the working folder: a json.py there must not stand in for the module
import json, time
import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits       # a dependency of xpcnn
rng = np.random.default_rng(0)
pairs = [(rng.standard_normal((m, k), dtype=np.float32), rng.standard_normal((k, n), dtype=np.float32))
         for m, k, n in json.loads(sys.argv[1])]
best = [float("inf")] * len(pairs)
with threadpool_limits(1, user_api="blas"):
    for _ in range(int(sys.argv[2])):
        for i, (a, b) in enumerate(pairs):
            start = time.perf_counter()
            a @ b
            best[i] = min(best[i], time.perf_counter() - start)
keeps_bits = None
if sys.argv[3] == "1":              # the check xpcnn.parallel makes before it lets the load change BLAS's threads
    from xpcnn.parallel import blas_keeps_bits
    keeps_bits = blas_keeps_bits()
kernels = [i.get("architecture") for i in threadpool_info() if i.get("internal_api") == "openblas"]
print(json.dumps({"seconds": sum(best), "kernels": kernels[0] if kernels else None, "keeps_bits": keeps_bits}))
"""


class KernelTiming(NamedTuple):
    """One core type measured: the products' seconds on one thread, and whether its products give the same bits
    on one thread as on the cores xpcnn uses (:func:`xpcnn.parallel.blas_keeps_bits`; None: not checked)."""

    seconds: float
    keeps_bits: bool | None


def time_kernels(names: tuple[str, ...], rounds: int = 2, repeats: int = 3,
                 check_bits: bool = False) -> dict[str, KernelTiming]:
    """How long one thread of each OpenBLAS core type in ``names`` takes for a set of convolution-shaped float32
    products (the fastest of ``repeats`` per product, summed), each measured in a child process started with
    ``OPENBLAS_CORETYPE`` set; the children alternate over ``rounds`` and each name keeps its fastest round, so
    a moment of noise does not decide. With ``check_bits`` the first round's children also run
    :func:`xpcnn.parallel.blas_keeps_bits`. A core type that does not load as asked is left out."""
    found: dict[str, KernelTiming] = {}
    for round_ in range(rounds):
        for name in names:
            check = "1" if check_bits and round_ == 0 else "0"
            done = subprocess.run([sys.executable, "-c", _TIMER, json.dumps(_PRODUCTS), str(repeats), check],
                                  env=settings.for_child(OPENBLAS_CORETYPE=name), capture_output=True, text=True,
                                  timeout=120)
            if done.returncode != 0:
                continue
            result = json.loads(done.stdout)
            if (result["kernels"] or "").lower() == name.lower():
                timing = found.get(name)
                found[name] = KernelTiming(min(result["seconds"], timing.seconds) if timing else result["seconds"],
                                           result["keeps_bits"] if timing is None else timing.keeps_bits)
    return found
