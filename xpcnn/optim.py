"""Optimizers and learning-rate schedules.

Updates rebind ``p.data`` (``p.data = p.data - lr * step``) instead of mutating arrays in
place, so they work on every array API backend. Optimizer state (momentum buffers, Adam
moments) lives on the parameters' backend and round-trips through checkpoints.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import numpy as np
from array_api_compat import array_namespace, device

from . import backend as _backend
from .functional._checks import as_float, as_int
from .nn.module import Parameter, flatten, unflatten

__all__ = ["SCHEDULES", "SGD", "Adam", "AdamW", "CosineLR", "Optimizer", "StepLR", "OPTIMIZERS", "build", "schedule"]


class Optimizer:
    """Base: parameters, a learning rate, optimizer state and a step counter.

    All parameters live in ONE flat array and the gradients are gathered into one flat array, so an update is
    a handful of array operations whatever the number of parameters (a GPU launches a handful of kernels, and
    data-parallel training all-reduces that one gradient array). After a step each ``Parameter.data`` is
    rebound to a view of the new flat array: nothing is mutated in place, so immutable arrays work too. A
    parameter rebound from outside (``load_state_dict``, ``.to``) is noticed and gathered again. State
    (momentum, Adam's moments) is flat as well: ``state[name]`` is one array; :meth:`state_dict` splits it per
    parameter. The momentum buffer is always an array of its own, never a gradient array.
    """

    def __init__(self, params: Iterable[Parameter], lr: float, **hyper: Any):
        self.params = list(params)
        owner = type(self).__name__
        if not self.params:
            raise ValueError(f"{owner}: params is empty; pass model.parameters()")
        for i, p in enumerate(self.params):
            if not isinstance(p, Parameter):
                raise TypeError(f"{owner}: params[{i}] must be an xpcnn.nn.Parameter; got {type(p).__name__}")
            if p.data.dtype != self.params[0].data.dtype:
                raise ValueError(f"{owner}: every parameter must have one dtype; params[0] is "
                                 f"{self.params[0].data.dtype}, params[{i}] is {p.data.dtype}")
        if len({id(p) for p in self.params}) != len(self.params):
            raise ValueError(f"{owner}: a parameter is listed twice")
        as_float(owner, "lr", lr, low=0, low_open=True)
        self.lr = self.initial_lr = float(lr)
        self.hyper = hyper
        self.sizes = [math.prod(p.shape) for p in self.params]
        self.offsets = [sum(self.sizes[:i]) for i in range(len(self.sizes))]
        self._masks: dict = {}          # frozen parameters' masks by (parameters, library, device): see _kept
        self.state: dict[str, Any] = {}
        self.steps = 0
        self._flat = self._views = None

    # -- the flat arrays
    def flat_parameters(self) -> Any:
        """All parameters as one 1-D array (gathered again only if a parameter was rebound from outside)."""
        if self._views is None or any(p.data is not v for p, v in zip(self.params, self._views)):
            self._flat = flatten([p.data for p in self.params])
            self._views = [p.data for p in self.params]
        return self._flat

    def flat_gradients(self, grads: Iterable[Any] | None = None) -> Any:
        """All gradients as one fresh 1-D array, zeros for a parameter without one: the parameters' ``.grad``, or
        ``grads`` (one array or None per parameter, in order: what :func:`xpcnn.nn.stateless.run` returns)."""
        grads = [p.grad for p in self.params] if grads is None else list(grads)
        if len(grads) != len(self.params):
            raise ValueError(f"{type(self).__name__}.flat_gradients: grads must hold one entry per parameter "
                             f"({len(self.params)}); got {len(grads)}")
        xp = array_namespace(self.params[0].data)
        return flatten([g if g is not None else xp.zeros(p.shape, dtype=p.data.dtype, device=device(p.data))
                        for p, g in zip(self.params, grads)])

    def commit(self, flat: Any, state: dict, steps: int = 1, parts: list | None = None) -> None:
        """Make an update's results the optimizer's own: the parameters become their parts of the new flat
        parameters ``flat`` (or ``parts``, those parts already cut), ``state`` the optimizer's state, and the
        step counter advances by ``steps`` (the number of updates these values include)."""
        if parts is None:
            unflatten(flat, self.params)
        else:
            for p, part in zip(self.params, parts):
                p.data = part
        self._flat, self._views = flat, [p.data for p in self.params]
        self.state = state
        self.steps += steps

    def step(self, flat_grad: Any = None) -> None:
        """Apply one update from the parameters' gradients (or from ``flat_grad``, a 1-D array in parameter
        order, e.g. all-reduced across processes). Parameters without a gradient, and their state, are left
        as they are."""
        missing = self.missing() if flat_grad is None else ()
        if len(missing) == len(self.params):
            return
        flat = self.flat_parameters()
        state = self.current_state(flat)
        grad = self.flat_gradients() if flat_grad is None else flat_grad
        self.commit(*self.apply(flat, grad, state, self.lr, self.steps + 1, missing))

    def current_state(self, flat: Any) -> dict:
        """The state for an update of the flat parameters ``flat``: :meth:`initial_state` before the first update,
        else the state, moved to ``flat``'s library, device and dtype where the model was moved since
        (``model.to(...)`` takes its optimizer's momentum along, as its parameters)."""
        if not self.state:
            return self.initial_state(flat)
        xp, where = array_namespace(flat), device(flat)
        moved = {}
        for name, value in self.state.items():
            if hasattr(value, "shape") and (array_namespace(value) is not xp or device(value) != where
                                            or value.dtype != flat.dtype):
                value = _backend.asarray_like(value, flat, dtype=flat.dtype)
            moved[name] = value
        return moved

    def missing(self) -> tuple[int, ...]:
        """The indices of the parameters that have no gradient."""
        return tuple(i for i, p in enumerate(self.params) if p.grad is None)

    def apply(self, flat: Any, grad: Any, state: dict, lr: Any, step: Any, missing: tuple = ()) -> tuple[Any, dict]:
        """``(new flat parameters, new state)`` from the flat parameters and gradient, the state (from
        :meth:`initial_state` or the last update), the learning rate and the step number (1 for the first update).
        A function of its arguments alone, as a compiled training step needs (see :meth:`_update`). The parameters
        listed in ``missing`` (indices), and their state, keep their values."""
        new_state = dict(state)
        new = self._update(flat, grad, new_state, lr, step)
        if missing:
            xp = array_namespace(flat)
            keep = self._kept(missing, xp, device(flat))
            new = xp.where(keep, flat, new)
            new_state = {name: xp.where(keep, state[name], value) for name, value in new_state.items()}
        return new, new_state

    def _kept(self, missing: tuple, xp: Any, where: Any) -> Any:
        """The mask of the flat elements of the ``missing`` parameters on ``where``, uploaded once per set of
        parameters and device (a frozen layer's mask is not copied to a GPU at every step)."""
        key = (missing, xp.__name__, str(where))
        masks = self._masks
        if key not in masks:
            keep = np.zeros(sum(self.sizes), dtype=bool)
            for i in missing:
                keep[self.offsets[i]:self.offsets[i] + self.sizes[i]] = True
            masks[key] = xp.asarray(keep, device=where)
        return masks[key]

    def initial_state(self, flat: Any) -> dict:
        """The state before the first update (zeros, shaped like the flat parameters ``flat``): made before an
        update, so that every update, compiled or not, sees state of one structure."""
        return {}

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def _update(self, data, grad, state, lr, step):
        """The new flat parameters from the flat ``data`` and ``grad``, with learning rate ``lr`` and ``step`` (1 for
        the first update); rebinds ``state`` entries (all made by :meth:`initial_state`). A function of its
        arguments alone: ``lr`` and ``step`` may be numbers or 0-d arrays in the parameters' floating dtype (exact
        for step counts below 2**24 in float32), so the same update serves a compiled training step where both
        change every step."""
        raise NotImplementedError

    # -- checkpoints
    def state_dict(self) -> dict:
        """``{"type", "lr", "initial_lr", "steps", "hyper", "state": [{name: array}, ...]}``: the state split
        per parameter (views of the flat arrays, on the parameters' backend)."""
        per_parameter = []
        for p, offset, size in zip(self.params, self.offsets, self.sizes):
            per_parameter.append({name: array_namespace(v).reshape(v[offset:offset + size], p.shape)
                                  for name, v in self.state.items()})
        return {"type": type(self).__name__, "lr": self.lr, "initial_lr": self.initial_lr, "steps": self.steps,
                "hyper": dict(self.hyper), "state": per_parameter}

    def load_state_dict(self, state: dict) -> None:
        if state.get("type") != type(self).__name__:
            raise ValueError(f"optimizer state is for {state.get('type')}, not {type(self).__name__}")
        if len(state["state"]) != len(self.params):
            raise ValueError(f"optimizer state has {len(state['state'])} parameters; this optimizer has {len(self.params)}")
        names = set()
        for i, (p, s) in enumerate(zip(self.params, state["state"])):
            names |= set(s)
            for key, value in s.items():
                if tuple(value.shape) != p.shape:
                    raise ValueError(f"optimizer state {i}/{key} has shape {tuple(value.shape)}; its parameter "
                                     f"has {p.shape}")
        _check_saved_settings(type(self), self.params, state)
        like = self.params[0].data
        flat = {}
        for name in sorted(names):
            pieces = [np.reshape(_backend.to_numpy(s[name]), -1) if name in s else np.zeros(n)
                      for s, n in zip(state["state"], self.sizes)]
            flat[name] = _backend.asarray_like(np.concatenate(pieces), like, dtype=like.dtype)
        self.lr, self.steps, self.hyper = float(state["lr"]), int(state["steps"]), dict(state["hyper"])
        self.initial_lr = float(state.get("initial_lr", self.lr))
        self.state = flat

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hyper.items())
        return f"{type(self).__name__}(lr={self.lr:.4g}{', ' if args else ''}{args})"


