"""Where new arrays live: the backend switch, and the settings read from the environment.

This is the only module that reads the environment (``XPCNN_BACKEND``, ``XPCNN_DEVICE``,
``XPCNN_DATA_DIR``, ``XPCNN_TUNE_MALLOC``, ``XPCNN_THREADS``). ``XPCNN_BACKEND`` names the array library that new arrays (parameters, data batches) are created with, and
``XPCNN_DEVICE`` the device where that library has several. Operations in
:mod:`xpcnn.functional` never look here: they take their namespace from their
inputs, so arrays of any backend work with them without configuration.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import os
from dataclasses import dataclass
from typing import Any, Iterator

import array_api_compat
import numpy as np

BACKENDS = ("numpy", "cupy", "torch", "array_api_strict")
ENV_BACKEND = "XPCNN_BACKEND"
ENV_DEVICE = "XPCNN_DEVICE"
ENV_DATA_DIR = "XPCNN_DATA_DIR"
ENV_TUNE_MALLOC = "XPCNN_TUNE_MALLOC"     # "0": leave glibc's malloc as it is (see tune_allocator)
ENV_THREADS = "XPCNN_THREADS"             # batch shards on the numpy backend (see xpcnn.nn.shards); "1": none
# The array API version our code is written against and array_api_strict is pinned to.
ARRAY_API_VERSION = "2024.12"

__all__ = [
    "BACKENDS",
    "Backend",
    "BackendUnavailableError",
    "asarray",
    "asarray_like",
    "available_backends",
    "data_dir_from_env",
    "get_backend",
    "set_backend",
    "to_numpy",
    "tune_allocator",
    "use_backend",
]


class BackendUnavailableError(RuntimeError):
    """The requested backend exists but cannot run here (not installed, no device)."""


@dataclass(frozen=True)
class Backend:
    """The selected backend: its name, array namespace, device and library version."""

    name: str
    xp: Any
    device: Any
    version: str

    def __str__(self) -> str:
        return f"{self.name} {self.version} on {self.device}"


_current: Backend | None = None


def _check_name(name: str) -> str:
    if not isinstance(name, str) or name.strip().lower() not in BACKENDS:
        raise ValueError(
            f"backend must be one of {', '.join(BACKENDS)}; got {name!r}"
            f" (set it with {ENV_BACKEND}=NAME or xpcnn.set_backend(NAME))"
        )
    return name.strip().lower()


def _load_numpy(device: str | None) -> Backend:
    if device not in (None, "", "cpu"):
        raise ValueError(f"device for the numpy backend must be 'cpu' or unset; got {device!r}")
    import array_api_compat.numpy as xp

    if os.environ.get(ENV_TUNE_MALLOC, "1").strip() != "0":
        tune_allocator()
    return Backend("numpy", xp, "cpu", np.__version__)


def _load_cupy(device: str | None) -> Backend:
    try:
        cupy = importlib.import_module("cupy")
    except ImportError as exc:
        raise BackendUnavailableError(
            "backend 'cupy' was requested but CuPy is not installed; install it with "
            "`pip install cupy-cuda12x` (CUDA 12) or `pip install cupy-cuda13x` (CUDA 13); from a checkout of "
            "xpcnn: `pip install -e '.[cuda12]'`"
            f" [{type(exc).__name__}: {exc}]"
        ) from exc
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CUDA driver missing or broken: CuPy raises its own types
        raise BackendUnavailableError(
            f"backend 'cupy' was requested and CuPy {cupy.__version__} is installed, but no CUDA "
            f"device can be used here ({type(exc).__name__}: {exc})"
        ) from exc
    if count == 0:
        raise BackendUnavailableError(
            f"backend 'cupy' was requested and CuPy {cupy.__version__} is installed, but no CUDA device was found"
        )
    index = 0 if device in (None, "") else _cuda_index(device)
    if not 0 <= index < count:
        raise ValueError(f"device for the cupy backend must be a CUDA device index in [0, {count}); got {device!r}")
    import array_api_compat.cupy as xp

    return Backend("cupy", xp, cupy.cuda.Device(index), cupy.__version__)


def _cuda_index(device: str) -> int:
    text = str(device).strip().lower()
    text = text[len("cuda:"):] if text.startswith("cuda:") else text
    if not text.isdigit():
        raise ValueError(f"device for the cupy backend must look like '0' or 'cuda:0'; got {device!r}")
    return int(text)


def _load_torch(device: str | None) -> Backend:
    try:
        torch = importlib.import_module("torch")
    except ImportError as exc:
        raise BackendUnavailableError(
            "backend 'torch' was requested but PyTorch is not installed (`pip install torch`)"
        ) from exc
    if device in (None, ""):
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        text = str(device).strip()
        try:
            dev = torch.device(f"cuda:{text}" if text.isdigit() else text)
        except RuntimeError as exc:
            raise ValueError(f"device for the torch backend must be like 'cpu', 'cuda' or 'cuda:1'; got {device!r}") from exc
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise BackendUnavailableError(f"device {device!r} was requested for torch, but torch sees no CUDA device")
    import array_api_compat.torch as xp

    return Backend("torch", xp, dev, torch.__version__)


def _load_array_api_strict(device: str | None) -> Backend:
    try:
        xp = importlib.import_module("array_api_strict")
    except ImportError as exc:
        raise BackendUnavailableError(
            "backend 'array_api_strict' was requested but it is not installed (`pip install array-api-strict`)"
        ) from exc
    xp.set_array_api_strict_flags(api_version=ARRAY_API_VERSION)
    if device in (None, ""):
        dev = xp.Device("CPU_DEVICE")
    else:
        try:
            dev = xp.Device(str(device))
        except ValueError as exc:
            raise ValueError(f"device for array_api_strict must be CPU_DEVICE, device1 or device2; got {device!r}") from exc
    return Backend("array_api_strict", xp, dev, importlib.metadata.version("array_api_strict"))


_LOADERS = {
    "numpy": _load_numpy,
    "cupy": _load_cupy,
    "torch": _load_torch,
    "array_api_strict": _load_array_api_strict,
}


def _load(name: str, device: Any = None) -> Backend:
    name = _check_name(name)
    return _LOADERS[name](None if device is None else str(device))


def get_backend() -> Backend:
    """The backend new arrays are created on (from ``XPCNN_BACKEND``/``XPCNN_DEVICE`` unless set in code)."""
    global _current
    if _current is None:
        _current = _load(os.environ.get(ENV_BACKEND) or "numpy", os.environ.get(ENV_DEVICE) or None)
    return _current


def set_backend(name: str, device: Any = None) -> Backend:
    """Select the backend for new arrays; fails at once if it cannot run here."""
    global _current
    _current = _load(name, device)
    return _current


@contextlib.contextmanager
def use_backend(name: str, device: Any = None) -> Iterator[Backend]:
    """``with xpcnn.use_backend("cupy"):`` selects a backend for the block, then restores the previous one."""
    global _current
    previous = _current
    backend = _load(name, device)
    _current = backend
    try:
        yield backend
    finally:
        _current = previous


def available_backends() -> dict[str, str]:
    """Each known backend with 'available (version, device)' or why it is not available."""
    report = {}
    for name in BACKENDS:
        try:
            backend = _load(name)
        except (BackendUnavailableError, ValueError) as exc:
            report[name] = f"unavailable: {exc}"
        else:
            report[name] = f"available ({backend.version}, default device {backend.device})"
    return report


def to_numpy(x: Any) -> np.ndarray:
    """A NumPy copy on the host of an array from any backend (or of a Python scalar/list)."""
    if isinstance(x, np.ndarray):
        return x
    if array_api_compat.is_cupy_array(x):
        return x.get()
    if array_api_compat.is_torch_array(x):
        return x.detach().cpu().numpy()
    if type(x).__module__.startswith("array_api_strict"):
        # array_api_strict refuses host conversion from its non-default devices: move first
        return np.asarray(x.to_device(type(x.device)("CPU_DEVICE")))
    return np.asarray(x)


def _convert(obj: Any, xp: Any, dev: Any, dtype: Any) -> Any:
    if array_api_compat.is_array_api_obj(obj):
        if array_api_compat.array_namespace(obj) is xp and array_api_compat.device(obj) == dev:
            return obj if dtype is None or obj.dtype == dtype else xp.astype(obj, dtype)
        obj = to_numpy(obj)
    if dtype is None and isinstance(obj, np.ndarray):
        dtype = getattr(xp, obj.dtype.name)
    return xp.asarray(obj, dtype=dtype, device=dev)


def asarray(obj: Any, dtype: Any = None) -> Any:
    """``obj`` (an array of any backend, a list, a scalar) as an array of the current backend and device.

    ``dtype`` may be a dtype of the current namespace or a name such as ``"float32"``.
    """
    backend = get_backend()
    if isinstance(dtype, str):
        dtype = getattr(backend.xp, dtype)
    return _convert(obj, backend.xp, backend.device, dtype)


def asarray_like(obj: Any, like: Any, dtype: Any = None) -> Any:
    """``obj`` (any backend, or host data) in the namespace and on the device of the array ``like``; ``dtype``
    as in :func:`asarray`."""
    xp = array_api_compat.array_namespace(like)
    if isinstance(dtype, str):
        dtype = getattr(xp, dtype)
    return _convert(obj, xp, array_api_compat.device(like), dtype)


def data_dir_from_env() -> str | None:
    """The folder named by ``XPCNN_DATA_DIR``, if set."""
    return os.environ.get(ENV_DATA_DIR) or None


_ALLOCATOR_TUNED = False


def usable_cores() -> int:
    """The CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:          # not on Linux
        return os.cpu_count() or 1


