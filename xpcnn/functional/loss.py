"""Loss functions, forward and backward.

Every forward returns ``(loss, cache)`` with ``loss`` a 0-d array of the input's
dtype; every backward takes ``(dloss, cache)`` (``dloss`` a number or a 0-d array,
1.0 when the loss is the final output) and returns the gradient for the
prediction argument only: targets are data, not parameters.

Reductions: softmax cross-entropy averages over the batch (rows);
binary cross-entropy and MSE average over every element, as PyTorch's default
``reduction="mean"``. An empty batch gives a loss of 0 and an empty gradient.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from array_api_compat import device

from ._checks import check_cache, check_floating, check_ndim, check_shape, namespace
from .activation import sigmoid_forward

__all__ = [
    "BinaryCrossEntropyCache", "BinaryCrossEntropyWithLogitsCache", "MSECache", "SoftmaxCrossEntropyCache",
    "binary_cross_entropy", "binary_cross_entropy_backward", "binary_cross_entropy_forward",
    "binary_cross_entropy_with_logits", "binary_cross_entropy_with_logits_backward",
    "binary_cross_entropy_with_logits_forward",
    "mse", "mse_backward", "mse_forward",
    "softmax_cross_entropy", "softmax_cross_entropy_backward", "softmax_cross_entropy_forward",
]


def _mean(xp: Any, total: Any, count: int) -> Any:
    return total / count if count else xp.zeros_like(total)


def _scale(dloss: Any, count: int) -> Any:
    return dloss / count if count else dloss * 0


def _pair_inputs(op: str, pred_name: str, pred: Any, targets: Any) -> Any:
    xp = namespace(op, **{pred_name: pred, "targets": targets})
    check_floating(op, pred_name, pred, xp)
    check_shape(op, "targets", targets, pred.shape)
    return xp


def _targets_like(xp: Any, targets: Any, pred: Any) -> Any:
    return targets if targets.dtype == pred.dtype else xp.astype(targets, pred.dtype)


# --------------------------------------------------------------------------- softmax cross-entropy
def _class_targets(op: str, xp: Any, logits: Any, labels: Any) -> Any:
    """Probability targets (N, K) from integer labels (N,) or from (N, K) targets."""
    n, classes = logits.shape
    if labels.ndim == 2:
        check_shape(op, "labels", labels, logits.shape)
        check_floating(op, "labels (one-hot or probability targets)", labels, xp)
        return _targets_like(xp, labels, logits)
    if labels.ndim != 1 or labels.shape[0] != n:
        raise ValueError(
            f"{op}: labels must be integer class indices of shape ({n},) or targets of shape ({n}, {classes}); "
            f"got shape {tuple(labels.shape)}"
        )
    if not xp.isdtype(labels.dtype, "integral"):
        raise TypeError(
            f"{op}: labels of shape ({n},) must be integer class indices; got dtype {labels.dtype} "
            f"(convert with xp.astype(labels, xp.int64), or pass one-hot targets of shape ({n}, {classes}))"
        )
    classes_row = xp.arange(classes, dtype=labels.dtype, device=device(labels))
    return xp.astype(xp.expand_dims(labels, axis=1) == classes_row, logits.dtype)


def softmax_cross_entropy_forward(logits: Any, labels: Any) -> tuple[Any, tuple]:
    """Mean over the batch of -sum(target * log_softmax(logits)).

    ``logits`` (N, K) floating; ``labels`` integer class indices (N,) or one-hot /
    probability targets (N, K). Equals PyTorch's ``F.cross_entropy``. A label outside [0, K) makes the
    loss infinite: decided on the device, so that no step waits for a read-back (``xpcnn.fit`` checks its
    labels once, before training, with a clear error).
    """
    op = "softmax_cross_entropy"
    xp = namespace(op, logits=logits, labels=labels)
    check_ndim(op, "logits", logits, 2, "N, K")
    check_floating(op, "logits", logits, xp)
    targets = _class_targets(op, xp, logits, labels)
    n = logits.shape[0]
    z = logits - xp.max(logits, axis=-1, keepdims=True) if n else logits
    exp_z = xp.exp(z)
    sum_exp = xp.sum(exp_z, axis=-1, keepdims=True)
    # per row: -sum_k t_k (z_k - lse) = lse * mass - sum_k t_k z_k, with mass = sum_k t_k
    lse = xp.reshape(xp.log(sum_exp), (n,))
    picked = xp.sum(targets * z, axis=-1)
    mass = xp.sum(targets, axis=-1)
    if labels.ndim == 1:
        # mass is 1, or 0 for a label outside [0, K): log(mass) is 0 or -inf, and the loss exact or +inf
        per_row, mass = lse - picked - xp.log(mass), None
    else:
        per_row = lse * mass - picked
    loss = _mean(xp, xp.sum(per_row), n)
    return loss, SoftmaxCrossEntropyCache(exp_z / sum_exp, targets, mass)


class SoftmaxCrossEntropyCache(NamedTuple):
    probs: Any
    targets: Any
    mass: Any = None          # per-row sum of (N, K) targets; None for class labels (1 per row)


def softmax_cross_entropy_backward(dloss: Any, cache: SoftmaxCrossEntropyCache) -> Any:
    """Gradient for the logits: (softmax(logits) * mass - targets) * dloss / N, mass = 1 for class labels."""
    check_cache("softmax_cross_entropy_backward", cache, SoftmaxCrossEntropyCache)
    probs, targets, mass = cache
    xp = namespace("softmax_cross_entropy_backward", cache=probs)
    if mass is not None:
        probs = probs * xp.reshape(mass, (-1, 1))
    return (probs - targets) * _scale(dloss, probs.shape[0])


def softmax_cross_entropy(logits: Any, labels: Any) -> Any:
    return softmax_cross_entropy_forward(logits, labels)[0]


# --------------------------------------------------------------------------- binary cross-entropy
def binary_cross_entropy_forward(probs: Any, targets: Any) -> tuple[Any, tuple]:
    """Mean of -(t log p + (1 - t) log(1 - p)) over all elements, p clipped to [eps, 1 - eps].

    The clip (eps = the dtype's machine epsilon) keeps log away from 0. The gradient
    is that of the formula at the clipped value, so a saturated wrong output still learns.
    A prob or target outside [0, 1] makes the loss NaN (PyTorch raises; clipping them silently would train on
    another loss): decided on the device, so that no step waits for a read-back. ``xpcnn.fit`` checks its
    targets once, before training, and stops at the first NaN loss it reads back.
    """
    op = "binary_cross_entropy"
    xp = _pair_inputs(op, "probs", probs, targets)
    targets = _targets_like(xp, targets, probs)
    eps = float(xp.finfo(probs.dtype).eps)
    p = xp.minimum(xp.maximum(probs, eps), 1 - eps)     # not xp.clip: array-api-compat's generic one (CuPy) masks
    total = -xp.sum(targets * xp.log(p) + (1 - targets) * xp.log(1 - p))
    count = math.prod(probs.shape)
    outside = xp.any((probs < 0) | (probs > 1) | (targets < 0) | (targets > 1))
    total = xp.where(outside, xp.full_like(total, math.nan), total)
    return _mean(xp, total, count), BinaryCrossEntropyCache(p, targets)


class BinaryCrossEntropyCache(NamedTuple):
    clipped_probs: Any
    targets: Any


def binary_cross_entropy_backward(dloss: Any, cache: BinaryCrossEntropyCache) -> Any:
    check_cache("binary_cross_entropy_backward", cache, BinaryCrossEntropyCache)
    p, targets = cache
    return (p - targets) / (p * (1 - p)) * _scale(dloss, math.prod(p.shape))


def binary_cross_entropy(probs: Any, targets: Any) -> Any:
    return binary_cross_entropy_forward(probs, targets)[0]


def binary_cross_entropy_with_logits_forward(logits: Any, targets: Any) -> tuple[Any, tuple]:
    """Binary cross-entropy of sigmoid(logits), computed stably from the logits:
    max(z, 0) - z t + log(1 + exp(-|z|)), averaged over all elements."""
    op = "binary_cross_entropy_with_logits"
    xp = _pair_inputs(op, "logits", logits, targets)
    targets = _targets_like(xp, targets, logits)
    z = logits
    total = xp.sum(xp.maximum(z, xp.zeros_like(z)) - z * targets + xp.log1p(xp.exp(-xp.abs(z))))
    count = math.prod(z.shape)
    return _mean(xp, total, count), BinaryCrossEntropyWithLogitsCache(sigmoid_forward(z)[0], targets)


class BinaryCrossEntropyWithLogitsCache(NamedTuple):
    probs: Any
    targets: Any


def binary_cross_entropy_with_logits_backward(dloss: Any, cache: BinaryCrossEntropyWithLogitsCache) -> Any:
    check_cache("binary_cross_entropy_with_logits_backward", cache, BinaryCrossEntropyWithLogitsCache)
    probs, targets = cache
    return (probs - targets) * _scale(dloss, math.prod(probs.shape))


def binary_cross_entropy_with_logits(logits: Any, targets: Any) -> Any:
    return binary_cross_entropy_with_logits_forward(logits, targets)[0]


# --------------------------------------------------------------------------- mean squared error
def mse_forward(pred: Any, targets: Any) -> tuple[Any, tuple]:
    """Mean of (pred - targets)**2 over all elements."""
    xp = _pair_inputs("mse", "pred", pred, targets)
    diff = pred - _targets_like(xp, targets, pred)
    return _mean(xp, xp.sum(diff * diff), math.prod(diff.shape)), MSECache(diff)


class MSECache(NamedTuple):
    diff: Any     # pred - targets


def mse_backward(dloss: Any, cache: MSECache) -> Any:
    check_cache("mse_backward", cache, MSECache)
    diff = cache.diff
    return 2 * diff * _scale(dloss, math.prod(diff.shape))


def mse(pred: Any, targets: Any) -> Any:
    return mse_forward(pred, targets)[0]
