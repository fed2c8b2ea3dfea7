"""Export to ONNX: :func:`export_onnx` writes a model as a graph of standard ONNX operators.

Each layer becomes the operator a runtime has a fast kernel for (Conv, MaxPool, AveragePool,
BatchNormalization, Gemm, Relu, ...), with the layer's arrays as named initializers (``0.weight``, the names of
:meth:`~xpcnn.nn.Module.named_parameters`), the batch dimension left dynamic (``N``) and float32 throughout.
The graph computes the model in eval mode: BatchNorm with its running statistics, Dropout as the identity.

A layer of your own gets a mapping with :func:`register_onnx`::

    @xpcnn.export.register_onnx(MyLayer)
    def _(module, graph, x, in_shape, out_shape):
        return graph.node("Relu", [x])             # the name of the layer's output

Needs the ``onnx`` package (``pip install "xpcnn[onnx]"``); onnxruntime (or any ONNX runtime) runs the result.

:func:`torch_state_dict` hands the weights to PyTorch instead, by name or by structure;
:func:`load_torch_state_dict` takes them back.
"""

from __future__ import annotations

import os
import pathlib
import warnings
from typing import Any, Callable

import numpy as np
from array_api_compat import array_namespace

from . import backend as _backend
from .atomic import check_folder, write_atomic
from .functional._checks import pair
from .functional.conv import conv_geometry
from .nn import (AvgPool2D, BatchNorm2D, Conv2D, Dropout, Flatten, GlobalAvgPool2D, LeakyReLU, Linear, MaxPool2D,
                 Module, ReLU, Residual, Sequential, Sigmoid, Softmax, Tanh)
from .nn.containers import ModuleList

__all__ = ["OnnxGraph", "export_onnx", "load_torch_state_dict", "register_onnx", "torch_state_dict"]

_MAPPINGS: dict[type, Callable] = {}


def register_onnx(kind: type) -> Callable[[Callable], Callable]:
    """Register ``function(module, graph, x, in_shape, out_shape) -> output name`` as the ONNX mapping of the
    layer class ``kind`` (and its subclasses without one of their own). ``x`` is the name of the layer's input in
    ``graph`` (an :class:`OnnxGraph`), the shapes are one sample's (no batch axis)."""
    if not (isinstance(kind, type) and issubclass(kind, Module)):
        raise TypeError(f"register_onnx: kind must be a Module subclass; got {kind!r}")

    def decorate(function: Callable) -> Callable:
        _MAPPINGS[kind] = function
        return function

    return decorate


class OnnxGraph:
    """The graph being built: nodes, initializers and unique names."""

    def __init__(self, model: Module, helper: Any, numpy_helper: Any):
        self.helper, self.numpy_helper = helper, numpy_helper
        self.nodes: list = []
        self.initializers: list = []
        self._names: set[str] = set()
        self._slot_names = {id(slot): name for name, slot in [*model.named_parameters(), *model.named_buffers()]}
        self._shapes: dict[int, tuple] = {}
        self._module_names = {id(module): name for name, module in model.named_modules()}

    def name(self, base: str) -> str:
        """A name not used yet in the graph, ``base`` if it is free."""
        name, k = base, 1
        while name in self._names:
            k += 1
            name = f"{base}_{k}"
        self._names.add(name)
        return name

    def constant(self, values: Any, base: str) -> str:
        """A float32 initializer holding ``values`` (an array of any backend, or a model's slot's data)."""
        name = self.name(base)
        array = np.asarray(_backend.to_numpy(values), dtype=np.float32)
        self.initializers.append(self.numpy_helper.from_array(array, name))
        return name

    def slot(self, slot: Any, shape: tuple | None = None) -> str:
        """A Parameter's or Buffer's data as an initializer named after it (reshaped to ``shape`` if given)."""
        values = _backend.to_numpy(slot.data)
        return self.constant(values if shape is None else values.reshape(shape), self._slot_names.get(id(slot), "w"))

    def node(self, op: str, inputs: list[str], base: str | None = None, **attributes: Any) -> str:
        """Add one node; returns the name of its output."""
        output = self.name(base or op.lower())
        self.nodes.append(self.helper.make_node(op, inputs, [output], name=self.name(f"{output}_node"), **attributes))
        return output

    def emit(self, module: Module, x: str, in_shape: tuple) -> tuple[str, tuple]:
        """The graph of ``module`` applied to ``x``: (the output's name, one sample's output shape)."""
        out_shape = self._shapes[id(module)]
        for kind in type(module).__mro__:
            if kind in _MAPPINGS:
                return _MAPPINGS[kind](module, self, x, in_shape, out_shape), out_shape
        where = self._module_names.get(id(module)) or "(top)"
        raise TypeError(f"export_onnx: layer {where} ({type(module).__name__}) has no ONNX mapping; give it one with "
                        f"@xpcnn.export.register_onnx({type(module).__name__}) on a function (module, graph, x, "
                        f"in_shape, out_shape) -> output name (see xpcnn.export)")


