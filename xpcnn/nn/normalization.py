"""Batch normalization: parameters ``weight`` and ``bias``, buffers ``running_mean`` and ``running_var``."""

from __future__ import annotations

import numpy as np

from .. import functional as F
from . import shards as _shards
from ..functional._checks import as_int
from .module import Module, accumulate, check_dtype, make_buffer, make_parameter

__all__ = ["BatchNorm2D"]


class BatchNorm2D(Module):
    """Normalizes each channel of (N, C, H, W) activations, as PyTorch's ``BatchNorm2d``.

    Training mode: batch statistics (biased variance) normalize, and the running statistics are updated
    with ``momentum`` (the variance unbiased). Eval mode: the running statistics normalize. ``affine``
    adds a learned per-channel scale ``weight`` (ones) and shift ``bias`` (zeros). On shards of a batch
    (:mod:`xpcnn.nn.shards`) the statistics are summed over all the shards: the batch's, as without shards.
    """

    shardable = True

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1, affine: bool = True,
                 dtype: str = "float32"):
        super().__init__(num_features=num_features, eps=eps, momentum=momentum, affine=affine)
        channels = as_int("BatchNorm2D", "num_features", num_features, 1)
        if not (isinstance(eps, (int, float)) and eps > 0):
            raise ValueError(f"BatchNorm2D: eps must be a number > 0; got {eps!r}")
        if not (isinstance(momentum, (int, float)) and 0 <= momentum <= 1):
            raise ValueError(f"BatchNorm2D: momentum must be a number in [0, 1]; got {momentum!r}")
        check_dtype("BatchNorm2D", dtype)
        self.eps, self.momentum = float(eps), float(momentum)
        self.weight = make_parameter(np.ones(channels), dtype) if affine else None
        self.bias = make_parameter(np.zeros(channels), dtype) if affine else None
        self.running_mean = make_buffer(np.zeros(channels), dtype)
        self.running_var = make_buffer(np.ones(channels), dtype)

    def _forward(self, x, layout):
        weight = None if self.weight is None else self.weight.data
        bias = None if self.bias is None else self.bias.data
        y, cache, running = F.batch_norm_forward(x, weight, bias, self.running_mean.data, self.running_var.data,
                                                 training=self.training, momentum=self.momentum, eps=self.eps,
                                                 layout=layout, reduce=_shards.reducer())
        shard = _shards.current()
        if shard is None or shard.index == 0:      # every shard computed the same statistics: one writes them
            self.running_mean.data, self.running_var.data = running
        return y, cache

    def _backward(self, dy, cache, layout, input_grad):
        dx, dweight, dbias = F.batch_norm_backward(dy, cache, reduce=_shards.reducer())
        if self.weight is not None:
            accumulate(self.weight, dweight)
            accumulate(self.bias, dbias)
        return dx
