"""The ``xpcnn`` command line: ``train``, ``evaluate``, ``predict`` and ``info``."""

from __future__ import annotations

import argparse
import math
import pathlib
import platform
import sys
import time
import warnings

import numpy as np

from . import backend as _backend
from . import settings as _settings
from .nn.module import precision

EXIT_USAGE, EXIT_FAILED, EXIT_INTERRUPTED = 2, 1, 130


class CommandError(Exception):
    """A problem to report in one line, with an exit status, instead of a traceback."""

    def __init__(self, message: str, status: int = EXIT_USAGE, collective: bool = False):
        super().__init__(message)
        self.status = status
        self.collective = collective     # met by every rank of a distributed run alike (rank 0 alone says it)


# --------------------------------------------------------------------------- info
def _info(args: argparse.Namespace) -> int:
    import array_api_compat

    import xpcnn

    print(f"xpcnn {xpcnn.__version__} (Python {platform.python_version()}, {platform.platform()})")
    print(f"array-api-compat {array_api_compat.__version__}; ops written against array API {_backend.ARRAY_API_VERSION}")
    try:
        selected = _backend.get_backend()
    except (ValueError, _backend.BackendUnavailableError) as exc:
        print(f"selected backend: ERROR: {exc}")
        status = EXIT_FAILED
    else:
        api = getattr(selected.xp, "__array_api_version__", "unknown")
        print(f"selected backend: {selected.name} {selected.version}, device {selected.device}, array API {api}")
        status = 0
    status = _info_line("machine", _machine_line, status)
    status = _info_line("batch shards", _shards_line, status)
    status = _info_line("convolution routes and batch shards", _tuning_line, status)
    print("backends here:")
    for name, state in _backend.available_backends().items():
        print(f"  {name:<17} {state}")
    return status


def _info_line(label: str, describe, status: int) -> int:
    """Print ``label: describe()``, or the setting that keeps it from being known (and then fail)."""
    try:
        print(f"{label}: {describe()}")
        return status
    except _settings.SettingsError as exc:
        print(f"{label}: ERROR: {exc}")
        return EXIT_FAILED


def _machine_line() -> str:
    from . import parallel, tuning

    return f"{tuning.cpu()}, {parallel.usable_cores()} cores; BLAS: {tuning.blas_kernels()}"


def _shards_line() -> str:
    from . import parallel

    return (f"up to {parallel.threads()} per model call on the numpy backend, for big enough batches "
            f"({_settings.ENV['threads']}; 1 turns them off)")


def _tuning_line() -> str:
    from . import tuning

    tune = tuning.mode()
    measured = len(tuning.entries()) if tune != "off" else 0
    return (f"{_TUNE_MODES[tune]}; {measured} choices measured on this machine in {tuning.cache_path()} "
            f"('xpcnn tune' measures and lists them)")


_TUNE_MODES = {"off": "size rules only (XPCNN_TUNE=0)",
               "cached": "measured where measured, else size rules (XPCNN_TUNE=1 also measures new shapes)",
               "measure": "measuring new shapes on first use (XPCNN_TUNE=1)"}


# --------------------------------------------------------------------------- tune
_TUNE_INPUTS = {"lenet5": (1, 28, 28), "resnet8": (3, 32, 32)}


