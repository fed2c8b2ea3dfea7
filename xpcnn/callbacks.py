"""Callbacks for :func:`xpcnn.fit`: :class:`EarlyStopping`, :class:`ModelCheckpoint`, :class:`CSVLogger`.

``fit`` calls every callback after each epoch as ``callback(epoch, logs)`` (epoch 1-based, ``logs`` the epoch's
metrics: ``loss``, ``accuracy``, ``val_loss`` and ``val_accuracy`` with validation data, ``lr``, ``seconds``,
``images_per_s``). A plain function works. A :class:`Callback` also gets the model and the optimizer before the
first epoch (``on_train_begin``) and ``on_train_end()`` after the last, and stops training by setting
``self.stop_training = True``: ``fit`` then ends after that epoch and returns the History as usual.

Arguments are checked when a callback is made (a path's folder, a pattern's fields); what depends on the run
(is there a ``val_loss``?) is checked by :meth:`Callback.check_metrics` before anything is saved or stopped.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
import pathlib
import string
from dataclasses import asdict, dataclass, field
from typing import Any, Collection

import numpy as np

from . import backend as _backend

__all__ = ["CSVLogger", "Callback", "CheckpointSaveError", "EarlyStopping", "History", "ModelCheckpoint",
           "metric_names"]


@dataclass
class History:
    """Per-epoch metrics of a :func:`fit` run (lists, one entry per epoch)."""

    epoch: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_accuracy: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    images_per_s: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, list]:
        return asdict(self)


def metric_names() -> tuple[str, ...]:
    """Every name ``fit`` may put in ``logs`` (the fields of :class:`History`)."""
    return tuple(f.name for f in dataclasses.fields(History))


def _missing_metric(owner: str, name: str, metrics: Collection[str], subject: str | None = None) -> KeyError:
    """The error for a metric this run does not log; ``subject`` says where it was asked for."""
    hint = ("; pass validation_data= or validation_split= to fit, or use another metric"
            if name.startswith("val_") else "")
    return KeyError(f"{owner}: {subject or f'monitor {name!r}'} is not among this run's metrics "
                    f"({', '.join(sorted(metrics))}){hint}")


def _check_folder(owner: str, path: pathlib.Path) -> None:
    """A file can go at ``path``: it is not a folder, and its folder exists (never made silently: a typo in it
    would otherwise write somewhere unexpected)."""
    if path.is_dir():
        raise ValueError(f"{owner}: {str(path)!r} is a folder; give a file name")
    folder = path.parent
    if not folder.exists():
        raise ValueError(f"{owner}: the folder {str(folder)!r} of {str(path)!r} does not exist; create it first")
    if not folder.is_dir():
        raise ValueError(f"{owner}: {str(folder)!r} in {str(path)!r} is a file, not a folder")


class Callback:
    """Base class: override what you need. ``self.model`` and ``self.optimizer`` are set before training."""

    model: Any = None
    optimizer: Any = None
    stop_training: bool = False
    normalization: dict | None = None     # the training Dataset's {"mean", "std"}, set by fit when it has them

    def on_train_begin(self, model: Any, optimizer: Any) -> None:
        self.model, self.optimizer, self.stop_training = model, optimizer, False

    def on_epoch_end(self, epoch: int, logs: dict) -> None:
        pass

    def on_train_end(self) -> None:
        pass

    def check_metrics(self, metrics: Collection[str]) -> None:
        """Refuse (KeyError) a run whose ``metrics`` (the names each epoch will log) lack one of fit's own that
        this callback needs; ``fit`` calls it before training. A name fit never logs is left for another callback
        to add, and checked when the epoch's logs come."""

    def __call__(self, epoch: int, logs: dict) -> None:
        self.on_epoch_end(epoch, logs)


class _Monitor(Callback):
    """What EarlyStopping and ModelCheckpoint share: a monitored value and what counts as better."""

    def __init__(self, owner: str, monitor: str, mode: str, min_delta: float = 0.0):
        if not isinstance(monitor, str) or not monitor:
            raise ValueError(f"{owner}: monitor must be a metric name such as 'val_loss'; got {monitor!r}")
        if mode not in ("auto", "min", "max"):
            raise ValueError(f"{owner}: mode must be 'auto', 'min' or 'max'; got {mode!r}")
        if not isinstance(min_delta, (int, float)) or not math.isfinite(min_delta) or min_delta < 0:
            raise ValueError(f"{owner}: min_delta must be a finite number >= 0; got {min_delta!r}")
        self.owner, self.monitor, self.min_delta = owner, monitor, float(min_delta)
        self.mode = mode if mode != "auto" else ("max" if "acc" in monitor else "min")
        self.best = math.inf if self.mode == "min" else -math.inf

    def check_metrics(self, metrics):
        if self.monitor in metric_names() and self.monitor not in metrics:
            raise _missing_metric(self.owner, self.monitor, metrics)

    def _value(self, logs: dict) -> float:
        if self.monitor not in logs:
            raise _missing_metric(self.owner, self.monitor, logs)
        return float(logs[self.monitor])

    def _improves(self, value: float) -> bool:
        """Better than the best so far by more than min_delta (NaN never is)."""
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta


