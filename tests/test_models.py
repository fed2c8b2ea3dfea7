"""xpcnn.models from the user's side: every name builds the user's own Sequential, build_for fits the data's
shape, MobileNet's depthwise-separable blocks agree with a PyTorch twin and export to ONNX, and PyTorch twins
written the natural way exchange weights by structure."""

from __future__ import annotations

import numpy as np
import pytest

import xpcnn
from xpcnn import export, models, nn


def test_any_resnet_of_depth_6n_plus_2_builds_by_name_and_others_are_refused():
    model = models.build("resnet32", in_channels=3)
    assert type(model) is nn.Sequential and model.name == "resnet32" and model.input_shape == (3, 32, 32)
    assert models.known("resnet44") and models.known("mobilenet") and not models.known("resnet10")
    with pytest.raises(ValueError, match=r"model must be one of .* or resnet<6n\+2> .*; got 'resnet10'"):
        models.build("resnet10")


def test_build_for_takes_height_and_width_of_non_square_samples():
    for name in ("resnet8", "mobilenet"):
        model = models.build_for(name, (3, 10, 14), num_classes=4)
        assert model.input_shape == (3, 10, 14)
        assert model(np.zeros((2, 3, 10, 14), np.float32)).shape == (2, 4)


def test_grouped_conv2d_layer_checks_its_groups_and_keeps_them_in_its_configuration():
    layer = nn.Conv2D(4, 8, 3, groups=2)
    assert layer.weight.shape == (8, 2, 3, 3) and layer.config()["groups"] == 2
    assert "groups=2" in repr(layer) and "groups" not in nn.Conv2D(4, 8, 3).config()
    assert nn.from_config(layer.config()).weight.shape == (8, 2, 3, 3)
    with pytest.raises(ValueError, match=r"Conv2D: groups=3 must divide in_channels \(4\) and out_channels \(8\)"):
        nn.Conv2D(4, 8, 3, groups=3)


def _torch_mobilenet(torch, model):
    """MobileNet as a PyTorch user writes it: nn.Sequential of Conv2d(groups=), BatchNorm2d, ReLU, then
    AdaptiveAvgPool2d(1) + Flatten + Linear (one layer more than xpcnn's GlobalAvgPool2D)."""
    layers = []
    for layer in model.layers:
        config = layer.config()
        if isinstance(layer, nn.Conv2D):
            layers.append(torch.nn.Conv2d(config["in_channels"], config["out_channels"], config["kernel_size"],
                                          stride=config["stride"], padding=config["padding"],
                                          groups=config.get("groups", 1), bias=False))
        elif isinstance(layer, nn.BatchNorm2D):
            layers.append(torch.nn.BatchNorm2d(config["num_features"]))
        elif isinstance(layer, nn.ReLU):
            layers.append(torch.nn.ReLU())
        elif isinstance(layer, nn.GlobalAvgPool2D):
            layers += [torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()]
        else:
            layers.append(torch.nn.Linear(config["in_features"], config["out_features"]))
    return torch.nn.Sequential(*layers).double()


def test_mobilenet_trains_like_its_pytorch_twin_loaded_by_structure():
    """Weights handed over by structure (no renaming), one training-mode forward and backward agree with PyTorch,
    and the gradients come back by structure too."""
    torch = pytest.importorskip("torch", reason="torch not installed: no PyTorch twin")
    model = models.mobilenet(dtype="float64", image_size=16)
    twin = _torch_mobilenet(torch, model)
    twin.load_state_dict(export.torch_state_dict(model, like=twin))
    x = np.random.default_rng(0).standard_normal((4, 1, 16, 16))
    y = model(x)
    ty = twin(torch.tensor(x))
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-9, atol=1e-9)
    dy = np.random.default_rng(1).standard_normal(y.shape)
    model.backward(dy)
    ty.backward(torch.tensor(dy))
    grads = {k: p.grad for k, p in twin.named_parameters()}
    pairs = export._pair_by_structure("test", model, twin.state_dict())
    assert sum(key in grads for key, _ in pairs) == len(model.parameters())
    for key, slot in pairs:
        if key in grads:
            np.testing.assert_allclose(slot.grad, grads[key].numpy(), rtol=1e-8, atol=1e-9, err_msg=key)
    fresh = models.mobilenet(dtype="float64", image_size=16, seed=5)
    export.load_torch_state_dict(fresh, twin.state_dict())
    for key, slot in export._pair_by_structure("test", fresh, twin.state_dict()):
        if slot is not None:
            np.testing.assert_array_equal(slot.data, twin.state_dict()[key].numpy(), err_msg=key)


def test_torch_state_dict_by_structure_names_the_first_difference():
    torch = pytest.importorskip("torch", reason="torch not installed: no PyTorch twin")
    model = models.lenet5()
    wrong = torch.nn.Sequential(torch.nn.Conv2d(1, 6, 3), torch.nn.Linear(3, 3))
    with pytest.raises(ValueError, match="the model has 10 parameters and buffers, the PyTorch state 4"):
        export.torch_state_dict(model, like=wrong)
    twin = torch.nn.Sequential(torch.nn.Conv2d(1, 6, 3), torch.nn.Conv2d(6, 16, 5), torch.nn.Linear(400, 120),
                               torch.nn.Linear(120, 84), torch.nn.Linear(84, 10))
    with pytest.raises(ValueError, match=r"xpcnn's '0.weight' \(6, 1, 5, 5\) meets PyTorch's '0.weight' \(6, 1, 3, 3\)"):
        export.load_torch_state_dict(model, twin.state_dict())


def test_mobilenet_exports_to_onnx_with_groups(tmp_path):
    pytest.importorskip("onnx", reason="onnx not installed: pip install 'xpcnn[onnx]'")
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime not installed: no runtime to check the graph")
    model = models.mobilenet(num_classes=3, in_channels=3, seed=2).eval()
    x = np.random.default_rng(2).standard_normal((2, 3, 32, 32)).astype(np.float32)
    xpcnn.export_onnx(model, tmp_path / "m.onnx")
    session = ort.InferenceSession(str(tmp_path / "m.onnx"))
    out = session.run(None, {session.get_inputs()[0].name: x})[0]
    np.testing.assert_allclose(out, model(x), rtol=1e-4, atol=1e-5)
