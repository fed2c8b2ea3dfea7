"""The call protocol of a module: :class:`Run` (what one call needs besides its input), the public
``forward``/``infer``/``backward`` with the model's lock and its pending backward, and the executor that runs
them (:class:`Serial`, or the one :mod:`xpcnn.parallel` installs with :func:`set_executor`)."""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

import numpy as np
from array_api_compat import array_namespace

from .. import backend as _backend
from ..functional import layout as _layout
from ..functional._checks import as_int
from .slots import Buffer, Parameter, add_gradient, dtype_name, set_buffer

__all__ = ["Calls", "ModelInUseError", "Pending", "Run", "Serial", "pair", "set_executor"]


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

    layout: str = _layout.LAYOUTS[0]
    training: bool = True
    accumulate: Callable[[Parameter, Any], None] = add_gradient
    update: Callable[[Buffer, Any], None] = set_buffer
    reduce: Callable[[Any], Any] | None = None
    trace: list | None = None

    def call(self, module: Any, x: Any) -> tuple[Any, Any]:
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


def pair(module: Any, out: Any) -> tuple[Any, Any]:
    """``_forward``'s result, which must be ``(y, cache)``."""
    if not (isinstance(out, tuple) and len(out) == 2):
        got = f"a tuple of {len(out)}" if isinstance(out, tuple) else type(out).__name__
        raise TypeError(f"{type(module).__name__}._forward must return (y, cache), the output and what its _backward "
                        f"needs (None if nothing); got {got}")
    return out


class ModelInUseError(RuntimeError):
    """A model was used from two threads in a way that cannot both succeed (see :meth:`Calls.using`)."""


def _library(x: Any) -> str:
    """The array library of ``x`` by its backend name (numpy, torch, jax, cupy, array_api_strict)."""
    name = array_namespace(x).__name__
    return next((lib for lib in ("jax", "torch", "cupy", "array_api_strict", "numpy") if lib in name), name)


class Serial:
    """The executor of public calls that runs each in one piece (see :func:`set_executor`)."""

    def forward(self, model: Any, x: Any, training: bool) -> tuple[Any, Any, Run]:
        """``model``'s ``_forward`` on ``x`` (NCHW in and out): the output, its cache and the call's Run."""
        xp = model._check_input(x)
        layout = model._layout_for(x)
        run = Run(layout, training)
        with _backend.on_device(x):          # arrays the ops make without device= land beside x (CuPy)
            y, cache = pair(model, model._forward(_layout.from_nchw(x, xp, layout), run))
            return _layout.to_nchw(y, xp, layout), cache, run

    def backward(self, model: Any, dy: Any, pending: Pending, wanted: bool) -> Any:
        """``model``'s ``_backward`` for the pending call's output gradient ``dy`` (NCHW)."""
        xp = array_namespace(dy)
        layout = pending.run.layout
        with _backend.on_device(dy):
            dx = model._backward(_layout.from_nchw(dy, xp, layout), pending.cache, pending.run, wanted)
            return None if dx is None or not wanted else _layout.to_nchw(dx, xp, layout)


_executor: Serial = Serial()
_LOCKS: "weakref.WeakKeyDictionary[Any, threading.RLock]" = weakref.WeakKeyDictionary()
_LOCKS_LOCK = threading.Lock()


def set_executor(executor: Serial) -> None:
    """Install the process's executor of public calls (:mod:`xpcnn.parallel` installs its own on import)."""
    global _executor
    _executor = executor


