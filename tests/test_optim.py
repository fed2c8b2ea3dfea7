"""xpcnn.optim: SGD, Adam, AdamW against PyTorch's, schedules, and state round trips."""

from __future__ import annotations

import math

import numpy as np
import pytest

import xpcnn
from xpcnn import optim
from xpcnn.nn import Parameter


def _run(make, steps=6, backend=None):
    rng = np.random.default_rng(0)
    start = rng.standard_normal((3, 4))
    grads = [rng.standard_normal((3, 4)) for _ in range(steps)]
    p = Parameter(start.copy())
    opt = make([p])
    for g in grads:
        p.grad = g
        opt.step()
    return start, grads, p.data


CASES = {
    "sgd": (lambda ps: optim.SGD(ps, lr=0.1), "SGD", dict(lr=0.1)),
    "momentum": (lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.01), "SGD",
                 dict(lr=0.1, momentum=0.9, weight_decay=0.01)),
    "nesterov": (lambda ps: optim.SGD(ps, lr=0.1, momentum=0.8, nesterov=True), "SGD",
                 dict(lr=0.1, momentum=0.8, nesterov=True)),
    "adam": (lambda ps: optim.Adam(ps, lr=0.01, weight_decay=0.1), "Adam", dict(lr=0.01, weight_decay=0.1)),
    "adamw": (lambda ps: optim.AdamW(ps, lr=0.01, weight_decay=0.1), "AdamW", dict(lr=0.01, weight_decay=0.1)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_optimizers_match_pytorch(case):
    torch = pytest.importorskip("torch", reason="torch not installed: no PyTorch comparison")
    make, torch_name, kwargs = CASES[case]
    start, grads, ours = _run(make)
    t = torch.nn.Parameter(torch.tensor(start))
    opt = getattr(torch.optim, torch_name)([t], **kwargs)
    for g in grads:
        t.grad = torch.tensor(g)
        opt.step()
    np.testing.assert_allclose(ours, t.detach().numpy(), rtol=1e-12, atol=1e-12)


def test_sgd_step_rebinds_and_skips_parameters_without_gradients():
    a, b = Parameter(np.ones(2)), Parameter(np.ones(2))
    original = a.data
    opt = optim.SGD([a, b], lr=0.5)
    a.grad = np.array([1.0, 2.0])
    opt.step()
    np.testing.assert_array_equal(a.data, [0.5, 0.0])
    assert original is not a.data and original.tolist() == [1.0, 1.0]
    np.testing.assert_array_equal(b.data, [1.0, 1.0])


def test_state_dict_round_trip_and_move_between_backends(B):
    name, _, device = B.name.partition(":")
    with xpcnn.use_backend(name, device or None):
        p = Parameter(xpcnn.asarray(np.ones(3)))
        opt = optim.Adam([p])
        p.grad = xpcnn.asarray(np.array([1.0, -1.0, 0.5]))
        opt.step()
        state = opt.state_dict()
    fresh = optim.Adam([Parameter(np.ones(3))])
    fresh.load_state_dict(state)
    assert fresh.steps == 1
    assert isinstance(fresh.state_dict()["state"][0]["m"], np.ndarray)
    np.testing.assert_allclose(fresh.state_dict()["state"][0]["m"], [0.1, -0.1, 0.05])
    with pytest.raises(ValueError, match="optimizer state is for Adam, not SGD"):
        optim.SGD([Parameter(np.ones(3))]).load_state_dict(state)


def test_schedules():
    opt = optim.SGD([Parameter(np.ones(1))], lr=0.1)
    cosine = optim.CosineLR(opt, total_epochs=4, min_lr=0.001)
    assert cosine.set_epoch(0) == pytest.approx(0.1)
    assert cosine.set_epoch(2) == pytest.approx(0.0505)
    assert cosine.set_epoch(4) == pytest.approx(0.001) and opt.lr == pytest.approx(0.001)
    step = optim.StepLR(opt, step_size=2, gamma=0.5, base_lr=0.2)
    assert [step.lr_at(e) for e in (0, 1.9, 2, 5)] == pytest.approx([0.2, 0.2, 0.1, 0.05])


@pytest.mark.parametrize("bad, words", [
    (lambda: optim.SGD([], lr=0.1), "params is empty"),
    (lambda: optim.SGD([np.ones(2)], lr=0.1), "must be an xpcnn.nn.Parameter"),
    (lambda: optim.SGD([Parameter(np.ones(1))], lr=0), "SGD: lr must be a finite number > 0; got 0"),
    (lambda: optim.SGD([Parameter(np.ones(1))], lr=float("inf")), "lr must be a finite number > 0; got inf"),
    (lambda: optim.SGD([Parameter(np.ones(1))], lr="0.1"), "lr must be a finite number > 0; got '0.1'"),
    (lambda: optim.SGD([Parameter(np.ones(1))], lr=0.1, momentum=1.0), "momentum must be a finite number in [0, 1)"),
    (lambda: optim.SGD([Parameter(np.ones(1))], lr=0.1, momentum=-5), "momentum must be a finite number in [0, 1); got -5"),
    (lambda: optim.SGD([Parameter(np.ones(1))], lr=0.1, weight_decay=-1), "weight_decay must be a finite number >= 0"),
    (lambda: optim.SGD([Parameter(np.ones(1))], lr=0.1, nesterov=True), "nesterov=True needs a momentum"),
    (lambda: optim.Adam([Parameter(np.ones(1))], betas=(0.9, float("nan"))), "betas must be a finite number in [0, 1)"),
    (lambda: optim.Adam([Parameter(np.ones(1))], eps=0), "Adam: eps must be a finite number > 0"),
])
def test_bad_hyperparameters_are_refused(bad, words):
    with pytest.raises((ValueError, TypeError)) as info:
        bad()
    assert words in str(info.value)


def test_cosine_ends_at_min_lr():
    assert math.isclose(optim.CosineLR(optim.SGD([Parameter(np.ones(1))], lr=1.0), 3).lr_at(3), 0.0, abs_tol=1e-15)


def test_a_schedule_made_after_loading_continues_from_the_initial_lr():
    """Resume from Python: the optimizer's state carries its initial lr, so CosineLR needs no base_lr."""
    opt = optim.SGD([Parameter(np.ones(1))], lr=0.4, momentum=0.9)
    optim.CosineLR(opt, 4).set_epoch(2.5)
    resumed = optim.SGD([Parameter(np.ones(1))], lr=123.0, momentum=0.9)
    resumed.load_state_dict(opt.state_dict())
    assert resumed.initial_lr == 0.4
    assert optim.CosineLR(resumed, 4).lr_at(3) == optim.CosineLR(opt, 4).lr_at(3)


def test_sgd_momentum_is_not_the_gradient_array():
    """With gradients in a reused buffer (as data-parallel training has), momentum must not change with it."""
    p = Parameter(np.zeros(3))
    opt = optim.SGD([p], lr=0.1, momentum=0.9)
    grad = np.ones(3)
    p.grad = grad
    opt.step()
    grad[:] = 100.0                       # the buffer is refilled for the next step
    np.testing.assert_array_equal(opt.state_dict()["state"][0]["momentum"], np.ones(3))


def test_loading_optimizer_state_of_the_wrong_shape_is_refused():
    opt = optim.SGD([Parameter(np.ones(2))], lr=0.1, momentum=0.9)
    state = opt.state_dict()
    state["state"] = [{"momentum": np.ones(3)}]
    with pytest.raises(ValueError, match=r"optimizer state 0/momentum has shape \(3,\); its parameter has \(2,\)"):
        opt.load_state_dict(state)


def test_parameters_without_a_gradient_and_their_state_are_left_alone():
    a, b = Parameter(np.ones(2)), Parameter(np.ones(3))
    opt = optim.SGD([a, b], lr=0.1, momentum=0.9)
    a.grad, b.grad = np.ones(2), np.ones(3)
    opt.step()
    a.grad, b.grad = np.ones(2), None
    opt.step()
    np.testing.assert_allclose(b.data, 0.9)                       # only the first step moved b
    np.testing.assert_allclose(opt.state_dict()["state"][1]["momentum"], 1.0)   # and its momentum was kept
    np.testing.assert_allclose(a.data, 1 - 0.1 - 0.1 * 1.9)


def test_one_flat_update_for_all_parameters_and_rebinding_is_noticed():
    """Parameters become views of one flat array; one rebound from outside is gathered again."""
    model = xpcnn.models.lenet5()
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for p in model.parameters():
        p.grad = np.ones(p.shape, np.float32)
    opt.step()
    flat = opt.flat_parameters()
    assert flat.shape == (61_706,) and all(np.shares_memory(p.data, flat) for p in model.parameters())
    model.parameters()[0].data = np.zeros((6, 1, 5, 5), np.float32)       # e.g. load_state_dict
    opt.step(flat_grad=np.zeros(61_706, np.float32))
    np.testing.assert_allclose(model.parameters()[0].data, -0.1 * 0.9)   # momentum 1 kept going from the zeros


def test_build_and_schedule_by_name_as_the_command_line_does():
    params = xpcnn.models.lenet5().parameters()
    sgd = xpcnn.optim.build("sgd", params, lr=0.1)
    assert isinstance(sgd, xpcnn.optim.SGD) and sgd.hyper["momentum"] == 0.9
    assert isinstance(xpcnn.optim.build("adamw", params, lr=0.1, weight_decay=0.01), xpcnn.optim.AdamW)
    with pytest.raises(ValueError, match="momentum is for the sgd optimizer; adam has none"):
        xpcnn.optim.build("adam", params, lr=0.1, momentum=0.5)
    with pytest.raises(ValueError, match="optimizer must be one of sgd, adam, adamw; got 'lbfgs'"):
        xpcnn.optim.build("lbfgs", params, lr=0.1)
    assert isinstance(xpcnn.optim.schedule("cosine", sgd, 10), xpcnn.optim.CosineLR)
    assert xpcnn.optim.schedule("step", sgd, 9).step_size == 3
    assert xpcnn.optim.schedule("none", sgd, 9) is None
    with pytest.raises(ValueError, match="schedule must be one of cosine, step, none; got 'linear'"):
        xpcnn.optim.schedule("linear", sgd, 9)


def test_an_update_is_a_function_of_its_arguments_so_lr_and_step_can_be_arrays(B):
    """What a compiled training step needs: the same update with the learning rate and the step count passed
    in as 0-d arrays gives the numbers it gives with Python numbers (Adam's bias correction included)."""
    rng = np.random.default_rng(3)
    data, grad = rng.standard_normal(7), rng.standard_normal(7)
    for make in (lambda p: optim.Adam(p, lr=0.01, weight_decay=0.1), lambda p: optim.SGD(p, lr=0.1, momentum=0.9)):
        opt = make([Parameter(B.asarray(data))])
        d1 = d2 = B.asarray(data)
        numbers_state, arrays_state = opt.initial_state(d1), opt.initial_state(d1)
        for step in (1, 2, 3):
            d1 = opt._update(d1, B.asarray(grad), numbers_state, 0.01, step)
            d2 = opt._update(d2, B.asarray(grad), arrays_state, B.asarray(np.float64(0.01)), B.asarray(np.float64(step)))
        np.testing.assert_allclose(B.numpy(d2), B.numpy(d1), rtol=1e-12)


def test_apply_then_commit_is_a_step_and_gradients_may_be_given_as_a_list():
    """The pure apply and the public commit make one step (what TrainStep does): the parameters become views of
    the new flat array, the state and the step counter advance; flat_gradients takes the gradients as a list
    (None for zeros) and refuses a list of the wrong length."""
    rng = np.random.default_rng(0)
    values = [rng.standard_normal((2, 3)), rng.standard_normal(4)]
    grads = [rng.standard_normal((2, 3)), None]
    by_step, by_commit = ([Parameter(v.copy()) for v in values] for _ in range(2))
    stepped, committed = optim.Adam(by_step, lr=0.1), optim.Adam(by_commit, lr=0.1)
    by_step[0].grad = grads[0]
    stepped.step()
    flat = committed.flat_parameters()
    grad = committed.flat_gradients(grads)
    np.testing.assert_array_equal(grad, np.concatenate([grads[0].ravel(), np.zeros(4)]))
    new, state = committed.apply(flat, grad, committed.initial_state(flat), committed.lr, committed.steps + 1, (1,))
    committed.commit(new, state)
    assert committed.steps == stepped.steps == 1
    for a, b in zip(by_commit, by_step):
        np.testing.assert_array_equal(a.data, b.data)
        assert np.shares_memory(a.data, committed.flat_parameters())
    for name in stepped.state:
        np.testing.assert_array_equal(committed.state[name], stepped.state[name])
    with pytest.raises(ValueError, match=r"Adam.flat_gradients: grads must hold one entry per parameter \(2\); "
                                         r"got 1"):
        committed.flat_gradients(grads[:1])


@pytest.mark.parametrize("bad, error, words", [
    (lambda opt: optim.StepLR(opt, step_size=True), TypeError, "StepLR: step_size must be an integer"),
    (lambda opt: optim.StepLR(opt, step_size=0), ValueError, "StepLR: step_size must be >= 1; got 0"),
    (lambda opt: optim.StepLR(opt, 2, gamma=-1), ValueError, "StepLR: gamma must be a finite number > 0; got -1"),
    (lambda opt: optim.CosineLR(opt, 0), ValueError, "CosineLR: total_epochs must be a finite number > 0; got 0"),
    (lambda opt: optim.CosineLR(opt, 3, min_lr=-0.1), ValueError, "CosineLR: min_lr must be a finite number >= 0"),
    (lambda opt: optim.CosineLR(opt, 3, base_lr="1"), TypeError, "CosineLR: base_lr must be a finite number > 0"),
    (lambda opt: optim.CosineLR([opt], 3), TypeError, "CosineLR: optimizer must be an xpcnn.optim.Optimizer; got list"),
])
def test_schedules_check_their_numbers_as_the_optimizers_do(bad, error, words):
    with pytest.raises(error) as info:
        bad(optim.SGD([Parameter(np.ones(1))], lr=0.1))
    assert words in str(info.value)


def test_a_frozen_parameter_keeps_its_values_and_its_mask_is_made_once():
    """A parameter without a gradient (a frozen layer) keeps its values and its momentum; the mask that says so is
    made on the parameters' device once, not uploaded at every step (a copy to the GPU each time)."""
    import xpcnn

    model = xpcnn.nn.Sequential(xpcnn.nn.Linear(3, 4), xpcnn.nn.Linear(4, 2))
    opt = xpcnn.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    frozen = model.layers[0].weight.data.copy()
    for _ in range(3):
        for p in model.parameters()[2:]:
            p.grad = np.ones_like(p.data)
        opt.step()
        opt.zero_grad()
    np.testing.assert_array_equal(model.layers[0].weight.data, frozen)
    assert not np.array_equal(model.layers[1].weight.data, np.zeros_like(model.layers[1].weight.data))
    assert len(opt._masks) == 1
    (mask,) = opt._masks.values()
    assert int(mask.sum()) == 3 * 4 + 4


@pytest.mark.parametrize("move", [{"backend": "torch"}, {"dtype": "float64"}])
def test_the_optimizer_state_follows_a_moved_model(move):
    """model.to(...) after a momentum step: the next step moves the momentum along with the parameters (it was a
    TypeError from mixing NumPy and torch arrays)."""
    import xpcnn

    if "backend" in move:
        pytest.importorskip("torch", reason="torch not installed: no second backend to move to")
    model = xpcnn.nn.Sequential(xpcnn.nn.Linear(3, 2))
    opt = xpcnn.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for p in model.parameters():
        p.grad = np.ones_like(p.data)
    opt.step()
    model.to(**move)
    for p in model.parameters():
        p.grad = xpcnn.backend.asarray_like(np.ones(p.shape), p.data, dtype=p.data.dtype)
    opt.step()
    momentum = opt.state["momentum"]
    assert type(momentum) is type(model.parameters()[0].data) and momentum.dtype == model.parameters()[0].data.dtype
    np.testing.assert_allclose(xpcnn.to_numpy(momentum), 1.9)