def _zeros_like(flat: Any) -> Any:
    return array_namespace(flat).zeros_like(flat)


def _check_saved_settings(kind: type, params: list, state: dict) -> None:
    """A saved learning rate, step count and hyper-parameters are checked as the constructor checks them (a
    negative learning rate would train uphill): ValueError naming what is wrong."""
    try:
        hyper = dict(state["hyper"])
        kind(params, lr=state["lr"], **hyper)                   # the constructor's own checks
        if state.get("initial_lr") is not None:
            as_float(kind.__name__, "initial_lr", state["initial_lr"], low=0, low_open=True)
        steps = state["steps"]
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ValueError(f"{kind.__name__}: steps must be a whole number >= 0; got {steps!r}")
    except (TypeError, KeyError) as exc:
        raise ValueError(f"saved {kind.__name__} settings are malformed ({type(exc).__name__}: {exc})") from None


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum (PyTorch's formulation), Nesterov and weight decay."""

    def __init__(self, params, lr: float = 0.01, momentum: float = 0.0, nesterov: bool = False,
                 weight_decay: float = 0.0):
        as_float("SGD", "momentum", momentum, 0, 1, high_open=True)
        if nesterov and momentum == 0:
            raise ValueError("SGD: nesterov=True needs a momentum > 0")
        as_float("SGD", "weight_decay", weight_decay, 0)
        super().__init__(params, lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)

    def _update(self, data, grad, state, lr, step):
        momentum, weight_decay = self.hyper["momentum"], self.hyper["weight_decay"]
        if weight_decay:
            grad = grad + weight_decay * data
        if momentum:
            buffer = momentum * state["momentum"] + grad      # from zeros: the first step's buffer is the gradient
            state["momentum"] = buffer
            grad = grad + momentum * buffer if self.hyper["nesterov"] else buffer
        return data - lr * grad

    def initial_state(self, flat):
        return {"momentum": _zeros_like(flat)} if self.hyper["momentum"] else {}


class Adam(Optimizer):
    """Adam (Kingma & Ba 2015); ``weight_decay`` adds an L2 term to the gradient (use AdamW to decouple it)."""

    decoupled = False

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"{type(self).__name__}: betas must be two numbers in [0, 1); got {betas!r}")
        for beta in betas:
            as_float(type(self).__name__, "betas", beta, 0, 1, high_open=True)
        as_float(type(self).__name__, "eps", eps, 0, low_open=True)
        as_float(type(self).__name__, "weight_decay", weight_decay, 0)
        super().__init__(params, lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)

    def _update(self, data, grad, state, lr, step):
        (beta1, beta2), eps, weight_decay = self.hyper["betas"], self.hyper["eps"], self.hyper["weight_decay"]
        if weight_decay and self.decoupled:
            data = data - lr * weight_decay * data
        elif weight_decay:
            grad = grad + weight_decay * data
        xp = array_namespace(grad)
        m = beta1 * state["m"] + (1 - beta1) * grad
        v = beta2 * state["v"] + (1 - beta2) * (grad * grad)
        state["m"], state["v"] = m, v
        m_hat = m / (1 - beta1 ** step)
        v_hat = v / (1 - beta2 ** step)
        return data - lr * m_hat / (xp.sqrt(v_hat) + eps)

    def initial_state(self, flat):
        return {"m": _zeros_like(flat), "v": _zeros_like(flat)}


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter 2019)."""

    decoupled = True

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.01):
        super().__init__(params, lr, betas, eps, weight_decay)


OPTIMIZERS = {"sgd": SGD, "adam": Adam, "adamw": AdamW}


def build(name: str, params: Iterable[Parameter], lr: float, momentum: float | None = None,
          weight_decay: float = 0.0) -> Optimizer:
    """An optimizer by name (one of ``OPTIMIZERS``), as ``xpcnn train --optimizer`` makes it: SGD with momentum
    0.9 unless given; ``momentum`` is refused for the others (Adam's betas are fixed here)."""
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}; got {name!r}")
    if name == "sgd":
        return SGD(params, lr=lr, momentum=0.9 if momentum is None else momentum, weight_decay=weight_decay)
    if momentum is not None:
        raise ValueError(f"momentum is for the sgd optimizer; {name} has none (its betas are fixed)")
    return OPTIMIZERS[name](params, lr=lr, weight_decay=weight_decay)


