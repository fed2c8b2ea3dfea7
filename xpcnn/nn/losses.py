"""Loss objects: ``loss = loss_fn(pred, targets)`` (a 0-d array), then ``loss_fn.backward()``."""

from __future__ import annotations

from typing import Any

from array_api_compat import array_namespace

from .. import functional as F

__all__ = ["BCELoss", "BCEWithLogitsLoss", "CrossEntropyLoss", "MSELoss"]


class _Loss:
    """Calls a functional loss pair; keeps the cache of the last call for ``backward``."""

    forward_fn = None
    backward_fn = None
    decision_threshold: float | None = None    # a one-output model's positive prediction: output > this


    def __init__(self):
        self._cache = None

    def __call__(self, pred: Any, targets: Any) -> Any:
        binary = self.decision_threshold is not None and tuple(pred.shape[1:]) == (1,)
        if binary and getattr(targets, "ndim", None) == 1:       # binary labels (N,) for outputs (N, 1)
            targets = array_namespace(targets).reshape(targets, (-1, 1))
        loss, self._cache = type(self).forward_fn(pred, targets)
        return loss

    def backward(self, dloss: Any = 1.0) -> Any:
        """The gradient for ``pred`` of the last call (times ``dloss``)."""
        if self._cache is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before the loss was computed")
        grad = type(self).backward_fn(dloss, self._cache)
        self._cache = None
        return grad


class CrossEntropyLoss(_Loss):
    """Softmax cross-entropy on logits, mean over the batch (integer labels or (N, K) targets)."""

    forward_fn, backward_fn = F.softmax_cross_entropy_forward, F.softmax_cross_entropy_backward


class BCELoss(_Loss):
    """Binary cross-entropy on probabilities (e.g. after Sigmoid), mean over all elements. Targets (N,) for a
    one-output model (N, 1) are taken as (N, 1)."""

    forward_fn, backward_fn = F.binary_cross_entropy_forward, F.binary_cross_entropy_backward
    decision_threshold = 0.5


class BCEWithLogitsLoss(_Loss):
    """Binary cross-entropy on logits (a Sigmoid inside, stable for large values), mean over all elements. Targets
    (N,) for a one-output model (N, 1) are taken as (N, 1)."""

    forward_fn, backward_fn = F.binary_cross_entropy_with_logits_forward, F.binary_cross_entropy_with_logits_backward
    decision_threshold = 0.0


class MSELoss(_Loss):
    forward_fn, backward_fn = F.mse_forward, F.mse_backward
