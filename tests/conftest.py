"""Backends for the test suite: every library importable here, each skipped with its reason otherwise.

``XPCNN_TEST_REQUIRE=cupy`` (set by ci/gpu.sh) turns a missing backend into a failure.
"""

from __future__ import annotations

import collections
import os

import pytest

import xpcnn
from helpers import ArrayBackend

REQUIRED = {name.strip() for name in os.environ.get("XPCNN_TEST_REQUIRE", "").split(",") if name.strip()}
UNAVAILABLE = " unavailable: "          # in the reason of every skip for a backend this machine cannot run
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
        pytest.skip(f"{name}{UNAVAILABLE}{exc}")
    return ArrayBackend(param, backend.xp, backend.device)


@pytest.fixture(params=BACKEND_PARAMS)
def B(request) -> ArrayBackend:
    """Each backend in turn (skipped with the reason when unavailable)."""
    return make_backend(request.param)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A backend that cannot run here skips every test of it with one reason: report them all at this file, so that
    ``pytest -ra`` prints that reason once with its count instead of once per test function."""
    outcome = yield
    report = outcome.get_result()
    longrepr = report.longrepr
    if report.skipped and isinstance(longrepr, tuple) and len(longrepr) == 3 and UNAVAILABLE in str(longrepr[2]):
        report.longrepr = ("tests/conftest.py", make_backend.__code__.co_firstlineno, longrepr[2])


def pytest_report_header(config):
    return [f"xpcnn backend {name}: {state}" for name, state in xpcnn.available_backends().items()]


_EXAMPLES: "collections.Counter[str]" = collections.Counter()     # hypothesis examples run, by backend
_PROPERTIES: "collections.Counter[str]" = collections.Counter()   # properties checked, by backend


def pytest_runtest_logreport(report):
    for name, value in report.user_properties:
        if name == "hypothesis examples" and report.when == "call":
            backend = report.nodeid.rpartition("[")[2].rstrip("]")
            _EXAMPLES[backend] += value
            _PROPERTIES[backend] += 1


def pytest_terminal_summary(terminalreporter):
    """How many hypothesis examples each backend met (JAX meets fewer: helpers.examples_for)."""
    if _EXAMPLES:
        counts = ", ".join(f"{b}: {_EXAMPLES[b]} in {_PROPERTIES[b]} properties" for b in sorted(_EXAMPLES))
        terminalreporter.write_line(f"hypothesis examples run per backend: {counts}")
