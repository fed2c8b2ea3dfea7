"""Layers: stateful wrappers that hold parameters and call :mod:`xpcnn.functional`.

Each layer keeps the cache of its last forward (in training mode) and its
``backward(dy)`` fills the ``.grad`` of its parameters and returns the gradient
for its input. Parameters are created on the current backend
(:func:`xpcnn.get_backend`) from NumPy draws, so one seed gives the same weights
everywhere. Updates rebind ``Parameter.data``; nothing relies on in-place mutation.
"""

from __future__ import annotations

import inspect
import math
from typing import Any, Iterator

import numpy as np
from array_api_compat import array_namespace

from . import backend as _backend
from . import functional as F
from . import init as _init

__all__ = [
    "AvgPool2D", "BCELoss", "BCEWithLogitsLoss", "Conv2D", "CrossEntropyLoss", "Dropout", "Flatten",
    "LAYERS", "LeakyReLU", "Linear", "MSELoss", "MaxPool2D", "Module", "Parameter", "ReLU", "Sequential",
    "Sigmoid", "Softmax", "Tanh",
]


class Parameter:
    """A trainable array (``.data``) and the gradient of the loss for it (``.grad``, None until backward)."""

    __slots__ = ("data", "grad")

    def __init__(self, data: Any):
        self.data = data
        self.grad = None

    @property
    def shape(self) -> tuple:
        return tuple(self.data.shape)

    def __repr__(self) -> str:
        return f"Parameter(shape={self.shape}, dtype={self.data.dtype})"


def _make_parameter(values: np.ndarray, dtype: str) -> Parameter:
    return Parameter(_backend.asarray(np.asarray(values), dtype=dtype))


def _accumulate(p: Parameter, grad: Any) -> None:
    p.grad = grad if p.grad is None else p.grad + grad


class Module:
    """Base of every layer: parameters, train/eval mode, backend moves, a config to rebuild it."""

    training = True

    def __init__(self, **config: Any):
        self._config = config          # constructor arguments, for checkpoints and summaries
        self._cache = None
        self._ready = False            # a training-mode forward happened and its backward has not

    # -- structure
    def named_parameters(self) -> Iterator[tuple[str, Parameter]]:
        for name, value in vars(self).items():
            if isinstance(value, Parameter):
                yield name, value

    def parameters(self) -> list[Parameter]:
        return [p for _, p in self.named_parameters()]

    def config(self) -> dict:
        return {"type": type(self).__name__, **self._config}

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad = None

    def train(self, mode: bool = True) -> "Module":
        self.training = mode
        if not mode:
            self._cache, self._ready = None, False
        return self

    def eval(self) -> "Module":
        return self.train(False)

    def to(self, backend: str | None = None, device: Any = None, dtype: str | None = None) -> "Module":
        """Move the parameters to ``backend`` (default: the current one) and optionally change their dtype."""
        with _backend.use_backend(backend or _backend.get_backend().name, device):
            for p in self.parameters():
                p.data = _backend.asarray(p.data, dtype=dtype or _dtype_name(p.data))
                p.grad = None
        self._cache, self._ready = None, False
        return self

    # -- computation
    def __call__(self, x: Any) -> Any:
        return self.forward(x)

    def forward(self, x: Any) -> Any:
        y, cache = self._forward(x)
        self._cache, self._ready = (cache, True) if self.training else (None, False)
        return y

    def backward(self, dy: Any) -> Any:
        if not self._ready:
            raise RuntimeError(f"{type(self).__name__}.backward called without a training-mode forward before it")
        dx = self._backward(dy, self._cache)
        self._cache, self._ready = None, False
        return dx

    def _forward(self, x):
        raise NotImplementedError

    def _backward(self, dy, cache):
        raise NotImplementedError

    def __repr__(self) -> str:
        """Required arguments by position, the others only where they differ from their defaults."""
        params = inspect.signature(type(self).__init__).parameters
        args = []
        for key, value in self._config.items():
            default = params[key].default if key in params else inspect.Parameter.empty
            if default is inspect.Parameter.empty:
                args.append(repr(value))
            elif value != default:
                args.append(f"{key}={value!r}")
        return f"{type(self).__name__}({', '.join(args)})"


