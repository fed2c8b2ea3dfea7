"""Where new arrays live: the backend switch.

``XPCNN_BACKEND`` (read by :mod:`xpcnn.settings`, like every setting) names the array library that new arrays
(parameters, data batches) are created with, and ``XPCNN_DEVICE`` the device where that library has several.
:func:`set_backend` changes the process-wide choice; ``with use_backend(...)`` overrides it for a block, in
this thread or task only (a ``contextvars.ContextVar``). Operations in :mod:`xpcnn.functional` never look here:
they take their namespace from their inputs, so arrays of any backend work with them without configuration.

CuPy allocates every array without an explicit device on its *current* device (array-api-compat's CuPy namespace
drops ``device=`` in ``zeros``, ``full``, ``arange``, ``empty`` and the ``*_like`` functions), so selecting a CUDA
device makes it current, and :func:`on_device` makes an array's device current around the calls that use it.
:func:`preflight` proves a backend computes correctly here; :func:`synchronize` waits for queued device work.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import importlib.metadata
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import array_api_compat
import numpy as np

from . import settings as _settings

BACKENDS = ("numpy", "cupy", "torch", "array_api_strict", "jax")
# The array API version our code is written against and array_api_strict is pinned to.
ARRAY_API_VERSION = "2024.12"

__all__ = [
    "BACKENDS",
    "Backend",
    "BackendUnavailableError",
    "Check",
    "asarray",
    "asarray_like",
    "available_backends",
    "get_backend",
    "on_device",
    "preflight",
    "set_backend",
    "synchronize",
    "to_numpy",
    "use_backend",
]

CUDA_LIBRARIES = ("CuPy's CUDA libraries (NVRTC, cuBLAS, cuRAND) are missing or broken: install them with "
                  "`pip install \"cupy-cuda12x[ctk]>=14\"` (CUDA 12; cupy-cuda13x for CUDA 13), from a checkout of "
                  "xpcnn `pip install -e '.[cuda12]'`")


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


_default: tuple[tuple, Backend] | None = None     # (the settings it came from, the process-wide backend)
_override: contextvars.ContextVar[Backend | None] = contextvars.ContextVar("xpcnn_backend", default=None)


def _check_name(name: str) -> str:
    if not isinstance(name, str) or name.strip().lower() not in BACKENDS:
        raise ValueError(
            f"backend must be one of {', '.join(BACKENDS)}; got {name!r}"
            f" (set it with {_settings.ENV['backend']}=NAME or xpcnn.set_backend(NAME))"
        )
    return name.strip().lower()


def _import(name: str, module: str, how: str) -> Any:
    """The library behind backend ``name``, or BackendUnavailableError saying how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise BackendUnavailableError(f"backend {name!r} was requested but {how} [{type(exc).__name__}: {exc}]") from exc


def _load_numpy(device: str | None) -> Backend:
    if device not in (None, "", "cpu"):
        raise ValueError(f"device for the numpy backend must be 'cpu' or unset; got {device!r}")
    import array_api_compat.numpy as xp

    return Backend("numpy", xp, "cpu", np.__version__)


def _load_cupy(device: str | None) -> Backend:
    cupy = _import("cupy", "cupy", "CuPy is not installed; install it with its CUDA libraries: "
                   "`pip install \"cupy-cuda12x[ctk]>=14\"` (CUDA 12) or `pip install \"cupy-cuda13x[ctk]>=14\"` "
                   "(CUDA 13); from a checkout of xpcnn: `pip install -e '.[cuda12]'`")
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

    backend = Backend("cupy", xp, cupy.cuda.Device(index), cupy.__version__)
    if index not in _CUDA_WORKS:                 # a driver-only host has devices but cannot compute: refuse it here
        failed = [check for check in _run_checks(backend, _QUICK_CHECKS) if not check.ok]
        if failed:
            raise BackendUnavailableError(
                f"backend 'cupy' was requested and CuPy {cupy.__version__} sees {count} CUDA device(s), but on "
                f"device {index} " + "; ".join(f"the {c.name} check fails ({c.detail})" for c in failed)
                + f". {CUDA_LIBRARIES}")
        _CUDA_WORKS.add(index)
    return backend


_CUDA_WORKS: set[int] = set()          # CUDA devices whose quick checks passed in this process


def _whole(text: str) -> bool:
    """ASCII digits only (str.isdigit also takes '²', which int() refuses)."""
    return text.isascii() and text.isdigit()


