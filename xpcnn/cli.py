"""The ``xpcnn`` command line: ``train``, ``evaluate``, ``predict`` and ``info``."""

from __future__ import annotations

import argparse
import math
import pathlib
import platform
import sys
import time

import numpy as np

from . import backend as _backend

EXIT_USAGE, EXIT_FAILED, EXIT_INTERRUPTED = 2, 1, 130


class CommandError(Exception):
    """A problem to report in one line, with an exit status, instead of a traceback."""

    def __init__(self, message: str, status: int = EXIT_USAGE):
        super().__init__(message)
        self.status = status


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
    print("backends here:")
    for name, state in _backend.available_backends().items():
        print(f"  {name:<17} {state}")
    return status


# --------------------------------------------------------------------------- shared steps
def _select_backend(args: argparse.Namespace):
    try:
        if args.backend or args.device:
            return _backend.set_backend(args.backend or _backend.get_backend().name, args.device)
        return _backend.get_backend()
    except (ValueError, _backend.BackendUnavailableError) as exc:
        raise CommandError(str(exc)) from None


def _load_data(args: argparse.Namespace, split: str):
    from .data import DataError, DataNotFoundError, load_dataset

    try:
        return load_dataset(args.dataset, split, data_dir=args.data_dir, download=not args.no_download)
    except (DataNotFoundError, DataError) as exc:
        raise CommandError(str(exc)) from None


def _load_checkpoint(path: str, model=None, optimizer=None):
    from .checkpoint import CheckpointError, load

    try:
        return load(path, model, optimizer)
    except (FileNotFoundError, CheckpointError, ImportError) as exc:
        raise CommandError(str(exc)) from None


# --------------------------------------------------------------------------- train
def _build_model(name: str, seed: int, sample_shape: tuple):
    """A model for samples of ``sample_shape`` (C, H, W): ResNets take the channels and image size from the data."""
    import inspect

    from . import models

    kwargs = {"seed": seed}
    if "in_channels" in inspect.signature(models.MODELS[name]).parameters:
        kwargs.update(in_channels=sample_shape[0], image_size=sample_shape[1])
    return models.build(name, **kwargs)


