"""xpcnn.functional.loss: cross-entropies and MSE, their gradients and their errors."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from helpers import assert_gradients_close, assert_like, numerical_gradients
from xpcnn import functional as F


def _ce_reference(logits, targets):
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return -(targets * log_probs).sum() / logits.shape[0]


@pytest.mark.parametrize("target_kind", ["labels", "one_hot", "probabilities", "unnormalized"])
def test_softmax_cross_entropy_value_and_gradient(B, target_kind):
    """Targets whose rows do not sum to 1 (as PyTorch allows) get the gradient softmax * row sum - targets."""
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((5, 4)) * 3
    labels = np.array([0, 3, 1, 1, 2])
    one_hot = np.eye(4)[labels]
    targets = {"labels": labels, "one_hot": one_hot, "probabilities": rng.dirichlet(np.ones(4), size=5),
               "unnormalized": rng.uniform(0, 1, (5, 4))}[target_kind]
    dense = one_hot if target_kind == "labels" else targets
    blogits = B.asarray(logits)
    loss, cache = F.softmax_cross_entropy_forward(blogits, B.asarray(targets))
    assert tuple(loss.shape) == ()
    assert_like(loss, blogits)
    np.testing.assert_allclose(float(B.numpy(loss)), _ce_reference(logits, dense), rtol=1e-12)
    dlogits = F.softmax_cross_entropy_backward(1.0, cache)
    assert_like(dlogits, blogits)
    numeric = numerical_gradients(
        lambda z: float(B.numpy(F.softmax_cross_entropy(B.asarray(z), B.asarray(targets)))), [logits])
    assert_gradients_close([B.numpy(dlogits)], numeric)
    scaled = F.softmax_cross_entropy_backward(B.asarray(np.asarray(2.5)), cache)
    np.testing.assert_allclose(B.numpy(scaled), 2.5 * B.numpy(dlogits), rtol=1e-12)


def test_softmax_cross_entropy_matches_torch_and_is_stable():
    torch = pytest.importorskip("torch", reason="torch not installed: no PyTorch comparison")
    logits = np.array([[1000.0, 0.0, -1000.0], [1.0, 2.0, 3.0]])
    labels = np.array([2, 0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss = F.softmax_cross_entropy(logits, labels)
    want = torch.nn.functional.cross_entropy(torch.tensor(logits), torch.tensor(labels))
    np.testing.assert_allclose(float(loss), float(want), rtol=1e-12)


def test_softmax_cross_entropy_empty_batch(B):
    logits = B.xp.zeros((0, 10), dtype=B.xp.float32, device=B.device)
    labels = B.xp.zeros((0,), dtype=B.xp.int64, device=B.device)
    loss, cache = F.softmax_cross_entropy_forward(logits, labels)
    assert float(B.numpy(loss)) == 0.0
    grad = F.softmax_cross_entropy_backward(1.0, cache)
    assert tuple(grad.shape) == (0, 10)
    assert_like(grad, logits)


@pytest.mark.parametrize(
    "labels, error, words",
    [
        (np.array([0.0, 3.0]), TypeError, ["integer class indices", "float64"]),
        (np.array([0, 1, 2]), ValueError, ["shape (2,)", "(3,)"]),
        (np.ones((2, 9)), ValueError, ["labels must have shape (2, 10)"]),
    ],
)
def test_softmax_cross_entropy_rejects_bad_labels(B, labels, error, words):
    with pytest.raises(error) as info:
        F.softmax_cross_entropy(B.asarray(np.zeros((2, 10))), B.asarray(labels))
    for word in words:
        assert word in str(info.value)


@pytest.mark.parametrize("name", ["binary_cross_entropy", "binary_cross_entropy_with_logits", "mse"])
def test_pointwise_losses_value_and_gradient(B, name):
    rng = np.random.default_rng(1)
    raw = rng.standard_normal((4, 3))
    pred = 1 / (1 + np.exp(-raw)) if name == "binary_cross_entropy" else raw
    targets = rng.integers(0, 2, size=(4, 3)).astype(np.float64)
    p = 1 / (1 + np.exp(-raw))
    want = {
        "binary_cross_entropy": -(targets * np.log(p) + (1 - targets) * np.log(1 - p)).mean(),
        "binary_cross_entropy_with_logits": -(targets * np.log(p) + (1 - targets) * np.log(1 - p)).mean(),
        "mse": ((raw - targets) ** 2).mean(),
    }[name]
    bpred = B.asarray(pred)
    loss, cache = getattr(F, f"{name}_forward")(bpred, B.asarray(targets))
    assert_like(loss, bpred)
    np.testing.assert_allclose(float(B.numpy(loss)), want, rtol=1e-12)
    grad = getattr(F, f"{name}_backward")(1.0, cache)
    assert_like(grad, bpred)
    numeric = numerical_gradients(lambda z: float(B.numpy(getattr(F, name)(B.asarray(z), B.asarray(targets)))), [pred])
    assert_gradients_close([B.numpy(grad)], numeric)


def test_binary_cross_entropy_is_clipped_and_logits_version_is_stable(B):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss = F.binary_cross_entropy(B.asarray(np.array([0.0, 1.0])), B.asarray(np.array([1.0, 0.0])))
        value = float(B.numpy(loss))
        assert np.isfinite(value) and value > 30
        grad = B.numpy(F.binary_cross_entropy_backward(1.0, F.binary_cross_entropy_forward(
            B.asarray(np.array([0.0, 1.0])), B.asarray(np.array([1.0, 0.0])))[1]))
        assert np.all(np.isfinite(grad)) and grad[0] < 0 < grad[1]
        big = F.binary_cross_entropy_with_logits(B.asarray(np.array([1000.0, -1000.0])), B.asarray(np.array([0.0, 1.0])))
        np.testing.assert_allclose(float(B.numpy(big)), 1000.0, rtol=1e-12)


def test_pointwise_losses_reject_mismatched_targets(B):
    with pytest.raises(ValueError, match=r"targets must have shape \(4, 1\); got \(4,\)"):
        F.mse(B.asarray(np.zeros((4, 1))), B.asarray(np.zeros(4)))


def test_binary_cross_entropy_of_values_outside_0_1_is_nan(B):
    """PyTorch refuses these; clipping them silently would train on a different loss. Decided on the device (no
    read-back, so a compiled step can hold it): the loss is NaN, which fit stops at (and fit checks its targets
    before training)."""
    for probs, targets in (([-0.5, 0.5], [0.0, 1.0]), ([0.5, 0.5], [0.0, 2.0]), ([0.5, 1.5], [0.0, 1.0])):
        assert np.isnan(float(B.numpy(F.binary_cross_entropy(B.asarray(np.array(probs)), B.asarray(np.array(targets))))))
    ends = F.binary_cross_entropy(B.asarray(np.array([0.0, 1.0])), B.asarray(np.array([0.0, 1.0])))
    assert np.isfinite(float(B.numpy(ends)))          # the ends are fine


def test_none_inputs_name_the_argument():
    with pytest.raises(TypeError, match="relu: x must be an array .*; got None"):
        F.relu(None)
    _, cache = F.relu_forward(np.ones(3))
    with pytest.raises(TypeError, match="relu_backward: dy must be an array .*; got None"):
        F.relu_backward(None, cache)
    with pytest.raises(TypeError, match="conv2d: w must be an array .*; got None"):
        F.conv2d(np.ones((1, 1, 3, 3)), None)


@pytest.mark.filterwarnings("ignore:divide by zero encountered in log")     # NumPy says so for log(0) = -inf
def test_a_label_out_of_range_makes_the_loss_infinite_without_a_read_back(B):
    """Also where that row's log-sum-exp is exactly 0 (one logit dominating), which a division would turn into
    0/0 = NaN."""
    for rows in (np.zeros((3, 4)), np.array([[0.0, 0, 0, 0], [1000.0, 0, 0, 0], [0, 0, 0, 0]])):
        logits = B.asarray(rows)
        assert np.isfinite(B.numpy(F.softmax_cross_entropy(logits, B.asarray(np.array([0, 3, 1])))))
        for bad in ([0, 4, 1], [0, -1, 1]):
            assert B.numpy(F.softmax_cross_entropy(logits, B.asarray(np.array(bad)))) == np.inf


def test_fit_checks_the_labels_once_before_training():
    import xpcnn

    model = xpcnn.models.lenet5()
    data = xpcnn.data.Dataset(np.zeros((4, 1, 28, 28), np.float32), np.array([0, 1, 10, 2]))
    with pytest.raises(ValueError, match=r"train_data: labels must lie in \[0, 10\) for a model with 10 outputs; "
                                         r"got values from 0 to 10"):
        xpcnn.fit(model, xpcnn.nn.CrossEntropyLoss(), xpcnn.optim.SGD(model.parameters()), data, epochs=1,
                  progress=False)
