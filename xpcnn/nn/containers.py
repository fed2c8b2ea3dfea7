"""Containers: :class:`Sequential` (a chain), :class:`Residual` (a block with a skip connection) and
:class:`ModuleList` (modules held in a list, visible to the tree walk).

A public call on a container converts its (N, C, H, W) input once to the batch-innermost layout and runs
every child in it; the children themselves are not changed (each is told the layout by the call's ``run``).
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator, NamedTuple

from ..functional._checks import check_cache
from ..functional.layout import CHWN, nchw_shape
from .layers import MaxPool2D, ReLU
from .module import Module, from_config

__all__ = ["ModuleList", "Residual", "Sequential"]


def _check_module(owner: str, what: str, value: Any) -> Module:
    if not isinstance(value, Module):
        raise TypeError(f"{owner}: {what} must be an xpcnn.nn.Module; got {type(value).__name__}")
    return value


class ModuleList(Module):
    """Modules in a list that the tree walk sees (parameters, buffers, ``train``/``eval``, ``.to``,
    checkpoints), as PyTorch's ``ModuleList``; index, iterate, ``append``, ``insert``, ``extend``, assign and
    delete items as in a list. It has no forward of its own: a module holding one calls the items."""

    def __init__(self, modules: Iterable[Module] = ()):
        super().__init__()
        self._items: list[Module] = []
        self.extend(modules)

    def named_children(self) -> Iterator[tuple[str, Module]]:
        for i, module in enumerate(self._items):
            yield str(i), module

    def _own_children(self) -> list[Module]:
        return list(self._items)

    def _change(self, edit: Any, reason: str) -> None:
        """Apply ``edit`` to the item list (a new list each time, so a walk in another thread keeps its
        snapshot), then relink the items and drop the pending backward above (:meth:`Module._relink`)."""
        before = self._items
        after = list(before)
        edit(after)
        object.__setattr__(self, "_items", after)          # a list of modules, which an attribute may not be
        self._relink(before, after, changed=[*map(id, before)] != [*map(id, after)], reason=reason)

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Module]:
        return iter(list(self._items))

    def __getitem__(self, index: Any) -> Any:
        return ModuleList(self._items[index]) if isinstance(index, slice) else self._items[index]

    def __setitem__(self, index: int, module: Module) -> None:
        _check_module("ModuleList", f"item {index}", module)
        self._change(lambda items: items.__setitem__(index, module), f"item {index} of a ModuleList was replaced")

    def __delitem__(self, index: Any) -> None:
        self._change(lambda items: items.__delitem__(index), f"item {index} of a ModuleList was deleted")

    def append(self, module: Module) -> "ModuleList":
        _check_module("ModuleList", f"item {len(self._items)}", module)
        self._change(lambda items: items.append(module), "a module was appended to a ModuleList")
        return self

    def extend(self, modules: Iterable[Module]) -> "ModuleList":
        for module in modules:
            self.append(module)
        return self

    def insert(self, index: int, module: Module) -> None:
        _check_module("ModuleList", f"item {index}", module)
        self._change(lambda items: items.insert(index, module), f"a module was inserted at {index} of a ModuleList")

    def _forward(self, x, run):
        raise TypeError("ModuleList holds modules but has no forward: call its items in your module's _forward "
                        "(or use Sequential for a chain)")

    def config(self) -> dict:
        self._refuse_shared()
        return {"type": "ModuleList", "modules": [module.config() for module in self._items]}

    @classmethod
    def from_config(cls, config: dict, dtype: str = "float32") -> "ModuleList":
        modules = config["modules"]
        if not isinstance(modules, list):
            raise ValueError(f"ModuleList configuration: 'modules' must be a list; got {type(modules).__name__}")
        return cls(from_config(entry, dtype) for entry in modules)

    def short_repr(self) -> str:
        return f"ModuleList({len(self._items)} modules)"

    def __repr__(self) -> str:
        inner = "\n".join(f"  ({i}) " + repr(m).replace("\n", "\n  ") for i, m in enumerate(self._items))
        return f"ModuleList(\n{inner}\n)"


class SequentialCache(NamedTuple):
    order: tuple           # the indexes of the layers in the order they ran
    caches: tuple          # one per layer, in that order


class Sequential(Module):
    """Layers applied in order; ``backward`` runs them in reverse.

    Takes (N, C, H, W) or (N, features) inputs and returns outputs in the same convention. ``input_shape``
    (C, H, W) lets the model check inputs and print a summary. ``backward(dy)`` returns no input gradient
    unless asked with ``input_grad=True`` (training needs none). The layers are a :class:`ModuleList`
    (``model.layers``); ``append``, ``insert``, ``model[i] = layer`` and ``del model[i]`` change the chain, and
    the next call runs the new one.
    """

    run_layout = CHWN
    input_grad_default = False
    shardable = True

    def __init__(self, *layers: Module, input_shape: tuple | None = None, name: str = "sequential"):
        super().__init__()
        for i, layer in enumerate(layers):
            _check_module("Sequential", f"layer {i}", layer)
        self.layers = ModuleList(layers)
        self.input_shape = None if input_shape is None else tuple(input_shape)
        self._name = name

    @property
    def name(self) -> str:
        return self._name

    def named_children(self):
        """The layers by index, then any other module attached as an attribute."""
        yield from self.layers.named_children()
        for name, child in super().named_children():
            if child is not self.layers:
                yield name, child

    def __getitem__(self, index: int) -> Module:
        return self.layers[index]

    def __setitem__(self, index: int, layer: Module) -> None:
        self.layers[index] = layer

    def __delitem__(self, index: int) -> None:
        del self.layers[index]

    def __len__(self) -> int:
        return len(self.layers)

    def append(self, layer: Module) -> "Sequential":
        self.layers.append(layer)
        return self

    def insert(self, index: int, layer: Module) -> None:
        self.layers.insert(index, layer)

    def execution_order(self) -> tuple[int, ...]:
        """The order the layers run in: as given, except that a ReLU directly followed by a MaxPool2D runs
        after it. max and ReLU commute, and so do their gradients (the window's first maximum is the same
        and ReLU's derivative there is taken at the same value), so the results are identical while the
        ReLU touches a quarter of the elements."""
        layers = list(self.layers)
        order = list(range(len(layers)))
        i = 0
        while i < len(order) - 1:
            if isinstance(layers[i], ReLU) and isinstance(layers[i + 1], MaxPool2D):
                order[i], order[i + 1] = i + 1, i
                i += 2
            else:
                i += 1
        return tuple(order)

    def _forward(self, x, run):
        layers = list(self.layers)
        order = self.execution_order() if run.trace is None else tuple(range(len(layers)))  # a summary: as given
        caches = []
        for i in order:
            x, cache = run.call(layers[i], x)
            caches.append(cache)
        return x, SequentialCache(order, tuple(caches))

    def _backward(self, dy, cache, run, input_grad):
        check_cache("Sequential.backward", cache, SequentialCache)
        layers = list(self.layers)
        if len(cache.order) != len(layers):
            raise ValueError(f"Sequential.backward: the cache holds {len(cache.order)} layers' caches; "
                             f"this Sequential has {len(layers)} layers (was it changed since the forward?)")
        last = len(cache.order) - 1
        for step, (i, layer_cache) in enumerate(zip(reversed(cache.order), reversed(cache.caches))):
            dy = layers[i]._backward(dy, layer_cache, run, input_grad or step < last)
        return dy

    def config(self) -> dict:
        self._refuse_shared()
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

    run_layout = CHWN
    shardable = True

    def __init__(self, body: Module, shortcut: Module | None = None):
        super().__init__()
        _check_module("Residual", "body", body)
        if shortcut is not None:
            _check_module("Residual", "shortcut", shortcut)
        self.body = body
        self.shortcut = shortcut

    def _forward(self, x, run):
        y, body_cache = run.call(self.body, x)
        if self.shortcut is None:
            skip, skip_cache = x, None
        else:
            skip, skip_cache = run.call(self.shortcut, x)
        if tuple(y.shape) != tuple(skip.shape):
            raise ValueError(f"Residual: the body's output {nchw_shape(y.shape, run.layout)} and the shortcut's "
                             f"{nchw_shape(skip.shape, run.layout)} must have the same shape; give a shortcut that "
                             f"matches them (e.g. a 1x1 Conv2D with the body's stride)")
        return y + skip, ResidualCache(body_cache, skip_cache)

    def _backward(self, dy, cache, run, input_grad):
        check_cache("Residual.backward", cache, ResidualCache)
        dx = self.body._backward(dy, cache.body, run, input_grad)
        skip = dy if self.shortcut is None else self.shortcut._backward(dy, cache.shortcut, run, input_grad)
        return dx + skip if input_grad else None

    def config(self) -> dict:
        self._refuse_shared()
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
