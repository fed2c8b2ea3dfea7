"""A second device without a GPU: array_api_strict's ``device1``, made to behave like array-api-compat's CuPy.

array-api-compat's CuPy namespace drops ``device=`` in ``zeros``, ``full``, ``arange``, ``empty`` and the
``*_like`` functions: CuPy allocates them on its *current* device. The fixture ``compat_cupy_like`` gives
array_api_strict the same habit (a current device per thread, which its creation functions use whatever
``device=`` says) and registers it with xpcnn.backend as CuPy's is. array_api_strict refuses to combine arrays of
two devices, so any array made off the chosen device fails the test, as it would fail on GPU 1.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

import xpcnn
from xpcnn import backend, nn

strict = pytest.importorskip("array_api_strict", reason="array_api_strict not installed")
DEVICE1 = strict.Device("device1")
CREATORS = ("zeros", "ones", "empty", "full", "arange", "eye", "linspace")
LIKE = ("zeros_like", "ones_like", "empty_like", "full_like")


class _Current(threading.local):
    device = strict.Device("CPU_DEVICE")


@pytest.fixture
def compat_cupy_like(monkeypatch):
    """array_api_strict with a current device, as CuPy under array-api-compat: returns the thread's state."""
    current = _Current()
    for name in CREATORS + LIKE:
        original = getattr(strict, name)

        def dropping(*args, _original=original, device=None, **kwargs):     # device= ignored, as compat's CuPy
            return _original(*args, device=current.device, **kwargs)

        monkeypatch.setattr(strict, name, dropping)
    original_asarray = strict.asarray

    def asarray(obj, /, *, device=None, **kwargs):        # compat's CuPy asarray honours device=, else the current
        here = device if device is not None else (obj.device if isinstance(obj, strict.Array) else current.device)
        return original_asarray(obj, device=here, **kwargs)

    monkeypatch.setattr(strict, "asarray", asarray)

    def use(device):
        previous, current.device = current.device, device
        return previous

    monkeypatch.setitem(backend._CURRENT_DEVICE, "array_api_strict", use)
    saved = backend._default
    yield current
    backend._default = saved


def _data(n=48):
    images, labels = xpcnn.data.load_bundled("train")
    return xpcnn.data.Dataset.from_numpy(images[:n], labels[:n], mean=xpcnn.data.MEAN, std=xpcnn.data.STD)


def _train_one_epoch(**fit):
    """LeNet-5 (Dropout-free) and a ResNet block's BatchNorm would each create arrays: train a model with both
    conv, pooling, BatchNorm and dropout for one small epoch, with augmentation, on the current backend."""
    model = nn.Sequential(nn.Conv2D(1, 4, 3, padding=1), nn.BatchNorm2D(4), nn.ReLU(), nn.MaxPool2D(2), nn.Dropout(0.2),
                          nn.Flatten(), nn.Linear(4 * 14 * 14, 10))
    opt = xpcnn.optim.Adam(model.parameters(), lr=1e-3)
    data = _data()
    history = xpcnn.fit(model, nn.CrossEntropyLoss(), opt, data, epochs=1, batch_size=16, progress=False,
                        augment=xpcnn.data.random_crop_flip, validation_data=_data(32), **fit)
    return model, history


def test_the_double_catches_arrays_made_off_the_chosen_device(compat_cupy_like, monkeypatch):
    """Without making the chosen device current (what xpcnn did before), the first step mixes devices."""
    monkeypatch.delitem(backend._CURRENT_DEVICE, "array_api_strict")
    xpcnn.set_backend("array_api_strict", "device1")
    with pytest.raises(ValueError, match="devices"):
        _train_one_epoch()


def test_xpcnn_device_makes_its_device_current_for_a_whole_fit(compat_cupy_like, monkeypatch):
    monkeypatch.setenv("XPCNN_BACKEND", "array_api_strict")
    monkeypatch.setenv("XPCNN_DEVICE", "device1")
    backend._default = None
    assert xpcnn.get_backend().device == DEVICE1 and compat_cupy_like.device == DEVICE1
    model, history = _train_one_epoch()
    assert all(p.data.device == DEVICE1 for p in model.parameters()) and np.isfinite(history.loss[-1])


def test_set_backend_makes_its_device_current(compat_cupy_like):
    xpcnn.set_backend("array_api_strict", "device1")
    assert compat_cupy_like.device == DEVICE1
    _train_one_epoch()


