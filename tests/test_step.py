"""xpcnn.TrainStep: the training step as a function of explicit state, eager on every backend, compiled on jax."""

from __future__ import annotations

import numpy as np
import pytest

import xpcnn
from xpcnn import nn, optim


def _on(B):
    name, _, device = B.name.partition(":")
    return xpcnn.use_backend(name, device or None)


def _net(dtype="float64", seed=0):
    """Every kind of state a step carries: BatchNorm buffers, a Dropout counter, a residual block."""
    rng = np.random.default_rng(seed)

    def conv(cin, cout, k, stride=1):
        return nn.Conv2D(cin, cout, k, stride=stride, padding=k // 2, bias=False, dtype=dtype, rng=rng)

    return nn.Sequential(
        conv(1, 4, 3), nn.BatchNorm2D(4, dtype=dtype), nn.ReLU(), nn.MaxPool2D(2),
        nn.Residual(nn.Sequential(conv(4, 4, 3), nn.BatchNorm2D(4, dtype=dtype), nn.ReLU())),
        nn.GlobalAvgPool2D(), nn.Dropout(0.3, seed=5), nn.Linear(4, 3, dtype=dtype, rng=rng),
        input_shape=(1, 8, 8), name="step_net")


def _batches(steps, n=8, dtype="float64", seed=1):
    rng = np.random.default_rng(seed)
    return [(xpcnn.asarray(rng.standard_normal((n, 1, 8, 8)).astype(dtype)),
             xpcnn.asarray(rng.integers(0, 3, n).astype(np.int64))) for _ in range(steps)]


OPTIMIZERS = {"sgd_momentum": lambda params: optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=1e-3),
              "adam": lambda params: optim.Adam(params, lr=0.01)}


def _state(model, opt):
    """Everything a step changes, as NumPy arrays and numbers."""
    out = {f"param {i}": xpcnn.to_numpy(p.data) for i, p in enumerate(model.parameters())}
    out.update({f"buffer {i}": xpcnn.to_numpy(b.data) for i, b in enumerate(model.buffers())})
    out.update({f"optimizer {k}": xpcnn.to_numpy(v) for k, v in opt.state.items()})
    out["steps"], out["calls"] = opt.steps, [int(m.calls) for m in model.modules() if isinstance(m, nn.Dropout)]
    return out


def _assert_states_close(got, want, rtol):
    """Each array within ``rtol`` of the reference relative to its norm (an elementwise ratio would judge an
    entry near zero, where Adam's division by sqrt(v) magnifies the last bit, against itself)."""
    assert got.keys() == want.keys()
    for name in want:
        a, b = np.asarray(got[name], np.float64), np.asarray(want[name], np.float64)
        assert a.shape == b.shape, name
        error = np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30)
        assert error <= rtol, f"{name}: relative error {error:.3g} > {rtol:g}"


@pytest.mark.parametrize("kind", sorted(OPTIMIZERS))
def test_an_eager_step_is_the_hand_written_loop(B, kind):
    """The README's loop and TrainStep(compile=False) run the same operations: the same numbers on every backend,
    including the Dropout masks, BatchNorm's running statistics and the optimizer's state."""
    with _on(B):
        batches = _batches(3)
        model, step_model = _net(), _net()
        opt, step_opt = OPTIMIZERS[kind](model.parameters()), OPTIMIZERS[kind](step_model.parameters())
        loss_fn = nn.CrossEntropyLoss()
        step = xpcnn.TrainStep(step_model, nn.CrossEntropyLoss(), step_opt, compile=False)
        for x, y in batches:
            loss = loss_fn(model(x), y)
            model.backward(loss_fn.backward())
            opt.step()
            model.zero_grad()
            step_loss, correct = step(x, y)
            np.testing.assert_allclose(float(B.numpy(step_loss)), float(B.numpy(loss)), rtol=1e-12)
            assert 0 <= int(B.numpy(correct)) <= 8
        assert not step.compiled
        _assert_states_close(_state(step_model, step_opt), _state(model, opt), rtol=1e-12)
        assert all(p.grad is None for p in step_model.parameters())