def _cuda_index(device: str) -> int:
    text = str(device).strip().lower()
    text = text[len("cuda:"):] if text.startswith("cuda:") else text
    if not _whole(text):
        raise ValueError(f"device for the cupy backend must look like '0' or 'cuda:0'; got {device!r}")
    return int(text)


def _load_torch(device: str | None) -> Backend:
    torch = _import("torch", "torch", "PyTorch is not installed (`pip install torch==2.13.0`, a CPU build; "
                                      "see pytorch.org for CUDA builds)")
    if device in (None, ""):
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        text = str(device).strip()
        try:
            dev = torch.device(f"cuda:{text}" if _whole(text) else text)
        except RuntimeError as exc:
            raise ValueError(f"device for the torch backend must be like 'cpu', 'cuda' or 'cuda:1'; got {device!r}") from exc
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise BackendUnavailableError(f"device {device!r} was requested for torch, but torch sees no CUDA device")
        try:
            torch.empty(0, device=dev)               # a device type this build lacks (mps, xpu, ...) says so here
        except (RuntimeError, AssertionError) as exc:
            raise BackendUnavailableError(f"device {device!r} was requested for torch, but this torch build cannot "
                                          f"use it ({str(exc).splitlines()[0].split('. ')[0][:160]}); use 'cpu' or a device it has") from None
    import array_api_compat.torch as xp

    return Backend("torch", xp, dev, torch.__version__)


def _load_array_api_strict(device: str | None) -> Backend:
    xp = _import("array_api_strict", "array_api_strict", "it is not installed (`pip install array-api-strict`)")
    xp.set_array_api_strict_flags(api_version=ARRAY_API_VERSION)
    if device in (None, ""):
        dev = xp.Device("CPU_DEVICE")
    else:
        try:
            dev = xp.Device(str(device))
        except ValueError as exc:
            raise ValueError(f"device for array_api_strict must be CPU_DEVICE, device1 or device2; got {device!r}") from exc
    return Backend("array_api_strict", xp, dev, importlib.metadata.version("array_api_strict"))


def _load_jax(device: str | None) -> Backend:
    jax = _import("jax", "jax", "JAX is not installed; install it with `pip install 'jax[cpu]'` (from a checkout of "
                  "xpcnn: `pip install -e '.[jax]'`; for NVIDIA GPUs `pip install 'jax[cuda12]'`, untested by xpcnn)")
    if device in (None, ""):
        dev = jax.devices()[0]
    else:
        platform, _, index = str(device).strip().lower().partition(":")
        platform = {"cuda": "gpu"}.get(platform, platform)
        try:
            found = jax.devices(platform)
        except RuntimeError as exc:
            raise BackendUnavailableError(f"device {device!r} was requested for jax, but jax has no {platform} "
                                          f"devices here ({exc})") from None
        if not _whole(index or "0") or int(index or 0) >= len(found):
            raise ValueError(f"device for the jax backend must be like 'cpu', 'cpu:0' or 'gpu:1' (here: "
                             f"{', '.join(str(d) for d in jax.devices())}); got {device!r}")
        dev = found[int(index or 0)]
    import jax.numpy as xp      # jax's own namespace implements the array API standard

    return Backend("jax", xp, dev, jax.__version__)


def _jax_dtype(xp: Any, dtype: Any) -> Any:
    """The dtype to ask JAX for. Without ``jax_enable_x64`` JAX makes 32-bit arrays only, and would silently turn
    float64 into float32: refused with how to enable it; int64 (labels, indices) becomes int32."""
    if dtype is None or getattr(xp, "__name__", "") != "jax.numpy":
        return dtype
    import jax

    if jax.config.jax_enable_x64:
        return dtype
    if dtype == xp.float64:
        raise BackendUnavailableError(
            "float64 on the jax backend needs JAX's 64-bit mode: set JAX_ENABLE_X64=1 in the environment, or call "
            "jax.config.update('jax_enable_x64', True) before making any array")
    return xp.int32 if dtype == xp.int64 else dtype


_LOADERS = {
    "numpy": _load_numpy,
    "cupy": _load_cupy,
    "torch": _load_torch,
    "array_api_strict": _load_array_api_strict,
    "jax": _load_jax,
}


def _load(name: str, device: Any = None) -> Backend:
    name = _check_name(name)
    return _LOADERS[name](None if device is None else str(device))


def devices(name: str) -> list[str]:
    """The devices of backend ``name`` that data-parallel ranks each take one of (as ``XPCNN_DEVICE`` spells
    them): CUDA device indices for cupy, array_api_strict's three; empty where every rank keeps the selected one."""
    name = _check_name(name)
    if name == "cupy":
        return [str(i) for i in range(importlib.import_module("cupy").cuda.runtime.getDeviceCount())]
    if name == "array_api_strict":
        return ["CPU_DEVICE", "device1", "device2"]
    return []


