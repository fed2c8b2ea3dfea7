"""The benchmarks measure what they say: PyTorch runs the same network with the same weights, FLOP counts
are right, and run_all.py replaces only its own backend's section of RESULTS.md."""

from __future__ import annotations

import pathlib
import sys

import numpy as np
import pytest

import xpcnn

BENCHMARKS = pathlib.Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import bench_networks  # noqa: E402
import harness  # noqa: E402


@pytest.mark.parametrize("network", sorted(bench_networks.NETWORKS))
def test_torch_twin_is_the_same_network(network):
    torch = pytest.importorskip("torch", reason="torch not installed: the benchmarks' reference is not here")
    with xpcnn.use_backend("numpy"):
        model = bench_networks.NETWORKS[network][1]()
        x = np.random.default_rng(1).standard_normal((3, *model.input_shape)).astype(np.float32)
        ours = xpcnn.to_numpy(model(xpcnn.asarray(x)))
    net = bench_networks.torch_twin(torch, model, "cpu")
    with torch.no_grad():
        theirs = net(torch.as_tensor(x)).numpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5)


def test_forward_flops_of_lenet5():
    model = xpcnn.models.lenet5()
    macs = 6 * 28 * 28 * 25 + 16 * 10 * 10 * 150 + 400 * 120 + 120 * 84 + 84 * 10
    assert bench_networks.forward_flops(model) == 2 * macs     # ~0.83 MFLOP: the issue's ~2.5 MFLOP a step / 3


def test_results_file_keeps_each_backends_section(tmp_path):
    results = tmp_path / "RESULTS.md"
    harness.write_section(results, "numpy", "numpy v1")
    harness.write_section(results, "cupy", "cupy v1")
    harness.write_section(results, "numpy", "numpy v2")
    assert [p.name for p in tmp_path.iterdir()] == ["RESULTS.md"]
    text = results.read_text()
    assert "numpy v2" in text and "numpy v1" not in text and "cupy v1" in text
    assert text.count("<!-- BEGIN numpy -->") == 1 and text.startswith("# Benchmark results")


def test_bench_networks_runs_and_reports():
    """A tiny run of the script's own code path (the GPU run uses the same one with XPCNN_BACKEND=cupy)."""
    pytest.importorskip("torch", reason="torch not installed: the benchmarks' reference is not here")
    with xpcnn.use_backend("numpy"):
        backend, device, rows = bench_networks.run(["lenet5"], (4,), blocks=1, seconds_per_block=0.01)
    assert device == "cpu" and [(r["kind"], r["batch"]) for r in rows] == [("train step", 4), ("inference", 4)]
    assert all(r["ours"].median > 0 and r["theirs"].median > 0 for r in rows)
    table = bench_networks.report(backend, device, rows, gemm=100.0).splitlines()
    assert table[2].startswith("| network | what | batch |") and table[4].startswith("| LeNet-5 | train step | 4 |")
    assert table[4].endswith("%) |") and table[5].endswith("| |")      # GFLOP/s only for training steps


def test_op_counter_counts_both_steps():
    """benchmarks/count_ops.py: a LeNet-5 step's kernel-launching operations on the torch backend (a guard:
    the count may only go down from the 124 measured when col2im stopped assigning views back onto
    themselves), and the same count in the array_api_strict namespace: one source, one count."""
    pytest.importorskip("torch", reason="torch not installed: the counter profiles the torch backend")
    import count_ops

    title, mine, theirs = count_ops.count("lenet5", batch=8)
    assert title == "LeNet-5" and 0 < sum(mine.values()) <= 124 and 40 < sum(theirs.values()) < 100
    assert "aten::view" not in mine and "aten::matmul" in mine
    strict = count_ops.count_strict("lenet5", batch=8)
    assert sum(strict.values()) == sum(mine.values()), (strict, mine)
    assert strict["setitem"] == mine["aten::copy_"] and strict["matmul"] == mine["aten::matmul"]
    table = count_ops.report([(title, mine, strict, theirs)])
    assert f"| LeNet-5 | {sum(mine.values())} | {sum(strict.values())} | {sum(theirs.values())} |" in table


