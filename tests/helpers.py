"""Test helpers: backend wrapper, namespace/dtype/device checks, finite differences."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import array_api_compat
import numpy as np
from hypothesis import given, settings

import xpcnn


@dataclass
class ArrayBackend:
    """One backend under test: a namespace and a device, with host<->backend helpers."""

    name: str
    xp: Any
    device: Any

    def asarray(self, a, dtype=None):
        a = np.asarray(a)
        name = np.dtype(a.dtype if dtype is None else dtype).name
        return self.xp.asarray(a, dtype=getattr(self.xp, name), device=self.device)

    def numpy(self, x):
        return xpcnn.to_numpy(x)

    def __str__(self) -> str:
        return self.name


def assert_like(out, like, dtype=None):
    """``out`` has the namespace, dtype and device of ``like`` (or ``dtype``)."""
    assert array_api_compat.array_namespace(out) is array_api_compat.array_namespace(like)
    assert out.dtype == (like.dtype if dtype is None else dtype), f"dtype {out.dtype} != {like.dtype}"
    assert array_api_compat.device(out) == array_api_compat.device(like), (
        f"device {array_api_compat.device(out)} != {array_api_compat.device(like)}"
    )


def numerical_gradients(loss: Callable[..., float], arrays: Sequence[np.ndarray], h: float = 1e-6):
    """Central finite differences of the scalar ``loss(*arrays)`` (float64 NumPy arrays) for each array."""
    grads = []
    for k, a in enumerate(arrays):
        g = np.zeros_like(a)
        for index in np.ndindex(*a.shape):
            plus = [x.copy() for x in arrays]
            minus = [x.copy() for x in arrays]
            plus[k][index] += h
            minus[k][index] -= h
            g[index] = (loss(*plus) - loss(*minus)) / (2 * h)
        grads.append(g)
    return grads


def assert_gradients_close(analytic, numeric, rtol=1e-6):
    """Analytic vs numerical gradients: rtol 1e-6, with an absolute floor far below any real error."""
    for got, want in zip(analytic, numeric):
        scale = max(1.0, float(np.max(np.abs(want), initial=0.0)))
        np.testing.assert_allclose(got, want, rtol=rtol, atol=1e-8 * scale)


EXAMPLES = 25          # hypothesis examples a property meets per backend, JAX_EXAMPLES on JAX
JAX_EXAMPLES = 5       # JAX compiles each new shape eagerly (seconds an example on two cores)


def examples_for(B: ArrayBackend, examples: int = EXAMPLES) -> int:
    """How many hypothesis examples a property meets on backend ``B``: a fifth on JAX, all elsewhere (JAX's own
    path, updates of immutable arrays, is the same for every shape)."""
    return max(1, examples * JAX_EXAMPLES // EXAMPLES) if B.name.startswith("jax") else examples


def per_backend_examples(examples: int = EXAMPLES, **strategies: Any) -> Callable:
    """Decorator: ``test(B, **drawn)`` becomes a test of ``B`` alone that runs hypothesis on ``strategies`` with
    :func:`examples_for` examples (``max_examples``): every example run is a real check, none returns early. The
    examples run are recorded on the test (``hypothesis examples``), and the session's summary counts them per
    backend (tests/conftest.py)."""

    def decorate(test: Callable) -> Callable:
        def run(B, request):
            ran = []

            def property_(**drawn):
                test(B, **drawn)
                ran.append(1)

            property_.__name__ = test.__name__            # hypothesis's example database keys on it
            settings(max_examples=examples_for(B, examples), deadline=None)(given(**strategies)(property_))()
            request.node.user_properties.append(("hypothesis examples", len(ran)))

        run.__name__, run.__qualname__, run.__doc__ = test.__name__, test.__qualname__, test.__doc__
        return run

    return decorate
