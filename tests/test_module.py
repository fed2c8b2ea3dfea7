"""The module tree (xpcnn.nn.module, containers): names, state, modes, reentrancy, residual networks."""

from __future__ import annotations

import json

import numpy as np
import pytest

import xpcnn
from helpers import assert_gradients_close, numerical_gradients
from xpcnn import functional as F
from xpcnn import nn


def _residual_net(dtype="float64", seed=0):
    """A small network with every new piece: BatchNorm, an identity and a projection residual block,
    a nested Sequential, global average pooling."""
    rng = np.random.default_rng(seed)

    def conv(cin, cout, k, stride=1):
        return nn.Conv2D(cin, cout, k, stride=stride, padding=k // 2, bias=False, dtype=dtype, rng=rng)

    return nn.Sequential(
        conv(2, 3, 3), nn.BatchNorm2D(3, dtype=dtype), nn.ReLU(),
        nn.Residual(nn.Sequential(conv(3, 3, 3), nn.BatchNorm2D(3, dtype=dtype), nn.Tanh())),
        nn.Residual(nn.Sequential(conv(3, 4, 3, 2), nn.BatchNorm2D(4, dtype=dtype)),
                    nn.Sequential(conv(3, 4, 1, 2), nn.BatchNorm2D(4, dtype=dtype))),
        nn.ReLU(), nn.GlobalAvgPool2D(), nn.Linear(4, 3, dtype=dtype, rng=rng),
        input_shape=(2, 5, 5), name="tiny_resnet")


def _on(B):
    name, _, device = B.name.partition(":")
    return xpcnn.use_backend(name, device or None)


@pytest.mark.parametrize("backend", ["numpy", "array_api_strict"])
def test_residual_network_with_batchnorm_matches_finite_differences(backend):
    """Every parameter and the input, float64, through BatchNorm (training mode) and both residual kinds."""
    with xpcnn.use_backend(backend):
        model = _residual_net()
        rng = np.random.default_rng(1)
        x = rng.standard_normal((4, 2, 5, 5))
        labels = xpcnn.asarray(np.array([0, 2, 1, 2]))
        loss_fn = nn.CrossEntropyLoss()
        loss_fn(model(xpcnn.asarray(x)), labels)
        dx = model.backward(loss_fn.backward(), input_grad=True)
        params = model.parameters()
        analytic = [xpcnn.to_numpy(p.grad) for p in params] + [xpcnn.to_numpy(dx)]
        originals = [xpcnn.to_numpy(p.data).copy() for p in params]

        def loss(*values):
            for p, v in zip(params, values[:-1]):
                p.data = xpcnn.asarray(v)
            return float(xpcnn.to_numpy(loss_fn(model(xpcnn.asarray(values[-1])), labels)))

        assert_gradients_close(analytic, numerical_gradients(loss, originals + [x]))


def test_names_parameters_buffers_and_modules():
    model = _residual_net()
    names = [n for n, _ in model.named_parameters()]
    assert names[:3] == ["0.weight", "1.weight", "1.bias"]
    assert "3.body.0.weight" in names and "4.shortcut.0.weight" in names and names[-1] == "7.bias"
    assert [n for n, _ in model.named_buffers()][:2] == ["1.running_mean", "1.running_var"]
    assert len(model.buffers()) == 2 * 4
    assert [n for n, _ in model.named_modules()][:6] == ["", "0", "1", "2", "3", "3.body"]
    assert set(model.state_dict()) == set(names) | {n for n, _ in model.named_buffers()}


def test_state_dict_round_trip_and_refusals():
    a, b = _residual_net(seed=0), _residual_net(seed=1)
    a(np.random.default_rng(2).standard_normal((3, 2, 5, 5)))          # running statistics move
    b.load_state_dict(a.state_dict())
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        np.testing.assert_array_equal(x, y, err_msg=name)
    state = a.state_dict()
    state["1.running_mean"] = np.zeros(4)
    with pytest.raises(ValueError, match=r"1.running_mean must have shape \(3,\); got \(4,\)"):
        b.load_state_dict(state)
    del state["1.running_mean"]
    with pytest.raises(KeyError, match="missing \\['1.running_mean'\\]"):
        b.load_state_dict(state)


def test_train_eval_and_zero_grad_recurse():
    model = _residual_net()
    model.eval()
    assert not any(m.training for m in model.modules())
    model.train()
    assert all(m.training for m in model.modules())
    model(np.ones((2, 2, 5, 5)))
    model.backward(np.ones((2, 3)))
    assert all(p.grad is not None for p in model.parameters())
    model.zero_grad()
    assert all(p.grad is None for p in model.parameters())


def test_eval_uses_running_statistics_and_training_updates_them():
    model = _residual_net()
    x = np.random.default_rng(3).standard_normal((6, 2, 5, 5))
    before = [b.data.copy() for b in model.buffers()]
    model.eval()
    first = model(x)
    np.testing.assert_array_equal(model(x[:2]), first[:2])            # per-sample in eval: no batch coupling
    assert all(np.array_equal(a, b.data) for a, b in zip(before, model.buffers()))
    model.train()
    train_out = model(x)
    assert not np.allclose(train_out[:2], model(x[:2]))               # batch statistics in training
    assert not np.allclose(before[0], model.buffers()[0].data)


def test_same_answers_alone_inside_a_sequential_and_inside_a_residual():
    """A BatchNorm layer: alone (NCHW), inside a Sequential and inside a Residual (batch-innermost)."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((4, 3, 5, 5))
    dy = rng.standard_normal(x.shape)
    results = []
    for wrap in (lambda m: m, lambda m: nn.Sequential(m), lambda m: nn.Residual(m)):
        bn = nn.BatchNorm2D(3, dtype="float64")
        bn.weight.data = np.linspace(0.5, 2, 3)
        model = wrap(bn)
        y = model(x)
        dx = model.backward(dy, input_grad=True)
        if isinstance(model, nn.Residual):                  # remove the identity path's contribution
            y, dx = y - x, dx - dy
        results.append((y, dx, bn.weight.grad, bn.running_var.data))
    for other in results[1:]:
        for ours, theirs in zip(results[0], other):
            np.testing.assert_allclose(theirs, ours, rtol=1e-12, atol=1e-12)


def test_a_module_used_twice_gets_both_gradients():
    """Reentrant: the same Linear twice in one graph; its gradient is the sum over both uses."""
    rng = np.random.default_rng(5)
    shared = nn.Linear(3, 3, dtype="float64", rng=rng)
    model = nn.Sequential(shared, nn.Tanh(), shared)
    assert len(model.parameters()) == 2                     # listed once
    x = rng.standard_normal((4, 3))
    y = model(x)
    model.backward(np.ones_like(y))
    analytic = [shared.weight.grad, shared.bias.grad]
    original = [shared.weight.data.copy(), shared.bias.data.copy()]

    def loss(w, b):
        shared.weight.data, shared.bias.data = w, b
        return float(np.sum(model(x)))

    assert_gradients_close(analytic, numerical_gradients(loss, original))


def test_wrong_caches_and_missing_forward_are_refused():
    model = _residual_net()
    with pytest.raises(RuntimeError, match="Sequential.backward called without a training-mode forward"):
        model.backward(np.ones((2, 3)))
    model(np.ones((2, 2, 5, 5)))
    with pytest.raises(TypeError, match=r"dy must have the dtype of the output \(float64\); got float32"):
        model.backward(np.ones((2, 3), np.float32))
    y, conv_cache = F.conv2d_forward(np.ones((1, 1, 3, 3)), np.ones((1, 1, 2, 2)))
    with pytest.raises(TypeError, match="max_pool2d_backward: cache must be the MaxPool2DCache that "
                                        "max_pool2d_forward returned; got a Conv2DCache"):
        F.max_pool2d_backward(y, conv_cache)
    _, sigmoid_cache = F.sigmoid_forward(y)
    with pytest.raises(TypeError, match="relu_backward: cache must be the ReLUCache .* got a SigmoidCache"):
        F.relu_backward(y, sigmoid_cache)
    with pytest.raises(TypeError, match="got None"):
        F.linear_backward(np.ones((1, 2)), None)
    with pytest.raises(TypeError, match="Residual.backward: cache must be the ResidualCache"):
        model.layers[3]._backward(np.ones((3, 5, 5, 2)), conv_cache, nn.Run("CHWN"), True)


def test_residual_shapes_must_agree():
    block = nn.Residual(nn.Conv2D(2, 3, 3, padding=1))
    with pytest.raises(ValueError, match=r"Residual: the body's output \(1, 3, 4, 4\) and the shortcut's "
                                         r"\(1, 2, 4, 4\)"):
        block(np.ones((1, 2, 4, 4), np.float32))
    model = nn.Sequential(nn.Conv2D(1, 2, 3), nn.Residual(nn.Conv2D(2, 3, 1)))
    with pytest.raises(ValueError, match="does not fit layer 1 .*Residual"):
        model.check_input((1, 1, 8, 8))
    with pytest.raises(TypeError, match="Residual: body must be an xpcnn.nn.Module; got int"):
        nn.Residual(3)


def test_global_avg_pool_matches_mean_and_its_gradient(B):
    rng = np.random.default_rng(6)
    x, dy = rng.standard_normal((2, 3, 4, 5)), rng.standard_normal((2, 3))
    y, cache = F.global_avg_pool2d_forward(B.asarray(x))
    np.testing.assert_allclose(B.numpy(y), x.mean(axis=(2, 3)), rtol=1e-12)
    dx = F.global_avg_pool2d_backward(B.asarray(dy), cache)
    np.testing.assert_allclose(B.numpy(dx), np.broadcast_to(dy[:, :, None, None] / 20, x.shape), rtol=1e-12)
    y2, cache2 = F.global_avg_pool2d_forward(B.asarray(np.ascontiguousarray(x.transpose(1, 2, 3, 0))), "CHWN")
    np.testing.assert_allclose(B.numpy(y2), x.mean(axis=(2, 3)).T, rtol=1e-12)


def test_nested_config_round_trip_and_summary():
    model = _residual_net("float32")
    config = json.loads(json.dumps(model.config()))
    rebuilt = nn.from_config(config)
    assert rebuilt.config() == model.config()
    assert [(n, p.shape) for n, p in rebuilt.named_parameters()] == [(n, p.shape) for n, p in model.named_parameters()]
    text = model.summary()
    assert "    0: Conv2D(3, 4, 3, stride=2, padding=1, bias=False)  (4, 3, 3)" in text
    assert "  shortcut: Sequential(2 layers)" in text and "6: GlobalAvgPool2D()" in text
    with pytest.raises(ValueError, match="unknown layer type 'Bogus'"):
        nn.from_config({"type": "Sequential", "layers": [{"type": "Bogus"}]})
    with pytest.raises(ValueError, match="bad configuration for Linear: TypeError"):
        nn.from_config({"type": "Linear", "in_features": 3, "out_features": 2, "colour": "red"})


def test_to_dtype_alone_keeps_backend_and_device():
    """``model.to(dtype=...)`` changes the precision only (it used to move the model to the current
    backend's default device as well)."""
    pytest.importorskip("array_api_strict", reason="array_api_strict not installed")
    model = xpcnn.models.resnet8(in_channels=1, image_size=8).to("array_api_strict", "device1")
    model.to(dtype="float64")
    for slot in [*model.parameters(), *model.buffers()]:
        assert "device1" in str(slot.data.device) and "float64" in str(slot.data.dtype)
        assert type(slot.data).__module__.startswith("array_api_strict")


def test_to_refuses_non_floating_dtypes():
    model = xpcnn.models.lenet5()
    before = model.parameters()[0].data.copy()
    for dtype in ("int32", "complex64", "bogus"):
        with pytest.raises(ValueError, match=f"dtype must be one of float32, float64; got '{dtype}'"):
            model.to(dtype=dtype)
        with pytest.raises(ValueError, match="lenet5: dtype must be one of float32, float64"):
            xpcnn.models.lenet5(dtype=dtype)
    np.testing.assert_array_equal(model.parameters()[0].data, before)


def test_a_float64_gradient_never_turns_float32_parameters_into_float64():
    model = xpcnn.models.lenet5()
    model(np.zeros((2, 1, 28, 28), np.float32))
    with pytest.raises(TypeError, match="dtype of the output"):
        model.backward(np.ones((2, 10)))
    assert all(p.data.dtype == np.float32 and p.grad is None for p in model.parameters())


# --------------------------------------------------------------------------- the tree sees every module
def test_a_summary_between_forward_and_backward_leaves_the_backward_pending():
    """The shape trace runs in a Run of its own: no module's mode or pending backward is touched."""
    model = xpcnn.models.resnet8(in_channels=1, image_size=8, dtype="float64")
    x = np.random.default_rng(0).standard_normal((4, 1, 8, 8))
    model(x)
    before = [b.data.copy() for b in model.buffers()]
    assert "total parameters" in model.summary()
    model.check_input((4, 1, 8, 8))
    assert all(m.training for m in model.modules())
    model.backward(np.ones((4, 10)))
    assert all(p.grad is not None for p in model.parameters())
    for b, old in zip(model.buffers(), before):
        np.testing.assert_array_equal(b.data, old)          # the trace updated no running statistic


def test_module_list_append_insert_and_item_assignment_keep_forward_and_parameters_in_step():
    rng = np.random.default_rng(0)
    model = nn.Sequential(nn.Linear(4, 3, dtype="float64", rng=rng))
    model.append(nn.ReLU())
    model.layers.append(nn.Linear(3, 2, dtype="float64", rng=rng))
    model.insert(1, nn.Tanh())
    assert [type(m).__name__ for m in model.layers] == ["Linear", "Tanh", "ReLU", "Linear"]
    assert [n for n, _ in model.named_parameters()] == ["0.weight", "0.bias", "3.weight", "3.bias"]
    x = rng.standard_normal((5, 4))
    first, last = model[0], model[3]
    expected = np.maximum(np.tanh(x @ first.weight.data.T + first.bias.data), 0) @ last.weight.data.T + last.bias.data
    np.testing.assert_allclose(model(x), expected, rtol=1e-12)
    model[2] = nn.Sigmoid()
    del model[1]
    assert [type(m).__name__ for m in model.layers] == ["Linear", "Sigmoid", "Linear"]
    np.testing.assert_allclose(model(x), 1 / (1 + np.exp(-(x @ first.weight.data.T + first.bias.data)))
                               @ last.weight.data.T + last.bias.data, rtol=1e-12)
    model.backward(np.ones((5, 2)))
    assert all(p.grad is not None for p in model.parameters())
    with pytest.raises(TypeError, match="ModuleList: item 3 must be an xpcnn.nn.Module; got str"):
        model.append("relu")
    rebuilt = nn.from_config(json.loads(json.dumps(model.config())), dtype="float64")
    assert [type(m).__name__ for m in rebuilt.layers] == ["Linear", "Sigmoid", "Linear"]


def test_modules_held_in_a_module_list_or_assigned_later_are_found_and_plain_lists_are_refused():
    class Tower(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList([nn.Linear(4, 3), nn.Linear(3, 2)])

        def _forward(self, x, run):
            caches = []
            for block in self.blocks:
                x, cache = run.call(block, x)
                caches.append(cache)
            return x, caches

    tower = Tower()
    assert [n for n, _ in tower.named_parameters()] == ["blocks.0.weight", "blocks.0.bias", "blocks.1.weight",
                                                        "blocks.1.bias"]
    assert tower(np.ones((2, 4), np.float32)).shape == (2, 2)
    tower.head = nn.Linear(2, 1)                       # attached after construction
    assert "head.weight" in dict(tower.named_parameters())
    model = xpcnn.models.lenet5()
    model.extra = nn.Linear(2, 2)                      # a Sequential's own attribute, next to its layers
    assert "extra.weight" in dict(model.named_parameters())

    class Hidden(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = [nn.Linear(4, 3), nn.Linear(3, 2)]

    with pytest.raises(TypeError, match=r"Hidden.layers is a plain list holding modules.*ModuleList"):
        Hidden()

    class Later(nn.Module):
        def __init__(self):
            super().__init__()
            self.parts = {}

    later = Later()
    later.parts["a"] = nn.Linear(2, 2)                 # mutated after the check at assignment
    with pytest.raises(TypeError, match=r"Later.parts is a plain dict holding modules"):
        later.parameters()
    with pytest.raises(TypeError, match="ModuleList holds modules but has no forward"):
        nn.ModuleList([nn.ReLU()])(np.ones((1, 2), np.float32))


def test_a_module_cycle_is_a_clear_error_and_a_shared_module_is_not():
    shared = nn.Linear(2, 2)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    assert len(model.parameters()) == 2
    model.layers.append(model)
    with pytest.raises(ValueError, match="module cycle: Sequential at '3' contains itself"):
        model.parameters()


# --------------------------------------------------------------------------- a changed tree, a half-loaded model
def test_replacing_a_layer_between_forward_and_backward_is_refused_and_hands_it_no_gradient():
    rng = np.random.default_rng(0)
    model = nn.Sequential(nn.Linear(4, 3, rng=rng), nn.ReLU(), nn.Linear(3, 3, rng=rng), nn.Linear(3, 2, rng=rng))
    x = np.ones((5, 4), np.float32)
    model(x)
    new = nn.Linear(3, 2, rng=rng)
    model[3] = new
    with pytest.raises(RuntimeError, match=r"Sequential.backward: the forward before it no longer applies, as item 3 "
                                           r"of a ModuleList was replaced since; run the training-mode forward again"):
        model.backward(np.ones((5, 2), np.float32))
    assert new.weight.grad is None and all(p.grad is None for p in model.parameters())
    model(x)
    model.backward(np.ones((5, 2), np.float32))                 # a new forward: the new layer trains
    assert new.weight.grad is not None

    class Tower(nn.Module):                                     # a user's own module: an attribute replaced
        def __init__(self):
            super().__init__()
            self.head = nn.Linear(4, 2)

        def _forward(self, x, run):
            return run.call(self.head, x)

        def _backward(self, dy, cache, run, input_grad):
            return self.head._backward(dy, cache, run, input_grad)

    tower = nn.Sequential(Tower())
    tower(x)
    tower[0].head = nn.Linear(4, 2)
    with pytest.raises(RuntimeError, match=r"as Tower.head was reassigned since"):
        tower.backward(np.ones((5, 2), np.float32))
    tower(x)
    tower.eval()
    with pytest.raises(RuntimeError, match="as the model was switched to eval mode since"):
        tower.backward(np.ones((5, 2), np.float32))


@pytest.mark.parametrize("bad, error, words", [
    (np.array(["a", "b"]), TypeError, "bias must hold real numbers (floating or integer); got dtype <U1"),
    (np.array([True, False]), TypeError, "bias must hold real numbers (floating or integer); got dtype bool"),
    (np.array([1 + 1j, 2]), TypeError, "bias must hold real numbers (floating or integer); got dtype complex128"),
    (np.zeros(3), ValueError, r"bias must have shape (2,); got (3,)"),
    ([[1, 2], [3]], ValueError, "bias must be an array of numbers; got list"),
])
def test_load_state_dict_checks_every_value_before_it_assigns_any(bad, error, words):
    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 2))
    before = {name: np.array(value, copy=True) for name, value in model.state_dict().items()}
    state = {name: np.full(value.shape, 7.0) for name, value in before.items()}
    state["2.bias"] = bad                                       # the last value in name order is the bad one
    with pytest.raises(error) as info:
        model.load_state_dict(state)
    assert f"load_state_dict: 2.{words}" in str(info.value)
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(value, before[name])      # nothing was assigned


def test_load_state_dict_widens_float16_and_bfloat16_torch_tensors_exactly():
    torch = pytest.importorskip("torch", reason="torch is not installed")
    layer = nn.Linear(2, 2)
    values = [[0.5, -1.25], [3.0, 0.0078125]]                   # exact in float16 and bfloat16
    for dtype in (torch.float16, torch.bfloat16):
        layer.load_state_dict({"weight": torch.tensor(values, dtype=dtype), "bias": torch.tensor([1, 2], dtype=dtype)})
        np.testing.assert_array_equal(layer.weight.data, np.array(values, np.float32))
        assert layer.weight.data.dtype == np.float32 and isinstance(layer.weight.data, np.ndarray)


def test_a_model_with_a_shared_layer_refuses_a_configuration_it_could_not_be_rebuilt_from():
    shared = nn.Linear(2, 2)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    with pytest.raises(ValueError, match=r"Sequential.config: the module at '2' is the one at '0' \(shared weights\); "
                                         r"a configuration cannot describe a shared module"):
        model.config()


def test_a_sequential_appended_to_itself_is_a_cycle_not_a_shape_error():
    model = nn.Sequential(nn.Linear(3, 2))
    model.append(model)
    with pytest.raises(ValueError, match="module cycle: Sequential at '1' contains itself"):
        model(np.ones((4, 3), np.float32))


def test_three_threads_sharing_a_model_without_its_lock_are_each_told_the_model_is_in_use():
    """A, B and C run forwards in turn, then backwards: C's pending backward is C's; A and B, whose forwards were
    replaced, are each told why (not that they never ran a forward)."""
    import threading

    model = nn.Sequential(nn.Linear(3, 2))
    x, dy = np.ones((4, 3), np.float32), np.ones((4, 2), np.float32)
    turns = [threading.Event() for _ in range(7)]
    outcome = {}

    def worker(name, forward_turn, backward_turn):
        def run():
            turns[forward_turn].wait(30)
            model(x)
            turns[forward_turn + 1].set()
            turns[backward_turn].wait(30)
            try:
                model.backward(dy)
                outcome[name] = "ok"
            except Exception as exc:  # noqa: BLE001 -- inspected below
                outcome[name] = exc
            turns[backward_turn + 1].set() if backward_turn + 1 < len(turns) else None
        return threading.Thread(target=run)

    threads = [worker("A", 0, 3), worker("B", 1, 5), worker("C", 2, 4)]   # backwards: A, then C, then B
    for thread in threads:
        thread.start()
    turns[0].set()
    for thread in threads:
        thread.join(60)
    assert outcome["C"] == "ok"
    for name in "AB":
        assert isinstance(outcome[name], nn.ModelInUseError), (name, outcome[name])
        assert "another thread ran a training-mode forward of this model after this thread's" in str(outcome[name])
