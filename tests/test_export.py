"""xpcnn.export_onnx and `xpcnn export`: standard-operator graphs that onnxruntime runs to xpcnn's eval outputs."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import numpy as np
import pytest

import xpcnn
from xpcnn import nn

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "benchmarks"))
from bench_networks import with_statistics  # noqa: E402

onnx = pytest.importorskip("onnx", reason="onnx is not installed (pip install -e '.[onnx]')")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install onnxruntime)")

STANDARD_OPS = {"Conv", "MaxPool", "AveragePool", "BatchNormalization", "Gemm", "Relu", "LeakyRelu", "Sigmoid",
                "Tanh", "Softmax", "Add", "GlobalAveragePool", "Flatten", "Identity"}


def _every_layer(seed=0):
    """Every layer kind and option the exporter maps: strides, dilation, 'same' and asymmetric-free padding, an
    untied bias, padded pools, BatchNorm with and without affine, both residual kinds, Dropout, Softmax."""
    rng = np.random.default_rng(seed)
    return nn.Sequential(
        nn.Conv2D(3, 4, 3, padding="same", rng=rng), nn.BatchNorm2D(4), nn.LeakyReLU(0.2),
        nn.Conv2D(4, 4, 3, stride=2, dilation=2, padding=2, bias=False, rng=rng), nn.BatchNorm2D(4, affine=False),
        nn.Tanh(),
        nn.Residual(nn.Sequential(nn.Conv2D(4, 4, 3, padding=1, rng=rng), nn.ReLU())),
        nn.Residual(nn.Conv2D(4, 6, 1, stride=2, rng=rng), nn.Conv2D(4, 6, 1, stride=2, bias=False, rng=rng)),
        nn.MaxPool2D(3, stride=1, padding=1), nn.AvgPool2D(2, stride=1, padding=1),
        nn.Conv2D(6, 2, 2, bias="untied", input_size=(5, 5), rng=rng), nn.Sigmoid(), nn.Dropout(0.5, seed=1),
        nn.Flatten(), nn.Linear(32, 5, rng=rng), nn.Softmax(),
        input_shape=(3, 16, 16), name="every_layer")


MODELS = {
    "lenet5": lambda: xpcnn.models.lenet5(seed=0),
    "resnet8": lambda: xpcnn.models.resnet8(seed=0),
    "resnet8_rgb": lambda: xpcnn.models.resnet8(in_channels=3, seed=0),
    "resnet20": lambda: xpcnn.models.resnet20(seed=0),
    "resnet20_rgb": lambda: xpcnn.models.resnet20(in_channels=3, seed=0),
    "seed_cnn": lambda: xpcnn.models.seed_cnn(),
    "every_layer": _every_layer,
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_onnxruntime_runs_the_export_to_xpcnn_outputs(name, tmp_path):
    model = with_statistics(MODELS[name]())
    path = xpcnn.export_onnx(model, tmp_path / f"{name}.onnx")
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert {node.op_type for node in proto.graph.node} <= STANDARD_OPS
    (graph_input,), (graph_output,) = proto.graph.input, proto.graph.output
    assert graph_input.name == "input" and graph_output.name == "output"
    assert graph_input.type.tensor_type.shape.dim[0].dim_param == "N"          # any batch size
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 17):
        x = np.random.default_rng(batch).standard_normal((batch, *model.input_shape)).astype(np.float32)
        ours = xpcnn.to_numpy(model(xpcnn.asarray(x)))
        (theirs,) = session.run(None, {"input": x})
        assert theirs.shape == ours.shape
        scale = float(np.max(np.abs(ours)))
        assert float(np.max(np.abs(theirs - ours))) <= 1e-5 * scale, (name, batch)


def test_initializers_carry_the_parameter_names():
    model = xpcnn.models.lenet5(seed=0)
    proto = onnx.load_from_string(_export_bytes(model))
    names = {init.name for init in proto.graph.initializer}
    assert names == {name for name, _ in model.named_parameters()}
    ops = [node.op_type for node in proto.graph.node]
    assert ops.count("Conv") == 2 and ops.count("Gemm") == 3 and "Slice" not in ops


def _export_bytes(model, **kwargs) -> bytes:
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = xpcnn.export_onnx(model, f"{folder}/m.onnx", **kwargs)
        return path.read_bytes()


class Doubler(nn.Module):
    """A user's own layer: 2 * x."""

    def _forward(self, x, run):
        return 2 * x, None

    def _backward(self, dy, cache, run, input_grad):
        return 2 * dy


