"""The module tree: :class:`Parameter`, :class:`Buffer`, :class:`Module`, and the :class:`Run` of one call.

A module holds parameters (trained), buffers (state that is not trained, such as BatchNorm's running
statistics) and child modules, all found by one walk over its attributes (a plain list or dict of modules is
refused: use :class:`~xpcnn.nn.ModuleList`). Computation has two levels:

- ``_forward(x, run) -> (y, cache)`` and ``_backward(dy, cache, run, input_grad) -> dx``: what each module
  implements. Everything a call needs comes in as arguments: its own named cache (a NamedTuple, checked), and
  the :class:`Run`, a small frozen object saying the layout of the activations, whether this is training,
  how a parameter's gradient is added, how a buffer gets its new value, how a per-channel statistic is summed
  over the parts of a batch, and where a shape trace goes. Nothing is left on the object between calls, so
  one module can appear twice in a network.
- ``module(x)`` and ``module.backward(dy)``: the public pair. A public call takes and returns (N, C, H, W)
  / (N, features) arrays; a container converts once to the batch-innermost layout (see
  :mod:`xpcnn.functional.layout`) and runs its children in it. The cache of the last training-mode call is
  kept for the public ``backward``. A layer gives the same answers alone and inside any container.

A public call runs through the process's executor (:func:`set_executor`): :class:`Serial` runs it in one
piece; :mod:`xpcnn.parallel` installs one that may split a big batch over the CPU cores, running the same
``_forward``/``_backward`` on each shard with a :class:`Run` of its own. The model itself is never wrapped.

Threads: each public call (``model(x)``, ``model.infer(x)``, ``model.backward(dy)``, a summary's trace) holds the
model's lock (:meth:`Module.using`), so calls from several threads take turns instead of interleaving.
:meth:`Module.infer` and everything built on it (:func:`xpcnn.evaluate`, :meth:`Module.predict`) leave the model's
mode and its pending backward alone, so other threads may evaluate a model while one thread trains it. One model
trains in one thread at a time: a ``backward`` whose pending forward another thread replaced is a
:class:`ModelInUseError`, never a gradient of someone else's batch. To train one model from several threads, hold
``with model.using():`` around each whole step (:class:`xpcnn.TrainStep`, and so :func:`xpcnn.fit`, do).
"""

from __future__ import annotations

import inspect
import math
import threading
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Iterator, NamedTuple

import numpy as np
from array_api_compat import array_namespace

from .. import backend as _backend
from ..functional import layout as _layout

__all__ = ["Buffer", "LAYERS", "Module", "ModelInUseError", "Parameter", "Run", "Serial", "add_gradient", "flatten", "from_config", "set_buffer", "set_executor",
           "unflatten"]

DTYPES = ("float32", "float64")
LAYERS: dict[str, type] = {}        # every public module class of xpcnn.nn by name, for from_config


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
    if dtype not in DTYPES:
        raise ValueError(f"{owner}: dtype must be one of {', '.join(DTYPES)}; got {dtype!r}")
    return dtype


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


@dataclass(frozen=True)
class Run:
    """What one call of a module needs to know besides its input, passed down to every child.

    - ``layout``: "NCHW" or "CHWN" (:mod:`xpcnn.functional.layout`), the layout of the activations;
    - ``training``: batch statistics and dropout (the public call takes it from ``module.training``);
    - ``accumulate(parameter, grad)``: how a gradient is added (:func:`add_gradient`: into ``.grad``);
    - ``update(buffer, value)``: how a buffer gets its new value (:func:`set_buffer`);
    - ``reduce(value)``: sums a per-channel statistic (or a count) over the parts of a batch that run apart
      (batch shards, MPI ranks), or None when this call sees the whole batch;
    - ``trace``: a list that receives ``(module, output sample shape)`` for every module run, or None.
    """

    layout: str = "NCHW"
    training: bool = True
    accumulate: Callable[[Parameter, Any], None] = add_gradient
    update: Callable[[Buffer, Any], None] = set_buffer
    reduce: Callable[[Any], Any] | None = None
    trace: list | None = None

    def call(self, module: "Module", x: Any) -> tuple[Any, Any]:
        """How a container runs a child: its ``_forward``, recorded while a summary traces shapes."""
        if self.trace is None:
            return pair(module, module._forward(x, self))
        try:
            y, cache = pair(module, module._forward(x, self))
        except (ValueError, TypeError) as exc:
            if not hasattr(exc, "xpcnn_module"):
                exc.xpcnn_module = module        # the innermost module that refused the input
            raise
        self.trace.append((module, _layout.sample_shape(y.shape, self.layout)))
        return y, cache


