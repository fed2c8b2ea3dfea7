"""One training step as a function of explicit state: :class:`TrainStep`.

``step = TrainStep(model, loss_fn, optimizer)`` then ``loss, correct = step(x, y)`` runs the forward, the loss,
the backward and the optimizer's update, as the README's loop does, and returns the batch's mean loss and its
number of correct predictions, both left on the device. Inside, the step is one function whose inputs are
everything that changes from step to step:

- the flat parameters (:meth:`xpcnn.optim.Optimizer.flat_parameters`) and the buffers (BatchNorm's running
  statistics);
- the optimizer's state (momentum, Adam's moments), its learning rate and its step number;
- the counters of the modules that draw random numbers (each :class:`~xpcnn.nn.Dropout`'s ``calls``: its masks
  are a hash of its seed and that counter, see :mod:`xpcnn.functional.random`);
- the batch.

It returns their new values and the metrics. The model's own ``_forward``/``_backward`` run inside it, on the
parameters and buffers it was given; the function reads nothing else that changes, writes nothing outside its
result, reads nothing back to the host and branches on no array value. So on JAX it is compiled once per batch
shape with ``jax.jit`` (the smaller last batch of an epoch compiles once more: it is not padded), and elsewhere it
runs eagerly from the same code: the hand-written loop's operations in its order, so its numbers.

Between steps the model holds real arrays, never a compiler's placeholders: ``Parameter.data``, the buffers, the
optimizer's state and the Dropout counters are set from the step's results, so ``model(x)``, ``xpcnn.save`` and
:func:`xpcnn.evaluate` work between steps as always. The step leaves the gradients empty (``.grad`` None), as
:func:`xpcnn.fit` does after each step. A compiled step keeps what its trace saw as constants: the model's
structure and the optimizer's hyper-parameters (but not the learning rate or the step number, which are inputs):
after changing those, make a new ``TrainStep``.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

from array_api_compat import array_namespace, device

from . import backend as _backend
from .nn.module import Module, split, unflatten
from .optim import Optimizer

__all__ = ["StepState", "TrainStep"]


class StepState(NamedTuple):
    """The inputs of one step besides the batch (each a backend array, or a number where eager)."""

    params: Any                 # the flat parameters (1-D)
    buffers: tuple              # each buffer's array, in model.buffers() order
    optimizer: dict             # the optimizer's flat state arrays by name
    counters: tuple             # each random module's counter, in TrainStep.counters order
    lr: Any                     # the learning rate
    step: Any                   # the number of this update (1 for the first)


class TrainStep:
    """A training step of ``model`` with ``loss_fn`` and ``optimizer`` (see the module's text).

    ``compile``: None (the default) compiles where the backend has a compiler (jax), True insists on it (a
    ValueError elsewhere), False runs eagerly everywhere. The optimizer must hold the model's parameters.
    """

    def __init__(self, model: Module, loss_fn: Any, optimizer: Optimizer, compile: bool | None = None):
        if not isinstance(model, Module):
            raise TypeError(f"TrainStep: model must be an xpcnn.nn.Module; got {type(model).__name__}")
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"TrainStep: optimizer must be an xpcnn.optim.Optimizer; got {type(optimizer).__name__}")
        if not callable(loss_fn) or not callable(getattr(loss_fn, "backward", None)):
            raise TypeError(f"TrainStep: loss_fn must be an xpcnn loss object (called, then .backward()); got "
                            f"{type(loss_fn).__name__}")
        if compile not in (None, True, False):
            raise ValueError(f"TrainStep: compile must be None, True or False; got {compile!r}")
        if {id(p) for p in model.parameters()} != {id(p) for p in optimizer.params}:
            raise ValueError("TrainStep: the optimizer must hold exactly the model's parameters "
                             "(make it with optimizer(model.parameters(), ...))")
        self.model, self.loss_fn, self.optimizer = model, loss_fn, optimizer
        self.buffers = model.buffers()
        self.counters = [(module, name) for module in _unique(model.modules()) for name in module.counters]
        compiler = _backend.compiler(optimizer.params[0].data)
        if compile and compiler is None:
            raise ValueError(f"TrainStep: compile=True needs a backend with a compiler (jax); the parameters are "
                             f"{array_namespace(optimizer.params[0].data).__name__} arrays (pass compile=None or "
                             f"False to run the step eagerly)")
        self.compiled = compiler is not None and compile is not False
        self._function: Callable = compiler(self._pure) if self.compiled else self._pure
        self._updates = True        # whether the traced step updated any parameter (set while it runs)
        self._threshold = decision_threshold(model, loss_fn)

    def state(self) -> StepState:
        """The current explicit state, read from the model and the optimizer. Compiled, the counters become int32
        arrays (once: the step returns them as arrays) and the learning rate and step number Python floats (a
        compiled function takes numbers as inputs, not constants), so that changing them compiles nothing."""
        opt = self.optimizer
        flat = opt.flat_parameters()
        if not opt.state:
            opt.state = opt.initial_state(flat)
        counters = tuple(getattr(module, name) for module, name in self.counters)
        lr, step = opt.lr, opt.steps + 1
        if self.compiled:
            xp = array_namespace(flat)
            counters = tuple(xp.asarray(c, dtype=xp.int32, device=device(flat)) if isinstance(c, int) else c
                             for c in counters)
            lr, step = float(lr), float(step)
        return StepState(flat, tuple(b.data for b in self.buffers), dict(opt.state), counters, lr, step)

    def __call__(self, x: Any, y: Any) -> tuple[Any, Any]:
        """One step on the batch ``(x, y)``: ``(mean loss, number of correct predictions)``, 0-d arrays on the
        device."""
        with self.model.using():        # other threads' calls of the model wait: they never see a step half done
            if not self.model.training:
                self.model.train()
            new, parts, loss, correct = self._function(self.state(), x, y)
            opt = self.optimizer
            if self._updates:
                opt.steps += 1
                opt._scatter(new.params, parts)        # the parts come out of the step: no slicing out here
                opt.state = new.optimizer
            for buffer, value in zip(self.buffers, new.buffers):
                buffer.data = value
            for (module, name), value in zip(self.counters, new.counters):
                setattr(module, name, value)
            opt.zero_grad()
        return loss, correct

    def _pure(self, state: StepState, x: Any, y: Any) -> tuple[StepState, list, Any, Any]:
        """The step as a function of its arguments: ``(new state, the new parameters one by one, loss, correct)``.
        The model's slots hold the arguments only while it runs."""
        model, opt = self.model, self.optimizer
        saved = self._slots()
        try:
            unflatten(state.params, opt.params)
            for p in opt.params:
                p.grad = None
            for buffer, value in zip(self.buffers, state.buffers):
                buffer.data = value
            for (module, name), value in zip(self.counters, state.counters):
                setattr(module, name, value)
            logits = model(x)
            loss = self.loss_fn(logits, y)
            model.backward(self.loss_fn.backward(), input_grad=False)
            missing = opt.missing()
            self._updates = len(missing) < len(opt.params)
            params, opt_state = opt.apply(state.params, opt.flat_gradients(), state.optimizer, state.lr, state.step,
                                          missing)
            new = StepState(params, tuple(b.data for b in self.buffers), opt_state,
                            tuple(getattr(module, name) for module, name in self.counters), state.lr, state.step)
            return (new, split(params, [p.shape for p in opt.params]), loss,
                    _correct(logits, y, self._threshold))
        finally:
            self._restore(saved)

    def _slots(self) -> tuple:
        opt = self.optimizer
        return ([(p.data, p.grad) for p in opt.params], [b.data for b in self.buffers],
                [getattr(module, name) for module, name in self.counters], (opt._flat, opt._views))

    def _restore(self, saved: tuple) -> None:
        params, buffers, counters, flat = saved
        opt = self.optimizer
        for p, (data, grad) in zip(opt.params, params):
            p.data, p.grad = data, grad
        for buffer, data in zip(self.buffers, buffers):
            buffer.data = data
        for (module, name), value in zip(self.counters, counters):
            setattr(module, name, value)
        opt._flat, opt._views = flat
        self.model._forget()


def _correct(logits: Any, labels: Any, threshold: float | None = None) -> Any:
    """Number of correct predictions, left on the device (0-d int32 array; JAX has no int64 by default).
    ``labels`` are class indices (N,) or one-hot / probability targets (N, K), whose largest entry is the class.
    A model with one output is a binary classifier: its prediction is output > ``threshold`` (see
    :func:`decision_threshold`), its label the target rounded (labels (N,) or (N, 1))."""
    xp = array_namespace(logits)
    predicted, truth, _ = _classes(logits, labels, threshold)
    return xp.sum(xp.astype(predicted == truth, xp.int32))


def _classes(logits: Any, labels: Any, threshold: float | None) -> tuple[Any, Any, int]:
    """(predicted class, true class, number of classes) per sample, as :func:`_correct` decides them."""
    xp = array_namespace(logits)
    if logits.ndim == 2 and logits.shape[1] == 1:
        truth = xp.reshape(xp.astype(labels, logits.dtype), (-1,)) >= 0.5
        predicted = logits[:, 0] > (0.0 if threshold is None else threshold)
        return xp.astype(predicted, xp.int32), xp.astype(truth, xp.int32), 2
    truth = xp.argmax(labels, axis=1) if labels.ndim == 2 else labels
    return xp.argmax(logits, axis=1), truth, int(logits.shape[1])


def _one_hot(classes: Any, count: int, like: Any) -> Any:
    """(N, count) rows with 1 at each sample's class, in ``like``'s floating dtype and device."""
    xp = array_namespace(like)
    row = xp.arange(count, device=device(like))
    return xp.astype(xp.expand_dims(xp.astype(classes, row.dtype), axis=1) == row, like.dtype)


def _confusion(logits: Any, labels: Any, threshold: float | None = None) -> Any:
    """The batch's K x K confusion counts (rows: the true class), an int32 array on the device: one product of
    the one-hot true and predicted classes (exact: counts are at most the batch size)."""
    xp = array_namespace(logits)
    predicted, truth, classes = _classes(logits, labels, threshold)
    product = _one_hot(truth, classes, logits).T @ _one_hot(predicted, classes, logits)
    return xp.astype(xp.round(product), xp.int32)


def _in_top_k(logits: Any, labels: Any, k: int) -> Any:
    """How many samples have their true class among the ``k`` largest outputs (ties counted in its favour), a
    0-d int32 array on the device."""
    xp = array_namespace(logits)
    truth = xp.argmax(labels, axis=1) if labels.ndim == 2 else labels
    true_output = xp.sum(logits * _one_hot(truth, logits.shape[1], logits), axis=1, keepdims=True)
    above = xp.sum(xp.astype(logits > true_output, xp.int32), axis=1)
    return xp.sum(xp.astype(above < k, xp.int32))


def decision_threshold(model: Any, loss_fn: Any = None) -> float:
    """Where a one-output model's prediction turns positive: the loss's (0.5 for probabilities, BCELoss; 0 for
    logits, BCEWithLogitsLoss), else 0.5 after a final Sigmoid and 0 otherwise."""
    threshold = getattr(loss_fn, "decision_threshold", None)
    if threshold is not None:
        return threshold
    modules = model.modules() if isinstance(model, Module) else []
    return 0.5 if modules and type(modules[-1]).__name__ == "Sigmoid" else 0.0


def _unique(modules: list) -> list:
    seen, out = set(), []
    for module in modules:
        if id(module) not in seen:
            seen.add(id(module))
            out.append(module)
    return out