def _tune(args: argparse.Namespace) -> int:
    """Measure the convolution routes of the given models' training steps on this machine, keep the fastest
    (:mod:`xpcnn.tuning`), and list every shape measured here with the time of each route."""
    from . import models, nn, tuning

    backend = _select_backend(args)
    if backend.name != "numpy":
        raise CommandError(f"tune measures the numpy backend (a GPU library's timings need its own "
                           f"synchronization); got {backend.name}")
    if tuning.mode() == "off":
        raise CommandError("XPCNN_TUNE=0 turns measured routes off; unset it to tune")
    if not args.list:
        start = time.perf_counter()
        rng = np.random.default_rng(0)
        for name in args.model:
            shape = _TUNE_INPUTS.get(name, (1, 28, 28))
            for batch in args.batch_size:
                model = models.build_for(name, shape, 0, args.dtype)
                loss_fn = nn.CrossEntropyLoss()
                x = rng.standard_normal((batch, *shape)).astype(args.dtype)
                with tuning.measuring():         # one training step's forward and backward, as fit runs them
                    loss_fn(model(x), rng.integers(0, 10, batch))
                    model.backward(loss_fn.backward())
                print(f"measured {name} at batch {batch} ({time.perf_counter() - start:.1f} s so far)", flush=True)
    table = tuning.entries()
    print(f"{len(table)} choices measured on this machine ({tuning.machine()['cpu']}: convolution routes by layer "
          f"shape, batch shards by model and input), in {tuning.cache_path()}:")
    for key, entry in sorted(table.items()):
        chosen = "/".join(entry["route"])
        changed = "" if entry.get("rule") == entry["route"] else f" (size rules: {'/'.join(entry.get('rule', []))})"
        times = ", ".join(f"{route} {ms:.2f}" for route, ms in sorted(entry["ms"].items(), key=lambda kv: kv[1]))
        print(f"  {key}\n    -> {chosen}{changed}; ms: {times}")
    return 0


# --------------------------------------------------------------------------- shared steps
def _select_backend(args: argparse.Namespace):
    try:
        _settings.get()                      # a bad setting is a usage error now, not a traceback later
        if args.backend or args.device:
            return _backend.set_backend(args.backend or _backend.get_backend().name, args.device)
        return _backend.get_backend()
    except (ValueError, _backend.BackendUnavailableError) as exc:
        raise CommandError(str(exc)) from None


def _load_data(args: argparse.Namespace, split: str):
    """The split of --data FILE.npz (None for a test split the file lacks) or of --dataset."""
    from .data import DataError, DataNotFoundError, load_arrays, load_dataset

    try:
        if args.data:
            return load_arrays(args.data, split, dtype=getattr(args, "dtype", None) or "float32")
        return load_dataset(args.dataset, split, data_dir=args.data_dir, download=not args.no_download,
                            dtype=args.dtype)
    except (DataNotFoundError, DataError) as exc:
        raise CommandError(str(exc)) from None


def _resolve_data(args: argparse.Namespace) -> None:
    """--data or --dataset (the bundled subset by default); args.dataset names what was chosen, the file's path
    for --data (checkpoints record it, and a resume must use the same)."""
    if args.data:
        if args.dataset or args.data_dir:
            raise CommandError("give --data FILE.npz or --dataset/--data-dir, not both")
        args.dataset = args.data
    args.dataset = args.dataset or "bundled"


def _load_checkpoint(path: str, model=None, optimizer=None):
    from .checkpoint import CheckpointError, load

    try:
        return load(path, model, optimizer)
    except (FileNotFoundError, CheckpointError, ImportError) as exc:
        raise CommandError(str(exc)) from None


