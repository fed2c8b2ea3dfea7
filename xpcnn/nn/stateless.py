"""A model's state handed out, and the model run on state it is given (Keras's ``stateless_call``, NNX's
``split``/``merge``).

``s = stateless.state(model)`` is everything a call of ``model`` reads or advances besides its input: each
parameter's array, each buffer's (BatchNorm's running statistics) and each counter (a Dropout's number of calls,
from which its masks are drawn). ``stateless.run(model, s, x, loss)`` runs a training-mode forward, and with a
``loss`` the backward, on ``s`` and returns the outputs, the loss, the gradients and the new state; afterwards
the model holds exactly what it held before (arrays, gradients, counters, a pending backward).
``stateless.assign(model, s)`` makes a state the model's own.

A compiled training step is built on this: under ``jax.jit`` the state's arrays are tracers, which the model
holds only while :func:`run` runs, under the model's lock (:meth:`Module.using`), so other threads never see them.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator, NamedTuple

from .module import Module

__all__ = ["Result", "State", "assign", "counters", "run", "state"]


class State(NamedTuple):
    """A model's state: arrays in ``model.parameters()`` and ``model.buffers()`` order, counters in
    :func:`counters` order (ints, or 0-d arrays inside a compiled step)."""

    params: tuple
    buffers: tuple
    counters: tuple


class Result(NamedTuple):
    """What :func:`run` computed. ``loss`` and ``gradients`` are None without a loss; a parameter the loss did
    not reach has the gradient None."""

    outputs: Any
    loss: Any
    gradients: tuple | None
    state: State


def counters(model: Module) -> list[tuple[Module, str]]:
    """Each ``(module, attribute)`` holding a counter (:attr:`Module.counters`), each module once."""
    seen, out = set(), []
    for module in model.modules():
        if id(module) not in seen:
            seen.add(id(module))
            out.extend((module, name) for name in module.counters)
    return out


class _Slots(NamedTuple):
    """Where a model keeps its state, found by one walk of its tree."""

    params: list
    buffers: list
    counters: list

    @classmethod
    def of(cls, model: Module) -> "_Slots":
        return cls(model.parameters(), model.buffers(), counters(model))

    def read(self) -> State:
        return State(tuple(p.data for p in self.params), tuple(b.data for b in self.buffers),
                     tuple(getattr(module, name) for module, name in self.counters))

    def write(self, new: State) -> None:
        for slot, value in zip(self.params, new.params):
            slot.data = value
        for slot, value in zip(self.buffers, new.buffers):
            slot.data = value
        for (module, name), value in zip(self.counters, new.counters):
            setattr(module, name, value)


def state(model: Module) -> State:
    """The model's current state."""
    return _Slots.of(model).read()


def assign(model: Module, new: State) -> None:
    """Make ``new`` the model's own state (gradients are left as they are)."""
    _Slots.of(model).write(new)


def run(model: Module, given: State, x: Any, loss: Callable[[Any], tuple[Any, Any]] | None = None,
        training: bool = True) -> Result:
    """``model`` on ``x`` with the state ``given``, leaving the model as it was.

    ``loss(outputs) -> (value, gradient for the outputs)``: given, the backward runs too and the result carries
    ``value`` and each parameter's gradient. ``training``: batch statistics and dropout (the model's own mode is
    neither read nor changed)."""
    with model.using():
        slots = _Slots.of(model)
        with _holding(model, slots, given):
            outputs = model._public(x, training, keep=loss is not None)
            value = gradients = None
            if loss is not None:
                value, output_grad = loss(outputs)
                model.backward(output_grad, input_grad=False)
                gradients = tuple(p.grad for p in slots.params)
            return Result(outputs, value, gradients, slots.read())


_CALL_RECORD = ("_last", "_displaced", "_dropped")     # a model's pending backward and who replaced whose


@contextmanager
def _holding(model: Module, slots: _Slots, given: State) -> Iterator[None]:
    """The model holds ``given`` (and no gradient) inside the block, and everything it held before after it,
    its pending backward included."""
    record = {name: model.__dict__[name] for name in _CALL_RECORD if name in model.__dict__}
    saved, grads = slots.read(), [p.grad for p in slots.params]
    try:
        slots.write(given)
        for p in slots.params:
            p.grad = None
        yield
    finally:
        slots.write(saved)
        for p, grad in zip(slots.params, grads):
            p.grad = grad
        for name, value in record.items():
            setattr(model, name, value)
