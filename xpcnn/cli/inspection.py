"""``xpcnn evaluate``, ``predict``, ``export`` and ``info``: a checkpoint or the machine looked at, nothing trained."""

from __future__ import annotations

import argparse
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
    evaluate.add_argument("--split", choices=("test", "train"), default="test")
    evaluate.add_argument("--batch-size", type=positive_int, default=1000)
    evaluate.add_argument("--top-k", type=positive_int, metavar="K",
                          help="also report how often the true class is among the K most likely")
    add_backend_options(evaluate)
    evaluate.set_defaults(run=run_evaluate)

    export = commands.add_parser("export", help="write a checkpoint's model as an ONNX graph (needs onnx)")
    export.add_argument("--checkpoint", metavar="PATH", required=True)
    export.add_argument("--onnx", metavar="OUT.onnx", required=True, help="the ONNX file to write (its folder must "
                                                                            "exist)")
    export.add_argument("--opset", type=positive_int, default=17, help="ONNX opset (default 17; at least 13)")
    export.set_defaults(run=run_export)

    predict = commands.add_parser("predict", help="classify images (.png, .jpg, ... or .npy arrays) with a checkpoint")
    predict.add_argument("--checkpoint", metavar="PATH", required=True)
    predict.add_argument("images", nargs="+", metavar="IMAGE",
                         help="an image file Pillow reads (converted to the model's channels, resized) or .npy")
    predict.add_argument("--invert", action="store_true",
                         help="for dark digits on a light background (MNIST digits are light on dark)")
    predict.add_argument("--mean", type=float, nargs="+", metavar="M",
                         help="the training images' mean (per channel, on the [0, 1] scale), for a checkpoint that "
                              "does not record it")
    predict.add_argument("--std", type=float, nargs="+", metavar="S", help="their std, as --mean")
    predict.add_argument("--data", metavar="FILE.npz", help="take the normalization from this file's x_train, as "
                                                              "train --data did")
    add_backend_options(predict)
    predict.set_defaults(run=run_predict)


# --------------------------------------------------------------------------- evaluate
def run_evaluate(args: argparse.Namespace) -> int:
    from ..nn import CrossEntropyLoss
    from ..train import evaluate

    backend = select_backend(args)
    checkpoint = load_checkpoint(args.checkpoint)
    data, note = _evaluated_data(args, checkpoint)
    model = checkpoint.model
    split = data.load(args.split, _precision(model))
    if split is None:
        raise CommandError(f"--data {data.file} has no x_test/y_test; evaluate --split train, or add them")
    try:
        model.check_input((1, *split.sample_shape))
    except ValueError as exc:
        raise CommandError(f"{args.checkpoint} does not fit {data.option}: {exc}") from None
    result = evaluate(model, split, loss_fn=CrossEntropyLoss(), batch_size=args.batch_size, top_k=args.top_k)
    correct = round(result["accuracy"] * result["n"])
    print(f"{model.name} from {args.checkpoint} (epoch {checkpoint.epoch}) on {split.source}{note}, "
          f"backend {backend}")
    print(f"accuracy: {100 * result['accuracy']:.2f}% ({correct:,}/{result['n']:,}), loss {result['loss']:.4f}")
    if args.top_k is not None:
        print(f"top-{args.top_k} accuracy: {100 * result['top_k_accuracy']:.2f}%")
    print(_confusion_table(result["confusion"], result["per_class_accuracy"]))
    return 0