# --------------------------------------------------------------------------- train
def _check_writable(option: str, path: pathlib.Path) -> None:
    """Find out before training that ``path`` can be written (its folder made, a file created there)."""
    import tempfile

    if path.is_dir():
        raise CommandError(f"{option} {path}: is a directory; give a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path.parent):
            pass
    except OSError as exc:
        raise CommandError(f"{option} {path}: cannot write there ({exc.strerror or exc})") from None


def _plot_path(path: str | None) -> pathlib.Path | None:
    """The file ``--plot`` will write: PATH as given, with .png added when it has no suffix."""
    if path is None:
        return None
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise CommandError("--plot needs matplotlib: pip install matplotlib (from a checkout of xpcnn: "
                           "pip install -e '.[plot]')") from None
    plot = pathlib.Path(path)
    if not plot.suffix:
        plot = plot.with_name(plot.name + ".png")
    _check_writable("--plot", plot)
    return plot


# how a run learns: taken from the checkpoint on --resume when not given, refused there when given otherwise
TRAINING_DEFAULTS = {"optimizer": "sgd", "lr": 0.01, "momentum": None, "weight_decay": 0.0, "schedule": "cosine"}


def _resolve_training(args: argparse.Namespace, checkpoint) -> None:
    """Fill the optimizer settings not given: from the checkpoint being resumed (which records them), else the
    defaults. A given one that differs from the checkpoint's is refused: the resumed run continues the saved one."""
    saved = checkpoint.extra.get("training", {}) if checkpoint is not None else {}
    for key, default in TRAINING_DEFAULTS.items():
        given = getattr(args, key)
        if given is None:
            setattr(args, key, saved.get(key, default))
        elif key in saved and saved[key] != given:
            option = "--" + key.replace("_", "-")
            raise CommandError(f"--resume {args.resume} was trained with {option} {saved[key]}; got {given}. A resumed "
                               f"run continues the saved one with its {option} (drop it); to train on with another, "
                               f"load the checkpoint in Python (xpcnn.load) and make a new optimizer")
    if args.optimizer == "sgd" and args.momentum is None:
        args.momentum = 0.9


def _check_train_options(args: argparse.Namespace, checkpoint) -> None:
    """Refuse options that would be ignored or would break the promise of an exact resume."""
    from .checkpoint import ResumeConflict, check_path, check_resume

    if args.data_dir and args.dataset == "bundled":
        raise CommandError("--data-dir is for --dataset mnist, fashion-mnist or cifar10; the bundled subset ships "
                           "with xpcnn")
    _resolve_training(args, checkpoint)
    if args.momentum is not None and args.optimizer != "sgd":
        raise CommandError(f"--momentum is for --optimizer sgd; {args.optimizer} has none (its betas are fixed)")
    if args.checkpoint:
        try:
            check_path(args.checkpoint)
        except (ValueError, ImportError) as exc:
            raise CommandError(f"--checkpoint: {exc}") from None
        _check_writable("--checkpoint", pathlib.Path(args.checkpoint))
    if checkpoint is None:
        return
    try:
        check_resume(checkpoint, model=args.model, dtype=args.dtype, seed=args.seed, batch_size=args.batch_size,
                     dataset=args.dataset)
    except ResumeConflict as conflict:
        option = "--" + conflict.setting.replace("_", "-")
        if conflict.setting == "model":
            raise CommandError(f"--resume {args.resume} holds a {conflict.saved}; drop --model {conflict.given} "
                               "(the checkpoint decides the model)") from None
        if conflict.setting == "dtype":
            raise CommandError(f"--resume {args.resume} holds {conflict.saved} weights; got --dtype {conflict.given} "
                               "(drop it: the checkpoint decides the precision)") from None
        raise CommandError(f"--resume {args.resume} was trained with {option} {conflict.saved}; got "
                           f"{conflict.given}. An exact resume needs the same {option}") from None
    args.dtype = precision(checkpoint.model)


def _train(args: argparse.Namespace) -> int:
    from . import models, nn, optim
    from .callbacks import CSVLogger, EarlyStopping
    from .checkpoint import save
    from .data import random_crop_flip
    from .train import History, TrainingDivergedError, evaluate, fit

    plot = _plot_path(args.plot)
    _resolve_data(args)
    if args.validate and args.val_split is None:
        args.val_split = 0.1              # scoring the test split every epoch would leak it into model selection
    if args.early_stop is not None and args.val_split is None:
        raise CommandError("--early-stop watches the val loss of a held-out part of the training data: give "
                           "--val-split too (e.g. --val-split 0.1)")
    if args.log_csv:
        _check_writable("--log-csv", pathlib.Path(args.log_csv))
    if args.compile and args.distributed:
        raise CommandError("--compile cannot be combined with --distributed (data-parallel steps run eagerly)")
    backend = _select_backend(args)
    ctx = _distributed_context(args)
    root = ctx is None or ctx.is_root
    say = print if root else (lambda *_, **__: None)          # rank 0 alone prints
    history, start_epoch, checkpoint = History(), 0, None
    if args.resume:
        checkpoint = _load_checkpoint(args.resume)
    _check_train_options(args, checkpoint)
    args.dtype = args.dtype or "float32"          # a resumed run has the checkpoint's by now
    if ctx is not None:
        from .distributed import SettingsMismatch

        try:
            ctx.check_same({f"--{name.replace('_', '-')}": getattr(args, name) for name in _SAME_ON_EVERY_RANK},
                           "settings")
        except SettingsMismatch as exc:
            raise CommandError(str(exc), collective=True) from None
    train_data, test_data = _load_data(args, "train"), _load_data(args, "test")
    if checkpoint:
        start_epoch = checkpoint.epoch
        history = History(**checkpoint.extra.get("history", {}))
        if start_epoch >= args.epochs:
            raise CommandError(f"--resume {args.resume}: the checkpoint has already trained {start_epoch} epochs; "
                               f"ask for more with --epochs (got {args.epochs})")
    if checkpoint:
        model = checkpoint.model
    else:
        default = "lenet5" if train_data.sample_shape == (1, 28, 28) else "resnet8"     # resnet8 fits any size
        classes = _classes(train_data, test_data) if args.data else 10
        model = models.build_for(args.model or default, train_data.sample_shape, args.seed, args.dtype, classes)
    optimizer = optim.build(args.optimizer, model.parameters(), args.lr, args.momentum, args.weight_decay)
    if checkpoint and checkpoint.optimizer_state is not None:
        try:
            optimizer.load_state_dict(checkpoint.optimizer_state)
        except ValueError as exc:
            raise CommandError(f"--resume {args.resume}: {exc} (use the same --optimizer)") from None
    schedule = optim.schedule(args.schedule, optimizer, args.epochs, base_lr=args.lr)
    if schedule is not None:
        schedule.set_epoch(start_epoch)        # the rate the first epoch trains at, not where the saved run ended
        spanned = checkpoint.extra.get("epochs") if checkpoint else None
        if spanned is not None and spanned != args.epochs:
            say(f"note: the {args.schedule} schedule now spans {args.epochs} epochs instead of the saved run's "
                f"{spanned}: epoch {start_epoch + 1} trains at lr {optimizer.lr:.3g}")
    loss_fn = nn.CrossEntropyLoss()
    try:
        model.check_input((1, *train_data.sample_shape))
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    n_params = sum(math.prod(p.shape) for p in model.parameters())
    compiled = ctx is None and args.compile is not False and _backend.compiler(model.parameters()[0].data) is not None
    if args.compile and not compiled:
        raise CommandError(f"--compile needs a backend with a compiler (jax); got {backend}")
    ranks = "" if ctx is None else f", {ctx.size} ranks (data-parallel, global batch {args.batch_size})"
    tested = f"{len(test_data):,} test images" if test_data is not None else "no test split"
    say(f"xpcnn train: {model.name} ({n_params:,} parameters) on {train_data.source} "
        f"({len(train_data):,} train images / {tested})")
    say(f"backend {backend}{' (compiled steps)' if compiled else ''}, {args.dtype}; {optimizer!r}, "
        f"schedule {args.schedule}, batch {args.batch_size}, epochs {start_epoch + 1}..{args.epochs}, "
        f"seed {args.seed}{ranks}", flush=True)

    saved = {"epoch": start_epoch if args.resume else None}

    def save_checkpoint(epoch: int, logs: dict) -> None:
        if args.checkpoint:
            try:
                save(args.checkpoint, model, optimizer, epoch=epoch, step=optimizer.steps,
                     extra={"history": history.as_dict(), "seed": args.seed, "dataset": args.dataset,
                            "batch_size": args.batch_size, "normalization": train_data.normalization(),
                            "epochs": args.epochs, "training": {key: getattr(args, key) for key in TRAINING_DEFAULTS}})
            except OSError as exc:      # a full disk, say: the previous checkpoint is whole (atomic writes)
                raise _SaveFailed(f"could not write the checkpoint of epoch {epoch} to {args.checkpoint}: "
                                  f"{exc.strerror or exc}") from None
            saved["epoch"] = epoch

    callbacks = []
    if args.early_stop is not None:
        callbacks.append(EarlyStopping(patience=args.early_stop, restore_best_weights=True))
    if args.log_csv:
        callbacks.append(CSVLogger(args.log_csv, append=bool(args.resume)))
    start = time.perf_counter()
    try:
        fit(model, loss_fn, optimizer, train_data, epochs=args.epochs, batch_size=args.batch_size,
            callbacks=[*callbacks, save_checkpoint],
            validation_split=args.val_split, scheduler=schedule,
            seed=args.seed, start_epoch=start_epoch, history=history, progress=not args.quiet,
            augment=random_crop_flip if args.augment else None, distributed=ctx, compile=args.compile)
    except TrainingDivergedError as exc:
        if root:
            print(f"error: {exc}", file=sys.stderr)
            _report_checkpoint(args, saved["epoch"])
        return EXIT_FAILED
    except _SaveFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        _report_checkpoint(args, saved["epoch"])
        if ctx is not None:                   # rank 0 alone saves: the others wait for it at a barrier
            from .distributed import abort

            abort(EXIT_FAILED)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("\ninterrupted: nothing was left half-written.", file=sys.stderr)
        _report_checkpoint(args, saved["epoch"])
        return EXIT_INTERRUPTED
    seconds = time.perf_counter() - start
    for callback in callbacks:
        if isinstance(callback, EarlyStopping) and callback.stopped_epoch:
            say(f"early stop after epoch {callback.stopped_epoch}: no val loss below {callback.best:.4f} (epoch "
                f"{callback.best_epoch}) for {max(args.early_stop, 1)} epochs; epoch {callback.best_epoch}'s weights "
                f"are kept")
    if test_data is None:
        if args.checkpoint:
            say(f"checkpoint: {args.checkpoint} (epoch {saved['epoch']})")
        say(f"trained in {seconds:.1f}s on {backend}; {args.data} has no x_test/y_test, so no test accuracy")
        _say_if_unsaved(args, say)
        return 0
    result = evaluate(model, test_data, loss_fn=loss_fn, distributed=ctx)
    correct = round(result["accuracy"] * result["n"])
    if not math.isfinite(result["loss"]):
        if root:
            print(f"error: training diverged: the test loss is {result['loss']}; try a lower learning rate "
                  f"(--lr {args.lr:g})", file=sys.stderr)
            _report_checkpoint(args, saved["epoch"])
        return EXIT_FAILED
    if plot and root:
        from .plot import write_plot

        write_plot(history.as_dict(), plot)
        say(f"plot written to {plot}")
    if args.checkpoint:
        say(f"checkpoint: {args.checkpoint} (epoch {saved['epoch']})")
    say(f"test accuracy: {100 * result['accuracy']:.2f}% ({correct:,}/{result['n']:,}), loss {result['loss']:.4f}; "
          f"trained in {seconds:.1f}s on {backend}")
    _say_if_unsaved(args, say)
    return 0


def _say_if_unsaved(args: argparse.Namespace, say) -> None:
    if not args.checkpoint:
        say("nothing was saved: add --checkpoint PATH (.npz or .safetensors) to keep the model for evaluate, "
            "predict, export or --resume")


def _classes(*datasets) -> int:
    """The number of classes the labels of ``datasets`` (None skipped) need: the largest class index + 1."""
    return max(int(_backend.to_numpy(d.labels).max()) + 1 for d in datasets if d is not None and len(d))


# what every rank of a distributed run must be given alike (checked with one allgather at start-up)
_SAME_ON_EVERY_RANK = ("model", "dataset", "data", "batch_size", "epochs", "dtype", "seed", "lr", "optimizer",
                       "momentum", "weight_decay", "schedule", "augment", "val_split", "early_stop", "compile")


class _SaveFailed(Exception):
    """A per-epoch checkpoint could not be written; training stops there."""


def _distributed_context(args: argparse.Namespace):
    """The MPI job's context with --distributed; without it, a warning if an MPI launcher started us."""
    from . import distributed

    if not args.distributed:
        if distributed.launched_by_mpi():
            print("warning: started by an MPI launcher without --distributed: every rank would train alone on "
                  "all the data; add --distributed to train data-parallel", file=sys.stderr)
        return None
    try:
        return distributed.init()
    except ImportError as exc:
        raise CommandError(str(exc)) from None


def _report_checkpoint(args, epoch) -> None:
    if args.checkpoint and epoch:
        print(f"the last good checkpoint is intact: {args.checkpoint} (epoch {epoch})", file=sys.stderr)
    elif args.checkpoint:
        print(f"no checkpoint was written yet to {args.checkpoint}", file=sys.stderr)


# --------------------------------------------------------------------------- evaluate / predict
def _evaluate(args: argparse.Namespace) -> int:
    from .nn import CrossEntropyLoss
    from .train import evaluate

    _resolve_data(args)
    backend = _select_backend(args)
    checkpoint = _load_checkpoint(args.checkpoint)
    args.dtype = precision(checkpoint.model)
    data = _load_data(args, args.split)
    if data is None:
        raise CommandError(f"--data {args.data} has no x_test/y_test; evaluate --split train, or add them")
    option = f"--data {args.data}" if args.data else f"--dataset {args.dataset}"
    try:
        checkpoint.model.check_input((1, *data.sample_shape))
    except ValueError as exc:
        raise CommandError(f"{args.checkpoint} does not fit {option}: {exc}") from None
    result = evaluate(checkpoint.model, data, loss_fn=CrossEntropyLoss(), batch_size=args.batch_size,
                      top_k=args.top_k)
    correct = round(result["accuracy"] * result["n"])
    print(f"{checkpoint.model.name} from {args.checkpoint} (epoch {checkpoint.epoch}) on {data.source}, "
          f"backend {backend}")
    print(f"accuracy: {100 * result['accuracy']:.2f}% ({correct:,}/{result['n']:,}), loss {result['loss']:.4f}")
    if args.top_k is not None:
        print(f"top-{args.top_k} accuracy: {100 * result['top_k_accuracy']:.2f}%")
    print(_confusion_table(result["confusion"], result["per_class_accuracy"]))
    return 0


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


def _export(args: argparse.Namespace) -> int:
    from .export import export_onnx

    out = pathlib.Path(args.onnx)
    if out.suffix != ".onnx":
        raise CommandError(f"--onnx {out}: give a file name ending in .onnx")
    _check_writable("--onnx", out)
    checkpoint = _load_checkpoint(args.checkpoint)
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


def _predict(args: argparse.Namespace) -> int:
    from .data import DATASETS, DataError
    from .data.images import read_images
    from .functional import softmax

    _select_backend(args)
    checkpoint = _load_checkpoint(args.checkpoint)
    model = checkpoint.model.eval()
    dtype = precision(model)
    shape = tuple(model.input_shape or (1, 28, 28))
    mean, std = _normalization(args, checkpoint, DATASETS)
    for path in args.images:
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                pixels = read_images(path, shape, args.invert, mean, std)
        except (DataError, ImportError) as exc:
            raise CommandError(str(exc)) from None
        for warning in caught:
            print(f"warning: {warning.message}", file=sys.stderr)
        x = _backend.asarray(pixels, dtype=dtype)
        probs = _backend.to_numpy(softmax(model(x)))
        if not np.all(np.isfinite(probs)):
            raise CommandError(f"{path}: the model's output is not finite for this input", EXIT_FAILED)
        for i, row in enumerate(probs):
            top = np.argsort(row)[::-1][:3]
            label = path if len(probs) == 1 else f"{path}[{i}]"
            others = ", ".join(f"{k}: {row[k]:.3f}" for k in top[1:])
            print(f"{label}: {top[0]} (probability {row[top[0]]:.3f}; next {others})")
    return 0


def _normalization(args: argparse.Namespace, checkpoint, datasets: dict) -> tuple:
    """How the checkpoint's training images were normalized: --mean/--std if given, or the statistics of --data's
    x_train, else what the checkpoint recorded (its statistics, or its built-in dataset's); a checkpoint that says
    nothing is refused."""
    if (args.mean is None) != (args.std is None):
        raise CommandError("give --mean and --std together (one value, or one per channel)")
    if args.mean is not None:
        if args.data:
            raise CommandError("give --data or --mean/--std, not both")
        return tuple(args.mean), tuple(args.std)
    if args.data:                                  # the statistics its training images were normalized with
        train = _load_data(args, "train")
        return train.mean, train.std
    recorded = checkpoint.extra.get("normalization")
    if isinstance(recorded, dict) and {"mean", "std"} <= set(recorded):
        return tuple(recorded["mean"]), tuple(recorded["std"])
    if checkpoint.extra.get("dataset") in datasets:
        spec = datasets[checkpoint.extra["dataset"]]
        return spec.mean, spec.std
    raise CommandError(f"{args.checkpoint} does not record how its training images were normalized; give --mean "
                       f"and --std (per channel, pixels on the [0, 1] scale; the training Dataset's .mean and .std), "
                       f"e.g. --mean 0.1307 --std 0.3081 for MNIST")


# --------------------------------------------------------------------------- parser
def _version() -> str:
    import xpcnn

    return xpcnn.__version__


def _number(kind: type, rule: str, ok) -> callable:
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


_positive_int = _number(int, "a positive integer", lambda v: v >= 1)
_positive_float = _number(float, "a positive number", lambda v: v > 0)
_non_negative_float = _number(float, "a number >= 0", lambda v: v >= 0)
_momentum = _number(float, "a number in [0, 1)", lambda v: 0 <= v < 1)
_fraction = _number(float, "a number in (0, 1)", lambda v: 0 < v < 1)
_non_negative_int = _number(int, "an integer >= 0", lambda v: v >= 0)


def _add_backend_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", choices=_backend.BACKENDS, help="array library (overrides XPCNN_BACKEND)")
    parser.add_argument("--device", help="device where the backend has several, e.g. 0 or cuda:1 (overrides XPCNN_DEVICE)")


def _add_data_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", metavar="FILE.npz",
                        help="your own arrays: x_train, y_train and optionally x_test, y_test (uint8 or float images "
                             "(N, H, W), NCHW or NHWC; integer labels), normalized with x_train's statistics")
    parser.add_argument("--dataset", choices=("bundled", "mnist", "fashion-mnist", "cifar10"), default=None,
                        help="bundled: the 10,000/2,000-image MNIST subset shipped with xpcnn; mnist, fashion-mnist, "
                             "cifar10: the full sets (from --data-dir, XPCNN_DATA_DIR, ~/.cache/xpcnn/NAME or a "
                             "download)")
    parser.add_argument("--data-dir", help="folder holding the dataset's files: the four MNIST files (.gz or raw), "
                                           "the four Fashion-MNIST .gz files, or cifar-10-binary.tar.gz")
    parser.add_argument("--no-download", action="store_true", help="never download data; fail if it is not found")


