"""xpcnn.nn and xpcnn.models: layers, whole-model gradients, init reproducibility, summaries and moves."""

from __future__ import annotations

import numpy as np
import pytest

import xpcnn
from helpers import assert_gradients_close, numerical_gradients
from xpcnn import nn


def _on(B):
    name, _, device = B.name.partition(":")
    return xpcnn.use_backend(name, device or None)


def _small_model(dtype="float64"):
    rng = np.random.default_rng(0)
    return nn.Sequential(
        nn.Conv2D(2, 3, 3, padding=1, dtype=dtype, rng=rng), nn.LeakyReLU(0.1), nn.MaxPool2D(2),
        nn.Conv2D(3, 2, 2, padding=1, bias="untied", input_size=(3, 3), dtype=dtype, rng=rng), nn.Tanh(),
        nn.AvgPool2D(2, stride=1), nn.Flatten(),
        nn.Linear(18, 3, dtype=dtype, rng=rng), nn.Sigmoid(),
        input_shape=(2, 6, 6),
    )


def test_whole_model_gradient_matches_finite_differences(B):
    """Every parameter's gradient in a small network that uses every layer type, in float64."""
    with _on(B):
        model = _small_model()
        rng = np.random.default_rng(1)
        x = rng.standard_normal((3, 2, 6, 6))
        targets = rng.uniform(0.1, 0.9, size=(3, 3))
        loss_fn = nn.MSELoss()
        loss_fn(model(xpcnn.asarray(x)), xpcnn.asarray(targets))
        dx = model.backward(loss_fn.backward(), input_grad=True)
        params = model.parameters()
        analytic = [B.numpy(p.grad) for p in params] + [B.numpy(dx)]
        originals = [B.numpy(p.data).copy() for p in params]

        def loss(*values):
            for p, v in zip(params, values[:-1]):
                p.data = xpcnn.asarray(v)
            return float(B.numpy(loss_fn(model(xpcnn.asarray(values[-1])), xpcnn.asarray(targets))))

        numeric = numerical_gradients(loss, originals + [x])
        assert_gradients_close(analytic, numeric)


def test_layers_alone_and_inside_sequential_agree():
    """Alone a layer runs in NCHW; inside a Sequential in the batch-innermost layout: same numbers, forward
    and backward, and the Sequential changes nothing about the layers it was given."""
    model = _small_model()
    x = np.random.default_rng(2).standard_normal((4, 2, 6, 6))
    inside = model(x)
    dy = np.random.default_rng(3).standard_normal(inside.shape)
    dx_inside = model.backward(dy, input_grad=True)
    grads_inside = [p.grad for p in model.parameters()]
    model.zero_grad()
    alone = x
    for layer in model.layers:
        alone = layer(alone)
    np.testing.assert_allclose(inside, alone, rtol=1e-12, atol=1e-12)
    for layer in reversed(model.layers):
        dy = layer.backward(dy)
    np.testing.assert_allclose(dx_inside, dy, rtol=1e-12, atol=1e-12)
    for ours, theirs in zip(grads_inside, [p.grad for p in model.parameters()]):
        np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-12)
    model(x)
    assert model.backward(np.ones_like(inside)) is None          # no input gradient unless asked


def test_same_seed_gives_identical_weights_on_every_backend(B):
    reference = [p.data for p in xpcnn.models.lenet5(seed=3).parameters()]   # numpy (default backend)
    with _on(B):
        weights = [B.numpy(p.data) for p in xpcnn.models.lenet5(seed=3).parameters()]
    for ours, theirs in zip(weights, reference):
        np.testing.assert_array_equal(ours, theirs)
        assert ours.dtype == np.float32


def test_untied_bias_has_one_value_per_output_position():
    conv = nn.Conv2D(1, 16, 3, bias="untied", input_size=(28, 28))
    assert conv.bias.shape == (16, 26, 26)
    with pytest.raises(ValueError, match="input_size"):
        nn.Conv2D(1, 2, 3, bias="untied")
    with pytest.raises(ValueError, match="untied bias was sized for output"):
        conv(np.zeros((1, 1, 30, 30), np.float32))


