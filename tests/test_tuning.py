"""Convolution routes chosen by measurement (xpcnn.tuning, issue 22): measured once per machine and shape, kept
in ~/.cache/xpcnn/tuning.json, used from then on, and never used where turned off or on other backends."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import xpcnn
from xpcnn import tuning
from xpcnn.functional import conv


@pytest.fixture
def tune(monkeypatch, tmp_path):
    """A tuner writing under a temporary home, starting empty; ``tune(mode)`` sets XPCNN_TUNE."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(tuning, "WARM_S", 0.0)       # what is measured matters here, not how well
    monkeypatch.setattr(tuning, "BLOCK_S", 0.0)
    tuning.forget()

    def set_mode(value: str | None):
        if value is None:
            monkeypatch.delenv("XPCNN_TUNE", raising=False)
        else:
            monkeypatch.setenv("XPCNN_TUNE", value)
        tuning.forget()

    yield set_mode
    tuning.forget()


def _model():
    """LeNet-5 wrapped, any batch of two or more shardable (so one piece and two shards both compete)."""
    return xpcnn.parallel.shard(xpcnn.models.lenet5(seed=0).module, threads=2)


def _step(model, batch=8, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, 1, 28, 28)).astype(np.float32)
    loss_fn = xpcnn.nn.CrossEntropyLoss()
    loss = loss_fn(model(x), np.arange(batch) % 10)
    model.backward(loss_fn.backward())
    return float(loss), [p.grad.copy() for p in model.parameters()]


def test_a_training_step_measures_its_shards_and_convolution_routes_once_and_keeps_them(tune, monkeypatch):
    tune("1")
    trials = []
    real = xpcnn.parallel.BatchShards._trial
    monkeypatch.setattr(xpcnn.parallel.BatchShards, "_trial", lambda self, x, n: trials.append(n) or real(self, x, n))
    model = _model()
    _step(model)
    table = tuning.entries()
    shards = [k for k in table if k.startswith("shards lenet5:")]
    convs = [k for k in table if k.startswith("conv ")]
    assert len(shards) == 1 and "x(8, 1, 28, 28) float32 most=2" in shards[0]
    assert set(table[shards[0]]["ms"]) == {"1", "2"}
    chosen = int(table[shards[0]]["route"][0])
    assert len(convs) == 2 and all(table[k]["in"] == shards[0] for k in convs), "LeNet-5's two convolutions"
    assert all(k.endswith("blas=1" if chosen == 2 else "blas=all") for k in convs)
    for k in convs:
        assert set(table[k]["ms"]) == {"im2col/col2im", "im2col/transposed", "rows/col2im", "rows/transposed"}
    saved = json.loads(tuning.cache_path().read_text())
    assert saved["version"] == tuning.VERSION and len(saved["machines"]) == 1
    assert set(next(iter(saved["machines"].values()))["machine"]) == {"cpu", "cores", "numpy", "blas"}
    count = len(trials)
    assert count > 10
    _step(model, seed=1)
    _step(_model(), seed=2)
    assert len(trials) == count, "measured once: later steps and models of the same structure use the answer"


def test_measuring_changes_no_result(tune, monkeypatch):
    """The trials' gradients and running statistics are thrown away: a measured step's numbers are those of a step
    that runs the chosen shard count and routes without measuring."""
    tune("1")
    model = xpcnn.parallel.shard(xpcnn.models.resnet8(in_channels=1, image_size=8, seed=0, dtype="float64").module,
                                 threads=2)
    x = np.random.default_rng(0).standard_normal((6, 1, 8, 8))
    loss_fn = xpcnn.nn.CrossEntropyLoss()

    def step(m):
        loss = loss_fn(m(x), np.arange(6) % 10)
        m.backward(loss_fn.backward())
        return float(loss), [p.grad.copy() for p in m.parameters()], [b.data.copy() for b in m.buffers()]

    measured = step(model)
    assert any(k.startswith("shards resnet8:") for k in tuning.entries())
    tune(None)                                     # now: the kept answers, nothing measured
    again = step(xpcnn.parallel.shard(xpcnn.models.resnet8(in_channels=1, image_size=8, seed=0,
                                                           dtype="float64").module, threads=2))
    assert measured[0] == again[0]
    for a, b in zip(measured[1] + measured[2], again[1] + again[2]):
        np.testing.assert_array_equal(a, b)


