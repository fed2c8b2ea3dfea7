"""``xpcnn train``'s configuration: resolved once from the flags and the checkpoint being resumed, then frozen.

Every check that can be made before training lives here: the outputs' paths (none may name an input or another
output, each folder must exist), the plot's format, the resume rules (an exact resume repeats the saved run's
settings; those not given are taken from it), the precision the backend can hold, and that every rank of a
distributed run was given the same. The parsed arguments are read, never changed.
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
from dataclasses import dataclass, field
from typing import Any

from .blas import AUTO
from .blas import resolve as resolve_blas
from .common import (CommandError, DataChoice, check_distinct, check_dtype, check_output, data_choice,
                     load_checkpoint, same_file)

DIGIT_DATASETS = ("bundled", "mnist")       # where a left-right flip mirrors what is to be recognized


def defaults(optimizer: str | None = None) -> dict:
    """How a run learns when not told, read from the registries: the first optimizer of ``optim.OPTIMIZERS``, the
    learning rate and weight decay of ``optimizer``'s own signature, the first of ``optim.SCHEDULES``; momentum
    None lets ``optim.build`` choose SGD's."""
    import inspect

    from ..optim import OPTIMIZERS, SCHEDULES

    optimizer = optimizer or next(iter(OPTIMIZERS))
    own = inspect.signature(OPTIMIZERS[optimizer]).parameters
    return {"optimizer": optimizer, "lr": own["lr"].default, "momentum": None,
            "weight_decay": own["weight_decay"].default, "schedule": SCHEDULES[0]}


