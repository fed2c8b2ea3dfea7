"""Check a hand-written backward against finite differences: :func:`gradcheck`.

The promise of xpcnn is backpropagation you write and read yourself; this is how you find the factor of two you
got wrong. The analytic gradients (your ``_backward``) of the scalar ``sum(y * r)``, for a fixed random ``r``, are
compared with central differences ``(f(t + eps) - f(t - eps)) / (2 eps)`` in float64, element by element, for
the input and for every parameter, as PyTorch's ``torch.autograd.gradcheck`` and the course notebooks do.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

import numpy as np

from . import backend as _backend
from .nn.module import Module

__all__ = ["GradcheckError", "GradcheckResult", "TensorCheck", "gradcheck"]


class TensorCheck(NamedTuple):
    """How one input or parameter fared: the worst element's index, its analytic and numerical values."""

    name: str
    checked: int                # elements compared (all of them, or ``max_elements`` chosen at random)
    size: int
    max_abs_error: float
    index: tuple
    analytic: float
    numerical: float
    ok: bool


@dataclass(frozen=True)
class GradcheckResult:
    """Every tensor's :class:`TensorCheck`; ``ok`` when all agree within the tolerances."""

    checks: tuple[TensorCheck, ...]

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def __bool__(self) -> bool:
        return self.ok

    def __str__(self) -> str:
        lines = []
        for c in self.checks:
            where = f"{c.name}{list(c.index)}"
            lines.append(f"{'ok  ' if c.ok else 'FAIL'} {where}: analytic {c.analytic:.6g}, numerical {c.numerical:.6g}, "
                         f"max |error| {c.max_abs_error:.3g} over {c.checked} of {c.size} elements")
        return "\n".join(lines)


class GradcheckError(AssertionError):
    """A gradient disagreed with finite differences; ``result`` holds every tensor's check."""

    def __init__(self, message: str, result: GradcheckResult):
        super().__init__(message)
        self.result = result