def test_a_layer_without_mapping_is_named_and_can_be_given_one(tmp_path, monkeypatch):
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), Doubler(), input_shape=(1, 2, 2))
    with pytest.raises(TypeError, match=r"export_onnx: layer 2 \(Doubler\) has no ONNX mapping; give it one with "
                                        r"@xpcnn.export.register_onnx\(Doubler\)"):
        xpcnn.export_onnx(model, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()
    monkeypatch.setattr(xpcnn.export, "_MAPPINGS", dict(xpcnn.export._MAPPINGS))     # this test's mapping only

    @xpcnn.export.register_onnx(Doubler)
    def _(module, graph, x, in_shape, out_shape):
        return graph.node("Add", [x, x])

    path = xpcnn.export_onnx(model, tmp_path / "m.onnx")
    x = np.random.default_rng(0).standard_normal((3, 1, 2, 2)).astype(np.float32)
    (theirs,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})
    np.testing.assert_allclose(theirs, xpcnn.to_numpy(model(xpcnn.asarray(x))), rtol=1e-6)


def test_bad_arguments_are_named(tmp_path):
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    with pytest.raises(ValueError, match=r"export_onnx: sequential has no input_shape; pass input_shape="):
        xpcnn.export_onnx(model, tmp_path / "m.onnx")
    with pytest.raises(ValueError, match=r"does not fit"):
        xpcnn.export_onnx(model, tmp_path / "m.onnx", input_shape=(1, 3, 3))
    with pytest.raises(ValueError, match=r"export_onnx: opset must be an integer >= 13; got 9"):
        xpcnn.export_onnx(model, tmp_path / "m.onnx", input_shape=(1, 2, 2), opset=9)
    with pytest.raises(TypeError, match=r"export_onnx: model must be an xpcnn.nn.Module; got str"):
        xpcnn.export_onnx("lenet5", tmp_path / "m.onnx")


def test_a_float64_model_is_exported_in_float32_with_a_warning(tmp_path):
    model = xpcnn.models.lenet5(seed=0, dtype="float64")
    with pytest.warns(UserWarning, match="the model is float64; the ONNX graph is float32"):
        path = xpcnn.export_onnx(model, tmp_path / "m.onnx")
    x = np.random.default_rng(0).standard_normal((4, 1, 28, 28))
    (theirs,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"input": x.astype(np.float32)})
    ours = xpcnn.to_numpy(model(xpcnn.asarray(x)))
    assert float(np.max(np.abs(theirs - ours))) <= 1e-5 * float(np.max(np.abs(ours)))


