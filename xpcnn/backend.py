"""Where new arrays live: the backend switch.

``XPCNN_BACKEND`` (read by :mod:`xpcnn.settings`, like every setting) names the array library that new arrays
(parameters, data batches) are created with, and ``XPCNN_DEVICE`` the device where that library has several.
:func:`set_backend` changes the process-wide choice; ``with use_backend(...)`` overrides it for a block, in
this thread or task only (a ``contextvars.ContextVar``). Operations in :mod:`xpcnn.functional` never look here:
they take their namespace from their inputs, so arrays of any backend work with them without configuration.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import importlib.metadata
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
    "asarray",
    "asarray_like",
    "available_backends",
    "get_backend",
    "set_backend",
    "to_numpy",
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
    cupy = _import("cupy", "cupy", "CuPy is not installed; install it with `pip install cupy-cuda12x` (CUDA 12) or "
                   "`pip install cupy-cuda13x` (CUDA 13); from a checkout of xpcnn: `pip install -e '.[cuda12]'`")
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
    return _default[1]


def set_backend(name: str, device: Any = None) -> Backend:
    """Select the backend for new arrays, process-wide (the environment no longer decides); fails at once if it
    cannot run here."""
    global _default
    _default = (None, _load(name, device))
    return _default[1]


@contextlib.contextmanager
def use_backend(name: str, device: Any = None) -> Iterator[Backend]:
    """``with xpcnn.use_backend("cupy"):`` selects a backend for the block, in this thread (or asyncio task)
    only, then restores the previous choice."""
    backend = _load(name, device)
    token = _override.set(backend)
    try:
        yield backend
    finally:
        _override.reset(token)


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
