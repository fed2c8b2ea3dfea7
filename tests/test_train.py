"""xpcnn.fit / xpcnn.evaluate: learning, cross-backend agreement, the notebook loop, failures, resume."""

from __future__ import annotations

import numpy as np
import pytest

import xpcnn
from xpcnn import nn

IMAGES, LABELS = xpcnn.data.load_bundled("train")


def _on(B):
    name, _, device = B.name.partition(":")
    return xpcnn.use_backend(name, device or None)


def _subset(n, start=0):
    return xpcnn.data.Dataset.from_numpy(IMAGES[start:start + n], LABELS[start:start + n])


def test_a_few_hundred_steps_learn_on_every_backend(B):
    with _on(B):
        model = xpcnn.models.lenet5(seed=0)
        opt = xpcnn.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        loss_fn = nn.CrossEntropyLoss()
        train, held_out = _subset(6400), _subset(1000, start=9000)
        before = xpcnn.evaluate(model, held_out, loss_fn)
        history = xpcnn.fit(model, loss_fn, opt, train, epochs=1, batch_size=32, progress=False)   # 200 steps
        after = xpcnn.evaluate(model, held_out, loss_fn)
    assert history.epoch == [1] and len(history.loss) == 1
    assert after["loss"] < 0.5 * before["loss"]
    assert after["accuracy"] > 0.8, after          # chance is 0.1


def _first_losses(steps=20):
    model = xpcnn.models.lenet5(seed=1)
    opt = xpcnn.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    losses = []
    order = xpcnn.train.epoch_order(0, 0, 64 * steps)
    for x, y in _subset(64 * steps).batches(64, order):
        losses.append(float(loss_fn(model(x), y)))
        model.backward(loss_fn.backward())
        opt.step()
        model.zero_grad()
    return np.array(losses)


def test_same_seed_gives_the_same_first_20_losses_on_every_backend(B):
    reference = _first_losses()
    with _on(B):
        losses = _first_losses()
    np.testing.assert_allclose(losses, reference, rtol=1e-4)
    assert losses[-1] < losses[0]


def test_notebook_single_image_loop_drives_the_output_down(B):
    """seeds/000: one 32x32 image of raw pixels 1..254, target 0, 50 SGD steps of lr 0.001."""
    image = np.random.default_rng(0).integers(1, 255, (1, 1, 32, 32)).astype(np.float32)
    with _on(B):
        model = xpcnn.models.seed_binary(seed=0)
        opt = xpcnn.optim.SGD(model.parameters(), lr=0.001)
        loss_fn = nn.MSELoss()
        x, y = xpcnn.asarray(image), xpcnn.asarray(np.zeros((1, 1), np.float32))
        outputs = []
        for _ in range(50):
            y_hat = model(x)
            outputs.append(float(B.numpy(y_hat)[0, 0]))
            loss_fn(y_hat, y)
            model.backward(loss_fn.backward())
            opt.step()
            model.zero_grad()
    assert all(b < a for a, b in zip(outputs, outputs[1:])), outputs
    assert outputs[-1] < 0.1 < outputs[0]


def test_nan_loss_stops_training_naming_epoch_and_step(monkeypatch):
    images = xpcnn.data.normalize(IMAGES[:128])
    images[70] = np.nan                     # in the third batch of 32 when the data is taken in order
    data = xpcnn.data.Dataset(images, LABELS[:128].astype(np.int64))
    monkeypatch.setattr(xpcnn.train, "epoch_order", lambda seed, epoch, n: np.arange(n))
    model = xpcnn.models.lenet5()
    opt = xpcnn.optim.SGD(model.parameters(), lr=0.01)
    with pytest.raises(xpcnn.TrainingDivergedError, match=r"became nan at epoch 1, between steps 1 and 4 "
                                                          r"\(of 4\)") as info:
        xpcnn.fit(model, nn.CrossEntropyLoss(), opt, data, epochs=1, batch_size=32, progress=False)
    assert (info.value.epoch, info.value.step) == (1, 4)       # the loss is read back at step 4, the last


