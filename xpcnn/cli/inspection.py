"""``xpcnn evaluate``, ``predict``, ``export`` and ``info``: a checkpoint or the machine looked at, nothing trained."""

from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import platform
import sys
import warnings
from typing import Any

import numpy as np

from .. import backend as _backend
from .. import settings as _settings
from .common import (EXIT_FAILED, EXIT_USAGE, CommandError, DataChoice, add_backend_options, add_data_options,
                     check_distinct, check_output, data_choice, load_checkpoint, positive_int, select_backend)


def add_parsers(commands: Any) -> None:
    """One parser per command, in the order ``xpcnn --help`` lists them."""
    evaluate = commands.add_parser("evaluate", help="accuracy of a checkpoint on a data split")
    evaluate.add_argument("--checkpoint", metavar="PATH", required=True)
    add_data_options(evaluate)
    evaluate.add_argument("--split", choices=("test", "train"),
                          help="the data's split (default test); an image folder given with --data is scored whole")
    evaluate.add_argument("--batch-size", type=positive_int, default=1000)
    evaluate.add_argument("--top-k", type=positive_int, metavar="K",
                          help="also report how often the true class is among the K most likely")
    add_backend_options(evaluate)
    evaluate.set_defaults(run=run_evaluate)

    export = commands.add_parser("export", help="write a checkpoint's model as an ONNX graph (needs onnx)")
    export.add_argument("--checkpoint", metavar="PATH", required=True)
    export.add_argument("output", nargs="?", metavar="OUT.onnx", help="the ONNX file to write (its folder must "
                                                                        "exist); or give it as --onnx")
    export.add_argument("--onnx", metavar="OUT.onnx", help=argparse.SUPPRESS)
    export.add_argument("--opset", type=positive_int, default=17, help="ONNX opset (default 17; at least 13)")
    export.add_argument("--raw-input", action="store_true",
                        help="put the input normalization in the graph (Sub, Div), so it takes raw pixels on the "
                             "[0, 1] scale; without it the normalization is only stored as metadata")
    _add_normalization_options(export, "for a checkpoint that does not record it")
    export.set_defaults(run=run_export)

    predict = commands.add_parser("predict", help="classify images (.png, .jpg, ... or .npy arrays) with a checkpoint")
    predict.add_argument("--checkpoint", metavar="PATH", required=True)
    predict.add_argument("images", nargs="+", metavar="IMAGE",
                         help="an image file Pillow reads (converted to the model's channels, resized) or .npy")
    predict.add_argument("--invert", action="store_true",
                         help="for dark digits on a light background (MNIST digits are light on dark)")
    _add_normalization_options(predict, "for a checkpoint that does not record it")
    predict.add_argument("--data", metavar="FILE.npz|FOLDER", help="take the normalization from this file's x_train "
                                                                     "or this folder's images, as train --data did")
    add_backend_options(predict)
    predict.set_defaults(run=run_predict)


def _add_normalization_options(parser: argparse.ArgumentParser, when: str) -> None:
    parser.add_argument("--mean", type=float, nargs="+", metavar="M",
                        help=f"the training images' mean (per channel, on the [0, 1] scale), {when}")
    parser.add_argument("--std", type=float, nargs="+", metavar="S", help="their std, as --mean")


# --------------------------------------------------------------------------- evaluate
def run_evaluate(args: argparse.Namespace) -> int:
    from ..data import DataError
    from ..nn import CrossEntropyLoss
    from ..train import evaluate

    backend = select_backend(args)
    checkpoint = load_checkpoint(args.checkpoint)
    data, split_name, note = _evaluated_data(args, checkpoint)
    model = checkpoint.model
    split = data.load(split_name, _precision(model))
    if split is None:
        raise CommandError(f"--data {data.file} has no x_test/y_test; evaluate --split train, or add them")
    try:
        model.check_input((1, *split.sample_shape))
    except ValueError as exc:
        raise CommandError(f"{args.checkpoint} does not fit {data.option}: {exc}") from None
    try:
        result = evaluate(model, split, loss_fn=CrossEntropyLoss(), batch_size=args.batch_size, top_k=args.top_k)
    except DataError as exc:
        raise CommandError(f"{data.option}: {exc}") from None
    correct = round(result["accuracy"] * result["n"])
    print(f"{model.name} from {args.checkpoint} (epoch {checkpoint.epoch}) on {split.source}{note}, "
          f"backend {backend}")
    print(f"accuracy: {100 * result['accuracy']:.2f}% ({correct:,}/{result['n']:,}), loss {result['loss']:.4f}")
    if args.top_k is not None:
        print(f"top-{args.top_k} accuracy: {100 * result['top_k_accuracy']:.2f}%")
    names = getattr(split, "classes", None) or _class_names(checkpoint)
    if names:
        print("classes: " + ", ".join(f"{k} {name}" for k, name in enumerate(names)))
    print(_confusion_table(result["confusion"], result["per_class_accuracy"]))
    return 0


