"""Backends for the test suite: every library importable here, each skipped with its reason otherwise.

``XPCNN_TEST_REQUIRE=cupy`` (set by ci/gpu.sh) turns a missing backend into a failure.
"""

from __future__ import annotations

import os

import pytest

import xpcnn
from helpers import ArrayBackend

REQUIRED = {name.strip() for name in os.environ.get("XPCNN_TEST_REQUIRE", "").split(",") if name.strip()}
BACKEND_PARAMS = ["numpy", "array_api_strict", "array_api_strict:device1", "torch", "cupy", "jax"]


def make_backend(param: str) -> ArrayBackend:
    name, _, device = param.partition(":")
    if name == "jax":
        try:
            import jax
        except ImportError:
            pass
        else:                                   # the float64 references need JAX's 64-bit mode
            jax.config.update("jax_enable_x64", True)
    try:
        backend = xpcnn.backend._load(name, device or None)   # pins array_api_strict to 2024.12
    except xpcnn.BackendUnavailableError as exc:
        if name in REQUIRED:
            pytest.fail(f"backend {name} is required here (XPCNN_TEST_REQUIRE) but unavailable: {exc}")
        pytest.skip(f"{name} unavailable: {exc}")
    return ArrayBackend(param, backend.xp, backend.device)


@pytest.fixture(params=BACKEND_PARAMS)
def B(request) -> ArrayBackend:
    """Each backend in turn (skipped with the reason when unavailable)."""
    return make_backend(request.param)


def pytest_report_header(config):
    return [f"xpcnn backend {name}: {state}" for name, state in xpcnn.available_backends().items()]
