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
    tuning.forget()

    def set_mode(value: str | None):
        if value is None:
            monkeypatch.delenv("XPCNN_TUNE", raising=False)
        else:
            monkeypatch.setenv("XPCNN_TUNE", value)
        tuning.forget()

    yield set_mode
    tuning.forget()


def _layer(batch=8):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, 6, 14, 14)).astype(np.float32)
    w = rng.standard_normal((16, 6, 5, 5)).astype(np.float32)
    return x, w


def test_a_new_shape_is_measured_once_on_every_route_and_kept(tune):
    tune("1")
    x, w = _layer()
    calls = []
    real = conv._forward

    def counting(*args, **kwargs):
        calls.append(kwargs.get("tune"))
        return real(*args, **kwargs)

    y, cache = conv.conv2d_forward(x, w)
    table = tuning.entries()
    assert len(table) == 1
    (key, entry), = table.items()
    assert "w(16, 6, 5, 5)" in key and "float32" in key and key.endswith("blas=all")
    assert set(entry["ms"]) == {"im2col/col2im", "im2col/transposed", "rows/col2im", "rows/transposed"}
    assert tuple(cache.route) == tuple(entry["route"])
    saved = json.loads(tuning.cache_path().read_text())
    assert saved["version"] == tuning.VERSION and len(saved["machines"]) == 1
    machine = next(iter(saved["machines"].values()))["machine"]
    assert set(machine) == {"cpu", "cores", "numpy", "blas"}
    conv._forward, before = counting, len(table)
    try:
        conv.conv2d_forward(x, w)                        # measured already: no timing runs this time
    finally:
        conv._forward = real
    assert len(tuning.entries()) == before and calls == [True], "one call, and no timing runs"
    np.testing.assert_allclose(y, conv.conv2d_forward(x, w, route="im2col")[0], rtol=1e-5, atol=1e-5)


def test_a_kept_measurement_decides_until_it_is_turned_off(tune):
    x, w = _layer()
    rule = conv.conv2d_forward(x, w)[1].route
    assert rule == conv.ConvRoute("im2col", "col2im"), "the size rules' choice for this small layer"
    tune("1")
    conv.conv2d_forward(x, w)
    path = tuning.cache_path()
    saved = json.loads(path.read_text())
    entries = next(iter(saved["machines"].values()))["conv"]
    for entry in entries.values():
        entry["route"] = ["rows", "transposed"]          # as if measured fastest here
    path.write_text(json.dumps(saved))
    tune(None)                                            # the default: measured routes where there are some
    assert conv.conv2d_forward(x, w)[1].route == conv.ConvRoute("rows", "transposed")
    tune("0")
    assert conv.conv2d_forward(x, w)[1].route == rule
    tune(None)
    other = conv.conv2d_forward(*_layer(batch=9))[1].route
    assert other == rule and len(tuning.entries()) == 1, "a shape never measured keeps the size rules, unmeasured"


def test_measurements_hold_for_their_machine_only(tune, monkeypatch):
    tune("1")
    x, w = _layer()
    conv.conv2d_forward(x, w)
    monkeypatch.setattr(tuning, "machine", lambda: {"cpu": "another CPU", "cores": 64, "numpy": "9", "blas": "x"})
    tune(None)
    assert tuning.entries() == {}
    tune("1")
    conv.conv2d_forward(x, w)
    saved = json.loads(tuning.cache_path().read_text())
    assert len(saved["machines"]) == 2, "each machine keeps its own, in one file"


def test_the_size_rules_choice_stays_unless_another_route_is_clearly_faster(tune, monkeypatch):
    tune("1")
    default, other = ("im2col", "col2im"), ("rows", "col2im")
    for times, expected in (({default: 1.0, other: 0.95}, default), ({default: 1.0, other: 0.85}, other)):
        monkeypatch.setattr(tuning, "_time", lambda run, candidates, t=times: dict(t))
        tuning.forget()
        key = f"test {expected}"
        assert tuning.choose(lambda: key, [default, other], lambda c: None, np, default) == expected


def test_other_backends_and_empty_batches_are_never_measured(tune):
    tune("1")
    strict = pytest.importorskip("array_api_strict", reason="array_api_strict not installed")
    x, w = _layer()
    conv.conv2d_forward(strict.asarray(x), strict.asarray(w))
    conv.conv2d_forward(x[:0], w)
    assert tuning.entries() == {}


def test_batch_shards_measure_for_one_blas_thread(tune, monkeypatch):
    tune("1")
    monkeypatch.setattr(xpcnn.thresholds, "MIN_SHARD_ELEMENTS", 1)
    model = xpcnn.parallel.shard(xpcnn.models.lenet5(seed=0).module, threads=2)
    loss_fn = xpcnn.nn.CrossEntropyLoss()
    x = np.random.default_rng(0).standard_normal((8, 1, 28, 28)).astype(np.float32)
    loss_fn(model(x), np.arange(8))
    model.backward(loss_fn.backward())
    keys = list(tuning.entries())
    assert keys and all(key.endswith("blas=1") and ", 4)" in key.split(" w(")[0] for key in keys), keys


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
    assert "2 convolution shapes measured on this machine" in done.stdout and "-> " in done.stdout
    listed = cmd("tune", "--list")
    assert listed.returncode == 0 and "2 convolution shapes measured" in listed.stdout
    assert "convolution routes: measured where measured, else size rules" in cmd("info").stdout
    assert "2 shapes measured on this machine" in cmd("info").stdout
    refused = cmd("tune", XPCNN_TUNE="0")
    assert refused.returncode == 2 and "XPCNN_TUNE=0 turns measured routes off" in refused.stderr
