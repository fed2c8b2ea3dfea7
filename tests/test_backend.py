"""xpcnn.backend: the switch, its errors, asarray/to_numpy, and the `xpcnn info` command."""

from __future__ import annotations

import ast
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

import xpcnn
from xpcnn import backend

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _restore_backend():
    saved = backend._default
    yield
    backend._default = saved


def test_default_is_numpy_from_environment(monkeypatch):
    monkeypatch.delenv("XPCNN_BACKEND", raising=False)
    backend._default = None
    selected = xpcnn.get_backend()
    assert selected.name == "numpy" and selected.device == "cpu" and selected.version == np.__version__


def test_environment_selects_backend_and_device(monkeypatch):
    pytest.importorskip("array_api_strict", reason="array_api_strict not installed")
    monkeypatch.setenv("XPCNN_BACKEND", "array_api_strict")
    monkeypatch.setenv("XPCNN_DEVICE", "device1")
    backend._default = None
    selected = xpcnn.get_backend()
    assert selected.name == "array_api_strict" and str(selected.device) == "array_api_strict.Device('device1')"
    x = xpcnn.asarray([1.0, 2.0])
    assert x.device == selected.device and x.dtype == selected.xp.float64


def test_unknown_backend_lists_valid_names(monkeypatch):
    with pytest.raises(ValueError, match="numpy, cupy, torch, array_api_strict, jax; got 'tensorflow'"):
        xpcnn.set_backend("tensorflow")
    monkeypatch.setenv("XPCNN_BACKEND", "mxnet")
    backend._default = None
    with pytest.raises(ValueError, match="got 'mxnet'"):
        xpcnn.get_backend()


def test_cupy_unavailable_names_the_extra_or_the_missing_device():
    try:
        import cupy  # noqa: F401
    except ImportError:
        with pytest.raises(xpcnn.BackendUnavailableError, match=r'pip install "cupy-cuda12x\[ctk\]>=14"'):
            xpcnn.set_backend("cupy")
        return
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception:
        count = 0
    if count:
        pytest.skip("a CUDA device is present: cupy is available, nothing to refuse")
    with pytest.raises(xpcnn.BackendUnavailableError, match="no CUDA device"):
        xpcnn.set_backend("cupy")


def test_bad_device_is_refused_at_selection():
    with pytest.raises(ValueError, match="numpy backend must be 'cpu'"):
        xpcnn.set_backend("numpy", device="cuda:0")


def test_a_torch_device_this_build_lacks_is_refused_at_selection():
    torch = pytest.importorskip("torch", reason="torch is not installed")
    if torch.backends.mps.is_available():
        pytest.skip("this torch can use mps: nothing to refuse")
    with pytest.raises(xpcnn.BackendUnavailableError, match=r"device 'mps' was requested for torch, but this torch "
                                                            r"build cannot use it \(.*\); use 'cpu'"):
        xpcnn.set_backend("torch", device="mps")
    xpcnn.set_backend("numpy")


def test_use_backend_restores_previous():
    xpcnn.set_backend("numpy")
    pytest.importorskip("array_api_strict", reason="array_api_strict not installed")
    with xpcnn.use_backend("array_api_strict") as inner:
        assert xpcnn.get_backend() is inner
        assert type(xpcnn.asarray(np.ones(2))).__module__.startswith("array_api_strict")
    assert xpcnn.get_backend().name == "numpy"


def test_asarray_and_to_numpy_round_trip_every_backend(B):
    with xpcnn.use_backend(B.name.partition(":")[0], B.name.partition(":")[2] or None):
        host = np.arange(6, dtype=np.float32).reshape(2, 3)
        x = xpcnn.asarray(host)
        assert x.dtype == B.xp.float32 and x.device == B.device
        np.testing.assert_array_equal(xpcnn.to_numpy(x), host)
        y = xpcnn.asarray(np.arange(3), dtype="float64")
        assert y.dtype == B.xp.float64
        assert xpcnn.asarray(x) is x


def test_asarray_moves_between_libraries():
    torch = pytest.importorskip("torch", reason="torch not installed")
    with xpcnn.use_backend("numpy"):
        x = xpcnn.asarray(torch.arange(4, dtype=torch.float32))
    assert isinstance(x, np.ndarray) and x.dtype == np.float32
    with xpcnn.use_backend("torch", "cpu"):
        t = xpcnn.asarray(x)
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float32


def test_functional_imports_no_array_library():
    banned = {"numpy", "cupy", "torch", "jax", "array_api_strict", "tensorflow"}
    for path in (ROOT / "xpcnn" / "functional").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in banned, f"{path.name} imports {name}"


def test_only_settings_reads_the_environment():
    pattern = re.compile(r"os\.environ|getenv")
    for path in (ROOT / "xpcnn").rglob("*.py"):
        if path.name != "settings.py":
            assert not pattern.search(path.read_text()), f"{path} reads the environment itself"