def test_a_kept_choice_decides_until_it_is_turned_off(tune, monkeypatch):
    monkeypatch.setattr(xpcnn.thresholds, "MIN_SHARD_ELEMENTS", 1)        # the size rule: two shards
    tune("1")
    model = _model()
    _step(model)
    path = tuning.cache_path()
    saved = json.loads(path.read_text())
    choices = next(iter(saved["machines"].values()))["choices"]
    shards = next(k for k in choices if k.startswith("shards"))
    choices[shards]["route"] = ["1"]                                         # as if one piece had won
    for shape in ("x(1, 28, 28, 8) w(6, 1, 5, 5) stride(1, 1) pads(2, 2, 2, 2)",
                  "x(6, 14, 14, 8) w(16, 6, 5, 5) stride(1, 1) pads(0, 0, 0, 0)"):
        choices[f"conv CHWN {shape} dilation(1, 1) float32 blas=all"] = {"route": ["im2col", "transposed"]}
    path.write_text(json.dumps(saved))
    tune(None)
    x = np.zeros((8, 1, 28, 28), np.float32)
    model(x)
    assert type(model._last.cache).__name__ == "SequentialCache", "the kept count: one piece"
    assert model._last.cache.caches[0].route == conv.ConvRoute("im2col", "transposed"), "the kept route"
    tune("0")
    model(x)
    assert type(model._last.cache).__name__ == "ShardedCache", "the size rule"


def test_measurements_hold_for_their_machine_only(tune, monkeypatch):
    tune("1")
    _step(_model())
    monkeypatch.setattr(tuning, "machine", lambda: {"cpu": "another CPU", "cores": 64, "numpy": "9", "blas": "x"})
    tune(None)
    assert tuning.entries() == {}
    tune("1")
    _step(_model())
    saved = json.loads(tuning.cache_path().read_text())
    assert len(saved["machines"]) == 2, "each machine keeps its own, in one file"


def test_each_candidate_is_timed_in_warmed_blocks_in_alternating_order(monkeypatch):
    """The timing protocol: per round, each candidate runs untimed (for WARM_S where asked), then a timed block;
    rounds alternate the order; the median round decides."""
    monkeypatch.setattr(tuning, "BLOCK_S", 0.0)
    calls = []
    times = tuning._time(calls.append, [("a",), ("b",)])
    assert calls == [("a",)] * 2 + [("b",)] * 4 + [("a",)] * 4 + [("b",)] * 2, "untimed + timed, order a b | b a | a b"
    assert set(times) == {("a",), ("b",)} and all(t >= 0 for t in times.values())
    calls.clear()
    tuning._time(calls.append, [("a",)], warm=0.05)
    assert len(calls) > 2 * tuning.ROUNDS, "runs kept going untimed for the warm-up"


def test_the_rules_choice_stays_unless_another_is_clearly_faster():
    rule, other = ("2",), ("1",)
    assert tuning._best({rule: 1.0, other: 0.9}, rule) == rule
    assert tuning._best({rule: 1.0, other: 0.8}, rule) == other


def test_other_backends_are_never_measured(tune):
    tune("1")
    strict = pytest.importorskip("array_api_strict", reason="array_api_strict not installed")
    with xpcnn.use_backend("array_api_strict"):
        model = _model()
        loss_fn = xpcnn.nn.CrossEntropyLoss()
        loss_fn(model(strict.asarray(np.zeros((8, 1, 28, 28), np.float32))), strict.asarray(np.arange(8)))
    assert tuning.entries() == {}