def test_fit_reads_the_loss_back_once_every_10_steps(monkeypatch):
    """Each read-back stalls a GPU's queue: fit reads the running sums back every 10 steps and at the end
    of an epoch, one transfer each time (plus one for the weights' finiteness)."""
    calls = []
    real = xpcnn.backend.to_numpy
    monkeypatch.setattr(xpcnn.backend, "to_numpy", lambda x: calls.append(1) or real(x))
    model = xpcnn.models.lenet5()
    xpcnn.fit(model, nn.CrossEntropyLoss(), xpcnn.optim.SGD(model.parameters(), lr=0.01), _subset(32 * 25),
              epochs=1, batch_size=32, progress=False)
    assert len(calls) == 1 + 3           # the labels once before training; the sums after steps 10, 20 and 25


def test_weights_that_become_non_finite_stop_training():
    """A learning rate so large that the weights overflow although the loss of each batch was finite."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10), input_shape=(1, 28, 28))
    data = xpcnn.data.Dataset(xpcnn.data.normalize(IMAGES[:64]) * 1000, LABELS[:64].astype(np.int64))
    opt = xpcnn.optim.SGD(model.parameters(), lr=1e38)
    with pytest.raises(xpcnn.TrainingDivergedError, match=r"the weights hold NaN or Inf values after epoch 1 "
                                                          r"\(the loss was [\d.e+]+\)"):
        xpcnn.fit(model, nn.CrossEntropyLoss(), opt, data, epochs=1, batch_size=64, progress=False)


def test_one_hot_targets_train_and_evaluate():
    """One-hot targets train exactly as the class indices they encode."""
    histories = []
    for labels in (LABELS[:256], np.eye(10, dtype=np.float32)[LABELS[:256]]):
        data = xpcnn.data.Dataset.from_numpy(IMAGES[:256], labels)
        model = xpcnn.models.lenet5()
        opt = xpcnn.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        histories.append(xpcnn.fit(model, nn.CrossEntropyLoss(), opt, data, epochs=2, batch_size=32, progress=False))
    assert data.labels.dtype == np.float32 and data.labels.shape == (256, 10)
    assert histories[0].accuracy == histories[1].accuracy and histories[0].accuracy[-1] > 0.1
    np.testing.assert_allclose(histories[0].loss, histories[1].loss, rtol=1e-6)
    result = xpcnn.evaluate(model, data)
    assert set(result) == {"accuracy", "n", "confusion", "per_class_accuracy"}    # no loss without a loss_fn
    assert np.isfinite(xpcnn.evaluate(model, data, nn.CrossEntropyLoss())["loss"])


def test_inputs_are_checked_in_the_users_terms():
    model = xpcnn.models.lenet5()
    with pytest.raises(ValueError, match=r"lenet5 expects inputs of shape \(N, 1, 28, 28\); got \(4, 784\)"):
        model(np.zeros((4, 784), np.float32))
    with pytest.raises(TypeError, match="lenet5: inputs must be floating-point; got uint8 of shape \\(4, 28, 28\\) "
                                        r"\(normalize uint8 images as the training images were: .*statistics"):
        model(np.zeros((4, 28, 28), np.uint8))                  # not "/ 255": that is not how MNIST models were fed
    with pytest.raises(TypeError, match=r"lenet5 has float32 parameters; got float64 inputs"):
        model(np.zeros((4, 1, 28, 28)))


def test_input_that_does_not_fit_is_rejected_before_training():
    model = xpcnn.models.lenet5()
    before = model.layers[0].weight.data.copy()
    data = xpcnn.data.Dataset(np.zeros((10, 3, 32, 32), np.float32), np.zeros(10, np.int64))
    with pytest.raises(ValueError, match=r"expects inputs of shape \(N, 1, 28, 28\); got \(\d+, 3, 32, 32\)"):
        xpcnn.fit(model, nn.CrossEntropyLoss(), xpcnn.optim.SGD(model.parameters()), data, epochs=1, progress=False)
    np.testing.assert_array_equal(model.layers[0].weight.data, before)


def _run(epochs, start_epoch=0, model=None, opt=None):
    model = model or xpcnn.models.lenet5(seed=2)
    opt = opt or xpcnn.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True, weight_decay=1e-4)
    schedule = xpcnn.optim.CosineLR(opt, 2, base_lr=0.02)
    xpcnn.fit(model, nn.CrossEntropyLoss(), opt, _subset(640), epochs=epochs, batch_size=64, scheduler=schedule,
              seed=7, start_epoch=start_epoch, progress=False)
    return model, opt


def test_resume_continues_exactly(tmp_path):
    straight, _ = _run(2)
    half, opt = _run(1)
    path = xpcnn.save(tmp_path / "half.npz", half, opt, epoch=1)
    checkpoint = xpcnn.load(path)
    resumed_opt = xpcnn.optim.SGD(checkpoint.model.parameters(), lr=0.02, momentum=0.9, nesterov=True,
                                  weight_decay=1e-4)
    resumed_opt.load_state_dict(checkpoint.optimizer_state)
    resumed, _ = _run(2, start_epoch=checkpoint.epoch, model=checkpoint.model, opt=resumed_opt)
    for a, b in zip(straight.parameters(), resumed.parameters()):
        np.testing.assert_array_equal(a.data, b.data)       # bitwise on numpy


def test_evaluate_restores_training_mode():
    model = xpcnn.models.lenet5()
    model.train()
    result = xpcnn.evaluate(model, _subset(50))
    assert model.training and result["n"] == 50 and 0 <= result["accuracy"] <= 1


def test_augmented_training_repeats_with_the_seed_and_differs_without_it():
    def run(augment):
        model = xpcnn.models.resnet8(seed=0)
        opt = xpcnn.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        xpcnn.fit(model, nn.CrossEntropyLoss(), opt, _subset(64), epochs=2, batch_size=32, progress=False,
                  augment=augment)
        return [p.data for p in model.parameters()] + [b.data for b in model.buffers()]

    first, again = run(xpcnn.data.random_crop_flip), run(xpcnn.data.random_crop_flip)
    plain = run(None)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], plain[0])


@pytest.mark.parametrize("loss_name", ["BCEWithLogitsLoss", "BCELoss"])
@pytest.mark.parametrize("label_shape", ["(N,)", "(N, 1)"])
def test_one_output_binary_classifiers_get_thresholded_accuracy(loss_name, label_shape):
    """A one-output model's accuracy is its thresholded prediction against the label (it was 1.0 whatever the
    model did: an argmax over one column), in fit and evaluate, with labels (N,) or (N, 1)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 1, 4, 4)).astype(np.float32)
    y = (x.reshape(200, -1).sum(axis=1) > 0).astype(np.int64)
    labels = y if label_shape == "(N,)" else y.reshape(-1, 1).astype(np.float32)
    loss_fn = getattr(nn, loss_name)()
    head = [nn.Sigmoid()] if loss_name == "BCELoss" else []
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 1, rng=np.random.default_rng(1)), *head, input_shape=(1, 4, 4))
    data = xpcnn.data.Dataset(xpcnn.asarray(x), xpcnn.asarray(labels))
    by_hand = np.mean((xpcnn.to_numpy(model(xpcnn.asarray(x)))[:, 0] > (0.5 if head else 0.0)) == (y == 1))
    assert 0.2 < by_hand < 0.8
    assert xpcnn.evaluate(model, data, loss_fn)["accuracy"] == pytest.approx(by_hand)
    assert xpcnn.evaluate(model, data)["accuracy"] == pytest.approx(by_hand)       # threshold from the model
    history = xpcnn.fit(model, loss_fn, xpcnn.optim.SGD(model.parameters(), lr=0.5), data, epochs=5, progress=False)
    assert 0.85 < history.accuracy[-1] < 1.0


