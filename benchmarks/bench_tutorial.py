"""xpcnn against the classic tutorial's layer, on the tutorial's own network.

The "CNN from scratch" notebook (shared/seeds/002) builds Conv 16@3x3 'valid' (one bias per output
position) -> ReLU -> Flatten -> Dense 10 -> Softmax with categorical cross-entropy, its CNNLayer looping
in Python over batch, output and input channels and calling scipy.signal.correlate2d. The notebook
shows that forward pass; its backward here is the one such tutorials pair with it (correlate2d for
the kernel gradient, convolve2d 'full' for the input gradient), written in the same style. One
training step (forward, backward, SGD update) at batch 64 is timed for both, on the same data.

    python benchmarks/bench_tutorial.py
"""

from __future__ import annotations

import numpy as np
from scipy import signal

import xpcnn
from harness import compare, training_step


class TutorialCNNLayer:
    """seeds/002's CNNLayer, with the classic backward pass."""

    def __init__(self, input_shape, kernel_size, depth, rng):
        input_depth, input_height, input_width = input_shape
        self.depth, self.input_depth = depth, input_depth
        self.output_shape = (depth, input_height - kernel_size + 1, input_width - kernel_size + 1)
        self.kernels = rng.standard_normal((depth, input_depth, kernel_size, kernel_size)) * 0.1
        self.biases = rng.standard_normal(self.output_shape) * 0.1

    def forward(self, input):
        self.input = input
        self.output = np.zeros((input.shape[0], *self.output_shape))
        for b in range(input.shape[0]):
            for d in range(self.depth):
                for c in range(self.input_depth):
                    self.output[b, d] += signal.correlate2d(input[b, c], self.kernels[d, c], mode="valid")
                self.output[b, d] += self.biases[d]
        return self.output

    def backward(self, output_gradient, learning_rate):
        kernels_gradient = np.zeros_like(self.kernels)
        input_gradient = np.zeros_like(self.input)
        for b in range(self.input.shape[0]):
            for d in range(self.depth):
                for c in range(self.input_depth):
                    kernels_gradient[d, c] += signal.correlate2d(self.input[b, c], output_gradient[b, d], "valid")
                    input_gradient[b, c] += signal.convolve2d(output_gradient[b, d], self.kernels[d, c], "full")
        self.kernels -= learning_rate * kernels_gradient
        self.biases -= learning_rate * output_gradient.sum(axis=0)
        return input_gradient


class TutorialDense:
    def __init__(self, input_size, output_size, rng):
        self.weights = rng.standard_normal((output_size, input_size)) * 0.01
        self.bias = np.zeros((output_size, 1))

    def forward(self, input):
        self.input = input
        return (self.weights @ input.T + self.bias).T

    def backward(self, output_gradient, learning_rate):
        weights_gradient = output_gradient.T @ self.input
        input_gradient = output_gradient @ self.weights
        self.weights -= learning_rate * weights_gradient
        self.bias -= learning_rate * output_gradient.sum(axis=0)[:, None]
        return input_gradient


def tutorial_step_fn(x, y_onehot, rng):
    cnn = TutorialCNNLayer((1, 28, 28), 3, 16, rng)
    dense = TutorialDense(16 * 26 * 26, 10, rng)

    def step():
        conv = cnn.forward(x)
        relu = np.maximum(0, conv)
        flat = relu.reshape(relu.shape[0], -1)
        logits = dense.forward(flat)
        exp = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs = exp / exp.sum(axis=1, keepdims=True)
        grad = (probs - y_onehot) / x.shape[0]             # softmax + categorical cross-entropy
        dflat = dense.backward(grad, 0.01)
        cnn.backward(dflat.reshape(relu.shape) * (conv > 0), 0.01)

    return step


def run(batch=64, blocks=7):
    xpcnn.parallel.tune_allocator()
    images, labels = xpcnn.data.load_bundled("train")
    x_host = xpcnn.data.normalize(images[:batch], "float64")
    y_onehot = np.eye(10)[labels[:batch]]
    tutorial = tutorial_step_fn(x_host, y_onehot, np.random.default_rng(0))

    def ours(dtype):
        model = xpcnn.models.seed_cnn(seed=0, dtype=dtype)
        x = xpcnn.asarray(xpcnn.data.normalize(images[:batch], dtype))
        y = xpcnn.asarray(labels[:batch].astype(np.int64))
        return training_step(model, x, y, xpcnn.optim.SGD(model.parameters(), lr=0.01))

    t = compare({"float32": ours("float32"), "float64": ours("float64"), "tutorial": tutorial},
                calls_per_block=1, blocks=blocks, warmup=1)
    return batch, t["float32"], t["float64"], t["tutorial"]


def report(batch, ours, ours64, tutorial):
    return "\n".join([
        f"The tutorial network (Conv 16@3x3 untied bias, ReLU, Flatten, Dense 10), one SGD step, batch {batch}",
        "",
        "| implementation | min / median (ms) | speed-up of xpcnn (median) |",
        "| --- | ---: | ---: |",
        f"| tutorial CNNLayer (scipy.signal loops, float64 as written) | {1e3 * tutorial.min:.1f} / {1e3 * tutorial.median:.1f} | |",
        f"| xpcnn seed_cnn (numpy, float64, as the tutorial) | {1e3 * ours64.min:.2f} / {1e3 * ours64.median:.2f} | "
        f"{tutorial.median / ours64.median:.0f}x |",
        f"| xpcnn seed_cnn (numpy, float32) | {1e3 * ours.min:.2f} / {1e3 * ours.median:.2f} | "
        f"{tutorial.median / ours.median:.0f}x |",
    ])


def main():
    print(report(*run()))


if __name__ == "__main__":
    main()
