"""The module tree: children, parameters and buffers registered when they are assigned (as PyTorch does), the
walks over them, and what those walks serve (``train``/``eval``, ``.to``, ``zero_grad``).

Each module keeps a registry (``_tree``) of its attributes that are modules, parameters or buffers, in attribute
order. An assignment replaces the registry whole instead of changing it, so a walk in one thread reads one
consistent snapshot while another thread assigns (a call sets its pending backward on the model meanwhile).
A plain list, tuple or dict holding modules is refused: the walk cannot see into it (use ``ModuleList``).

Each module also knows its parents (weakly). A change of the tree (a child, parameter or buffer replaced, added
or removed, here or in any descendant) drops the pending backward of the module and of every ancestor: the
cache of a forward describes the tree that ran it, and a backward through another tree would hand one layer's
gradient to another.
"""

from __future__ import annotations

import weakref
from typing import Any, Iterator

from .. import backend as _backend
from .slots import Buffer, Parameter, check_dtype, dtype_name

__all__ = ["Tree"]

# bookkeeping attributes: set on every call or at construction, never part of the tree
_INTERNAL = frozenset({"_config", "_last", "_displaced", "_dropped", "_tree", "_plain", "_parents"})


class Tree:
    """Registration and walks: ``named_children``/``named_modules``/``named_parameters``/``named_buffers``."""

    def _start_tree(self) -> None:
        object.__setattr__(self, "_tree", {})    # name -> Module, Parameter or Buffer; replaced, never mutated
        object.__setattr__(self, "_plain", ())   # names of list, tuple and dict attributes, checked at each walk
        object.__setattr__(self, "_parents", {})  # id -> weakref.ref of each module holding this one

    def __getstate__(self) -> dict:
        """Copies and pickles leave the parent links out (they are weak); :meth:`__setstate__` relinks."""
        return {k: v for k, v in self.__dict__.items() if k != "_parents"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        object.__setattr__(self, "_parents", {})
        for child in self._own_children():
            child._parents[id(self)] = weakref.ref(self)

    def _own_children(self) -> list["Tree"]:
        """The modules this one holds directly (its attributes; a ModuleList's items)."""
        return [v for v in self._tree.values() if isinstance(v, Tree)]

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _INTERNAL:
            object.__setattr__(self, name, value)
            return
        if "_tree" not in self.__dict__:
            raise TypeError(f"{type(self).__name__}.__init__ must call super().__init__(...) before it sets "
                            f"attributes (setting {name!r}); pass the constructor's arguments to it, e.g. "
                            f"super().__init__(in_features=in_features), so the module can be rebuilt")
        _refuse_hidden_modules(self, name, value)
        object.__setattr__(self, name, value)
        self._register(name, value)

    def __delattr__(self, name: str) -> None:
        object.__delattr__(self, name)
        if name not in _INTERNAL:
            self._register(name, None)

    def _register(self, name: str, value: Any) -> None:
        """Update the registries after attribute ``name`` became ``value`` (None: deleted)."""
        if isinstance(value, (Tree, Parameter, Buffer)) or name in self._tree:
            before = self._tree
            attributes = list(vars(self).items())        # one snapshot, in attribute order
            object.__setattr__(self, "_tree", {n: v for n, v in attributes if isinstance(v, (Tree, Parameter, Buffer))})
            self._relink([v for v in before.values() if isinstance(v, Tree)],
                         [v for v in self._tree.values() if isinstance(v, Tree)],
                         changed=[*map(id, before.values())] != [*map(id, self._tree.values())],
                         reason=f"{type(self).__name__}.{name} was reassigned")
        plain = isinstance(value, (list, tuple, dict))
        if plain != (name in self._plain):
            object.__setattr__(self, "_plain", tuple(n for n in self._plain if n != name) + ((name,) * plain))

    def _relink(self, before: list, after: list, changed: bool, reason: str) -> None:
        """After this module's children went from ``before`` to ``after``: their parent links, and if the tree
        changed, the pending backward of this module and its ancestors dropped (saying ``reason``)."""
        for child in before:
            if not any(child is other for other in after):
                child._parents.pop(id(self), None)
        for child in after:
            child._parents[id(self)] = weakref.ref(self)
        if changed:
            self._drop_pending(reason)

    def _drop_pending(self, reason: str) -> None:
        """Forget the pending backward of this module and of every module above it, noting why."""
        seen, todo = set(), [self]
        while todo:
            module = todo.pop()
            if id(module) in seen:
                continue
            seen.add(id(module))
            if module._last is not None:
                module._last, module._dropped = None, reason
            todo.extend(parent for parent in (ref() for ref in list(module._parents.values())) if parent is not None)

    # -- walks
    def named_children(self) -> Iterator[tuple[str, "Tree"]]:
        """The modules held as attributes (assigned in ``__init__`` or later), in assignment order."""
        for name in self._plain:                          # a plain list filled after its assignment
            _refuse_hidden_modules(self, name, self.__dict__.get(name))
        for name, value in self._tree.items():
            if isinstance(value, Tree):
                yield name, value

    def children(self) -> list["Tree"]:
        return [m for _, m in self.named_children()]

    def named_modules(self, prefix: str = "", _path: tuple = ()) -> Iterator[tuple[str, "Tree"]]:
        """This module and every descendant, depth first, with dotted names ("" for this one). A module may
        appear at several places; a module that contains itself is an error."""
        if any(self is outer for outer in _path):
            raise ValueError(f"module cycle: {type(self).__name__} at {prefix!r} contains itself (a module cannot "
                             f"be its own descendant)")
        yield prefix, self
        for name, child in self.named_children():
            yield from child.named_modules(f"{prefix}.{name}" if prefix and name else prefix or name, (*_path, self))

    def modules(self) -> list["Tree"]:
        return [m for _, m in self.named_modules()]

    def _named_own(self, kind: type) -> Iterator[tuple[str, Any]]:
        for name, value in self._tree.items():
            if isinstance(value, kind):
                yield name, value

    def _named_all(self, kind: type) -> Iterator[tuple[str, Any]]:
        seen = set()
        for prefix, module in self.named_modules():
            for name, value in module._named_own(kind):
                if id(value) not in seen:          # a module used twice holds its parameters once
                    seen.add(id(value))
                    yield (f"{prefix}.{name}" if prefix else name), value

    def named_parameters(self) -> Iterator[tuple[str, Parameter]]:
        """Every parameter with its dotted name, e.g. ``3.body.0.weight``."""
        return self._named_all(Parameter)

    def parameters(self) -> list[Parameter]:
        return [p for _, p in self.named_parameters()]

    def named_buffers(self) -> Iterator[tuple[str, Buffer]]:
        return self._named_all(Buffer)

    def buffers(self) -> list[Buffer]:
        return [b for _, b in self.named_buffers()]

    # -- what the walks serve
    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad = None

    def train(self, mode: bool = True) -> "Tree":
        """Training mode (batch statistics, dropout) for this module and all below it; ``train(False)``: eval."""
        for module in self.modules():
            module.training = bool(mode)
            if not mode and module._last is not None:      # switching to eval drops a pending backward
                module._last, module._dropped = None, "the model was switched to eval mode"
        return self

    def eval(self) -> "Tree":
        return self.train(False)

    def to(self, backend: str | None = None, device: Any = None, dtype: str | None = None) -> "Tree":
        """Move parameters and buffers to ``backend`` and ``device`` (given either, the other defaults to the
        current backend and its default device), and/or change their dtype (float32 or float64).
        ``to(dtype=...)`` alone changes the dtype and leaves every array on its backend and device."""
        if dtype is not None:
            check_dtype(f"{type(self).__name__}.to", dtype)
        slots = [*self.parameters(), *self.buffers()]
        if backend is None and device is None:
            for slot in slots:
                slot.data = _backend.asarray_like(slot.data, slot.data, dtype=dtype or dtype_name(slot.data))
        else:
            with _backend.use_backend(backend or _backend.get_backend().name, device):
                for slot in slots:
                    slot.data = _backend.asarray(slot.data, dtype=dtype or dtype_name(slot.data))
        for slot in slots:
            if isinstance(slot, Parameter):
                slot.grad = None
        self._forget("its arrays were moved by .to()")
        return self

    def _forget(self, reason: str = "its arrays were replaced") -> None:
        """Drop every pending backward in the tree (its arrays changed), noting why."""
        for module in self.modules():
            if module._last is not None:
                module._last, module._dropped = None, reason


def _refuse_hidden_modules(owner: Tree, name: str, value: Any) -> None:
    """A plain list, tuple or dict holding modules would hide them from the tree walk (no parameters, no
    training): refused, naming the container that keeps them visible."""
    if not isinstance(value, (list, tuple, dict)):
        return
    items = value.values() if isinstance(value, dict) else value
    if any(isinstance(item, Tree) for item in items):
        kind = "dict" if isinstance(value, dict) else type(value).__name__
        raise TypeError(f"{type(owner).__name__}.{name} is a plain {kind} holding modules, which the module tree "
                        f"cannot see (their parameters would not train); use xpcnn.nn.ModuleList(...) instead, or "
                        f"assign each module as an attribute")
