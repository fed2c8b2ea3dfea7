"""Kernel-launching array operations per training step: xpcnn on the torch backend (and on array_api_strict)
vs PyTorch's own step.

    python benchmarks/count_ops.py                     # LeNet-5 and ResNet-8, batch 64

On the torch backend every array call of xpcnn's one array-API source is one ATen operator, just as every
CuPy call is one or more kernel launches on a GPU: the count is what a GPU step would launch. Counted with
``torch.profiler``: top-level ATen operators of one step (forward, loss, backward, SGD update, zeroing the
gradients), after two warm-up steps, views and metadata-only operators excluded (they launch nothing).
PyTorch's count is its own training step of the same network (autograd, ``torch.optim.SGD`` with
``foreach``), counted the same way.

The same step is also counted in the array_api_strict namespace itself (every namespace function and array
operator called by xpcnn whose result is not a view of an input; item assignment and in-place operators once
each): the count belongs to the one array-API source, not to a backend. Where the two differ it is the
library underneath: torch has no negative strides (``flip`` copies where NumPy makes a view) and runs
``scalar / array`` as ``reciprocal`` and ``mul``.
"""

from __future__ import annotations

import argparse
import collections

import numpy as np

import xpcnn
from bench_networks import NETWORKS, torch_twin
from harness import training_step

# ATen operators that only make a new view or read metadata: no kernel is launched for them
VIEWS = {
    "aten::view", "aten::_reshape_alias", "aten::_unsafe_view", "aten::as_strided",
    "aten::permute", "aten::transpose", "aten::t", "aten::numpy_T", "aten::expand", "aten::expand_as",
    "aten::slice", "aten::select", "aten::unsqueeze", "aten::squeeze", "aten::alias", "aten::detach",
    "aten::lift_fresh", "aten::empty", "aten::empty_like", "aten::empty_strided", "aten::resolve_conj",
    "aten::resolve_neg", "aten::result_type", "aten::broadcast_to", "aten::unflatten",
    "aten::split", "aten::unbind", "aten::chunk", "aten::diagonal", "aten::view_as", "aten::moveaxis",
    "aten::movedim", "aten::broadcast_tensors",
    "aten::is_nonzero", "aten::item", "aten::_local_scalar_dense", "aten::size", "aten::stride",
    "aten::dim", "aten::is_floating_point", "aten::_has_compatible_shallow_copy_type", "aten::set_",
    "aten::matrix_H", "aten::mT", "aten::_to_copy_noop", "aten::index_select_backward",
}


# operators that launch something only when they have to copy: counted by what they call underneath
WRAPPERS = {"aten::to", "aten::contiguous", "aten::reshape", "aten::flatten", "aten::type_as"}


def _launches(event) -> list[str]:
    """The kernel-launching operators that one ATen call amounts to: itself, unless it is a view, or a
    wrapper (``to``, ``contiguous``, ``reshape``) that copies only when it must, in which case the copies
    below it."""
    if event.name in VIEWS:
        return []
    if event.name in WRAPPERS:
        return [name for child in event.cpu_children if child.name.startswith("aten::") for name in _launches(child)]
    return [event.name]


def top_level_ops(torch, fn) -> collections.Counter:
    """ATen operators called directly by ``fn`` (not from inside another operator), views and no-op
    conversions excluded."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    counts = collections.Counter()
    for event in prof.events():
        if not event.name.startswith("aten::"):
            continue
        parent = event.cpu_parent
        while parent is not None and not parent.name.startswith("aten::"):
            parent = parent.cpu_parent
        if parent is None:
            counts.update(_launches(event))
    return counts


def _inputs(model, batch: int):
    rng = np.random.default_rng(0)
    return (rng.standard_normal((batch, *model.input_shape)).astype(np.float32),
            rng.integers(0, 10, batch).astype(np.int64))


def _xpcnn_step(build, batch: int):
    """One training step of the README's loop on the current backend: forward, loss, backward, SGD, zero_grad."""
    model = build()
    x, y = (xpcnn.asarray(a) for a in _inputs(model, batch))
    return training_step(model, x, y, xpcnn.optim.SGD(model.parameters(), lr=0.01, momentum=0.9))


def count(network: str, batch: int = 64):
    import torch

    title, build = NETWORKS[network]
    with xpcnn.use_backend("torch", "cpu"):
        ours = _xpcnn_step(build, batch)
        for _ in range(2):
            ours()
        mine = top_level_ops(torch, ours)
    with xpcnn.use_backend("numpy"):
        net = torch_twin(torch, build(), "cpu")
    topt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    tx, ty = (torch.as_tensor(a) for a in _inputs(build(), batch))

    def theirs():
        topt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(net(tx), ty).backward()
        topt.step()

    for _ in range(2):
        theirs()
    return title, mine, top_level_ops(torch, theirs)


