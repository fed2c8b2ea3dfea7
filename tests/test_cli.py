"""The `xpcnn` command, run as a user runs it (a subprocess), on the bundled data."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import xpcnn


def xpcnn_cmd(*args, tmp_path=None, timeout=600, **env):
    environment = {k: v for k, v in os.environ.items() if not k.startswith("XPCNN_")}
    if tmp_path is not None:
        environment["HOME"] = str(tmp_path)          # keep ~/.cache/xpcnn out of the user's home
    environment.update(env)
    return subprocess.run([sys.executable, "-m", "xpcnn", *args], capture_output=True, text=True,
                          env=environment, timeout=timeout)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The main job: `xpcnn train` with its defaults (plus a checkpoint and a plot)."""
    folder = tmp_path_factory.mktemp("train")
    done = xpcnn_cmd("train", "--quiet", "--checkpoint", str(folder / "model.npz"), "--plot", str(folder / "h.png"),
                     tmp_path=folder)
    return folder, done


def test_default_train_reaches_95_percent_on_the_bundled_test_split(trained):
    folder, done = trained
    assert done.returncode == 0, done.stderr
    match = re.search(r"test accuracy: (\d+\.\d+)% \(([\d,]+)/2,000\)", done.stdout)
    assert match, done.stdout
    assert float(match.group(1)) >= 95.0, done.stdout
    assert "lenet5 (61,706 parameters) on the bundled MNIST subset" in done.stdout
    assert "numpy" in done.stdout.splitlines()[-1]
    assert (folder / "h.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert xpcnn.load(folder / "model.npz").epoch == 5


def test_evaluate_reports_the_same_accuracy(trained):
    folder, done = trained
    accuracy = re.search(r"test accuracy: (\d+\.\d+)%", done.stdout).group(1)
    evaluated = xpcnn_cmd("evaluate", "--checkpoint", str(folder / "model.npz"), tmp_path=folder)
    assert evaluated.returncode == 0, evaluated.stderr
    assert f"accuracy: {accuracy}%" in evaluated.stdout


def test_evaluate_on_another_backend(trained):
    folder, _ = trained
    evaluated = xpcnn_cmd("evaluate", "--checkpoint", str(folder / "model.npz"), "--backend", "array_api_strict",
                          tmp_path=folder)
    assert evaluated.returncode == 0, evaluated.stderr
    assert "backend array_api_strict" in evaluated.stdout


def test_predict_png_and_npy(trained, tmp_path):
    folder, _ = trained
    images, labels = xpcnn.data.load_bundled("test")
    np.save(tmp_path / "digits.npy", images[:5])
    from PIL import Image

    Image.fromarray(images[0]).save(tmp_path / "digit.png")
    Image.fromarray(255 - images[1]).save(tmp_path / "dark_on_light.png")
    done = xpcnn_cmd("predict", "--checkpoint", str(folder / "model.npz"), str(tmp_path / "digits.npy"),
                     str(tmp_path / "digit.png"), tmp_path=folder)
    assert done.returncode == 0, done.stderr
    predicted = [int(m) for m in re.findall(r": (\d) \(probability", done.stdout)]
    assert predicted[:5] == labels[:5].tolist() and predicted[5] == labels[0]
    inverted = xpcnn_cmd("predict", "--checkpoint", str(folder / "model.npz"), "--invert",
                         str(tmp_path / "dark_on_light.png"), tmp_path=folder)
    assert f": {labels[1]} (probability" in inverted.stdout


def test_resume_continues_exactly(tmp_path):
    """1 epoch + checkpoint + --resume for the 2nd == 2 epochs straight, bitwise (constant learning rate,
    so the first run's schedule is the same as the straight run's)."""
    common = ("train", "--quiet", "--batch-size", "256", "--lr", "0.05", "--schedule", "none")
    straight = xpcnn_cmd(*common, "--epochs", "2", "--checkpoint", str(tmp_path / "straight.npz"), tmp_path=tmp_path)
    first = xpcnn_cmd(*common, "--epochs", "1", "--checkpoint", str(tmp_path / "half.npz"), tmp_path=tmp_path)
    assert straight.returncode == 0 and first.returncode == 0, straight.stderr + first.stderr
    resumed = xpcnn_cmd(*common, "--epochs", "2", "--resume", str(tmp_path / "half.npz"), "--checkpoint",
                        str(tmp_path / "resumed.npz"), tmp_path=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "epochs 2..2" in resumed.stdout
    a, b = xpcnn.load(tmp_path / "straight.npz"), xpcnn.load(tmp_path / "resumed.npz")
    assert a.epoch == b.epoch == 2 and a.step == b.step
    for p, q in zip(a.model.parameters(), b.model.parameters()):
        np.testing.assert_array_equal(p.data, q.data)
    assert a.extra["history"]["loss"] == b.extra["history"]["loss"]
    assert straight.stdout.splitlines()[-1].split(";")[0] == resumed.stdout.splitlines()[-1].split(";")[0]


@pytest.mark.parametrize("args, words", [
    (("train", "--epochs", "0"), "must be a positive integer"),
    (("train", "--model", "resnet"), "must be one of lenet5, seed_cnn, resnet8, resnet20, mobilenet or resnet<6n+2>"),
    (("train", "--lr", "-1"), "must be a positive number"),
    (("train", "--backend", "tpu"), "invalid choice: 'tpu'"),
    (("evaluate",), "the following arguments are required: --checkpoint"),
    (("predict", "--checkpoint", "missing.npz", "x.png"), "checkpoint missing.npz does not exist"),
    (("train", "--lr", "abc"), "argument --lr: must be a positive number; got 'abc'"),
    (("train", "--momentum", "1.5"), "argument --momentum: must be a number in [0, 1); got '1.5'"),
    (("train", "--momentum", "-5"), "must be a number in [0, 1); got '-5'"),
    (("train", "--weight-decay", "-1"), "argument --weight-decay: must be a number >= 0; got '-1'"),
    (("train", "--checkpoint", "out.pt"), "--checkpoint: checkpoint path must end in .npz or .safetensors"),
    (("train", "--checkpoint", "/proc/no/such/out.npz"), "--checkpoint /proc/no/such/out.npz: the folder "
                                                         "/proc/no/such does not exist; create it first"),
    (("train", "--plot", "/proc/no/such/plot"), "--plot /proc/no/such/plot.png: the folder /proc/no/such does not"),
    (("train", "--checkpoint", "/proc/out.npz"), "--checkpoint /proc/out.npz: cannot write there"),
    (("train", "--plot", "curves.npz"), "--plot curves.npz: matplotlib cannot write .npz files; give a name ending"),
    (("train", "--data-dir", "somewhere"), "--data-dir is for --dataset mnist, fashion-mnist or cifar10"),
    (("train", "--optimizer", "adam", "--momentum", "0.5"), "--momentum is for --optimizer sgd"),
    (("evaluate", "--checkpoint", "."), "is a directory; give the checkpoint file"),
])
def test_bad_arguments_exit_2_with_a_message(tmp_path, args, words):
    """Found before any training, in one line, without a traceback."""
    done = xpcnn_cmd(*args, tmp_path=tmp_path)
    assert done.returncode == 2
    assert words in done.stderr and "Traceback" not in done.stderr
    assert "epoch" not in done.stdout


def test_version(tmp_path):
    done = xpcnn_cmd("--version", tmp_path=tmp_path)
    assert done.returncode == 0 and done.stdout.strip() == f"xpcnn {xpcnn.__version__}"


def test_resume_refuses_options_that_would_break_it(trained, tmp_path):
    folder, _ = trained
    model = str(folder / "model.npz")
    for args, words in ((("--model", "resnet8"), "holds a lenet5; drop --model resnet8"),
                        (("--seed", "1"), "was trained with --seed 0; got 1. An exact resume needs the same --seed"),
                        (("--batch-size", "64"), "was trained with --batch-size 32; got 64")):
        done = xpcnn_cmd("train", "--epochs", "9", "--resume", model, *args, tmp_path=tmp_path)
        assert done.returncode == 2 and words in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_float64_training_evaluates_and_resumes_in_float64(tmp_path):
    path = str(tmp_path / "f64.npz")
    done = xpcnn_cmd("train", "--epochs", "1", "--dtype", "float64", "--checkpoint", path, tmp_path=tmp_path)
    assert done.returncode == 0 and "on cpu, float64;" in done.stdout, done.stderr
    accuracy = re.search(r"test accuracy: (\d+\.\d+)%", done.stdout).group(1)
    assert all(p.data.dtype == np.float64 for p in xpcnn.load(path).model.parameters())
    evaluated = xpcnn_cmd("evaluate", "--checkpoint", path, tmp_path=tmp_path)
    assert evaluated.returncode == 0 and f"accuracy: {accuracy}%" in evaluated.stdout, evaluated.stderr
    np.save(tmp_path / "digit.npy", xpcnn.data.load_bundled("test")[0][0])
    predicted = xpcnn_cmd("predict", "--checkpoint", path, str(tmp_path / "digit.npy"), tmp_path=tmp_path)
    assert predicted.returncode == 0 and "digit.npy: " in predicted.stdout, predicted.stderr
    refused = xpcnn_cmd("train", "--epochs", "2", "--resume", path, "--dtype", "float32", tmp_path=tmp_path)
    assert refused.returncode == 2 and "holds float64 weights; got --dtype float32" in refused.stderr
    resumed = xpcnn_cmd("train", "--epochs", "2", "--resume", path, "--quiet", tmp_path=tmp_path)
    assert resumed.returncode == 0 and "on cpu, float64;" in resumed.stdout, resumed.stderr


def test_a_diverging_run_fails_clearly_and_writes_no_garbage(tmp_path):
    done = xpcnn_cmd("train", "--quiet", "--epochs", "1", "--lr", "1e30", "--batch-size", "10000",
                     "--checkpoint", str(tmp_path / "d.npz"), tmp_path=tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr and "lower learning rate" in done.stderr
    assert not (tmp_path / "d.npz").exists() or np.isfinite(xpcnn.load(tmp_path / "d.npz").model.parameters()[0].data).all()


def test_predict_reads_what_pillow_reads_and_refuses_the_rest(trained, tmp_path):
    from PIL import Image

    folder, _ = trained
    images, labels = xpcnn.data.load_bundled("test")
    Image.fromarray(images[2]).convert("RGB").save(tmp_path / "digit.jpg", quality=95)
    Image.fromarray(255 - images[2]).save(tmp_path / "light.png")
    (tmp_path / "text.png").write_text("not an image")
    np.save(tmp_path / "nan.npy", np.full((28, 28), np.nan, np.float32))
    done = xpcnn_cmd("predict", "--checkpoint", str(folder / "model.npz"), str(tmp_path / "digit.jpg"),
                     tmp_path=folder)
    assert done.returncode == 0 and f"digit.jpg: {labels[2]} (probability" in done.stdout, done.stderr
    light = xpcnn_cmd("predict", "--checkpoint", str(folder / "model.npz"), str(tmp_path / "light.png"),
                      tmp_path=folder)
    assert light.returncode == 0 and "background looks light" in light.stderr and "--invert" in light.stderr
    for name, words in (("text.png", "not an image Pillow can read"), ("nan.npy", "holds NaN or infinite pixel")):
        done = xpcnn_cmd("predict", "--checkpoint", str(folder / "model.npz"), str(tmp_path / name),
                         tmp_path=folder)
        assert done.returncode == 2 and words in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_unavailable_backend_is_reported_before_training(tmp_path):
    try:
        import cupy  # noqa: F401
        pytest.skip("cupy is installed: nothing to refuse")
    except ImportError:
        pass
    done = xpcnn_cmd("train", "--backend", "cupy", tmp_path=tmp_path)
    assert done.returncode == 2 and "CuPy is not installed" in done.stderr and "pip install" in done.stderr
    assert "epoch" not in done.stdout


def test_missing_data_directory_lists_where_it_looked(tmp_path):
    done = xpcnn_cmd("train", "--dataset", "mnist", "--data-dir", str(tmp_path / "nowhere"), "--no-download",
                     tmp_path=tmp_path)
    assert done.returncode == 2
    for words in ("MNIST files not found", "nowhere: no such folder", "XPCNN_DATA_DIR: not set",
                  "download: not attempted", "--dataset bundled"):
        assert words in done.stderr


def test_ctrl_c_leaves_the_last_checkpoint_intact(tmp_path):
    path = tmp_path / "run.npz"
    environment = {k: v for k, v in os.environ.items() if not k.startswith("XPCNN_")}
    environment["HOME"] = str(tmp_path)
    # The child gets Ctrl-C's default action whatever this process inherited: a background job of a
    # non-interactive shell ignores SIGINT, an ignored signal stays ignored across exec, and Python then installs
    # no KeyboardInterrupt (seen: the run trained on). A handled signal is reset to the default by exec.
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        process = subprocess.Popen([sys.executable, "-m", "xpcnn", "train", "--quiet", "--epochs", "20",
                                    "--batch-size", "256", "--checkpoint", str(path)],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment)
    finally:
        signal.signal(signal.SIGINT, inherited)
    deadline = time.monotonic() + 300
    while not path.exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "interrupted" in err and "last good checkpoint is intact" in err
    assert xpcnn.load(path).epoch >= 1
    assert sorted(os.listdir(tmp_path)) == [".cache", "run.npz"] or sorted(os.listdir(tmp_path)) == ["run.npz"]


def test_info_lists_backends(tmp_path):
    done = xpcnn_cmd("info", tmp_path=tmp_path)
    assert done.returncode == 0 and "selected backend: numpy" in done.stdout
    assert re.search(r"batch shards: up to \d+ per model call .*; \d+ usable cores", done.stdout)
    assert "xpcnn tune" not in done.stdout and "measured" not in done.stdout, "no tuning line: the tuner is gone"
    assert re.search(r"machine: .*\d+ usable cores; BLAS: ", done.stdout), "the CPU to name beside a figure"


def test_info_with_a_bad_backend_or_setting_exits_2_as_a_usage_error(tmp_path):
    done = xpcnn_cmd("info", tmp_path=tmp_path, XPCNN_BACKEND="tpu")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "selected backend: ERROR: " in done.stdout and "tpu" in done.stdout and "Traceback" not in done.stderr
    assert "backends here:" in done.stdout                       # the rest is still reported


def test_info_reports_a_bad_thread_count_and_fails(tmp_path):
    done = xpcnn_cmd("info", tmp_path=tmp_path, XPCNN_THREADS="0")
    assert done.returncode == 2
    assert "batch shards: ERROR: XPCNN_THREADS must be a whole number >= 1" in done.stdout
    done = xpcnn_cmd("train", "--epochs", "1", "--quiet", tmp_path=tmp_path, XPCNN_THREADS="two")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "xpcnn train: error: XPCNN_THREADS must be a whole number >= 1 (1: no batch shards); got 'two'" in done.stderr


def test_info_runs_the_preflight_after_the_backend_line_and_a_failed_check_exits_1(tmp_path, capsys, monkeypatch):
    """Each named check of xpcnn.backend.preflight on one line after the selected backend; a failure is named
    (what a GPU without its CUDA libraries shows) and the exit status is 1."""
    from xpcnn import backend, cli

    done = xpcnn_cmd("info", tmp_path=tmp_path)
    lines = done.stdout.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("selected backend: numpy"))
    checks = [line for line in lines if line.startswith("preflight: ")]
    assert lines[first + 1:first + 1 + len(checks)] == checks and len(checks) == 4, done.stdout
    assert re.match(r"preflight: kernel ok \(\d+\.\d\d s\): ", checks[0]) and "matrix product ok" in checks[1]

    def broken(selected):
        raise RuntimeError("CUBLAS_STATUS_NOT_INITIALIZED\nsecond line")

    monkeypatch.setattr(backend, "_CHECKS", {**backend._CHECKS, "matrix product": broken})
    assert cli.main(["info"]) == 1
    out = capsys.readouterr().out
    assert "preflight: FAILED matrix product: RuntimeError: CUBLAS_STATUS_NOT_INITIALIZED\n" in out, out
    assert "preflight: kernel ok" in out and "backends here:" in out          # the rest is still reported


def test_train_a_resnet8_and_predict_with_it(tmp_path):
    """`--model resnet8`: BatchNorm, residual blocks; one epoch learns, the checkpoint rebuilds the tree."""
    done = xpcnn_cmd("train", "--model", "resnet8", "--epochs", "1", "--batch-size", "64", "--lr", "0.05",
                     "--quiet", "--checkpoint", str(tmp_path / "r8.npz"), tmp_path=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "resnet8 (77,754 parameters)" in done.stdout
    accuracy = float(re.search(r"test accuracy: (\d+\.\d+)%", done.stdout).group(1))
    assert accuracy >= 80.0, done.stdout
    evaluated = xpcnn_cmd("evaluate", "--checkpoint", str(tmp_path / "r8.npz"), tmp_path=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr
    assert f"accuracy: {accuracy:.2f}%" in evaluated.stdout


def test_progress_bars_stay_out_of_logs(tmp_path):
    """Output that is not a terminal gets the per-epoch lines, not carriage-return progress bars."""
    done = xpcnn_cmd("train", "--epochs", "1", "--batch-size", "500", tmp_path=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "epoch 1/1: loss" in done.stdout
    assert "\r" not in done.stdout + done.stderr


def test_a_safetensors_checkpoint_without_the_package_is_refused_before_training(tmp_path):
    """A `safetensors` that cannot be imported (shadowed here by a package that raises ImportError)."""
    fake = tmp_path / "fake" / "safetensors"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('simulated: not installed')\n")
    done = xpcnn_cmd("train", "--checkpoint", str(tmp_path / "run.safetensors"), tmp_path=tmp_path,
                     PYTHONPATH=str(tmp_path / "fake"))
    assert done.returncode == 2 and "needs the safetensors package" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and "epoch" not in done.stdout


def test_a_full_disk_during_a_per_epoch_save_stops_with_one_line_and_keeps_the_last_checkpoint(tmp_path, monkeypatch,
                                                                                              capsys):
    import errno

    from xpcnn import checkpoint, cli

    path = tmp_path / "run.npz"
    real, calls = checkpoint.write_atomic, []

    def fills_up(target, data):
        calls.append(target)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(target, data)

    monkeypatch.setattr(checkpoint, "write_atomic", fills_up)
    status = cli.main(["train", "--epochs", "3", "--batch-size", "256", "--quiet", "--checkpoint", str(path)])
    err = capsys.readouterr().err
    assert status == 1
    assert "could not write the checkpoint of epoch 2" in err and "No space left on device" in err
    assert f"the last good checkpoint is intact: {path} (epoch 1)" in err
    assert "Traceback" not in err
    assert xpcnn.load(path).epoch == 1


def test_evaluate_refuses_a_checkpoint_that_does_not_fit_the_data(tmp_path, capsys):
    from xpcnn import cli

    path = xpcnn.save(tmp_path / "rgb.npz", xpcnn.models.resnet8(in_channels=3, image_size=28))
    assert cli.main(["evaluate", "--checkpoint", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path} does not fit --dataset bundled" in err and "Traceback" not in err


def test_train_compile_option_is_checked_before_training(tmp_path, capsys, monkeypatch):
    """--compile needs a backend with a compiler, and cannot go with --distributed: one line each, exit 2."""
    from xpcnn import cli

    monkeypatch.setattr(xpcnn.backend, "_default", xpcnn.backend._default)     # --backend sets it process-wide

    for args, words in ((["--backend", "numpy", "--compile"], "--compile needs a backend with a compiler (jax); "
                                                               "got numpy"),
                        (["--compile", "--distributed"], "--compile cannot be combined with --distributed")):
        assert cli.main(["train", "--epochs", "1", "--quiet", *args]) == 2
        err = capsys.readouterr().err
        assert words in err and "Traceback" not in err, err


def test_train_on_jax_compiles_its_steps_and_learns(tmp_path, capsys, monkeypatch):
    """The command's banner says so, and one epoch on 10,000 bundled images learns (the 5-epoch 95% figure is
    measured in benchmarks/RESULTS.md: a full run takes too long for the suite)."""
    pytest.importorskip("jax", reason="jax is not installed (pip install -e '.[jax]')")
    from xpcnn import cli

    monkeypatch.setattr(xpcnn.backend, "_default", xpcnn.backend._default)     # --backend sets it process-wide
    path = tmp_path / "jax.npz"
    assert cli.main(["train", "--backend", "jax", "--epochs", "1", "--quiet", "--checkpoint", str(path)]) == 0
    out = capsys.readouterr().out
    assert "(compiled steps)" in out, out
    accuracy = float(re.search(r"test accuracy: ([\d.]+)%", out).group(1))
    assert accuracy > 85, out
    assert xpcnn.load(path).epoch == 1


def test_train_with_a_validation_split_early_stopping_and_a_csv_log(tmp_path, capsys):
    """--val-split holds out part of the training data, --early-stop watches its loss and keeps the best epoch's
    weights, --log-csv writes a row per epoch; --early-stop alone is refused before training."""
    from xpcnn import cli

    log = tmp_path / "log.csv"
    assert cli.main(["train", "--epochs", "8", "--quiet", "--lr", "0.3", "--val-split", "0.1", "--early-stop", "1",
                     "--log-csv", str(log)]) == 0
    out = capsys.readouterr().out
    stopped = re.search(r"early stop after epoch (\d+): no val loss below [\d.]+ \(epoch (\d+)\) for 1 epochs", out)
    assert stopped, out
    rows = log.read_text().splitlines()
    assert rows[0].startswith("epoch,loss,accuracy") and "val_loss" in rows[0]
    assert len(rows) == 1 + int(stopped.group(1)) < 1 + 8
    assert cli.main(["train", "--epochs", "1", "--quiet", "--early-stop", "2"]) == 2
    assert "--early-stop watches the val loss of a held-out part of the training data: give --val-split too" in \
        capsys.readouterr().err


def test_evaluate_prints_the_confusion_matrix_and_top_k(tmp_path, capsys):
    from xpcnn import cli

    path = xpcnn.save(tmp_path / "net.npz", xpcnn.models.lenet5(seed=0))
    assert cli.main(["evaluate", "--checkpoint", str(path), "--top-k", "3"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"top-3 accuracy: [\d.]+%", out)
    lines = out.splitlines()
    start = lines.index("confusion matrix (rows: true class, columns: predicted), with each class's accuracy:")
    rows = lines[start + 2:start + 12]
    counts = np.array([[int(v.replace(",", "")) for v in row.split()[1:11]] for row in rows])
    assert counts.sum() == 2000 and [row.split()[0] for row in rows] == [str(k) for k in range(10)]
    accuracy = float(re.search(r"accuracy: ([\d.]+)% \(", out).group(1))
    assert abs(100 * np.trace(counts) / 2000 - accuracy) < 0.01


def test_predict_uses_the_recorded_normalization_or_refuses_without_one(tmp_path, capsys):
    """A checkpoint from `xpcnn train` records its training data's statistics; one saved from Python without them
    is refused unless --mean and --std are given."""
    from xpcnn import cli

    path = tmp_path / "trained.npz"
    assert cli.main(["train", "--epochs", "1", "--quiet", "--checkpoint", str(path)]) == 0
    assert xpcnn.load(path).extra["normalization"] == {"mean": [xpcnn.data.MEAN], "std": [xpcnn.data.STD]}
    np.save(tmp_path / "digit.npy", xpcnn.data.load_bundled("test")[0][0])
    capsys.readouterr()
    assert cli.main(["predict", "--checkpoint", str(path), str(tmp_path / "digit.npy")]) == 0
    with_recorded = capsys.readouterr().out
    bare = xpcnn.save(tmp_path / "bare.npz", xpcnn.load(path).model)
    assert cli.main(["predict", "--checkpoint", str(bare), str(tmp_path / "digit.npy")]) == 2
    assert "does not record how its training images were normalized; give --mean and --std" in capsys.readouterr().err
    assert cli.main(["predict", "--checkpoint", str(bare), str(tmp_path / "digit.npy"), "--mean", "0.1307", "--std",
                     "0.3081"]) == 0
    assert capsys.readouterr().out == with_recorded
    assert cli.main(["predict", "--checkpoint", str(bare), str(tmp_path / "digit.npy"), "--mean", "0.5"]) == 2


def test_validate_holds_out_training_data_instead_of_scoring_the_test_split(tmp_path):
    from xpcnn import cli

    path = tmp_path / "m.npz"
    assert cli.main(["train", "--epochs", "1", "--quiet", "--validate", "--checkpoint", str(path)]) == 0
    history = xpcnn.load(path).extra["history"]
    assert len(history["val_accuracy"]) == 1
    test = xpcnn.evaluate(xpcnn.load(path).model, xpcnn.data.load_dataset("bundled", "test"))
    held = xpcnn.evaluate(xpcnn.load(path).model, xpcnn.data.load_dataset("bundled", "train").split(0.1)[1])
    assert history["val_accuracy"][0] == pytest.approx(held["accuracy"]) != test["accuracy"]


def test_a_run_without_checkpoint_says_nothing_was_saved_and_help_shows_defaults(capsys):
    from xpcnn import cli

    assert cli.main(["train", "--epochs", "1", "--quiet"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("nothing was saved: add --checkpoint PATH")
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "train up to this epoch (default 5)" in text and "images per step (default 32;" in text


def _stripes_npz(path, test=True):
    """Your own arrays: NHWC uint8 RGB 16x16 images of horizontal (0) or vertical (1) stripes, or a third class."""
    rng = np.random.default_rng(0)

    def images(n):
        labels = rng.integers(0, 3, n)
        stripes = (np.arange(16) // 2 % 2).astype(np.float64)
        patterns = [stripes[:, None] * np.ones(16), np.ones(16)[:, None] * stripes, np.full((16, 16), 0.5)]
        x = np.stack([patterns[k][:, :, None] * np.ones(3) for k in labels]) + rng.normal(0, 0.2, (n, 16, 16, 3))
        return np.clip(x * 255, 0, 255).astype(np.uint8), labels

    x, y = images(300)
    arrays = {"x_train": x, "y_train": y}
    if test:
        arrays["x_test"], arrays["y_test"] = images(60)
    np.savez(path, **arrays)
    return path


def test_train_evaluate_and_predict_on_your_own_npz(tmp_path, capsys):
    """--data FILE.npz: any layout, classes from the labels, a model that fits the images (resnet8 for 16x16 RGB),
    normalized with x_train's statistics, which the checkpoint records for predict."""
    from xpcnn import cli

    data = _stripes_npz(tmp_path / "stripes.npz")
    path = tmp_path / "model.npz"
    assert cli.main(["train", "--data", str(data), "--epochs", "3", "--quiet", "--lr", "0.05", "--checkpoint",
                     str(path)]) == 0
    out = capsys.readouterr().out
    assert f"resnet8 (77,587 parameters) on {data} (train) (300 train images / 60 test images)" in out, out
    assert float(re.search(r"test accuracy: ([\d.]+)%", out).group(1)) > 90
    checkpoint = xpcnn.load(path)
    assert checkpoint.model.input_shape == (3, 16, 16) and checkpoint.extra["dataset"] == str(data)
    x_train = np.load(data)["x_train"].astype(np.float64) / 255
    np.testing.assert_allclose(checkpoint.extra["normalization"]["mean"], x_train.mean(axis=(0, 1, 2)), rtol=1e-6)
    assert cli.main(["evaluate", "--checkpoint", str(path), "--data", str(data)]) == 0
    assert "accuracy: " in capsys.readouterr().out
    np.save(tmp_path / "one.npy", np.moveaxis(np.load(data)["x_test"][:1], 3, 1))        # (1, 3, 16, 16) uint8
    assert cli.main(["predict", "--checkpoint", str(path), str(tmp_path / "one.npy")]) == 0
    recorded = capsys.readouterr().out
    assert re.search(r"one.npy: \d \(probability", recorded)
    bare = xpcnn.save(tmp_path / "bare.npz", checkpoint.model)                 # no normalization recorded
    assert cli.main(["predict", "--checkpoint", str(bare), str(tmp_path / "one.npy"), "--data", str(data)]) == 0
    assert capsys.readouterr().out == recorded                                 # x_train's statistics again
    assert cli.main(["train", "--data", str(data), "--epochs", "5", "--quiet", "--lr", "0.05",
                     "--resume", str(path)]) == 0                                  # the same file: resumes
    capsys.readouterr()
    assert cli.main(["train", "--data", str(data), "--dataset", "mnist"]) == 2
    assert "give --data FILE.npz or --dataset/--data-dir, not both" in capsys.readouterr().err


def test_own_npz_without_test_split_and_malformed_files(tmp_path, capsys):
    from xpcnn import cli

    data = _stripes_npz(tmp_path / "train_only.npz", test=False)
    assert cli.main(["train", "--data", str(data), "--epochs", "1", "--quiet", "--checkpoint",
                     str(tmp_path / "m.npz")]) == 0
    assert "has no x_test/y_test, so no test accuracy" in capsys.readouterr().out
    assert cli.main(["evaluate", "--checkpoint", str(tmp_path / "m.npz"), "--data", str(data)]) == 2
    assert "has no x_test/y_test; evaluate --split train, or add them" in capsys.readouterr().err
    np.savez(tmp_path / "bad.npz", images=np.zeros((2, 8, 8), np.uint8))
    assert cli.main(["train", "--data", str(tmp_path / "bad.npz"), "--epochs", "1"]) == 2
    assert "no array named 'x_train' (found images; it needs x_train, y_train" in capsys.readouterr().err
    np.savez(tmp_path / "labels.npz", x_train=np.zeros((2, 8, 8), np.uint8), y_train=np.array([0.5, 1.0]))
    assert cli.main(["train", "--data", str(tmp_path / "labels.npz"), "--epochs", "1"]) == 2
    assert "y_train: 1 of 2 labels are not whole numbers" in capsys.readouterr().err
    assert cli.main(["train", "--data", str(tmp_path / "missing.npz"), "--epochs", "1"]) == 2
    assert "missing.npz: no such file" in capsys.readouterr().err


def test_a_checkpoint_of_your_own_layers_gets_one_line_saying_how_to_load_it(tmp_path, capsys):
    from xpcnn import cli
    from xpcnn import nn

    class Doubler(nn.Module):
        def _forward(self, x, run):
            return 2 * x, None

        def _backward(self, dy, cache, run, input_grad):
            return 2 * dy

    path = xpcnn.save(tmp_path / "own.npz", nn.Sequential(nn.Flatten(), nn.Linear(784, 10), Doubler(),
                                                           input_shape=(1, 28, 28)))
    assert cli.main(["evaluate", "--checkpoint", str(path)]) == 2
    err = capsys.readouterr().err
    assert "unknown layer type 'Doubler'" in err and "xpcnn.load(path, model=your_model)" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_resume_takes_the_learning_settings_from_the_checkpoint_and_refuses_others(tmp_path, capsys):
    """--resume without --lr once trained on at the default 0.01 (not the run's own), and the banner showed the
    end of the saved schedule; now the optimizer, lr, momentum, weight decay and schedule come from the
    checkpoint, and a different one given is refused."""
    from xpcnn import cli

    path = str(tmp_path / "run.npz")
    assert cli.main(["train", "--epochs", "1", "--quiet", "--optimizer", "adam", "--lr", "0.002", "--weight-decay",
                     "0.001", "--schedule", "cosine", "--checkpoint", path]) == 0
    capsys.readouterr()
    assert cli.main(["train", "--epochs", "2", "--quiet", "--resume", path, "--checkpoint", path]) == 0
    out = capsys.readouterr().out
    assert "Adam(lr=0.001, " in out and "weight_decay=0.001" in out and "schedule cosine" in out, out
    assert "note: the cosine schedule now spans 2 epochs instead of the saved run's 1: epoch 2 trains at lr 0.001" in out
    saved = xpcnn.load(path).extra["training"]
    assert saved == {"optimizer": "adam", "lr": 0.002, "momentum": None, "weight_decay": 0.001, "schedule": "cosine"}
    for args, words in ((("--lr", "0.01"), "was trained with --lr 0.002; got 0.01. A resumed run continues the "
                                           "saved one with its --lr (drop it)"),
                        (("--optimizer", "sgd"), "was trained with --optimizer adam; got sgd"),
                        (("--schedule", "none"), "was trained with --schedule cosine; got none")):
        assert cli.main(["train", "--epochs", "3", "--quiet", "--resume", path, *args]) == 2
        assert words in capsys.readouterr().err


# --------------------------------------------------------------------------- paths, records, pipes (issue 32)
def _files_state(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def _refused(capsys, argv, words):
    """``xpcnn argv`` ends with exit 2 and ``words`` in one line of stderr, before any epoch."""
    from xpcnn import cli

    assert cli.main(argv) == 2
    out, err = capsys.readouterr()
    assert words in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1 and "epoch" not in out, out + err


def test_no_output_may_name_an_input_or_another_output(tmp_path, capsys, monkeypatch):
    """--checkpoint, --log-csv, --plot and --onnx against --data, --resume and each other, compared as resolved
    real paths (a relative spelling or a symlink names the same file): refused before anything is read or
    written, and every file stays as it was."""
    monkeypatch.chdir(tmp_path)
    data = _stripes_npz(tmp_path / "d.npz")
    (tmp_path / "d.png").write_bytes(data.read_bytes())             # a --data file whose name --plot could take
    saved = xpcnn.save(tmp_path / "c.npz", xpcnn.models.lenet5(seed=0))
    (tmp_path / "link.npz").symlink_to(tmp_path / "d.npz")
    (tmp_path / "link.onnx").symlink_to(tmp_path / "c.npz")
    before = _files_state(tmp_path)
    cases = [
        (["--data", str(data), "--checkpoint", str(data)], "--checkpoint {d} names the --data file"),
        (["--data", str(data), "--log-csv", "./d.npz"], "--log-csv ./d.npz names the --data file"),
        (["--data", "d.png", "--plot", str(tmp_path / "d.png")], "names the --data file d.png"),
        (["--data", str(data), "--checkpoint", "link.npz"], "--checkpoint link.npz names the --data file"),
        (["--resume", str(saved), "--log-csv", str(saved)], "--log-csv {c} names the --resume file"),
        (["--resume", str(saved), "--plot", str(tmp_path / "c.npz.png"), "--log-csv", "c.npz.png"],
         "name the same file"),
        (["--checkpoint", "out.npz", "--log-csv", "out.npz"], "--checkpoint out.npz and --log-csv out.npz name the "
                                                              "same file"),
    ]
    for args, words in cases:
        _refused(capsys, ["train", "--epochs", "1", *args], words.format(d=data, c=saved))
    _refused(capsys, ["export", "--checkpoint", str(saved), "--onnx", "link.onnx"],
             "--onnx link.onnx names the --checkpoint file")
    assert _files_state(tmp_path) == before


def test_a_missing_folder_for_an_output_is_an_error_naming_it_and_is_never_made(tmp_path, capsys):
    saved = xpcnn.save(tmp_path / "c.npz", xpcnn.models.lenet5(seed=0))
    typo = tmp_path / "typo" / "dir"
    for option, name in (("--checkpoint", "m.npz"), ("--log-csv", "log.csv"), ("--plot", "curves.png")):
        _refused(capsys, ["train", "--epochs", "1", option, str(typo / name)],
                 f"{option} {typo / name}: the folder {typo} does not exist; create it first")
    _refused(capsys, ["export", "--checkpoint", str(saved), "--onnx", str(typo / "m.onnx")],
             f"--onnx {typo / 'm.onnx'}: the folder {typo} does not exist")
    assert not (tmp_path / "typo").exists()
    (tmp_path / "notes.txt").write_text("mine")
    _refused(capsys, ["train", "--epochs", "1", "--log-csv", str(tmp_path / "notes.txt" / "log.csv")],
             f"{tmp_path / 'notes.txt'} is not a folder")
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_evaluate_and_predict_use_the_data_file_the_checkpoint_records_or_refuse(tmp_path, capsys):
    """A checkpoint trained on --data is scored on that file (never silently on the bundled MNIST); once the
    file is gone, evaluate refuses without --data, and predict still has the recorded normalization."""
    from xpcnn import cli

    data = _stripes_npz(tmp_path / "stripes.npz")
    path = tmp_path / "m.npz"
    assert cli.main(["train", "--data", str(data), "--epochs", "1", "--quiet", "--lr", "0.05", "--checkpoint",
                     str(path)]) == 0
    trained = re.search(r"test accuracy: ([\d.]+)%", capsys.readouterr().out).group(1)
    assert cli.main(["evaluate", "--checkpoint", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"on {data} (test) (as recorded by the checkpoint)" in out and f"accuracy: {trained}%" in out, out
    assert "MNIST" not in out and "bundled" not in out
    np.save(tmp_path / "one.npy", np.moveaxis(np.load(data)["x_test"][:1], 3, 1))
    moved = data.rename(tmp_path / "elsewhere.npz")
    _refused(capsys, ["evaluate", "--checkpoint", str(path)], f"was trained on --data {data}, which is not there; "
                                                              f"give --data FILE.npz")
    assert cli.main(["evaluate", "--checkpoint", str(path), "--data", str(moved)]) == 0
    assert f"accuracy: {trained}%" in capsys.readouterr().out
    assert cli.main(["predict", "--checkpoint", str(path), str(tmp_path / "one.npy")]) == 0
    assert re.search(r"one.npy: \d \(probability", capsys.readouterr().out)


def test_plot_without_a_test_split_draws_the_training_curves_and_says_so(tmp_path, capsys):
    from xpcnn import cli

    data = _stripes_npz(tmp_path / "train_only.npz", test=False)
    plot = tmp_path / "curves.png"
    assert cli.main(["train", "--data", str(data), "--epochs", "2", "--quiet", "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert f"plot written to {plot}" in out and "has no x_test/y_test, so no test accuracy" in out, out
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_augment_on_digits_warns_that_flips_mirror_them(tmp_path, capsys, monkeypatch):
    """Said before training starts (fit is stopped at once here: the warning is what is tested)."""
    from xpcnn import cli

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(xpcnn.train, "fit", interrupted)
    assert cli.main(["train", "--epochs", "1", "--quiet", "--augment"]) == 130
    err = capsys.readouterr().err
    assert "warning: --augment flips images left-right, which mirrors digits" in err
    data = _stripes_npz(tmp_path / "rgb.npz")                      # photos-like RGB: no warning
    assert cli.main(["train", "--data", str(data), "--epochs", "1", "--quiet", "--augment"]) == 130
    assert "mirrors digits" not in capsys.readouterr().err


def test_a_resumed_csv_log_that_adds_columns_keeps_one_consistent_header(tmp_path, capsys):
    import csv

    from xpcnn import cli

    data = _stripes_npz(tmp_path / "stripes.npz")
    path, log = tmp_path / "m.npz", tmp_path / "log.csv"
    common = ["train", "--data", str(data), "--quiet", "--lr", "0.05", "--log-csv", str(log)]
    assert cli.main([*common, "--epochs", "1", "--checkpoint", str(path)]) == 0
    assert cli.main([*common, "--epochs", "2", "--resume", str(path), "--val-split", "0.2"]) == 0
    rows = list(csv.reader(log.open()))
    assert "val_loss" in rows[0] and [len(row) for row in rows] == [len(rows[0])] * 3, rows
    by_name = [dict(zip(rows[0], row)) for row in rows[1:]]
    assert [r["epoch"] for r in by_name] == ["1", "2"] and by_name[0]["val_loss"] == "" != by_name[1]["val_loss"]


def test_evaluate_into_a_closed_pipe_ends_without_a_traceback(tmp_path):
    path = xpcnn.save(tmp_path / "net.npz", xpcnn.models.lenet5(seed=0))
    environment = {k: v for k, v in os.environ.items() if not k.startswith("XPCNN_")}
    environment["HOME"] = str(tmp_path)
    process = subprocess.Popen([sys.executable, "-m", "xpcnn", "evaluate", "--checkpoint", str(path)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment)
    process.stdout.close()                  # as `| head` does once it has its lines
    err = process.stderr.read()
    process.wait(timeout=300)
    assert "Traceback" not in err and "BrokenPipeError" not in err and "Exception ignored" not in err, err


def test_jax_float64_without_64_bit_mode_is_one_line(tmp_path):
    pytest.importorskip("jax", reason="jax is not installed (pip install -e '.[jax]')")
    done = xpcnn_cmd("train", "--backend", "jax", "--dtype", "float64", "--epochs", "1", tmp_path=tmp_path,
                     JAX_ENABLE_X64="0")
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert "--dtype float64 on jax: " in done.stderr and "JAX_ENABLE_X64=1" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "epoch" not in done.stdout


def test_a_resumed_run_reads_its_recorded_data_file_and_will_not_write_over_it(tmp_path, capsys):
    from xpcnn import cli

    data = _stripes_npz(tmp_path / "stripes.npz")
    path = tmp_path / "m.npz"
    assert cli.main(["train", "--data", str(data), "--epochs", "1", "--quiet", "--checkpoint", str(path)]) == 0
    capsys.readouterr()
    before = data.read_bytes()
    _refused(capsys, ["train", "--epochs", "2", "--resume", str(path), "--log-csv", str(data)],
             f"--log-csv {data} names the --data (recorded by --resume) file")
    assert data.read_bytes() == before
    assert cli.main(["train", "--epochs", "2", "--quiet", "--resume", str(path)]) == 0       # the same file again
    assert f"on {data} (train)" in capsys.readouterr().out


def test_any_resnet_of_depth_6n_plus_2_trains_by_name_and_others_are_refused(tmp_path, capsys):
    from xpcnn import cli

    rng = np.random.default_rng(0)
    data = tmp_path / "tiny.npz"
    np.savez(data, x_train=rng.integers(0, 255, (8, 8, 8), dtype=np.uint8), y_train=np.arange(8) % 2)
    assert cli.main(["train", "--data", str(data), "--model", "resnet14", "--epochs", "1", "--quiet"]) == 0
    assert "resnet14 (" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_:
        cli.main(["train", "--model", "resnet10"])
    assert exit_.value.code == 2
    assert "must be one of lenet5, seed_cnn, resnet8, resnet20, mobilenet or resnet<6n+2> (resnet32, resnet44, ...); " \
           "got 'resnet10'" in capsys.readouterr().err