def test_the_step_validates_its_arguments():
    model = _net()
    opt = optim.SGD(model.parameters(), lr=0.1)
    loss_fn = nn.CrossEntropyLoss()
    with pytest.raises(TypeError, match="TrainStep: model must be an xpcnn.nn.Module; got str"):
        xpcnn.TrainStep("lenet5", loss_fn, opt)
    with pytest.raises(TypeError, match="TrainStep: optimizer must be an xpcnn.optim.Optimizer; got list"):
        xpcnn.TrainStep(model, loss_fn, [opt])
    with pytest.raises(TypeError, match="TrainStep: loss_fn must be an xpcnn loss object"):
        xpcnn.TrainStep(model, xpcnn.functional.softmax_cross_entropy, opt)
    with pytest.raises(ValueError, match="TrainStep: compile must be None, True or False; got 'yes'"):
        xpcnn.TrainStep(model, loss_fn, opt, compile="yes")
    with pytest.raises(ValueError, match="the optimizer must hold exactly the model's parameters"):
        xpcnn.TrainStep(model, loss_fn, optim.SGD(model.parameters()[:2], lr=0.1))
    with pytest.raises(ValueError, match=r"compile=True needs a backend with a compiler \(jax\); the parameters "
                                         r"are .*numpy.* arrays"):
        xpcnn.TrainStep(model, loss_fn, opt, compile=True)
    data = xpcnn.data.Dataset(np.zeros((4, 1, 8, 8)), np.arange(4, dtype=np.int64) % 2)
    with pytest.raises(ValueError, match=r"fit: compile=True cannot be combined with distributed="):
        xpcnn.fit(model, loss_fn, opt, data, epochs=1, compile=True, distributed=object(), progress=False)
    with pytest.raises(ValueError, match=r"compile=True needs a backend with a compiler"):
        xpcnn.fit(model, loss_fn, opt, data, epochs=1, compile=True, progress=False)


def test_fit_refuses_bce_targets_outside_0_1_before_training():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 1), nn.Sigmoid(), input_shape=(1, 2, 2))
    data = xpcnn.data.Dataset(np.zeros((4, 1, 2, 2), np.float32), np.array([[0.0], [1.0], [2.0], [0.5]], np.float32))
    with pytest.raises(ValueError, match=r"train_data: targets for BCELoss must lie in \[0, 1\]; got values "
                                         r"from 0 to 2"):
        xpcnn.fit(model, nn.BCELoss(), optim.SGD(model.parameters(), lr=0.1), data, epochs=1, progress=False)


# --------------------------------------------------------------------------- compiled (jax)
@pytest.fixture
def jax():
    jax = pytest.importorskip("jax", reason="jax is not installed (pip install -e '.[jax]')")
    jax.config.update("jax_enable_x64", True)
    return jax


def _is_real(jax, value) -> bool:
    return isinstance(value, jax.Array) and not isinstance(value, jax.core.Tracer)


@pytest.mark.parametrize("dtype,rtol", [("float64", 1e-10), ("float32", 1e-5)])
def test_a_compiled_step_equals_the_eager_one_and_leaves_real_arrays(jax, tmp_path, dtype, rtol):
    """Dropout, BatchNorm and Adam with a learning rate that changes every step: compiled once, the same numbers
    as eager; between steps the model holds real arrays, so calling it, saving and evaluating work."""
    with xpcnn.use_backend("jax"):
        batches = _batches(6, dtype=dtype)
        models = {mode: _net(dtype) for mode in (False, True)}
        opts = {mode: optim.Adam(models[mode].parameters(), lr=0.01) for mode in models}
        steps = {mode: xpcnn.TrainStep(models[mode], nn.CrossEntropyLoss(), opts[mode], compile=mode)
                 for mode in models}
        assert steps[True].compiled and not steps[False].compiled
        for i, (x, y) in enumerate(batches):
            losses = {}
            for mode in models:
                opts[mode].lr = 0.01 / (1 + i)             # a schedule: an input of the compiled step, not a constant
                losses[mode], _ = steps[mode](x, y)
            np.testing.assert_allclose(float(losses[True]), float(losses[False]), rtol=rtol)
            model, opt = models[True], opts[True]
            slots = [p.data for p in model.parameters()] + [b.data for b in model.buffers()]
            assert all(_is_real(jax, v) for v in [*slots, *opt.state.values()])
            model.eval()
            model(x)                                          # eager calls between steps
            model.train()
        _assert_states_close(_state(models[True], opts[True]), _state(models[False], opts[False]), rtol=rtol)
        assert opts[True].steps == 6 and _state(models[True], opts[True])["calls"] == [6]
        assert steps[True]._function._cache_size() == 1       # one trace for six learning rates and step numbers
        x, y = _batches(1, n=5, dtype=dtype)[0]
        steps[True](x, y)                                     # a smaller last batch compiles once more
        assert steps[True]._function._cache_size() == 2
        xpcnn.save(tmp_path / "step.npz", models[True], opts[True])
        restored = xpcnn.load(tmp_path / "step.npz").model
        assert [int(m.calls) for m in restored.modules() if isinstance(m, nn.Dropout)] == [7]


