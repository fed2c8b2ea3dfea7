"""One training step as a function of explicit state: :class:`TrainStep`.

``step = TrainStep(model, loss_fn, optimizer)`` then ``loss, correct = step(x, y)`` runs the forward, the loss,
the backward and the optimizer's update, as the README's loop does, and returns the batch's mean loss and its
number of correct predictions, both left on the device. Inside, the step is one function of everything that
changes from step to step (:class:`StepState`: the flat parameters, the buffers, the counters of the modules that
draw random numbers, the optimizer's state, the learning rate and the step number) and the batch, and it returns
their new values and the metrics. The model runs on that state through :func:`xpcnn.nn.stateless.run`; the
optimizer takes the new values through :meth:`~xpcnn.optim.Optimizer.commit`.

The function reads nothing else that changes, writes nothing outside its result, reads nothing back to the host
and branches on no array value. So on JAX it is compiled once per batch shape with ``jax.jit``; elsewhere it runs
eagerly from the same code: the hand-written loop's operations in its order, so its numbers. A compiled step
keeps what its trace saw as constants: the model's structure and the optimizer's hyper-parameters (not the
learning rate or the step number, which are inputs): after changing those, make a new ``TrainStep``.

Data-parallel training is the same step with a gradient-reduction hook (``reduce_gradients``): each process
runs its part of the batch and the hook sums the flat gradient and the metrics across processes before the
update, so every process takes the same step.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

from array_api_compat import array_namespace, device

from . import backend as _backend
from . import metrics as _metrics
from .nn import stateless
from .nn.module import Module, split
from .optim import Optimizer

__all__ = ["StepState", "TrainStep"]


class StepState(NamedTuple):
    """The inputs of one step besides the batch (each a backend array, or a number where eager)."""

    params: Any                 # the flat parameters (1-D), in the optimizer's order
    buffers: tuple              # each buffer's array, in model.buffers() order
    optimizer: dict             # the optimizer's flat state arrays by name
    counters: tuple             # each counter, in xpcnn.nn.stateless.counters(model) order
    lr: Any                     # the learning rate
    step: Any                   # the number of this update (1 for the first)


class TrainStep:
    """A training step of ``model`` with ``loss_fn`` and ``optimizer`` (see the module's text).

    ``compile``: None (the default) compiles where the backend has a compiler (jax), True insists on it (a
    ValueError elsewhere), False runs eagerly everywhere. The optimizer must hold the model's parameters.
    ``reduce_gradients(flat_grad, metrics) -> (flat_grad, metrics)``: None (the default) leaves them as they are;
    data-parallel training sums both across processes (``metrics`` is ``[share of the mean loss, correct]``, see
    :meth:`__call__`). It runs inside the step: a compiled step needs a traceable one.
    """

    def __init__(self, model: Module, loss_fn: Any, optimizer: Optimizer, compile: bool | None = None,
                 reduce_gradients: Callable[[Any, Any], tuple[Any, Any]] | None = None):
        _check_arguments(model, loss_fn, optimizer, compile, reduce_gradients)
        self.model, self.loss_fn, self.optimizer = model, loss_fn, optimizer
        self.reduce_gradients = reduce_gradients
        position = {id(p): i for i, p in enumerate(model.parameters())}
        self._to_model = [i for i, _ in sorted(enumerate(optimizer.params), key=lambda item: position[id(item[1])])]
        self._to_optimizer = [position[id(p)] for p in optimizer.params]
        self._shapes = [p.shape for p in optimizer.params]
        compiler = _backend.compiler(optimizer.params[0].data)
        if compile and compiler is None:
            raise ValueError(f"TrainStep: compile=True needs a backend with a compiler (jax); the parameters are "
                             f"{array_namespace(optimizer.params[0].data).__name__} arrays (pass compile=None or "
                             f"False to run the step eagerly)")
        self.compiled = compiler is not None and compile is not False
        self._function: Callable = compiler(self._pure) if self.compiled else self._pure
        self._threshold = _metrics.decision_threshold(model, loss_fn)

    def state(self) -> StepState:
        """The current explicit state, read from the model and the optimizer. Compiled, the counters become int32
        arrays and the learning rate and step number Python floats (inputs of the compiled function, not
        constants), so that changing them compiles nothing."""
        opt = self.optimizer
        flat = opt.flat_parameters()
        own = stateless.state(self.model)
        counters = own.counters
        lr, step = opt.lr, opt.steps + 1
        if self.compiled:
            xp = array_namespace(flat)
            counters = tuple(xp.asarray(c, dtype=xp.int32, device=device(flat)) if isinstance(c, int) else c
                             for c in counters)
            lr, step = float(lr), float(step)
        return StepState(flat, own.buffers, opt.current_state(flat), counters, lr, step)

    def __call__(self, x: Any, y: Any, share: float | None = None) -> tuple[Any, Any]:
        """One step on the batch ``(x, y)``: ``(mean loss, number of correct predictions)``, 0-d arrays on the
        device. ``share``: for data-parallel training, this process's part of the global batch (its samples /
        the global batch size), which scales its loss gradient so that the summed gradients are the global
        mean's; the results are then the global batch's. The model's parameters, buffers and counters, and the
        optimizer, hold the new values afterwards; the gradients are left empty."""
        if share is not None and (isinstance(share, bool) or not isinstance(share, (int, float))
                                  or not 0 <= share <= 1):
            raise ValueError(f"TrainStep: share must be None or a number in [0, 1]; got {share!r}")
        if not x.shape[0] and self.reduce_gradients is None:
            raise ValueError("TrainStep: the batch is empty (x has 0 samples)")
        # other threads' calls of the model wait: they never see a step half done; new arrays land beside x
        with self.model.using(), _backend.on_device(x):
            new, parts, loss, correct = self._function(self.state(), x, y, share)
            self.optimizer.commit(new.params, new.optimizer, parts=parts)
            stateless.assign(self.model, stateless.State(tuple(parts[i] for i in self._to_model), new.buffers,
                                                         new.counters))
            self.optimizer.zero_grad()
        return loss, correct

    def _pure(self, state: StepState, x: Any, y: Any, share: float | None) -> tuple[StepState, list, Any, Any]:
        """The step as a function of its arguments: ``(new state, the new parameters one by one, loss, correct)``."""
        opt = self.optimizer
        parts = split(state.params, self._shapes)
        given = stateless.State(tuple(parts[i] for i in self._to_model), state.buffers, state.counters)
        if x.shape[0]:
            def loss(outputs: Any) -> tuple[Any, Any]:
                value = self.loss_fn(outputs, y)
                return value, self.loss_fn.backward() if share is None else self.loss_fn.backward(share)

            result = stateless.run(self.model, given, x, loss)
            grads = [result.gradients[i] for i in self._to_optimizer]
            value, correct, after = result.loss, _metrics.correct(result.outputs, y, self._threshold), result.state
        else:                       # this process's part of a batch split across processes is empty
            xp = array_namespace(state.params)
            value = xp.zeros((), dtype=state.params.dtype, device=device(state.params))
            grads, correct, after = [None] * len(parts), xp.astype(value, xp.int32), given
        grad = opt.flat_gradients(grads)
        missing = tuple(i for i, g in enumerate(grads) if g is None)
        if self.reduce_gradients is not None:
            value, correct, grad = self._reduce(value, correct, grad, share)
            missing = ()            # another process's part may have reached them
        elif len(missing) == len(grads):
            raise ValueError("TrainStep: the loss's gradient reached none of the model's parameters: nothing to "
                             "train")
        params, opt_state = opt.apply(state.params, grad, state.optimizer, state.lr, state.step, missing)
        new = StepState(params, after.buffers, opt_state, after.counters, state.lr, state.step)
        return new, split(params, self._shapes), value, correct

    def _reduce(self, value: Any, correct: Any, grad: Any, share: float | None) -> tuple[Any, Any, Any]:
        """The hook on the flat gradient and ``[share of the mean loss, correct]``: the global batch's values."""
        xp = array_namespace(grad)
        metrics = xp.stack([value * (1.0 if share is None else share), xp.astype(correct, value.dtype)])
        grad, metrics = self.reduce_gradients(grad, metrics)
        return metrics[0], xp.astype(xp.round(metrics[1]), xp.int32), grad


def _check_arguments(model: Any, loss_fn: Any, optimizer: Any, compile: Any, reduce_gradients: Any) -> None:
    if not isinstance(model, Module):
        raise TypeError(f"TrainStep: model must be an xpcnn.nn.Module; got {type(model).__name__}")
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"TrainStep: optimizer must be an xpcnn.optim.Optimizer; got {type(optimizer).__name__}")
    if not callable(loss_fn) or not callable(getattr(loss_fn, "backward", None)):
        raise TypeError(f"TrainStep: loss_fn must be an xpcnn loss object (called, then .backward()); got "
                        f"{type(loss_fn).__name__}")
    if compile not in (None, True, False):
        raise ValueError(f"TrainStep: compile must be None, True or False; got {compile!r}")
    if reduce_gradients is not None and not callable(reduce_gradients):
        raise TypeError(f"TrainStep: reduce_gradients must be None or a function (flat_grad, metrics) -> "
                        f"(flat_grad, metrics); got {type(reduce_gradients).__name__}")
    if {id(p) for p in model.parameters()} != {id(p) for p in optimizer.params}:
        raise ValueError("TrainStep: the optimizer must hold exactly the model's parameters "
                         "(make it with optimizer(model.parameters(), ...))")
