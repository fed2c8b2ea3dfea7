"""Dataset.split, fit(validation_split=) and xpcnn.callbacks: early stopping, best-only checkpoints, CSV logs."""

from __future__ import annotations

import csv

import numpy as np
import pytest

import xpcnn
from xpcnn import nn
from xpcnn.callbacks import Callback, CSVLogger, EarlyStopping, ModelCheckpoint

IMAGES, LABELS = xpcnn.data.load_bundled("train")


def _data(n=640, start=0):
    return xpcnn.data.Dataset.from_numpy(IMAGES[start:start + n], LABELS[start:start + n])


def _small_model(seed=0):
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 10, rng=np.random.default_rng(seed)), input_shape=(1, 28, 28))


def _fit(model, data, epochs, lr=0.05, **kwargs):
    opt = xpcnn.optim.SGD(model.parameters(), lr=lr)
    return xpcnn.fit(model, nn.CrossEntropyLoss(), opt, data, epochs=epochs, batch_size=64, progress=False, **kwargs)


def test_split_holds_out_a_fraction_chosen_by_the_seed():
    data = _data(100)
    rest, held = data.split(0.2, seed=3)
    assert (len(rest), len(held)) == (80, 20)
    all_labels = np.concatenate([xpcnn.to_numpy(rest.labels), xpcnn.to_numpy(held.labels)])
    assert sorted(all_labels) == sorted(xpcnn.to_numpy(data.labels))
    again, held_again = data.split(0.2, seed=3)
    np.testing.assert_array_equal(xpcnn.to_numpy(held_again.images), xpcnn.to_numpy(held.images))
    other = data.split(0.2, seed=4)[1]
    assert not np.array_equal(xpcnn.to_numpy(other.images), xpcnn.to_numpy(held.images))
    assert "held out: 20 of 100" in held.source
    assert len(data.split(0.001)[1]) == 1 and len(data.split(0.999)[0]) == 1       # never an empty part
    for bad in (0, 1, 1.5, -0.1, "0.1", True):
        with pytest.raises(ValueError, match=r"Dataset.split: fraction must be a number in \(0, 1\)"):
            data.split(bad)


def test_fit_validation_split_scores_a_held_out_part_of_the_training_data():
    model = _small_model()
    history = _fit(model, _data(640), epochs=2, validation_split=0.25)
    assert len(history.val_loss) == 2 and len(history.val_accuracy) == 2
    held = _data(640).split(0.25, seed=0)[1]                       # fit's seed is 0: the same 160 images
    assert xpcnn.evaluate(model, held)["accuracy"] == pytest.approx(history.val_accuracy[-1])
    with pytest.raises(ValueError, match="give validation_data or validation_split, not both"):
        _fit(_small_model(), _data(64), epochs=1, validation_split=0.1, validation_data=_data(64))


def test_early_stopping_stops_after_patience_epochs_without_improvement_and_restores_the_best():
    seen = []

    class Script(Callback):
        """Replaces the held-out val_loss by a scripted one: best at epoch 2, then worse."""

        def on_epoch_end(self, epoch, logs):
            logs["val_loss"] = {1: 1.0, 2: 0.5, 3: 0.7, 4: 0.6, 5: 0.9}.get(epoch, 1.0)
            seen.append(epoch)

    model = _small_model()
    weights = {}
    snapshot = Callback()
    snapshot.on_epoch_end = lambda epoch, logs: weights.__setitem__(epoch, xpcnn.to_numpy(model.parameters()[0].data))
    stop = EarlyStopping(patience=2, restore_best_weights=True)
    history = _fit(model, _data(256), epochs=10, validation_split=0.25, callbacks=[Script(), snapshot, stop])
    assert seen == [1, 2, 3, 4] and history.epoch == [1, 2, 3, 4]       # two epochs without improvement on 0.5
    assert (stop.best, stop.best_epoch, stop.stopped_epoch) == (0.5, 2, 4)
    np.testing.assert_array_equal(xpcnn.to_numpy(model.parameters()[0].data), weights[2])   # epoch 2's weights
    assert not np.array_equal(weights[2], weights[4])