@pytest.mark.parametrize("compile", [False, True])
def test_every_step_draws_a_new_dropout_mask_and_a_resumed_run_repeats_them(jax, tmp_path, compile):
    """The masks are a hash of the layer's seed and its counter, an input of the step: with the weights all but
    frozen (lr 1e-9), the losses of one batch differ by the masks, which change every step and repeat after a
    resume."""
    backend = "jax" if compile else "numpy"
    with xpcnn.use_backend(backend):
        x, y = _batches(1)[0]
        frozen = _net()
        opt = optim.SGD(frozen.parameters(), lr=1e-9)
        step = xpcnn.TrainStep(frozen, nn.CrossEntropyLoss(), opt, compile=compile)
        losses = [float(xpcnn.to_numpy(step(x, y)[0])) for _ in range(4)]
        assert min(abs(a - b) for i, a in enumerate(losses) for b in losses[:i]) > 1e-6, losses
        first = _net()
        first_opt = optim.SGD(first.parameters(), lr=1e-9)
        first_step = xpcnn.TrainStep(first, nn.CrossEntropyLoss(), first_opt, compile=compile)
        first_step(x, y), first_step(x, y)
        xpcnn.save(tmp_path / "half.npz", first, first_opt)
        resumed = xpcnn.load(tmp_path / "half.npz")
        resumed_opt = optim.SGD(resumed.model.parameters(), lr=1e-9)
        resumed_opt.load_state_dict(resumed.optimizer_state)
        again = xpcnn.TrainStep(resumed.model, nn.CrossEntropyLoss(), resumed_opt, compile=compile)
        assert [float(xpcnn.to_numpy(again(x, y)[0])) for _ in range(2)] == losses[2:]


def test_a_compiled_fit_stops_at_a_nan_loss(jax):
    """NaN is found at the next read-back, compiled or not."""
    images, labels = xpcnn.data.load_bundled("train")
    images = xpcnn.data.normalize(images[:64])
    images[40] = np.nan
    with xpcnn.use_backend("jax"):
        data = xpcnn.data.Dataset(images, labels[:64].astype(np.int64))
        model = xpcnn.models.lenet5()
        opt = optim.SGD(model.parameters(), lr=0.01)
        with pytest.raises(xpcnn.TrainingDivergedError, match=r"the loss became nan at epoch 1"):
            xpcnn.fit(model, nn.CrossEntropyLoss(), opt, data, epochs=1, batch_size=32, progress=False)


LOSSES = {
    "cross_entropy": (nn.CrossEntropyLoss, [], lambda rng, n: rng.integers(0, 3, n).astype(np.int64)),
    "bce": (nn.BCELoss, [nn.Sigmoid()], lambda rng, n: rng.integers(0, 2, (n, 3)).astype(np.float64)),
    "bce_with_logits": (nn.BCEWithLogitsLoss, [], lambda rng, n: rng.random((n, 3))),
    "mse": (nn.MSELoss, [nn.Tanh()], lambda rng, n: rng.standard_normal((n, 3))),
}


@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_every_layer_and_loss_compiles_to_the_eager_numbers(jax, loss):
    """No layer or loss reads an array back to the host or branches on its values: each one traces, and the
    compiled steps give the eager ones' numbers (float64, SGD with Nesterov momentum and weight decay)."""
    make_loss, head, targets = LOSSES[loss]

    def net():
        rng = np.random.default_rng(0)
        # no bias before BatchNorm: its gradient is zero up to rounding, so its values would be rounding noise
        return nn.Sequential(
            nn.Conv2D(2, 3, 3, padding=1, bias="untied", input_size=(8, 8), dtype="float64", rng=rng),
            nn.LeakyReLU(0.1), nn.AvgPool2D(2),
            nn.Conv2D(3, 4, 3, padding=1, bias=False, dtype="float64", rng=rng), nn.BatchNorm2D(4, dtype="float64"),
            nn.Tanh(), nn.MaxPool2D(2, stride=1), nn.Flatten(), nn.Dropout(0.2, seed=1),
            nn.Linear(36, 3, dtype="float64", rng=rng), *head, input_shape=(2, 8, 8))

    rng = np.random.default_rng(2)
    with xpcnn.use_backend("jax"):
        batches = [(xpcnn.asarray(rng.standard_normal((6, 2, 8, 8))), xpcnn.asarray(targets(rng, 6)))
                   for _ in range(3)]
        runs = []
        for compile in (False, True):
            model = net()
            opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3)
            runs.append((model, opt, xpcnn.TrainStep(model, make_loss(), opt, compile=compile)))
        for x, y in batches:
            losses = [float(step(x, y)[0]) for _, _, step in runs]
            np.testing.assert_allclose(losses[1], losses[0], rtol=1e-10)
        _assert_states_close(_state(*runs[1][:2]), _state(*runs[0][:2]), rtol=1e-10)