def build_parser() -> argparse.ArgumentParser:
    from .models import MODELS
    from .optim import OPTIMIZERS

    parser = argparse.ArgumentParser(
        prog="xpcnn",
        description="Train and inspect convolutional networks on any array API backend "
                    "(select it with XPCNN_BACKEND=numpy|cupy|torch|array_api_strict|jax or --backend).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    info = commands.add_parser("info", help="show the selected backend, library versions and available backends")
    info.set_defaults(run=_info)

    train = commands.add_parser("train", help="train a network and report its test accuracy")
    train.add_argument("--model", choices=[m for m in MODELS if m != "seed_binary"],
                       help="the network (default lenet5; with --resume the checkpoint's)")
    _add_data_options(train)
    train.add_argument("--epochs", type=_positive_int, default=5, help="train up to this epoch (default 5)")
    train.add_argument("--batch-size", type=_positive_int, default=32,
                       help="images per step (default 32; with --distributed the global batch)")
    train.add_argument("--lr", type=_positive_float,
                       help="learning rate (default 0.01; with --resume the checkpoint's)")
    train.add_argument("--optimizer", choices=list(OPTIMIZERS), help="(default sgd; with --resume the checkpoint's)")
    train.add_argument("--momentum", type=_momentum,
                       help="SGD momentum in [0, 1) (default 0.9; SGD only; with --resume the checkpoint's)")
    train.add_argument("--weight-decay", type=_non_negative_float,
                       help="(default 0; with --resume the checkpoint's)")
    train.add_argument("--schedule", choices=("cosine", "step", "none"),
                       help="learning-rate schedule over the epochs (default cosine; with --resume the checkpoint's)")
    train.add_argument("--seed", type=int, default=0, help="seed for initial weights and data order (default 0)")
    train.add_argument("--dtype", choices=("float32", "float64"),
                       help="precision of weights and data (default float32; with --resume the checkpoint's)")
    train.add_argument("--checkpoint", metavar="PATH", help="save a checkpoint (.npz or .safetensors) after each epoch")
    train.add_argument("--resume", metavar="PATH", help="continue from a checkpoint up to --epochs")
    train.add_argument("--plot", metavar="PATH", help="write a PNG of loss and accuracy per epoch (needs matplotlib)")
    train.add_argument("--validate", action="store_true",
                       help="score a held-out 10%% of the training data after every epoch (--val-split 0.1; the "
                            "test split is scored once, at the end, never used to choose)")
    train.add_argument("--val-split", type=_fraction, metavar="F",
                       help="hold out this fraction of the training data (chosen by --seed) and score it after "
                            "every epoch as val loss and accuracy")
    train.add_argument("--early-stop", type=_non_negative_int, metavar="PATIENCE",
                       help="stop when the val loss has not improved for PATIENCE epochs and keep the best epoch's "
                            "weights (needs --val-split)")
    train.add_argument("--log-csv", metavar="PATH", help="write one CSV row of metrics per epoch")
    train.add_argument("--augment", action="store_true",
                       help="random crops (4-pixel padding) and horizontal flips of each training batch, "
                            "CIFAR's standard augmentation")
    train.add_argument("--quiet", action="store_true", help="no progress bar and no per-epoch lines")
    train.add_argument("--distributed", action="store_true",
                       help="data-parallel training on the ranks of an MPI job: mpiexec -n N xpcnn train "
                            "--distributed ... (needs pip install -e '.[mpi]'); --batch-size is the global batch")
    train.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                       help="compile each training step as one function (default: on for jax, the backend with a "
                            "compiler; off elsewhere); not with --distributed")
    _add_backend_options(train)
    train.set_defaults(run=_train)

    evaluate = commands.add_parser("evaluate", help="accuracy of a checkpoint on a data split")
    evaluate.add_argument("--checkpoint", metavar="PATH", required=True)
    _add_data_options(evaluate)
    evaluate.add_argument("--split", choices=("test", "train"), default="test")
    evaluate.add_argument("--batch-size", type=_positive_int, default=1000)
    evaluate.add_argument("--top-k", type=_positive_int, metavar="K",
                          help="also report how often the true class is among the K most likely")
    _add_backend_options(evaluate)
    evaluate.set_defaults(run=_evaluate)

    tune = commands.add_parser("tune", help="measure convolution routes and batch shards on this machine, keep the "
                                            "fastest")
    tune.add_argument("--model", nargs="+", choices=sorted(_TUNE_INPUTS), default=sorted(_TUNE_INPUTS),
                      help="networks whose training steps are measured (default: lenet5 resnet8)")
    tune.add_argument("--batch-size", type=_positive_int, nargs="+", default=[64, 256],
                      help="batch sizes to measure (default 64 256)")
    tune.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    tune.add_argument("--list", action="store_true", help="only list what was measured before")
    _add_backend_options(tune)
    tune.set_defaults(run=_tune)

    export = commands.add_parser("export", help="write a checkpoint's model as an ONNX graph (needs onnx)")
    export.add_argument("--checkpoint", metavar="PATH", required=True)
    export.add_argument("--onnx", metavar="OUT.onnx", required=True, help="the ONNX file to write")
    export.add_argument("--opset", type=_positive_int, default=17, help="ONNX opset (default 17; at least 13)")
    export.set_defaults(run=_export)

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
    _add_backend_options(predict)
    predict.set_defaults(run=_predict)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except CommandError as exc:
        distributed = getattr(args, "distributed", False)
        if not (exc.collective and distributed and _rank() != 0):
            print(f"xpcnn {args.command}: error: {exc}", file=sys.stderr)
        if distributed and not exc.collective:     # met by this rank alone: the others must not wait for it
            from .distributed import abort

            abort(exc.status)
        return exc.status


def _rank() -> int:
    from .distributed import current

    ctx = current()
    return 0 if ctx is None else ctx.rank


if __name__ == "__main__":
    sys.exit(main())