def test_early_stopping_patience_zero_min_delta_and_accuracy_mode():
    stop = EarlyStopping(monitor="accuracy", min_delta=0.5)        # "acc" in the name: higher is better
    stop.on_train_begin(None, None)
    stop(1, {"accuracy": 0.2})
    stop(2, {"accuracy": 0.6})                                     # better by only 0.4: no improvement
    assert stop.stop_training and stop.stopped_epoch == 2 and stop.best == 0.2


def test_early_stopping_names_a_missing_metric_and_bad_arguments():
    with pytest.raises(KeyError, match=r"EarlyStopping: monitor 'val_loss' is not among this run's metrics "
                                       r"\(.*loss.*\); pass validation_data= or validation_split= to fit"):
        _fit(_small_model(), _data(64), epochs=1, callbacks=[EarlyStopping()])
    with pytest.raises(ValueError, match="EarlyStopping: patience must be an integer >= 0; got -1"):
        EarlyStopping(patience=-1)
    with pytest.raises(ValueError, match="EarlyStopping: mode must be 'auto', 'min' or 'max'; got 'up'"):
        EarlyStopping(mode="up")


def test_model_checkpoint_best_only_and_csv_logger(tmp_path):
    losses = iter([0.9, 0.4, 0.6])

    def script(epoch, logs):
        logs["val_loss"] = next(losses)

    best = ModelCheckpoint(tmp_path / "best.npz", save_best_only=True)
    every = ModelCheckpoint(tmp_path / "epoch-{epoch}.npz", monitor="loss")
    log = CSVLogger(tmp_path / "log.csv")
    _fit(_small_model(), _data(128), epochs=3, validation_split=0.25, callbacks=[script, best, every, log])
    assert [p.name for p in best.saved] == ["best.npz", "best.npz"]          # epochs 1 and 2, not 3
    best_checkpoint = xpcnn.load(tmp_path / "best.npz")
    assert best_checkpoint.epoch == 2 and best_checkpoint.extra["logs"]["val_loss"] == 0.4
    assert set(best_checkpoint.extra["normalization"]) == {"mean", "std"}        # the training data's, for predict
    assert sorted(p.name for p in every.saved) == ["epoch-1.npz", "epoch-2.npz", "epoch-3.npz"]
    rows = list(csv.DictReader(open(tmp_path / "log.csv")))
    assert [row["epoch"] for row in rows] == ["1", "2", "3"] and {"loss", "accuracy", "val_loss", "lr"} <= set(rows[0])
    assert float(rows[1]["val_loss"]) == 0.4


def test_model_checkpoint_records_logs_history_normalization_and_the_callers_extra(tmp_path):
    """One schema for every checkpoint saved during training (``xpcnn train`` saves through this class too)."""
    history = xpcnn.History()
    saver = ModelCheckpoint(tmp_path / "m.npz", monitor="loss", history=history, extra={"seed": 3})
    _fit(_small_model(), _data(128), epochs=2, history=history, callbacks=[saver])
    saved = xpcnn.load(tmp_path / "m.npz")
    assert saved.epoch == 2 and saver.last_epoch == 2 and saved.extra["seed"] == 3
    assert saved.extra["history"]["epoch"] == [1, 2] and saved.extra["logs"]["epoch"] == 2
    assert set(saved.extra["normalization"]) == {"mean", "std"}
    own = ModelCheckpoint(tmp_path / "own.npz", monitor="loss")          # no History given: the epochs it saw
    _fit(_small_model(), _data(128), epochs=2, callbacks=[own])
    assert xpcnn.load(tmp_path / "own.npz").extra["history"]["loss"] == saved.extra["history"]["loss"]