def export_onnx(model: Module, path: str | os.PathLike, input_shape: tuple | None = None, opset: int = 17, *,
                normalization: Any = None, classes: Any = None, raw_input: bool = False) -> pathlib.Path:
    """Write ``model`` to ``path`` as an ONNX graph of standard operators (see the module's text); returns the path.

    ``input_shape``: one sample's shape, e.g. ``(1, 28, 28)``; by default the model's own ``input_shape``. The
    graph's input is ``input`` of shape (N, *input_shape) and its output ``output``; N is dynamic. A float64 model
    is written in float32 (with a warning): runtimes have few float64 kernels (onnxruntime has no float64 Conv).
    The file is checked with ``onnx.checker`` and written atomically; its folder must exist.

    So that whoever serves the file knows how to feed it, what is known of the input goes into the model's
    ``metadata_props`` (JSON values): ``normalization`` (``{"mean": [...], "std": [...]}``, as
    ``Dataset.normalization()`` and checkpoints hold it, or a ``(mean, std)`` pair; per channel, pixels on the
    [0, 1] scale) as ``mean`` and ``std``, ``classes`` (the name of each output) as ``classes``, and ``input``:
    ``"normalized"`` or ``"raw"``. ``raw_input=True`` puts the normalization in the graph (Sub and Div before the
    first layer), so raw [0, 1] pixels go in.
    """
    try:
        import onnx
        from onnx import helper, numpy_helper
    except ImportError:
        raise ImportError("export_onnx needs the onnx package: pip install onnx (or pip install -e '.[onnx]' in a "
                          "checkout of xpcnn)") from None
    if not isinstance(model, Module):
        raise TypeError(f"export_onnx: model must be an xpcnn.nn.Module; got {type(model).__name__}")
    if not isinstance(opset, int) or opset < 13:
        raise ValueError(f"export_onnx: opset must be an integer >= 13; got {opset!r}")
    path = check_folder(path, "export_onnx")
    shape = input_shape if input_shape is not None else model.input_shape
    if shape is None:
        raise ValueError(f"export_onnx: {model.name} has no input_shape; pass input_shape=(C, H, W) (one sample's)")
    if isinstance(shape, (str, bytes)) or not hasattr(shape, "__len__") or len(shape) not in (1, 3) or not all(
            isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in shape):
        raise ValueError(f"export_onnx: input_shape must be one sample's shape, (C, H, W) for images or "
                         f"(features,), as a tuple of integers; got {shape!r}")
    shape = tuple(int(s) for s in shape)
    if any(s < 1 for s in shape):
        raise ValueError(f"export_onnx: input_shape must hold positive sizes; got {shape}")
    stats = _normalization(normalization, shape[0])
    if raw_input and stats is None:
        raise ValueError("export_onnx: raw_input=True puts the normalization in the graph; give normalization="
                         "{'mean': [...], 'std': [...]} (the training Dataset's .normalization())")
    if any(s.data.dtype == array_namespace(s.data).float64 for s in [*model.parameters(), *model.buffers()]):
        warnings.warn("export_onnx: the model is float64; the ONNX graph is float32 (runtimes have few float64 "
                      "kernels)", stacklevel=2)
    graph = OnnxGraph(model, helper, numpy_helper)
    graph._shapes = model._trace_shapes(shape)           # also refuses an input the model cannot take
    names = _class_names(classes, graph._shapes[id(model)])
    x, final = graph.name("input"), graph.name("output")
    first = _normalize_in_graph(graph, x, stats, len(shape)) if raw_input else x
    output, out_shape = graph.emit(model, first, shape)
    if graph.nodes and graph.nodes[-1].output[0] == output:
        graph.nodes[-1].output[0] = final                   # the last node writes the graph's output
    else:                                                   # a model that ends in the identity (Dropout, nothing)
        graph.nodes.append(helper.make_node("Identity", [output], [final], name="output_node"))
    output = final
    described = "raw pixels on the [0, 1] scale" if raw_input else (
        "pixels on the [0, 1] scale normalized as (x - mean) / std" if stats else "as the model was trained on")
    onnx_graph = helper.make_graph(
        graph.nodes, model.name,
        [helper.make_tensor_value_info(x, onnx.TensorProto.FLOAT, ["N", *shape], doc_string=described)],
        [helper.make_tensor_value_info(output, onnx.TensorProto.FLOAT, ["N", *out_shape])], graph.initializers)
    proto = helper.make_model(onnx_graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="xpcnn")
    helper.set_model_props(proto, _metadata(stats, names, raw_input))
    onnx.checker.check_model(proto, full_check=True)
    write_atomic(path, proto.SerializeToString())
    return path


