"""The classic notebooks' worked examples (../shared/seeds/) give their exact answers here."""

from __future__ import annotations

import numpy as np

from helpers import numerical_gradients
from xpcnn import functional as F

IMAGE_1_TO_16 = np.arange(1.0, 17.0).reshape(1, 1, 4, 4)


def test_convolution2D_of_1_to_16_with_edge_kernel_is_all_eights(B):
    kernel = np.array([[-1.0, -1.0], [1.0, 1.0]]).reshape(1, 1, 2, 2)
    y = F.conv2d(B.asarray(IMAGE_1_TO_16), B.asarray(kernel))
    np.testing.assert_array_equal(B.numpy(y)[0, 0], np.full((3, 3), 8.0))


def test_max_pooling2D_of_1_to_16(B):
    y = F.max_pool2d(B.asarray(IMAGE_1_TO_16), 2)
    np.testing.assert_array_equal(B.numpy(y)[0, 0], [[6.0, 8.0], [14.0, 16.0]])


def test_f_getGradient_C_routes_pool_gradient_to_each_window_max(B):
    c = np.array([[1, 3, 2, 4], [5, 6, 7, 8], [9, 2, 4, 1], [3, 7, 5, 6]], dtype=np.float64).reshape(1, 1, 4, 4)
    ds = np.array([[1.0, 2.0], [3.0, 4.0]]).reshape(1, 1, 2, 2)
    _, cache = F.max_pool2d_forward(B.asarray(c), 2)
    dc = B.numpy(F.max_pool2d_backward(B.asarray(ds), cache))[0, 0]
    want = np.zeros((4, 4))
    want[1, 1], want[1, 3], want[2, 0], want[3, 3] = 1, 2, 3, 4
    np.testing.assert_array_equal(dc, want)


def test_single_neuron_sigmoid(B):
    f = B.asarray(np.array([[0.5, 1.5]]))
    w = B.asarray(np.array([[0.3, 0.7]]))
    b = B.asarray(np.array([0.1]))
    y = B.numpy(F.sigmoid(F.linear(f, w, b)))
    np.testing.assert_allclose(y[0, 0], 0.7858349830425586, rtol=1e-15)


def test_f_ReLU(B):
    y = F.relu(B.asarray(np.array([[1.0, -2.0, 3.0], [-4.0, 5.0, -6.0]])))
    np.testing.assert_array_equal(B.numpy(y), [[1, 0, 3], [0, 5, 0]])


def test_f_padd_3x3_by_1(B):
    image = np.arange(1.0, 10.0).reshape(3, 3)
    padded = B.numpy(F.pad2d(B.asarray(image), 1))
    want = np.zeros((5, 5))
    want[1:4, 1:4] = image
    np.testing.assert_array_equal(padded, want)


# --------------------------------------------------------------------------- the rotated kernel gradient
def _notebook_kernel_gradient(C, DC, I):
    """f_getGradient_K's loop (f_getChainRuleGradients), copied in meaning from notebook 000."""
    DK = np.zeros((5, 5))
    for u in range(-2, 3):
        for v in range(-2, 3):
            total = 0.0
            for i in range(C.shape[0]):
                for j in range(C.shape[1]):
                    if C[i, j] > 0 and 0 <= i - u < C.shape[0] and 0 <= j - v < C.shape[1]:
                        total += I[i - u, j - v] * DC[i, j]
            DK[u + 2, v + 2] = total
    return DK


def _forward(image, kernel, b, w, bf):
    """The notebook's f_forwardPass: 'same' conv, bias, ReLU, 2x2 max pool, flatten, sigmoid neuron."""
    c, conv_cache = F.conv2d_forward(image, kernel, b, padding="same")
    a, relu_cache = F.relu_forward(c)
    s, pool_cache = F.max_pool2d_forward(a, 2)
    f, flat_cache = F.flatten_forward(s)
    z, lin_cache = F.linear_forward(f, w, bf)
    y_hat, sig_cache = F.sigmoid_forward(z)
    return y_hat, (conv_cache, relu_cache, pool_cache, flat_cache, lin_cache, sig_cache), a


def test_notebook_kernel_gradient_is_the_true_gradient_rotated_180_degrees():
    rng = np.random.default_rng(0)
    image = rng.integers(1, 255, (32, 32)).astype(np.float64)
    kernel = 0.01 * rng.standard_normal((5, 5))
    b, w, bf = 0.01 * rng.standard_normal(), 0.01 * rng.standard_normal(256), 0.01 * rng.standard_normal()
    args = (image.reshape(1, 1, 32, 32), kernel.reshape(1, 1, 5, 5), np.array([b]), w.reshape(1, 256), np.array([bf]))
    y_hat, caches, C = _forward(*args)
    conv_cache, relu_cache, pool_cache, flat_cache, lin_cache, sig_cache = caches
    # loss 0.5 * (y_hat - y)^2 with y = 0, the loss the notebook's f_getGradient_* differentiate
    dz = F.sigmoid_backward(y_hat - 0.0, sig_cache)
    df = F.linear_backward(dz, lin_cache)[0]
    dc = F.max_pool2d_backward(F.flatten_backward(df, flat_cache), pool_cache)
    DC = dc[0, 0]
    dkernel = F.conv2d_backward(F.relu_backward(dc, relu_cache), conv_cache)[1][0, 0]

    def loss(k):
        out = _forward(args[0], k.reshape(1, 1, 5, 5), *args[2:])[0]
        return 0.5 * float(out[0, 0]) ** 2

    numeric = numerical_gradients(loss, [kernel], h=1e-8)[0]   # tiny step: 1024 ReLU kinks, 256 pool windows
    np.testing.assert_allclose(dkernel, numeric, rtol=1e-5, atol=1e-9 * np.abs(numeric).max())
    notebook = _notebook_kernel_gradient(C[0, 0], DC, image)
    np.testing.assert_allclose(notebook, np.rot90(dkernel, 2), rtol=1e-10)
    assert not np.allclose(notebook, dkernel, rtol=1e-3)