def _dtype_name(x: Any) -> str:
    xp = array_namespace(x)
    for name in ("float32", "float64", "float16"):
        if x.dtype == getattr(xp, name, None):
            return name
    raise TypeError(f"parameters must have a floating dtype; got {x.dtype}")


# --------------------------------------------------------------------------- layers with parameters
class Conv2D(Module):
    """2-D convolution. ``bias`` is True, False, or ``"untied"``: one bias per output channel AND position,
    as the classic notebook's CNNLayer (then ``input_size=(H, W)`` is needed to size it)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Any, stride: Any = 1, padding: Any = 0,
                 dilation: Any = 1, bias: bool | str = True, input_size: Any = None, init: str = "he_uniform",
                 dtype: str = "float32", rng: np.random.Generator | None = None):
        super().__init__(in_channels=in_channels, out_channels=out_channels, kernel_size=kernel_size, stride=stride,
                         padding=padding, dilation=dilation, bias=bias, input_size=input_size)
        if bias not in (True, False, "untied"):
            raise ValueError(f"Conv2D: bias must be True, False or 'untied'; got {bias!r}")
        kh, kw = F._checks.pair("Conv2D", "kernel_size", kernel_size, 1)
        rng = rng or _init.default_rng()
        fan_in, fan_out = in_channels * kh * kw, out_channels * kh * kw
        self.weight = _make_parameter(_init.get(init)((out_channels, in_channels, kh, kw), fan_in, fan_out, rng), dtype)
        self.hyper = dict(stride=stride, padding=padding, dilation=dilation)
        self.untied = bias == "untied"
        if self.untied:
            if input_size is None:
                raise ValueError("Conv2D: bias='untied' needs input_size=(H, W) to size one bias per output position")
            h, w = F._checks.pair("Conv2D", "input_size", input_size, 1)
            geometry = F.conv.conv_geometry("Conv2D", (1, in_channels, h, w), self.weight.shape, **self.hyper)
            self.bias = _make_parameter(np.zeros((out_channels, *geometry.out_hw)), dtype)
        elif bias:
            self.bias = _make_parameter(np.zeros(out_channels), dtype)
        else:
            self.bias = None

    def _forward(self, x):
        tied_bias = None if self.untied or self.bias is None else self.bias.data
        y, cache = F.conv2d_forward(x, self.weight.data, tied_bias, **self.hyper)
        if self.untied:
            if tuple(y.shape[2:]) != self.bias.shape[1:]:
                raise ValueError(f"Conv2D: untied bias was sized for output {self.bias.shape[1:]}; "
                                 f"input {tuple(x.shape)} gives {tuple(y.shape[2:])}")
            y = y + self.bias.data
        return y, cache

    def _backward(self, dy, cache):
        dx, dw, db = F.conv2d_backward(dy, cache)
        _accumulate(self.weight, dw)
        if self.untied:
            _accumulate(self.bias, array_namespace(dy).sum(dy, axis=0))
        elif self.bias is not None:
            _accumulate(self.bias, db)
        return dx


class Linear(Module):
    """y = x @ W.T + b, W of shape (out_features, in_features)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, init: str = "he_uniform",
                 dtype: str = "float32", rng: np.random.Generator | None = None):
        super().__init__(in_features=in_features, out_features=out_features, bias=bias)
        rng = rng or _init.default_rng()
        self.weight = _make_parameter(
            _init.get(init)((out_features, in_features), in_features, out_features, rng), dtype)
        self.bias = _make_parameter(np.zeros(out_features), dtype) if bias else None

    def _forward(self, x):
        return F.linear_forward(x, self.weight.data, None if self.bias is None else self.bias.data)

    def _backward(self, dy, cache):
        dx, dw, db = F.linear_backward(dy, cache)
        _accumulate(self.weight, dw)
        if self.bias is not None:
            _accumulate(self.bias, db)
        return dx