def _normalization(given: Any, channels: int) -> tuple[tuple, tuple] | None:
    """``(mean, std)`` of ``given`` (a ``{"mean", "std"}`` mapping or a pair), one float per channel; None stays."""
    from .data.checks import check_statistics

    if given is None:
        return None
    if isinstance(given, dict) and {"mean", "std"} <= set(given):
        mean, std = given["mean"], given["std"]
    elif isinstance(given, (tuple, list)) and len(given) == 2:
        mean, std = given
    else:
        raise TypeError(f"export_onnx: normalization must be {{'mean': ..., 'std': ...}} or a (mean, std) pair; "
                        f"got {given!r}")
    return check_statistics(mean, std, channels, "export_onnx: normalization's ")


def _class_names(classes: Any, out_shape: tuple) -> list[str] | None:
    """``classes`` as a list of names, one per output (two for a single-output binary model)."""
    if classes is None:
        return None
    if isinstance(classes, str) or not all(isinstance(c, str) for c in classes):
        raise TypeError(f"export_onnx: classes must be a sequence of names (str); got {classes!r}")
    names = list(classes)
    outputs = out_shape[0] if len(out_shape) == 1 else None
    if outputs is not None and len(names) != (2 if outputs == 1 else outputs):
        raise ValueError(f"export_onnx: {len(names)} class names for a model with {outputs} output(s)")
    return names


def _normalize_in_graph(graph: OnnxGraph, x: str, stats: tuple, rank: int) -> str:
    """(x - mean) / std per channel (axis 1 of the batch), as the graph's first nodes."""
    shape = (-1,) + (1,) * (rank - 1)
    mean = graph.constant(np.reshape(stats[0], shape), "input_mean")
    std = graph.constant(np.reshape(stats[1], shape), "input_std")
    return graph.node("Div", [graph.node("Sub", [x, mean], "centered"), std], "normalized")


def _metadata(stats: tuple | None, classes: list[str] | None, raw_input: bool) -> dict[str, str]:
    import json

    props = {"input": "raw" if raw_input else "normalized"}
    if stats is not None:
        props.update(mean=json.dumps(list(stats[0])), std=json.dumps(list(stats[1])))
    if classes is not None:
        props["classes"] = json.dumps(classes)
    return props


