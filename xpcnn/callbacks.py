"""Callbacks for :func:`xpcnn.fit`: :class:`EarlyStopping`, :class:`ModelCheckpoint`, :class:`CSVLogger`.

``fit`` calls every callback after each epoch as ``callback(epoch, logs)`` (epoch 1-based, ``logs`` the epoch's
metrics: ``loss``, ``accuracy``, ``val_loss`` and ``val_accuracy`` with validation data, ``lr``, ``seconds``,
``images_per_s``). A plain function works. A :class:`Callback` also gets the model and the optimizer before the
first epoch (``on_train_begin``) and ``on_train_end()`` after the last, and stops training by setting
``self.stop_training = True``: ``fit`` then ends after that epoch and returns the History as usual.
"""

from __future__ import annotations

import csv
import math
import os
import pathlib
from typing import Any

import numpy as np

from . import backend as _backend

__all__ = ["CSVLogger", "Callback", "EarlyStopping", "ModelCheckpoint"]


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

    def _value(self, logs: dict) -> float:
        if self.monitor not in logs:
            hint = ("; pass validation_data= or validation_split= to fit, or monitor another metric"
                    if self.monitor.startswith("val_") else "")
            raise KeyError(f"{self.owner}: monitor {self.monitor!r} is not among this run's metrics "
                           f"({', '.join(sorted(logs))}){hint}")
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


class ModelCheckpoint(_Monitor):
    """Save a checkpoint (model and optimizer, atomically, see :func:`xpcnn.save`) after every epoch, or with
    ``save_best_only`` after each epoch that improves ``monitor``; with the epoch's metrics and the training
    data's normalization in its ``extra`` (``xpcnn predict`` reads it). ``path`` may hold ``{epoch}`` and any metric,
    formatted like ``"ckpt-{epoch:02d}-{val_loss:.3f}.npz"``."""

    def __init__(self, path: str | os.PathLike, monitor: str = "val_loss", save_best_only: bool = False,
                 mode: str = "auto"):
        super().__init__("ModelCheckpoint", monitor, mode)
        self.path, self.save_best_only = str(path), bool(save_best_only)
        self.saved: list[pathlib.Path] = []

    def on_train_begin(self, model, optimizer):
        super().on_train_begin(model, optimizer)
        self.best = math.inf if self.mode == "min" else -math.inf

    def on_epoch_end(self, epoch, logs):
        from .checkpoint import save

        if self.save_best_only:
            value = self._value(logs)
            if not self._improves(value):
                return
            self.best = value
        path = self.path.format(**{**logs, "epoch": epoch})
        extra = {"logs": dict(logs)}
        if self.normalization is not None:
            extra["normalization"] = self.normalization         # for xpcnn predict
        self.saved.append(save(path, self.model, self.optimizer, epoch=epoch,
                               step=getattr(self.optimizer, "steps", 0), extra=extra))


class CSVLogger(Callback):
    """One CSV row per epoch with every metric in ``logs`` (the header from the first epoch), flushed each epoch.
    ``append``: add to an existing file (a resumed run) instead of starting a new one."""

    def __init__(self, path: str | os.PathLike, append: bool = False):
        self.path, self.append = pathlib.Path(path), bool(append)
        self._file = self._writer = None

    def on_train_begin(self, model, optimizer):
        super().on_train_begin(model, optimizer)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._header = self.append and self.path.exists() and self.path.stat().st_size > 0
        self._file = open(self.path, "a" if self.append else "w", newline="")

    def on_epoch_end(self, epoch, logs):
        if self._writer is None:
            self._writer = csv.DictWriter(self._file, fieldnames=list(logs))
            if not self._header:
                self._writer.writeheader()
        self._writer.writerow(logs)
        self._file.flush()

    def on_train_end(self):
        if self._file is not None:
            self._file.close()
        self._file = self._writer = None