@pytest.mark.parametrize("path, words", [
    ("ckpt-{epoch.npz", "is not a valid pattern"),
    ("ckpt-}.npz", "is not a valid pattern"),
    ("ckpt-{val_los}.npz", "{val_los} is not a metric fit logs; known: epoch, loss"),
    ("ckpt-{epoch:q}.npz", "cannot be formatted"),
    ("ckpt-{epoch}.pt", "ModelCheckpoint: checkpoint path must end in .npz or .safetensors"),
])
def test_model_checkpoint_patterns_are_checked_when_it_is_made(tmp_path, path, words):
    with pytest.raises(ValueError) as caught:
        ModelCheckpoint(tmp_path / path)
    assert words in str(caught.value)


def test_model_checkpoint_of_a_metric_the_run_does_not_log_fails_before_writing(tmp_path):
    with pytest.raises(KeyError, match=r"ModelCheckpoint: \{val_loss\} in path '.*m-\{val_loss:.3f\}.npz' is not "
                                       r"among this run's metrics \(.*\); pass validation_data= or validation_split="):
        _fit(_small_model(), _data(64), epochs=2, callbacks=[ModelCheckpoint(tmp_path / "m-{val_loss:.3f}.npz",
                                                                             monitor="loss")])
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(KeyError, match="ModelCheckpoint: monitor 'val_loss' is not among this run's metrics"):
        ModelCheckpoint(tmp_path / "best.npz", save_best_only=True).check_metrics(["epoch", "loss"])
    ModelCheckpoint(tmp_path / "m-{val_loss}.npz").check_metrics(["epoch", "loss", "val_loss"])


def test_callbacks_refuse_a_path_under_a_file_or_in_a_missing_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    for make in (CSVLogger, ModelCheckpoint):
        with pytest.raises(ValueError, match=r"'.*notes.txt' in '.*notes.txt/log.(csv|npz)' is a file, not a folder"):
            make(tmp_path / "notes.txt" / ("log.csv" if make is CSVLogger else "log.npz"))
        with pytest.raises(ValueError, match=r"the folder '.*typo' of .* does not exist; create it first"):
            make(tmp_path / "typo" / ("log.csv" if make is CSVLogger else "log.npz"))
    with pytest.raises(ValueError, match="is a folder; give a file name"):
        CSVLogger(tmp_path)
    with pytest.raises(ValueError, match=r"a pattern in the folder part .* put \{epoch\} and the metrics in the file"):
        ModelCheckpoint(tmp_path / "run-{epoch}" / "m.npz")
    assert not (tmp_path / "typo").exists() and (tmp_path / "notes.txt").read_text() == "mine"


def test_csv_logger_appending_new_columns_rewrites_one_consistent_header(tmp_path):
    path = tmp_path / "log.csv"
    first = CSVLogger(path)
    _fit(_small_model(), _data(128), epochs=1, callbacks=[first])
    header = path.read_text().splitlines()[0].split(",")
    assert "val_loss" not in header
    again = CSVLogger(path, append=True)
    _fit(_small_model(), _data(128), epochs=2, start_epoch=1, validation_split=0.25, callbacks=[again])
    rows = list(csv.reader(open(path)))
    assert rows[0][:len(header)] == header and {"val_loss", "val_accuracy"} <= set(rows[0])
    assert [len(row) for row in rows] == [len(rows[0])] * 3
    named = [dict(zip(rows[0], row)) for row in rows[1:]]
    assert named[0]["val_loss"] == "" and float(named[1]["val_loss"]) > 0 and named[1]["epoch"] == "2"
    fewer = CSVLogger(path, append=True)                       # a run without validation: blanks, same header
    _fit(_small_model(), _data(128), epochs=3, start_epoch=2, callbacks=[fewer])
    rows = list(csv.reader(open(path)))
    assert [len(row) for row in rows] == [len(rows[0])] * 4 and dict(zip(rows[0], rows[3]))["val_loss"] == ""
