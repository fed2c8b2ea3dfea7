"""xpcnn.save / xpcnn.load: round trips across backends and formats, atomic writes, refusals."""

from __future__ import annotations

import os
import zipfile

import numpy as np
import pytest

import xpcnn
from xpcnn import checkpoint


def _trained(steps=3):
    model = xpcnn.models.lenet5(seed=0)
    opt = xpcnn.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loss_fn = xpcnn.nn.CrossEntropyLoss()
    ds = xpcnn.data.Dataset.from_numpy(*[a[:64 * steps] for a in xpcnn.data.load_bundled("test")])
    for x, y in ds.batches(64):
        loss_fn(model(x), y)
        model.backward(loss_fn.backward())
        opt.step()
        model.zero_grad()
    return model, opt


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_round_trip_to_every_backend(B, tmp_path, suffix):
    if suffix == ".safetensors":
        pytest.importorskip("safetensors", reason="safetensors not installed")
    model, opt = _trained()
    path = xpcnn.save(tmp_path / f"ck{suffix}", model, opt, epoch=2, step=3, rng_state={"seed": 5},
                      extra={"note": "x"})
    name, _, device = B.name.partition(":")
    with xpcnn.use_backend(name, device or None):
        loaded = xpcnn.load(path)
        fresh_opt = xpcnn.optim.SGD(loaded.model.parameters(), lr=1.0, momentum=0.9)
        fresh_opt.load_state_dict(loaded.optimizer_state)
    assert (loaded.epoch, loaded.step, loaded.rng_state, loaded.extra) == (2, 3, {"seed": 5}, {"note": "x"})
    for (name_a, a), (name_b, b) in zip(model.named_parameters(), loaded.model.named_parameters()):
        assert name_a == name_b and b.data.device == B.device
        np.testing.assert_array_equal(B.numpy(b.data), a.data)
    assert fresh_opt.lr == opt.lr and fresh_opt.steps == opt.steps
    for ours, theirs in zip(fresh_opt.state, opt.state):
        np.testing.assert_array_equal(B.numpy(ours["momentum"]), theirs["momentum"])


def test_npz_has_no_pickles(tmp_path):
    model, opt = _trained(1)
    path = xpcnn.save(tmp_path / "ck.npz", model, opt)
    with np.load(path, allow_pickle=False) as archive:
        assert all(archive[k].dtype != object for k in archive.files)


def test_interrupted_save_leaves_previous_checkpoint_intact(tmp_path, monkeypatch):
    model, opt = _trained(1)
    path = xpcnn.save(tmp_path / "ck.npz", model, opt, epoch=1)
    before = path.read_bytes()

    def interrupted(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        xpcnn.save(path, model, opt, epoch=2)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["ck.npz"]                 # no temporary file left behind
    assert xpcnn.load(path).epoch == 1


def test_truncated_and_altered_files_are_refused(tmp_path):
    model, opt = _trained(1)
    path = xpcnn.save(tmp_path / "ck.npz", model, opt)
    cut = tmp_path / "cut.npz"
    cut.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(xpcnn.CheckpointError, match="cut.npz: cannot be read as a checkpoint"):
        xpcnn.load(cut)
    altered = tmp_path / "altered.npz"
    with np.load(path, allow_pickle=False) as archive:
        arrays = {k: archive[k] for k in archive.files}
    arrays["param/0.weight"] = arrays["param/0.weight"] + 1e-3
    np.savez(altered, **arrays)
    with pytest.raises(xpcnn.CheckpointError, match=r"array param/0.weight was altered"):
        xpcnn.load(altered)
    with zipfile.ZipFile(tmp_path / "foreign.npz", "w") as z:
        z.writestr("a.npy", b"not numpy")
    with pytest.raises(xpcnn.CheckpointError):
        xpcnn.load(tmp_path / "foreign.npz")
    with pytest.raises(FileNotFoundError):
        xpcnn.load(tmp_path / "missing.npz")


def test_nan_weights_are_neither_saved_nor_loaded(tmp_path):
    model, opt = _trained(1)
    good = xpcnn.save(tmp_path / "ck.npz", model)
    model.layers[0].weight.data = model.layers[0].weight.data * np.nan
    with pytest.raises(ValueError, match="parameter 0.weight holds NaN or Inf"):
        xpcnn.save(good, model)
    assert np.all(np.isfinite(xpcnn.load(good).model.layers[0].weight.data))
    # a file written by other means with NaN weights (and matching checksums) is refused on load
    with np.load(good, allow_pickle=False) as archive:
        arrays = {k: archive[k] for k in archive.files}
    import json
    meta = json.loads(arrays["__xpcnn__"].tobytes())
    arrays["param/0.weight"] = np.full_like(arrays["param/0.weight"], np.nan)
    meta["sha256"]["param/0.weight"] = checkpoint._digest(arrays["param/0.weight"])
    arrays["__xpcnn__"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    np.savez(tmp_path / "nan.npz", **arrays)
    with pytest.raises(xpcnn.CheckpointError, match="0.weight holds NaN or Inf"):
        xpcnn.load(tmp_path / "nan.npz")


def test_checkpoint_for_another_architecture_is_refused(tmp_path):
    path = xpcnn.save(tmp_path / "lenet.npz", xpcnn.models.lenet5())
    with pytest.raises(xpcnn.CheckpointError, match="checkpoint is for model 'lenet5'.*does not fit the model 'seed_cnn'"):
        xpcnn.load(path, xpcnn.models.seed_cnn())
    with pytest.raises(ValueError, match=".npz or .safetensors"):
        xpcnn.save(tmp_path / "model.pkl", xpcnn.models.lenet5())
