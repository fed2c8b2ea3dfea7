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
    """Base of every layer: parameters, train/eval mode, backend moves, a config to rebuild it.

    ``layout`` is the layout of the activations a layer sees: "NCHW" ((N, C, H, W) and (N, F)) when a
    layer is used on its own, "CHWN" ((C, H, W, N) and (F, N), the batch innermost) inside a
    :class:`Sequential`, which converts at its boundaries: that layout makes every convolution one
    matrix product over contiguous runs and flattening free.
    """

    training = True
    layout = "NCHW"

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
    def _set_layout(self, layout: str) -> None:
        self.layout = layout
        self._cache, self._ready = None, False

    def __call__(self, x: Any) -> Any:
        return self.forward(x)

    def forward(self, x: Any) -> Any:
        y, cache = self._forward(x)
        self._cache, self._ready = (cache, True) if self.training else (None, False)
        return y

    def backward(self, dy: Any, input_grad: bool = True) -> Any:
        """Fill the parameters' ``.grad`` and return the gradient for the input. Layers with parameters skip
        computing it, and return None, when ``input_grad=False`` (a network's first layer needs none)."""
        if not self._ready:
            raise RuntimeError(f"{type(self).__name__}.backward called without a training-mode forward before it")
        self._input_grad = input_grad
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
        y, cache = F.conv2d_forward(x, self.weight.data, tied_bias, layout=self.layout, **self.hyper)
        if self.untied:
            out_hw = cache[2].out_hw
            if out_hw != self.bias.shape[1:]:
                raise ValueError(f"Conv2D: untied bias was sized for output {self.bias.shape[1:]}; "
                                 f"input {tuple(x.shape)} gives {out_hw}")
            bias = self.bias.data
            y += array_namespace(bias).expand_dims(bias, axis=3) if self.layout == "CHWN" else bias   # y is ours
        return y, cache

    def _backward(self, dy, cache):
        dx, dw, db = F.conv2d_backward(dy, cache, input_grad=self._input_grad)
        _accumulate(self.weight, dw)
        if self.untied:
            _accumulate(self.bias, array_namespace(dy).sum(dy, axis=3 if self.layout == "CHWN" else 0))
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
        bias = None if self.bias is None else self.bias.data
        if self.layout == "CHWN":           # x is (in_features, N): compute on the transposed view
            y, cache = F.linear_forward(x.T, self.weight.data, bias)
            return y.T, cache
        return F.linear_forward(x, self.weight.data, bias)

    def _backward(self, dy, cache):
        transposed = self.layout == "CHWN"
        dx, dw, db = F.linear_backward(dy.T if transposed else dy, cache)
        _accumulate(self.weight, dw)
        if self.bias is not None:
            _accumulate(self.bias, db)
        if not self._input_grad:
            return None
        return dx.T if transposed else dx


# --------------------------------------------------------------------------- parameter-free layers
class _Elementwise(Module):
    """A parameter-free layer that calls ``F.<_op>_forward`` and ``F.<_op>_backward``."""

    _op = ""
    _takes_layout = False       # pooling needs to know where H and W are

    def _forward(self, x):
        layout = {"layout": self.layout} if self._takes_layout else {}
        return getattr(F, f"{self._op}_forward")(x, **layout, **self._config)

    def _backward(self, dy, cache):
        return getattr(F, f"{self._op}_backward")(dy, cache)


class _Pool(_Elementwise):
    _takes_layout = True

    def __init__(self, kernel_size: Any, stride: Any = None, padding: Any = 0):
        super().__init__(kernel_size=kernel_size, stride=stride, padding=padding)


class MaxPool2D(_Pool):
    _op = "max_pool2d"


class AvgPool2D(_Pool):
    _op = "avg_pool2d"


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
    """Softmax over the classes (for probabilities; train with CrossEntropyLoss on the logits instead)."""

    _op = "softmax"

    def _forward(self, x):
        if self.layout == "CHWN":           # (K, N): the classes are the first axis
            y, cache = F.softmax_forward(x.T)
            return y.T, cache
        return F.softmax_forward(x)

    def _backward(self, dy, cache):
        return F.softmax_backward(dy.T, cache).T if self.layout == "CHWN" else F.softmax_backward(dy, cache)


