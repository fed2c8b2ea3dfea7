"""xpcnn.metrics: correct predictions, confusion counts, top-k, and the one rule for logits or probabilities."""

from __future__ import annotations

import numpy as np
import pytest

from xpcnn import metrics, nn

OUTPUTS = np.array([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [1.0, 0.0, 5.0], [4.0, 0.0, 1.0]])
LABELS = np.array([0, 2, 2, 1])


def test_correct_confusion_and_top_k_count_on_the_device():
    assert int(metrics.correct(OUTPUTS, LABELS)) == 2
    np.testing.assert_array_equal(metrics.confusion(OUTPUTS, LABELS), [[1, 0, 0], [1, 0, 0], [0, 1, 1]])
    assert [int(metrics.in_top_k(OUTPUTS, LABELS, k)) for k in (1, 2, 3)] == [2, 3, 4]
    one_hot = metrics.one_hot(LABELS, 3, OUTPUTS)
    assert one_hot.dtype == OUTPUTS.dtype and int(metrics.correct(OUTPUTS, one_hot)) == 2   # (N, K) targets alike
    predicted, truth, count = metrics.classes(OUTPUTS, LABELS, None)
    assert predicted.tolist() == [0, 1, 2, 0] and truth.tolist() == LABELS.tolist() and count == 3


def test_one_output_is_a_binary_classifier_with_a_threshold():
    outputs = np.array([[0.3], [0.7], [-0.2]])
    labels = np.array([1, 1, 0])
    assert int(metrics.correct(outputs, labels)) == 3                       # logits: output > 0
    assert int(metrics.correct(outputs, labels, threshold=0.5)) == 2        # probabilities: output > 0.5
    np.testing.assert_array_equal(metrics.confusion(outputs, labels, 0.5), [[1, 0], [1, 1]])


def test_one_rule_says_whether_outputs_are_logits_or_probabilities():
    def model(*head):
        return nn.Sequential(nn.Flatten(), nn.Linear(4, 2), *head, input_shape=(1, 2, 2))

    class MySoftmax(nn.Softmax):
        pass

    assert not metrics.outputs_are_probabilities(model())
    assert metrics.outputs_are_probabilities(model(nn.Softmax()))
    assert metrics.outputs_are_probabilities(model(nn.Sigmoid()))
    assert metrics.outputs_are_probabilities(model(MySoftmax()))            # by type, not by class name
    assert metrics.outputs_are_probabilities(model(), nn.BCELoss())        # the loss says so
    assert not metrics.outputs_are_probabilities(model(nn.Sigmoid()), nn.BCEWithLogitsLoss())
    assert metrics.decision_threshold(model()) == 0.0
    assert metrics.decision_threshold(model(nn.Sigmoid())) == 0.5
    assert metrics.decision_threshold(model(nn.Sigmoid()), nn.BCEWithLogitsLoss()) == 0.0


@pytest.mark.parametrize("name", ["correct", "confusion", "in_top_k", "classes", "one_hot", "decision_threshold",
                                  "outputs_are_probabilities"])
def test_the_metrics_are_public(name):
    assert name in metrics.__all__ and callable(getattr(metrics, name))