def get_backend() -> Backend:
    """The backend new arrays are created on: a ``use_backend`` block's, else :func:`set_backend`'s, else the one
    ``XPCNN_BACKEND``/``XPCNN_DEVICE`` name (numpy by default)."""
    global _default
    override = _override.get()
    if override is not None:
        return override
    settings = _settings.get()
    key = (settings.backend, settings.device)
    if _default is None or (_default[0] is not None and _default[0] != key):
        _default = (key, _load(settings.backend, settings.device))
        _make_current(_default[1])
    return _default[1]


def set_backend(name: str, device: Any = None) -> Backend:
    """Select the backend for new arrays, process-wide (the environment no longer decides), and make its device
    current in this thread; fails at once if it cannot run here."""
    global _default
    _default = (None, _load(name, device))
    _make_current(_default[1])
    return _default[1]


@contextlib.contextmanager
def use_backend(name: str, device: Any = None) -> Iterator[Backend]:
    """``with xpcnn.use_backend("cupy"):`` selects a backend for the block, in this thread (or asyncio task)
    only, with its device current, then restores the previous choice and device."""
    backend = _load(name, device)
    token = _override.set(backend)
    try:
        with on_device(backend):
            yield backend
    finally:
        _override.reset(token)


# --------------------------------------------------------------------------- the current device
def _use_cuda_device(device: Any) -> Any:
    import cupy

    previous = cupy.cuda.Device()
    device.use()
    return previous


# Libraries whose arrays land on a *current* device when created without one: name -> use(device), which makes
# ``device`` current in this thread and returns the one that was.
_CURRENT_DEVICE: dict[str, Callable[[Any], Any]] = {"cupy": _use_cuda_device}


def _library(x: Any) -> str | None:
    """The backend name of an array (or a Backend) whose library keeps a current device; None otherwise."""
    if isinstance(x, Backend):
        return x.name
    if array_api_compat.is_cupy_array(x):
        return "cupy"
    return "array_api_strict" if type(x).__module__.startswith("array_api_strict") else None


def _make_current(backend: Backend) -> Any:
    use = _CURRENT_DEVICE.get(backend.name)
    return None if use is None else use(backend.device)


@contextlib.contextmanager
def on_device(x: Any) -> Iterator[None]:
    """The device of ``x`` (an array or a :class:`Backend`) current in this thread for the block, then the one
    before; nothing where the library has no current device. Wrap whatever runs a model on ``x``'s device: the
    arrays its ops create without ``device=`` then land beside their inputs."""
    name = _library(x)
    use = _CURRENT_DEVICE.get(name) if name is not None else None
    if use is None:
        yield
        return
    previous = use(x.device if isinstance(x, Backend) else array_api_compat.device(x))
    try:
        yield
    finally:
        use(previous)


def synchronize(x: Any = None) -> None:
    """Wait until the device of ``x`` (default: the selected backend's) has finished the work queued on it, so
    that a timer read next measures the work and not its launch. Nothing to wait for on the CPU."""
    if x is None:
        backend = get_backend()
        if backend.name == "cupy":
            backend.device.synchronize()
        elif backend.name == "torch" and backend.device.type == "cuda":
            importlib.import_module("torch").cuda.synchronize(backend.device)
        return
    if array_api_compat.is_cupy_array(x):
        x.device.synchronize()
    elif array_api_compat.is_torch_array(x) and x.device.type == "cuda":
        importlib.import_module("torch").cuda.synchronize(x.device)
    elif array_api_compat.is_jax_array(x):
        x.block_until_ready()


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


def compiler(x: Any) -> Callable[[Callable], Callable] | None:
    """The compiler of whole functions for ``x``'s array library: ``jax.jit`` for jax arrays; None elsewhere (the
    other libraries run a function's operations one by one)."""
    if array_api_compat.is_jax_array(x):
        import jax

        return jax.jit
    return None


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
            return obj if dtype is None or obj.dtype == dtype else xp.astype(obj, _jax_dtype(xp, dtype))
        obj = to_numpy(obj)
    if dtype is None and isinstance(obj, np.ndarray):
        dtype = getattr(xp, obj.dtype.name)
    return xp.asarray(obj, dtype=_jax_dtype(xp, dtype), device=dev)


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


