"""What every subcommand shares: the one-line error, argument types, the backend, checkpoints, data and paths."""

from __future__ import annotations

import argparse
import math
import os
import pathlib
import tempfile
from dataclasses import dataclass
from typing import Any, Callable

from .. import backend as _backend
from .. import settings as _settings

EXIT_USAGE, EXIT_FAILED, EXIT_INTERRUPTED = 2, 1, 130


class CommandError(Exception):
    """A problem to report in one line, with an exit status, instead of a traceback."""

    def __init__(self, message: str, status: int = EXIT_USAGE, collective: bool = False):
        super().__init__(message)
        self.status = status
        self.collective = collective     # met by every rank of a distributed run alike (rank 0 alone says it)


# --------------------------------------------------------------------------- argument types
def number(kind: type, rule: str, ok: Callable[[Any], bool]) -> Callable[[str], Any]:
    """An argparse type: ``kind(text)`` that satisfies ``ok``, else one line saying what is expected."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not math.isfinite(value) or not ok(value):
            raise argparse.ArgumentTypeError(f"must be {rule}; got {text!r}")
        return value

    parse.__name__ = rule           # argparse names the type in some messages
    return parse


positive_int = number(int, "a positive integer", lambda v: v >= 1)
positive_float = number(float, "a positive number", lambda v: v > 0)
non_negative_float = number(float, "a number >= 0", lambda v: v >= 0)
momentum = number(float, "a number in [0, 1)", lambda v: 0 <= v < 1)
fraction = number(float, "a number in (0, 1)", lambda v: 0 < v < 1)
non_negative_int = number(int, "an integer >= 0", lambda v: v >= 0)


def image_size(text: str) -> tuple[int, int]:
    """An argparse type: ``SIZE`` or ``HEIGHTxWIDTH`` in pixels, as (height, width)."""
    parts = text.lower().split("x")
    if len(parts) in (1, 2) and all(p.strip().isdigit() and int(p) > 0 for p in parts):
        return (int(parts[0]), int(parts[-1]))
    raise argparse.ArgumentTypeError(f"must be SIZE or HEIGHTxWIDTH in pixels (e.g. 32 or 48x64); got {text!r}")


def model_name(text: str) -> str:
    """An argparse type: a network :func:`xpcnn.models.build` knows (its registry, or resnet<6n+2>)."""
    from .. import models

    if text == "seed_binary" or not models.known(text):
        names = ", ".join(m for m in models.MODELS if m != "seed_binary")
        raise argparse.ArgumentTypeError(f"must be one of {names} or resnet<6n+2> (resnet32, resnet44, ...); "
                                         f"got {text!r}")
    return text


def add_backend_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", choices=_backend.BACKENDS, help="array library (overrides XPCNN_BACKEND)")
    parser.add_argument("--device", help="device where the backend has several, e.g. 0 or cuda:1 (overrides "
                                         "XPCNN_DEVICE)")


def add_data_options(parser: argparse.ArgumentParser) -> None:
    from ..data import DATASETS

    parser.add_argument("--data", metavar="FILE.npz|FOLDER",
                        help="your own arrays: x_train, y_train and optionally x_test, y_test (uint8 or float images "
                             "(N, H, W), NCHW or NHWC; integer labels), normalized with x_train's statistics; or an "
                             "image folder with one subfolder of images per class (PNG, JPEG, BMP; read batch by "
                             "batch, normalized with its own statistics; no test split)")
    parser.add_argument("--dataset", choices=list(DATASETS), default=None,
                        help="; ".join(f"{name}: {spec.title}" for name, spec in DATASETS.items()) +
                             " (a full set is read from --data-dir, XPCNN_DATA_DIR, ~/.cache/xpcnn/NAME or a "
                             "download; default: what a checkpoint records, else bundled)")
    parser.add_argument("--data-dir", help="folder holding the dataset's files: the four MNIST files (.gz or raw), "
                                           "the four Fashion-MNIST .gz files, or cifar-10-binary.tar.gz")
    parser.add_argument("--no-download", action="store_true", help="never download data; fail if it is not found")


# --------------------------------------------------------------------------- backend, checkpoints
def select_backend(args: argparse.Namespace) -> _backend.Backend:
    """The backend --backend/--device or the environment name; a bad setting is a usage error, not a traceback."""
    try:
        _settings.get()
        if args.backend or args.device:
            return _backend.set_backend(args.backend or _backend.get_backend().name, args.device)
        return _backend.get_backend()
    except (ValueError, _backend.BackendUnavailableError) as exc:
        raise CommandError(str(exc)) from None


def check_dtype(backend: _backend.Backend, dtype: str) -> None:
    """Refuse a precision the backend cannot hold as asked (float64 on JAX without its 64-bit mode)."""
    import numpy as np

    try:
        _backend.asarray(np.zeros(1), dtype=getattr(backend.xp, dtype))
    except (ValueError, TypeError, _backend.BackendUnavailableError) as exc:
        raise CommandError(f"--dtype {dtype} on {backend.name}: {exc}") from None


def load_checkpoint(path: str | os.PathLike, model: Any = None, optimizer: Any = None):
    """:func:`xpcnn.load` with its failures as one line (a missing file, a damaged one, a missing package)."""
    from ..checkpoint import CheckpointError, load

    try:
        return load(path, model, optimizer)
    except (FileNotFoundError, CheckpointError, ImportError, _backend.BackendUnavailableError) as exc:
        raise CommandError(str(exc)) from None


# --------------------------------------------------------------------------- data
@dataclass(frozen=True)
class DataChoice:
    """Where the images come from: ``file`` (--data FILE.npz or FOLDER) or ``dataset`` (a name of
    ``xpcnn.data.DATASETS``). For an image folder: ``image_size`` (height, width) and ``mode`` ("grayscale" or
    "rgb") to read it as (None: from the files), ``classes`` the training classes its subfolders are among, and
    ``mean``/``std`` the normalization (None: the folder's own statistics)."""

    dataset: str = "bundled"
    file: str | None = None
    data_dir: str | None = None
    download: bool = True
    image_size: tuple[int, int] | None = None
    mode: str | None = None
    classes: tuple[str, ...] | None = None
    mean: tuple | None = None
    std: tuple | None = None

    @property
    def folder(self) -> bool:
        """Whether --data names an image folder."""
        return self.file is not None and os.path.isdir(self.file)

    @property
    def recorded(self) -> str:
        """What a checkpoint records: the dataset's name, or the file's absolute path."""
        return os.path.abspath(self.file) if self.file else self.dataset

    @property
    def option(self) -> str:
        return f"--data {self.file}" if self.file else f"--dataset {self.dataset}"

    def load(self, split: str, dtype: str):
        """The split as a Dataset, or a FolderDataset for a folder's "train" (None for a test split the file or
        folder lacks)."""
        from ..data import DataError, DataNotFoundError, load_data, load_dataset

        folder = {"image_size": self.image_size, "mode": self.mode, "classes": self.classes, "mean": self.mean,
                  "std": self.std} if self.folder else {}
        try:
            if self.file:
                return load_data(self.file, split, dtype=dtype, **folder)
            return load_dataset(self.dataset, split, data_dir=self.data_dir, download=self.download, dtype=dtype)
        except (DataNotFoundError, DataError, ImportError) as exc:
            raise CommandError(str(exc)) from None


def data_record(data) -> dict:
    """What a checkpoint records of an image folder it was trained on, so that evaluate, predict and export read
    new images alike: the class names, the image size (height, width) and the colour mode."""
    classes = getattr(data, "classes", None)
    if classes is None:
        return {}
    channels, height, width = data.sample_shape
    return {"classes": list(classes), "image_size": [height, width],
            "color_mode": "grayscale" if channels == 1 else "rgb"}


def data_choice(args: argparse.Namespace, recorded: str | None = None) -> DataChoice:
    """--data or --dataset/--data-dir, else the dataset a checkpoint ``recorded`` (a name, a file or a folder), else
    bundled; --image-size and --color-mode only where that is an image folder."""
    if args.data and (args.dataset or args.data_dir):
        raise CommandError("give --data FILE.npz or --dataset/--data-dir, not both")
    download = not getattr(args, "no_download", False)
    name = args.data or args.dataset or recorded or "bundled"
    if not args.data and args.data_dir and name == "bundled":
        raise CommandError("--data-dir is for --dataset mnist, fashion-mnist or cifar10; the bundled subset ships "
                           "with xpcnn")
    from ..data import DATASETS

    if not args.data and name in DATASETS:
        choice = DataChoice(dataset=name, data_dir=args.data_dir, download=download)
    else:                                                 # --data, or the file or folder a checkpoint recorded
        choice = DataChoice(file=name, download=download, image_size=getattr(args, "image_size", None),
                            mode=getattr(args, "color_mode", None))
    if (choice.image_size or choice.mode) and not choice.folder:
        raise CommandError(f"--image-size and --color-mode are for --data FOLDER (an image folder); "
                           f"{choice.option} is not one")
    return choice


# --------------------------------------------------------------------------- paths
def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths name one file: the same resolved real path, or (both existing) the same inode."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_output(option: str, path: str | os.PathLike) -> pathlib.Path:
    """``path`` if a file can be written there: not a folder, its folder existing (never made silently) and
    writable. Checked before any training, so a typo costs nothing."""
    path = pathlib.Path(path)
    if path.is_dir():
        raise CommandError(f"{option} {path}: is a directory; give a file name")
    folder = path.parent
    if not folder.exists():
        raise CommandError(f"{option} {path}: the folder {folder} does not exist; create it first (it is never "
                           f"made for you, so a typo cannot write somewhere unexpected)")
    if not folder.is_dir():
        raise CommandError(f"{option} {path}: {folder} is not a folder")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise CommandError(f"{option} {path}: cannot write there ({exc.strerror or exc})") from None
    return path


def check_distinct(inputs: dict[str, Any], outputs: dict[str, Any], may_replace: tuple = ()) -> None:
    """No output may name an input or another output (compared as resolved real paths), nor lie inside an input
    folder: writing it would destroy what is read, one output would overwrite the other, or a plot would become
    a training image. ``may_replace``: (output, input) option pairs where
    replacing the input is the point (a resumed checkpoint saved over itself)."""
    given = [(option, path) for option, path in outputs.items() if path is not None]
    for i, (option, path) in enumerate(given):
        for other, other_path in given[i + 1:]:
            if same_file(path, other_path):
                raise CommandError(f"{option} {path} and {other} {other_path} name the same file; give each its "
                                   f"own path")
        for source, source_path in inputs.items():
            if source_path is not None and (option, source) not in may_replace and same_file(path, source_path):
                raise CommandError(f"{option} {path} names the {source} file {source_path}, which writing it would "
                                   f"destroy; give {option} another path")
            if source_path is not None and os.path.isdir(source_path) and _inside(path, source_path):
                raise CommandError(f"{option} {path} is inside the {source} folder {source_path}, whose files are "
                                   f"read as images; write it elsewhere")


def _inside(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    real, top = os.path.realpath(path), os.path.realpath(folder)
    return os.path.commonpath([real, top]) == top