def test_a_bad_setting_names_the_variable_what_it_takes_and_what_came():
    from xpcnn import settings

    for env, message in (({"XPCNN_THREADS": "0"}, "XPCNN_THREADS must be a whole number >= 1 (1: no batch shards); "
                                                   "got '0'"),
                         ({"XPCNN_THREADS": "\u00b2"}, "XPCNN_THREADS must be a whole number >= 1 (1: no batch shards); "
                                                       "got '\u00b2'"),
                         ({"XPCNN_TUNE_MALLOC": "no"}, "XPCNN_TUNE_MALLOC must be 0 or 1; got 'no'")):
        with pytest.raises(settings.SettingsError, match=re.escape(message)):
            settings.read(env)
    assert settings.read({"XPCNN_THREADS": "3", "PMI_SIZE": "2", "OMP_NUM_THREADS": "1"}) == settings.Settings(
        threads=3, mpi_launched=True, blas_threads=1)


def test_use_backend_is_local_to_its_thread():
    """``with use_backend(...)`` in one thread leaves the choice of another thread alone (a ContextVar)."""
    import threading

    pytest.importorskip("array_api_strict", reason="array_api_strict not installed")
    seen, inside, done = [], threading.Event(), threading.Event()

    def other():
        inside.wait(10)
        seen.append(xpcnn.get_backend().name)
        done.set()

    worker = threading.Thread(target=other)
    worker.start()
    with xpcnn.use_backend("array_api_strict"):
        inside.set()
        done.wait(10)
        assert xpcnn.get_backend().name == "array_api_strict"
    worker.join(10)
    assert seen == ["numpy"]


def _run_info(env_backend):
    env = dict(os.environ, XPCNN_BACKEND=env_backend)
    return subprocess.run([sys.executable, "-m", "xpcnn", "info"], capture_output=True, text=True, env=env, timeout=120)


def test_info_command_reports_backends():
    done = _run_info("numpy")
    assert done.returncode == 0, done.stderr
    assert "selected backend: numpy" in done.stdout
    for name in xpcnn.BACKENDS:
        assert name in done.stdout
    assert "array API 2024.12" in done.stdout


def test_info_command_reports_a_bad_selection_and_fails():
    done = _run_info("nope")
    assert done.returncode == 2                   # a bad setting is a usage error (the command line's EXIT_USAGE)
    assert "got 'nope'" in done.stdout


def test_a_freed_256_mb_array_comes_back_without_page_faults():
    """What tune_allocator is for: a step's big temporaries (a ResNet-8 im2col at batch 256 is 53 MB) reuse
    the process's memory instead of being faulted in again every step. glibc's defaults map any such array
    that the heap's free top cannot hold and unmap it on free (so did xpcnn's first tuning, which only raised
    the thresholds: this test failed with it). Counted (page faults, not time) in fresh processes."""
    code = ("import resource, numpy as np, xpcnn\n"
            "xpcnn.parallel.tune_allocator()\n"
            "faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
            "a = np.ones(64 << 20, np.float32); del a\n"
            "before = faults(); a = np.ones(64 << 20, np.float32); print(xpcnn.parallel._ALLOCATOR_TUNED, "
            "faults() - before)\n")
    counts = {}
    for setting in ("1", "0"):
        env = {k: v for k, v in os.environ.items() if not k.startswith("XPCNN_")}
        env["XPCNN_TUNE_MALLOC"] = setting
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        tuned, faults = out.stdout.split()
        counts[tuned] = int(faults)
    if "True" not in counts:
        pytest.skip("malloc here is not glibc's: nothing to tune")
    assert counts["True"] < 16, counts            # the freed pages are reused
    assert counts["False"] > 8 * counts["True"] + 64, counts   # glibc's default unmaps them and faults them in


def _fresh_process(code: str, **env: str) -> list[str]:
    """What ``code`` prints in a new interpreter with no XPCNN_ setting but ``env``: tests of glibc's malloc run
    there, so that no setting they make outlives them in this session."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("XPCNN_")}
    environment.update(env)
    done = subprocess.run([sys.executable, "-c", code], env=environment, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_tune_allocator_applies_once_on_glibc_and_not_when_opted_out():
    import platform

    glibc = platform.libc_ver()[0] == "glibc"
    code = ("import xpcnn; first = xpcnn.parallel.tune_allocator(); "
            "print(first, xpcnn.parallel.tune_allocator() is first, xpcnn.parallel._ALLOCATOR_TUNED)")
    assert _fresh_process(code) == [str(glibc), "True", str(glibc)]
    assert _fresh_process(code, XPCNN_TUNE_MALLOC="0") == ["False", "True", "False"]


def test_importing_selecting_and_calling_a_model_leave_malloc_alone():
    """tune_allocator is an explicit call (fit's and the command line's), never a side effect: xpcnn may be a
    library inside someone's long-lived program."""
    code = ("import numpy as np, xpcnn; xpcnn.get_backend(); model = xpcnn.models.lenet5(); "
            "model(np.zeros((1, 1, 28, 28), np.float32)); print(xpcnn.parallel._ALLOCATOR_TUNED)")
    assert _fresh_process(code) == ["False"]


