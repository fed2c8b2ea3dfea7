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
    meta["meta_sha256"] = checkpoint._meta_digest(meta)
    arrays["__xpcnn__"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    np.savez(tmp_path / "nan.npz", **arrays)
    with pytest.raises(xpcnn.CheckpointError, match="param 0.weight holds NaN or Inf"):
        xpcnn.load(tmp_path / "nan.npz")


def test_checkpoint_for_another_architecture_is_refused(tmp_path):
    path = xpcnn.save(tmp_path / "lenet.npz", xpcnn.models.lenet5())
    with pytest.raises(xpcnn.CheckpointError, match="checkpoint is for model 'lenet5'.*does not fit the model 'seed_cnn'"):
        xpcnn.load(path, xpcnn.models.seed_cnn())
    with pytest.raises(ValueError, match=".npz or .safetensors"):
        xpcnn.save(tmp_path / "model.pkl", xpcnn.models.lenet5())


def _trained_resnet(steps=2):
    model = xpcnn.models.resnet8(seed=0)
    opt = xpcnn.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loss_fn = xpcnn.nn.CrossEntropyLoss()
    ds = xpcnn.data.Dataset.from_numpy(*[a[:16 * steps] for a in xpcnn.data.load_bundled("test")])
    for x, y in ds.batches(16):
        loss_fn(model(x), y)
        model.backward(loss_fn.backward())
        opt.step()
        model.zero_grad()
    return model, opt, ds


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_a_resnet_saved_in_training_reloads_with_the_same_eval_outputs_bit_for_bit(tmp_path, suffix):
    if suffix == ".safetensors":
        pytest.importorskip("safetensors", reason="safetensors not installed")
    model, opt, ds = _trained_resnet()
    path = xpcnn.save(tmp_path / f"r8{suffix}", model, opt, epoch=1)
    loaded = xpcnn.load(path)
    assert isinstance(loaded.model.layers[3], xpcnn.nn.Residual)
    assert [n for n, _ in loaded.model.named_buffers()] == [n for n, _ in model.named_buffers()]
    x = ds.images[:16]
    np.testing.assert_array_equal(loaded.model.eval()(x), model.eval()(x))


def _rewrite(path, out, edit):
    """Rewrite an .npz checkpoint with ``edit(meta, arrays)`` applied (no digests recomputed)."""
    import json

    with np.load(path, allow_pickle=False) as archive:
        arrays = {k: archive[k] for k in archive.files}
    meta = json.loads(arrays["__xpcnn__"].tobytes())
    edit(meta, arrays)
    arrays["__xpcnn__"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    np.savez(out, **arrays)
    return out


@pytest.mark.parametrize("edit", [
    lambda meta, arrays: meta.update(epoch=9),
    lambda meta, arrays: meta["optimizer"]["hyper"].update(momentum=9.9),
    lambda meta, arrays: meta["model"]["layers"][0].update(padding=3),
], ids=["epoch", "momentum", "padding"])
def test_an_edited_json_record_is_refused(tmp_path, edit):
    model, opt = _trained(1)
    path = xpcnn.save(tmp_path / "ck.npz", model, opt, epoch=3)
    with pytest.raises(xpcnn.CheckpointError, match="its JSON record was altered"):
        xpcnn.load(_rewrite(path, tmp_path / "edited.npz", edit))


def test_an_edited_safetensors_header_is_refused(tmp_path):
    pytest.importorskip("safetensors", reason="safetensors not installed")
    model, opt = _trained(1)
    path = xpcnn.save(tmp_path / "ck.safetensors", model, opt, epoch=3)
    data = path.read_bytes()
    assert data.count(b'\\"epoch\\": 3') == 1
    path.write_bytes(data.replace(b'\\"epoch\\": 3', b'\\"epoch\\": 9'))     # same length: a valid header
    with pytest.raises(xpcnn.CheckpointError, match="its JSON record was altered"):
        xpcnn.load(path)


@pytest.mark.parametrize("layers", [
    [{"type": "Bogus"}],
    [{"type": "Linear", "in_features": 3, "out_features": 2, "colour": "red"}],
    [{"type": "Linear", "in_features": "three", "out_features": 2}],
    [{"in_features": 3}],
    "not a list",
], ids=["unknown", "extra-argument", "wrong-type", "missing-type", "not-a-list"])
def test_a_crafted_configuration_is_a_checkpoint_error(tmp_path, layers):
    model, opt = _trained(1)
    path = xpcnn.save(tmp_path / "ck.npz", model, opt)

    def edit(meta, arrays):
        meta["model"]["layers"] = layers
        meta["meta_sha256"] = checkpoint._meta_digest(meta)

    with pytest.raises(xpcnn.CheckpointError, match="model configuration cannot be rebuilt"):
        xpcnn.load(_rewrite(path, tmp_path / "crafted.npz", edit))


def test_optimizer_state_of_the_wrong_shape_is_refused(tmp_path):
    model, opt = _trained(1)
    path = xpcnn.save(tmp_path / "ck.npz", model, opt)

    def edit(meta, arrays):
        arrays["optim/0/momentum"] = np.zeros(3, np.float32)
        meta["sha256"]["optim/0/momentum"] = checkpoint._digest(arrays["optim/0/momentum"])
        meta["meta_sha256"] = checkpoint._meta_digest(meta)

    with pytest.raises(xpcnn.CheckpointError, match=r"optimizer state optim/0/momentum has shape \(3,\)"):
        xpcnn.load(_rewrite(path, tmp_path / "bad.npz", edit))
