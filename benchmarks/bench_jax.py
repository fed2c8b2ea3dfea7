"""Compiled training steps on JAX (xpcnn.TrainStep under jax.jit) against xpcnn on NumPy and against PyTorch.

    python benchmarks/bench_jax.py                       # LeNet-5 and ResNet-8, batch 64 and 256 (a few minutes)
    python benchmarks/bench_jax.py --network lenet5 --batch 64 --blocks 3

Three parts, each printed as a Markdown table:

- **Compiled equals eager**: LeNet-5 and ResNet-8 with a Dropout before the classifier, Adam, 20 steps of
  random batches of their input size, the same TrainStep compiled and eager on jax; the largest relative error
  (norm of the difference / norm of the eager array) over every parameter, buffer and optimizer array after 1
  and after 20 steps, in float64 and in float32; beside it the same error between the eager step on numpy and
  on jax, which is what float32 rounding alone does to these 20 steps.
- **Speed**: one training step (float32, SGD with momentum) of the same network, same weights and batch:
  the compiled step on jax; the README's hand-written loop on xpcnn's numpy backend; PyTorch's own step.
  Alternating blocks (harness.compare), min / median of the blocks, ratios of medians from the same run.
- **Kernels**: the top-level instructions of the compiled step's optimized HLO (the ENTRY computation),
  as fusions, custom calls (library calls such as GEMMs), and the rest that compute (parameters, constants,
  tuples and bitcasts excluded). On a GPU each of these is about one kernel launch, so it is the compiled
  step's launch count, to set beside ``count_ops.py``'s eager count. Compiled here for the CPU: XLA's GPU
  fusion decisions differ, so this is a proxy, not a GPU measurement.
"""

from __future__ import annotations

import argparse
import collections
import re
import time

import numpy as np

import xpcnn
from bench_networks import NETWORKS, _calls, _inputs, torch_twin
from harness import compare, machine, training_step
from xpcnn import nn, optim

SHOWN = ("lenet5", "resnet8")


def _build(network: str, dtype: str = "float32", dropout: bool = False):
    """The network on the current backend (models.build's seed 0 weights); with ``dropout``, a Dropout(0.3)
    inserted before the last layer."""
    model = NETWORKS[network][1]()
    if dtype != "float32":
        model = model.to(dtype=dtype)
    if dropout:
        model.insert(len(model) - 1, nn.Dropout(0.3, seed=7))
    return model


def _jax_step(model, compile: bool, opt=None):
    opt = opt or optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    return xpcnn.TrainStep(model, nn.CrossEntropyLoss(), opt, compile=compile), opt


def _snapshot(model, opt) -> list[np.ndarray]:
    arrays = [p.data for p in model.parameters()] + [b.data for b in model.buffers()] + list(opt.state.values())
    return [np.asarray(xpcnn.to_numpy(a), np.float64) for a in arrays]


def equality(network: str, dtype: str, steps: int = 20, batch: int = 16) -> dict[str, float]:
    """The largest relative error between the compiled and the eager step on jax after 1 and after ``steps``
    Adam steps with Dropout and a changing learning rate; and, for scale, between the eager step on numpy and on
    jax after ``steps`` (two libraries' roundings of the same operations)."""
    rng = np.random.default_rng(3)
    runs = {}
    for name, backend, compiled in (("eager", "jax", False), ("compiled", "jax", True), ("numpy", "numpy", False)):
        with xpcnn.use_backend(backend):
            model = _build(network, dtype, dropout=True)
            step, opt = _jax_step(model, compiled, optim.Adam(model.parameters(), lr=1e-3))
            runs[name] = (backend, model, opt, step)
    errors = {}
    for i in range(steps):
        x = rng.standard_normal((batch, *runs["eager"][1].input_shape)).astype(dtype)
        y = rng.integers(0, 10, batch)
        for backend, model, opt, step in runs.values():
            with xpcnn.use_backend(backend):
                opt.lr = 1e-3 * (1 - i / steps)         # a schedule: the learning rate changes every step
                step(xpcnn.asarray(x), xpcnn.asarray(y))
        if i + 1 in (1, steps):
            snaps = {name: _snapshot(model, opt) for name, (_, model, opt, _) in runs.items()}
            errors["compiled 1" if i == 0 else "compiled all"] = _largest_error(snaps["compiled"], snaps["eager"])
    errors["numpy"] = _largest_error(snaps["numpy"], snaps["eager"])
    assert runs["compiled"][3]._function._cache_size() == 1, "the compiled step was traced more than once"
    return errors


def _largest_error(got: list, want: list) -> float:
    return max(float(np.linalg.norm(g - w) / max(np.linalg.norm(w), 1e-30)) for g, w in zip(got, want))


NOT_KERNELS = {"parameter", "constant", "tuple", "get-tuple-element", "bitcast", "copy-start", "copy-done"}


def kernels(network: str, batch: int = 64) -> collections.Counter:
    """Top-level instructions of the compiled step's ENTRY computation, by kind (fusion, custom-call, ...)."""
    with xpcnn.use_backend("jax"):
        model = _build(network)
        step, _ = _jax_step(model, True)
        x, y = (xpcnn.asarray(a) for a in _inputs(network, batch))
        text = step._function.lower(step.state(), x, y, None).compile().as_text()
    entry = text[text.index("\nENTRY "):]
    entry = entry[:entry.index("\n}")]
    counts = collections.Counter()
    for line in entry.splitlines()[1:]:
        match = re.search(r"=\s*\S+(?:\[[^\]]*\])?(?:\{[^}]*\})?\s+([a-z][\w-]*)\(", line)
        if match is None:                  # tuple-shaped results: "(f32[..], ...) custom-call(" and the like
            match = re.search(r"\)\s+([a-z][\w-]*)\(", line)
        if match and match.group(1) not in NOT_KERNELS:
            counts[match.group(1)] += 1
    return counts


