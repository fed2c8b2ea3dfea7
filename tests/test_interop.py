"""PyTorch weights both ways (state_dicts of the same structure) and DLPack hand-offs."""

from __future__ import annotations

import pathlib
import sys

import numpy as np
import pytest

import xpcnn

torch = pytest.importorskip("torch", reason="torch is not installed (pip install torch==2.13.0, the CPU build)")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "benchmarks"))
from bench_networks import torch_twin, with_statistics  # noqa: E402

MODELS = {"lenet5": lambda seed: xpcnn.models.lenet5(seed=seed),
          "resnet8": lambda seed: xpcnn.models.resnet8(seed=seed)}


def _outputs_agree(model, net):
    x = np.random.default_rng(3).standard_normal((5, *model.input_shape)).astype(np.float32)
    ours = xpcnn.to_numpy(model(xpcnn.asarray(x)))
    with torch.no_grad():
        theirs = net.eval()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5 * float(np.max(np.abs(ours))))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_a_torch_state_dict_loads_strictly_with_its_batchnorm_counters(name):
    net = torch_twin(torch, with_statistics(MODELS[name](1), 1), "cpu")     # another model's weights, in torch
    state = net.state_dict()
    assert any(key.endswith("num_batches_tracked") for key in state) == (name == "resnet8")
    model = with_statistics(MODELS[name](0), 0)
    model.load_state_dict(state)                                        # strict: the counters are ignored
    _outputs_agree(model, net)
    with pytest.raises(KeyError, match=r"unexpected \['extra.weight'\]"):
        model.load_state_dict({**state, "extra.weight": torch.zeros(1)})


@pytest.mark.parametrize("name", sorted(MODELS))
def test_torch_state_dict_loads_into_torch_strictly(name):
    model = with_statistics(MODELS[name](0), 0)
    net = torch_twin(torch, with_statistics(MODELS[name](1), 1), "cpu")
    net.load_state_dict(xpcnn.export.torch_state_dict(model))         # strict by default in torch
    _outputs_agree(model, net)


def test_dlpack_hands_arrays_over_without_copies():
    x = xpcnn.asarray(np.arange(6, dtype=np.float32).reshape(2, 3))   # numpy backend
    t = torch.from_dlpack(x)
    assert t.data_ptr() == x.__array_interface__["data"][0]            # the same memory
    back = np.from_dlpack(torch.arange(4, dtype=torch.float32))
    np.testing.assert_array_equal(back, [0, 1, 2, 3])
    with xpcnn.use_backend("torch", "cpu"):
        model = xpcnn.models.lenet5(seed=0)
        image = torch.from_dlpack(np.zeros((1, 1, 28, 28), np.float32))
        assert tuple(model.eval()(image).shape) == (1, 10)
