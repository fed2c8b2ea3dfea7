"""ONNX export: how far onnxruntime's outputs are from xpcnn's, and its inference time against xpcnn's.

    python benchmarks/bench_onnx.py                  # LeNet-5 and ResNet-8, batch 1 and 256

For each network (seed-0 weights, BatchNorm running statistics drawn away from their initial values, eval
mode): the exported graph's node count, the largest difference to xpcnn's outputs relative to the output scale,
and the inference time per call of onnxruntime (CPU provider, its default threads) against xpcnn's numpy
backend (the model called in eval mode), in alternating blocks (harness.compare), min / median of the blocks.
"""

from __future__ import annotations

import argparse
import tempfile

import numpy as np

import xpcnn
from bench_networks import _calls, with_statistics
from harness import compare, machine

NETWORKS = {"lenet5": ("LeNet-5", lambda: xpcnn.models.lenet5(seed=0)),
            "resnet8": ("ResNet-8 (1x28x28)", lambda: xpcnn.models.resnet8(seed=0))}


def run(networks=tuple(NETWORKS), batches=(1, 256), blocks=5, seconds_per_block=0.5) -> list[dict]:
    import onnx
    import onnxruntime as ort

    rows = []
    with xpcnn.use_backend("numpy"), tempfile.TemporaryDirectory() as folder:
        for network in networks:
            title, build = NETWORKS[network]
            model = with_statistics(build())
            path = xpcnn.export_onnx(model, f"{folder}/{network}.onnx")
            nodes = len(onnx.load(str(path)).graph.node)
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            for batch in batches:
                x_host = np.random.default_rng(batch).standard_normal((batch, *model.input_shape)).astype(np.float32)
                x = xpcnn.asarray(x_host)
                ours = xpcnn.to_numpy(model(x))
                (theirs,) = session.run(None, {"input": x_host})
                error = float(np.max(np.abs(theirs - ours)) / np.max(np.abs(ours)))
                contenders = {"xpcnn": lambda: model(x), "onnxruntime": lambda: session.run(None, {"input": x_host})}
                timings = compare(contenders, _calls(contenders, seconds_per_block), blocks=blocks)
                rows.append(dict(network=title, nodes=nodes, batch=batch, error=error, **timings))
    return rows


def report(rows) -> str:
    import onnxruntime as ort

    lines = [f"ONNX export, float32 inference: xpcnn (numpy backend, eval mode) vs onnxruntime {ort.__version__} "
             f"(CPU provider); ms per call, min / median of the blocks; {machine()}", "",
             "| network | nodes | batch | max difference / output scale | xpcnn (ms) | onnxruntime (ms) | "
             "onnxruntime / xpcnn |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        ours, theirs = r["xpcnn"], r["onnxruntime"]
        lines.append(f"| {r['network']} | {r['nodes']} | {r['batch']} | {r['error']:.1e} | "
                     f"{1e3 * ours.min:.3f} / {1e3 * ours.median:.3f} | {1e3 * theirs.min:.3f} / "
                     f"{1e3 * theirs.median:.3f} | {theirs.median / ours.median:.2f} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--network", nargs="+", choices=sorted(NETWORKS), default=list(NETWORKS))
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 256])
    parser.add_argument("--blocks", type=int, default=5)
    args = parser.parse_args()
    print(report(run(args.network, args.batch, args.blocks)))


if __name__ == "__main__":
    main()
