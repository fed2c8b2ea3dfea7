"""``xpcnn train``: resolve the flags into one frozen configuration, build what it describes, fit, report."""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable

from .. import backend as _backend
from . import blas
from .common import (EXIT_FAILED, EXIT_INTERRUPTED, CommandError, add_backend_options, add_data_options, data_record,
                     fraction, image_size, model_name, momentum, non_negative_float, non_negative_int,
                     positive_float, positive_int, same_file, select_backend)
from .config import DIGIT_DATASETS, TrainConfig, check_flags, defaults, resolve_train


def add_parser(commands: Any) -> None:
    from ..models import MODELS
    from ..nn.module import DTYPES
    from ..optim import OPTIMIZERS, SCHEDULES

    own = {name: defaults(name) for name in OPTIMIZERS}
    first = defaults()
    parser = commands.add_parser("train", help="train a network and report its test accuracy")
    names = [m for m in MODELS if m != "seed_binary"]
    parser.add_argument("--model", type=model_name, metavar="{" + ",".join(names) + ",resnet<6n+2>}",
                        help="the network (default: lenet5 for 28x28 grey images, else resnet8; any resnet of depth "
                             "6n+2 by name, e.g. resnet32; with --resume the checkpoint's)")
    add_data_options(parser)
    parser.add_argument("--image-size", type=image_size, metavar="SIZE",
                        help="with --data FOLDER: resize every image to SIZE or HEIGHTxWIDTH pixels (default: the "
                             "files' own size, which must then agree)")
    parser.add_argument("--color-mode", choices=("grayscale", "rgb"),
                        help="with --data FOLDER: read the images as grayscale or RGB (default: RGB if any file is "
                             "in colour)")
    parser.add_argument("--epochs", type=positive_int, default=5, help="train up to this epoch (default 5)")
    parser.add_argument("--batch-size", type=positive_int, default=32,
                        help="images per step (default 32; with --distributed the global batch)")
    parser.add_argument("--lr", type=positive_float, help="learning rate (default: the optimizer's own, " +
                        ", ".join(f"{name} {d['lr']:g}" for name, d in own.items()) + "; with --resume the "
                        "checkpoint's)")
    parser.add_argument("--optimizer", choices=list(OPTIMIZERS),
                        help=f"(default {first['optimizer']}; with --resume the checkpoint's)")
    parser.add_argument("--momentum", type=momentum,
                        help="SGD momentum in [0, 1) (default 0.9; SGD only; with --resume the checkpoint's)")
    parser.add_argument("--weight-decay", type=non_negative_float, help="(default: the optimizer's own, " +
                        ", ".join(f"{name} {d['weight_decay']:g}" for name, d in own.items()) + "; with --resume "
                        "the checkpoint's)")
    parser.add_argument("--schedule", choices=list(SCHEDULES), help=f"learning-rate schedule over the epochs "
                        f"(default {first['schedule']}; with --resume the checkpoint's)")
    parser.add_argument("--seed", type=int, default=0, help="seed for initial weights and data order (default 0)")
    parser.add_argument("--dtype", choices=list(DTYPES), help=f"precision of weights and data (default "
                        f"{DTYPES[0]}; with --resume the checkpoint's)")
    _add_output_options(parser)
    parser.add_argument("--validate", action="store_true",
                        help="score a held-out 10%% of the training data after every epoch (--val-split 0.1; the "
                             "test split is scored once, at the end, never used to choose)")
    parser.add_argument("--val-split", type=fraction, metavar="F",
                        help="hold out this fraction of the training data (chosen by --seed) and score it after "
                             "every epoch as val loss and accuracy")
    parser.add_argument("--early-stop", type=non_negative_int, metavar="PATIENCE",
                        help="stop when the val loss has not improved for PATIENCE epochs and keep the best epoch's "
                             "weights (needs --val-split)")
    parser.add_argument("--augment", action="store_true",
                        help="random crops (4-pixel padding) and horizontal flips of each training batch, "
                             "CIFAR's standard augmentation (flips mirror digits: not for MNIST)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar and no per-epoch lines")
    parser.add_argument("--distributed", action="store_true",
                        help="data-parallel training on the ranks of an MPI job: mpiexec -n N xpcnn train "
                             "--distributed ... (needs pip install -e '.[mpi]'); --batch-size is the global batch")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="compile each training step as one function (default: on for jax, the backend with a "
                             "compiler; off elsewhere); not with --distributed")
    add_backend_options(parser)
    parser.add_argument("--blas-kernels", metavar="KERNELS",
                        help="OpenBLAS's kernels for NumPy's matrix products: 'detected' (default: OpenBLAS's own "
                             "pick), 'auto' (measure the core types this CPU runs and take one clearly faster; "
                             "never on a busy machine) or a core type such as Haswell or SkylakeX (xpcnn info --blas "
                             "measures them). The command starts itself again with OPENBLAS_CORETYPE set; checkpoints "
                             "record the choice and --resume continues with it")
    parser.set_defaults(run=run)