class Flatten(_Elementwise):
    """(N, C, H, W) -> (N, C*H*W); inside a Sequential (C, H, W, N) -> (C*H*W, N), which costs nothing.
    Both orders list the features as C, H, W, so the Linear weights after it are the same."""

    _op = "flatten"

    def _forward(self, x):
        if self.layout == "CHWN":
            xp = array_namespace(x)
            return xp.reshape(x, (math.prod(x.shape[:-1]), x.shape[-1])), tuple(x.shape)
        return F.flatten_forward(x)

    def _backward(self, dy, cache):
        return array_namespace(dy).reshape(dy, cache) if self.layout == "CHWN" else F.flatten_backward(dy, cache)


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

    Takes (N, C, H, W) or (N, features) inputs and returns outputs in the same convention; between
    its layers, activations are kept batch-innermost ((C, H, W, N), (features, N)), converted once on
    the way in and once on the way out. ``input_shape`` (C, H, W) lets the model check inputs and
    print a summary.
    """

    def __init__(self, *layers: Module, input_shape: tuple | None = None, name: str = "sequential"):
        super().__init__()
        for i, layer in enumerate(layers):
            if not isinstance(layer, Module):
                raise TypeError(f"Sequential: layer {i} must be an xpcnn.nn.Module; got {type(layer).__name__}")
            layer._set_layout("CHWN")
        self.layers = list(layers)
        self.input_shape = None if input_shape is None else tuple(input_shape)
        self.name = name
        self._order = self._execution_order()

    def _execution_order(self) -> list[int]:
        """The order the layers run in: as given, except that a ReLU directly followed by a MaxPool2D runs
        after it. max and ReLU commute, and so do their gradients (the window's first maximum is the same
        and ReLU's derivative there is taken at the same value), so the results are identical while the
        ReLU touches a quarter of the elements."""
        order = list(range(len(self.layers)))
        i = 0
        while i < len(order) - 1:
            if isinstance(self.layers[i], ReLU) and isinstance(self.layers[i + 1], MaxPool2D):
                order[i], order[i + 1] = i + 1, i
                i += 2
            else:
                i += 1
        return order

    def _set_layout(self, layout: str) -> None:
        super()._set_layout(layout)
        for layer in self.layers:
            layer._set_layout("CHWN")

    @property
    def _converts(self) -> bool:
        """A top-level Sequential converts to and from the internal layout; a nested one is already inside."""
        return self.layout == "NCHW"

    def _enter(self, x: Any) -> Any:
        xp = array_namespace(x)
        if x.ndim == 4:   # (N, C, H, W) -> a contiguous (C, H, W, N)
            return xp.reshape(xp.permute_dims(x, (1, 2, 3, 0)), (*x.shape[1:], x.shape[0]), copy=True)
        if x.ndim == 2:
            return x.T
        raise ValueError(f"{self.name}: inputs must be (N, C, H, W) or (N, features); got shape {tuple(x.shape)}")

    @staticmethod
    def _leave(y: Any) -> Any:
        return array_namespace(y).permute_dims(y, (3, 0, 1, 2)) if y.ndim == 4 else y.T

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
        h = self._enter(x) if self._converts else x
        for i in self._order:
            h = self.layers[i](h)
        return self._leave(h) if self._converts else h

    def backward(self, dy, input_grad: bool = False):
        """Fill every parameter's ``.grad`` from ``dy`` (the gradient for the output). Returns the gradient
        for the input only if ``input_grad=True`` (training does not need it, and it costs a col2im)."""
        if self._converts:
            dy = self._enter(dy) if dy.ndim == 4 else dy.T
        dx = self._backward_layers(dy, input_grad)
        return self._leave(dx) if self._converts and dx is not None else dx

    def _backward_layers(self, dy, input_grad):
        for step, i in enumerate(reversed(self._order)):
            dy = self.layers[i].backward(dy, input_grad=input_grad or step < len(self._order) - 1)
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
        x = _backend.asarray_like(np.zeros((*sample_shape, 0), dtype=_dtype_name(like)), like)   # internal layout
        mode, shapes = self.training, []
        self.eval()
        try:
            for layer in self.layers:
                try:
                    x = layer(x)
                except (ValueError, TypeError) as exc:
                    raise ValueError(f"{self.name}: input of shape (N, {', '.join(map(str, sample_shape))}) does not "
                                     f"fit layer {len(shapes)} ({layer!r}): {exc}") from None
                shapes.append(tuple(x.shape[:-1]))
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