def test_dropout_train_and_eval():
    layer = nn.Dropout(0.5, rng=np.random.default_rng(0))
    x = np.ones((1000,), np.float32)
    y = layer(x)
    assert set(np.unique(y)) <= {0.0, 2.0} and 0.4 < np.mean(y == 0) < 0.6
    np.testing.assert_array_equal(layer.backward(np.ones_like(x)), y)
    layer.eval()
    assert layer(x) is x
    with pytest.raises(ValueError, match=r"Dropout: p must be a finite number in \[0, 1\); got 1.0"):
        nn.Dropout(1.0)


def test_backward_without_forward_is_refused():
    with pytest.raises(RuntimeError, match="without a training-mode forward"):
        nn.ReLU().backward(np.ones(3))
    model = xpcnn.models.lenet5()
    model.eval()
    model(np.zeros((1, 1, 28, 28), np.float32))
    with pytest.raises(RuntimeError):
        model.backward(np.ones((1, 10), np.float32))


def test_summary_lists_shapes_and_parameter_counts():
    text = xpcnn.models.lenet5().summary()
    assert "(16, 5, 5)" in text and "48,120" in text and "total parameters: 61,706" in text
    assert "total parameters: 119,130" in xpcnn.models.seed_cnn().summary()


def test_check_input_names_the_expected_shape():
    model = xpcnn.models.lenet5()
    with pytest.raises(ValueError, match=r"lenet5 expects inputs of shape \(N, 1, 28, 28\); got \(8, 3, 32, 32\)"):
        model.check_input((8, 3, 32, 32))
    loose = nn.Sequential(nn.Conv2D(1, 2, 3), nn.Flatten(), nn.Linear(50, 2))
    with pytest.raises(ValueError, match="does not fit layer 2"):
        loose.check_input((1, 1, 28, 28))


def test_model_to_moves_parameters_between_backends(B):
    model = xpcnn.models.seed_binary(seed=1)
    before = [p.data.copy() for p in model.parameters()]
    name, _, device = B.name.partition(":")
    model.to(name, device or None)
    for p, host in zip(model.parameters(), before):
        np.testing.assert_array_equal(B.numpy(p.data), host)
        assert p.data.device == B.device
    model.to("numpy", dtype="float64")
    assert all(isinstance(p.data, np.ndarray) and p.data.dtype == np.float64 for p in model.parameters())


def test_config_round_trip_rebuilds_the_architecture():
    model = _small_model("float32")
    rebuilt = nn.Sequential.from_config(model.config())
    assert rebuilt.config() == model.config()
    assert [p.shape for p in rebuilt.parameters()] == [p.shape for p in model.parameters()]


def test_resnets_follow_he_et_al():
    """6n+2 layers, 16/32/64 channels, projection shortcuts where the shape changes, bias-free convolutions."""
    r8 = xpcnn.models.build("resnet8", in_channels=3)
    assert r8.input_shape == (3, 32, 32) and r8.name == "resnet8"
    convs = [m for m in r8.modules() if isinstance(m, nn.Conv2D)]
    assert len(convs) == 1 + 2 * 3 + 2                     # 8 weighted layers minus the dense one, plus 2 projections
    assert all(c.bias is None for c in convs)
    assert sum(isinstance(m, nn.Residual) and m.shortcut is not None for m in r8.modules()) == 2
    assert "total parameters: 272,474" in xpcnn.models.resnet20(in_channels=3).summary()   # the paper's 0.27M
    assert xpcnn.models.resnet8().input_shape == (1, 28, 28)
    with pytest.raises(ValueError, match=r"depth must be 6n \+ 2"):
        xpcnn.models.resnet(10)
    with pytest.raises(ValueError, match="resnet8: num_classes must be >= 1; got -1"):
        xpcnn.models.resnet8(num_classes=-1)


