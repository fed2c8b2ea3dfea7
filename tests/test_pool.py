"""xpcnn.functional.pool: max and average pooling, including the first-argmax rule on tie-rich inputs."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import strategies as st

import reference
from helpers import assert_gradients_close, assert_like, numerical_gradients, per_backend_examples
from xpcnn import functional as F

@st.composite
def pool_cases(draw):
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    stride = draw(st.one_of(st.none(), st.tuples(st.integers(1, 3), st.integers(1, 3))))
    padding = (draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2)))
    h = max(1, kh - 2 * padding[0] + draw(st.integers(0, 6)))
    w = max(1, kw - 2 * padding[1] + draw(st.integers(0, 6)))
    n = draw(st.sampled_from([0, 1, 2]))
    c = draw(st.integers(1, 3))
    return dict(shape=(n, c, h, w), kernel=(kh, kw), stride=stride, padding=padding,
                seed=draw(st.integers(0, 2**31 - 1)), ties=draw(st.booleans()))


def _input(case):
    rng = np.random.default_rng(case["seed"])
    if case["ties"]:   # MNIST-like: mostly zeros, a few repeated levels
        return rng.choice([0.0, 0.0, 0.0, 0.5, 1.0], size=case["shape"])
    return rng.standard_normal(case["shape"])


@per_backend_examples(case=pool_cases())
def test_max_pool2d_forward_and_backward_match_loop_reference(B, case):
    x = _input(case)
    stride = case["stride"] or case["kernel"]
    bx = B.asarray(x)
    y, cache = F.max_pool2d_forward(bx, case["kernel"], case["stride"], case["padding"])
    want = reference.max_pool2d(x, case["kernel"], stride, case["padding"])
    assert_like(y, bx)
    np.testing.assert_array_equal(B.numpy(y), want)
    dy = np.random.default_rng(case["seed"] + 1).standard_normal(want.shape)
    dx = F.max_pool2d_backward(B.asarray(dy), cache)
    assert_like(dx, bx)
    expected = reference.max_pool2d_backward(x, dy, case["kernel"], stride, case["padding"])
    np.testing.assert_allclose(B.numpy(dx), expected, rtol=1e-12, atol=1e-12)


@per_backend_examples(case=pool_cases())
def test_avg_pool2d_forward_matches_loop_reference_and_backward_is_its_adjoint(B, case):
    x = _input(case)
    stride = case["stride"] or case["kernel"]
    bx = B.asarray(x)
    y, cache = F.avg_pool2d_forward(bx, case["kernel"], case["stride"], case["padding"])
    want = reference.avg_pool2d(x, case["kernel"], stride, case["padding"])
    assert_like(y, bx)
    np.testing.assert_allclose(B.numpy(y), want, rtol=1e-12, atol=1e-12)
    dy = np.random.default_rng(case["seed"] + 1).standard_normal(want.shape)
    dx = F.avg_pool2d_backward(B.asarray(dy), cache)
    assert_like(dx, bx)
    # avg pooling is linear: <dy, pool(x)> == <pool_backward(dy), x>
    np.testing.assert_allclose(np.sum(B.numpy(dx) * x), np.sum(dy * want), rtol=1e-10, atol=1e-10)


def test_max_pool2d_sends_each_window_gradient_to_exactly_one_tied_element(B):
    """MNIST-like input: zero borders and equal values everywhere. A rule that feeds every element
    equal to the max would hand out far more than the total incoming gradient."""
    rng = np.random.default_rng(0)
    x = np.zeros((4, 3, 12, 12))
    x[:, :, 3:9, 3:9] = rng.choice([0.0, 1.0], size=(4, 3, 6, 6))     # saturated strokes, as in MNIST
    for kernel, stride in [((2, 2), None), ((3, 3), (2, 2)), ((3, 3), (1, 1))]:
        bx = B.asarray(x)
        y, cache = F.max_pool2d_forward(bx, kernel, stride)
        dx = B.numpy(F.max_pool2d_backward(B.xp.ones(y.shape, dtype=y.dtype, device=B.device), cache))
        assert dx.sum() == np.prod(y.shape), f"gradient mass {dx.sum()} for {np.prod(y.shape)} windows"
        s = stride or kernel
        np.testing.assert_array_equal(dx, reference.max_pool2d_backward(x, np.ones(y.shape), kernel, s, (0, 0)))


def test_max_pool2d_nan_window_gradient_goes_to_its_last_element(B):
    """A window whose maximum is NaN has no meaningful argmax; its gradient is neither lost nor
    duplicated but goes to the window's last element (PyTorch picks the NaN's position instead)."""
    x = np.array([[[[1.0, np.nan, 5.0, 4.0], [3.0, 2.0, 4.0, 5.0]]]])
    y, cache = F.max_pool2d_forward(B.asarray(x), 2)
    dx = B.numpy(F.max_pool2d_backward(B.asarray(np.array([[[[10.0, 20.0]]]])), cache))
    np.testing.assert_array_equal(dx, [[[[0.0, 0.0, 20.0, 0.0], [0.0, 10.0, 0.0, 0.0]]]])

def test_max_pool2d_backward_matches_finite_differences_away_from_ties(B):
    rng = np.random.default_rng(1)
    x = rng.permutation(2 * 3 * 7 * 6).reshape(2, 3, 7, 6) * 0.01      # distinct values 0.01 apart
    for kernel, stride, padding in [(2, None, 0), (3, 2, 1), ((2, 3), (1, 2), (1, 1))]:
        y, cache = F.max_pool2d_forward(B.asarray(x), kernel, stride, padding)
        dy = rng.standard_normal(tuple(y.shape))
        numeric = numerical_gradients(
            lambda x: float(np.sum(B.numpy(F.max_pool2d(B.asarray(x), kernel, stride, padding)) * dy)), [x])
        assert_gradients_close([B.numpy(F.max_pool2d_backward(B.asarray(dy), cache))], numeric)


def test_avg_pool2d_backward_matches_finite_differences(B):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 2, 7, 5))
    for kernel, stride, padding in [(2, None, 0), (3, 2, 1), ((3, 2), (2, 1), (1, 0))]:
        y, cache = F.avg_pool2d_forward(B.asarray(x), kernel, stride, padding)
        dy = rng.standard_normal(tuple(y.shape))
        numeric = numerical_gradients(
            lambda x: float(np.sum(B.numpy(F.avg_pool2d(B.asarray(x), kernel, stride, padding)) * dy)), [x])
        assert_gradients_close([B.numpy(F.avg_pool2d_backward(B.asarray(dy), cache))], numeric)


@pytest.mark.parametrize("op", ["max", "avg"])
def test_pooling_float32_same_on_every_backend_and_inputs_unchanged(B, op):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 4, 9, 8)).astype(np.float32)
    forward, backward = getattr(F, f"{op}_pool2d_forward"), getattr(F, f"{op}_pool2d_backward")
    want = getattr(reference, f"{op}_pool2d")(x, (3, 3), (2, 2), (1, 1))
    bx = B.asarray(x)
    y, cache = forward(bx, 3, 2, 1)
    np.testing.assert_allclose(B.numpy(y), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    assert_like(y, bx)
    zero = B.xp.zeros(y.shape, dtype=y.dtype, device=B.device)
    assert not np.any(B.numpy(backward(zero, cache)))
    backward(B.xp.ones(y.shape, dtype=y.dtype, device=B.device), cache)
    np.testing.assert_array_equal(B.numpy(bx), x)


def test_max_pool2d_matches_torch_on_ties():
    torch = pytest.importorskip("torch", reason="torch not installed: no PyTorch comparison")
    rng = np.random.default_rng(4)
    x = rng.choice([0.0, 0.0, 1.0, 2.0], size=(2, 3, 10, 9))
    dy_shape = F.max_pool2d(x, 3, 2, 1).shape
    dy = rng.standard_normal(dy_shape)
    y, cache = F.max_pool2d_forward(x, 3, 2, 1)
    tx = torch.tensor(x, requires_grad=True)
    ty = torch.nn.functional.max_pool2d(tx, 3, 2, 1)
    ty.backward(torch.tensor(dy))
    np.testing.assert_array_equal(y, ty.detach().numpy())
    np.testing.assert_allclose(F.max_pool2d_backward(dy, cache), tx.grad.numpy(), rtol=1e-12, atol=1e-12)


def test_pooling_empty_batch(B):
    x = B.xp.zeros((0, 2, 6, 6), dtype=B.xp.float32, device=B.device)
    for op in ("max", "avg"):
        y, cache = getattr(F, f"{op}_pool2d_forward")(x, 2)
        assert tuple(y.shape) == (0, 2, 3, 3)
        dx = getattr(F, f"{op}_pool2d_backward")(y, cache)
        assert tuple(dx.shape) == (0, 2, 6, 6)
        assert_like(dx, x)


@pytest.mark.parametrize("op", [F.max_pool2d, F.avg_pool2d])
@pytest.mark.parametrize(
    "xshape, kwargs, error, words",
    [
        ((2, 6, 6), dict(kernel_size=2), ValueError, ["x must be 4-D", "(2, 6, 6)"]),
        ((1, 1, 6, 6), dict(kernel_size=2.0), TypeError, ["kernel_size must be an integer", "2.0"]),
        ((1, 1, 6, 6), dict(kernel_size=0), ValueError, ["kernel_size must be >= 1"]),
        ((1, 1, 6, 6), dict(kernel_size=2, stride=0), ValueError, ["stride must be >= 1"]),
        ((1, 1, 6, 6), dict(kernel_size=3, padding=2), ValueError, ["at most half the kernel size", "(2, 2)"]),
        ((1, 1, 6, 6), dict(kernel_size=2, padding=-1), ValueError, ["padding must be >= 0"]),
        ((1, 1, 3, 3), dict(kernel_size=4, padding=0), ValueError, ["larger than the padded input"]),
    ],
)
def test_pooling_rejects_bad_input(B, op, xshape, kwargs, error, words):
    with pytest.raises(error) as info:
        op(B.asarray(np.ones(xshape, np.float32)), **kwargs)
    for word in words:
        assert word in str(info.value)


@per_backend_examples(case=pool_cases())
def test_pooling_chwn_layout_matches_nchw(B, case):
    x = B.asarray(_input(case))
    dy_host = None
    for op in ("max", "avg"):
        forward, backward = getattr(F, f"{op}_pool2d_forward"), getattr(F, f"{op}_pool2d_backward")
        y, cache = forward(x, case["kernel"], case["stride"], case["padding"])
        y2, cache2 = forward(B.xp.permute_dims(x, (1, 2, 3, 0)), case["kernel"], case["stride"], case["padding"],
                             layout="CHWN")
        np.testing.assert_array_equal(B.numpy(B.xp.permute_dims(y2, (3, 0, 1, 2))), B.numpy(y))
        dy_host = np.random.default_rng(case["seed"]).standard_normal(tuple(y.shape))
        dy = B.asarray(dy_host)
        dx = backward(dy, cache)
        dx2 = backward(B.xp.permute_dims(dy, (1, 2, 3, 0)), cache2)
        np.testing.assert_allclose(B.numpy(B.xp.permute_dims(dx2, (3, 0, 1, 2))), B.numpy(dx), rtol=1e-12, atol=1e-12)
