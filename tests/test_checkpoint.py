"""xpcnn.save / xpcnn.load: round trips across backends and formats, atomic writes, refusals."""

from __future__ import annotations

import io
import os
import zipfile

import numpy as np
import pytest

import xpcnn
from xpcnn import checkpoint


def _trained(steps=3, build=xpcnn.models.lenet5, batch=64):
    model = build(seed=0)
    opt = xpcnn.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loss_fn = xpcnn.nn.CrossEntropyLoss()
    ds = xpcnn.data.Dataset.from_numpy(*[a[:batch * steps] for a in xpcnn.data.load_bundled("test")])
    for x, y in ds.batches(batch):
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
    for ours, theirs in zip(fresh_opt.state_dict()["state"], opt.state_dict()["state"]):
        np.testing.assert_array_equal(B.numpy(ours["momentum"]), theirs["momentum"])


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_a_float64_model_comes_back_in_float64(tmp_path, suffix):
    """A rebuilt model takes the precision it was saved in (it used to come back float32, silently rounded);
    a model the caller passes keeps its own."""
    if suffix == ".safetensors":
        pytest.importorskip("safetensors", reason="safetensors not installed")
    model = xpcnn.models.lenet5(seed=3, dtype="float64")
    opt = xpcnn.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    path = xpcnn.save(tmp_path / f"ck{suffix}", model, opt)
    loaded = xpcnn.load(path)
    for a, b in zip(model.parameters(), loaded.model.parameters()):
        assert b.data.dtype == np.float64
        np.testing.assert_array_equal(b.data, a.data)
    assert loaded.optimizer_state is not None
    into = xpcnn.load(path, xpcnn.models.lenet5(seed=0)).model
    assert all(p.data.dtype == np.float32 for p in into.parameters())


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


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_a_resnet_saved_in_training_reloads_with_the_same_eval_outputs_bit_for_bit(tmp_path, suffix):
    if suffix == ".safetensors":
        pytest.importorskip("safetensors", reason="safetensors not installed")
    model, opt = _trained(2, xpcnn.models.resnet8, batch=16)
    ds = xpcnn.data.Dataset.from_numpy(*[a[:16] for a in xpcnn.data.load_bundled("test")])
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


def test_an_array_declaring_a_huge_shape_is_refused_before_it_is_decompressed(tmp_path, monkeypatch):
    """A crafted member whose .npy header claims 1.6 GB: refused from the header, no data read."""
    model, opt = _trained(1)
    path = xpcnn.save(tmp_path / "ck.npz", model, opt)
    bomb = tmp_path / "bomb.npz"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            if info.filename == "param/0.weight.npy":
                header = io.BytesIO()
                np.lib.format.write_array_header_1_0(
                    header, {"descr": "<f4", "fortran_order": False, "shape": (400_000_000,)})
                dst.writestr(info.filename, header.getvalue() + bytes(1000))
            else:
                dst.writestr(info, src.read(info))
    reads = []
    monkeypatch.setattr(checkpoint._Npz, "read", lambda self, key: reads.append(key))
    with pytest.raises(xpcnn.CheckpointError, match=r"param/0.weight is compressed; xpcnn writes checkpoints "
                                                    r"uncompressed"):
        xpcnn.load(bomb)
    stored = tmp_path / "stored.npz"
    with zipfile.ZipFile(bomb) as src, zipfile.ZipFile(stored, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
    with pytest.raises(xpcnn.CheckpointError, match=r"param/0.weight declares shape \(400000000,\) of float32, but "
                                                    r"its member holds 1,000 bytes of data"):
        xpcnn.load(stored)
    assert reads == []


def test_a_configuration_edited_to_ask_for_more_than_the_file_holds_is_refused_before_allocating(tmp_path):
    """A 32 KB file whose configuration declares Linear(100000, 100000) (74.5 GiB in float64; the digests
    recomputed): refused while the model is built, having allocated no more than the file holds."""
    import tracemalloc

    model, _ = _trained(1)
    path = xpcnn.save(tmp_path / "ck.npz", model)

    def huge(meta):
        meta["model"]["layers"][-1].update(in_features=100_000, out_features=100_000)

    crafted = _crafted(path, tmp_path / "huge.npz", edit_meta=huge)
    tracemalloc.start()
    try:
        with pytest.raises(xpcnn.CheckpointError, match=r"its model configuration asks for more than the file "
                                                        r"holds: an array of shape \(100000, 100000\)"):
            xpcnn.load(crafted)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20 * 2**20, f"{peak / 2**20:.0f} MiB allocated for a {crafted.stat().st_size:,}-byte file"
    for layer in ({"type": "BatchNorm2D", "num_features": 10**9},
                  {"type": "Conv2D", "in_channels": 1, "out_channels": 6, "kernel_size": 5, "bias": "untied",
                   "input_size": [10**6, 10**6]}):
        crafted = _crafted(path, tmp_path / "huge.npz", edit_meta=lambda m: m["model"]["layers"].insert(0, layer))
        with pytest.raises(xpcnn.CheckpointError, match="asks for more than the file holds"):
            xpcnn.load(crafted)


def test_checkpoint_files_follow_the_umask(tmp_path):
    model, _ = _trained(1)
    for mask, mode in ((0o022, 0o644), (0o077, 0o600)):
        old = os.umask(mask)
        try:
            path = xpcnn.save(tmp_path / f"ck{mask:o}.npz", model)
        finally:
            os.umask(old)
        assert path.stat().st_mode & 0o777 == mode


def test_a_directory_is_not_a_checkpoint(tmp_path):
    with pytest.raises(xpcnn.CheckpointError, match="is a directory; give the checkpoint file"):
        xpcnn.load(tmp_path)


def _python(code, **kwargs):
    import subprocess
    import sys

    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, **kwargs)


