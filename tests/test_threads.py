"""One model used from several threads: evaluation beside training works, steps take turns, and a backward
whose forward another thread replaced says so (issue 19's thread cases)."""

from __future__ import annotations

import sys
import threading

import numpy as np
import pytest

import xpcnn
from xpcnn import nn

pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")


def _net(seed=0):
    """A small network with BatchNorm (whose mode matters) and a dense head, fast to train."""
    xpcnn.init.manual_seed(seed)
    return nn.Sequential(nn.Conv2D(1, 4, 3), nn.BatchNorm2D(4), nn.ReLU(), nn.MaxPool2D(2),
                         nn.Flatten(), nn.Linear(4 * 5 * 5, 10), input_shape=(1, 12, 12))


def _data(n=192, seed=1):
    rng = np.random.default_rng(seed)
    return xpcnn.data.Dataset.from_numpy(rng.random((n, 1, 12, 12)).astype(np.float32),
                                         rng.integers(0, 10, n), mean=0.5, std=0.25)


def _fit(model, data, epochs=2):
    opt = xpcnn.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    history = xpcnn.fit(model, nn.CrossEntropyLoss(), opt, data, epochs=epochs, batch_size=16, progress=False)
    return history.loss, [np.array(p.data) for p in model.parameters()]


def _in_threads(*targets, timeout=120):
    errors, threads = [], []

    def guarded(target):
        try:
            target()
        except BaseException as exc:  # noqa: BLE001 -- reported below
            errors.append(exc)

    for target in targets:
        threads.append(threading.Thread(target=guarded, args=(target,)))
        threads[-1].start()
    for thread in threads:
        thread.join(timeout)
    assert not any(t.is_alive() for t in threads), "a thread hangs"
    return errors


def test_evaluate_in_another_thread_while_fit_trains_the_same_model():
    """Evaluation no longer switches the model to eval mode under the training thread: fit finishes with the
    numbers it gets alone, while the other thread evaluated it many times."""
    data = _data()
    expected = _fit(_net(), data)
    model, done, scores = _net(), threading.Event(), []

    def train():
        try:
            scores.append(_fit(model, data))
        finally:
            done.set()

    def evaluate():
        while not done.is_set():
            scores.append(xpcnn.evaluate(model, data, loss_fn=nn.CrossEntropyLoss(), batch_size=64)["accuracy"])
            model.predict(np.zeros((2, 1, 12, 12), np.float32))

    assert not _in_threads(train, evaluate)
    result = next(s for s in scores if isinstance(s, tuple))
    assert result[0] == expected[0], "the evaluating thread changed the training"
    assert all(np.array_equal(a, b) for a, b in zip(result[1], expected[1]))
    assert len(scores) > 1, "the evaluating thread ran while fit trained"    # fit's result and an evaluation
    assert model.training, "fit leaves the model in training mode; evaluate did not switch it"


def test_two_threads_fitting_one_model_take_turns_step_by_step():
    """Each step (TrainStep, which fit uses) holds the model: two fits of one model interleave whole steps, and
    both finish with finite losses, even with the interpreter switching threads every few microseconds."""
    interval = sys.getswitchinterval()
    model, data = _net(), _data(96)
    results = []
    sys.setswitchinterval(1e-6)
    try:
        errors = _in_threads(*(lambda: results.append(_fit(model, data, epochs=1)) for _ in range(2)))
    finally:
        sys.setswitchinterval(interval)
    assert not errors and len(results) == 2
    assert all(np.isfinite(r[0]).all() for r in results)


def test_a_backward_whose_forward_another_thread_replaced_says_the_model_is_in_use():
    model = _net()
    x = np.zeros((4, 1, 12, 12), np.float32)
    first, second = threading.Event(), threading.Event()
    outcome = {}

    def a():
        model(x)
        first.set()
        second.wait(30)
        try:
            model.backward(np.ones((4, 10), np.float32))
        except Exception as exc:  # noqa: BLE001 -- inspected below
            outcome["a"] = exc

    def b():
        first.wait(30)
        model(x)
        second.set()
        model.backward(np.ones((4, 10), np.float32))
        outcome["b"] = "ok"

    assert not _in_threads(a, b)
    assert outcome["b"] == "ok", "the thread whose forward is pending trains"
    assert isinstance(outcome["a"], nn.ModelInUseError)
    assert "another thread ran a training-mode forward" in str(outcome["a"])
    assert "with model.using()" in str(outcome["a"])


def test_hand_written_loops_in_two_threads_work_when_each_step_holds_the_model():
    model, data = _net(), _data(64)
    loss_fn = nn.CrossEntropyLoss()
    opt = xpcnn.optim.SGD(model.parameters(), lr=0.01)
    steps = []

    def loop():
        for x, y in data.batches(16):
            with model.using():
                loss = loss_fn(model(x), y)
                model.backward(loss_fn.backward())
                opt.step()
                opt.zero_grad()
            steps.append(float(loss))

    assert not _in_threads(loop, loop, loop)
    assert len(steps) == 12 and np.isfinite(steps).all()