class Calls:
    """The public call protocol of :class:`~xpcnn.nn.Module`: ``module(x)``, ``infer``, ``backward``, ``predict``,
    each through the process's executor while holding the model's lock (:meth:`using`)."""

    input_shape: tuple | None = None
    input_grad_default = True   # what backward(dy) returns without input_grad=
    gives_probabilities = False  # a last module that says True makes a model's outputs probabilities (xpcnn.metrics)

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
            except (RecursionError, ValueError, TypeError):
                self.modules()           # a module cycle says so; any other error is re-raised as it was
                raise
            if keep:
                self._keep(cache, run, y.dtype, training)
            return y

    def _layout_for(self, x: Any) -> str:
        """The layout a public call on ``x`` runs in: the model's own for batches of images or vectors."""
        return _layout.for_ndim(self.run_layout, x.ndim)

    def _keep(self, cache: Any, run: Run, dtype: Any, training: bool) -> None:
        """After a public ``forward``: in training mode its cache is kept for :meth:`backward` (the threads whose
        pending backward another thread replaced are remembered, so each one's backward says why it has none); in
        eval mode any is dropped."""
        me = threading.get_ident()
        displaced = self._displaced - {me}
        if training and self._last is not None and self._last.thread != me:
            displaced |= {self._last.thread}
        self._displaced, self._dropped = displaced, None
        self._last = Pending(cache, run, dtype, me) if training else None

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
            if pending is not None or me in self._displaced:
                self._displaced = self._displaced - {me}
                raise ModelInUseError(
                    f"{type(self).__name__}.backward in thread {threading.current_thread().name!r}: another thread ran "
                    f"a training-mode forward of this model after this thread's, so the pending backward is not this "
                    f"thread's. One model trains in one thread at a time: train it from one thread, or hold "
                    f"'with model.using():' around each whole step (forward, backward, optimizer step); evaluate from "
                    f"other threads with xpcnn.evaluate, model.predict or model.infer, which leave training alone")
            if self._dropped:
                raise RuntimeError(f"{type(self).__name__}.backward: the forward before it no longer applies, as "
                                   f"{self._dropped} since; run the training-mode forward again, then backward")
            raise RuntimeError(f"{type(self).__name__}.backward called without a training-mode forward before it")
        if not hasattr(dy, "dtype"):
            raise TypeError(f"{type(self).__name__}.backward: dy must be an array; got {type(dy).__name__}")
        if dy.dtype != pending.dtype:
            raise TypeError(f"{type(self).__name__}.backward: dy must have the dtype of the output "
                            f"({pending.dtype}); got {dy.dtype}")
        self._last = None
        return pending, self.input_grad_default if input_grad is None else bool(input_grad)

    def using(self) -> threading.RLock:
        """The lock every public call of this model holds while it runs (re-entrant). Hold it around a whole
        training step to train one model from several threads (``with model.using(): ...``), or to read or
        change its arrays while another thread trains it."""
        lock = _LOCKS.get(self)
        if lock is None:
            with _LOCKS_LOCK:
                lock = _LOCKS.setdefault(self, threading.RLock())
        return lock

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

    def predict(self, x: Any, batch_size: int = 256) -> np.ndarray:
        """Class probabilities for the inputs ``x`` (the model's normalized floats, (N, ...), any backend or NumPy)
        as a NumPy array: (N, K) softmax probabilities, or for a one-output model (N, 1) sigmoid probabilities; a
        model that ends in Softmax or Sigmoid already gives them as they are. Runs in batches of ``batch_size`` in
        eval mode, and leaves the model in the mode it was in."""
        from .. import functional as F
        from ..metrics import outputs_are_probabilities     # (metrics imports nn: a deferred import)

        batch_size = as_int("predict", "batch_size", batch_size, 1)
        params = [*self.parameters(), *self.buffers()]
        x = x if hasattr(x, "shape") else np.asarray(x)
        if params:                                   # onto the model's backend and device (as is if there already)
            x = _backend.asarray_like(x, params[0].data)
        probabilities = outputs_are_probabilities(self)
        parts = []
        n = int(x.shape[0])
        for start in range(0, n, batch_size):
            y = self.infer(x[start:min(start + batch_size, n), ...])
            if not probabilities:
                y = F.sigmoid(y) if y.shape[1] == 1 else F.softmax(y)
            parts.append(y)
        if not parts:
            return np.zeros((0, *self._trace_shapes(tuple(x.shape[1:]))[id(self)]))
        return _backend.to_numpy(array_namespace(parts[0]).concat(parts, axis=0))    # one read-back