def test_kill_9_during_a_save_then_a_new_save_leaves_no_temporaries(tmp_path):
    """A writer killed between writing its temporary and renaming it: the old checkpoint stays, and the next
    save removes the dead writer's temporary."""
    import signal

    model, opt = _trained(1)
    path = xpcnn.save(tmp_path / "ck.npz", model, opt, epoch=1)
    writer = _python(f"""
import time, xpcnn
from xpcnn import checkpoint
def stall(src, dst):
    print("written", flush=True)
    time.sleep(600)
checkpoint.os.replace = stall
xpcnn.save({str(path)!r}, xpcnn.models.lenet5(seed=5), epoch=2)
""")
    try:
        assert writer.stdout.readline().strip() == "written"
        leftovers = [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
        assert len(leftovers) == 1 and leftovers[0].startswith(f".ck.npz.{writer.pid}.")
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait(timeout=30)
    finally:
        writer.kill()
    assert xpcnn.load(path).epoch == 1                          # the last good file is intact
    xpcnn.save(path, model, opt, epoch=3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.npz"]
    assert xpcnn.load(path).epoch == 3


def test_a_reader_never_sees_a_false_altered_while_another_process_saves(tmp_path):
    import time

    model, opt = _trained(1)
    path = xpcnn.save(tmp_path / "ck.npz", model, opt, epoch=0)
    writer = _python(f"""
import time, xpcnn
models = [xpcnn.models.lenet5(seed=s) for s in (1, 2)]
print("go", flush=True)
end = time.time() + 3
epoch = 0
while time.time() < end:
    epoch += 1
    xpcnn.save({str(path)!r}, models[epoch % 2], epoch=epoch)
print(epoch, flush=True)
""")
    try:
        assert writer.stdout.readline().strip() == "go"
        loads, start = 0, time.time()
        while writer.poll() is None and time.time() - start < 60:
            xpcnn.load(path)                  # raises on any false "altered" or half-written file
            loads += 1
        saves = int(writer.stdout.readline())
    finally:
        writer.kill()
    assert loads > 5 and saves > 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.npz"]


def test_resume_from_python_is_exact_with_dropout(tmp_path):
    """The Dropout seed and call counter are saved: continuing after a reload draws the same masks."""
    def model_with_dropout():
        return xpcnn.nn.Sequential(xpcnn.nn.Flatten(), xpcnn.nn.Linear(784, 32, rng=np.random.default_rng(0)),
                                   xpcnn.nn.Dropout(0.5, rng=np.random.default_rng(1)),
                                   xpcnn.nn.Linear(32, 10, rng=np.random.default_rng(2)), input_shape=(1, 28, 28))

    ds = xpcnn.data.Dataset.from_numpy(*[a[:128] for a in xpcnn.data.load_bundled("test")])
    loss_fn = xpcnn.nn.CrossEntropyLoss()

    def fit(model, opt, start, epochs):
        xpcnn.fit(model, loss_fn, opt, ds, epochs=epochs, batch_size=32, start_epoch=start, progress=False,
                  scheduler=xpcnn.optim.CosineLR(opt, 2))      # made afresh: its base is the initial lr

    straight = model_with_dropout()
    fit(straight, xpcnn.optim.SGD(straight.parameters(), lr=0.1, momentum=0.9), 0, 2)
    first = model_with_dropout()
    opt = xpcnn.optim.SGD(first.parameters(), lr=0.1, momentum=0.9)
    fit(first, opt, 0, 1)
    xpcnn.save(tmp_path / "half.npz", first, opt, epoch=1)
    first.layers[2](np.ones((4, 32), np.float32))             # the original process goes on drawing
    resumed = xpcnn.load(tmp_path / "half.npz")
    opt2 = xpcnn.optim.SGD(resumed.model.parameters(), lr=5.0, momentum=0.9)   # any lr: the state has it
    opt2.load_state_dict(resumed.optimizer_state)
    fit(resumed.model, opt2, resumed.epoch, 2)
    for a, b in zip(straight.parameters(), resumed.model.parameters()):
        np.testing.assert_array_equal(a.data, b.data)


def test_check_resume_names_the_setting_that_would_break_an_exact_resume(tmp_path):
    from xpcnn.checkpoint import ResumeConflict, check_resume

    model, opt = _trained(1)
    xpcnn.save(tmp_path / "ck.npz", model, opt, extra={"seed": 0, "batch_size": 32, "dataset": "bundled"})
    ck = xpcnn.load(tmp_path / "ck.npz")
    check_resume(ck, model=ck.model.name, dtype="float32", seed=0, batch_size=32, dataset="bundled")
    for kwargs, setting in (({"seed": 1}, "seed"), ({"batch_size": 64}, "batch_size"), ({"dtype": "float64"}, "dtype"),
                            ({"model": "resnet8"}, "model")):
        with pytest.raises(ResumeConflict) as caught:
            check_resume(ck, **kwargs)
        assert caught.value.setting == setting and caught.value.given == next(iter(kwargs.values()))


def _crafted(path, out, edit_meta=None, edit_arrays=None):
    """A checkpoint edited and then given consistent digests: what only a deliberate crafter makes."""
    def edit(meta, arrays):
        if edit_arrays:
            edit_arrays(arrays)
            for key in meta["sha256"]:
                meta["sha256"][key] = checkpoint._digest(arrays[key])
        if edit_meta:
            edit_meta(meta)
        meta["meta_sha256"] = checkpoint._meta_digest(meta)
    return _rewrite(path, out, edit)


def test_crafted_but_consistent_values_are_refused_as_a_constructor_would(tmp_path):
    """A negative BatchNorm variance (evaluate printed a NaN loss), a negative learning rate (resume trained
    uphill), a momentum given as text or a missing learning rate (tracebacks): each is a clear error now."""
    model = xpcnn.models.resnet8(in_channels=1, image_size=8)
    path = xpcnn.save(tmp_path / "bn.npz", model)

    def negative_var(arrays):
        arrays["buffer/1.running_var"] = -np.abs(arrays["buffer/1.running_var"]) - 1

    before = [b.data.copy() for b in model.buffers()]
    with pytest.raises(xpcnn.CheckpointError, match=r"1: BatchNorm2D: running_var must be >= 0 \(a variance\)"):
        xpcnn.load(_crafted(path, tmp_path / "var.npz", edit_arrays=negative_var), model)
    for b, old in zip(model.buffers(), before):
        np.testing.assert_array_equal(b.data, old)             # nothing was loaded into the given model

    lenet, opt = _trained(1)
    path = xpcnn.save(tmp_path / "opt.npz", lenet, opt)
    for edit, words in ((lambda m: m["optimizer"].update(lr=-0.1), "lr must be a finite number > 0; got -0.1"),
                        (lambda m: m["optimizer"]["hyper"].update(momentum="0.9"), "momentum must be a finite number"),
                        (lambda m: m["optimizer"].update(lr=None), "lr must be a finite number > 0; got None"),
                        (lambda m: m["optimizer"].update(steps=-3), "steps must be a whole number >= 0; got -3")):
        crafted = _crafted(path, tmp_path / "crafted.npz", edit_meta=edit)
        fresh = xpcnn.optim.SGD(lenet.parameters(), lr=0.05, momentum=0.9)
        with pytest.raises(xpcnn.CheckpointError, match=words):
            xpcnn.load(crafted, lenet, fresh)


def test_a_missing_folder_is_an_error_naming_it_and_is_never_made(tmp_path):
    """As ``open`` and ``torch.save`` refuse: ``/typo/dir/m.npz`` is never created silently."""
    typo = tmp_path / "typo" / "dir"
    with pytest.raises(FileNotFoundError, match=f"save: cannot write {typo / 'm.npz'}: the folder {typo} does not "
                                                f"exist; create it first"):
        xpcnn.save(typo / "m.npz", xpcnn.models.lenet5(seed=0))
    assert not (tmp_path / "typo").exists()
    typo.mkdir(parents=True)
    assert xpcnn.load(xpcnn.save(typo / "m.npz", xpcnn.models.lenet5(seed=0))).epoch == 0
