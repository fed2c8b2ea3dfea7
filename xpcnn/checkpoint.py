"""Checkpoints without pickle: parameters, buffers, optimizer state, progress, RNG states and the model's
configuration (any module tree: nested containers and residual blocks are rebuilt from it).

Formats: ``.npz`` (read back without pickle) or ``.safetensors`` (needs the ``safetensors`` package). Both
hold plain arrays plus one JSON record. What is guaranteed:

- Writes are atomic: a temporary file ``.NAME.PID.*.tmp`` in the same folder is written, flushed to disk and
  renamed over the target, so an interrupted save (even ``kill -9``) leaves the previous checkpoint intact and
  a reader sees the old file or the new one, never a part. A save first removes the temporaries that dead
  processes left for the same target. The file gets the permissions any new file gets (0666 less the umask).
- Everything is checked on load: every array's SHA-256 and the SHA-256 of the JSON record (which holds the
  configuration, the progress, the hyper-parameters and those digests) must match, every array's shape must be
  the one the configuration implies (checked from the file's headers before any array is decompressed), and
  parameters and buffers must be finite. Anything else is a :class:`CheckpointError`: an altered, truncated,
  crafted or foreign file is refused, never half-loaded.
- The checksums detect damage and edits; they are not a signature: someone who can write the file can also
  rewrite its digests. Never load checkpoints from people you do not trust with your machine's files; at
  worst such a file is refused or gives a wrong model, since nothing in it is executed.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import pathlib
import zipfile
from dataclasses import dataclass, field
from typing import Any

import array_api_compat
import numpy as np

from . import backend as _backend
from . import init as _init
from .atomic import check_folder, write_atomic
from .nn import Module, from_config
from .nn.module import check_dtype, flatten, precision

__all__ = ["Checkpoint", "CheckpointError", "ResumeConflict", "check_resume", "load", "save"]

FORMAT = "xpcnn-checkpoint"
VERSION = 2
_META_KEY = "__xpcnn__"
_META_LIMIT = 64 << 20          # bytes of JSON record read at most


class CheckpointError(ValueError):
    """A checkpoint is unreadable, altered, non-finite, malformed, or for another architecture."""


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


def _digest(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def _meta_digest(meta: dict) -> str:
    """SHA-256 of the JSON record without its own digest: an edited epoch, hyper-parameter or layer
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


def check_path(path: str | os.PathLike) -> pathlib.Path:
    """``path`` if a checkpoint can be written there (known suffix, its library installed); ValueError or
    ImportError otherwise. Lets a caller find out before training, not after."""
    path = pathlib.Path(path)
    if path.suffix not in (".npz", ".safetensors"):
        raise ValueError(f"checkpoint path must end in .npz or .safetensors; got {str(path)!r}")
    if path.suffix == ".safetensors":
        _safetensors()
    return path


def save(path: str | os.PathLike, model: Module, optimizer: Any = None, *, epoch: int = 0, step: int = 0,
         rng_state: Any = None, extra: dict | None = None) -> pathlib.Path:
    """Write a checkpoint of ``model`` (and ``optimizer``) to ``path`` (.npz or .safetensors), atomically.

    Refuses (ValueError) to save non-finite weights, so a diverged run never overwrites a good checkpoint, and
    (FileNotFoundError) a ``path`` whose folder does not exist: it is never made, so a typo writes nowhere.
    """
    path = check_folder(check_path(path), "save")
    named: dict[str, Any] = {}
    with model.using():                  # one consistent state, even while another thread trains the model
        for kind, slots in (("param", model.named_parameters()), ("buffer", model.named_buffers())):
            named.update((f"{kind}/{name}", slot.data) for name, slot in slots)
        optim_meta = None
        if optimizer is not None:
            state = optimizer.state_dict()
            for i, entry in enumerate(state.pop("state")):
                named.update((f"optim/{i}/{key}", value) for key, value in entry.items())
            optim_meta = state
        module_state = {name: s for name, m in model.named_modules() if (s := m.get_extra_state()) is not None}
        arrays = dict(zip(named, _host_copies(list(named.values()))))
    for key, host in arrays.items():
        if key.startswith(("param/", "buffer/")) and not np.all(np.isfinite(host)):
            kind, _, name = key.partition("/")
            raise ValueError(f"refusing to save a checkpoint: {'parameter' if kind == 'param' else kind} "
                             f"{name} holds NaN or Inf values")
    meta = {
        "format": FORMAT, "version": VERSION, "model": model.config(), "epoch": int(epoch), "step": int(step),
        "rng_state": rng_state, "extra": extra or {}, "optimizer": optim_meta,
        "module_state": module_state,
        "sha256": {key: _digest(value) for key, value in arrays.items()},
    }
    meta["meta_sha256"] = _meta_digest(meta)
    text = json.dumps(meta, sort_keys=True)
    if path.suffix == ".safetensors":
        data = _safetensors().save({k: np.ascontiguousarray(v) for k, v in arrays.items()}, metadata={_META_KEY: text})
    else:
        buffer = io.BytesIO()
        np.savez(buffer, **arrays, **{_META_KEY: np.frombuffer(text.encode(), dtype=np.uint8)})
        data = buffer.getvalue()
    write_atomic(path, data)
    return path


