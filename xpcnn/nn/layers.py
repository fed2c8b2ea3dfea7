"""Layers: modules that hold parameters (or none) and call :mod:`xpcnn.functional`.

Parameters are created on the current backend (:func:`xpcnn.get_backend`) from NumPy draws, so one seed
gives the same weights everywhere. Updates rebind ``Parameter.data``; nothing relies on in-place mutation.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from array_api_compat import array_namespace

from .. import functional as F
from .. import init as _init
from ..functional import layout as _layout
from ..functional._checks import as_choice, as_float, as_int
from .module import Module, check_dtype, make_parameter

__all__ = [
    "AvgPool2D", "Conv2D", "Dropout", "Flatten", "GlobalAvgPool2D", "LeakyReLU", "Linear", "MaxPool2D", "ReLU",
    "Sigmoid", "Softmax", "Tanh",
]


# --------------------------------------------------------------------------- layers with parameters
class Conv2D(Module):
    """2-D convolution. ``bias`` is True, False, or ``"untied"``: one bias per output channel AND position,
    as the classic notebook's CNNLayer (then ``input_size=(H, W)`` is needed to size it). ``route`` forces one
    of :func:`xpcnn.functional.conv2d_forward`'s routes (``"im2col"``: the textbook one); by default the op's
    size rules choose per shape. ``groups``: the channels in that many groups with kernels of their own, weights
    (out_channels, in_channels // groups, kh, kw) as in PyTorch; ``groups == in_channels`` is depthwise."""

    shardable = True

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Any, stride: Any = 1, padding: Any = 0,
                 dilation: Any = 1, bias: bool | str = True, input_size: Any = None, init: str = "he_uniform",
                 dtype: str = "float32", rng: np.random.Generator | None = None, route: Any = None, groups: int = 1):
        super().__init__(in_channels=in_channels, out_channels=out_channels, kernel_size=kernel_size, stride=stride,
                         padding=padding, dilation=dilation, bias=bias, input_size=input_size,
                         **({} if route is None else {"route": list(F.conv._check_route(route, None))}),
                         **({} if groups == 1 else {"groups": groups}))
        bias = as_choice("Conv2D", "bias", bias, (True, False, "untied"))
        in_channels = as_int("Conv2D", "in_channels", in_channels, 1)
        out_channels = as_int("Conv2D", "out_channels", out_channels, 1)
        kh, kw = F._checks.pair("Conv2D", "kernel_size", kernel_size, 1)
        groups = as_int("Conv2D", "groups", groups, 1)
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"Conv2D: groups={groups} must divide in_channels ({in_channels}) and out_channels "
                             f"({out_channels})")
        check_dtype("Conv2D", dtype)
        rng = rng or _init.default_rng()
        fan_in, fan_out = in_channels // groups * kh * kw, out_channels // groups * kh * kw
        self.weight = make_parameter(
            _init.get(init)((out_channels, in_channels // groups, kh, kw), fan_in, fan_out, rng), dtype)
        self.hyper = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
        self.route = None if route is None else F.conv._check_route(route, None)
        self.untied = bias == "untied"
        if self.untied:
            if input_size is None:
                raise ValueError("Conv2D: bias='untied' needs input_size=(H, W) to size one bias per output position")
            h, w = F._checks.pair("Conv2D", "input_size", input_size, 1)
            geometry = F.conv.conv_geometry("Conv2D", (1, in_channels, h, w), self.weight.shape, stride, padding,
                                            dilation)
            self.bias = make_parameter(_init.filled((out_channels, *geometry.out_hw), 0), dtype)
        elif bias:
            self.bias = make_parameter(_init.filled((out_channels,), 0), dtype)
        else:
            self.bias = None

    def _forward(self, x, run):
        tied_bias = None if self.untied or self.bias is None else self.bias.data
        y, cache = F.conv2d_forward(x, self.weight.data, tied_bias, layout=run.layout, route=self.route, **self.hyper)
        if self.untied:
            out_hw = cache.geometry.out_hw
            if out_hw != self.bias.shape[1:]:
                raise ValueError(f"Conv2D: untied bias was sized for output {self.bias.shape[1:]}; "
                                 f"input {tuple(x.shape)} gives {out_hw}")
            y += _layout.broadcast_sample(self.bias.data, array_namespace(y), run.layout)    # y is ours
        return y, cache

    def _backward(self, dy, cache, run, input_grad):
        dx, dw, db = F.conv2d_backward(dy, cache, input_grad=input_grad)
        run.accumulate(self.weight, dw)
        if self.untied:
            run.accumulate(self.bias, array_namespace(dy).sum(dy, axis=_layout.batch_axis(4, run.layout)))
        elif self.bias is not None:
            run.accumulate(self.bias, db)
        return dx


class Linear(Module):
    """y = x @ W.T + b, W of shape (out_features, in_features)."""

    shardable = True

    def __init__(self, in_features: int, out_features: int, bias: bool = True, init: str = "he_uniform",
                 dtype: str = "float32", rng: np.random.Generator | None = None):
        super().__init__(in_features=in_features, out_features=out_features, bias=bias)
        in_features = as_int("Linear", "in_features", in_features, 1)
        out_features = as_int("Linear", "out_features", out_features, 1)
        check_dtype("Linear", dtype)
        rng = rng or _init.default_rng()
        self.weight = make_parameter(
            _init.get(init)((out_features, in_features), in_features, out_features, rng), dtype)
        self.bias = make_parameter(_init.filled((out_features,), 0), dtype) if bias else None

    def _forward(self, x, run):
        bias = None if self.bias is None else self.bias.data
        xp = array_namespace(x)             # computes on the (N, features) view of a (features, N) input
        y, cache = F.linear_forward(_layout.to_nchw(x, xp, run.layout), self.weight.data, bias)
        return _layout.from_nchw(y, xp, run.layout), cache

    def _backward(self, dy, cache, run, input_grad):
        xp = array_namespace(dy)
        dx, dw, db = F.linear_backward(_layout.to_nchw(dy, xp, run.layout), cache, input_grad=input_grad)
        run.accumulate(self.weight, dw)
        if self.bias is not None:
            run.accumulate(self.bias, db)
        return None if dx is None else _layout.from_nchw(dx, xp, run.layout)


# --------------------------------------------------------------------------- parameter-free layers
class _Function(Module):
    """A parameter-free layer: a functional forward/backward pair and its constructor arguments."""

    forward_fn = None
    backward_fn = None
    shardable = True

    def _forward(self, x, run):
        return type(self).forward_fn(x, **self._config)

    def _backward(self, dy, cache, run, input_grad):
        return type(self).backward_fn(dy, cache)


class ReLU(_Function):
    forward_fn, backward_fn = F.relu_forward, F.relu_backward


class LeakyReLU(_Function):
    forward_fn, backward_fn = F.leaky_relu_forward, F.leaky_relu_backward

    def __init__(self, negative_slope: float = 0.01):
        super().__init__(negative_slope=as_float("LeakyReLU", "negative_slope", negative_slope))


class Sigmoid(_Function):
    forward_fn, backward_fn = F.sigmoid_forward, F.sigmoid_backward
    gives_probabilities = True


class Tanh(_Function):
    forward_fn, backward_fn = F.tanh_forward, F.tanh_backward


class _Pool(_Function):
    def __init__(self, kernel_size: Any, stride: Any = None, padding: Any = 0):
        super().__init__(kernel_size=kernel_size, stride=stride, padding=padding)

    def _forward(self, x, run):
        return type(self).forward_fn(x, layout=run.layout, **self._config)


class MaxPool2D(_Pool):
    forward_fn, backward_fn = F.max_pool2d_forward, F.max_pool2d_backward


class AvgPool2D(_Pool):
    forward_fn, backward_fn = F.avg_pool2d_forward, F.avg_pool2d_backward


class GlobalAvgPool2D(_Function):
    """(N, C, H, W) -> (N, C): each channel's mean over its positions."""

    forward_fn, backward_fn = F.global_avg_pool2d_forward, F.global_avg_pool2d_backward

    def _forward(self, x, run):
        return F.global_avg_pool2d_forward(x, layout=run.layout)


class Flatten(_Function):
    """(N, C, H, W) -> (N, C*H*W); in the batch-innermost layout (C, H, W, N) -> (C*H*W, N), which costs
    nothing. Both orders list the features as C, H, W, so the Linear weights after it are the same."""

    forward_fn, backward_fn = F.flatten_forward, F.flatten_backward

    def _forward(self, x, run):
        return F.flatten_forward(x, layout=run.layout)


class Softmax(_Function):
    """Softmax over the classes or channels, axis 1 of (N, K) or (N, C, H, W), as PyTorch's ``Softmax(dim=1)``
    (for probabilities; train with CrossEntropyLoss on the logits instead)."""

    gives_probabilities = True

    def _forward(self, x, run):
        return F.softmax_forward(x, axis=_layout.channel_axis(x.ndim, run.layout))

    def _backward(self, dy, cache, run, input_grad):
        return F.softmax_backward(dy, cache)


class Dropout(Module):
    """Zeroes each element with probability ``p`` in training mode (scaling the rest by 1/(1-p)); identity in eval.

    Masks are made on the device from a counter-based hash (:mod:`xpcnn.functional.random`) of the layer's
    ``seed`` (drawn from ``rng`` unless given) and the number of training calls so far, so they are the same on
    every backend, new at every call, and a resumed run (which restores both) repeats them. The call counter is
    state kept on the layer, which is why batch shards leave a model with Dropout in one piece.
    """

    counters = ("calls",)       # ordinary state: a training step passes it in and out (xpcnn.nn.stateless)

    def __init__(self, p: float = 0.5, rng: np.random.Generator | None = None, seed: int | None = None):
        p = as_float("Dropout", "p", p, 0, 1, high_open=True)
        super().__init__(p=p)
        self.p = p
        self.seed = int((rng or _init.default_rng()).integers(1 << 31)) if seed is None else \
            as_int("Dropout", "seed", seed, 0)
        self.calls = 0

    def _forward(self, x, run):
        if not run.training or self.p == 0:
            return x, F.DropoutCache(None)
        key = F.random.key(self.seed, self.calls)
        self.calls += 1
        xp = array_namespace(x)
        # drawn in NCHW order, so the layer drops the same elements alone and inside a container
        return F.dropout_forward(x, self.p, key, _layout.nchw_shape(x.shape, run.layout),
                                 lambda u: _layout.from_nchw(u, xp, run.layout))

    def _backward(self, dy, cache, run, input_grad):
        return F.dropout_backward(dy, cache)

    def get_extra_state(self) -> dict:
        """The seed and the call counter, so a resumed run draws the same masks."""
        return {"seed": self.seed, "calls": int(self.calls)}     # after a compiled step, a 0-d array

    def set_extra_state(self, state: dict) -> None:
        if not (isinstance(state, dict) and isinstance(state.get("seed"), int) and isinstance(state.get("calls"), int)
                and state["seed"] >= 0 and state["calls"] >= 0):
            raise ValueError(f"Dropout: saved state must be {{'seed': int >= 0, 'calls': int >= 0}}; got {state!r:.200} "
                             f"(a checkpoint from before the counter-based masks: its masks cannot be repeated)")
        self.seed, self.calls = state["seed"], state["calls"]
