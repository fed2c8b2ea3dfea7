"""Ready-made networks. Each takes a ``seed`` so that its initial weights are the same on every backend."""

from __future__ import annotations

import numpy as np

from .nn import Conv2D, Flatten, Linear, MaxPool2D, ReLU, Sequential, Sigmoid

__all__ = ["MODELS", "build", "lenet5", "seed_binary", "seed_cnn"]


def lenet5(num_classes: int = 10, seed: int = 0, dtype: str = "float32") -> Sequential:
    """LeNet-5 for 1x28x28 inputs, with ReLU and max pooling: 61,706 parameters.

    conv 6@5x5 (padding 2) - pool 2 - conv 16@5x5 - pool 2 - dense 120 - dense 84 - dense ``num_classes``.
    """
    rng = np.random.default_rng(seed)
    kw = dict(dtype=dtype, rng=rng)
    return Sequential(
        Conv2D(1, 6, 5, padding=2, **kw), ReLU(), MaxPool2D(2),
        Conv2D(6, 16, 5, **kw), ReLU(), MaxPool2D(2),
        Flatten(),
        Linear(16 * 5 * 5, 120, **kw), ReLU(),
        Linear(120, 84, **kw), ReLU(),
        Linear(84, num_classes, init="glorot_uniform", **kw),
        input_shape=(1, 28, 28), name="lenet5",
    )


def seed_cnn(num_classes: int = 10, seed: int = 0, dtype: str = "float32") -> Sequential:
    """The classic notebook's MNIST network (seeds/002): conv 16@3x3 'valid' with one bias per output
    position (CNNLayer), ReLU, flatten, dense ``num_classes`` (train it with CrossEntropyLoss)."""
    rng = np.random.default_rng(seed)
    return Sequential(
        Conv2D(1, 16, 3, bias="untied", input_size=(28, 28), dtype=dtype, rng=rng), ReLU(),
        Flatten(),
        Linear(16 * 26 * 26, num_classes, dtype=dtype, rng=rng),
        input_shape=(1, 28, 28), name="seed_cnn",
    )


def seed_binary(image_size: int = 32, seed: int = 0, dtype: str = "float32", init: str = "notebook_normal") -> Sequential:
    """The classic notebook's single-image network (seeds/000): one 5x5 'same' convolution with a single bias,
    ReLU, 2x2 max pooling, flatten, one neuron and a sigmoid (train it with BCELoss or MSELoss)."""
    rng = np.random.default_rng(seed)
    pooled = (image_size // 2) ** 2
    return Sequential(
        Conv2D(1, 1, 5, padding="same", init=init, dtype=dtype, rng=rng), ReLU(), MaxPool2D(2),
        Flatten(),
        Linear(pooled, 1, init=init, dtype=dtype, rng=rng), Sigmoid(),
        input_shape=(1, image_size, image_size), name="seed_binary",
    )


MODELS = {"lenet5": lenet5, "seed_cnn": seed_cnn, "seed_binary": seed_binary}


def build(name: str, **kwargs) -> Sequential:
    """A model by name: one of ``MODELS``."""
    if name not in MODELS:
        raise ValueError(f"model must be one of {', '.join(MODELS)}; got {name!r}")
    return MODELS[name](**kwargs)