def test_a_bad_setting_is_named():
    from xpcnn import settings

    with pytest.raises(settings.SettingsError, match=r"XPCNN_TUNE must be 0 \(size rules only\) or 1 \(measure new "
                                                     r"shapes\); got 'yes'"):
        settings.read({"XPCNN_TUNE": "yes"})


def test_xpcnn_tune_measures_lists_and_info_counts(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("XPCNN_")}
    env.update(HOME=str(tmp_path), OPENBLAS_NUM_THREADS="1")

    def cmd(*args, **extra):
        return subprocess.run([sys.executable, "-m", "xpcnn", *args], capture_output=True, text=True,
                              env={**env, **extra}, timeout=300)

    done = cmd("tune", "--model", "lenet5", "--batch-size", "16")
    assert done.returncode == 0, done.stderr
    assert "measured lenet5 at batch 16" in done.stdout
    assert "choices measured on this machine" in done.stdout and "-> " in done.stdout
    assert "shards lenet5:" in done.stdout and "conv CHWN x(1, 28, 28, " in done.stdout
    count = len(json.loads((tmp_path / ".cache" / "xpcnn" / "tuning.json").read_text())["machines"].popitem()[1][
        "choices"])
    listed = cmd("tune", "--list")
    assert listed.returncode == 0 and f"{count} choices measured" in listed.stdout
    info = cmd("info").stdout
    assert "convolution routes and batch shards: measured where measured, else size rules" in info
    assert f"{count} choices measured on this machine" in info
    refused = cmd("tune", XPCNN_TUNE="0")
    assert refused.returncode == 2 and "XPCNN_TUNE=0 turns measured routes off" in refused.stderr


def test_the_machine_key_tells_cpu_generations_apart_that_share_a_name(tmp_path):
    """A VM's /proc/cpuinfo says "AMD EPYC" for Zen 4 and Zen 5 alike (both ran this project): family, model and
    stepping go into the key, so one CPU's measurements never decide for the other."""
    block = "processor\t: {n}\nvendor_id\t: AuthenticAMD\ncpu family\t: {family}\nmodel\t\t: {model}\n" \
            "model name\t: AMD EPYC\nstepping\t: 1\nflags\t\t: fpu avx2\n\n"
    zen4, zen5 = tmp_path / "zen4", tmp_path / "zen5"
    zen4.write_text("".join(block.format(n=n, family=25, model=17) for n in range(2)))
    zen5.write_text("".join(block.format(n=n, family=26, model=2) for n in range(2)))
    assert tuning.cpu(str(zen4)) == "AMD EPYC (family 25, model 17, stepping 1)"
    assert tuning.cpu(str(zen5)) == "AMD EPYC (family 26, model 2, stepping 1)"
    assert tuning.cpu(str(tmp_path / "missing")), "no /proc/cpuinfo: the platform's name, never empty"


def test_info_says_when_openblas_leaves_the_cpus_avx512_unused(tmp_path, monkeypatch):
    import threadpoolctl

    avx512 = "fpu avx2 avx512f avx512dq avx512cd avx512bw avx512vl"
    with_avx512, without = tmp_path / "with", tmp_path / "without"
    with_avx512.write_text(f"processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: {avx512}\n\n")
    without.write_text("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx2\n\n")

    def blas(kernels):
        monkeypatch.setattr(threadpoolctl, "threadpool_info", lambda: [
            {"user_api": "blas", "internal_api": "openblas", "version": "0.3.31", "architecture": kernels}])

    blas("Haswell")
    assert "Haswell kernels on a CPU with AVX-512 (OPENBLAS_CORETYPE=SkylakeX" in tuning.blas_kernels(str(with_avx512))
    assert tuning.blas_kernels(str(without)) == "openblas 0.3.31, Haswell kernels"
    blas("SkylakeX")
    assert tuning.blas_kernels(str(with_avx512)) == "openblas 0.3.31, SkylakeX kernels"
