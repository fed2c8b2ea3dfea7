"""The base :class:`Module`, combined from one mixin per concern, and :func:`from_config`.

- :mod:`~xpcnn.nn.tree`: children, parameters and buffers registered at assignment, the walks over them,
  ``train``/``eval``, ``.to``;
- :mod:`~xpcnn.nn.state`: ``state_dict``/``load_state_dict``, ``config``/``from_config``, extra state;
- :mod:`~xpcnn.nn.calls`: :class:`Run`, the public ``forward``/``infer``/``backward``/``predict``, the model's
  lock, the pending backward, and the executor of public calls (:class:`Serial`, :func:`set_executor`);
- :mod:`~xpcnn.nn.summary`: shape traces, ``summary``, ``repr``;
- :mod:`~xpcnn.nn.slots`: :class:`Parameter`, :class:`Buffer`, dtypes, flat views.

Computation has two levels. ``_forward(x, run) -> (y, cache)`` and ``_backward(dy, cache, run, input_grad) -> dx``
are what each module implements; everything a call needs comes in as arguments (its own named cache and the
:class:`Run`), nothing is left on the object between calls, so one module can appear twice in a network.
``module(x)`` and ``module.backward(dy)`` are the public pair: (N, C, H, W) / (N, features) arrays in and out; a
container converts once to the batch-innermost layout (:mod:`xpcnn.functional.layout`) and runs its children in
it. A public call runs through the process's executor: :class:`Serial` runs it in one piece; :mod:`xpcnn.parallel`
installs one that may split a big batch over the CPU cores. The model itself is never wrapped.

Threads: each public call holds the model's lock (:meth:`Module.using`), so calls from several threads take turns.
:meth:`Module.infer` (and :func:`xpcnn.evaluate`, :meth:`Module.predict`) leave the model's mode and pending backward
alone, so other threads may evaluate a model while one thread trains it. One model trains in one thread at a time:
a ``backward`` whose pending forward another thread replaced is a :class:`ModelInUseError`, never a gradient of
someone else's batch. To train one model from several threads, hold ``with model.using():`` around each step.
"""

from __future__ import annotations

from typing import Any

from ..functional import layout as _layout
from .calls import Calls, ModelInUseError, Pending, Run, Serial, _library, pair, set_executor
from .slots import (DTYPES, Buffer, Parameter, add_gradient, check_dtype, check_gradient, dtype_name, flatten,
                    make_buffer, make_parameter, precision, set_buffer, split, unflatten)
from .state import State
from .summary import Summary
from .tree import Tree, _refuse_hidden_modules

__all__ = ["Buffer", "LAYERS", "Module", "ModelInUseError", "Parameter", "Run", "Serial", "add_gradient", "flatten",
           "from_config", "set_buffer", "set_executor", "unflatten"]

LAYERS: dict[str, type] = {}        # every public module class of xpcnn.nn by name, for from_config


class Module(Tree, State, Calls, Summary):
    """Base of every layer and container.

    Subclasses implement ``_forward(x, run)`` and ``_backward(dy, cache, run, input_grad)`` (see :class:`Run`);
    containers run their children with ``run.call(child, x)`` and set ``run_layout = "CHWN"``. Constructor
    arguments are passed to ``super().__init__(**config)`` so the module can be rebuilt (:func:`from_config`)
    and printed.
    """

    training = True
    run_layout = _layout.NCHW   # the layout a public call runs in: containers use the fast CHWN
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
        self._displaced = frozenset()  # the threads whose pending backward another thread's forward replaced
        self._dropped = None           # why the last pending backward was dropped (the tree changed, eval, ...)
        self._start_tree()

    @property
    def name(self) -> str:
        return type(self).__name__.lower()


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