def gradcheck(target: Any, *inputs: Any, eps: float = 1e-6, atol: float = 1e-5, rtol: float = 1e-3,
              max_elements: int | None = 200, seed: int = 0, raise_exception: bool = True) -> GradcheckResult:
    """Compare ``target``'s gradients with central differences in float64.

    ``target`` is an :class:`xpcnn.nn.Module` (its input gradient and every parameter's gradient are checked, on a
    float64 copy in its current mode: your model is left as it was) with one input, or a pair
    ``(forward, backward)`` of functions in xpcnn's convention (``forward(*inputs) -> (y, cache)``,
    ``backward(dy, cache) -> gradient(s)`` in the order of the inputs). An element passes when
    ``|analytic - numerical| <= atol + rtol * |numerical|``. ``max_elements``: tensors larger than this are checked
    on that many elements chosen with ``seed`` (None: all). Raises :class:`GradcheckError` naming the worst tensor
    and element, or with ``raise_exception=False`` returns the :class:`GradcheckResult` (truthy when it passes).
    """
    if not inputs:
        raise TypeError("gradcheck: give the input(s) after the module or function pair, e.g. gradcheck(layer, x)")
    for name, value, positive in (("eps", eps, True), ("atol", atol, False), ("rtol", rtol, False)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or value < 0 or (positive and value == 0):
            raise ValueError(f"gradcheck: {name} must be a {'positive' if positive else 'non-negative'} number; "
                             f"got {value!r}")
    if max_elements is not None and (isinstance(max_elements, bool) or not isinstance(max_elements, int)
                                     or max_elements < 1):
        raise ValueError(f"gradcheck: max_elements must be a positive integer or None; got {max_elements!r}")
    if isinstance(target, Module):
        if len(inputs) != 1:
            raise TypeError(f"gradcheck: a module takes one input; got {len(inputs)}")
        problem = _ModuleProblem(target, inputs[0])
    elif isinstance(target, tuple) and len(target) == 2 and all(callable(f) for f in target):
        problem = _FunctionProblem(target, inputs)
    else:
        raise TypeError(f"gradcheck: target must be an xpcnn.nn.Module or a pair (forward, backward) of functions; "
                        f"got {type(target).__name__}")
    result = _check(problem, eps, atol, rtol, max_elements, np.random.default_rng(seed))
    if raise_exception and not result.ok:
        worst = max((c for c in result.checks if not c.ok), key=lambda c: c.max_abs_error)
        ratio = f" (ratio {worst.analytic / worst.numerical:.3g})" if worst.numerical else ""
        raise GradcheckError(f"gradcheck: the gradient of {worst.name} disagrees with finite differences at index "
                             f"{worst.index}: analytic {worst.analytic:.6g}, numerical {worst.numerical:.6g}{ratio}."
                             f"\n{result}", result)
    return result


def _float64(x: Any, name: str) -> np.ndarray:
    if not hasattr(x, "shape"):
        raise TypeError(f"gradcheck: {name} must be an array; got {type(x).__name__}")
    host = _backend.to_numpy(x)
    if not np.issubdtype(host.dtype, np.floating):
        raise TypeError(f"gradcheck: {name} must be floating-point; got {host.dtype}")
    return host.astype(np.float64)


class _ModuleProblem:
    """A float64 copy of a module; tensors are its input and parameters, set from NumPy values."""

    def __init__(self, module: Module, x: Any):
        with module.using():
            self.module = copy.deepcopy(module).to(dtype="float64")
        self.like = _backend.asarray_like(_float64(x, "x"), x, dtype="float64") if hasattr(x, "shape") else x
        named = list(self.module.named_parameters())
        self.names = ["input", *(f"parameter {n!r}" for n, _ in named)]
        self.params = [p for _, p in named]
        self.values = [_float64(x, "x"), *(_float64(p.data, n) for n, p in named)]
        self.counters = [(m, a, getattr(m, a)) for m in self.module.modules() for a in m.counters]
        self.buffers = [(b, b.data) for b in self.module.buffers()]

    def output(self, values: list) -> Any:
        for (module, attribute, value) in self.counters:    # the same dropout masks on every call
            setattr(module, attribute, value)
        for buffer, data in self.buffers:
            buffer.data = data
        for p, value in zip(self.params, values[1:]):
            p.data, p.grad = _backend.asarray_like(value, p.data), None
        return self.module(_backend.asarray_like(values[0], self.like))

    def gradients(self, values: list, dy: np.ndarray) -> list:
        y = self.output(values)
        dx = self.module.backward(_backend.asarray_like(dy, y), input_grad=True)
        grads = [dx, *(p.grad for p in self.params)]
        return [np.zeros_like(v) if g is None else _backend.to_numpy(g) for g, v in zip(grads, values)]


class _FunctionProblem:
    """A ``(forward, backward)`` pair; tensors are its array inputs."""

    def __init__(self, pair: tuple[Callable, Callable], inputs: tuple):
        self.forward, self.backward = pair
        self.values = [_float64(x, f"input {i}") for i, x in enumerate(inputs)]
        self.likes = inputs
        self.names = [f"input {i}" for i in range(len(inputs))]

    def output(self, values: list) -> Any:
        out = self.forward(*(_backend.asarray_like(v, like, dtype="float64") for v, like in zip(values, self.likes)))
        if not (isinstance(out, tuple) and len(out) == 2):
            raise TypeError("gradcheck: forward must return (y, cache)")
        self._cache = out[1]
        return out[0]

    def gradients(self, values: list, dy: np.ndarray) -> list:
        y = self.output(values)
        grads = self.backward(_backend.asarray_like(dy, y), self._cache)
        grads = grads if isinstance(grads, (tuple, list)) else (grads,)
        if len(grads) < len(values):
            raise TypeError(f"gradcheck: backward returned {len(grads)} gradients for {len(values)} inputs")
        return [np.zeros_like(v) if g is None else _backend.to_numpy(g) for g, v in zip(grads, values)]


def _check(problem: Any, eps: float, atol: float, rtol: float, max_elements: int | None,
           rng: np.random.Generator) -> GradcheckResult:
    values = problem.values
    y = _backend.to_numpy(problem.output(values))
    r = rng.standard_normal(y.shape)

    def f(vals: list) -> float:
        return float(np.sum(_backend.to_numpy(problem.output(vals)) * r))

    analytic = problem.gradients(values, r)
    checks = []
    for k, (name, value, grad) in enumerate(zip(problem.names, values, analytic)):
        if tuple(grad.shape) != value.shape:
            raise ValueError(f"gradcheck: the gradient of {name} has shape {tuple(grad.shape)}; expected {value.shape}")
        flat = range(value.size) if max_elements is None or value.size <= max_elements \
            else rng.choice(value.size, size=max_elements, replace=False)
        worst = (0.0, (), 0.0, 0.0)
        ok = True
        for i in flat:
            index = np.unravel_index(int(i), value.shape)
            numerical = (f(_moved(values, k, index, eps)) - f(_moved(values, k, index, -eps))) / (2 * eps)
            error = abs(grad[index] - numerical)
            ok = ok and error <= atol + rtol * abs(numerical)
            if error >= worst[0]:
                worst = (float(error), tuple(int(j) for j in index), float(grad[index]), float(numerical))
        checks.append(TensorCheck(name, len(flat), int(value.size), worst[0], worst[1], worst[2], worst[3], ok))
    return GradcheckResult(tuple(checks))


def _moved(values: list, k: int, index: tuple, step: float) -> list:
    moved = values[k].copy()
    moved[index] += step
    return [moved if j == k else v for j, v in enumerate(values)]
