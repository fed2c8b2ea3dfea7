"""Kernel-launching array operations per training step: xpcnn on the torch backend vs PyTorch's own step.

    python benchmarks/count_ops.py                     # LeNet-5 and ResNet-8, batch 64

On the torch backend every array call of xpcnn's one array-API source is one ATen operator, just as every
CuPy call is one or more kernel launches on a GPU: the count is what a GPU step would launch. Counted with
``torch.profiler``: top-level ATen operators of one step (forward, loss, backward, SGD update, zeroing the
gradients), after two warm-up steps, views and metadata-only operators excluded (they launch nothing).
PyTorch's count is its own training step of the same network (autograd, ``torch.optim.SGD`` with
``foreach``), counted the same way.
"""

from __future__ import annotations

import argparse
import collections

import numpy as np

import xpcnn
from bench_networks import NETWORKS, torch_twin

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


def count(network: str, batch: int = 64):
    import torch

    title, build = NETWORKS[network]
    with xpcnn.use_backend("torch", "cpu"):
        model = build()
        rng = np.random.default_rng(0)
        x_host = rng.standard_normal((batch, *model.input_shape)).astype(np.float32)
        y_host = rng.integers(0, 10, batch).astype(np.int64)
        x, y = xpcnn.asarray(x_host), xpcnn.asarray(y_host)
        opt = xpcnn.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        loss_fn = xpcnn.nn.CrossEntropyLoss()

        def ours():
            loss_fn(model(x), y)
            model.backward(loss_fn.backward())
            opt.step()
            model.zero_grad()

        for _ in range(2):
            ours()
        mine = top_level_ops(torch, ours)
    with xpcnn.use_backend("numpy"):
        net = torch_twin(torch, build(), "cpu")
    topt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    tx, ty = torch.as_tensor(x_host), torch.as_tensor(y_host)

    def theirs():
        topt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(net(tx), ty).backward()
        topt.step()

    for _ in range(2):
        theirs()
    return title, mine, top_level_ops(torch, theirs)


def report(rows, detail: bool = False) -> str:
    lines = ["Kernel-launching array operations per training step (batch 64, torch backend on CPU, "
             "top-level ATen operators, views excluded)", "",
             "| network | xpcnn | PyTorch | ratio |", "| --- | ---: | ---: | ---: |"]
    for title, mine, theirs in rows:
        ours, ref = sum(mine.values()), sum(theirs.values())
        lines.append(f"| {title} | {ours} | {ref} | {ours / ref:.2f} |")
    if detail:
        for title, mine, theirs in rows:
            lines += ["", f"{title}, xpcnn: " + ", ".join(f"{k[6:]} {v}" for k, v in mine.most_common()),
                      f"{title}, PyTorch: " + ", ".join(f"{k[6:]} {v}" for k, v in theirs.most_common())]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--network", nargs="+", choices=["lenet5", "resnet8"], default=["lenet5", "resnet8"])
    parser.add_argument("--detail", action="store_true", help="list the operators by name")
    args = parser.parse_args()
    print(report([count(network) for network in args.network], args.detail))


if __name__ == "__main__":
    main()
