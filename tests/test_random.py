"""xpcnn.functional.random: counter-based numbers, the same bits on every backend, and dropout on them."""

from __future__ import annotations

import numpy as np
import pytest

import xpcnn
from xpcnn import functional as F
from xpcnn.functional import random as R


def test_uniform_gives_numpys_bits_on_every_backend(B):
    for key in (R.key(0, 0), R.key(7, 3), R.key(2**31 - 1, 10**6)):
        want = R.uniform(key, (3, 4, 5), np, "cpu", np.float64)
        got = R.uniform(key, (3, 4, 5), B.xp, B.device, B.xp.float64)
        np.testing.assert_array_equal(B.numpy(got), want)


def test_uniform_is_uniform_and_keys_give_new_streams():
    u = R.uniform(R.key(1, 0), (1 << 20,), np, "cpu", np.float64)
    assert u.min() >= 0 and u.max() < 1 and abs(u.mean() - 0.5) < 0.002
    counts = np.histogram(u, 16, range=(0, 1))[0]
    assert np.all(np.abs(counts - (1 << 16)) < 6 * 256), counts            # 6 sigma of a binomial count
    assert abs(np.corrcoef(u[:-1], u[1:])[0, 1]) < 0.005                    # neighbours independent
    v = R.uniform(R.key(1, 1), (1 << 20,), np, "cpu", np.float64)
    assert abs(np.corrcoef(u, v)[0, 1]) < 0.005 and np.mean(u == v) < 0.001
    assert len({R.key(s, c) for s in range(20) for c in range(50)}) == 1000


def test_dropout_masks_are_the_same_on_every_backend_and_backward_uses_them(B):
    x = np.random.default_rng(0).standard_normal((4, 3, 5, 5))
    want, cache = F.dropout_forward(x, 0.3, R.key(3, 1))
    got, bcache = F.dropout_forward(B.asarray(x), 0.3, R.key(3, 1))
    np.testing.assert_array_equal(B.numpy(got), want)
    dy = np.ones_like(x)
    np.testing.assert_array_equal(B.numpy(F.dropout_backward(B.asarray(dy), bcache)),
                                  F.dropout_backward(dy, cache))
    kept = np.mean(want != 0)
    assert 0.6 < kept < 0.8
    np.testing.assert_allclose(want[want != 0], x[want != 0] / 0.7, rtol=1e-12)
    with pytest.raises(ValueError, match=r"dropout: p must be a finite number in \[0, 1\); got 1.5"):
        F.dropout(x, 1.5, 0)


def test_the_dropout_layer_draws_new_masks_every_call_alike_alone_and_in_a_container():
    layer = xpcnn.nn.Dropout(0.5, seed=11)
    x = np.ones((8, 2, 3, 3), np.float32)
    first, second = layer(x), layer(x)
    assert not np.array_equal(first, second) and layer.calls == 2
    model = xpcnn.nn.Sequential(xpcnn.nn.Dropout(0.5, seed=11))            # CHWN inside: same elements dropped
    np.testing.assert_array_equal(model(x), first)
    with pytest.raises(ValueError, match="saved state must be"):
        layer.set_extra_state({"state": {"state": 1}})                       # a numpy generator's, from before