def test_use_backend_makes_its_device_current_for_the_block_only(compat_cupy_like):
    xpcnn.set_backend("numpy")
    with xpcnn.use_backend("array_api_strict", "device1"):
        assert compat_cupy_like.device == DEVICE1
        model, _ = _train_one_epoch()
    assert compat_cupy_like.device == strict.Device("CPU_DEVICE")
    x = xpcnn.backend.asarray_like(np.zeros((2, 1, 28, 28), np.float32), model.parameters()[0].data)
    assert model(x).device == DEVICE1      # outside the block: a model call makes its input's device current
    with backend.on_device(model.parameters()[0].data):
        assert model(x).device == DEVICE1
    assert compat_cupy_like.device == strict.Device("CPU_DEVICE")


def test_on_device_is_nothing_for_libraries_without_a_current_device():
    with backend.on_device(np.zeros(2)):
        pass
    with backend.on_device(xpcnn.get_backend()):
        pass


def test_bce_and_the_augmentation_stay_on_the_chosen_device(compat_cupy_like):
    xpcnn.set_backend("array_api_strict", "device1")
    probs = xpcnn.asarray(np.array([[0.0, 0.3], [1.0, 0.7]], np.float32))
    loss, cache = xpcnn.functional.binary_cross_entropy_forward(probs, xpcnn.asarray(np.eye(2, dtype=np.float32)))
    assert loss.device == DEVICE1 and np.isfinite(float(xpcnn.to_numpy(loss)))
    out = xpcnn.data.random_crop_flip(xpcnn.asarray(np.ones((3, 2, 8, 8), np.float32)), np.random.default_rng(0))
    assert out.device == DEVICE1 and out.shape == (3, 2, 8, 8)


class _HostMPI:
    """MPI for one rank that takes host (NumPy) buffers only, as mpi4py's buffer interface does."""

    def __init__(self):
        self.host_sums = 0

    def Allreduce(self, send, out):
        assert isinstance(send, np.ndarray), f"MPI was handed a {type(send)}"
        out[...] = send
        self.host_sums += 1

    def Bcast(self, buffer, root=0):
        assert isinstance(buffer, np.ndarray)

    def allgather(self, value):
        return [value]

    def Barrier(self):
        pass


class _DeviceComm:
    """A device communicator (NCCL's role) that refuses host arrays and arrays off its device."""

    def __init__(self, device):
        self.device, self.sums = device, 0

    def allreduce(self, flat):
        if isinstance(flat, np.ndarray):
            raise TypeError("a host array was handed to the device communicator")
        if flat.device != self.device:
            raise ValueError(f"an array on {flat.device} was handed to the communicator of {self.device}")
        self.sums += 1
        return flat + 0


def test_a_data_parallel_fit_sends_device_buffers_to_the_device_comm_and_host_values_to_mpi(compat_cupy_like):
    """Defect 1 of issue 34: fit's end-of-epoch stop flag (NumPy) went to NCCL and failed there."""
    from xpcnn import distributed

    xpcnn.set_backend("array_api_strict", "device1")
    mpi, device_comm = _HostMPI(), _DeviceComm(DEVICE1)
    ctx = distributed.Context(mpi, 0, 1, 0, 1, device_comm=device_comm)
    _, history = _train_one_epoch(distributed=ctx)
    assert device_comm.sums == 3                        # the three steps' gradients
    assert mpi.host_sums >= 2                           # the stop flag and the evaluation's counts
    assert np.isfinite(history.val_loss[-1])


def test_data_parallel_fit_with_augmentation_and_bce_on_every_backend(B):
    """What ci/gpu.sh's suite runs on cupy: fit's data-parallel path (device buffers to the device communicator,
    host values to MPI), augmentation and BCE, on the backend's own device."""
    from xpcnn import distributed

    name, _, device = B.name.partition(":")
    with xpcnn.use_backend(name, device or None) as selected:
        mpi, device_comm = _HostMPI(), _DeviceComm(selected.device)
        ctx = distributed.Context(mpi, 0, 1, 0, 1, device_comm=device_comm)
        model, history = _train_one_epoch(distributed=ctx)
        images, labels = xpcnn.data.load_bundled("train")
        targets = np.eye(10, dtype=np.float32)[labels[:32]]
        data = xpcnn.data.Dataset.from_numpy(images[:32], targets, mean=xpcnn.data.MEAN, std=xpcnn.data.STD)
        probs = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10), nn.Sigmoid())
        bce = xpcnn.fit(probs, nn.BCELoss(), xpcnn.optim.SGD(probs.parameters(), lr=0.1), data, epochs=1,
                        batch_size=16, progress=False, distributed=ctx)
    assert np.isfinite(history.loss[-1]) and np.isfinite(bce.loss[-1])
    assert device_comm.sums == (0 if name == "numpy" else 5)     # NumPy arrays are host arrays: MPI sums them
