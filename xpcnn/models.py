"""Ready-made networks, each a plain :class:`~xpcnn.nn.Sequential`. Each takes a ``seed`` so that its initial
weights are the same on every backend. :func:`build` takes any of them by name, and ``resnet<6n+2>`` (e.g.
``resnet32``) for any depth of :func:`resnet`."""

from __future__ import annotations

import inspect
import re
from typing import Any

import numpy as np

from .functional._checks import as_int
from .nn import (
    BatchNorm2D, Conv2D, Flatten, GlobalAvgPool2D, Linear, MaxPool2D, ReLU, Residual, Sequential, Sigmoid,
)
from .nn.module import check_dtype

__all__ = ["MODELS", "build", "build_for", "known", "lenet5", "mobilenet", "resnet", "resnet20", "resnet8", "seed_binary", "seed_cnn"]


def _check(model: str, num_classes: int, dtype: str) -> None:
    as_int(model, "num_classes", num_classes, 1)
    check_dtype(model, dtype)


def lenet5(num_classes: int = 10, seed: int = 0, dtype: str = "float32") -> Sequential:
    """LeNet-5 for 1x28x28 inputs, with ReLU and max pooling: 61,706 parameters.

    conv 6@5x5 (padding 2) - pool 2 - conv 16@5x5 - pool 2 - dense 120 - dense 84 - dense ``num_classes``.
    """
    _check("lenet5", num_classes, dtype)
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


