"""functional/normalization.py and nn.BatchNorm2D: against PyTorch, finite differences, both layouts."""

from __future__ import annotations

import numpy as np
import pytest

import xpcnn
from helpers import assert_gradients_close, assert_like, numerical_gradients
from xpcnn import functional as F
from xpcnn import nn


def _case(seed=0, shape=(4, 3, 5, 6)):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape) * 3 + 1.5
    weight, bias = rng.uniform(0.5, 2.0, shape[1]), rng.standard_normal(shape[1])
    mean, var = rng.standard_normal(shape[1]), rng.uniform(0.5, 2.0, shape[1])
    dy = rng.standard_normal(shape)
    return x, weight, bias, mean, var, dy


@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_matches_pytorch(B, training):
    """Output, all three gradients and the new running statistics, float64, on every backend."""
    torch = pytest.importorskip("torch", reason="PyTorch is the reference here (pip install torch==2.13.0)")
    x, weight, bias, mean, var, dy = _case()
    args = [B.asarray(a) for a in (x, weight, bias, mean, var)]
    y, cache, running = F.batch_norm_forward(*args, training=training, momentum=0.2, eps=1e-3)
    dx, dweight, dbias = F.batch_norm_backward(B.asarray(dy), cache)
    assert_like(y, args[0])

    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, weight, bias))
    tmean, tvar = torch.tensor(mean), torch.tensor(var)
    ty = torch.nn.functional.batch_norm(tx, tmean, tvar, tw, tb, training=training, momentum=0.2, eps=1e-3)
    ty.backward(torch.tensor(dy))
    for ours, theirs in ((y, ty), (dx, tx.grad), (dweight, tw.grad), (dbias, tb.grad),
                         (running.mean, tmean), (running.var, tvar)):   # torch updated its stats in place
        np.testing.assert_allclose(B.numpy(ours), theirs.detach().numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_gradients_match_finite_differences(B, training):
    x, weight, bias, mean, var, dy = _case(1, (3, 2, 3, 2))

    def loss(x, weight, bias):
        y = F.batch_norm(*[B.asarray(a) for a in (x, weight, bias, mean, var)], training=training)
        return float(np.sum(B.numpy(y) * dy))

    _, cache, _ = F.batch_norm_forward(*[B.asarray(a) for a in (x, weight, bias, mean, var)], training=training)
    analytic = [B.numpy(g) for g in F.batch_norm_backward(B.asarray(dy), cache)]
    assert_gradients_close(analytic, numerical_gradients(loss, [x, weight, bias]))


def test_batch_norm_layouts_agree(B):
    x, weight, bias, mean, var, dy = _case(2)
    chwn = lambda a: B.asarray(np.ascontiguousarray(a.transpose(1, 2, 3, 0)))   # noqa: E731
    vectors = [B.asarray(a) for a in (weight, bias, mean, var)]
    y, cache, running = F.batch_norm_forward(B.asarray(x), *vectors)
    y2, cache2, running2 = F.batch_norm_forward(chwn(x), *vectors, layout="CHWN")
    np.testing.assert_allclose(B.numpy(y2), B.numpy(y).transpose(1, 2, 3, 0), rtol=1e-12, atol=1e-12)
    for a, b in zip(running, running2):
        np.testing.assert_allclose(B.numpy(a), B.numpy(b), rtol=1e-12)
    grads = F.batch_norm_backward(B.asarray(dy), cache)
    grads2 = F.batch_norm_backward(chwn(dy), cache2)
    np.testing.assert_allclose(B.numpy(grads2[0]), B.numpy(grads[0]).transpose(1, 2, 3, 0), rtol=1e-10, atol=1e-12)
    for a, b in zip(grads[1:], grads2[1:]):
        np.testing.assert_allclose(B.numpy(a), B.numpy(b), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("layout", ["NCHW", "CHWN"])
def test_batch_norm_on_shards_with_reduce_is_the_whole_batch(B, layout):
    """Three unequal shards of one batch, each in its own thread with a shard group's sum as ``reduce``: the
    outputs, input gradients and running statistics are the whole batch's, and the shards' dweight and dbias
    add up to the whole batch's (every backend)."""
    import threading

    from xpcnn.parallel import BARRIER_TIMEOUT_S, _Group

    x, weight, bias, mean, var, dy = _case(3, (7, 3, 4, 5))
    to = (lambda a: a) if layout == "NCHW" else (lambda a: np.ascontiguousarray(a.transpose(1, 2, 3, 0)))
    vectors = [B.asarray(a) for a in (weight, bias, mean, var)]
    y, cache, running = F.batch_norm_forward(B.asarray(to(x)), *vectors, layout=layout)
    whole = F.batch_norm_backward(B.asarray(to(dy)), cache)
    bounds, group, results = [(0, 3), (3, 5), (5, 7)], _Group(3, BARRIER_TIMEOUT_S), [None] * 3

    def shard(i):
        lo, hi = bounds[i]
        reduce = lambda value: group.sum(i, value)   # noqa: E731
        part_y, part_cache, part_running = F.batch_norm_forward(B.asarray(to(x[lo:hi])), *vectors, layout=layout,
                                                                reduce=reduce)
        results[i] = (part_y, part_running, F.batch_norm_backward(B.asarray(to(dy[lo:hi])), part_cache, reduce))

    threads = [threading.Thread(target=shard, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert all(r is not None for r in results), "a shard failed or hung"
    batch_axis = 0 if layout == "NCHW" else 3
    for got, expected in ((np.concatenate([B.numpy(r[0]) for r in results], axis=batch_axis), B.numpy(y)),
                          (np.concatenate([B.numpy(r[2][0]) for r in results], axis=batch_axis), B.numpy(whole[0])),
                          (sum(B.numpy(r[2][1]) for r in results), B.numpy(whole[1])),
                          (sum(B.numpy(r[2][2]) for r in results), B.numpy(whole[2]))):
        np.testing.assert_allclose(got, expected, rtol=1e-11, atol=1e-12)
    for r in results:
        for a, b in zip(r[1], running):
            np.testing.assert_allclose(B.numpy(a), B.numpy(b), rtol=1e-12)


def test_batch_norm_without_affine_or_running_statistics():
    x, *_ = _case(3)
    y, cache, running = F.batch_norm_forward(x, training=False)     # no running stats: batch statistics
    assert running is None
    np.testing.assert_allclose(y.mean(axis=(0, 2, 3)), 0, atol=1e-12)
    np.testing.assert_allclose(y.var(axis=(0, 2, 3)), 1, rtol=1e-4)
    dx, dweight, dbias = F.batch_norm_backward(np.ones_like(x), cache)
    assert dweight is None and dbias is None
    np.testing.assert_allclose(dx, 0, atol=1e-12)                     # a constant shift is normalized away


def test_batch_norm_refuses_bad_input():
    x = np.zeros((2, 3, 4, 4))
    with pytest.raises(ValueError, match=r"batch_norm: weight must have shape \(3,\); got \(4,\)"):
        F.batch_norm(x, np.ones(4))
    with pytest.raises(ValueError, match="more than one value per channel"):
        F.batch_norm(np.zeros((1, 3, 1, 1)), running_mean=np.zeros(3), running_var=np.ones(3))
    with pytest.raises(ValueError, match="give both running_mean and running_var"):
        F.batch_norm(x, running_mean=np.zeros(3))
    with pytest.raises(ValueError, match=r"momentum must be a number in \[0, 1\]"):
        F.batch_norm(x, momentum=1.5)
    _, relu_cache = F.relu_forward(x)
    with pytest.raises(TypeError, match="cache must be the BatchNormCache that batch_norm_forward returned; "
                                        "got a ReLUCache"):
        F.batch_norm_backward(x, relu_cache)


def test_batchnorm2d_layer_train_and_eval_match_pytorch():
    torch = pytest.importorskip("torch", reason="PyTorch is the reference here (pip install torch==2.13.0)")
    ours = nn.BatchNorm2D(3, momentum=0.3, dtype="float64")
    theirs = torch.nn.BatchNorm2d(3, momentum=0.3).double()
    rng = np.random.default_rng(4)
    for step in range(3):
        x = rng.standard_normal((5, 3, 4, 4)) * (step + 1) + step
        np.testing.assert_allclose(ours(x), theirs(torch.tensor(x)).detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ours.running_mean.data, theirs.running_mean.numpy(), rtol=1e-12)
    np.testing.assert_allclose(ours.running_var.data, theirs.running_var.numpy(), rtol=1e-12)
    ours.eval(), theirs.eval()
    x = rng.standard_normal((2, 3, 4, 4))
    np.testing.assert_allclose(ours(x), theirs(torch.tensor(x)).detach().numpy(), rtol=1e-12, atol=1e-12)
    assert [n for n, _ in ours.named_parameters()] == ["weight", "bias"]
    assert [n for n, _ in ours.named_buffers()] == ["running_mean", "running_var"]


def test_batchnorm2d_validates_its_arguments():
    with pytest.raises(ValueError, match="BatchNorm2D: num_features must be >= 1; got 0"):
        nn.BatchNorm2D(0)
    for eps, error in ((0, ValueError), (float("inf"), ValueError), (float("nan"), ValueError), (True, TypeError),
                       ("1e-5", TypeError)):
        with pytest.raises(error, match=f"BatchNorm2D: eps must be a finite number > 0; got {eps!r}"):
            nn.BatchNorm2D(3, eps=eps)
    for momentum, error in ((True, TypeError), (False, TypeError), (-0.1, ValueError), (1.5, ValueError),
                            (None, TypeError)):
        with pytest.raises(error, match=r"BatchNorm2D: momentum must be a finite number in \[0, 1\]; got "):
            nn.BatchNorm2D(3, momentum=momentum)
    with pytest.raises(ValueError, match="BatchNorm2D: dtype must be one of float32, float64; got 'int32'"):
        nn.BatchNorm2D(3, dtype="int32")
    assert nn.BatchNorm2D(3, affine=False).parameters() == []


def test_batchnorm2d_state_moves_with_the_model(B):
    name, _, device = B.name.partition(":")
    layer = nn.BatchNorm2D(2, dtype="float64")
    layer(np.random.default_rng(5).standard_normal((4, 2, 3, 3)))
    before = [b.data.copy() for b in layer.buffers()]
    layer.to(name, device or None)
    for buffer, host in zip(layer.buffers(), before):
        assert buffer.data.device == B.device
        np.testing.assert_array_equal(B.numpy(buffer.data), host)
    with xpcnn.use_backend(name, device or None):
        layer(B.asarray(np.ones((4, 2, 3, 3))))          # runs there, statistics stay there
    assert all(b.data.device == B.device for b in layer.buffers())