class Pending(NamedTuple):
    """What a training-mode public call keeps for the public ``backward``, and the thread that made it."""

    cache: Any
    run: Run
    dtype: Any
    thread: int = 0


def _library(x: Any) -> str:
    """The array library of ``x`` by its backend name (numpy, torch, jax, cupy, array_api_strict)."""
    name = array_namespace(x).__name__
    return next((lib for lib in ("jax", "torch", "cupy", "array_api_strict", "numpy") if lib in name), name)


def pair(module: "Module", out: Any) -> tuple[Any, Any]:
    """``_forward``'s result, which must be ``(y, cache)``."""
    if not (isinstance(out, tuple) and len(out) == 2):
        got = f"a tuple of {len(out)}" if isinstance(out, tuple) else type(out).__name__
        raise TypeError(f"{type(module).__name__}._forward must return (y, cache), the output and what its _backward "
                        f"needs (None if nothing); got {got}")
    return out


class ModelInUseError(RuntimeError):
    """A model was used from two threads in a way that cannot both succeed (see :meth:`Module.using`)."""


_LOCKS: "weakref.WeakKeyDictionary[Module, threading.RLock]" = weakref.WeakKeyDictionary()
_LOCKS_LOCK = threading.Lock()


def precision(model: "Module") -> str:
    """The dtype name of a model's weights (its first parameter's): what its data must be converted to."""
    return dtype_name(next(iter(model.parameters())).data)


def dtype_name(x: Any) -> str:
    xp = array_namespace(x)
    for name in DTYPES:
        if x.dtype == getattr(xp, name, None):
            return name
    raise TypeError(f"parameters must have a floating dtype ({', '.join(DTYPES)}); got {x.dtype}")


class Serial:
    """The executor of public calls that runs each in one piece (see :func:`set_executor`)."""

    def forward(self, model: "Module", x: Any, training: bool) -> tuple[Any, Any, Run]:
        """``model``'s ``_forward`` on ``x`` (NCHW in and out): the output, its cache and the call's Run."""
        xp = model._check_input(x)
        layout = model._layout_for(x)
        run = Run(layout, training)
        y, cache = pair(model, model._forward(_layout.from_nchw(x, xp, layout), run))
        return _layout.to_nchw(y, xp, layout), cache, run

    def backward(self, model: "Module", dy: Any, pending: "Pending", wanted: bool) -> Any:
        """``model``'s ``_backward`` for the pending call's output gradient ``dy`` (NCHW)."""
        xp = array_namespace(dy)
        layout = pending.run.layout
        dx = model._backward(_layout.from_nchw(dy, xp, layout), pending.cache, pending.run, wanted)
        return None if dx is None or not wanted else _layout.to_nchw(dx, xp, layout)


_executor: Serial = Serial()


def set_executor(executor: Serial) -> None:
    """Install the process's executor of public calls (:mod:`xpcnn.parallel` installs its own on import)."""
    global _executor
    _executor = executor