# --------------------------------------------------------------------------- schedules
class _Schedule:
    """Sets ``optimizer.lr`` from the (fractional) epoch alone, so resuming needs no schedule state.

    ``base_lr`` defaults to the optimizer's initial learning rate (``optimizer.initial_lr``, which
    checkpoints keep), so a schedule made after loading a checkpoint mid-schedule continues exactly.
    """

    def __init__(self, optimizer: Optimizer, base_lr: float | None = None):
        self.optimizer = optimizer
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"{type(self).__name__}: optimizer must be an xpcnn.optim.Optimizer; got "
                            f"{type(optimizer).__name__}")
        self.base_lr = optimizer.initial_lr if base_lr is None else \
            as_float(type(self).__name__, "base_lr", base_lr, 0, low_open=True)

    def set_epoch(self, epoch: float) -> float:
        self.optimizer.lr = self.lr_at(epoch)
        return self.optimizer.lr

    def lr_at(self, epoch: float) -> float:
        raise NotImplementedError


class StepLR(_Schedule):
    """lr = base_lr * gamma ** floor(epoch / step_size)."""

    def __init__(self, optimizer: Optimizer, step_size: int, gamma: float = 0.1, base_lr: float | None = None):
        super().__init__(optimizer, base_lr)
        self.step_size = as_int("StepLR", "step_size", step_size, 1)
        self.gamma = as_float("StepLR", "gamma", gamma, 0, low_open=True)

    def lr_at(self, epoch: float) -> float:
        return self.base_lr * self.gamma ** math.floor(epoch / self.step_size)


