"""xpcnn: convolutional networks from scratch, written once against the Python array API.

The backend for new arrays is chosen with ``XPCNN_BACKEND`` (numpy, cupy, torch,
array_api_strict, jax) or :func:`set_backend`; the ops in :mod:`xpcnn.functional`
work on arrays of any of them.
"""

from importlib.metadata import PackageNotFoundError, version as _version

from . import callbacks, data, distributed, export, functional, init, metrics, models, nn, optim, parallel, settings
from .backend import (
    BACKENDS,
    Backend,
    BackendUnavailableError,
    asarray,
    available_backends,
    get_backend,
    set_backend,
    to_numpy,
    use_backend,
)

from .checkpoint import Checkpoint, CheckpointError, load, save
from .export import export_onnx
from .gradcheck import GradcheckError, gradcheck
from .step import TrainStep
from .train import History, TrainingDivergedError, evaluate, fit

try:
    __version__ = _version("xpcnn")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0+unknown"

__all__ = [
    "BACKENDS", "Backend", "BackendUnavailableError", "Checkpoint", "CheckpointError", "GradcheckError", "History",
    "TrainStep", "TrainingDivergedError", "__version__", "asarray", "available_backends", "callbacks", "data",
    "distributed", "evaluate", "export", "export_onnx", "fit", "functional", "get_backend", "gradcheck", "init", "load",
    "metrics", "models", "nn", "optim", "parallel", "save", "set_backend", "settings", "to_numpy", "use_backend",
]