def test_export_command(tmp_path):
    checkpoint = xpcnn.save(tmp_path / "net.npz", xpcnn.models.resnet8(seed=0), epoch=3)
    out = tmp_path / "net.onnx"
    done = subprocess.run([sys.executable, "-m", "xpcnn.cli", "export", "--checkpoint", str(checkpoint), "--onnx",
                           str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"wrote {out}: resnet8 from {checkpoint} (epoch 3) as ONNX opset 17" in done.stdout
    onnx.checker.check_model(onnx.load(str(out)))
    refused = subprocess.run([sys.executable, "-m", "xpcnn.cli", "export", "--checkpoint", str(checkpoint), "--onnx",
                              str(tmp_path / "net.txt")], capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "give a file name ending in .onnx" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_a_model_that_is_the_identity_in_eval_mode_exports(tmp_path):
    model = nn.Sequential(nn.Dropout(0.5, seed=0), input_shape=(3,))
    path = xpcnn.export_onnx(model, tmp_path / "m.onnx")
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    (theirs,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})
    np.testing.assert_array_equal(theirs, x)


def test_the_file_carries_its_preprocessing_and_a_raw_input_graph_normalizes_itself(tmp_path):
    """Metadata a server reads with onnxruntime (mean, std, classes, which input), and raw_input=True: the graph
    on raw [0, 1] pixels equals the plain graph on pixels normalized outside."""
    import json

    model = with_statistics(xpcnn.models.resnet8(in_channels=3, num_classes=3, seed=0))
    stats = {"mean": [0.4, 0.5, 0.6], "std": [0.2, 0.25, 0.3]}
    plain = xpcnn.export_onnx(model, tmp_path / "plain.onnx", normalization=stats, classes=["ant", "bee", "cat"])
    raw = xpcnn.export_onnx(model, tmp_path / "raw.onnx", normalization=stats, classes=("ant", "bee", "cat"),
                            raw_input=True)
    sessions = {p.stem: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (plain, raw)}
    meta = {name: s.get_modelmeta().custom_metadata_map for name, s in sessions.items()}
    assert json.loads(meta["plain"]["mean"]) == stats["mean"] and json.loads(meta["raw"]["std"]) == stats["std"]
    assert json.loads(meta["plain"]["classes"]) == ["ant", "bee", "cat"]
    assert meta["plain"]["input"] == "normalized" and meta["raw"]["input"] == "raw"
    pixels = np.random.default_rng(0).random((5, *model.input_shape)).astype(np.float32)
    normalized = ((pixels - np.reshape(stats["mean"], (3, 1, 1))) / np.reshape(stats["std"], (3, 1, 1)))
    (expected,) = sessions["plain"].run(None, {"input": normalized.astype(np.float32)})
    (got,) = sessions["raw"].run(None, {"input": pixels})
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * float(np.max(np.abs(expected))))
    ops = [node.op_type for node in onnx.load(str(raw)).graph.node]
    assert ops[:2] == ["Sub", "Div"] and "Sub" not in [n.op_type for n in onnx.load(str(plain)).graph.node]
    bare = ort.InferenceSession(str(xpcnn.export_onnx(model, tmp_path / "bare.onnx")),
                                providers=["CPUExecutionProvider"])
    assert bare.get_modelmeta().custom_metadata_map == {"input": "normalized"}       # nothing known, nothing said


def test_preprocessing_arguments_are_checked(tmp_path):
    model = xpcnn.models.lenet5(seed=0)
    with pytest.raises(ValueError, match="raw_input=True puts the normalization in the graph; give normalization="):
        xpcnn.export_onnx(model, tmp_path / "m.onnx", raw_input=True)
    with pytest.raises(ValueError, match=r"normalization's std must be positive"):
        xpcnn.export_onnx(model, tmp_path / "m.onnx", normalization=(0.1, 0.0))
    with pytest.raises(TypeError, match=r"normalization must be \{'mean': ..., 'std': ...\} or a \(mean, std\) pair"):
        xpcnn.export_onnx(model, tmp_path / "m.onnx", normalization=0.5)
    with pytest.raises(ValueError, match=r"3 class names for a model with 10 output\(s\)"):
        xpcnn.export_onnx(model, tmp_path / "m.onnx", classes=["a", "b", "c"])
    with pytest.raises(TypeError, match="classes must be a sequence of names"):
        xpcnn.export_onnx(model, tmp_path / "m.onnx", classes="abc")
    assert not (tmp_path / "m.onnx").exists()
    path = xpcnn.export_onnx(model, tmp_path / "m.onnx", normalization=(0.1307, 0.3081), raw_input=True)
    assert onnx.load(str(path)).graph.input[0].doc_string == "raw pixels on the [0, 1] scale"


def test_a_missing_folder_is_an_error_naming_it_and_is_never_made(tmp_path):
    typo = tmp_path / "typo" / "dir"
    with pytest.raises(FileNotFoundError, match=f"export_onnx: cannot write {typo / 'm.onnx'}: the folder {typo} "
                                                f"does not exist; create it first"):
        xpcnn.export_onnx(xpcnn.models.lenet5(seed=0), typo / "m.onnx")
    assert not (tmp_path / "typo").exists()


def test_export_command_stores_the_checkpoints_preprocessing_and_says_which(tmp_path, capsys):
    """The normalization and class names a checkpoint records go into the file's metadata (and with --raw-input
    into the graph); the command says which, and what is missing."""
    import json

    from xpcnn import cli

    model = xpcnn.models.lenet5(seed=0)
    mnist = xpcnn.save(tmp_path / "mnist.npz", model, extra={"dataset": "bundled"})
    assert cli.main(["export", "--checkpoint", str(mnist), str(tmp_path / "plain.onnx")]) == 0
    out = capsys.readouterr().out
    assert "normalization (mean 0.1307, std 0.3081) stored as metadata; add --raw-input to put it in the graph" in out
    assert "no class names stored: the checkpoint records none" in out
    assert cli.main(["export", "--checkpoint", str(mnist), "--raw-input", str(tmp_path / "raw.onnx")]) == 0
    assert ("normalization (mean 0.1307, std 0.3081) put in the graph: it takes raw pixels on the [0, 1] scale"
            in capsys.readouterr().out)
    session = {name: ort.InferenceSession(str(tmp_path / f"{name}.onnx"), providers=["CPUExecutionProvider"])
               for name in ("plain", "raw")}
    assert json.loads(session["raw"].get_modelmeta().custom_metadata_map["mean"]) == [0.1307]
    pixels = np.random.default_rng(0).random((3, 1, 28, 28)).astype(np.float32)
    (got,) = session["raw"].run(None, {"input": pixels})
    (expected,) = session["plain"].run(None, {"input": ((pixels - 0.1307) / 0.3081).astype(np.float32)})
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)

    bare = xpcnn.save(tmp_path / "bare.npz", model)
    assert cli.main(["export", "--checkpoint", str(bare), "--raw-input", str(tmp_path / "x.onnx")]) == 2
    assert "--raw-input puts the input normalization in the graph, but" in capsys.readouterr().err
    assert cli.main(["export", "--checkpoint", str(bare), str(tmp_path / "x.onnx")]) == 0
    assert "no normalization stored: the checkpoint records none" in capsys.readouterr().out
    named = xpcnn.save(tmp_path / "named.npz", model, extra={"classes": [str(k) for k in range(10)],
                                                               "normalization": {"mean": [0.5], "std": [0.25]}})
    assert cli.main(["export", "--checkpoint", str(named), "--onnx", str(tmp_path / "n.onnx")]) == 0
    out = capsys.readouterr().out
    assert "(mean 0.5, std 0.25)" in out and "class names (0, 1, 2, 3, 4, 5, 6, 7, 8, 9) stored as metadata" in out
    meta = onnx.load(str(tmp_path / "n.onnx")).metadata_props
    assert json.loads({p.key: p.value for p in meta}["classes"]) == [str(k) for k in range(10)]
    assert cli.main(["export", "--checkpoint", str(named), str(tmp_path / "a.onnx"), "--onnx",
                     str(tmp_path / "b.onnx")]) == 2
    assert "give the ONNX file to write once" in capsys.readouterr().err


@pytest.mark.parametrize("shape", ["1,28,28", (28, 28), (1, 28.0, 28), (True, 28, 28)])
def test_export_onnx_names_a_malformed_input_shape(tmp_path, shape):
    pytest.importorskip("onnx", reason="onnx not installed: pip install 'xpcnn[onnx]'")
    with pytest.raises(ValueError, match=r"input_shape must be one sample's shape, \(C, H, W\) for images"):
        xpcnn.export_onnx(xpcnn.models.lenet5(), tmp_path / "m.onnx", input_shape=shape)