def speed(networks=SHOWN, batches=(64, 256), blocks=5, seconds_per_block=0.6) -> list[dict]:
    import jax
    import torch

    rows = []
    for network in networks:
        for batch in batches:
            x_host, y_host = _inputs(network, batch)
            with xpcnn.use_backend("numpy"):
                model = _build(network)
                x, y = xpcnn.asarray(x_host), xpcnn.asarray(y_host)
                numpy_step = training_step(model, x, y, optim.SGD(model.parameters(), lr=0.01, momentum=0.9))
                net = torch_twin(torch, model, "cpu")
            with xpcnn.use_backend("jax"):
                jax_model = _build(network)
                jax_step, _ = _jax_step(jax_model, True)
                jx, jy = xpcnn.asarray(x_host), xpcnn.asarray(y_host)
            topt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
            tx, ty = torch.as_tensor(x_host), torch.as_tensor(y_host)

            def jit_step():
                jax.block_until_ready(jax_step(jx, jy))

            def torch_step():
                topt.zero_grad(set_to_none=True)
                torch.nn.functional.cross_entropy(net(tx), ty).backward()
                topt.step()

            start = time.perf_counter()
            jit_step()                                  # the first call traces and compiles
            first = time.perf_counter() - start
            contenders = {"jax jit": jit_step, "numpy": numpy_step, "torch": torch_step}
            timings = compare(contenders, _calls(contenders, seconds_per_block), blocks=blocks)
            rows.append(dict(network=NETWORKS[network][0], batch=batch, compile_s=first, **timings))
    return rows


def report_equality(rows) -> str:
    lines = ["Compiled equals eager (jax; Dropout before the classifier, Adam with a changing learning rate, batch "
             "16): the largest relative error (norm of the difference / norm) over parameters, buffers and optimizer "
             "state, after 1 and after 20 steps; and for scale, eager numpy against eager jax after 20 steps",
             "", "| network | dtype | compiled, 1 step | compiled, 20 steps | numpy vs jax eager, 20 steps |",
             "| --- | --- | ---: | ---: | ---: |"]
    lines += [f"| {title} | {dtype} | {e['compiled 1']:.1e} | {e['compiled all']:.1e} | {e['numpy']:.1e} |"
              for title, dtype, e in rows]
    return "\n".join(lines)


def report_speed(rows) -> str:
    import jax
    import torch

    lines = [f"Training step, float32, SGD with momentum: jax {jax.__version__} compiled step (TrainStep), the "
             f"README's loop on numpy, PyTorch {torch.__version__} ({torch.get_num_threads()} threads); seconds "
             f"per call, min / median of the blocks; {machine()}",
             "", "| network | batch | jax jit (ms) | xpcnn numpy (ms) | PyTorch (ms) | jit / numpy | jit / PyTorch "
             "| numpy / PyTorch | first call (compile, s) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        j, n, t = r["jax jit"], r["numpy"], r["torch"]
        lines.append(f"| {r['network']} | {r['batch']} | {1e3 * j.min:.2f} / {1e3 * j.median:.2f} | "
                     f"{1e3 * n.min:.2f} / {1e3 * n.median:.2f} | {1e3 * t.min:.2f} / {1e3 * t.median:.2f} | "
                     f"{j.median / n.median:.2f} | {j.median / t.median:.2f} | {n.median / t.median:.2f} | "
                     f"{r['compile_s']:.1f} |")
    return "\n".join(lines)


def report_kernels(rows) -> str:
    lines = ["Kernels per compiled training step (batch 64, SGD with momentum): top-level instructions of the "
             "optimized HLO, compiled for this CPU", "",
             "| network | fusions | custom calls | other | total |", "| --- | ---: | ---: | --- | ---: |"]
    for title, counts in rows:
        other = ", ".join(f"{kind} {n}" for kind, n in counts.most_common() if kind not in ("fusion", "custom-call"))
        lines.append(f"| {title} | {counts['fusion']} | {counts['custom-call']} | {other or '-'} | "
                     f"{sum(counts.values())} |")
    return "\n".join(lines)


def main():
    import jax

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--network", nargs="+", choices=SHOWN, default=list(SHOWN))
    parser.add_argument("--batch", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--blocks", type=int, default=5)
    parser.add_argument("--skip", nargs="*", choices=("equality", "speed", "kernels"), default=[])
    args = parser.parse_args()
    if "equality" not in args.skip:
        jax.config.update("jax_enable_x64", True)       # float64 for the check, as a user asks for it (README)
        rows = [(NETWORKS[n][0], dtype, equality(n, dtype)) for n in args.network for dtype in ("float64", "float32")]
        jax.config.update("jax_enable_x64", False)      # the rest as a float32 user runs it
        print(report_equality(rows) + "\n", flush=True)
    if "kernels" not in args.skip:
        print(report_kernels([(NETWORKS[n][0], kernels(n)) for n in args.network]) + "\n", flush=True)
    if "speed" not in args.skip:
        print(report_speed(speed(args.network, args.batch, args.blocks)), flush=True)


if __name__ == "__main__":
    main()
