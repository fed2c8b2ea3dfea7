"""xpcnn.functional.linear: dense layer and flatten."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import assert_gradients_close, assert_like, numerical_gradients
from xpcnn import functional as F


@pytest.mark.parametrize("x_shape", [(4, 5), (2, 3, 5), (5,)])
def test_linear_forward_and_finite_difference_backward(B, x_shape):
    rng = np.random.default_rng(0)
    x, w, b = rng.standard_normal(x_shape), rng.standard_normal((3, 5)), rng.standard_normal(3)
    bx, bw, bb = B.asarray(x), B.asarray(w), B.asarray(b)
    y, cache = F.linear_forward(bx, bw, bb)
    assert_like(y, bx)
    np.testing.assert_allclose(B.numpy(y), x @ w.T + b, rtol=1e-12)
    dy = rng.standard_normal(tuple(y.shape))
    grads = F.linear_backward(B.asarray(dy), cache)
    for g, like in zip(grads, (bx, bw, bb)):
        assert_like(g, like)
        assert g.shape == like.shape

    def loss(x, w, b):
        return float(np.sum(B.numpy(F.linear(B.asarray(x), B.asarray(w), B.asarray(b))) * dy))

    assert_gradients_close([B.numpy(g) for g in grads], numerical_gradients(loss, [x, w, b]))
    for a, host in zip((bx, bw, bb), (x, w, b)):
        np.testing.assert_array_equal(B.numpy(a), host)


def test_linear_without_bias_and_empty_batch(B):
    w = B.asarray(np.ones((3, 4), np.float32))
    x = B.xp.zeros((0, 4), dtype=B.xp.float32, device=B.device)
    y, cache = F.linear_forward(x, w)
    assert tuple(y.shape) == (0, 3)
    dx, dw, db = F.linear_backward(y, cache)
    assert db is None and tuple(dx.shape) == (0, 4) and tuple(dw.shape) == (3, 4)
    assert not np.any(B.numpy(dw))


def test_linear_rejects_bad_shapes(B):
    w = B.asarray(np.ones((3, 4)))
    with pytest.raises(ValueError, match=r"in_features=4.*got x shape \(2, 5\)"):
        F.linear(B.asarray(np.ones((2, 5))), w)
    with pytest.raises(ValueError, match=r"b must have shape \(3,\)"):
        F.linear(B.asarray(np.ones((2, 4))), w, B.asarray(np.ones(4)))
    with pytest.raises(ValueError, match="w must be 2-D"):
        F.linear(B.asarray(np.ones((2, 4))), B.asarray(np.ones(4)))


def test_flatten_round_trip(B):
    x = B.asarray(np.arange(24.0).reshape(2, 3, 2, 2))
    y, cache = F.flatten_forward(x)
    assert tuple(y.shape) == (2, 12)
    dx = F.flatten_backward(y, cache)
    assert_like(dx, x)
    np.testing.assert_array_equal(B.numpy(dx), B.numpy(x))
    empty = B.xp.zeros((0, 3, 2, 2), dtype=B.xp.float64, device=B.device)
    assert tuple(F.flatten(empty).shape) == (0, 12)
