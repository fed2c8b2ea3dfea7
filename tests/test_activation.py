"""xpcnn.functional.activation: values, stability at extremes, finite-difference gradients."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from helpers import assert_gradients_close, assert_like, numerical_gradients
from xpcnn import functional as F

NAMES = ["relu", "leaky_relu", "sigmoid", "tanh", "softmax", "log_softmax"]


def _reference(name, x):
    if name == "relu":
        return np.maximum(x, 0)
    if name == "leaky_relu":
        return np.where(x > 0, x, 0.01 * x)
    if name == "sigmoid":
        return 1 / (1 + np.exp(-x))
    if name == "tanh":
        return np.tanh(x)
    shifted = x - x.max(axis=-1, keepdims=True)
    if name == "softmax":
        return np.exp(shifted) / np.exp(shifted).sum(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _away_from_kinks(rng, shape):
    x = rng.standard_normal(shape)
    return np.where(np.abs(x) < 1e-2, 0.5, x)        # ReLU kinks are at 0; FD step is 1e-6


@pytest.mark.parametrize("name", NAMES)
def test_forward_matches_numpy_reference_in_float32(B, name):
    x = np.random.default_rng(0).standard_normal((4, 7)).astype(np.float32) * 3
    y = getattr(F, name)(B.asarray(x))
    assert_like(y, B.asarray(x))
    want = _reference(name, x.astype(np.float64))
    np.testing.assert_allclose(B.numpy(y), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("name", NAMES)
def test_backward_matches_finite_differences(B, name):
    rng = np.random.default_rng(1)
    x = _away_from_kinks(rng, (3, 5))
    forward, backward = getattr(F, f"{name}_forward"), getattr(F, f"{name}_backward")
    bx = B.asarray(x)
    y, cache = forward(bx)
    dy = rng.standard_normal((3, 5))
    dx = backward(B.asarray(dy), cache)
    assert_like(dx, bx)
    numeric = numerical_gradients(lambda x: float(np.sum(B.numpy(getattr(F, name)(B.asarray(x))) * dy)), [x])
    assert_gradients_close([B.numpy(dx)], numeric)
    assert not np.any(B.numpy(backward(B.xp.zeros_like(y), cache)))
    np.testing.assert_array_equal(B.numpy(bx), x)


def test_extreme_inputs_are_finite_and_silent(B):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = B.numpy(F.sigmoid(B.asarray(np.array([-1000.0, -50.0, 0.0, 50.0, 1000.0]))))
        np.testing.assert_allclose(s, [0.0, 1.9287498479639178e-22, 0.5, 1.0, 1.0], rtol=1e-12, atol=0)
        p = B.numpy(F.softmax(B.asarray(np.array([[1000.0, 0.0], [-1000.0, -1000.0]]))))
        np.testing.assert_array_equal(p, [[1.0, 0.0], [0.5, 0.5]])
        lp = B.numpy(F.log_softmax(B.asarray(np.array([[1000.0, 0.0]]))))
        np.testing.assert_array_equal(lp, [[0.0, -1000.0]])
        s32 = B.numpy(F.sigmoid(B.asarray(np.array([-1000.0, 1000.0], np.float32))))
        np.testing.assert_array_equal(s32, [0.0, 1.0])


def test_nan_propagates_through_relu_and_max_pool(B):
    x = B.asarray(np.array([[[[1.0, np.nan], [3.0, 2.0]]]]))
    assert np.isnan(B.numpy(F.relu(x))[0, 0, 0, 1])
    assert np.isnan(B.numpy(F.max_pool2d(x, 2))[0, 0, 0, 0])


def test_leaky_relu_slope_and_relu_gradient_at_zero(B):
    x = B.asarray(np.array([-2.0, 0.0, 3.0]))
    np.testing.assert_allclose(B.numpy(F.leaky_relu(x, negative_slope=0.2)), [-0.4, 0.0, 3.0])
    _, cache = F.relu_forward(x)
    np.testing.assert_array_equal(B.numpy(F.relu_backward(B.asarray(np.ones(3)), cache)), [0.0, 0.0, 1.0])


def test_activations_reject_integers_and_wrong_dy_shape(B):
    with pytest.raises(TypeError, match="floating dtype"):
        F.relu(B.asarray(np.array([1, -2])))
    _, cache = F.sigmoid_forward(B.asarray(np.ones((2, 3))))
    with pytest.raises(ValueError, match=r"dy must have shape \(2, 3\); got \(3, 2\)"):
        F.sigmoid_backward(B.asarray(np.ones((3, 2))), cache)