def _evaluated_data(args: argparse.Namespace, checkpoint: Any) -> tuple[DataChoice, str, str]:
    """What to score and the split's name: --data or --dataset if given, else what the checkpoint says it was
    trained on (a --data file or folder that is gone is refused, never replaced by the bundled set), else the
    bundled set; and a note saying where it came from. An image folder is read as the checkpoint's model reads."""
    from ..data import DATASETS

    recorded = checkpoint.extra.get("dataset")
    if args.data or args.dataset:
        data, note = data_choice(args), ""
    elif recorded is None:
        data, note = data_choice(args), " (the checkpoint records no dataset: the default; --data or --dataset " \
                                        "for another)"
    elif recorded not in DATASETS and not os.path.exists(recorded):
        raise CommandError(f"{args.checkpoint} was trained on --data {recorded}, which is not there; give --data "
                           f"FILE.npz or FOLDER (or --dataset) to evaluate on")
    else:
        data, note = data_choice(args, recorded), " (as recorded by the checkpoint)"
    if not data.folder:
        return data, args.split or "test", note
    if not args.data and args.split != "train":
        raise CommandError(f"{args.checkpoint} was trained on the image folder {data.file}, which has no test "
                           f"split; give --data TESTFOLDER (its subfolders among the training classes), or --split "
                           f"train to score the training images")
    if args.data and args.split is not None:
        raise CommandError(f"--split is for a data file; --data {args.data} is an image folder, scored whole")
    settings = _folder_settings(checkpoint)
    if settings["classes"] is None:
        note += " (classes from its subfolders: the checkpoint records none)"
    if settings["mean"] is None:
        note += " (normalized with its own statistics: the checkpoint records none)"
    return dataclasses.replace(data, **settings), "train", note


def _folder_settings(checkpoint: Any) -> dict:
    """How an image folder is read for ``checkpoint``'s model: its recorded classes, the model's image size and
    colour mode, and the training images' normalization (None where unknown)."""
    shape = tuple(checkpoint.model.input_shape or ())
    recorded = checkpoint.extra.get("image_size")
    size = shape[1:] if len(shape) == 3 else (tuple(recorded) if isinstance(recorded, list) else None)
    mode = {1: "grayscale", 3: "rgb"}.get(shape[0]) if len(shape) == 3 else checkpoint.extra.get("color_mode")
    mean, std = _recorded_normalization(checkpoint) or (None, None)
    return {"classes": _class_names(checkpoint), "image_size": size, "mode": mode, "mean": mean, "std": std}


def _class_names(checkpoint: Any) -> tuple[str, ...] | None:
    names = checkpoint.extra.get("classes")
    return tuple(str(n) for n in names) if isinstance(names, list) and names else None


def _precision(model: Any) -> str:
    from ..nn.module import precision

    return precision(model)