@dataclass(frozen=True)
class Training:
    """The optimizer and schedule settings a checkpoint records, so that a resumed run continues with them."""

    optimizer: str
    lr: float
    momentum: float | None
    weight_decay: float
    schedule: str

    def record(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class TrainConfig:
    """One ``xpcnn train`` run, every setting resolved. ``model`` None: the default for the data's image size."""

    data: DataChoice
    model: str | None
    epochs: int
    batch_size: int
    seed: int
    dtype: str
    training: Training
    val_split: float | None
    early_stop: int | None
    augment: bool
    quiet: bool
    compile: bool | None
    distributed: bool
    checkpoint: pathlib.Path | None
    log_csv: pathlib.Path | None
    plot: pathlib.Path | None
    resume: pathlib.Path | None
    resumed: Any = field(default=None, compare=False, repr=False)     # the loaded Checkpoint being continued
    blas: Any = None                                                  # cli.blas.Choice: the OpenBLAS kernels

    @property
    def start_epoch(self) -> int:
        return self.resumed.epoch if self.resumed is not None else 0

    def record(self) -> dict:
        """What each checkpoint's ``extra`` records: what an exact resume must repeat, and how it learned."""
        kernels = {} if self.blas is None or self.blas.name is None else {"blas_kernels": self.blas.name}
        return {"seed": self.seed, "dataset": self.data.recorded, "batch_size": self.batch_size,
                "epochs": self.epochs, "training": self.training.record(), **kernels}

    def agreement(self) -> dict:
        """What every rank of a distributed run must be given alike, by option."""
        t = self.training
        return {"--model": self.model, "--data": self.data.recorded, "--batch-size": self.batch_size,
                "--epochs": self.epochs, "--dtype": self.dtype, "--seed": self.seed, "--optimizer": t.optimizer,
                "--lr": t.lr, "--momentum": t.momentum, "--weight-decay": t.weight_decay, "--schedule": t.schedule,
                "--augment": self.augment, "--val-split": self.val_split, "--early-stop": self.early_stop,
                "--compile": self.compile}


def resolve_train(args: argparse.Namespace, backend: Any, ctx: Any = None) -> TrainConfig:
    """The frozen configuration of ``args`` on ``backend`` (after :func:`check_flags`); ``ctx`` the distributed
    run's context, whose ranks must agree on it. A resumed run's data defaults to the one it recorded."""
    resumed = load_checkpoint(args.resume) if args.resume else None
    data = data_choice(args, resumed.extra.get("dataset") if resumed is not None else None)
    if data.file and not args.data:                # the resumed run's recorded file: an input all the same
        check_distinct({"--data (recorded by --resume)": data.file}, _outputs(args))
    if resumed is not None and data.folder:
        data = _resumed_folder(args, resumed, data)
    training = _training(args, resumed)
    dtype = _resume_rules(args, resumed, data) if resumed is not None else (args.dtype or _default_dtype())
    check_dtype(backend, dtype)
    val_split = args.val_split if args.val_split is not None else (0.1 if args.validate else None)
    config = TrainConfig(
        data=data, model=args.model, epochs=args.epochs, batch_size=args.batch_size, seed=args.seed, dtype=dtype,
        training=training, val_split=val_split, early_stop=args.early_stop, augment=args.augment,
        quiet=args.quiet, compile=args.compile, distributed=args.distributed,
        checkpoint=_path(args.checkpoint), log_csv=_path(args.log_csv), plot=plot_path(args.plot),
        resume=_path(args.resume), resumed=resumed,
        blas=resolve_blas(args.blas_kernels, resumed.extra.get("blas_kernels") if resumed is not None else None,
                          backend))
    if resumed is not None and resumed.epoch >= config.epochs:
        raise CommandError(f"--resume {args.resume}: the checkpoint has already trained {resumed.epoch} epochs; "
                           f"ask for more with --epochs (got {config.epochs})")
    if ctx is not None:
        from ..distributed import SettingsMismatch

        try:
            ctx.check_same(config.agreement(), "settings")
        except SettingsMismatch as exc:
            raise CommandError(str(exc), collective=True) from None
    return config


def _resumed_folder(args: argparse.Namespace, resumed: Any, data: DataChoice) -> DataChoice:
    """An image folder read as the resumed run read it: its recorded image size, colour mode and classes (a new
    class folder is then refused); an --image-size or --color-mode that differs from the record is refused."""
    extra = resumed.extra
    size = tuple(extra["image_size"]) if isinstance(extra.get("image_size"), list) else None
    mode = extra.get("color_mode")
    for option, given, saved in (("--image-size", data.image_size, size), ("--color-mode", data.mode, mode)):
        if given is not None and saved is not None and given != saved:
            shown = "x".join(map(str, saved)) if isinstance(saved, tuple) else saved
            raise CommandError(f"--resume {args.resume} read its images with {option} {shown}; drop {option} (an "
                               f"exact resume reads them alike)")
    classes = tuple(extra["classes"]) if isinstance(extra.get("classes"), list) else None
    return dataclasses.replace(data, image_size=data.image_size or size, mode=data.mode or mode, classes=classes)


def _default_dtype() -> str:
    from ..nn.module import DTYPES

    return DTYPES[0]


def _path(text: str | None) -> pathlib.Path | None:
    return None if text is None else pathlib.Path(text)


def check_flags(args: argparse.Namespace) -> None:
    """The checks the flags alone allow, made before a backend, a launcher or a file is touched."""
    from ..checkpoint import check_path

    if args.val_split is None and not args.validate and args.early_stop is not None:
        raise CommandError("--early-stop watches the val loss of a held-out part of the training data: give "
                           "--val-split too (e.g. --val-split 0.1)")
    if args.compile and args.distributed:
        raise CommandError("--compile cannot be combined with --distributed (data-parallel steps run eagerly)")
    if args.blas_kernels == AUTO and args.distributed:
        raise CommandError("--blas-kernels auto cannot be combined with --distributed (every rank would measure "
                           "at once); measure with xpcnn info --blas and give the ranks OPENBLAS_CORETYPE")
    if args.momentum is not None and args.optimizer not in (None, "sgd"):
        raise CommandError(f"--momentum is for --optimizer sgd; {args.optimizer} has none (its betas are fixed)")
    if not args.resume:
        data_choice(args)
    if args.checkpoint:
        try:
            check_path(args.checkpoint)
        except (ValueError, ImportError) as exc:
            raise CommandError(f"--checkpoint: {exc}") from None
    outputs = _outputs(args)
    for option, path in outputs.items():
        if path is not None:
            check_output(option, path)
    check_distinct({"--data": args.data, "--resume": args.resume}, outputs,
                   may_replace=(("--checkpoint", "--resume"),))


def _outputs(args: argparse.Namespace) -> dict:
    return {"--checkpoint": args.checkpoint, "--log-csv": args.log_csv,
            "--plot": None if args.plot is None else plot_path(args.plot)}


def plot_path(text: str | None) -> pathlib.Path | None:
    """The file ``--plot`` writes: PATH as given, ``.png`` added when it has no suffix; a suffix matplotlib
    cannot write is refused here, before training."""
    if text is None:
        return None
    try:
        from matplotlib.backend_bases import FigureCanvasBase
    except ImportError:
        raise CommandError("--plot needs matplotlib: pip install matplotlib (from a checkout of xpcnn: "
                           "pip install -e '.[plot]')") from None
    plot = pathlib.Path(text)
    if not plot.suffix:
        plot = plot.with_name(plot.name + ".png")
    formats = FigureCanvasBase.get_supported_filetypes()
    if plot.suffix[1:].lower() not in formats:
        raise CommandError(f"--plot {plot}: matplotlib cannot write {plot.suffix} files; give a name ending in "
                           f"{', '.join('.' + f for f in sorted(formats))} (.png by default)")
    return plot


def _training(args: argparse.Namespace, resumed: Any) -> Training:
    """The optimizer settings: as given, else the resumed checkpoint's, else the defaults. One given that differs
    from the checkpoint's is refused: a resumed run continues the saved one."""
    saved = resumed.extra.get("training", {}) if resumed is not None else {}
    values = {}
    optimizer = args.optimizer or saved.get("optimizer")
    for key, default in defaults(optimizer).items():
        given = getattr(args, key)
        if given is not None and key in saved and saved[key] != given:
            option = "--" + key.replace("_", "-")
            raise CommandError(f"--resume {args.resume} was trained with {option} {saved[key]}; got {given}. A "
                               f"resumed run continues the saved one with its {option} (drop it); to train on "
                               f"with another, load the checkpoint in Python (xpcnn.load) and make a new optimizer")
        values[key] = given if given is not None else saved.get(key, default)
    if values["momentum"] is not None and values["optimizer"] != "sgd":
        raise CommandError(f"--momentum is for --optimizer sgd; {values['optimizer']} has none (its betas are fixed)")
    return Training(**values)


def _resume_rules(args: argparse.Namespace, resumed: Any, data: DataChoice) -> str:
    """Refuse what would break an exact resume of ``resumed``; the precision it holds."""
    from ..checkpoint import ResumeConflict, check_resume
    from ..nn.module import precision

    recorded = resumed.extra.get("dataset")
    dataset = data.recorded
    if data.file and isinstance(recorded, str) and same_file(recorded, data.file):
        dataset = recorded                         # the same file, however the path is spelled
    try:
        check_resume(resumed, model=args.model, dtype=args.dtype, seed=args.seed, batch_size=args.batch_size,
                     dataset=dataset)
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
    return precision(resumed.model)