def _host_copies(values: list) -> list[np.ndarray]:
    """NumPy copies of ``values`` (arrays of any backend, or scalars), device arrays in one transfer per library,
    device and dtype: a copy per array would be a device round trip (and a CUDA synchronization) each."""
    out = [v if isinstance(v, np.ndarray) or not array_api_compat.is_array_api_obj(v) else None for v in values]
    groups: dict[tuple, list[int]] = {}
    for i, v in enumerate(values):
        if out[i] is None:
            groups.setdefault((type(v), str(array_api_compat.device(v)), str(v.dtype)), []).append(i)
    for members in groups.values():
        flat, offset = _backend.to_numpy(flatten([values[i] for i in members])), 0
        for i in members:
            size = math.prod(values[i].shape)
            out[i], offset = flat[offset:offset + size].reshape(tuple(values[i].shape)), offset + size
    return [np.asarray(v) for v in out]


# --------------------------------------------------------------------------- reading
_NPY_HEADERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


class _Npz:
    """An .npz read member by member: shapes from the .npy headers first, data only once they were checked."""

    def __init__(self, path: pathlib.Path):
        self.zip = zipfile.ZipFile(path)
        self.members = {info.filename.removesuffix(".npy"): info for info in self.zip.infolist()}

    def meta_text(self) -> str | None:
        info = self.members.pop(_META_KEY, None)
        if info is None:
            return None
        if info.file_size > _META_LIMIT:
            raise CheckpointError(f"its JSON record declares {info.file_size:,} bytes (more than {_META_LIMIT:,})")
        with self.zip.open(info) as member:
            return np.lib.format.read_array(member, allow_pickle=False).tobytes().decode()

    def shapes(self) -> dict[str, tuple]:
        """Each array's shape from its header, which must declare exactly the bytes its member holds (stored, as
        xpcnn writes them): so the shapes are bounded by the file's size."""
        out = {}
        for key, info in self.members.items():
            if info.compress_type != zipfile.ZIP_STORED:
                raise CheckpointError(f"array {key} is compressed; xpcnn writes checkpoints uncompressed")
            with self.zip.open(info) as member:
                version = np.lib.format.read_magic(member)
                read_header = _NPY_HEADERS.get(version)
                if read_header is None:
                    raise CheckpointError(f"array {key} has .npy format version {version}, which xpcnn never writes")
                shape, _, dtype = read_header(member)
                header = member.tell()
            if dtype.hasobject:
                raise CheckpointError(f"array {key} holds Python objects; checkpoints never do")
            if header + math.prod(shape) * dtype.itemsize != info.file_size:
                raise CheckpointError(f"array {key} declares shape {tuple(shape)} of {dtype}, but its member holds "
                                      f"{info.file_size - header:,} bytes of data")
            out[key] = tuple(shape)
        return out

    def read(self, key: str) -> np.ndarray:
        with self.zip.open(self.members[key]) as member:
            return np.lib.format.read_array(member, allow_pickle=False)

    def close(self) -> None:
        self.zip.close()


class _Safetensors:
    def __init__(self, path: pathlib.Path):
        _safetensors()
        from safetensors import safe_open

        self.handle = safe_open(str(path), framework="np")

    def meta_text(self) -> str | None:
        return (self.handle.metadata() or {}).get(_META_KEY)

    def shapes(self) -> dict[str, tuple]:
        return {key: tuple(self.handle.get_slice(key).get_shape()) for key in self.handle.keys()}

    def read(self, key: str) -> np.ndarray:
        return self.handle.get_tensor(key)

    def close(self) -> None:
        self.handle = None


def _open(path: pathlib.Path):
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory; give the checkpoint file (.npz or .safetensors) in it")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    return _Safetensors(path) if path.suffix == ".safetensors" else _Npz(path)


def _check_meta(path: pathlib.Path, text: str | None) -> dict:
    if text is None:
        raise CheckpointError(f"{path}: not an xpcnn checkpoint (no {_META_KEY} record)")
    meta = json.loads(text)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an xpcnn checkpoint")
    if meta.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {meta.get('version')!r}; this xpcnn reads "
                              f"version {VERSION} (save it again with the xpcnn that wrote it, or retrain)")
    if meta.get("meta_sha256") != _meta_digest(meta):
        raise CheckpointError(f"{path}: its JSON record was altered (its SHA-256 does not match the one saved)")
    return meta