def _confusion_table(confusion: np.ndarray, per_class: np.ndarray, limit: int = 20) -> str:
    """The confusion matrix (rows: true class, columns: predicted) with each class's accuracy, for up to
    ``limit`` classes; beyond that the per-class accuracies only."""
    classes = confusion.shape[0]
    accuracy = ["-" if np.isnan(a) else f"{100 * a:.1f}%" for a in per_class]
    if classes > limit:
        return "per-class accuracy: " + ", ".join(f"{k}: {a}" for k, a in enumerate(accuracy))
    width = max(len(f"{confusion.max():,}"), len(str(classes - 1)), 3)
    lines = ["confusion matrix (rows: true class, columns: predicted), with each class's accuracy:",
             "true " + " ".join(f"{k:>{width}}" for k in range(classes)) + "  accuracy"]
    for k in range(classes):
        lines.append(f"{k:>4} " + " ".join(f"{v:>{width},}" for v in confusion[k]) + f"  {accuracy[k]:>8}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- export
def run_export(args: argparse.Namespace) -> int:
    """The checkpoint's model as ONNX, with its normalization and class names where known; says which."""
    from ..export import export_onnx

    if (args.output is None) == (args.onnx is None):
        raise CommandError("give the ONNX file to write once: xpcnn export --checkpoint PATH OUT.onnx")
    option, out = ("--onnx", pathlib.Path(args.onnx)) if args.onnx else ("output", pathlib.Path(args.output))
    if out.suffix != ".onnx":
        raise CommandError(f"{option} {out}: give a file name ending in .onnx")
    check_output(option, out)
    check_distinct({"--checkpoint": args.checkpoint}, {option: out})
    checkpoint = load_checkpoint(args.checkpoint)
    model = checkpoint.model
    stats = _given_normalization(args) or _recorded_normalization(checkpoint)
    if args.raw_input and stats is None:
        raise CommandError(f"--raw-input puts the input normalization in the graph, but {args.checkpoint} does not "
                           f"record it; give --mean and --std (per channel, pixels on the [0, 1] scale)")
    classes = _class_names(checkpoint)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            export_onnx(model, out, opset=args.opset, normalization=stats, classes=classes, raw_input=args.raw_input)
    except ImportError as exc:
        raise CommandError(f"{exc}") from None
    except (TypeError, ValueError) as exc:
        raise CommandError(f"{args.checkpoint}: {exc}") from None
    for warning in caught:
        print(f"xpcnn export: warning: {warning.message}", file=sys.stderr)
    shape = ", ".join(map(str, model.input_shape))
    print(f"wrote {out}: {model.name} from {args.checkpoint} (epoch {checkpoint.epoch}) as ONNX opset {args.opset}, "
          f"input 'input' (N, {shape}) float32, output 'output'")
    print(_preprocessing_line(stats, args.raw_input))
    print(f"class names ({', '.join(classes)}) stored as metadata" if classes else
          "no class names stored: the checkpoint records none (the outputs are class indices)")
    return 0


def _preprocessing_line(stats: tuple | None, raw_input: bool) -> str:
    """What ``xpcnn export`` did with the input's normalization, in one line."""
    if stats is None:
        return ("no normalization stored: the checkpoint records none, so the graph takes pixels normalized as in "
                "training; give --mean and --std to store it")
    mean, std = (v[0] if len(set(v)) == 1 else v for v in stats)
    shown = f"mean {_numbers(mean)}, std {_numbers(std)}"
    if raw_input:
        return (f"normalization ({shown}) put in the graph: it takes raw pixels on the [0, 1] scale (also stored as "
                f"metadata)")
    return f"normalization ({shown}) stored as metadata; add --raw-input to put it in the graph"


def _numbers(values: Any) -> str:
    if isinstance(values, tuple):
        return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"
    return f"{values:.4g}"


# --------------------------------------------------------------------------- predict
def run_predict(args: argparse.Namespace) -> int:
    select_backend(args)
    checkpoint = load_checkpoint(args.checkpoint)
    model = checkpoint.model.eval()
    dtype = _precision(model)
    shape = tuple(model.input_shape or (1, 28, 28))
    mean, std = _normalization(args, checkpoint)
    names = _class_names(checkpoint)

    def name(k: int) -> str:
        return names[k] if names and k < len(names) else str(k)

    for path in args.images:
        probs = _probabilities(model, path, shape, args.invert, mean, std, dtype, names is None)
        for i, row in enumerate(probs):
            top = np.argsort(row)[::-1][:3]
            label = path if len(probs) == 1 else f"{path}[{i}]"
            others = ", ".join(f"{name(k)}: {row[k]:.3f}" for k in top[1:])
            print(f"{label}: {name(top[0])} (probability {row[top[0]]:.3f}; next {others})")
    return 0


def _probabilities(model: Any, path: str, shape: tuple, invert: bool, mean: Any, std: Any, dtype: str,
                   digits: bool) -> np.ndarray:
    """The model's class probabilities for the images in ``path``. The light-background warning speaks of MNIST's
    digits: shown only for a model that was not trained on an image folder (``digits``)."""
    from ..data import DataError
    from ..data.images import read_images
    from ..functional import softmax

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pixels = read_images(path, shape, invert, mean, std)
    except (DataError, ImportError) as exc:
        raise CommandError(str(exc)) from None
    for warning in caught:
        if digits or "background looks light" not in str(warning.message):
            print(f"warning: {warning.message}", file=sys.stderr)
    probs = _backend.to_numpy(softmax(model(_backend.asarray(pixels, dtype=dtype))))
    if not np.all(np.isfinite(probs)):
        raise CommandError(f"{path}: the model's output is not finite for this input", EXIT_FAILED)
    return probs


def _given_normalization(args: argparse.Namespace) -> tuple | None:
    """--mean and --std, given together; None when neither is."""
    if (args.mean is None) != (args.std is None):
        raise CommandError("give --mean and --std together (one value, or one per channel)")
    if args.mean is None:
        return None
    if getattr(args, "data", None):
        raise CommandError("give --data or --mean/--std, not both")
    return tuple(args.mean), tuple(args.std)


def _recorded_normalization(checkpoint: Any) -> tuple | None:
    """What the checkpoint recorded of its training images' normalization (its statistics, or its built-in
    dataset's); None when it says nothing."""
    from ..data import DATASETS

    recorded = checkpoint.extra.get("normalization")
    if isinstance(recorded, dict) and {"mean", "std"} <= set(recorded):
        return tuple(recorded["mean"]), tuple(recorded["std"])
    if checkpoint.extra.get("dataset") in DATASETS:
        spec = DATASETS[checkpoint.extra["dataset"]]
        return tuple(np.atleast_1d(spec.mean).tolist()), tuple(np.atleast_1d(spec.std).tolist())
    return None


def _normalization(args: argparse.Namespace, checkpoint: Any) -> tuple:
    """How the checkpoint's training images were normalized: --mean/--std if given, or the statistics of --data's
    x_train (or folder), else what the checkpoint recorded; a checkpoint that says nothing is refused."""
    given = _given_normalization(args)
    if given is not None:
        return given
    if args.data:                                  # the statistics its training images were normalized with
        folder = {k: v for k, v in _folder_settings(checkpoint).items() if k in ("image_size", "mode")}
        train = DataChoice(file=args.data, **(folder if os.path.isdir(args.data) else {})).load("train", "float32")
        return train.mean, train.std
    recorded = _recorded_normalization(checkpoint)
    if recorded is not None:
        return recorded
    raise CommandError(f"{args.checkpoint} does not record how its training images were normalized; give --mean "
                       f"and --std (per channel, pixels on the [0, 1] scale; the training Dataset's .mean and .std), "
                       f"e.g. --mean 0.1307 --std 0.3081 for MNIST")


# --------------------------------------------------------------------------- info
def add_info_parser(commands: Any) -> None:
    info = commands.add_parser("info", help="show the selected backend, library versions, threads and available "
                                            "backends")
    info.add_argument("--blas", action="store_true",
                      help="also measure which OpenBLAS kernels (core types) run convolution-shaped products "
                           "fastest on this CPU, one child process each (about a second; not on a busy machine)")
    info.set_defaults(run=run_info)


def run_info(args: argparse.Namespace) -> int:
    """Versions, the selected backend and its preflight, the threads; a bad setting or backend is reported and exits
    2, a failed preflight check exits 1."""
    import array_api_compat

    import xpcnn

    print(f"xpcnn {xpcnn.__version__} (Python {platform.python_version()}, {platform.platform()})")
    print(f"array-api-compat {array_api_compat.__version__}; ops written against array API "
          f"{_backend.ARRAY_API_VERSION}")
    status = 0
    try:
        selected = _backend.get_backend()
    except (ValueError, _backend.BackendUnavailableError) as exc:
        print(f"selected backend: ERROR: {exc}")
        status = EXIT_USAGE
    else:
        api = getattr(selected.xp, "__array_api_version__", "unknown")
        print(f"selected backend: {selected.name} {selected.version}, device {selected.device}, array API {api}")
        if not _preflight():
            status = EXIT_FAILED
    print(f"machine: {_machine_line()}")
    if getattr(args, "blas", False):
        _print_blas_kernels()
    try:
        print(f"batch shards: {_shards_line()}")
    except _settings.SettingsError as exc:
        print(f"batch shards: ERROR: {exc}")
        status = EXIT_USAGE
    print("backends here:")
    for name, state in _backend.available_backends().items():
        print(f"  {name:<17} {state}")
    return status


def _preflight() -> bool:
    """Print :func:`xpcnn.backend.preflight`'s checks of the selected backend, one line each; whether all passed."""
    passed = True
    for check in _backend.preflight():
        if check.name == "select" and check.ok:          # the line above already says which backend it is
            continue
        passed = passed and check.ok
        state = f"{check.name} ok ({check.seconds:.2f} s)" if check.ok else f"FAILED {check.name}"
        print(f"preflight: {state}: {check.detail}", flush=True)
    return passed


def _machine_line() -> str:
    """The CPU by family and model, the cores and BLAS's kernels: what to name beside a measured figure."""
    from .. import machine, parallel

    return f"{machine.cpu()}, {parallel.usable_cores()} usable cores; BLAS: {machine.blas_kernels()}"


def _print_blas_kernels() -> None:
    """The OpenBLAS core types this CPU runs, timed on convolution-shaped products, and how to use the fastest."""
    from .. import machine
    from .blas import measured

    choices = machine.kernel_choices()
    lines = measured(choices).splitlines()
    print("BLAS kernels, one thread, convolution-shaped float32 products:")
    for line in lines:
        print(f"  {line}")
    fastest = lines[0].split(":")[0]
    if len(lines) > 1 and fastest != choices[0]:
        print(f"  to use {fastest}: xpcnn train --blas-kernels {fastest} (or --blas-kernels auto), or "
              f"OPENBLAS_CORETYPE={fastest} in the environment before Python starts")


def _shards_line() -> str:
    from .. import parallel

    return (f"up to {parallel.threads()} per model call on the numpy backend, for big enough batches; "
            f"{parallel.usable_cores()} usable cores ({_settings.ENV['threads']}; 1 turns them off)")
