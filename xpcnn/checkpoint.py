"""Checkpoints without pickle: parameters, buffers, optimizer state, progress, RNG state and the model's
configuration (any module tree: nested containers and residual blocks are rebuilt from it).

Formats: ``.npz`` (read back with ``allow_pickle=False``) or ``.safetensors`` (needs the
``safetensors`` package). Both hold plain arrays plus one JSON document. Writes are atomic:
a temporary file in the same folder is written, flushed to disk and renamed over the target,
so an interrupted save leaves the previous checkpoint intact. Every array's SHA-256 is
recorded, and the SHA-256 of the JSON document itself (which holds those digests); both are
checked on load, so an altered file is refused rather than trusted.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pathlib
import tempfile
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import backend as _backend
from .nn import Module, from_config

__all__ = ["Checkpoint", "CheckpointError", "load", "save", "write_atomic"]

FORMAT = "xpcnn-checkpoint"
VERSION = 2
_META_KEY = "__xpcnn__"


class CheckpointError(ValueError):
    """A checkpoint is unreadable, altered, non-finite, or for another architecture."""


@dataclass
class Checkpoint:
    """What :func:`load` returns: the model (with the weights loaded) and everything saved beside it."""

    model: Module
    epoch: int = 0
    step: int = 0
    rng_state: Any = None
    extra: dict = field(default_factory=dict)
    optimizer_state: dict | None = None
    path: str = ""


def write_atomic(path: pathlib.Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a flushed temporary file renamed over it: readers see the old
    file or the new one, never a part (also how the benchmarks rewrite RESULTS.md)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, path)
    except BaseException:          # includes KeyboardInterrupt: never leave the temporary file behind
        if os.path.exists(temp):
            os.remove(temp)
        raise
    try:                           # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def _digest(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def save(path: str | os.PathLike, model: Module, optimizer: Any = None, *, epoch: int = 0, step: int = 0,
         rng_state: Any = None, extra: dict | None = None) -> pathlib.Path:
    """Write a checkpoint of ``model`` (and ``optimizer``) to ``path`` (.npz or .safetensors), atomically.

    Refuses (ValueError) to save non-finite weights, so a diverged run never overwrites a good checkpoint.
    """
    path = pathlib.Path(path)
    arrays: dict[str, np.ndarray] = {}
    for name, p in model.named_parameters():
        host = _backend.to_numpy(p.data)
        if not np.all(np.isfinite(host)):
            raise ValueError(f"refusing to save a checkpoint: parameter {name} holds NaN or Inf values")
        arrays[f"param/{name}"] = host
    for name, b in model.named_buffers():
        host = _backend.to_numpy(b.data)
        if not np.all(np.isfinite(host)):
            raise ValueError(f"refusing to save a checkpoint: buffer {name} holds NaN or Inf values")
        arrays[f"buffer/{name}"] = host
    optim_meta = None
    if optimizer is not None:
        state = optimizer.state_dict()
        for i, entry in enumerate(state.pop("state")):
            for key, value in entry.items():
                arrays[f"optim/{i}/{key}"] = _backend.to_numpy(value)
        optim_meta = state
    meta = {
        "format": FORMAT, "version": VERSION, "model": model.config(), "epoch": int(epoch), "step": int(step),
        "rng_state": rng_state, "extra": extra or {}, "optimizer": optim_meta,
        "sha256": {key: _digest(value) for key, value in arrays.items()},
    }
    meta["meta_sha256"] = _meta_digest(meta)
    text = json.dumps(meta, sort_keys=True)
    if path.suffix == ".safetensors":
        safetensors_numpy = _safetensors()
        data = safetensors_numpy.save({k: np.ascontiguousarray(v) for k, v in arrays.items()},
                                      metadata={_META_KEY: text})
    elif path.suffix == ".npz":
        buffer = io.BytesIO()
        np.savez(buffer, **arrays, **{_META_KEY: np.frombuffer(text.encode(), dtype=np.uint8)})
        data = buffer.getvalue()
    else:
        raise ValueError(f"checkpoint path must end in .npz or .safetensors; got {str(path)!r}")
    write_atomic(path, data)
    return path


def _meta_digest(meta: dict) -> str:
    """SHA-256 of the JSON document without its own digest: an edited epoch, hyper-parameter or layer
    argument is detected like an edited array."""
    body = {k: v for k, v in meta.items() if k != "meta_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _safetensors():
    try:
        import safetensors.numpy
    except ImportError as exc:
        raise ImportError("reading or writing .safetensors checkpoints needs the safetensors package "
                          "(pip install safetensors); .npz needs nothing extra") from exc
    return safetensors.numpy


def _read(path: pathlib.Path) -> tuple[dict, dict[str, np.ndarray]]:
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            safetensors_numpy = _safetensors()
            from safetensors import safe_open

            with safe_open(str(path), framework="np") as handle:
                text = (handle.metadata() or {}).get(_META_KEY)
            arrays = safetensors_numpy.load_file(str(path))
        else:
            with np.load(path, allow_pickle=False) as archive:
                arrays = {key: archive[key] for key in archive.files}
            raw = arrays.pop(_META_KEY, None)
            text = None if raw is None else raw.tobytes().decode()
        if text is None:
            raise CheckpointError(f"{path}: not an xpcnn checkpoint (no {_META_KEY} record)")
        meta = json.loads(text)
    except (CheckpointError, ImportError):
        raise
    except Exception as exc:       # zipfile, zlib, numpy and safetensors each raise their own types
        raise CheckpointError(f"{path}: cannot be read as a checkpoint ({type(exc).__name__}: {exc}); "
                              "it is truncated, damaged or not a checkpoint") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an xpcnn checkpoint (format {meta.get('format')!r})")
    if meta.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {meta.get('version')!r}; this xpcnn reads "
                              f"version {VERSION} (save it again with the xpcnn that wrote it, or retrain)")
    if meta.get("meta_sha256") != _meta_digest(meta):
        raise CheckpointError(f"{path}: its JSON record was altered (its SHA-256 does not match the one saved)")
    expected = meta.get("sha256", {})
    if set(expected) != set(arrays):
        raise CheckpointError(f"{path}: its arrays {sorted(arrays)} do not match its own index {sorted(expected)}")
    for key, value in arrays.items():
        if _digest(value) != expected[key]:
            raise CheckpointError(f"{path}: array {key} was altered (its SHA-256 does not match the one saved)")
    return meta, arrays


def load(path: str | os.PathLike, model: Module | None = None, optimizer: Any = None) -> Checkpoint:
    """Read ``path`` and load its parameters and buffers into ``model`` (or into a model rebuilt from the
    saved configuration, on the current backend), and its optimizer state into ``optimizer`` if given.

    Raises CheckpointError for truncated, altered or non-finite checkpoints, malformed configurations and
    another architecture.
    """
    path = pathlib.Path(path)
    meta, arrays = _read(path)
    config = meta.get("model")
    saved_name = config.get("name", "?") if isinstance(config, dict) else "?"
    if model is None:
        try:
            model = from_config(config)
        except ValueError as exc:
            raise CheckpointError(f"{path}: its model configuration cannot be rebuilt: {exc}") from None
    slots = {**{f"param/{n}": p for n, p in model.named_parameters()},
             **{f"buffer/{n}": b for n, b in model.named_buffers()}}
    saved = {key: value for key, value in arrays.items() if key.startswith(("param/", "buffer/"))}
    mismatch = sorted(set(slots) ^ set(saved)) or [
        key for key in slots if slots[key].shape != tuple(saved[key].shape)]
    if mismatch or _architecture(config) != _architecture(json.loads(json.dumps(model.config()))):
        saved_shapes = {k: tuple(v.shape) for k, v in saved.items()}
        model_shapes = {k: s.shape for k, s in slots.items()}
        raise CheckpointError(
            f"{path}: checkpoint is for model {saved_name!r} with {saved_shapes}, "
            f"which does not fit the model {model.name!r} with {model_shapes}")
    for key, value in saved.items():
        if not np.all(np.isfinite(value)):
            raise CheckpointError(f"{path}: {key.replace('/', ' ', 1)} holds NaN or Inf values")
    for key, slot in slots.items():
        slot.data = _backend.asarray_like(saved[key], slot.data, dtype=slot.data.dtype)
        if hasattr(slot, "grad"):
            slot.grad = None
    optimizer_state = _optimizer_state(path, meta, arrays, model)
    if optimizer is not None and optimizer_state is not None:
        try:
            optimizer.load_state_dict(optimizer_state)
        except ValueError as exc:
            raise CheckpointError(f"{path}: {exc}") from None
    return Checkpoint(model=model, epoch=meta["epoch"], step=meta["step"], rng_state=meta.get("rng_state"),
                      extra=meta.get("extra", {}), optimizer_state=optimizer_state, path=str(path))


def _architecture(config: Any) -> Any:
    """A configuration without the model's name: what must match for weights to fit."""
    return {k: v for k, v in config.items() if k != "name"} if isinstance(config, dict) else config


def _optimizer_state(path: pathlib.Path, meta: dict, arrays: dict, model: Module) -> dict | None:
    if meta.get("optimizer") is None:
        return None
    params = model.parameters()
    try:
        state = dict(meta["optimizer"])
        state["state"] = [{} for _ in params]
        for key, value in arrays.items():
            if key.startswith("optim/"):
                _, index, name = key.split("/", 2)
                index = int(index)
                if tuple(value.shape) != params[index].shape:
                    raise ValueError(f"optimizer state {key} has shape {tuple(value.shape)}; its parameter has "
                                     f"{params[index].shape}")
                state["state"][index][name] = value
        state["hyper"] = {k: tuple(v) if isinstance(v, list) else v for k, v in state["hyper"].items()}
    except (ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
        raise CheckpointError(f"{path}: malformed optimizer state ({type(exc).__name__}: {exc})") from None
    return state