def test_a_summary_in_another_thread_during_training_steps():
    model, data = _net(), _data(96)
    done = threading.Event()

    def train():
        try:
            _fit(model, data, epochs=1)
        finally:
            done.set()

    def summaries():
        while not done.is_set():
            assert "total parameters" in model.summary()

    assert not _in_threads(train, summaries)


def test_a_compiled_step_being_traced_is_never_seen_by_another_thread():
    """TrainStep's first call on jax traces the model (its slots hold tracers meanwhile); calls from another
    thread wait for it instead of failing on a tracer."""
    pytest.importorskip("jax", reason="jax is not installed")
    with xpcnn.use_backend("jax"):
        model = _net()
        data = _data(32)
        step = xpcnn.TrainStep(model, nn.CrossEntropyLoss(), xpcnn.optim.SGD(model.parameters(), lr=0.01))
        started, outputs = threading.Event(), []
        x, y = next(iter(data.batches(16)))

        def train():
            started.set()
            for _ in range(3):
                step(x, y)

        def infer():
            started.wait(30)
            for _ in range(20):
                outputs.append(model.infer(x))

        assert not _in_threads(train, infer)
        assert len(outputs) == 20 and all(out.shape == (16, 10) for out in outputs)


# ---------------------------------------------------------------- module-tree mistakes, said in a sentence
def test_a_module_written_the_pytorch_way_is_told_what_to_implement():
    with pytest.raises(TypeError, match=r"overrides forward\(\) the PyTorch way; an xpcnn module implements "
                                        r"_forward\(self, x, run\)"):
        class TorchStyle(nn.Module):
            def forward(self, x):
                return x


def test_forgetting_super_init_is_named():
    class NoSuper(nn.Module):
        def __init__(self):
            self.dense = nn.Linear(3, 2)

    with pytest.raises(TypeError, match=r"NoSuper.__init__ must call super\(\).__init__\(...\) before it sets "
                                        r"attributes \(setting 'dense'\)"):
        NoSuper()


def test_a_forward_that_returns_only_y_is_told_to_return_the_pair():
    class OnlyY(nn.Module):
        def _forward(self, x, run):
            return x * 2

    x = np.ones((2, 3), np.float32)
    for model in (OnlyY(), nn.Sequential(nn.Linear(3, 3), OnlyY())):
        with pytest.raises(TypeError, match=r"OnlyY._forward must return \(y, cache\).*got ndarray"):
            model(x)


def test_missing_forward_says_what_to_implement():
    class Empty(nn.Module):
        pass

    with pytest.raises(NotImplementedError, match=r"implement _forward\(self, x, run\) returning \(y, cache\)"):
        Empty()(np.ones((1, 3), np.float32))


def test_a_module_cycle_made_after_construction_is_named_not_a_recursion_error():
    model = nn.Sequential(nn.Linear(3, 3))
    model.append(model)
    with np.errstate(all="ignore"), pytest.raises(ValueError, match="module cycle: Sequential"):
        model(np.ones((1, 3), np.float32))       # (the products overflow on the way down the cycle)


def test_load_state_dict_takes_nested_lists():
    layer = nn.Linear(3, 2)
    layer.load_state_dict({"weight": [[1, 2, 3], [4, 5, 6]], "bias": [0.5, -0.5]})
    assert np.array_equal(np.asarray(layer.weight.data), [[1, 2, 3], [4, 5, 6]])
    assert layer.weight.data.dtype == np.float32
    with pytest.raises(ValueError, match=r"weight must have shape \(2, 3\); got \(3,\)"):
        layer.load_state_dict({"weight": [1, 2, 3], "bias": [0, 0]})


# ---------------------------------------------------------------- arrays of another library
def test_numpy_data_given_to_fit_and_evaluate_of_a_torch_model_moves_to_torch():
    pytest.importorskip("torch", reason="torch is not installed")
    rng = np.random.default_rng(0)
    x, y = rng.random((32, 1, 12, 12)).astype(np.float32), rng.integers(0, 10, 32)
    with xpcnn.use_backend("torch"):
        model = _net()
    history = xpcnn.fit(model, nn.CrossEntropyLoss(), xpcnn.optim.SGD(model.parameters(), lr=0.01), (x, y),
                        epochs=1, batch_size=16, progress=False, validation_data=(x, y))
    assert np.isfinite(history.loss).all()
    assert xpcnn.evaluate(model, (x, y))["n"] == 32


@pytest.mark.parametrize("model_lib, input_lib", [("torch", "numpy"), ("numpy", "torch")])
def test_an_array_of_another_library_names_both_and_the_fix(model_lib, input_lib):
    torch = pytest.importorskip("torch", reason="torch is not installed")
    with xpcnn.use_backend(model_lib):
        model = _net()
    x = np.zeros((2, 1, 12, 12), np.float32)
    with pytest.raises(TypeError, match=f"has {model_lib} parameters; got a {input_lib} input. Move the input to "
                                        f"{model_lib} .* or the model to {input_lib} \\(model.to\\('{input_lib}'\\)\\)"):
        model(torch.asarray(x) if input_lib == "torch" else x)