def _evaluated_data(args: argparse.Namespace, checkpoint: Any) -> tuple[DataChoice, str]:
    """--data or --dataset if given, else what the checkpoint says it was trained on (a --data file that is gone
    is refused, never replaced by the bundled set), else the bundled set; and a note saying where it came from."""
    from ..data import DATASETS

    recorded = checkpoint.extra.get("dataset")
    if args.data or args.dataset:
        return data_choice(args), ""
    if recorded is None:
        return data_choice(args), " (the checkpoint records no dataset: the default; --data or --dataset for another)"
    if recorded not in DATASETS and not os.path.isfile(recorded):
        raise CommandError(f"{args.checkpoint} was trained on --data {recorded}, which is not there; give --data "
                           f"FILE.npz (or --dataset) to evaluate on")
    return data_choice(args, recorded), " (as recorded by the checkpoint)"


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
    from ..export import export_onnx

    out = pathlib.Path(args.onnx)
    if out.suffix != ".onnx":
        raise CommandError(f"--onnx {out}: give a file name ending in .onnx")
    check_output("--onnx", out)
    check_distinct({"--checkpoint": args.checkpoint}, {"--onnx": out})
    checkpoint = load_checkpoint(args.checkpoint)
    model = checkpoint.model
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            export_onnx(model, out, opset=args.opset)
    except ImportError as exc:
        raise CommandError(f"{exc}") from None
    except (TypeError, ValueError) as exc:
        raise CommandError(f"{args.checkpoint}: {exc}") from None
    for warning in caught:
        print(f"xpcnn export: warning: {warning.message}", file=sys.stderr)
    shape = ", ".join(map(str, model.input_shape))
    print(f"wrote {out}: {model.name} from {args.checkpoint} (epoch {checkpoint.epoch}) as ONNX opset {args.opset}, "
          f"input 'input' (N, {shape}) float32, output 'output'")
    return 0


# --------------------------------------------------------------------------- predict
def run_predict(args: argparse.Namespace) -> int:
    from ..data import DataError
    from ..data.images import read_images
    from ..functional import softmax

    select_backend(args)
    checkpoint = load_checkpoint(args.checkpoint)
    model = checkpoint.model.eval()
    dtype = _precision(model)
    shape = tuple(model.input_shape or (1, 28, 28))
    mean, std = _normalization(args, checkpoint)
    for path in args.images:
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                pixels = read_images(path, shape, args.invert, mean, std)
        except (DataError, ImportError) as exc:
            raise CommandError(str(exc)) from None
        for warning in caught:
            print(f"warning: {warning.message}", file=sys.stderr)
        probs = _backend.to_numpy(softmax(model(_backend.asarray(pixels, dtype=dtype))))
        if not np.all(np.isfinite(probs)):
            raise CommandError(f"{path}: the model's output is not finite for this input", EXIT_FAILED)
        for i, row in enumerate(probs):
            top = np.argsort(row)[::-1][:3]
            label = path if len(probs) == 1 else f"{path}[{i}]"
            others = ", ".join(f"{k}: {row[k]:.3f}" for k in top[1:])
            print(f"{label}: {top[0]} (probability {row[top[0]]:.3f}; next {others})")
    return 0


def _normalization(args: argparse.Namespace, checkpoint: Any) -> tuple:
    """How the checkpoint's training images were normalized: --mean/--std if given, or the statistics of --data's
    x_train, else what the checkpoint recorded (its statistics, or its built-in dataset's); a checkpoint that says
    nothing is refused."""
    from ..data import DATASETS

    if (args.mean is None) != (args.std is None):
        raise CommandError("give --mean and --std together (one value, or one per channel)")
    if args.mean is not None:
        if args.data:
            raise CommandError("give --data or --mean/--std, not both")
        return tuple(args.mean), tuple(args.std)
    if args.data:                                  # the statistics its training images were normalized with
        train = DataChoice(file=args.data).load("train", "float32")
        return train.mean, train.std
    recorded = checkpoint.extra.get("normalization")
    if isinstance(recorded, dict) and {"mean", "std"} <= set(recorded):
        return tuple(recorded["mean"]), tuple(recorded["std"])
    if checkpoint.extra.get("dataset") in DATASETS:
        spec = DATASETS[checkpoint.extra["dataset"]]
        return spec.mean, spec.std
    raise CommandError(f"{args.checkpoint} does not record how its training images were normalized; give --mean "
                       f"and --std (per channel, pixels on the [0, 1] scale; the training Dataset's .mean and .std), "
                       f"e.g. --mean 0.1307 --std 0.3081 for MNIST")


# --------------------------------------------------------------------------- info
def add_info_parser(commands: Any) -> None:
    info = commands.add_parser("info", help="show the selected backend, library versions, threads and available "
                                            "backends")
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


def _shards_line() -> str:
    from .. import parallel

    return (f"up to {parallel.threads()} per model call on the numpy backend, for big enough batches; "
            f"{parallel.usable_cores()} usable cores ({_settings.ENV['threads']}; 1 turns them off)")