class Module:
    """Base of every layer and container.

    Subclasses implement ``_forward(x, run)`` and ``_backward(dy, cache, run, input_grad)`` (see :class:`Run`);
    containers run their children with ``run.call(child, x)`` and set ``run_layout = "CHWN"``. Constructor
    arguments are passed to ``super().__init__(**config)`` so the module can be rebuilt (:func:`from_config`)
    and printed.
    """

    training = True
    run_layout = "NCHW"         # the layout a public call runs in: containers use the fast CHWN
    input_shape: tuple | None = None
    input_grad_default = True   # what backward(dy) returns without input_grad=
    counters: tuple[str, ...] = ()  # attributes holding call counters (ints) that a training step advances

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.__module__.startswith("xpcnn.nn") and not cls.__name__.startswith("_"):
            LAYERS[cls.__name__] = cls
        own = {name for name in ("forward", "backward") if getattr(cls, name) is not getattr(Module, name)}
        if own and cls._forward is Module._forward:
            raise TypeError(f"{cls.__name__} overrides {' and '.join(sorted(own))}() the PyTorch way; an xpcnn module "
                            f"implements _forward(self, x, run) -> (y, cache) and _backward(self, dy, cache, run, "
                            f"input_grad) -> dx (run children with run.call(child, x)), and the public "
                            f"forward/backward call them. See xpcnn.nn.Module's docstring")

    def __init__(self, **config: Any):
        self._config = config          # constructor arguments, for checkpoints and summaries
        self._last = None              # the Pending of the last training-mode public call

    def __setattr__(self, name: str, value: Any) -> None:
        if name not in ("_config", "_last") and "_config" not in self.__dict__:
            raise TypeError(f"{type(self).__name__}.__init__ must call super().__init__(...) before it sets "
                            f"attributes (setting {name!r}); pass the constructor's arguments to it, e.g. "
                            f"super().__init__(in_features=in_features), so the module can be rebuilt")
        _refuse_hidden_modules(self, name, value)
        object.__setattr__(self, name, value)

    @property
    def name(self) -> str:
        return type(self).__name__.lower()

    # -- the tree
    def named_children(self) -> Iterator[tuple[str, "Module"]]:
        """The modules held as attributes (assigned in ``__init__`` or later), in assignment order. The attributes
        are read as one snapshot: a call running in another thread may set one (``_last``) meanwhile, and iterating
        the live dict then raised "dictionary changed size during iteration" (two fits of one model, seen in CI)."""
        for name, value in list(vars(self).items()):
            if isinstance(value, Module):
                yield name, value
            else:
                _refuse_hidden_modules(self, name, value)

    def children(self) -> list["Module"]:
        return [m for _, m in self.named_children()]

    def named_modules(self, prefix: str = "", _path: tuple = ()) -> Iterator[tuple[str, "Module"]]:
        """This module and every descendant, depth first, with dotted names ("" for this one). A module may
        appear at several places; a module that contains itself is an error."""
        if any(self is outer for outer in _path):
            raise ValueError(f"module cycle: {type(self).__name__} at {prefix!r} contains itself (a module cannot "
                             f"be its own descendant)")
        yield prefix, self
        for name, child in self.named_children():
            yield from child.named_modules(f"{prefix}.{name}" if prefix and name else prefix or name, (*_path, self))

    def modules(self) -> list["Module"]:
        return [m for _, m in self.named_modules()]

    def _named_own(self, kind: type) -> Iterator[tuple[str, Any]]:
        for name, value in list(vars(self).items()):         # a snapshot, as in named_children
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
    def from_config(cls, config: dict, dtype: str = "float32") -> "Module":
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

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad = None

    def train(self, mode: bool = True) -> "Module":
        """Training mode (batch statistics, dropout) for this module and all below it; ``train(False)``: eval."""
        for module in self.modules():
            module.training = bool(mode)
            if not mode:
                module._last = None        # switching to eval drops a pending backward
        return self

    def eval(self) -> "Module":
        return self.train(False)

    def to(self, backend: str | None = None, device: Any = None, dtype: str | None = None) -> "Module":
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
        self._forget()
        return self

    def _forget(self) -> None:
        for module in self.modules():
            module._last = None

    # -- threads
    def using(self) -> threading.RLock:
        """The lock every public call of this model holds while it runs (re-entrant). Hold it around a whole
        training step to train one model from several threads (``with model.using(): ...``), or to read or
        change its arrays while another thread trains it."""
        lock = _LOCKS.get(self)
        if lock is None:
            with _LOCKS_LOCK:
                lock = _LOCKS.setdefault(self, threading.RLock())
        return lock

    # -- computation
    def _forward(self, x: Any, run: Run) -> tuple[Any, Any]:
        raise NotImplementedError(f"{type(self).__name__} has no _forward(x, run): implement _forward(self, x, run) "
                                  f"returning (y, cache) and _backward(self, dy, cache, run, input_grad) returning dx")

    def _backward(self, dy: Any, cache: Any, run: Run, input_grad: bool) -> Any:
        raise NotImplementedError(f"{type(self).__name__} has no _backward(dy, cache, run, input_grad): implement it "
                                  f"(returning the input gradient) to train this module")

    def __call__(self, x: Any) -> Any:
        return self.forward(x)

    def forward(self, x: Any) -> Any:
        """The output for ``x`` ((N, C, H, W) or (N, features)); in training mode the cache is kept for
        :meth:`backward`."""
        return self._public(x, self.training)

    def infer(self, x: Any) -> Any:
        """The eval-mode output for ``x`` (running statistics, no dropout), leaving the module's mode and any
        pending backward as they are: safe while another thread trains the model."""
        return self._public(x, False, keep=False)

    def _public(self, x: Any, training: bool, keep: bool = True) -> Any:
        with self.using():
            try:
                y, cache, run = _executor.forward(self, x, training)
            except RecursionError:
                self.modules()           # a module cycle says so; any other recursion is re-raised as it was
                raise
            if keep:
                self._keep(cache, run, y.dtype, training)
            return y

    def _layout_for(self, x: Any) -> str:
        """The layout a public call on ``x`` runs in: the model's own for batches of images or vectors."""
        return self.run_layout if x.ndim in (2, 4) else "NCHW"

    def _keep(self, cache: Any, run: Run, dtype: Any, training: bool) -> None:
        """After a public ``forward``: in training mode its cache is kept for :meth:`backward` (replacing another
        thread's is noted, so that thread's backward says why it has none); in eval mode any is dropped."""
        me = threading.get_ident()
        if training and self._last is not None and self._last.thread != me:
            self._displaced = self._last.thread
        self._last = Pending(cache, run, dtype, me) if training else None

    def predict(self, x: Any, batch_size: int = 256) -> np.ndarray:
        """Class probabilities for the inputs ``x`` (the model's normalized floats, (N, ...), any backend or NumPy)
        as a NumPy array: (N, K) softmax probabilities, or for a one-output model (N, 1) sigmoid probabilities; a
        model that ends in Softmax or Sigmoid already gives them as they are. Runs in batches of ``batch_size`` in
        eval mode, and leaves the model in the mode it was in."""
        from .. import functional as F

        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"predict: batch_size must be a positive integer; got {batch_size!r}")
        params = [*self.parameters(), *self.buffers()]
        x = x if hasattr(x, "shape") else np.asarray(x)
        if params:                                   # onto the model's backend and device (as is if there already)
            x = _backend.asarray_like(x, params[0].data)
        modules = self.modules()
        last = type(modules[-1]).__name__ if modules else ""
        parts = []
        n = int(x.shape[0])
        for start in range(0, n, batch_size):
            y = self.infer(x[start:min(start + batch_size, n), ...])
            if last not in ("Softmax", "Sigmoid"):
                y = F.sigmoid(y) if y.shape[1] == 1 else F.softmax(y)
            parts.append(_backend.to_numpy(y))
        return np.concatenate(parts) if parts else np.zeros((0, *self._trace_shapes(tuple(x.shape[1:]))[id(self)]))

    def _check_input(self, x: Any) -> Any:
        """Refuse, in the user's own terms (NCHW), inputs that could only fail deep inside or be misread."""
        if not hasattr(x, "ndim") or not hasattr(x, "dtype"):
            raise TypeError(f"{self.name}: input must be an array; got {type(x).__name__}")
        xp = array_namespace(x)
        if not xp.isdtype(x.dtype, "real floating"):
            raise TypeError(f"{self.name}: inputs must be floating-point; got {x.dtype} of shape {tuple(x.shape)} "
                            f"(normalize uint8 images as the training images were: xpcnn.data.Dataset.from_numpy, "
                            f"or xpcnn.data.normalize(images, mean=data.mean, std=data.std) with the training "
                            f"Dataset's statistics)")
        first = next(self.named_parameters(), None)
        if first is not None and type(first[1].data) is not type(x) and array_namespace(first[1].data) is not xp:
            held, given = _library(first[1].data), _library(x)
            raise TypeError(f"{self.name} has {held} parameters; got a {given} input. Move the input to {held} "
                            f"(xpcnn.backend.asarray_like(x, next(iter(model.parameters())).data)), or the model to "
                            f"{given} (model.to({given!r})); xpcnn.fit and xpcnn.evaluate move NumPy data themselves")
        if first is not None and first[1].data.dtype != x.dtype:
            wanted = dtype_name(first[1].data)
            raise TypeError(f"{self.name} has {wanted} parameters; got {x.dtype} inputs (convert them with "
                            f"xp.astype(x, xp.{wanted}), or the model with .to(dtype={str(x.dtype)!r}))")
        if self.input_shape is not None and tuple(x.shape[1:]) != tuple(self.input_shape):
            raise ValueError(f"{self.name} expects inputs of shape (N, {', '.join(map(str, self.input_shape))}); "
                             f"got {tuple(x.shape)}")
        return xp

    def backward(self, dy: Any, input_grad: bool | None = None) -> Any:
        """Fill the parameters' ``.grad`` from ``dy``, the gradient for the output of the last training-mode
        call, and return the gradient for its input when ``input_grad`` is true (default: True for layers,
        False for Sequential, as training needs none and it costs a col2im). A first layer with parameters
        skips computing it."""
        with self.using():
            pending, wanted = self._take_pending(dy, input_grad)
            return _executor.backward(self, dy, pending, wanted)

    def _take_pending(self, dy: Any, input_grad: bool | None) -> tuple[Pending, bool]:
        """The last training-mode call's :class:`Pending` (then forgotten), after checking ``dy`` against it;
        and whether the input gradient is wanted. Called holding :meth:`using`."""
        me = threading.get_ident()
        pending = self._last
        if pending is None or pending.thread != me:
            if pending is not None or self.__dict__.get("_displaced") == me:
                self._displaced = None
                raise ModelInUseError(
                    f"{type(self).__name__}.backward in thread {threading.current_thread().name!r}: another thread ran "
                    f"a training-mode forward of this model after this thread's, so the pending backward is not this "
                    f"thread's. One model trains in one thread at a time: train it from one thread, or hold "
                    f"'with model.using():' around each whole step (forward, backward, optimizer step); evaluate from "
                    f"other threads with xpcnn.evaluate, model.predict or model.infer, which leave training alone")
            raise RuntimeError(f"{type(self).__name__}.backward called without a training-mode forward before it")
        if not hasattr(dy, "dtype"):
            raise TypeError(f"{type(self).__name__}.backward: dy must be an array; got {type(dy).__name__}")
        if dy.dtype != pending.dtype:
            raise TypeError(f"{type(self).__name__}.backward: dy must have the dtype of the output "
                            f"({pending.dtype}); got {dy.dtype}")
        self._last = None
        return pending, self.input_grad_default if input_grad is None else bool(input_grad)

    # -- shapes and printing
    def _trace_shapes(self, sample_shape: tuple) -> dict[int, tuple]:
        """Each module's output shape for one sample, by running an empty batch through it in eval mode. The
        trace goes into its own :class:`Run`: no module's mode or pending backward is touched."""
        with self.using():
            return self._trace(sample_shape)

    def _trace(self, sample_shape: tuple) -> dict[int, tuple]:
        params = [*self.parameters(), *self.buffers()]
        like = params[0].data if params else _backend.asarray(np.zeros(1, np.float32))
        layout = self.run_layout if len(sample_shape) in (1, 3) else "NCHW"
        empty = np.zeros((*sample_shape, 0) if layout == "CHWN" else (0, *sample_shape), dtype=dtype_name(like))
        run = Run(layout, training=False, trace=[])
        try:
            run.call(self, _backend.asarray_like(empty, like))
        except (ValueError, TypeError) as exc:
            names = {id(m): n for n, m in self.named_modules()}
            where = getattr(exc, "xpcnn_module", self)
            label = names.get(id(where)) or "(top)"
            raise ValueError(f"{self.name}: input of shape (N, {', '.join(map(str, sample_shape))}) does not fit "
                             f"layer {label} ({where.short_repr()}): {exc}") from None
        return {id(module): shape for module, shape in reversed(run.trace)}    # first use wins

    def check_input(self, shape: tuple) -> tuple:
        """Raise ValueError, with the expected shape, if inputs of ``shape`` (N, ...) cannot pass through;
        return the shape of one sample's output."""
        shape = tuple(shape)
        if self.input_shape is not None and shape[1:] != tuple(self.input_shape):
            raise ValueError(f"{self.name} expects inputs of shape (N, {', '.join(map(str, self.input_shape))}); "
                             f"got {shape}")
        return self._trace_shapes(shape[1:])[id(self)]

    def summary(self, input_shape: tuple | None = None) -> str:
        """A table of every module (indented by depth), its output shape and parameter count (needs
        ``input_shape`` (C, H, W), or a model built with one)."""
        sample = tuple(input_shape or self.input_shape or ())
        if not sample:
            raise ValueError("summary needs input_shape=(C, H, W) (or a model built with one)")
        shapes = self._trace_shapes(sample)
        rows = [("layer", "output shape", "parameters")]
        for name, module in self.named_modules():
            if not name:
                continue
            depth = name.count(".")
            count = sum(math.prod(p.shape) for p in module.parameters())
            rows.append((f"{'  ' * depth}{name.rsplit('.', 1)[-1]}: {module.short_repr()}",
                         str(shapes.get(id(module), "?")), f"{count:,}"))
        total = sum(math.prod(p.shape) for p in self.parameters())
        widths = [max(len(r[k]) for r in rows) for k in range(3)]
        lines = [f"{self.name}: input {sample}"]
        lines += [f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c:>{widths[2]}}" for a, b, c in rows]
        lines.append(f"total parameters: {total:,}")
        return "\n".join(lines)

    def short_repr(self) -> str:
        """One line: a layer's repr, or a container's type and size."""
        return repr(self)

    def __repr__(self) -> str:
        """Required arguments by position, the others only where they differ from their defaults."""
        params = inspect.signature(type(self).__init__).parameters
        args = []
        for key, value in self._config.items():
            default = params[key].default if key in params else inspect.Parameter.empty
            if default is inspect.Parameter.empty:
                args.append(repr(value))
            elif value != default:
                args.append(f"{key}={value!r}")
        return f"{type(self).__name__}({', '.join(args)})"


