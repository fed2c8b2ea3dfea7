"""Batch normalization: parameters ``weight`` and ``bias``, buffers ``running_mean`` and ``running_var``."""

from __future__ import annotations

import numpy as np

from .. import functional as F
from .. import init as _init
from ..functional._checks import as_float, as_int
from .module import Module, check_dtype, make_buffer, make_parameter

__all__ = ["BatchNorm2D"]


class BatchNorm2D(Module):
    """Normalizes each channel of (N, C, H, W) activations, as PyTorch's ``BatchNorm2d``.

    Training mode: batch statistics (biased variance) normalize, and the running statistics are updated
    with ``momentum`` (the variance unbiased). Eval mode: the running statistics normalize. ``affine``
    adds a learned per-channel scale ``weight`` (ones) and shift ``bias`` (zeros). Where a batch runs in parts
    (batch shards, :mod:`xpcnn.parallel`), the call's ``run.reduce`` sums the statistics over all the parts: the
    whole batch's, as in one piece.
    """

    shardable = True

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1, affine: bool = True,
                 dtype: str = "float32"):
        super().__init__(num_features=num_features, eps=eps, momentum=momentum, affine=affine)
        channels = as_int("BatchNorm2D", "num_features", num_features, 1)
        self.eps = as_float("BatchNorm2D", "eps", eps, 0, low_open=True)
        self.momentum = as_float("BatchNorm2D", "momentum", momentum, 0, 1)
        check_dtype("BatchNorm2D", dtype)
        self.weight = make_parameter(_init.filled((channels,), 1), dtype) if affine else None
        self.bias = make_parameter(_init.filled((channels,), 0), dtype) if affine else None
        self.running_mean = make_buffer(_init.filled((channels,), 0), dtype)
        self.running_var = make_buffer(_init.filled((channels,), 1), dtype)

    def check_state(self, arrays):
        var = arrays.get("running_var")
        if var is not None and np.any(var < 0):
            raise ValueError(f"BatchNorm2D: running_var must be >= 0 (a variance); got a minimum of {var.min():g}")

    def _forward(self, x, run):
        weight = None if self.weight is None else self.weight.data
        bias = None if self.bias is None else self.bias.data
        y, cache, running = F.batch_norm_forward(x, weight, bias, self.running_mean.data, self.running_var.data,
                                                 training=run.training, momentum=self.momentum, eps=self.eps,
                                                 layout=run.layout, reduce=run.reduce)
        if run.training:
            run.update(self.running_mean, running.mean)
            run.update(self.running_var, running.var)
        return y, cache

    def _backward(self, dy, cache, run, input_grad):
        dx, dweight, dbias = F.batch_norm_backward(dy, cache, reduce=run.reduce)
        if self.weight is not None:
            run.accumulate(self.weight, dweight)
            run.accumulate(self.bias, dbias)
        return dx
