"""Facts about the machine that benchmark figures and ``xpcnn info`` are reported with: the CPU by family, model
and stepping (a VM's "AMD EPYC" names Zen 4 and Zen 5 alike) and the kernels NumPy's BLAS runs. Read only."""

from __future__ import annotations

import platform

__all__ = ["AVX512_KERNELS", "blas_kernels", "cpu"]


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
                text += (" on a CPU with AVX-512 (OPENBLAS_CORETYPE=SkylakeX, set before NumPy is imported, selects "
                         "OpenBLAS's AVX-512 kernels; see docs/performance.md)")
        described.append(text)
    return "; ".join(described)