def torch_state_dict(model: Module, like: Any = None) -> dict:
    """``model``'s parameters and buffers as a PyTorch ``state_dict`` of CPU tensors, plus the
    ``num_batches_tracked`` counter (0) each ``torch.nn.BatchNorm2d`` expects, so that
    ``torch_model.load_state_dict(torch_state_dict(model, like=torch_model))`` works strictly.

    Without ``like`` the names are xpcnn's, which are PyTorch's for a twin of the same structure. With ``like`` (a
    torch module or its ``state_dict``) the tensors are matched by structure, module by module in order, each
    module's parameters then its buffers (PyTorch's own order), so a twin written the natural way (a
    ``GlobalAvgPool2D`` as ``AdaptiveAvgPool2d(1)`` + ``Flatten``, other container names) needs no renaming; a
    ValueError names the first pair whose shapes differ. The other way: :func:`load_torch_state_dict`.
    """
    try:
        import torch
    except ImportError:
        raise ImportError("torch_state_dict needs PyTorch: pip install torch==2.13.0 (a CPU build)") from None
    if like is None:
        state = {name: _to_torch(torch, value) for name, value in model.state_dict().items()}
        for name, module in model.named_modules():
            if isinstance(module, BatchNorm2D):
                state[f"{name}.num_batches_tracked" if name else "num_batches_tracked"] = torch.tensor(0)
        return state
    theirs = like.state_dict() if hasattr(like, "state_dict") else like
    pairs = _pair_by_structure("torch_state_dict", model, theirs)
    return {key: (_to_torch(torch, slot.data) if slot is not None else torch.zeros_like(theirs[key]))
            for key, slot in pairs}


def load_torch_state_dict(model: Module, state: dict) -> None:
    """Load a PyTorch ``state_dict`` into ``model``: by name where the names are xpcnn's, else matched by structure
    as :func:`torch_state_dict` does (a ValueError names the first pair that differs). Everything is checked
    before anything is assigned."""
    if not isinstance(state, dict):
        raise TypeError(f"load_torch_state_dict: state must be a dict of tensors by name; got {type(state).__name__}")
    ours = set(model.state_dict())
    given = {k for k in state if k.rpartition(".")[2] != "num_batches_tracked"}
    if given == ours:
        model.load_state_dict(state)
        return
    names = {id(slot): name for name, slot in _in_module_order(model)}
    model.load_state_dict({names[id(slot)]: state[key] for key, slot in
                           _pair_by_structure("load_torch_state_dict", model, state) if slot is not None})


def _to_torch(torch: Any, value: Any) -> Any:
    return torch.from_numpy(np.array(_backend.to_numpy(value)))


def _in_module_order(model: Module) -> list[tuple[str, Any]]:
    """Parameters and buffers module by module, each module's own parameters then its buffers (a slot shared by two
    modules once): the order of a PyTorch ``state_dict``."""
    from .nn.module import Buffer, Parameter

    order, seen = [], set()
    for prefix, module in model.named_modules():
        for kind in (Parameter, Buffer):
            for name, slot in module._named_own(kind):
                if id(slot) not in seen:
                    seen.add(id(slot))
                    order.append((f"{prefix}.{name}" if prefix else name, slot))
    return order


def _pair_by_structure(op: str, model: Module, theirs: dict) -> list[tuple[str, Any]]:
    """``(their key, our slot)`` in order; counters (``num_batches_tracked``) get None."""
    ours = _in_module_order(model)
    keys = [k for k in theirs if k.rpartition(".")[2] != "num_batches_tracked"]
    if len(keys) != len(ours):
        raise ValueError(f"{op}: the model has {len(ours)} parameters and buffers, the PyTorch state {len(keys)} "
                         f"(besides num_batches_tracked); they cannot be matched by structure")
    for key, (name, slot) in zip(keys, ours):
        if tuple(theirs[key].shape) != tuple(slot.shape):
            raise ValueError(f"{op}: matched in order, xpcnn's {name!r} {tuple(slot.shape)} meets PyTorch's {key!r} "
                             f"{tuple(theirs[key].shape)}: the two networks differ there")
    slots = dict(zip(keys, (slot for _, slot in ours)))
    return [(key, slots.get(key)) for key in theirs]


# --------------------------------------------------------------------------- the mappings
def _chain(layers, graph, x, in_shape):
    for layer in layers:
        x, in_shape = graph.emit(layer, x, in_shape)
    return x


