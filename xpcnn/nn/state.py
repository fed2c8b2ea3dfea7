"""A module's state as data: ``state_dict``/``load_state_dict`` (parameters and buffers by dotted name),
``config``/``from_config`` (the constructor's arguments), and the extra state a checkpoint keeps."""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
from array_api_compat import array_namespace

from .. import backend as _backend
from .slots import Parameter

__all__ = ["State"]


class State:
    """State dicts, configurations and extra state of a module."""

    def state_dict(self) -> dict[str, Any]:
        """Parameters and buffers by dotted name (the arrays themselves, on their backend), as in PyTorch."""
        return {**{n: p.data for n, p in self.named_parameters()}, **{n: b.data for n, b in self.named_buffers()}}

    def load_state_dict(self, state: dict[str, Any], strict: bool = True) -> None:
        """Copy arrays (any backend, torch tensors included) into the parameters and buffers of the same names,
        keeping each one's backend, device and dtype. ``strict``: the names must match exactly. Shapes always must.
        Every value is checked and converted before any is assigned: an error leaves the model as it was.

        A PyTorch ``state_dict`` of the same structure loads as it is: its BatchNorm layers'
        ``num_batches_tracked`` counters, which xpcnn has no use for (its BatchNorm always averages with
        ``momentum``), are ignored, even with ``strict``. float16 and bfloat16 values are widened exactly."""
        if not isinstance(state, dict):
            raise TypeError(f"load_state_dict: state must be a dict of arrays by name; got {type(state).__name__}")
        slots = {**dict(self.named_parameters()), **dict(self.named_buffers())}
        state = {name: value for name, value in state.items()
                 if name in slots or str(name).rpartition(".")[2] != "num_batches_tracked"}
        missing = sorted(set(slots) - set(state))
        unexpected = sorted(map(str, set(state) - set(slots)))
        if strict and (missing or unexpected):
            raise KeyError(f"load_state_dict: missing {missing or 'nothing'}, unexpected {unexpected or 'nothing'}")
        converted = {name: _converted(name, state[name], slots[name]) for name in sorted(set(slots) & set(state))}
        for name, data in converted.items():
            slot = slots[name]
            slot.data = data
            if isinstance(slot, Parameter):
                slot.grad = None
        self._forget("load_state_dict replaced its arrays")

    def config(self) -> dict:
        return {"type": type(self).__name__, **self._config}

    def _refuse_shared(self) -> None:
        """A configuration rebuilds each place as a module of its own, so a module held at two places (its
        weights shared) cannot be described by one: refused here rather than rebuilt unshared (its checkpoint
        would then not load). Containers call this from ``config``."""
        first: dict[int, str] = {}
        for name, module in self.named_modules():
            if id(module) in first:
                raise ValueError(f"{type(self).__name__}.config: the module at {name!r} is the one at "
                                 f"{first[id(module)] or '(top)'!r} (shared weights); a configuration cannot describe "
                                 f"a shared module, so this model cannot be saved with its configuration or exported. "
                                 f"Save its state_dict() and rebuild it in code, or give each place a module of its own")
            first[id(module)] = name

    @classmethod
    def from_config(cls, config: dict, dtype: str = "float32") -> Any:
        """Rebuild from :meth:`config` (freshly initialized weights: load a checkpoint or state over them)."""
        args = {k: v for k, v in config.items() if k != "type"}
        if "dtype" in inspect.signature(cls.__init__).parameters:
            args["dtype"] = dtype
        return cls(**args)

    def get_extra_state(self) -> Any:
        """JSON-able state beyond parameters and buffers that a checkpoint must keep for an exact resume
        (a Dropout's random generator); None when there is none."""
        return None

    def set_extra_state(self, state: Any) -> None:
        raise ValueError(f"{type(self).__name__} keeps no extra state; got {type(state).__name__}")

    def check_state(self, arrays: dict[str, np.ndarray]) -> None:
        """Refuse (ValueError) values of this module's own parameters and buffers (by attribute name, as NumPy
        arrays) that no training could have produced; checkpoints ask before loading them. Nothing by default."""


def _converted(name: str, value: Any, slot: Any) -> Any:
    """``value`` (an array of any library, or nested lists) as an array like ``slot.data``, or a ValueError or
    TypeError naming the entry: a real number array of the slot's shape is the only thing that loads."""
    if not hasattr(value, "shape") or not hasattr(value, "dtype"):
        try:
            value = np.asarray(value)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"load_state_dict: {name} must be an array of numbers; got {type(value).__name__} "
                             f"({exc})") from None
    if tuple(value.shape) != slot.shape:
        raise ValueError(f"load_state_dict: {name} must have shape {slot.shape}; got {tuple(value.shape)}")
    try:
        xp = array_namespace(value)
        if xp.isdtype(value.dtype, "bool") or not xp.isdtype(value.dtype, ("real floating", "integral")):
            raise TypeError
        if xp.isdtype(value.dtype, "real floating") and value.dtype not in (xp.float32, xp.float64):
            value = xp.astype(value, xp.float32)          # float16, bfloat16: exact in float32, and NumPy reads it
    except TypeError:
        raise TypeError(f"load_state_dict: {name} must hold real numbers (floating or integer); got dtype "
                        f"{value.dtype}") from None
    try:
        return _backend.asarray_like(value, slot.data, dtype=slot.data.dtype)
    except Exception as exc:    # noqa: BLE001 -- any library's conversion error, named and re-raised
        raise ValueError(f"load_state_dict: {name} could not be converted to the model's {slot.data.dtype} "
                         f"array: {type(exc).__name__}: {exc}") from None