def resnet(depth: int, num_classes: int = 10, in_channels: int = 1, image_size: int | tuple | None = None, seed: int = 0,
           dtype: str = "float32") -> Sequential:
    """The CIFAR ResNet of He et al. 2016 (section 4.2): ``depth = 6n + 2`` layers.

    A 3x3 convolution to 16 channels, then three stages of ``n`` residual blocks with 16, 32 and 64 channels
    (the first block of stages 2 and 3 halves H and W with stride 2), global average pooling and a dense
    layer. Each block is conv 3x3 - BN - ReLU - conv 3x3 - BN, plus a shortcut: the identity, or a
    projection (1x1 convolution with the stride, then BN) where the shape changes; then ReLU.
    Convolutions have no bias (the BN after each has one). ``in_channels``: 1 for MNIST, 3 for CIFAR-10;
    ``image_size`` (an int for square images or a pair (H, W); default 28 for one channel, else 32) only sets
    ``input_shape`` for checks and summaries: the network runs on any size.
    """
    name = f"resnet{depth}"
    _check(name, num_classes, dtype)
    in_channels = as_int(name, "in_channels", in_channels, 1)
    if not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
        raise ValueError(f"resnet: depth must be 6n + 2 for n >= 1 (8, 14, 20, 32, ...); got {depth!r}")
    size = _image_size(name, image_size if image_size is not None else 28 if in_channels == 1 else 32)
    rng = np.random.default_rng(seed)

    def conv(cin, cout, kernel, stride=1):
        return Conv2D(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False, dtype=dtype, rng=rng)

    layers = [conv(in_channels, 16, 3), BatchNorm2D(16, dtype=dtype), ReLU()]
    channels = 16
    for stage, width in enumerate((16, 32, 64)):
        for block in range((depth - 2) // 6):
            stride = 2 if stage > 0 and block == 0 else 1
            body = Sequential(conv(channels, width, 3, stride), BatchNorm2D(width, dtype=dtype), ReLU(),
                              conv(width, width, 3), BatchNorm2D(width, dtype=dtype))
            shortcut = None
            if stride != 1 or channels != width:
                shortcut = Sequential(conv(channels, width, 1, stride), BatchNorm2D(width, dtype=dtype))
            layers += [Residual(body, shortcut), ReLU()]
            channels = width
    layers += [GlobalAvgPool2D(), Linear(channels, num_classes, init="glorot_uniform", dtype=dtype, rng=rng)]
    return Sequential(*layers, input_shape=(in_channels, *size), name=name)


def resnet8(num_classes: int = 10, in_channels: int = 1, image_size: int | tuple | None = None, seed: int = 0,
            dtype: str = "float32") -> Sequential:
    """ResNet-8 (one block per stage, 78k parameters for one input channel): see :func:`resnet`."""
    return resnet(8, num_classes, in_channels, image_size, seed, dtype)


def resnet20(num_classes: int = 10, in_channels: int = 1, image_size: int | tuple | None = None, seed: int = 0,
             dtype: str = "float32") -> Sequential:
    """ResNet-20 (three blocks per stage, 0.27M parameters as in the paper): see :func:`resnet`."""
    return resnet(20, num_classes, in_channels, image_size, seed, dtype)


def mobilenet(num_classes: int = 10, in_channels: int = 1, image_size: int | tuple | None = None, width: float = 1.0,
              seed: int = 0, dtype: str = "float32") -> Sequential:
    """A MobileNet (Howard et al. 2017) sized for 28x28 and 32x32 images: a 3x3 convolution to 16 channels, then
    five depthwise-separable blocks (a depthwise 3x3 convolution, ``groups`` = its channels, BN, ReLU, then a
    pointwise 1x1 convolution, BN, ReLU) to 32, 64 (stride 2), 64, 128 (stride 2) and 128 channels, global
    average pooling and a dense layer. ``width`` scales every block's channels (MobileNet's width multiplier).
    ``image_size`` only sets ``input_shape``: the network runs on any size. 37k parameters at width 1."""
    name = "mobilenet"
    _check(name, num_classes, dtype)
    in_channels = as_int(name, "in_channels", in_channels, 1)
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not 0 < width <= 8:
        raise ValueError(f"mobilenet: width must be a number in (0, 8]; got {width!r}")
    size = _image_size(name, image_size if image_size is not None else 28 if in_channels == 1 else 32)
    rng = np.random.default_rng(seed)

    def conv_bn_relu(cin, cout, kernel, stride=1, groups=1):
        return [Conv2D(cin, cout, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False,
                       dtype=dtype, rng=rng), BatchNorm2D(cout, dtype=dtype), ReLU()]

    channels = max(1, round(16 * width))
    layers = conv_bn_relu(in_channels, channels, 3)
    for out, stride in ((32, 1), (64, 2), (64, 1), (128, 2), (128, 1)):
        out = max(1, round(out * width))
        layers += conv_bn_relu(channels, channels, 3, stride, groups=channels) + conv_bn_relu(channels, out, 1)
        channels = out
    layers += [GlobalAvgPool2D(), Linear(channels, num_classes, init="glorot_uniform", dtype=dtype, rng=rng)]
    return Sequential(*layers, input_shape=(in_channels, *size), name=name)


MODELS = {"lenet5": lenet5, "seed_cnn": seed_cnn, "seed_binary": seed_binary, "resnet8": resnet8,
          "resnet20": resnet20, "mobilenet": mobilenet}


def _image_size(name: str, image_size: Any) -> tuple[int, int]:
    """``image_size`` as (H, W): an int is a square."""
    if isinstance(image_size, (tuple, list)):
        if len(image_size) != 2:
            raise ValueError(f"{name}: image_size must be an int or a pair (H, W); got {image_size!r}")
        return as_int(name, "image_size[0]", image_size[0], 1), as_int(name, "image_size[1]", image_size[1], 1)
    size = as_int(name, "image_size", image_size, 1)
    return size, size


_RESNET = re.compile(r"resnet(\d+)")


def known(name: Any) -> bool:
    """Whether :func:`build` knows ``name``: one of ``MODELS``, or ``resnet<6n+2>``."""
    if not isinstance(name, str):
        return False
    match = _RESNET.fullmatch(name)
    return name in MODELS or (match is not None and int(match[1]) >= 8 and (int(match[1]) - 2) % 6 == 0)


def _builder(name: Any):
    if not known(name):
        raise ValueError(f"model must be one of {', '.join(MODELS)} or resnet<6n+2> (resnet32, resnet44, ...); "
                         f"got {name!r}")
    if name in MODELS:
        return MODELS[name]
    depth = int(_RESNET.fullmatch(name)[1])

    def build(num_classes=10, in_channels=1, image_size=None, seed=0, dtype="float32"):
        return resnet(depth, num_classes, in_channels, image_size, seed, dtype)
    return build


def build(name: str, **kwargs) -> Sequential:
    """A model by name: one of ``MODELS`` or ``resnet<6n+2>``, e.g. ``build("resnet32", in_channels=3)``."""
    return _builder(name)(**kwargs)


def build_for(name: str, sample_shape: tuple, seed: int = 0, dtype: str = "float32",
              num_classes: int = 10) -> Sequential:
    """A model by name for samples of ``sample_shape`` (C, H, W) and ``num_classes`` classes: the ResNets take
    their input channels and image size (H, W) from it; the others are built for their own input (and check it
    against the data when run)."""
    builder = _builder(name)
    kwargs = {"seed": seed, "dtype": dtype}
    parameters = inspect.signature(builder).parameters
    if "num_classes" in parameters:
        kwargs["num_classes"] = num_classes
    if "in_channels" in parameters:
        kwargs.update(in_channels=sample_shape[0], image_size=tuple(sample_shape[1:3]))
    return builder(**kwargs)