# --------------------------------------------------------------------------- preflight
@dataclass(frozen=True)
class Check:
    """One preflight check: its name, whether it passed, and what it found (the error, or what was compared)."""

    name: str
    ok: bool
    detail: str
    seconds: float


def _upload(backend: Backend, host: np.ndarray) -> Any:
    return _convert(host, backend.xp, backend.device, None)


def _check_kernel(backend: Backend) -> str:
    xp = backend.xp
    got = float(to_numpy(xp.sum(_upload(backend, np.arange(1024, dtype=np.float32)) * 2 + 1)))
    if got != 1024.0 ** 2:
        raise AssertionError(f"sum(2 i + 1, i < 1024) gave {got}, not 1048576")
    return "an element-wise kernel and a sum"


def _check_matmul(backend: Backend) -> str:
    a = np.random.default_rng(0).standard_normal((96, 80)).astype(np.float32)
    got = to_numpy(_upload(backend, a) @ _upload(backend, a.T))
    np.testing.assert_allclose(got, a.astype(np.float64) @ a.T, rtol=1e-4, atol=1e-3)
    return "float32 96x80 @ 80x96 against NumPy"


def _check_random(backend: Backend) -> str:
    from .functional.random import uniform

    xp = backend.xp
    expected = uniform(12345, (4, 256), np, "cpu", np.float32)
    np.testing.assert_array_equal(to_numpy(uniform(12345, (4, 256), xp, backend.device, xp.float32)), expected)
    if backend.name == "cupy":                   # the library's own generator (cuRAND), for users' code
        draw = importlib.import_module("cupy").random.default_rng(0).random(1024).get()
        if not (0 <= draw.min() < draw.max() < 1):
            raise AssertionError(f"cupy.random drew values outside [0, 1) or all equal: {draw[:4]}")
    return "Dropout's counter-based draw bit for bit against NumPy" + (" and cuRAND" if backend.name == "cupy" else "")


def _check_conv(backend: Backend) -> str:
    from .functional.conv import conv2d_backward, conv2d_forward

    rng = np.random.default_rng(1)
    x, w = rng.standard_normal((2, 3, 9, 9)), rng.standard_normal((4, 3, 3, 3))
    b, dy = rng.standard_normal(4), rng.standard_normal((2, 4, 5, 5))
    y_ref, cache = conv2d_forward(x, w, b, stride=2, padding=1)
    grads_ref = conv2d_backward(dy, cache)
    y, cache = conv2d_forward(*(_upload(backend, a.astype(np.float32)) for a in (x, w, b)), stride=2, padding=1)
    grads = conv2d_backward(_upload(backend, dy.astype(np.float32)), cache)
    for name, got, want in zip(("output", "dx", "dw", "db"), (y, *grads), (y_ref, *grads_ref)):
        np.testing.assert_allclose(to_numpy(got), want, rtol=1e-4, atol=1e-4, err_msg=f"conv2d {name}")
    return "conv2d stride 2, padding 1: output and the three gradients against NumPy float64"


_QUICK_CHECKS = {"kernel": _check_kernel, "matrix product": _check_matmul, "random draw": _check_random}
_CHECKS = {**_QUICK_CHECKS, "convolution forward and backward": _check_conv}


def _run_checks(backend: Backend, checks: dict[str, Callable[[Backend], str]]) -> list[Check]:
    results = []
    with on_device(backend):
        for name, check in checks.items():
            start = time.perf_counter()
            try:
                detail, ok = check(backend), True        # each check reads its result back: the work is done
            except Exception as exc:             # any failure is the finding: CUDA libraries raise their own types
                first = (str(exc).strip().splitlines() or [""])[0][:300]
                detail, ok = f"{type(exc).__name__}: {first}", False
            results.append(Check(name, ok, detail, time.perf_counter() - start))
    return results


def preflight(name: str | None = None, device: Any = None) -> list[Check]:
    """Prove that backend ``name`` on ``device`` (default: the selected backend) computes correctly here: it is
    selected, then an element-wise kernel, a matrix product, a random draw and a convolution's forward and
    backward run on it and are compared with NumPy. Each check's result is returned by name; a failed selection
    is the one result. A GPU shows here, in seconds, what would otherwise fail at the first step."""
    start = time.perf_counter()
    try:
        backend = get_backend() if name is None and device is None else _load(name or get_backend().name, device)
    except (BackendUnavailableError, ValueError) as exc:
        return [Check("select", False, str(exc), time.perf_counter() - start)]
    return [Check("select", True, str(backend), time.perf_counter() - start), *_run_checks(backend, _CHECKS)]