def _add_output_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", metavar="PATH", help="save a checkpoint (.npz or .safetensors) after each "
                                                             "epoch (its folder must exist)")
    parser.add_argument("--resume", metavar="PATH", help="continue from a checkpoint up to --epochs (--checkpoint "
                                                         "may name the same file: it is replaced each epoch)")
    parser.add_argument("--plot", metavar="PATH", help="write a PNG of loss and accuracy per epoch (needs "
                                                       "matplotlib; another suffix matplotlib writes also works)")
    parser.add_argument("--log-csv", metavar="PATH", help="write one CSV row of metrics per epoch (with --resume: "
                                                          "appended)")


def run(args: argparse.Namespace) -> int:
    """Resolve, build, run, report."""
    check_flags(args)
    backend = select_backend(args)
    ctx = _distributed_context(args)
    config = resolve_train(args, backend, ctx)
    blas.apply(config.blas, getattr(args, "program", False), config.distributed)
    job = build(config, backend, ctx)
    return report(job, fit_job(job))


@dataclass
class Job:
    """What a configuration built: the data, model, optimizer, schedule and callbacks one fit call takes."""

    config: TrainConfig
    backend: Any
    ctx: Any
    say: Callable[..., None]
    train_data: Any
    test_data: Any
    model: Any
    optimizer: Any
    schedule: Any
    history: Any
    callbacks: dict
    compiled: bool
    seconds: float = 0.0

    @property
    def root(self) -> bool:
        return self.ctx is None or self.ctx.is_root


def build(config: TrainConfig, backend: Any, ctx: Any) -> Job:
    """The data, model, optimizer, schedule and callbacks of ``config``; every split checked against the model."""
    from .. import parallel
    from ..train import History

    root = ctx is None or ctx.is_root
    say = print if root else (lambda *_, **__: None)          # rank 0 alone prints
    parallel.tune_allocator()
    train_data, test_data = config.data.load("train", config.dtype), config.data.load("test", config.dtype)
    model = _model(config, train_data, test_data)
    for data in (train_data, test_data):
        if data is not None:
            try:
                model.check_input((1, *data.sample_shape))
            except ValueError as exc:
                raise CommandError(f"{data.source}: {exc}") from None
    optimizer, schedule = _optimizer(config, model, say)
    resumed = config.resumed
    history = History(**resumed.extra.get("history", {})) if resumed is not None else History()
    compiled = ctx is None and config.compile is not False and \
        _backend.compiler(model.parameters()[0].data) is not None
    if config.compile and not compiled:
        raise CommandError(f"--compile needs a backend with a compiler (jax); got {backend}")
    job = Job(config, backend, ctx, say, train_data, test_data, model, optimizer, schedule, history,
              _callbacks(config, history, train_data), compiled)
    _banner(job)
    return job


def _model(config: TrainConfig, train_data: Any, test_data: Any) -> Any:
    from .. import models

    if config.resumed is not None:
        return config.resumed.model
    default = "lenet5" if train_data.sample_shape == (1, 28, 28) else "resnet8"     # resnet8 fits any size
    splits = [d for d in (train_data, test_data) if d is not None and len(d)]
    named = getattr(train_data, "classes", None)          # an image folder's: one output per class folder
    classes = len(named) if named is not None else max(int(_backend.to_numpy(d.labels).max()) + 1 for d in splits)
    try:
        return models.build_for(config.model or default, train_data.sample_shape, config.seed, config.dtype, classes)
    except ValueError as exc:
        raise CommandError(f"{config.data.option}: {exc}") from None