def threads_from_env() -> int | None:
    """``XPCNN_THREADS`` as a positive int, None when unset; anything else is an error that says so."""
    text = os.environ.get(ENV_THREADS, "").strip()
    if not text:
        return None
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"{ENV_THREADS} must be a whole number >= 1 (1: no batch shards); got {text!r}")
    return int(text)


def tune_allocator() -> bool:
    """Make glibc's malloc keep freed memory in the process instead of returning it to the OS.

    A NumPy training step allocates and frees tens to hundreds of MB; by default glibc hands the pages back
    after every step and page-faults them in again on the next, which costs up to 40% of a LeNet-5 step at
    batch 256 on a 2-core machine. This serves every allocation from the heap (no ``mmap``: glibc maps arrays
    of 32 MB or more by itself and unmaps them on free, whatever its thresholds; a ResNet-8 step at batch 256
    took 28,000 page faults and 17% longer that way) and never trims the heap (as PyTorch's tuning guide does
    by recommending jemalloc or tcmalloc). The process keeps its peak working set resident until it exits.
    Returns True if applied; does nothing (False) where malloc is not glibc's.

    Applied once, process-wide, when the numpy backend is selected (the default), so a hand-written
    training loop is as fast as ``xpcnn.fit``; set ``XPCNN_TUNE_MALLOC=0`` to leave malloc alone (e.g. in
    a long-lived process that must hand memory back to the system).
    """
    global _ALLOCATOR_TUNED
    if _ALLOCATOR_TUNED:
        return True
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_top_pad, m_mmap_max = -1, -2, -4
    # mallopt(3): a trim threshold of -1 disables trimming, an mmap maximum of 0 disables mmap for allocations
    ok = all(mallopt(option, value) == 1 for option, value in (
        (m_mmap_max, 0), (m_trim_threshold, -1), (m_top_pad, 64 << 20)))
    _ALLOCATOR_TUNED = ok
    return ok
