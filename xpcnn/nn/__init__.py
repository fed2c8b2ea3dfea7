"""Modules: layers that hold parameters and call :mod:`xpcnn.functional`, containers, losses.

- :mod:`~xpcnn.nn.module`: ``Module``, combined from :mod:`~xpcnn.nn.tree` (children, parameters and buffers
  registered at assignment; train/eval, ``.to``), :mod:`~xpcnn.nn.state` (state dicts, configurations),
  :mod:`~xpcnn.nn.calls` (``Run``, the public forward/backward, the lock, the executor) and
  :mod:`~xpcnn.nn.summary`; ``Parameter`` and ``Buffer`` (:mod:`~xpcnn.nn.slots`); ``from_config``;
- :mod:`~xpcnn.nn.layers`: Conv2D, Linear, pooling, activations, Flatten, Dropout;
- :mod:`~xpcnn.nn.normalization`: BatchNorm2D;
- :mod:`~xpcnn.nn.containers`: Sequential, Residual, ModuleList;
- :mod:`~xpcnn.nn.losses`: CrossEntropyLoss, BCELoss, BCEWithLogitsLoss, MSELoss;
- :mod:`~xpcnn.nn.stateless`: a model's state handed out, and the model run on state it is given.
"""

from .containers import ModuleList, Residual, Sequential
from .layers import (
    AvgPool2D,
    Conv2D,
    Dropout,
    Flatten,
    GlobalAvgPool2D,
    LeakyReLU,
    Linear,
    MaxPool2D,
    ReLU,
    Sigmoid,
    Softmax,
    Tanh,
)
from .losses import BCELoss, BCEWithLogitsLoss, CrossEntropyLoss, MSELoss
from .module import LAYERS, Buffer, ModelInUseError, Module, Parameter, Run, from_config
from .normalization import BatchNorm2D
from . import stateless  # noqa: E402  (after Module: it builds on it)

__all__ = [
    "AvgPool2D", "BCELoss", "BCEWithLogitsLoss", "BatchNorm2D", "Buffer", "Conv2D", "CrossEntropyLoss", "Dropout",
    "Flatten", "GlobalAvgPool2D", "LAYERS", "LeakyReLU", "Linear", "MSELoss", "MaxPool2D", "ModelInUseError", "Module",
    "ModuleList", "Parameter",
    "ReLU", "Residual", "Run", "Sequential", "Sigmoid", "Softmax", "Tanh", "from_config",
]
