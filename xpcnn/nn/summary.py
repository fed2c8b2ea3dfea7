"""Shape tracing, summaries and printing for :class:`~xpcnn.nn.Module`: an empty batch run through the model in
a :class:`~xpcnn.nn.module.Run` of its own, so no module's mode or pending backward is touched."""

from __future__ import annotations

import inspect
import math

import numpy as np

from .. import backend as _backend
from ..functional import layout as _layout
from .calls import Run
from .slots import dtype_name

__all__ = ["Summary"]


class Summary:
    """``check_input``, ``summary``, ``short_repr`` and ``repr`` of a module."""

    def _trace_shapes(self, sample_shape: tuple) -> dict[int, tuple]:
        """Each module's output shape for one sample, by running an empty batch through it in eval mode."""
        with self.using():
            return self._trace(sample_shape)

    def _trace(self, sample_shape: tuple) -> dict[int, tuple]:
        params = [*self.parameters(), *self.buffers()]
        like = params[0].data if params else _backend.asarray(np.zeros(1, np.float32))
        layout = _layout.for_ndim(self.run_layout, len(sample_shape) + 1)
        empty = np.zeros(_layout.from_nchw_shape((0, *sample_shape), layout), dtype=dtype_name(like))
        run = Run(layout, training=False, trace=[])
        try:
            run.call(self, _backend.asarray_like(empty, like))
        except (ValueError, TypeError) as exc:
            names = {id(m): n for n, m in self.named_modules()}
            where = getattr(exc, "xpcnn_module", self)
            label = names.get(id(where)) or "(top)"
            raise ValueError(f"{self.name}: input of shape (N, {', '.join(map(str, sample_shape))}) does not fit "
                             f"layer {label} ({where.short_repr()}): {exc}") from None
        return {id(module): shape for module, shape in reversed(run.trace)}    # first use wins

    def check_input(self, shape: tuple) -> tuple:
        """Raise ValueError, with the expected shape, if inputs of ``shape`` (N, ...) cannot pass through;
        return the shape of one sample's output."""
        shape = tuple(shape)
        if self.input_shape is not None and shape[1:] != tuple(self.input_shape):
            raise ValueError(f"{self.name} expects inputs of shape (N, {', '.join(map(str, self.input_shape))}); "
                             f"got {shape}")
        return self._trace_shapes(shape[1:])[id(self)]

    def summary(self, input_shape: tuple | None = None) -> str:
        """A table of every module (indented by depth), its output shape and parameter count (needs
        ``input_shape`` (C, H, W), or a model built with one)."""
        sample = tuple(input_shape or self.input_shape or ())
        if not sample:
            raise ValueError("summary needs input_shape=(C, H, W) (or a model built with one)")
        shapes = self._trace_shapes(sample)
        rows = [("layer", "output shape", "parameters")]
        for name, module in self.named_modules():
            if not name:
                continue
            depth = name.count(".")
            count = sum(math.prod(p.shape) for p in module.parameters())
            rows.append((f"{'  ' * depth}{name.rsplit('.', 1)[-1]}: {module.short_repr()}",
                         str(shapes.get(id(module), "?")), f"{count:,}"))
        total = sum(math.prod(p.shape) for p in self.parameters())
        widths = [max(len(r[k]) for r in rows) for k in range(3)]
        lines = [f"{self.name}: input {sample}"]
        lines += [f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c:>{widths[2]}}" for a, b, c in rows]
        lines.append(f"total parameters: {total:,}")
        return "\n".join(lines)

    def short_repr(self) -> str:
        """One line: a layer's repr, or a container's type and size."""
        return repr(self)

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