def from_config(config: Any, dtype: str = "float32") -> Module:
    """A module (and its children) rebuilt from ``module.config()``; ValueError for anything malformed."""
    if not isinstance(config, dict) or not isinstance(config.get("type"), str):
        raise ValueError(f"a module configuration must be a dict with a 'type'; got {config!r:.200}")
    kind = config["type"]
    if kind not in LAYERS:
        raise ValueError(f"unknown layer type {kind!r} in the model configuration (known: {', '.join(sorted(LAYERS))})")
    try:
        return LAYERS[kind].from_config(config, dtype)
    except (TypeError, KeyError, AttributeError) as exc:
        raise ValueError(f"bad configuration for {kind}: {type(exc).__name__}: {exc}") from None


def _refuse_hidden_modules(owner: Module, name: str, value: Any) -> None:
    """A plain list, tuple or dict holding modules would hide them from the tree walk (no parameters, no
    training): refused, naming the container that keeps them visible."""
    if not isinstance(value, (list, tuple, dict)) or name in ("_config", "_last"):
        return
    items = value.values() if isinstance(value, dict) else value
    if any(isinstance(item, Module) for item in items):
        kind = "dict" if isinstance(value, dict) else type(value).__name__
        raise TypeError(f"{type(owner).__name__}.{name} is a plain {kind} holding modules, which the module tree "
                        f"cannot see (their parameters would not train); use xpcnn.nn.ModuleList(...) instead, or "
                        f"assign each module as an attribute")