def _optimizer(config: TrainConfig, model: Any, say: Callable) -> tuple[Any, Any]:
    """The optimizer (with the resumed run's state) and the schedule, set to the first epoch's rate."""
    from .. import optim

    t, resumed = config.training, config.resumed
    optimizer = optim.build(t.optimizer, model.parameters(), t.lr, t.momentum, t.weight_decay)
    if resumed is not None and resumed.optimizer_state is not None:
        try:
            optimizer.load_state_dict(resumed.optimizer_state)
        except ValueError as exc:
            raise CommandError(f"--resume {config.resume}: {exc} (use the same --optimizer)") from None
    schedule = optim.schedule(t.schedule, optimizer, config.epochs, base_lr=t.lr)
    if schedule is not None:
        schedule.set_epoch(config.start_epoch)    # the rate the first epoch trains at, not where the saved run ended
        spanned = resumed.extra.get("epochs") if resumed is not None else None
        if spanned is not None and spanned != config.epochs:
            say(f"note: the {t.schedule} schedule now spans {config.epochs} epochs instead of the saved run's "
                f"{spanned}: epoch {config.start_epoch + 1} trains at lr {optimizer.lr:.3g}")
    return optimizer, schedule


def _callbacks(config: TrainConfig, history: Any, train_data: Any) -> dict:
    """Early stopping, then the checkpoint (so a stopped run saves its best epoch's weights, with the run's record
    and an image folder's classes, image size and colour mode), then the log."""
    from ..callbacks import CSVLogger, EarlyStopping, ModelCheckpoint

    made = {}
    if config.early_stop is not None:
        made["early_stop"] = EarlyStopping(patience=config.early_stop, restore_best_weights=True)
    if config.checkpoint is not None:
        literal = str(config.checkpoint).replace("{", "{{").replace("}", "}}")      # a path, not a pattern
        made["checkpoint"] = ModelCheckpoint(literal, monitor="loss", history=history,
                                             extra={**config.record(), **data_record(train_data)})
    if config.log_csv is not None:
        made["log"] = CSVLogger(config.log_csv, append=config.resume is not None)
    return made


def _banner(job: Job) -> None:
    config, say = job.config, job.say
    n_params = sum(math.prod(p.shape) for p in job.model.parameters())
    ranks = "" if job.ctx is None else f", {job.ctx.size} ranks (data-parallel, global batch {config.batch_size})"
    tested = f"{len(job.test_data):,} test images" if job.test_data is not None else "no test split"
    classes = getattr(job.train_data, "classes", None)
    named = "" if classes is None else f"; {len(classes)} classes: {_listed(classes)}"
    say(f"xpcnn train: {job.model.name} ({n_params:,} parameters) on {job.train_data.source} "
        f"({len(job.train_data):,} train images / {tested}{named})")
    say(f"backend {job.backend}{' (compiled steps)' if job.compiled else ''}, {config.dtype}; {job.optimizer!r}, "
        f"schedule {config.training.schedule}, batch {config.batch_size}, epochs {config.start_epoch + 1}.."
        f"{config.epochs}, seed {config.seed}{ranks}", flush=True)
    if config.blas.name is not None:
        say(f"BLAS: OpenBLAS {config.blas.name} kernels ({config.blas.how})", flush=True)
    digits = config.data.dataset in DIGIT_DATASETS if not config.data.file else job.train_data.sample_shape[0] == 1
    if config.augment and digits and job.root:
        print("warning: --augment flips images left-right, which mirrors digits and letters (a mirrored 2 is not "
              "a 2) and costs accuracy on MNIST-like data; it is meant for photos such as cifar10", file=sys.stderr)


def _listed(names: tuple, limit: int = 10) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def fit_job(job: Job) -> int | None:
    """Train; None when every epoch ran (or a callback stopped it), else the exit status of what ended it."""
    from ..callbacks import CheckpointSaveError
    from ..data import random_crop_flip
    from ..nn import CrossEntropyLoss
    from ..train import TrainingDivergedError, fit

    config = job.config
    start = time.perf_counter()
    try:
        fit(job.model, CrossEntropyLoss(), job.optimizer, job.train_data, epochs=config.epochs,
            batch_size=config.batch_size, callbacks=list(job.callbacks.values()), validation_split=config.val_split,
            scheduler=job.schedule, seed=config.seed, start_epoch=config.start_epoch, history=job.history,
            progress=not config.quiet, augment=random_crop_flip if config.augment else None,
            distributed=job.ctx, compile=config.compile)
    except TrainingDivergedError as exc:
        if job.root:
            print(f"error: {exc}", file=sys.stderr)
            _report_checkpoint(job)
        return EXIT_FAILED
    except CheckpointSaveError as exc:
        print(f"error: {exc}", file=sys.stderr)
        _report_checkpoint(job)
        if job.ctx is not None:                   # rank 0 alone saves: the others wait for it at a barrier
            from ..distributed import abort

            abort(EXIT_FAILED)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("\ninterrupted: nothing was left half-written.", file=sys.stderr)
        _report_checkpoint(job)
        return EXIT_INTERRUPTED
    job.seconds = time.perf_counter() - start
    return None