def _make_optimizer(args, params):
    from . import optim

    if args.optimizer == "sgd":
        return optim.SGD(params, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
    return optim.OPTIMIZERS[args.optimizer](params, lr=args.lr, weight_decay=args.weight_decay)


def _make_schedule(args, optimizer):
    from . import optim

    if args.schedule == "cosine":
        return optim.CosineLR(optimizer, args.epochs, base_lr=args.lr)
    if args.schedule == "step":
        return optim.StepLR(optimizer, step_size=max(1, args.epochs // 3), gamma=0.1, base_lr=args.lr)
    return None


def _check_plot_support(path: str | None) -> None:
    if path is None:
        return
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise CommandError("--plot needs matplotlib: pip install 'xpcnn[plot]'") from None


def write_plot(history: dict, path: str) -> None:
    """A PNG with the loss and the accuracy per epoch (train, and validation/test where recorded)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs = history["epoch"]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    ax_loss.plot(epochs, history["loss"], marker="o", label="train")
    ax_acc.plot(epochs, [100 * a for a in history["accuracy"]], marker="o", label="train")
    if history.get("val_accuracy"):
        ax_loss.plot(epochs, history["val_loss"], marker="s", label="test")
        ax_acc.plot(epochs, [100 * a for a in history["val_accuracy"]], marker="s", label="test")
    for ax, label in ((ax_loss, "loss"), (ax_acc, "accuracy (%)")):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("xpcnn training")
    pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _train(args: argparse.Namespace) -> int:
    from . import nn
    from .checkpoint import save
    from .data import random_crop_flip
    from .train import History, TrainingDivergedError, evaluate, fit

    _check_plot_support(args.plot)
    backend = _select_backend(args)
    train_data, test_data = _load_data(args, "train"), _load_data(args, "test")
    history, start_epoch, checkpoint = History(), 0, None
    if args.resume:
        checkpoint = _load_checkpoint(args.resume)
        start_epoch = checkpoint.epoch
        history = History(**checkpoint.extra.get("history", {}))
        if start_epoch >= args.epochs:
            raise CommandError(f"--resume {args.resume}: the checkpoint has already trained {start_epoch} epochs; "
                               f"ask for more with --epochs (got {args.epochs})")
    model = checkpoint.model if checkpoint else _build_model(args.model, args.seed, train_data.sample_shape)
    optimizer = _make_optimizer(args, model.parameters())
    if checkpoint and checkpoint.optimizer_state is not None:
        try:
            optimizer.load_state_dict(checkpoint.optimizer_state)
        except ValueError as exc:
            raise CommandError(f"--resume {args.resume}: {exc} (use the same --optimizer)") from None
    schedule = _make_schedule(args, optimizer)
    loss_fn = nn.CrossEntropyLoss()
    try:
        model.check_input((1, *train_data.sample_shape))
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    n_params = sum(math.prod(p.shape) for p in model.parameters())
    print(f"xpcnn train: {model.name} ({n_params:,} parameters) on {train_data.source} "
          f"({len(train_data):,} train / {len(test_data):,} test images)")
    print(f"backend {backend}; {optimizer!r}, schedule {args.schedule}, batch {args.batch_size}, "
          f"epochs {start_epoch + 1}..{args.epochs}, seed {args.seed}", flush=True)

    saved = {"epoch": start_epoch if args.resume else None}

    def save_checkpoint(epoch: int, logs: dict) -> None:
        if args.checkpoint:
            save(args.checkpoint, model, optimizer, epoch=epoch, step=optimizer.steps,
                 extra={"history": history.as_dict(), "seed": args.seed, "dataset": args.dataset})
            saved["epoch"] = epoch

    start = time.perf_counter()
    try:
        fit(model, loss_fn, optimizer, train_data, epochs=args.epochs, batch_size=args.batch_size,
            validation_data=test_data if args.validate else None, callbacks=[save_checkpoint], scheduler=schedule,
            seed=args.seed, start_epoch=start_epoch, history=history, progress=not args.quiet,
            augment=random_crop_flip if args.augment else None)
    except TrainingDivergedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        _report_checkpoint(args, saved["epoch"])
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("\ninterrupted: nothing was left half-written.", file=sys.stderr)
        _report_checkpoint(args, saved["epoch"])
        return EXIT_INTERRUPTED
    seconds = time.perf_counter() - start
    result = evaluate(model, test_data, loss_fn=loss_fn)
    correct = round(result["accuracy"] * result["n"])
    if args.plot:
        write_plot(history.as_dict(), args.plot)
        print(f"plot written to {args.plot}")
    if args.checkpoint:
        print(f"checkpoint: {args.checkpoint} (epoch {saved['epoch']})")
    print(f"test accuracy: {100 * result['accuracy']:.2f}% ({correct:,}/{result['n']:,}), loss {result['loss']:.4f}; "
          f"trained in {seconds:.1f}s on {backend}")
    return 0


def _report_checkpoint(args, epoch) -> None:
    if args.checkpoint and epoch:
        print(f"the last good checkpoint is intact: {args.checkpoint} (epoch {epoch})", file=sys.stderr)
    elif args.checkpoint:
        print(f"no checkpoint was written yet to {args.checkpoint}", file=sys.stderr)


# --------------------------------------------------------------------------- evaluate / predict
def _evaluate(args: argparse.Namespace) -> int:
    from .nn import CrossEntropyLoss
    from .train import evaluate

    backend = _select_backend(args)
    checkpoint = _load_checkpoint(args.checkpoint)
    data = _load_data(args, args.split)
    result = evaluate(checkpoint.model, data, loss_fn=CrossEntropyLoss(), batch_size=args.batch_size)
    correct = round(result["accuracy"] * result["n"])
    print(f"{checkpoint.model.name} from {args.checkpoint} (epoch {checkpoint.epoch}) on {data.source}, "
          f"backend {backend}")
    print(f"accuracy: {100 * result['accuracy']:.2f}% ({correct:,}/{result['n']:,}), loss {result['loss']:.4f}")
    return 0


def read_images(path: str, size: tuple[int, int], invert: bool = False) -> np.ndarray:
    """Images from a .png (grayscale, resized to ``size``) or a .npy ((H, W), (N, H, W) or (N, 1, H, W);
    uint8 0..255 or floats 0..1) as floats (N, 1, H, W) normalized like MNIST."""
    from .data import MEAN, STD

    file = pathlib.Path(path)
    if not file.is_file():
        raise CommandError(f"image {path} does not exist")
    if file.suffix.lower() == ".npy":
        try:
            pixels = np.load(file, allow_pickle=False)
        except ValueError as exc:
            raise CommandError(f"{path}: not a readable .npy array ({exc})") from None
    elif file.suffix.lower() == ".png":
        try:
            from PIL import Image
        except ImportError:
            raise CommandError("reading PNG images needs Pillow: pip install 'xpcnn[plot]' (or pillow)") from None
        with Image.open(file) as image:
            pixels = np.asarray(image.convert("L").resize(size[::-1]))
    else:
        raise CommandError(f"{path}: expected a .png or .npy image; got {file.suffix or 'no extension'}")
    if pixels.ndim == 2:
        pixels = pixels[None]
    if pixels.ndim == 4 and pixels.shape[1] == 1:
        pixels = pixels[:, 0]
    if pixels.ndim != 3 or tuple(pixels.shape[1:]) != size:
        raise CommandError(f"{path}: expected images of {size[0]}x{size[1]} pixels ((H, W), (N, H, W) or "
                           f"(N, 1, H, W)); got shape {pixels.shape}")
    if pixels.dtype == np.uint8:
        values = pixels.astype(np.float32) / 255
    elif np.issubdtype(pixels.dtype, np.floating):
        values = pixels.astype(np.float32)
    else:
        raise CommandError(f"{path}: expected uint8 (0..255) or float (0..1) pixels; got {pixels.dtype}")
    if invert:
        values = 1 - values
    return ((values - MEAN) / STD)[:, None].astype(np.float32)


def _predict(args: argparse.Namespace) -> int:
    from .functional import softmax

    _select_backend(args)
    checkpoint = _load_checkpoint(args.checkpoint)
    model = checkpoint.model.eval()
    shape = model.input_shape or (1, 28, 28)
    for path in args.images:
        x = _backend.asarray(read_images(path, tuple(shape[1:]), args.invert))
        probs = _backend.to_numpy(softmax(model(x)))
        for i, row in enumerate(probs):
            top = np.argsort(row)[::-1][:3]
            label = path if len(probs) == 1 else f"{path}[{i}]"
            others = ", ".join(f"{k}: {row[k]:.3f}" for k in top[1:])
            print(f"{label}: {top[0]} (probability {row[top[0]]:.3f}; next {others})")
    return 0


# --------------------------------------------------------------------------- parser
def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer; got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a positive number; got {text}")
    return value


def _add_backend_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", choices=_backend.BACKENDS, help="array library (overrides XPCNN_BACKEND)")
    parser.add_argument("--device", help="device where the backend has several, e.g. 0 or cuda:1 (overrides XPCNN_DEVICE)")


def _add_data_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", choices=("bundled", "mnist", "fashion-mnist", "cifar10"), default="bundled",
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
                    "(select it with XPCNN_BACKEND=numpy|cupy|torch|array_api_strict or --backend).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    info = commands.add_parser("info", help="show the selected backend, library versions and available backends")
    info.set_defaults(run=_info)

    train = commands.add_parser("train", help="train a network and report its test accuracy")
    train.add_argument("--model", choices=[m for m in MODELS if m != "seed_binary"], default="lenet5")
    _add_data_options(train)
    train.add_argument("--epochs", type=_positive_int, default=5)
    train.add_argument("--batch-size", type=_positive_int, default=32)
    train.add_argument("--lr", type=_positive_float, default=0.01, help="learning rate (default 0.01)")
    train.add_argument("--optimizer", choices=list(OPTIMIZERS), default="sgd")
    train.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default 0.9)")
    train.add_argument("--weight-decay", type=float, default=0.0)
    train.add_argument("--schedule", choices=("cosine", "step", "none"), default="cosine",
                       help="learning-rate schedule over the epochs (default cosine)")
    train.add_argument("--seed", type=int, default=0, help="seed for initial weights and data order")
    train.add_argument("--checkpoint", metavar="PATH", help="save a checkpoint (.npz or .safetensors) after each epoch")
    train.add_argument("--resume", metavar="PATH", help="continue from a checkpoint up to --epochs")
    train.add_argument("--plot", metavar="PATH", help="write a PNG of loss and accuracy per epoch (needs matplotlib)")
    train.add_argument("--validate", action="store_true", help="evaluate on the test split after every epoch")
    train.add_argument("--augment", action="store_true",
                       help="random crops (4-pixel padding) and horizontal flips of each training batch, "
                            "CIFAR's standard augmentation")
    train.add_argument("--quiet", action="store_true", help="no progress bar and no per-epoch lines")
    _add_backend_options(train)
    train.set_defaults(run=_train)

    evaluate = commands.add_parser("evaluate", help="accuracy of a checkpoint on a data split")
    evaluate.add_argument("--checkpoint", metavar="PATH", required=True)
    _add_data_options(evaluate)
    evaluate.add_argument("--split", choices=("test", "train"), default="test")
    evaluate.add_argument("--batch-size", type=_positive_int, default=1000)
    _add_backend_options(evaluate)
    evaluate.set_defaults(run=_evaluate)

    predict = commands.add_parser("predict", help="classify images (.png, or .npy arrays) with a checkpoint")
    predict.add_argument("--checkpoint", metavar="PATH", required=True)
    predict.add_argument("images", nargs="+", metavar="IMAGE", help=".png (grayscale, resized) or .npy")
    predict.add_argument("--invert", action="store_true",
                         help="for dark digits on a light background (MNIST digits are light on dark)")
    _add_backend_options(predict)
    predict.set_defaults(run=_predict)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except CommandError as exc:
        print(f"xpcnn {args.command}: error: {exc}", file=sys.stderr)
        return exc.status


if __name__ == "__main__":
    sys.exit(main())
