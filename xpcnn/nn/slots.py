"""The arrays a module holds: :class:`Parameter` (trained) and :class:`Buffer` (kept, not trained), the dtypes
they may have, and the flat views optimizers and all-reduces work on."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from array_api_compat import array_namespace

from .. import backend as _backend
from ..functional._checks import as_choice

__all__ = ["Buffer", "DTYPES", "Parameter", "add_gradient", "check_dtype", "check_gradient", "dtype_name", "flatten",
           "make_buffer", "make_parameter", "precision", "set_buffer", "split", "unflatten"]

DTYPES = ("float32", "float64")


class _Slot:
    """An array a module holds (``.data``), rebound, never mutated, when it changes."""

    __slots__ = ("data",)

    def __init__(self, data: Any):
        self.data = data

    @property
    def shape(self) -> tuple:
        return tuple(self.data.shape)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(shape={self.shape}, dtype={self.data.dtype})"


class Parameter(_Slot):
    """A trainable array (``.data``) and the gradient of the loss for it (``.grad``, None until backward)."""

    __slots__ = ("grad",)

    def __init__(self, data: Any):
        super().__init__(data)
        self.grad = None


class Buffer(_Slot):
    """State that is saved and moved with the model but not trained (``.data``), e.g. running statistics."""

    __slots__ = ()


def flatten(arrays: list) -> Any:
    """The arrays (one backend, one dtype) as one 1-D array, in order: what optimizers update and
    data-parallel training all-reduces or broadcasts."""
    xp = array_namespace(arrays[0])
    return xp.concat([xp.reshape(a, (-1,)) for a in arrays])


def unflatten(flat: Any, slots: list) -> None:
    """Rebind each slot's ``.data`` to its part of the 1-D ``flat`` (a view, in :func:`flatten`'s order)."""
    for slot, part in zip(slots, split(flat, [slot.shape for slot in slots])):
        slot.data = part


def split(flat: Any, shapes: list) -> list:
    """The parts of the 1-D ``flat`` with these shapes, in order (views where the library has them)."""
    xp = array_namespace(flat)
    parts, offset = [], 0
    for shape in shapes:
        size = math.prod(shape)
        parts.append(xp.reshape(flat[offset:offset + size], shape))
        offset += size
    return parts


def check_dtype(owner: str, dtype: Any) -> str:
    """A floating dtype name: integer or complex weights would be silently zeroed or meaningless."""
    return as_choice(owner, "dtype", dtype, DTYPES)


def dtype_name(x: Any) -> str:
    """The name in :data:`DTYPES` of ``x``'s dtype; TypeError for any other."""
    xp = array_namespace(x)
    for name in DTYPES:
        if x.dtype == getattr(xp, name, None):
            return name
    raise TypeError(f"parameters must have a floating dtype ({', '.join(DTYPES)}); got {x.dtype}")


def precision(model: Any) -> str:
    """The dtype name of a model's weights (its first parameter's): what its data must be converted to."""
    return dtype_name(next(iter(model.parameters())).data)


def make_parameter(values: np.ndarray, dtype: str) -> Parameter:
    return Parameter(_backend.asarray(np.asarray(values), dtype=dtype))


def make_buffer(values: np.ndarray, dtype: str) -> Buffer:
    return Buffer(_backend.asarray(np.asarray(values), dtype=dtype))


def check_gradient(p: Parameter, grad: Any) -> None:
    """A gradient of another dtype is an error, never a silent upcast."""
    if grad.dtype != p.data.dtype:
        raise TypeError(f"a gradient of dtype {grad.dtype} reached a parameter of dtype {p.data.dtype}; "
                        f"pass the gradient in the model's dtype")


def add_gradient(p: Parameter, grad: Any) -> None:
    """Add ``grad`` to ``p.grad``: how a whole-batch call adds a gradient (:attr:`Run.accumulate`)."""
    check_gradient(p, grad)
    p.grad = grad if p.grad is None else p.grad + grad


def set_buffer(buffer: Buffer, value: Any) -> None:
    """Give ``buffer`` its new value: how a whole-batch call updates state (:attr:`Run.update`)."""
    buffer.data = value