def test_evaluate_returns_the_confusion_matrix_and_per_class_accuracy(B):
    """Rows are the true class: the counts agree with an argmax by hand, on every backend."""
    with _on(B):
        model = xpcnn.models.lenet5(seed=0)
        data = _subset(300)
        xpcnn.fit(model, nn.CrossEntropyLoss(), xpcnn.optim.SGD(model.parameters(), lr=0.05, momentum=0.9), data,
                  epochs=1, batch_size=32, progress=False)
        result = xpcnn.evaluate(model, data, batch_size=64)
        predicted = np.argmax(xpcnn.to_numpy(model.eval()(data.images)), axis=1)
    truth = LABELS[:300]
    expected = np.zeros((10, 10), np.int64)
    np.add.at(expected, (truth, predicted), 1)
    np.testing.assert_array_equal(result["confusion"], expected)
    assert result["accuracy"] == np.trace(expected) / 300
    np.testing.assert_allclose(result["per_class_accuracy"], np.diagonal(expected) / expected.sum(axis=1))


def test_evaluate_top_k_accuracy():
    model = xpcnn.models.lenet5(seed=0)
    data = _subset(200)
    logits = xpcnn.to_numpy(model.eval()(data.images))
    rank = (logits > logits[np.arange(200), LABELS[:200]][:, None]).sum(axis=1)
    for k in (1, 3, 10):
        result = xpcnn.evaluate(model, data, top_k=k, batch_size=64)
        assert result["top_k_accuracy"] == np.mean(rank < k)
    assert xpcnn.evaluate(model, data, top_k=1)["top_k_accuracy"] == xpcnn.evaluate(model, data)["accuracy"]
    with pytest.raises(ValueError, match="evaluate: top_k must be >= 1; got 0"):
        xpcnn.evaluate(model, data, top_k=0)


