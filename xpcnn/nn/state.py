"""A module's state as data: ``state_dict``/``load_state_dict`` (parameters and buffers by dotted name),
``config``/``from_config`` (the constructor's arguments), and the extra state a checkpoint keeps."""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np

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

        A PyTorch ``state_dict`` of the same structure loads as it is: its BatchNorm layers'
        ``num_batches_tracked`` counters, which xpcnn has no use for (its BatchNorm always averages with
        ``momentum``), are ignored, even with ``strict``."""
        if not isinstance(state, dict):
            raise TypeError(f"load_state_dict: state must be a dict of arrays by name; got {type(state).__name__}")
        slots = {**dict(self.named_parameters()), **dict(self.named_buffers())}
        state = {name: value if hasattr(value, "shape") else np.asarray(value) for name, value in state.items()
                 if name in slots or name.rpartition(".")[2] != "num_batches_tracked"}     # lists: as arrays
        missing, unexpected = sorted(set(slots) - set(state)), sorted(set(state) - set(slots))
        if strict and (missing or unexpected):
            raise KeyError(f"load_state_dict: missing {missing or 'nothing'}, unexpected {unexpected or 'nothing'}")
        for name in sorted(set(slots) & set(state)):
            if tuple(state[name].shape) != slots[name].shape:
                raise ValueError(f"load_state_dict: {name} must have shape {slots[name].shape}; "
                                 f"got {tuple(state[name].shape)}")
        for name in sorted(set(slots) & set(state)):
            slot = slots[name]
            slot.data = _backend.asarray_like(state[name], slot.data, dtype=slot.data.dtype)
            if isinstance(slot, Parameter):
                slot.grad = None
        self._forget()

    def config(self) -> dict:
        return {"type": type(self).__name__, **self._config}

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