# --------------------------------------------------------------------------- stateless runs and the hook
def test_a_stateless_run_returns_the_hand_written_gradients_and_leaves_the_model_as_it_was():
    """stateless.run computes on the state it is given: outputs, loss, gradients and the new state (BatchNorm's
    running statistics, the Dropout counter) come back; the model's arrays, gradients, counters and its pending
    backward are untouched."""
    from xpcnn.nn import stateless

    x, y = _batches(1)[0]
    model, reference = _net(), _net()
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    pending = model(x)                                       # a pending backward the run must not disturb
    given = stateless.state(reference)
    before = _state(model, optim.SGD(model.parameters(), lr=0.1))
    result = stateless.run(model, given, x, lambda out: (loss_fn(out, y), loss_fn.backward()))
    after = _state(model, optim.SGD(model.parameters(), lr=0.1))
    _assert_states_close(after, before, rtol=0)
    assert all(p.grad is None for p in model.parameters())
    model.backward(np.ones_like(pending))                    # still this thread's own pending call
    loss = loss_fn(reference(x), y)
    reference.backward(loss_fn.backward())
    np.testing.assert_array_equal(result.loss, loss)
    for got, p in zip(result.gradients, reference.parameters()):
        np.testing.assert_array_equal(got, p.grad)
    assert result.state.counters == (1,) and stateless.state(reference).counters == (1,)
    for got, b in zip(result.state.buffers, reference.buffers()):
        np.testing.assert_array_equal(got, b.data)
    forward_only = stateless.run(model, given, x, training=False)
    assert forward_only.gradients is None and forward_only.loss is None and forward_only.state.counters == (0,)


def test_a_gradient_reduction_hook_sees_the_flat_gradient_and_the_metrics():
    """Two processes holding the same half of a batch each, summed by the hook, take the step one process takes
    on the whole batch: share=0.5 halves each gradient (exactly), the hook doubles it back."""
    x, y = _batches(1)[0]
    single, pair = _net(), _net()
    single_opt, pair_opt = optim.SGD(single.parameters(), lr=0.1, momentum=0.9), \
        optim.SGD(pair.parameters(), lr=0.1, momentum=0.9)
    seen = []

    def two_alike(grad, metrics):
        seen.append((grad.shape, metrics.shape))
        return grad + grad, metrics + metrics

    loss, correct = xpcnn.TrainStep(single, nn.CrossEntropyLoss(), single_opt)(x, y)
    step = xpcnn.TrainStep(pair, nn.CrossEntropyLoss(), pair_opt, reduce_gradients=two_alike)
    pair_loss, pair_correct = step(x, y, share=0.5)
    assert seen == [((single_opt.flat_parameters().shape[0],), (2,))]
    np.testing.assert_array_equal(pair_loss, loss)
    assert int(pair_correct) == 2 * int(correct)            # each process's count, summed
    _assert_states_close(_state(pair, pair_opt), _state(single, single_opt), rtol=0)
    assert not hasattr(step, "_updates")                      # results are returned, not left on the step


def test_an_empty_part_of_a_split_batch_contributes_zeros_and_an_empty_batch_alone_is_refused():
    x, y = _batches(1)[0]
    model = _net()
    opt = optim.SGD(model.parameters(), lr=0.1)
    sums = []
    step = xpcnn.TrainStep(model, nn.CrossEntropyLoss(), opt,
                           reduce_gradients=lambda g, m: sums.append((float(np.abs(g).sum()), m.tolist())) or (g, m))
    step(x[:0], y[:0], share=0.0)
    assert sums == [(0.0, [0.0, 0.0])] and opt.steps == 1
    with pytest.raises(ValueError, match=r"TrainStep: the batch is empty \(x has 0 samples\)"):
        xpcnn.TrainStep(model, nn.CrossEntropyLoss(), opt)(x[:0], y[:0])
    with pytest.raises(ValueError, match=r"TrainStep: share must be None or a number in \[0, 1\]; got 2"):
        step(x, y, share=2)
    with pytest.raises(TypeError, match=r"TrainStep: reduce_gradients must be None or a function"):
        xpcnn.TrainStep(model, nn.CrossEntropyLoss(), opt, reduce_gradients="allreduce")


def test_an_optimizer_listing_the_parameters_in_another_order_steps_alike():
    batches = _batches(2)
    model, other = _net(), _net()
    opt = optim.Adam(model.parameters(), lr=0.01)
    reversed_opt = optim.Adam(other.parameters()[::-1], lr=0.01)
    steps = [xpcnn.TrainStep(m, nn.CrossEntropyLoss(), o) for m, o in ((model, opt), (other, reversed_opt))]
    for x, y in batches:
        for step in steps:
            step(x, y)
    for a, b in zip(model.parameters(), other.parameters()):
        np.testing.assert_array_equal(a.data, b.data)
