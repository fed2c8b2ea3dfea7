"""Classification metrics on the device: correct predictions, confusion counts, top-k hits.

Each takes a batch of model outputs (N, K) and its labels, class indices (N,) or one-hot / probability targets
(N, K), and returns an integer array left on the device, so a training loop adds them up without reading
anything back. A model with one output is a binary classifier: its prediction is output > a threshold, which
:func:`decision_threshold` takes from the one rule that says whether outputs are logits or probabilities,
:func:`outputs_are_probabilities`.
"""

from __future__ import annotations

from typing import Any

from array_api_compat import array_namespace, device

__all__ = ["classes", "confusion", "correct", "decision_threshold", "in_top_k", "one_hot",
           "outputs_are_probabilities"]


def outputs_are_probabilities(model: Any, loss_fn: Any = None) -> bool:
    """Whether ``model``'s outputs are probabilities (True) or logits (False).

    A loss that says which it takes decides (its ``decision_threshold``: 0.5 for probabilities, BCELoss; 0 for
    logits, BCEWithLogitsLoss); otherwise a model whose last module (depth first) says it gives probabilities
    (``gives_probabilities``: Softmax and Sigmoid, or a layer of your own) gives probabilities, and any other gives
    logits."""
    threshold = getattr(loss_fn, "decision_threshold", None)
    if threshold is not None:
        return threshold == 0.5
    modules = model.modules() if callable(getattr(model, "modules", None)) else []
    return bool(modules) and bool(getattr(modules[-1], "gives_probabilities", False))


def decision_threshold(model: Any, loss_fn: Any = None) -> float:
    """Where a one-output model's prediction turns positive: the loss's own threshold where it names one, else
    0.5 for probabilities and 0 for logits (:func:`outputs_are_probabilities`)."""
    threshold = getattr(loss_fn, "decision_threshold", None)
    if threshold is not None:
        return threshold
    return 0.5 if outputs_are_probabilities(model) else 0.0


def classes(outputs: Any, labels: Any, threshold: float | None) -> tuple[Any, Any, int]:
    """``(predicted class, true class, number of classes)`` per sample: the largest output and the largest
    target; for one output, output > ``threshold`` (None: 0) and the target rounded, two classes."""
    xp = array_namespace(outputs)
    if outputs.ndim == 2 and outputs.shape[1] == 1:
        truth = xp.reshape(xp.astype(labels, outputs.dtype), (-1,)) >= 0.5
        predicted = outputs[:, 0] > (0.0 if threshold is None else threshold)
        return xp.astype(predicted, xp.int32), xp.astype(truth, xp.int32), 2
    truth = xp.argmax(labels, axis=1) if labels.ndim == 2 else labels
    return xp.argmax(outputs, axis=1), truth, int(outputs.shape[1])


def correct(outputs: Any, labels: Any, threshold: float | None = None) -> Any:
    """The number of correct predictions, a 0-d int32 array on the device (JAX has no int64 by default)."""
    xp = array_namespace(outputs)
    predicted, truth, _ = classes(outputs, labels, threshold)
    return xp.sum(xp.astype(predicted == truth, xp.int32))


def one_hot(classes: Any, count: int, like: Any) -> Any:
    """(N, count) rows with 1 at each sample's class, in ``like``'s floating dtype and device."""
    xp = array_namespace(like)
    row = xp.arange(count, device=device(like))
    return xp.astype(xp.expand_dims(xp.astype(classes, row.dtype), axis=1) == row, like.dtype)


def confusion(outputs: Any, labels: Any, threshold: float | None = None) -> Any:
    """The batch's K x K confusion counts (rows: the true class), an int32 array on the device: one product of
    the one-hot true and predicted classes (exact: counts are at most the batch size). A label outside
    [0, K) is counted nowhere: check labels where the data enters."""
    xp = array_namespace(outputs)
    predicted, truth, count = classes(outputs, labels, threshold)
    product = one_hot(truth, count, outputs).T @ one_hot(predicted, count, outputs)
    return xp.astype(xp.round(product), xp.int32)


def in_top_k(outputs: Any, labels: Any, k: int) -> Any:
    """How many samples have their true class among the ``k`` largest outputs (ties counted in its favour), a
    0-d int32 array on the device."""
    xp = array_namespace(outputs)
    truth = xp.argmax(labels, axis=1) if labels.ndim == 2 else labels
    true_output = xp.sum(outputs * one_hot(truth, outputs.shape[1], outputs), axis=1, keepdims=True)
    above = xp.sum(xp.astype(outputs > true_output, xp.int32), axis=1)
    return xp.sum(xp.astype(above < k, xp.int32))