register_onnx(Sequential)(lambda module, graph, x, in_shape, out_shape: _chain(module.layers, graph, x, in_shape))
register_onnx(ModuleList)(lambda module, graph, x, in_shape, out_shape: _chain(module, graph, x, in_shape))


@register_onnx(Residual)
def _residual(module, graph, x, in_shape, out_shape):
    body, _ = graph.emit(module.body, x, in_shape)
    skip = x if module.shortcut is None else graph.emit(module.shortcut, x, in_shape)[0]
    return graph.node("Add", [body, skip])


@register_onnx(Conv2D)
def _conv(module, graph, x, in_shape, out_shape):
    hyper = module.hyper
    geometry = conv_geometry("Conv2D", (1, *in_shape), module.weight.shape, hyper["stride"], hyper["padding"],
                             hyper["dilation"])
    top, bottom, left, right = geometry.pads
    inputs = [x, graph.slot(module.weight)]
    if module.bias is not None and not module.untied:
        inputs.append(graph.slot(module.bias))
    y = graph.node("Conv", inputs, kernel_shape=list(geometry.kernel), strides=list(geometry.stride),
                   dilations=list(geometry.dilation), pads=[top, left, bottom, right], group=hyper["groups"])
    if module.untied:                       # one bias per channel and position: (1, O, H, W), broadcast over N
        y = graph.node("Add", [y, graph.slot(module.bias, (1, *module.bias.shape))])
    return y


@register_onnx(Linear)
def _linear(module, graph, x, in_shape, out_shape):
    inputs = [x, graph.slot(module.weight)]
    if module.bias is not None:
        inputs.append(graph.slot(module.bias))
    return graph.node("Gemm", inputs, transB=1)


@register_onnx(BatchNorm2D)
def _batch_norm(module, graph, x, in_shape, out_shape):
    channels = module.running_mean.shape[0]
    scale = graph.slot(module.weight) if module.weight is not None else graph.constant(np.ones(channels), "ones")
    shift = graph.slot(module.bias) if module.bias is not None else graph.constant(np.zeros(channels), "zeros")
    return graph.node("BatchNormalization", [x, scale, shift, graph.slot(module.running_mean),
                                             graph.slot(module.running_var)], epsilon=module.eps)


def _pool(op: str, **extra: Any) -> Callable:
    def mapping(module, graph, x, in_shape, out_shape):
        config = module._config
        kernel = pair(op, "kernel_size", config["kernel_size"], 1)
        stride = kernel if config["stride"] is None else pair(op, "stride", config["stride"], 1)
        ph, pw = pair(op, "padding", config["padding"], 0)
        return graph.node(op, [x], kernel_shape=list(kernel), strides=list(stride), pads=[ph, pw, ph, pw], **extra)
    return mapping


register_onnx(MaxPool2D)(_pool("MaxPool"))
register_onnx(AvgPool2D)(_pool("AveragePool", count_include_pad=1))      # xpcnn averages over the padded window


@register_onnx(GlobalAvgPool2D)
def _global_avg_pool(module, graph, x, in_shape, out_shape):
    return graph.node("Flatten", [graph.node("GlobalAveragePool", [x])], axis=1)        # (N, C, 1, 1) -> (N, C)


@register_onnx(Flatten)
def _flatten(module, graph, x, in_shape, out_shape):
    return graph.node("Flatten", [x], axis=1)


@register_onnx(Softmax)
def _softmax(module, graph, x, in_shape, out_shape):
    return graph.node("Softmax", [x], axis=1)


@register_onnx(LeakyReLU)
def _leaky_relu(module, graph, x, in_shape, out_shape):
    return graph.node("LeakyRelu", [x], alpha=float(module._config.get("negative_slope", 0.01)))


@register_onnx(Dropout)
def _dropout(module, graph, x, in_shape, out_shape):
    return x                                # the identity in eval mode


for _kind, _op in ((ReLU, "Relu"), (Sigmoid, "Sigmoid"), (Tanh, "Tanh")):
    register_onnx(_kind)(lambda module, graph, x, in_shape, out_shape, _op=_op: graph.node(_op, [x]))
