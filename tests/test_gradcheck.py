"""xpcnn.gradcheck: finite differences find a wrong hand-written backward, name it, and pass a right one."""

from __future__ import annotations

import numpy as np
import pytest

import xpcnn
from xpcnn import functional as F
from xpcnn import nn


class Scale(nn.Module):
    """y = x * weight (per feature), with a backward that can be made wrong by a factor."""

    def __init__(self, features: int, factor: float = 1.0):
        super().__init__(features=features, factor=factor)
        self.weight = nn.Parameter(np.linspace(0.5, 1.5, features))
        self.factor = factor

    def _forward(self, x, run):
        return x * self.weight.data, x

    def _backward(self, dy, x, run, input_grad):
        run.accumulate(self.weight, self.factor * (dy * x).sum(axis=0))
        return dy * self.weight.data


def test_a_right_backward_passes_and_the_model_is_left_alone():
    layer = Scale(4)
    before = layer.weight.data.copy()
    result = xpcnn.gradcheck(layer, np.random.default_rng(0).standard_normal((3, 4)))
    assert result.ok and bool(result)
    assert [c.name for c in result.checks] == ["input", "parameter 'weight'"]
    assert all(c.checked == c.size for c in result.checks)
    np.testing.assert_array_equal(layer.weight.data, before)
    assert layer.weight.grad is None


def test_a_factor_of_two_is_found_and_named():
    layer = Scale(4, factor=2.0)
    with pytest.raises(xpcnn.GradcheckError, match=r"gradient of parameter 'weight' disagrees .* \(ratio 2\)") as info:
        xpcnn.gradcheck(layer, np.random.default_rng(0).standard_normal((3, 4)))
    checks = {c.name: c for c in info.value.result.checks}
    assert checks["input"].ok and not checks["parameter 'weight'"].ok
    result = xpcnn.gradcheck(layer, np.ones((3, 4)), raise_exception=False)
    assert not result and "FAIL parameter 'weight'" in str(result)


def test_xpcnn_layers_and_a_small_network_pass_in_float32_and_training_mode():
    """The check runs on a float64 copy: a float32 model with BatchNorm (batch statistics) and Dropout (the same
    masks on every evaluation) passes."""
    xpcnn.init.manual_seed(0)
    model = nn.Sequential(nn.Conv2D(2, 3, 3, padding=1), nn.BatchNorm2D(3), nn.ReLU(), nn.Dropout(0.3, seed=1),
                          nn.Flatten(), nn.Linear(3 * 4 * 4, 2))
    x = np.random.default_rng(1).standard_normal((2, 2, 4, 4)).astype(np.float32)
    result = xpcnn.gradcheck(model, x, max_elements=20)
    assert result.ok, str(result)
    assert len(result.checks) == 1 + len(model.parameters())
    assert model.layers[0].weight.data.dtype == np.float32


def test_a_forward_backward_pair_of_functions():
    rng = np.random.default_rng(2)
    x, w, b = rng.standard_normal((2, 2, 5, 5)), rng.standard_normal((4, 1, 3, 3)), rng.standard_normal(4)
    pair = (lambda x, w, b: F.conv2d_forward(x, w, b, padding=1, groups=2), F.conv2d_backward)
    assert xpcnn.gradcheck(pair, x, w, b).ok
    wrong = (F.relu_forward, lambda dy, mask: 0.5 * F.relu_backward(dy, mask))
    with pytest.raises(xpcnn.GradcheckError, match="input 0"):
        xpcnn.gradcheck(wrong, rng.standard_normal((3, 4)) + 0.1)


@pytest.mark.parametrize("kwargs, error, words", [
    ({"eps": 0}, ValueError, "eps must be a positive number; got 0"),
    ({"atol": -1}, ValueError, "atol must be a non-negative number; got -1"),
    ({"max_elements": 0}, ValueError, "max_elements must be a positive integer or None; got 0"),
])
def test_bad_arguments_are_named(kwargs, error, words):
    with pytest.raises(error, match=words):
        xpcnn.gradcheck(Scale(2), np.ones((1, 2)), **kwargs)
    with pytest.raises(TypeError, match="target must be an xpcnn.nn.Module or a pair"):
        xpcnn.gradcheck(print, np.ones(2))
    with pytest.raises(TypeError, match="x must be floating-point; got int64"):
        xpcnn.gradcheck(Scale(2), np.ones((1, 2), dtype=np.int64))
