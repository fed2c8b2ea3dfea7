"""Modules: layers that hold parameters and call :mod:`xpcnn.functional`, containers, losses.

- :mod:`~xpcnn.nn.module`: ``Module`` (the tree: parameters, buffers, children, state_dict, train/eval,
  ``.to``, summary), ``Run`` (what one call needs to know), ``Parameter``, ``Buffer``, ``from_config``;
- :mod:`~xpcnn.nn.layers`: Conv2D, Linear, pooling, activations, Flatten, Dropout;
- :mod:`~xpcnn.nn.normalization`: BatchNorm2D;
- :mod:`~xpcnn.nn.containers`: Sequential, Residual, ModuleList;
- :mod:`~xpcnn.nn.losses`: CrossEntropyLoss, BCELoss, BCEWithLogitsLoss, MSELoss.
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

__all__ = [
    "AvgPool2D", "BCELoss", "BCEWithLogitsLoss", "BatchNorm2D", "Buffer", "Conv2D", "CrossEntropyLoss", "Dropout",
    "Flatten", "GlobalAvgPool2D", "LAYERS", "LeakyReLU", "Linear", "MSELoss", "MaxPool2D", "ModelInUseError", "Module",
    "ModuleList", "Parameter",
    "ReLU", "Residual", "Run", "Sequential", "Sigmoid", "Softmax", "Tanh", "from_config",
]