def test_jax_backend_float64_needs_its_64_bit_mode_and_devices_are_checked():
    jax = pytest.importorskip("jax", reason="jax is not installed (pip install -e '.[jax]')")
    selected = xpcnn.set_backend("jax", "cpu:0")
    assert selected.name == "jax" and str(selected.device) == "cpu:0"
    with pytest.raises(ValueError, match="device for the jax backend must be like 'cpu', 'cpu:0' or 'gpu:1'"):
        xpcnn.set_backend("jax", "cpu:7")
    was = jax.config.jax_enable_x64
    try:
        jax.config.update("jax_enable_x64", False)
        with pytest.raises(xpcnn.BackendUnavailableError, match="float64 on the jax backend needs JAX's 64-bit mode"):
            xpcnn.models.lenet5(dtype="float64")
        labels = xpcnn.asarray(np.arange(3))                    # int64 labels become int32, silently and exactly
        assert str(labels.dtype) == "int32" and xpcnn.to_numpy(labels).tolist() == [0, 1, 2]
        assert str(xpcnn.models.lenet5().parameters()[0].data.dtype) == "float32"
    finally:
        jax.config.update("jax_enable_x64", was)


def test_a_model_moves_to_jax_and_back_and_its_checkpoint_loads_both_ways(tmp_path):
    pytest.importorskip("jax", reason="jax is not installed (pip install -e '.[jax]')")
    model = xpcnn.models.lenet5()
    x = np.random.default_rng(0).standard_normal((3, 1, 28, 28)).astype(np.float32)
    expected = model.eval()(x)
    model.to("jax")
    assert all(type(p.data).__module__.startswith("jax") for p in model.parameters())
    np.testing.assert_allclose(xpcnn.to_numpy(model(xpcnn.backend.asarray_like(x, model.parameters()[0].data))),
                               expected, rtol=1e-5, atol=1e-6)
    xpcnn.save(tmp_path / "jax.npz", model)
    back = xpcnn.load(tmp_path / "jax.npz").model.eval()                # on numpy, the current backend
    np.testing.assert_allclose(back(x), expected, rtol=1e-5, atol=1e-6)
    with xpcnn.use_backend("jax"):
        again = xpcnn.load(tmp_path / "jax.npz").model.eval()
    assert type(again.parameters()[0].data).__module__.startswith("jax")


def test_an_unavailable_backend_is_reported_once_by_pytest_ra(tmp_path):
    """`pytest -ra` prints each unavailable backend's reason once, with its count, not once per test function."""
    tests = pathlib.Path(__file__).resolve().parent
    done = subprocess.run([sys.executable, "-m", "pytest", "-ra", "-q", "-p", "no:randomly", "-p", "no:cacheprovider",
                           str(tests / "test_activation.py")], capture_output=True, text=True, timeout=600,
                          cwd=tests.parent)
    assert done.returncode == 0, done.stdout[-2000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith("SKIPPED") and " unavailable: " in line]
    reasons = [line.split(": ", 1)[1] for line in lines]
    assert len(reasons) == len(set(reasons)), lines               # one line per reason
    assert all(line.split()[2].startswith("tests/conftest.py:") for line in lines), lines


CHECKS = ["select", "kernel", "matrix product", "random draw", "convolution forward and backward"]


def test_preflight_passes_every_check_on_every_backend_here(B):
    """On a GPU (ci/gpu.sh, XPCNN_TEST_REQUIRE=cupy) this is the one-minute proof that CuPy computes."""
    name, _, device = B.name.partition(":")
    checks = backend.preflight(name, device or None)
    assert [c.name for c in checks] == CHECKS
    assert all(c.ok for c in checks), [c for c in checks if not c.ok]


def test_a_failing_check_is_named_with_its_error_and_the_others_still_run(monkeypatch):
    def broken(selected):
        raise RuntimeError("CUBLAS_STATUS_NOT_INITIALIZED\nmore lines")

    monkeypatch.setitem(backend._CHECKS, "matrix product", broken)
    checks = {c.name: c for c in backend.preflight("numpy")}
    assert not checks["matrix product"].ok
    assert checks["matrix product"].detail == "RuntimeError: CUBLAS_STATUS_NOT_INITIALIZED"
    assert all(c.ok for name, c in checks.items() if name != "matrix product") and len(checks) == len(CHECKS)


def test_preflight_of_a_backend_that_cannot_be_selected_is_one_failed_check():
    (check,) = backend.preflight("numpy", "cuda:0")
    assert check.name == "select" and not check.ok and "numpy backend must be 'cpu'" in check.detail


def test_synchronize_waits_for_any_backend(B):
    name, _, device = B.name.partition(":")
    with xpcnn.use_backend(name, device or None):
        x = xpcnn.asarray(np.ones(4, np.float32))
        backend.synchronize(x * 2)
        backend.synchronize()
