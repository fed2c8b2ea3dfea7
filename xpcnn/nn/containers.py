"""Containers: :class:`Sequential` (a chain) and :class:`Residual` (a block with a skip connection).

A public call on a container converts its (N, C, H, W) input once to the batch-innermost layout and runs
every child in it; the children themselves are not changed (each is told the layout when it runs).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from ..functional._checks import check_cache
from ..functional.layout import nchw_shape
from .layers import MaxPool2D, ReLU
from . import module as _module
from .module import Module, from_config

__all__ = ["Residual", "Sequential"]


class SequentialCache(NamedTuple):
    caches: tuple          # one per layer, in the order they ran


class Sequential(Module):
    """Layers applied in order; ``backward`` runs them in reverse.

    Takes (N, C, H, W) or (N, features) inputs and returns outputs in the same convention. ``input_shape``
    (C, H, W) lets the model check inputs and print a summary. ``backward(dy)`` returns no input gradient
    unless asked with ``input_grad=True`` (training needs none).
    """

    run_layout = "CHWN"
    input_grad_default = False
    shardable = True

    def __init__(self, *layers: Module, input_shape: tuple | None = None, name: str = "sequential"):
        super().__init__()
        for i, layer in enumerate(layers):
            if not isinstance(layer, Module):
                raise TypeError(f"Sequential: layer {i} must be an xpcnn.nn.Module; got {type(layer).__name__}")
        self.layers = list(layers)
        self.input_shape = None if input_shape is None else tuple(input_shape)
        self._name = name
        self._order = self._execution_order()

    @property
    def name(self) -> str:
        return self._name

    def named_children(self):
        for i, layer in enumerate(self.layers):
            yield str(i), layer

    def __getitem__(self, index: int) -> Module:
        return self.layers[index]

    def __len__(self) -> int:
        return len(self.layers)

    def _execution_order(self) -> list[int]:
        """The order the layers run in: as given, except that a ReLU directly followed by a MaxPool2D runs
        after it. max and ReLU commute, and so do their gradients (the window's first maximum is the same
        and ReLU's derivative there is taken at the same value), so the results are identical while the
        ReLU touches a quarter of the elements."""
        order = list(range(len(self.layers)))
        i = 0
        while i < len(order) - 1:
            if isinstance(self.layers[i], ReLU) and isinstance(self.layers[i + 1], MaxPool2D):
                order[i], order[i + 1] = i + 1, i
                i += 2
            else:
                i += 1
        return order

    def _forward(self, x, layout):
        caches = []
        order = self._order if _module._trace is None else range(len(self.layers))   # a summary shows the given order
        for i in order:
            x, cache = self.layers[i]._call(x, layout)
            caches.append(cache)
        return x, SequentialCache(tuple(caches))

    def _backward(self, dy, cache, layout, input_grad):
        check_cache("Sequential.backward", cache, SequentialCache)
        if len(cache.caches) != len(self._order):
            raise ValueError(f"Sequential.backward: the cache holds {len(cache.caches)} layers' caches; "
                             f"this Sequential has {len(self._order)} layers")
        last = len(self._order) - 1
        for step, (i, layer_cache) in enumerate(zip(reversed(self._order), reversed(cache.caches))):
            dy = self.layers[i]._backward(dy, layer_cache, layout, input_grad or step < last)
        return dy

    def config(self) -> dict:
        return {"type": "Sequential", "name": self.name,
                "input_shape": None if self.input_shape is None else list(self.input_shape),
                "layers": [layer.config() for layer in self.layers]}

    @classmethod
    def from_config(cls, config: dict, dtype: str = "float32") -> "Sequential":
        """Rebuild a model from :meth:`config` (weights freshly initialized; load a checkpoint over them)."""
        layers = config["layers"]
        if not isinstance(layers, list):
            raise ValueError(f"Sequential configuration: 'layers' must be a list; got {type(layers).__name__}")
        shape = config.get("input_shape")
        return cls(*(from_config(entry, dtype) for entry in layers),
                   input_shape=None if shape is None else tuple(shape), name=str(config.get("name", "sequential")))

    def short_repr(self) -> str:
        return f"Sequential({len(self.layers)} layers)"

    def __repr__(self) -> str:
        inner = "\n".join(f"  ({i}) " + repr(layer).replace("\n", "\n  ") for i, layer in enumerate(self.layers))
        return f"Sequential(\n{inner}\n)"


class ResidualCache(NamedTuple):
    body: Any
    shortcut: Any          # None for the identity


class Residual(Module):
    """``body(x) + shortcut(x)``, the shortcut being the identity when None (He et al. 2016).

    The input gradient is the sum of both paths' input gradients. A ResNet block is
    ``Sequential(..., Residual(body, shortcut), ReLU(), ...)``.
    """

    run_layout = "CHWN"
    shardable = True

    def __init__(self, body: Module, shortcut: Module | None = None):
        super().__init__()
        for what, module in (("body", body), ("shortcut", shortcut)):
            if module is not None and not isinstance(module, Module):
                raise TypeError(f"Residual: {what} must be an xpcnn.nn.Module; got {type(module).__name__}")
        if body is None:
            raise TypeError("Residual: body must be an xpcnn.nn.Module; got None")
        self.body = body
        self.shortcut = shortcut

    def _forward(self, x, layout):
        y, body_cache = self.body._call(x, layout)
        if self.shortcut is None:
            skip, skip_cache = x, None
        else:
            skip, skip_cache = self.shortcut._call(x, layout)
        if tuple(y.shape) != tuple(skip.shape):
            raise ValueError(f"Residual: the body's output {nchw_shape(y.shape, layout)} and the shortcut's "
                             f"{nchw_shape(skip.shape, layout)} must have the same shape; give a shortcut that "
                             f"matches them (e.g. a 1x1 Conv2D with the body's stride)")
        return y + skip, ResidualCache(body_cache, skip_cache)

    def _backward(self, dy, cache, layout, input_grad):
        check_cache("Residual.backward", cache, ResidualCache)
        dx = self.body._backward(dy, cache.body, layout, input_grad)
        skip = dy if self.shortcut is None else self.shortcut._backward(dy, cache.shortcut, layout, input_grad)
        return dx + skip if input_grad else None

    def config(self) -> dict:
        return {"type": "Residual", "body": self.body.config(),
                "shortcut": None if self.shortcut is None else self.shortcut.config()}

    @classmethod
    def from_config(cls, config: dict, dtype: str = "float32") -> "Residual":
        shortcut = config.get("shortcut")
        return cls(from_config(config["body"], dtype), None if shortcut is None else from_config(shortcut, dtype))

    def short_repr(self) -> str:
        return "Residual(" + ("identity" if self.shortcut is None else "projection") + " shortcut)"

    def __repr__(self) -> str:
        body = repr(self.body).replace("\n", "\n  ")
        shortcut = "identity" if self.shortcut is None else repr(self.shortcut).replace("\n", "\n  ")
        return f"Residual(\n  body={body}\n  shortcut={shortcut}\n)"