class EarlyStopping(_Monitor):
    """Stop when ``monitor`` has not improved by more than ``min_delta`` for ``patience`` epochs (Keras's meaning).

    ``mode`` "auto" minimizes, or maximizes a metric whose name holds "acc". ``restore_best_weights``: when it
    stops training, the model gets back the parameters and buffers of its best epoch (held on the host meanwhile).
    After training, ``best``, ``best_epoch`` and ``stopped_epoch`` (0 if it never stopped) say what happened.
    """

    def __init__(self, monitor: str = "val_loss", min_delta: float = 0.0, patience: int = 0,
                 restore_best_weights: bool = False, mode: str = "auto"):
        super().__init__("EarlyStopping", monitor, mode, min_delta)
        if not isinstance(patience, int) or isinstance(patience, bool) or patience < 0:
            raise ValueError(f"EarlyStopping: patience must be an integer >= 0; got {patience!r}")
        self.patience, self.restore_best_weights = patience, bool(restore_best_weights)

    def on_train_begin(self, model, optimizer):
        super().on_train_begin(model, optimizer)
        self.best = math.inf if self.mode == "min" else -math.inf
        self.wait, self.best_epoch, self.stopped_epoch, self._best_state = 0, 0, 0, None

    def on_epoch_end(self, epoch, logs):
        value = self._value(logs)
        self.wait += 1
        if self._improves(value):
            self.best, self.best_epoch, self.wait = value, epoch, 0
            if self.restore_best_weights:
                self._best_state = {name: np.array(_backend.to_numpy(array))
                                    for name, array in self.model.state_dict().items()}
            return
        if self.wait >= max(self.patience, 1):      # the patience-th epoch without improvement (0: the first)
            self.stopped_epoch, self.stop_training = epoch, True
            if self._best_state is not None:
                self.model.load_state_dict(self._best_state)


class CheckpointSaveError(RuntimeError):
    """A checkpoint could not be written (a full disk, say); the one written before, if any, is whole."""

    def __init__(self, message: str, path: pathlib.Path, epoch: int):
        super().__init__(message)
        self.path, self.epoch = path, epoch