@pytest.mark.parametrize("make, words", [
    (lambda: nn.Linear(-1, 3), "Linear: in_features must be >= 1; got -1"),
    (lambda: nn.Linear(3, 2.5), "Linear: out_features must be an integer"),
    (lambda: nn.Conv2D(0, 3, 3), "Conv2D: in_channels must be >= 1; got 0"),
    (lambda: nn.Conv2D(1, 3, 3, dtype="int32"), "Conv2D: dtype must be one of float32, float64; got 'int32'"),
    (lambda: nn.Dropout(float("nan")), "Dropout: p must be a finite number in [0, 1); got nan"),
    (lambda: xpcnn.models.lenet5(num_classes=-1), "lenet5: num_classes must be >= 1; got -1"),
    (lambda: xpcnn.models.seed_cnn(dtype="complex64"), "dtype must be one of float32, float64; got 'complex64'"),
    # a bool is never taken for 0 or 1
    (lambda: nn.Dropout(True), "Dropout: p must be a finite number in [0, 1); got True"),
    (lambda: nn.Linear(True, 2), "Linear: in_features must be an integer; got True"),
    (lambda: nn.Conv2D(1, 3, 3, bias=1), "Conv2D: bias must be one of True, False, untied; got 1"),
    (lambda: nn.LeakyReLU(negative_slope=False), "LeakyReLU: negative_slope must be a finite number; got False"),
    (lambda: nn.BatchNorm2D(3, momentum=True), "BatchNorm2D: momentum must be a finite number in [0, 1]; got True"),
    (lambda: nn.Sequential(nn.ReLU()).predict(np.ones((1, 2), np.float32), batch_size=True),
     "predict: batch_size must be an integer; got True"),
])
def test_layer_and_model_arguments_are_validated(make, words):
    with pytest.raises((ValueError, TypeError)) as info:
        make()
    assert words in str(info.value)


def test_predict_gives_probabilities_in_batches_and_keeps_the_mode(B):
    from xpcnn import functional as F

    name, _, device = B.name.partition(":")
    with xpcnn.use_backend(name, device or None):
        model = xpcnn.models.lenet5(seed=0)
        model.train()
        images = np.random.default_rng(0).standard_normal((7, 1, 28, 28)).astype(np.float32)
        probs = model.predict(images, batch_size=3)            # NumPy in, NumPy out, three batches
        assert isinstance(probs, np.ndarray) and probs.shape == (7, 10) and model.training
        np.testing.assert_allclose(probs.sum(axis=1), 1, rtol=1e-5)
        expected = xpcnn.to_numpy(F.softmax(model.eval()(xpcnn.asarray(images))))
        np.testing.assert_allclose(probs, expected, rtol=1e-5, atol=1e-7)
        binary = nn.Sequential(nn.Flatten(), nn.Linear(784, 1), input_shape=(1, 28, 28))
        logits = xpcnn.to_numpy(binary(xpcnn.asarray(images)))
        np.testing.assert_allclose(binary.predict(xpcnn.asarray(images)), 1 / (1 + np.exp(-logits)), rtol=1e-5)
        already = nn.Sequential(nn.Flatten(), nn.Linear(784, 3), nn.Softmax(), input_shape=(1, 28, 28))
        np.testing.assert_allclose(already.predict(images).sum(axis=1), 1, rtol=1e-5)    # not softmax twice
        with pytest.raises(ValueError, match="predict: batch_size must be >= 1; got 0"):
            model.predict(images, batch_size=0)


def test_softmax_normalizes_over_channels_alone_and_inside_a_sequential():
    """As PyTorch's Softmax(dim=1): the channels of (N, C, H, W), the classes of (N, K)."""
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 5))
    e = np.exp(x - x.max(axis=1, keepdims=True))
    expected = e / e.sum(axis=1, keepdims=True)
    alone, inside = nn.Softmax(), nn.Sequential(nn.Softmax())
    np.testing.assert_allclose(alone(x), expected, rtol=1e-12)
    np.testing.assert_allclose(inside(x), expected, rtol=1e-12)
    dy = np.random.default_rng(1).standard_normal(x.shape)
    want = expected * (dy - (dy * expected).sum(axis=1, keepdims=True))
    np.testing.assert_allclose(alone.backward(dy), want, rtol=1e-10)
    np.testing.assert_allclose(inside.backward(dy, input_grad=True), want, rtol=1e-10)
    logits = x[:, :, 0, 0]
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    np.testing.assert_allclose(nn.Sequential(nn.Softmax())(logits), e / e.sum(axis=1, keepdims=True), rtol=1e-12)