def _architecture(config: Any) -> Any:
    """A configuration without the model's name: what must match for weights to fit."""
    return {k: v for k, v in config.items() if k != "name"} if isinstance(config, dict) else config


def load(path: str | os.PathLike, model: Module | None = None, optimizer: Any = None) -> Checkpoint:
    """Read ``path`` and load its parameters and buffers into ``model`` (or into a model rebuilt from the
    saved configuration, on the current backend), and its optimizer state into ``optimizer`` if given.

    Raises CheckpointError for truncated, altered, crafted or non-finite checkpoints and for another
    architecture; FileNotFoundError when there is no such file.
    """
    path = pathlib.Path(path)
    reader = None
    try:
        reader = _open(path)
        meta = _check_meta(path, reader.meta_text())
        shapes = reader.shapes()              # from the headers: the configuration may ask for no more than these
        rebuilt = model is None
        model = _model(path, meta, model, sum(math.prod(shape) for key, shape in shapes.items()
                                              if key.startswith(("param/", "buffer/"))))
        slots = {**{f"param/{n}": p for n, p in model.named_parameters()},
                 **{f"buffer/{n}": b for n, b in model.named_buffers()}}
        _check_shapes(path, meta, model, slots, shapes)
        arrays = {key: reader.read(key) for key in shapes}
    except (CheckpointError, FileNotFoundError, ImportError):
        raise
    except Exception as exc:       # zipfile, zlib, numpy, json and safetensors each raise their own types
        raise CheckpointError(f"{path}: cannot be read as a checkpoint ({type(exc).__name__}: {exc}); "
                              "it is truncated, damaged or not a checkpoint") from exc
    finally:
        if reader is not None:
            reader.close()
    expected = meta.get("sha256")
    if not isinstance(expected, dict) or set(expected) != set(arrays):
        raise CheckpointError(f"{path}: its arrays {sorted(arrays)} do not match its own index")
    for key, value in arrays.items():
        if _digest(value) != expected[key]:
            raise CheckpointError(f"{path}: array {key} was altered (its SHA-256 does not match the one saved)")
        if key in slots and not np.all(np.isfinite(value)):
            raise CheckpointError(f"{path}: {key.replace('/', ' ', 1)} holds NaN or Inf values")
    _check_module_states(path, model, arrays)
    # a model rebuilt here takes the precision it was saved in; a model the caller gives keeps its own
    dtype = _saved_precision(path, arrays) if rebuilt else None
    for key, slot in slots.items():
        slot.data = _backend.asarray_like(arrays[key], slot.data, dtype=dtype or slot.data.dtype)
        if hasattr(slot, "grad"):
            slot.grad = None
    _set_module_state(path, meta, model)
    optimizer_state = _optimizer_state(path, meta, arrays, model)
    if optimizer is not None and optimizer_state is not None:
        try:
            optimizer.load_state_dict(optimizer_state)
        except ValueError as exc:
            raise CheckpointError(f"{path}: {exc}") from None
    try:
        epoch, step = int(meta["epoch"]), int(meta["step"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: malformed progress record ({exc})") from None
    extra = meta.get("extra") if isinstance(meta.get("extra"), dict) else {}
    return Checkpoint(model=model, epoch=epoch, step=step, rng_state=meta.get("rng_state"), extra=extra,
                      optimizer_state=optimizer_state, path=str(path))


def _check_module_states(path: pathlib.Path, model: Module, arrays: dict) -> None:
    """Each module's own saved arrays pass its ``check_state`` before anything is loaded."""
    by_owner: dict[str, dict] = {}
    for key, value in arrays.items():
        kind, _, name = key.partition("/")
        if kind in ("param", "buffer"):
            owner, _, attribute = name.rpartition(".")
            by_owner.setdefault(owner, {})[attribute] = value
    for prefix, module in model.named_modules():
        try:
            module.check_state(by_owner.get(prefix, {}))
        except ValueError as exc:
            raise CheckpointError(f"{path}: {prefix or 'the model'}: {exc}") from None


def _model(path: pathlib.Path, meta: dict, model: Module | None, held: int) -> Module:
    """``model``, or the one the configuration describes, built within the ``held`` elements the file's arrays
    hold: a configuration edited to ask for more is refused before its arrays are made."""
    if model is not None:
        return model
    try:
        with _init.allocation_limit(held, f"which is all the file's parameters and buffers hold"):
            built = from_config(meta.get("model"))
        return built
    except _init.AllocationLimitError as exc:
        raise CheckpointError(f"{path}: its model configuration asks for more than the file holds: {exc}; the "
                              f"configuration was edited, or the file is not what it claims") from None
    except ValueError as exc:
        raise CheckpointError(f"{path}: its model configuration cannot be rebuilt: {exc}. A model with layers of "
                              f"your own loads in Python: xpcnn.load(path, model=your_model)") from None


def _saved_precision(path: pathlib.Path, arrays: dict) -> str | None:
    saved = {str(value.dtype) for key, value in arrays.items() if key.startswith(("param/", "buffer/"))}
    if len(saved) > 1:
        raise CheckpointError(f"{path}: its parameters and buffers mix dtypes {sorted(saved)}; xpcnn saves one")
    if not saved:
        return None
    try:
        return check_dtype("checkpoint", saved.pop())
    except ValueError as exc:
        raise CheckpointError(f"{path}: {exc}") from None


def _check_shapes(path, meta, model, slots, shapes) -> None:
    """Every array the file holds must be one the model (or its optimizer state) has, with its shape."""
    params = model.parameters()
    wanted = {key: slot.shape for key, slot in slots.items()}
    for key in shapes:
        if key.startswith("optim/"):
            index = key.split("/")[1]
            if index.isdigit() and int(index) < len(params):
                wanted[key] = params[int(index)].shape
    saved = {k: v for k, v in shapes.items() if k.startswith(("param/", "buffer/"))}
    mismatch = sorted(set(slots) ^ set(saved)) or [k for k in slots if wanted[k] != saved[k]]
    if mismatch or _architecture(meta.get("model")) != _architecture(json.loads(json.dumps(model.config()))):
        name = meta["model"].get("name", "?") if isinstance(meta.get("model"), dict) else "?"
        raise CheckpointError(f"{path}: checkpoint is for model {name!r} with {saved}, which does not fit "
                              f"the model {model.name!r} with {dict(sorted((k, wanted[k]) for k in slots))}")
    for key, shape in shapes.items():
        if key not in wanted:
            raise CheckpointError(f"{path}: holds an array {key} that no parameter, buffer or optimizer state has")
        if shape != wanted[key]:
            raise CheckpointError(f"{path}: optimizer state {key} has shape {shape}; its parameter has "
                                  f"{wanted[key]}")


def _set_module_state(path: pathlib.Path, meta: dict, model: Module) -> None:
    states = meta.get("module_state") or {}
    modules = dict(model.named_modules())
    try:
        for name, state in states.items():
            modules[name].set_extra_state(state)
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: malformed module state ({type(exc).__name__}: {exc})") from None


def _optimizer_state(path: pathlib.Path, meta: dict, arrays: dict, model: Module) -> dict | None:
    if meta.get("optimizer") is None:
        return None
    try:
        state = dict(meta["optimizer"])
        state["state"] = [{} for _ in model.parameters()]
        for key, value in arrays.items():
            if key.startswith("optim/"):
                _, index, name = key.split("/", 2)
                state["state"][int(index)][name] = value
        state["hyper"] = {k: tuple(v) if isinstance(v, list) else v for k, v in state["hyper"].items()}
    except (ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
        raise CheckpointError(f"{path}: malformed optimizer state ({type(exc).__name__}: {exc})") from None
    return state


# --------------------------------------------------------------------------- resuming
RESUME_KEYS = ("seed", "batch_size", "dataset")     # what an exact resume must repeat, kept in ``extra``


class ResumeConflict(ValueError):
    """A resumed run asked for a ``setting`` other than the checkpoint's: ``saved`` there, ``given`` now."""

    def __init__(self, message: str, setting: str, saved: Any, given: Any):
        super().__init__(message)
        self.setting, self.saved, self.given = setting, saved, given


def check_resume(checkpoint: Checkpoint, model: str | None = None, dtype: str | None = None, **run: Any) -> None:
    """Refuse (:class:`ResumeConflict`) a resumed run that could not continue the saved one exactly: another model
    name or precision than the checkpoint holds, or another ``seed``, ``batch_size`` or ``dataset`` (``run``;
    compared where the checkpoint recorded them, as ``xpcnn train`` does in ``extra``)."""
    held = precision(checkpoint.model)
    if model is not None and model != checkpoint.model.name:
        raise ResumeConflict(f"it holds a {checkpoint.model.name}; got model {model} (the checkpoint decides the "
                             f"model)", "model", checkpoint.model.name, model)
    if dtype is not None and dtype != held:
        raise ResumeConflict(f"it holds {held} weights; got dtype {dtype} (the checkpoint decides the precision)",
                             "dtype", held, dtype)
    for key, given in run.items():
        if key not in RESUME_KEYS:
            raise TypeError(f"check_resume: unknown setting {key!r} (known: {', '.join(RESUME_KEYS)})")
        if key in checkpoint.extra and checkpoint.extra[key] != given:
            raise ResumeConflict(f"it was trained with {key} {checkpoint.extra[key]}; got {given}. An exact resume "
                                 f"needs the same {key}", key, checkpoint.extra[key], given)