class CosineLR(_Schedule):
    """Cosine annealing from base_lr at epoch 0 to ``min_lr`` at ``total_epochs`` (smooth within epochs)."""

    def __init__(self, optimizer: Optimizer, total_epochs: float, min_lr: float = 0.0, base_lr: float | None = None):
        super().__init__(optimizer, base_lr)
        self.total_epochs = as_float("CosineLR", "total_epochs", total_epochs, 0, low_open=True)
        self.min_lr = as_float("CosineLR", "min_lr", min_lr, 0)

    def lr_at(self, epoch: float) -> float:
        progress = min(max(epoch / self.total_epochs, 0.0), 1.0)
        return self.min_lr + 0.5 * (self.base_lr - self.min_lr) * (1 + math.cos(math.pi * progress))


SCHEDULES = ("cosine", "step", "none")


def schedule(name: str, optimizer: Optimizer, epochs: int, base_lr: float | None = None) -> _Schedule | None:
    """A learning-rate schedule over ``epochs`` by name, as ``xpcnn train --schedule`` makes it: "cosine" (to 0),
    "step" (x0.1 every third of the epochs), or "none" (None: a constant rate)."""
    if name == "cosine":
        return CosineLR(optimizer, epochs, base_lr=base_lr)
    if name == "step":
        return StepLR(optimizer, step_size=max(1, epochs // 3), gamma=0.1, base_lr=base_lr)
    if name == "none":
        return None
    raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}; got {name!r}")