def test_dp_rounding_compares_shards_with_whole_batches():
    """benchmarks/dp_rounding.py: in float64 both libraries' shard-summing equals whole batches to rounding,
    and the two libraries train the same network (a few steps on 256 images)."""
    torch = pytest.importorskip("torch", reason="torch not installed: the script compares with PyTorch")
    import dp_rounding

    images, labels = xpcnn.data.load_bundled("train")
    data = (xpcnn.data.normalize(images[:256, None], "float64"), labels[:256].astype(np.int64))
    with xpcnn.use_backend("numpy"):
        ours = [dp_rounding.ours(data, 0.05, "float64", ranks) for ranks in (1, 2, 3)]
    theirs = dp_rounding.theirs(torch, data, 0.05, "float64", 1)
    for other in ours[1:]:
        assert np.linalg.norm(other - ours[0]) <= 1e-13 * np.linalg.norm(ours[0])
    np.testing.assert_allclose(ours[0], theirs, rtol=0, atol=1e-10)


def test_fit_vs_loop_runs_both_and_reports():
    import bench_fit_vs_loop

    with xpcnn.use_backend("numpy"):
        rows = bench_fit_vs_loop.run((4,), blocks=1, images=8)
    (batch, fit, loop), = rows
    assert batch == 4 and min(fit) > 0 and min(loop) > 0
    table = bench_fit_vs_loop.report(rows, images=8).splitlines()
    assert table[0].startswith("LeNet-5, one epoch of 8 images") and table[4].startswith("| 4 | ")


def test_bench_jax_runs_and_reports():
    """benchmarks/bench_jax.py's three parts on a tiny run: compiled equals eager (float64, to rounding), the
    compiled step's kernels are counted from its HLO, and the speed table has all three contenders."""
    pytest.importorskip("jax", reason="jax not installed (pip install -e '.[jax]')")
    pytest.importorskip("torch", reason="torch not installed: the benchmarks' reference is not here")
    import bench_jax
    import jax

    jax.config.update("jax_enable_x64", True)
    errors = bench_jax.equality("lenet5", "float64", steps=2, batch=4)
    assert set(errors) == {"compiled 1", "compiled all", "numpy"} and max(errors.values()) < 1e-10, errors
    counts = bench_jax.kernels("lenet5", batch=4)
    assert counts["fusion"] > 10 and "parameter" not in counts, counts
    rows = bench_jax.speed(["lenet5"], (4,), blocks=1, seconds_per_block=0.01)
    table = bench_jax.report_speed(rows).splitlines()
    assert table[4].startswith("| LeNet-5 | 4 |") and len(table[4].split("|")) == 11


def test_bench_onnx_runs_and_reports():
    """benchmarks/bench_onnx.py on a tiny run: the exported LeNet-5 agrees with xpcnn and both sides are timed."""
    pytest.importorskip("onnx", reason="onnx not installed (pip install -e '.[onnx]')")
    pytest.importorskip("onnxruntime", reason="onnxruntime not installed")
    import bench_onnx

    rows = bench_onnx.run(["lenet5"], (2,), blocks=1, seconds_per_block=0.01)
    assert rows[0]["nodes"] == 12 and rows[0]["error"] < 1e-5
    assert bench_onnx.report(rows).splitlines()[4].startswith("| LeNet-5 | 12 | 2 |")


def test_profile_step_splits_a_step_by_layer_kind():
    """The per-layer profile's xpcnn side adds up: the layer kinds' times are parts of the step's time."""
    torch = pytest.importorskip("torch", reason="torch not installed: the profile compares with PyTorch")
    import profile_step

    x, y = bench_networks._inputs("lenet5", 8)
    model = xpcnn.models.lenet5(seed=0)
    ours, step = profile_step.profile_xpcnn(model, xpcnn.asarray(x), xpcnn.asarray(y), steps=2)
    assert {"conv", "pool", "relu", "linear", "loss", "optimizer"} <= set(ours)
    assert 0 < sum(ours.values()) <= step * 1.05
    theirs, their_step = profile_step.profile_torch(torch, bench_networks.torch_twin(torch, model, "cpu"),
                                                    torch.as_tensor(x), torch.as_tensor(y), steps=2)
    assert theirs.get("conv", 0) > 0 and their_step > 0


def test_bench_folder_measures_two_folder_sizes():
    """benchmarks/bench_folder.py: an epoch over a folder four times larger peaks at about the same memory."""
    pytest.importorskip("PIL", reason="Pillow is not installed: no PNG files to write (pip install pillow)")
    import bench_folder

    rows = bench_folder.run((128, 512))
    assert [r["images"] for r in rows] == [128, 512]
    assert rows[1]["tracemalloc_peak_mb"] < 1.25 * rows[0]["tracemalloc_peak_mb"] + 1
    assert "| 512 |" in bench_folder.report(rows)