# --------------------------------------------------------------------------- parameter-free layers
class _Pool(Module):
    _op = ""

    def __init__(self, kernel_size: Any, stride: Any = None, padding: Any = 0):
        super().__init__(kernel_size=kernel_size, stride=stride, padding=padding)

    def _forward(self, x):
        return getattr(F, f"{self._op}_forward")(x, **self._config)

    def _backward(self, dy, cache):
        return getattr(F, f"{self._op}_backward")(dy, cache)


class MaxPool2D(_Pool):
    _op = "max_pool2d"


class AvgPool2D(_Pool):
    _op = "avg_pool2d"


class _Elementwise(Module):
    _op = ""

    def _forward(self, x):
        return getattr(F, f"{self._op}_forward")(x, **self._config)

    def _backward(self, dy, cache):
        return getattr(F, f"{self._op}_backward")(dy, cache)


class ReLU(_Elementwise):
    _op = "relu"


class LeakyReLU(_Elementwise):
    _op = "leaky_relu"

    def __init__(self, negative_slope: float = 0.01):
        super().__init__(negative_slope=negative_slope)


class Sigmoid(_Elementwise):
    _op = "sigmoid"


class Tanh(_Elementwise):
    _op = "tanh"


class Softmax(_Elementwise):
    """Softmax over the last axis (for probabilities; train with CrossEntropyLoss on the logits instead)."""

    _op = "softmax"


class Flatten(_Elementwise):
    _op = "flatten"


class Dropout(Module):
    """Zeroes each element with probability ``p`` in training mode (scaling the rest by 1/(1-p)); identity in eval.

    Masks are drawn from a NumPy generator (seeded, so runs repeat) and moved to the input's backend.
    """

    def __init__(self, p: float = 0.5, rng: np.random.Generator | None = None):
        if not 0 <= p < 1:
            raise ValueError(f"Dropout: p must be in [0, 1); got {p!r}")
        super().__init__(p=p)
        self.p = p
        self.rng = rng or _init.default_rng()

    def _forward(self, x):
        if not self.training or self.p == 0:
            return x, None
        keep = self.rng.random(tuple(x.shape)) >= self.p
        mask = _backend.asarray_like(keep / (1.0 - self.p), x, dtype=x.dtype)
        return x * mask, mask

    def _backward(self, dy, mask):
        return dy if mask is None else dy * mask