def test_per_epoch_lines_go_through_the_xpcnn_logger(caplog):
    """Applications redirect or silence fit's lines with logging (pytest's capture is such a configuration)."""
    import logging

    model = xpcnn.models.lenet5(seed=0)
    opt = xpcnn.optim.SGD(model.parameters(), lr=0.01)
    with caplog.at_level(logging.INFO, logger="xpcnn"):
        xpcnn.fit(model, nn.CrossEntropyLoss(), opt, _subset(64), epochs=2, batch_size=32)
    lines = [r.getMessage() for r in caplog.records if r.name == "xpcnn"]
    assert [line.split(":")[0] for line in lines] == ["epoch 1/2", "epoch 2/2"] and "accuracy" in lines[0]
    caplog.clear()
    logging.getLogger("xpcnn").setLevel(logging.WARNING)
    try:
        xpcnn.fit(model, nn.CrossEntropyLoss(), opt, _subset(64), epochs=1, batch_size=32)
    finally:
        logging.getLogger("xpcnn").setLevel(logging.NOTSET)
    assert not [r for r in caplog.records if r.name == "xpcnn"]


def test_per_epoch_lines_are_printed_without_any_logging_setup(tmp_path):
    import subprocess
    import sys

    script = ("import xpcnn\nfrom xpcnn import nn\nm = xpcnn.models.lenet5()\n"
              "d = xpcnn.data.Dataset.from_numpy(*[a[:64] for a in xpcnn.data.load_bundled('train')])\n"
              "xpcnn.fit(m, nn.CrossEntropyLoss(), xpcnn.optim.SGD(m.parameters(), lr=0.01), d, epochs=2)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "epoch 1/2: loss" in done.stdout and "epoch 2/2: loss" in done.stdout, (done.stdout, done.stderr)


@pytest.mark.parametrize("name, value, error, words", [
    ("epochs", True, TypeError, "fit: epochs must be an integer; got True"),
    ("batch_size", True, TypeError, "fit: batch_size must be an integer; got True"),
    ("epochs", 0, ValueError, "fit: epochs must be >= 1; got 0"),
    ("batch_size", 2.5, TypeError, "fit: batch_size must be an integer"),
    ("seed", -1, ValueError, "fit: seed must be >= 0; got -1"),
])
def test_fit_refuses_numbers_that_are_not_whole(name, value, error, words):
    model = xpcnn.models.lenet5()
    kwargs = {"epochs": 1, "batch_size": 32, name: value}
    with pytest.raises(error, match=words.replace("(", r"\(").replace(")", r"\)")):
        xpcnn.fit(model, nn.CrossEntropyLoss(), xpcnn.optim.SGD(model.parameters()), _subset(32), progress=False,
                  **kwargs)


def test_fit_takes_numpy_arrays_as_from_numpy_makes_them():
    """(uint8 images, labels) trains exactly as Dataset.from_numpy of them; a uint8 validation pair is normalized
    with the training images' statistics."""
    histories = []
    for train, val in (((IMAGES[:128], LABELS[:128]), (IMAGES[200:264], LABELS[200:264])),
                       (_subset(128), None)):
        model = xpcnn.models.lenet5(seed=0)
        if val is None:
            val = xpcnn.data.Dataset.from_numpy(IMAGES[200:264], LABELS[200:264], mean=train.mean, std=train.std)
        opt = xpcnn.optim.SGD(model.parameters(), lr=0.05)
        histories.append(xpcnn.fit(model, nn.CrossEntropyLoss(), opt, train, epochs=1, batch_size=32,
                                   validation_data=val, progress=False))
    assert histories[0].loss == histories[1].loss and histories[0].val_loss == histories[1].val_loss
    model = xpcnn.models.lenet5()
    with pytest.raises(TypeError, match=r"data: uint8 pixels must be normalized as the training images were; make "
                                        r"them a Dataset: xpcnn.data.Dataset.from_numpy"):
        xpcnn.evaluate(model, (IMAGES[:8], LABELS[:8]))
    with pytest.raises(TypeError, match=r"train_data: labels \(N,\) must be whole class indices; got float64"):
        xpcnn.fit(model, nn.CrossEntropyLoss(), xpcnn.optim.SGD(model.parameters()),
                  (IMAGES[:8], np.linspace(0, 2, 8)), epochs=1, progress=False)


def test_evaluate_refuses_no_samples_and_labels_the_model_cannot_score():
    model = xpcnn.models.lenet5()
    images = xpcnn.data.normalize(IMAGES[:4])
    with pytest.raises(ValueError, match="evaluate: data has no samples"):
        xpcnn.evaluate(model, xpcnn.data.Dataset(images[:0], LABELS[:0].astype(np.int64)))
    for bad in (10, -1):
        labels = np.array([0, 1, bad, 2])
        with pytest.raises(ValueError, match=rf"evaluate: data: labels must lie in \[0, 10\) for a model with 10 "
                                             rf"outputs; got values from {min(bad, 0)} to {max(bad, 2)}"):
            xpcnn.evaluate(model, xpcnn.data.Dataset(images, labels))


def test_every_split_is_checked_against_the_model_before_training():
    model = xpcnn.models.lenet5()
    before = model.layers[0].weight.data.copy()
    wrong = xpcnn.data.Dataset(np.zeros((4, 1, 32, 32), np.float32), np.zeros(4, np.int64))
    with pytest.raises(ValueError, match=r"expects inputs of shape \(N, 1, 28, 28\); got \(1, 1, 32, 32\)"):
        xpcnn.fit(model, nn.CrossEntropyLoss(), xpcnn.optim.SGD(model.parameters()), _subset(32), epochs=1,
                  validation_data=wrong, progress=False)
    with pytest.raises(ValueError, match=r"validation_data: labels must lie in \[0, 10\)"):
        xpcnn.fit(model, nn.CrossEntropyLoss(), xpcnn.optim.SGD(model.parameters()), _subset(32), epochs=1,
                  validation_data=xpcnn.data.Dataset(_subset(4).images, np.full(4, 12)), progress=False)
    np.testing.assert_array_equal(model.layers[0].weight.data, before)


def test_a_validation_split_may_be_any_real_number_type():
    model = xpcnn.models.lenet5()
    history = xpcnn.fit(model, nn.CrossEntropyLoss(), xpcnn.optim.SGD(model.parameters(), lr=0.01), _subset(40),
                        epochs=1, batch_size=32, validation_split=np.float32(0.2), progress=False)
    assert len(history.val_accuracy) == 1
    with pytest.raises(ValueError, match=r"fit: validation_split must be a finite number in \(0, 1\); got 1.5"):
        xpcnn.fit(model, nn.CrossEntropyLoss(), xpcnn.optim.SGD(model.parameters()), _subset(40), epochs=1,
                  validation_split=1.5, progress=False)


def test_fit_refuses_training_data_of_one_class():
    """Every label the same: nothing to learn but that class; said before any step (validation data may hold one
    class)."""
    model = xpcnn.models.lenet5()
    opt = xpcnn.optim.SGD(model.parameters(), lr=0.1)
    x = np.random.default_rng(0).random((8, 1, 28, 28)).astype(np.float32)
    with pytest.raises(xpcnn.data.DataError, match="train_data: every label is 3: a classifier needs at least two"):
        xpcnn.fit(model, xpcnn.nn.CrossEntropyLoss(), opt, (x, np.full(8, 3)), epochs=1, progress=False)
    assert opt.steps == 0
    xpcnn.fit(model, xpcnn.nn.CrossEntropyLoss(), opt, (x, np.arange(8) % 2), epochs=1, progress=False,
              validation_data=(x[:2], np.zeros(2, int)))