# array_api_strict calls that only read metadata, or allocate without computing (aten::empty on torch)
STRICT_SKIP = {"isdtype", "result_type", "can_cast", "finfo", "iinfo", "broadcast_shapes", "empty", "empty_like"}
STRICT_INPLACE = {"__setitem__", "__iadd__", "__isub__", "__imul__", "__itruediv__", "__ipow__", "__imatmul__",
                  "__iand__", "__ior__", "__ixor__", "__ifloordiv__", "__imod__", "__ilshift__", "__irshift__"}


def _np_arrays(values) -> list:
    import array_api_strict

    found = []
    for value in values:
        if isinstance(value, (list, tuple)):
            found += _np_arrays(value)
        elif isinstance(value, array_api_strict._array_object.Array):
            found.append(value._array)
    return found


def strict_ops(fn) -> collections.Counter:
    """The same count on array_api_strict, taken in the namespace itself: every function of the namespace and
    every operator of its arrays that ``fn`` calls directly (calls made inside another are not counted again),
    except those whose result shares memory with an input (views) and metadata queries. In-place operators
    and item assignment count once each, as ``add_`` and ``copy_`` do on torch."""
    import array_api_strict
    from array_api_strict._array_object import Array

    counts = collections.Counter()
    depth = [0]

    def counted(name, original):
        label = name.strip("_")

        def call(*args, **kwargs):
            depth[0] += 1
            try:
                result = original(*args, **kwargs)
            finally:
                depth[0] -= 1
            if depth[0] == 0:
                if name in STRICT_INPLACE:
                    counts[label] += 1
                else:
                    made = _np_arrays([result])
                    inputs = _np_arrays([*args, *kwargs.values()])
                    if made and not any(np.shares_memory(m, i) for m in made for i in inputs):
                        counts[label] += 1
            return result
        return call

    patched = []
    for name in dir(array_api_strict):
        value = getattr(array_api_strict, name)
        if callable(value) and not isinstance(value, type) and not name.startswith("_") and name not in STRICT_SKIP:
            patched.append((array_api_strict, name, value))
    for name, value in vars(Array).items():
        if name.startswith("__") and callable(value) and (name in STRICT_INPLACE or name in {
                "__add__", "__radd__", "__sub__", "__rsub__", "__mul__", "__rmul__", "__truediv__", "__rtruediv__",
                "__matmul__", "__rmatmul__", "__neg__", "__pos__", "__pow__", "__rpow__", "__abs__", "__eq__",
                "__ne__", "__lt__", "__le__", "__gt__", "__ge__", "__and__", "__or__", "__invert__", "__getitem__",
                "__floordiv__", "__mod__", "__xor__", "__rand__", "__ror__"}):
            patched.append((Array, name, value))
    try:
        for owner, name, value in patched:
            setattr(owner, name, counted(name, value))
        fn()
    finally:
        for owner, name, value in patched:
            setattr(owner, name, value)
    return counts


def count_strict(network: str, batch: int = 64) -> collections.Counter:
    """The count of :func:`count`'s xpcnn step, run on array_api_strict."""
    title, build = NETWORKS[network]
    with xpcnn.use_backend("array_api_strict"):
        step = _xpcnn_step(build, batch)
        for _ in range(2):
            step()
        return strict_ops(step)


def report(rows, detail: bool = False) -> str:
    """``rows``: (title, xpcnn on torch, xpcnn on array_api_strict or None, PyTorch) per network."""
    lines = ["Kernel-launching array operations per training step (batch 64): xpcnn counted on the torch backend "
             "(top-level ATen operators, views excluded) and in the array_api_strict namespace (calls whose result "
             "is not a view), PyTorch's own step on the torch profiler", "",
             "| network | xpcnn (torch) | xpcnn (array_api_strict) | PyTorch | ratio (torch) |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for title, mine, strict, theirs in rows:
        ours, ref = sum(mine.values()), sum(theirs.values())
        other = "-" if strict is None else sum(strict.values())
        lines.append(f"| {title} | {ours} | {other} | {ref} | {ours / ref:.2f} |")
    if detail:
        for title, mine, strict, theirs in rows:
            lines += ["", f"{title}, xpcnn on torch: " + ", ".join(f"{k[6:]} {v}" for k, v in mine.most_common())]
            if strict is not None:
                lines.append(f"{title}, xpcnn on array_api_strict: "
                             + ", ".join(f"{k} {v}" for k, v in strict.most_common()))
            lines.append(f"{title}, PyTorch: " + ", ".join(f"{k[6:]} {v}" for k, v in theirs.most_common()))
    return "\n".join(lines)


def _strict_or_none(network: str):
    try:
        import array_api_strict  # noqa: F401
    except ImportError:
        return None
    return count_strict(network)


def rows(networks) -> list:
    out = []
    for network in networks:
        title, mine, theirs = count(network)
        out.append((title, mine, _strict_or_none(network), theirs))
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--network", nargs="+", choices=["lenet5", "resnet8"], default=["lenet5", "resnet8"])
    parser.add_argument("--detail", action="store_true", help="list the operators by name")
    args = parser.parse_args()
    print(report(rows(args.network), args.detail))


if __name__ == "__main__":
    main()