# --------------------------------------------------------------------------- containers
class Sequential(Module):
    """Layers applied in order; ``backward`` runs them in reverse.

    ``input_shape`` (C, H, W) lets the model check inputs and print a summary.
    """

    def __init__(self, *layers: Module, input_shape: tuple | None = None, name: str = "sequential"):
        super().__init__()
        for i, layer in enumerate(layers):
            if not isinstance(layer, Module):
                raise TypeError(f"Sequential: layer {i} must be an xpcnn.nn.Module; got {type(layer).__name__}")
        self.layers = list(layers)
        self.input_shape = None if input_shape is None else tuple(input_shape)
        self.name = name

    def named_parameters(self):
        for i, layer in enumerate(self.layers):
            for name, p in layer.named_parameters():
                yield f"{i}.{name}", p

    def config(self) -> dict:
        return {"type": "Sequential", "name": self.name,
                "input_shape": None if self.input_shape is None else list(self.input_shape),
                "layers": [layer.config() for layer in self.layers]}

    @classmethod
    def from_config(cls, config: dict, dtype: str = "float32") -> "Sequential":
        """Rebuild a model from :meth:`config` (weights freshly initialized; load a checkpoint over them)."""
        layers = []
        for entry in config["layers"]:
            entry = dict(entry)
            kind = entry.pop("type")
            if kind not in LAYERS:
                raise ValueError(f"unknown layer type {kind!r} in the model configuration (known: {', '.join(LAYERS)})")
            if kind in ("Conv2D", "Linear"):
                entry["dtype"] = dtype
            layers.append(LAYERS[kind](**entry))
        shape = config.get("input_shape")
        return cls(*layers, input_shape=None if shape is None else tuple(shape), name=config.get("name", "sequential"))

    def train(self, mode: bool = True):
        self.training = mode
        for layer in self.layers:
            layer.train(mode)
        return self

    def to(self, backend=None, device=None, dtype=None):
        for layer in self.layers:
            layer.to(backend, device, dtype)
        return self

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x

    def backward(self, dy):
        for layer in reversed(self.layers):
            dy = layer.backward(dy)
        return dy

    def check_input(self, shape: tuple) -> None:
        """Raise ValueError, with the expected shape, if inputs of ``shape`` (N, ...) cannot pass through."""
        shape = tuple(shape)
        if self.input_shape is not None and tuple(shape[1:]) != self.input_shape:
            raise ValueError(f"{self.name} expects inputs of shape (N, {', '.join(map(str, self.input_shape))}); "
                             f"got {shape}")
        self._output_shapes(shape[1:])

    def _output_shapes(self, sample_shape: tuple) -> list[tuple]:
        """Each layer's output shape for one sample, by running an empty batch through the model."""
        params = self.parameters()
        like = params[0].data if params else _backend.asarray(np.zeros(1, np.float32))
        x = _backend.asarray_like(np.zeros((0, *sample_shape), dtype=_dtype_name(like)), like)
        mode, shapes = self.training, []
        self.eval()
        try:
            for layer in self.layers:
                try:
                    x = layer(x)
                except (ValueError, TypeError) as exc:
                    raise ValueError(f"{self.name}: input of shape (N, {', '.join(map(str, sample_shape))}) does not "
                                     f"fit layer {len(shapes)} ({layer!r}): {exc}") from None
                shapes.append(tuple(x.shape[1:]))
        finally:
            self.train(mode)
        return shapes

    def summary(self, input_shape: tuple | None = None) -> str:
        """A table of layers, output shapes and parameter counts (needs ``input_shape`` (C, H, W))."""
        sample = tuple(input_shape or self.input_shape or ())
        if not sample:
            raise ValueError("summary needs input_shape=(C, H, W) (or a model built with one)")
        shapes = self._output_shapes(sample)
        rows = [("layer", "output shape", "parameters")]
        for i, (layer, shape) in enumerate(zip(self.layers, shapes)):
            count = sum(math.prod(p.shape) for p in layer.parameters())
            rows.append((f"{i}: {layer!r}", str(shape), f"{count:,}"))
        total = sum(math.prod(p.shape) for p in self.parameters())
        widths = [max(len(r[k]) for r in rows) for k in range(3)]
        lines = [f"{self.name}: input {sample}"]
        lines += [f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c:>{widths[2]}}" for a, b, c in rows]
        lines.append(f"total parameters: {total:,}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        inner = "\n".join(f"  ({i}) {layer!r}" for i, layer in enumerate(self.layers))
        return f"Sequential(\n{inner}\n)"


LAYERS = {cls.__name__: cls for cls in (Conv2D, Linear, MaxPool2D, AvgPool2D, ReLU, LeakyReLU, Sigmoid, Tanh,
                                        Softmax, Flatten, Dropout)}


# --------------------------------------------------------------------------- losses
class _Loss:
    """``loss = loss_fn(pred, targets)`` (a 0-d array), then ``loss_fn.backward()`` -> gradient for ``pred``."""

    _op = ""

    def __init__(self):
        self._cache = None

    def __call__(self, pred: Any, targets: Any) -> Any:
        loss, self._cache = getattr(F, f"{self._op}_forward")(pred, targets)
        return loss

    def backward(self, dloss: Any = 1.0) -> Any:
        if self._cache is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before the loss was computed")
        grad = getattr(F, f"{self._op}_backward")(dloss, self._cache)
        self._cache = None
        return grad


class CrossEntropyLoss(_Loss):
    """Softmax cross-entropy on logits, mean over the batch (integer labels or (N, K) targets)."""

    _op = "softmax_cross_entropy"


class BCELoss(_Loss):
    """Binary cross-entropy on probabilities (e.g. after Sigmoid), mean over all elements."""

    _op = "binary_cross_entropy"


class BCEWithLogitsLoss(_Loss):
    _op = "binary_cross_entropy_with_logits"


class MSELoss(_Loss):
    _op = "mse"