class ModelCheckpoint(_Monitor):
    """Save a checkpoint (model and optimizer, atomically, see :func:`xpcnn.save`) after every epoch, or with
    ``save_best_only`` after each epoch that improves ``monitor``. The one way a checkpoint is written during
    training (``xpcnn train`` uses it too), so every one records the same ``extra``: ``logs`` (the epoch's
    metrics), ``history`` (every epoch's), ``normalization`` (the training data's, for ``xpcnn predict``) and the
    caller's own ``extra``.

    ``path`` may hold ``{epoch}`` and metric names, formatted like ``"ckpt-{epoch:02d}-{val_loss:.3f}.npz"``
    (``{{`` and ``}}`` for literal braces); a malformed pattern, an unknown name, a suffix other than .npz or
    .safetensors, or a missing folder is refused here. ``history``: the :class:`xpcnn.History` given to ``fit``
    (a resumed run's, so its checkpoints hold every epoch); by default the epochs this callback saw.
    """

    def __init__(self, path: str | os.PathLike, monitor: str = "val_loss", save_best_only: bool = False,
                 mode: str = "auto", history: Any = None, extra: dict | None = None):
        super().__init__("ModelCheckpoint", monitor, mode)
        self.path, self.save_best_only = str(path), bool(save_best_only)
        self.fields = self._check_pattern(self.path)
        self.history, self.extra = history, dict(extra or {})
        self.saved: list[pathlib.Path] = []
        self.last_epoch: int | None = None        # of the last checkpoint written

    @staticmethod
    def _check_pattern(path: str) -> tuple[str, ...]:
        """The metric names ``path`` formats in; ValueError for what would fail only when the first save comes."""
        from .checkpoint import check_path

        owner = f"ModelCheckpoint: path {path!r}"
        try:
            fields = tuple(name for _, name, _, _ in string.Formatter().parse(path) if name is not None)
        except ValueError as exc:
            raise ValueError(f"{owner} is not a valid pattern ({exc}); write {{{{ and }}}} for a literal "
                             f"brace") from None
        known = metric_names()
        for name in fields:
            if name not in known:
                raise ValueError(f"{owner}: {{{name}}} is not a metric fit logs; known: {', '.join(known)}")
        try:
            example = path.format(**{name: 1 if name == "epoch" else 0.5 for name in known})
        except (ValueError, TypeError, IndexError) as exc:
            raise ValueError(f"{owner} cannot be formatted ({exc}); epoch is an integer, the metrics are floats") \
                from None
        try:
            check_path(example)
        except ValueError as exc:
            raise ValueError(f"ModelCheckpoint: {exc}") from None
        if {name for _, name, _, _ in string.Formatter().parse(os.path.dirname(path)) if name is not None}:
            raise ValueError(f"{owner}: a pattern in the folder part would need a new folder at every save, and "
                             f"folders are never made silently; put {{epoch}} and the metrics in the file name")
        _check_folder("ModelCheckpoint", pathlib.Path(example))
        return fields

    def check_metrics(self, metrics):
        if self.save_best_only:
            super().check_metrics(metrics)
        for name in self.fields:
            if name not in metrics:
                raise _missing_metric(self.owner, name, metrics, f"{{{name}}} in path {self.path!r}")

    def on_train_begin(self, model, optimizer):
        super().on_train_begin(model, optimizer)
        self.best = math.inf if self.mode == "min" else -math.inf
        self._own: dict[str, list] = {}
        self._checked = False

    def on_epoch_end(self, epoch, logs):
        from .checkpoint import save

        if not self._checked:           # before anything is written, where fit did not check already
            self.check_metrics(logs)
            self._checked = True
        for key, value in logs.items():
            self._own.setdefault(key, []).append(value)
        if self.save_best_only:
            value = self._value(logs)
            if not self._improves(value):
                return
            self.best = value
        path = pathlib.Path(self.path.format(**{**logs, "epoch": epoch}))
        extra = {**self.extra, "logs": dict(logs),
                 "history": self.history.as_dict() if self.history is not None else self._own}
        if self.normalization is not None:
            extra["normalization"] = self.normalization
        try:
            save(path, self.model, self.optimizer, epoch=epoch, step=getattr(self.optimizer, "steps", 0),
                 extra=extra)
        except OSError as exc:        # atomic writes: the previous checkpoint is whole
            raise CheckpointSaveError(f"could not write the checkpoint of epoch {epoch} to {path}: "
                                      f"{exc.strerror or exc}", path, epoch) from None
        self.saved.append(path)
        self.last_epoch = epoch


class CSVLogger(Callback):
    """One CSV row per epoch with every metric in ``logs``, flushed each epoch. ``append``: add to an existing
    file (a resumed run) instead of starting a new one. The header always names every column: when a run logs a
    metric the file lacks (a resumed run that adds validation), the file is rewritten once under the wider
    header, earlier rows blank there; a column this run lacks stays blank in its rows."""

    def __init__(self, path: str | os.PathLike, append: bool = False):
        self.path, self.append = pathlib.Path(path), bool(append)
        _check_folder("CSVLogger", self.path)
        self._file = self._writer = None
        self._fields: list[str] = []

    def on_train_begin(self, model, optimizer):
        super().on_train_begin(model, optimizer)
        self._fields = self._header() if self.append else []
        self._file = open(self.path, "a" if self.append else "w", newline="")
        self._writer = csv.DictWriter(self._file, fieldnames=self._fields, restval="")

    def _header(self) -> list[str]:
        if not self.path.exists():
            return []
        with open(self.path, newline="") as handle:
            return next(csv.reader(handle), [])

    def on_epoch_end(self, epoch, logs):
        new = [key for key in logs if key not in self._fields]
        if new:
            self._widen(new)
        self._writer.writerow(logs)
        self._file.flush()

    def _widen(self, new: list[str]) -> None:
        """Add columns ``new``: the file so far is rewritten (atomically) under the wider header."""
        from .atomic import write_atomic

        self._file.close()
        rows = []
        if self._fields:
            with open(self.path, newline="") as handle:
                rows = list(csv.DictReader(handle))
        self._fields = [*self._fields, *new]
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=self._fields, restval="", extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        write_atomic(self.path, text.getvalue().encode())
        self._file = open(self.path, "a", newline="")
        self._writer = csv.DictWriter(self._file, fieldnames=self._fields, restval="")

    def on_train_end(self):
        if self._file is not None:
            self._file.close()
        self._file = self._writer = None