def report(job: Job, status: int | None) -> int:
    """What training ended with: early stop, plot, checkpoint, and the test split's score where there is one."""
    from ..nn import CrossEntropyLoss
    from ..train import evaluate

    if status is not None:
        return status
    config, say = job.config, job.say
    stopper = job.callbacks.get("early_stop")
    if stopper is not None and stopper.stopped_epoch:
        say(f"early stop after epoch {stopper.stopped_epoch}: no val loss below {stopper.best:.4f} (epoch "
            f"{stopper.best_epoch}) for {max(config.early_stop, 1)} epochs; epoch {stopper.best_epoch}'s weights "
            f"are kept")
    result = None
    if job.test_data is not None:
        result = evaluate(job.model, job.test_data, loss_fn=CrossEntropyLoss(), distributed=job.ctx)
        if not math.isfinite(result["loss"]):
            if job.root:
                print(f"error: training diverged: the test loss is {result['loss']}; try a lower learning rate "
                      f"(--lr {config.training.lr:g})", file=sys.stderr)
                _report_checkpoint(job)
            return EXIT_FAILED
    if config.plot is not None and job.root:
        from ..plot import write_plot

        write_plot(job.history.as_dict(), config.plot)
        say(f"plot written to {config.plot}")
    if config.checkpoint is not None:
        say(f"checkpoint: {config.checkpoint} (epoch {_last_saved(job)})")
    if result is None:
        missing = "is one image folder (no test split)" if config.data.folder else "has no x_test/y_test"
        score = (f"; score a test folder with xpcnn evaluate --checkpoint {config.checkpoint or 'PATH'} --data "
                 "TESTFOLDER" if config.data.folder else " (the plot, if any, shows the training curves)")
        say(f"trained in {job.seconds:.1f}s on {job.backend}; {config.data.file} {missing}, so no test accuracy"
            f"{score}")
    else:
        correct = round(result["accuracy"] * result["n"])
        say(f"test accuracy: {100 * result['accuracy']:.2f}% ({correct:,}/{result['n']:,}), loss "
            f"{result['loss']:.4f}; trained in {job.seconds:.1f}s on {job.backend}")
    if config.checkpoint is None:
        say("nothing was saved: add --checkpoint PATH (.npz or .safetensors) to keep the model for evaluate, "
            "predict, export or --resume")
    return 0


def _last_saved(job: Job) -> int | None:
    """The epoch of the checkpoint now at --checkpoint: this run's last save, or the resumed one it replaces."""
    saver = job.callbacks.get("checkpoint")
    if saver is not None and saver.last_epoch is not None:
        return saver.last_epoch
    config = job.config
    if config.resume is not None and same_file(config.resume, config.checkpoint):
        return config.start_epoch
    return None


def _report_checkpoint(job: Job) -> None:
    path, epoch = job.config.checkpoint, None
    if path is None:
        return
    epoch = _last_saved(job)
    if epoch:
        print(f"the last good checkpoint is intact: {path} (epoch {epoch})", file=sys.stderr)
    else:
        print(f"no checkpoint was written yet to {path}", file=sys.stderr)


def _distributed_context(args: argparse.Namespace) -> Any:
    """The MPI job's context with --distributed; without it, a warning if an MPI launcher started us."""
    from .. import distributed

    if not args.distributed:
        if distributed.launched_by_mpi():
            print("warning: started by an MPI launcher without --distributed: every rank would train alone on "
                  "all the data; add --distributed to train data-parallel", file=sys.stderr)
        return None
    try:
        return distributed.init()
    except ImportError as exc:
        raise CommandError(str(exc)) from None
