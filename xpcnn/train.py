"""Training and scoring over :class:`~xpcnn.TrainStep`: :func:`fit` and :func:`evaluate`, one process or an MPI
job alike (data parallelism is the step's gradient-reduction hook)."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import numpy as np
from array_api_compat import array_namespace, device

from . import backend as _backend
from . import parallel as _parallel
from . import metrics as _metrics
from .callbacks import Callback, History
from .data import DataError, Dataset
from .functional._checks import as_float, as_int
from .nn import Module
from .nn.module import dtype_name
from .step import TrainStep

__all__ = ["History", "TrainingDivergedError", "epoch_order", "evaluate", "fit"]


class TrainingDivergedError(FloatingPointError):
    """The loss became NaN or infinite; carries the epoch and step (1-based) where it happened."""

    def __init__(self, message: str, epoch: int, step: int):
        super().__init__(message)
        self.epoch, self.step = epoch, step


def _as_dataset(data: Any, name: str, model: Any, normalization: Any = None) -> Any:
    """``data`` on the backend and device of ``model``'s parameters (moved there once, as Keras does): a
    :class:`Dataset`, a dataset that streams its batches (a ``FolderDataset``, placed with its ``like``), or a
    pair of NumPy arrays made a Dataset as :func:`_from_pair` says."""
    if isinstance(data, (tuple, list)) and len(data) == 2:
        data = _from_pair(data, name, model, normalization)
    streams = all(callable(getattr(data, method, None)) for method in ("batches", "split", "like"))
    if not isinstance(data, Dataset) and not streams:
        raise TypeError(f"{name} must be an xpcnn.data.Dataset (or a folder's, Dataset.from_folder) or a pair "
                        f"(images, labels) of NumPy arrays; got {type(data).__name__}")
    first = next(iter(model.parameters()), None) if isinstance(model, Module) else None
    if first is not None and streams:
        return data.like(first.data)
    if first is not None:
        images, labels = (_backend.asarray_like(a, first.data) for a in (data.images, data.labels))
        if images is not data.images or labels is not data.labels:
            data = Dataset(images, labels, data.source, data.mean, data.std)
    return data


def _from_pair(pair: Any, name: str, model: Any, normalization: Any) -> Dataset:
    """A pair ``(images, labels)`` of NumPy arrays through :meth:`Dataset.from_numpy` (its layouts and label
    types), in the model's dtype. Floating images are taken as already normalized; uint8 pixels are normalized
    with the statistics of ``normalization`` (the training Dataset) where given, with their own where it is
    None, and refused where it is False (evaluate cannot know the training images' statistics)."""
    images, labels = pair
    if not (isinstance(images, np.ndarray) and isinstance(labels, np.ndarray)):
        raise TypeError(f"{name}: a pair (images, labels) must be NumPy arrays; got {type(images).__name__} and "
                        f"{type(labels).__name__} (wrap arrays of the backend as xpcnn.data.Dataset(images, labels))")
    if labels.ndim == 1 and not np.issubdtype(labels.dtype, np.integer):
        if not (np.issubdtype(labels.dtype, np.floating) and np.all(labels == np.round(labels))):
            raise TypeError(f"{name}: labels (N,) must be whole class indices; got {labels.dtype} values such as "
                            f"{labels[:3].tolist()}")
    params = model.parameters() if isinstance(model, Module) else []
    dtype = dtype_name(params[0].data) if params else "float32"
    if images.dtype != np.uint8:
        data = Dataset.from_numpy(images, labels, dtype=dtype, mean=0.0, std=1.0)    # as they are: x - 0 / 1
        return Dataset(data.images, data.labels, data.source)
    if normalization is False or (normalization is not None and getattr(normalization, "mean", None) is None):
        raise TypeError(f"{name}: uint8 pixels must be normalized as the training images were; make them a "
                        f"Dataset: xpcnn.data.Dataset.from_numpy(images, labels, mean=train.mean, std=train.std)")
    stats = {} if normalization is None else {"mean": normalization.mean, "std": normalization.std}
    return Dataset.from_numpy(images, labels, dtype=dtype, **stats)


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The shuffled order of epoch ``epoch``: a function of (seed, epoch) alone, so a resumed run repeats it."""
    return np.random.default_rng([seed, epoch]).permutation(n)


LOG = logging.getLogger("xpcnn")          # fit's per-epoch lines: redirect or silence them through logging


class _TqdmHandler(logging.Handler):
    """Writes records between progress bars (tqdm.write): fit's output where the application set up no logging."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm.auto import tqdm

        tqdm.write(self.format(record))


_HANDLER = _TqdmHandler()


def _say(line: str) -> None:
    """One line of fit's output, at INFO on the ``xpcnn`` logger. Where the application has configured no logging
    (no handler on the root logger or on ``xpcnn``), it is printed between the progress bars; once it has, the
    line goes to its handlers instead."""
    configured = bool(logging.getLogger().handlers) or any(h is not _HANDLER for h in LOG.handlers)
    if configured and _HANDLER in LOG.handlers:
        LOG.removeHandler(_HANDLER)
        LOG.propagate = True
    elif not configured and _HANDLER not in LOG.handlers:
        LOG.addHandler(_HANDLER)
        LOG.propagate = False                    # printed once, by our handler
        if LOG.level == logging.NOTSET:
            LOG.setLevel(logging.INFO)
    LOG.info(line)


READ_BACK_EVERY = 10     # steps between reading the running loss back to the host (a GPU stall each time)


def _read_back(total: Any, correct: Any) -> tuple[float, int]:
    """The running loss sum and a count (either may be a number: nothing summed) in ONE device-to-host transfer."""
    if isinstance(total, float):                         # nothing was summed (no batch)
        return float(total), int(round(float(correct)))
    xp = array_namespace(total)
    count = xp.asarray(correct, dtype=total.dtype, device=device(total))
    both = _backend.to_numpy(xp.stack([total, count]))
    return float(both[0]), int(round(float(both[1])))


def parameters_finite(model: Any) -> bool:
    """Whether every parameter and buffer is finite, with one read-back."""
    slots = [*model.parameters(), *(model.buffers() if hasattr(model, "buffers") else [])]
    if not slots:
        return True
    xp = array_namespace(slots[0].data)
    return bool(xp.all(xp.stack([xp.all(xp.isfinite(s.data)) for s in slots])))


def _label_range(labels: Any, output_shape: tuple, loss_fn: Any) -> tuple[float, float] | None:
    """``(low, high)`` the labels must lie in (high included for targets, excluded for class indices), or None
    when the labels are not checked (one-hot or probability targets, regression)."""
    binary_loss = getattr(loss_fn, "decision_threshold", None) is not None      # BCELoss, BCEWithLogitsLoss
    if binary_loss or (loss_fn is None and tuple(output_shape) == (1,)):
        return 0.0, 1.0
    if labels.ndim == 1 and len(output_shape) == 1:
        return 0.0, float(output_shape[0])
    return None


def _check_labels(data: Dataset, output_shape: tuple, loss_fn: Any, name: str, training: bool = False) -> None:
    """Labels in the range the model and the loss take (:func:`_label_range`), checked once with one read-back:
    a loss turns a bad label into an infinite or NaN loss, and a confusion matrix counts it nowhere."""
    labels = data.labels
    bounds = _label_range(labels, output_shape, loss_fn) if labels.shape[0] else None
    if bounds is None:
        return
    xp = array_namespace(labels)
    low, high = (float(v) for v in _backend.to_numpy(xp.stack([xp.min(labels), xp.max(labels)])))
    if bounds[1] == 1.0 and (low < 0 or high > 1):
        what = f"{type(loss_fn).__name__}" if loss_fn is not None else "a model with one output"
        raise ValueError(f"{name}: targets for {what} must lie in [0, 1]; got values from {low:g} to {high:g}")
    if bounds[1] != 1.0 and (low < 0 or high >= bounds[1]):
        count = int(bounds[1])
        raise ValueError(f"{name}: labels must lie in [0, {count}) for a model with {count} outputs; got values "
                         f"from {low:g} to {high:g}")
    if training and bounds[1] != 1.0 and low == high and labels.shape[0] > 1:
        raise DataError(f"{name}: every label is {low:g}: a classifier needs at least two classes to learn from "
                        f"(a model trained on one class only ever predicts it)")


def _check_data(model: Any, data: Dataset, loss_fn: Any, name: str, batch: int, training: bool = False) -> None:
    """Samples there, of a shape the model takes, with labels it can score (and, to train on, more than one
    class): before any training or scoring."""
    if len(data) == 0:
        raise ValueError(f"{name} has no samples")
    if hasattr(model, "check_input"):
        _check_labels(data, model.check_input((batch, *data.sample_shape)), loss_fn, name, training)


class _Processes:
    """The processes a run spans: one, or the ranks of a :mod:`xpcnn.distributed` job (``ctx``). What fit does
    differently across ranks lives here, so the epoch loop reads the same for both."""

    def __init__(self, ctx: Any = None):
        self.ctx = ctx
        self.part = (0, 1) if ctx is None else (ctx.rank, ctx.size)
        self.is_root = ctx is None or ctx.is_root

    def reduce_gradients(self) -> Callable | None:
        """The step's hook: one all-reduce of the flat gradient with the metrics appended (None alone)."""
        ctx = self.ctx
        if ctx is None:
            return None

        def allreduce(grad: Any, metrics: Any) -> tuple[Any, Any]:
            reduced = ctx.allreduce(array_namespace(grad).concat([grad, metrics]))
            return reduced[:-2], reduced[-2:]

        return allreduce

    def share(self, local: int, count: int) -> float | None:
        return None if self.ctx is None else local / count

    def agree(self, model: Any, settings: dict) -> None:
        """The same run on every rank (or the same error on every rank), from rank 0's weights."""
        if self.ctx is not None:
            self.ctx.check_same(settings, "fit settings")
            self.ctx.sync_model(model)

    def sync_buffers(self, model: Any) -> None:
        """Rank 0's running statistics everywhere, as DDP's ``broadcast_buffers``."""
        if self.ctx is not None:
            self.ctx.sync_buffers(model)

    def decide(self, stop: bool) -> bool:
        """Rank 0's decision to stop, on every rank."""
        if self.ctx is None:
            return stop
        self.ctx.barrier()
        return float(self.ctx.allreduce(np.asarray([float(stop)]))[0]) > 0


@dataclass
class _Run:
    """What every epoch of one :func:`fit` call uses."""

    model: Any
    optimizer: Any
    step: TrainStep
    data: Dataset
    epochs: int
    batch_size: int
    seed: int
    scheduler: Any
    augment: Callable | None
    processes: _Processes
    progress: bool


def fit(model: Any, loss_fn: Any, optimizer: Any, train_data: Any, epochs: int, batch_size: int = 64,
        validation_data: Any = None, callbacks: Iterable[Callable[[int, dict], None]] = (), scheduler: Any = None,
        seed: int = 0, start_epoch: int = 0, history: History | None = None, progress: bool = True,
        augment: Callable[[Any, np.random.Generator], Any] | None = None, distributed: Any = None,
        compile: bool | None = None, validation_split: float | None = None) -> History:
    """Train ``model`` for epochs ``start_epoch + 1 .. epochs`` and return the :class:`History`.

    ``train_data``: a :class:`~xpcnn.data.Dataset`, or a pair ``(images, labels)`` of NumPy arrays made one by
    :meth:`Dataset.from_numpy`: floating images as they are, uint8 pixels normalized with their own statistics
    (a pair of uint8 ``validation_data`` with the training images'). Each step is a :class:`xpcnn.TrainStep` (``compile``: as there). ``scheduler`` sets the
    learning rate from the fractional epoch. After each epoch every callback is called as ``callback(epoch,
    logs)``; an :mod:`xpcnn.callbacks` object can stop training, and fit then returns the History so far.
    ``validation_split``: hold out this fraction of ``train_data`` (:meth:`Dataset.split` with ``seed``) and score
    it after every epoch, as ``validation_data`` would be. The data order and ``augment(x, rng)``'s generator
    depend on ``(seed, epoch)`` only, so resuming at ``start_epoch`` continues exactly. The loss is read back every
    ``READ_BACK_EVERY`` steps and at the end of an epoch (each read-back stalls a GPU); a NaN or infinite loss,
    or non-finite weights after an epoch, raise :class:`TrainingDivergedError`.

    ``distributed`` (from :func:`xpcnn.distributed.init`): data-parallel training. ``batch_size`` is the global
    batch; every rank steps on its slice of each batch and the step's hook sums the gradient and the metrics
    across ranks, so every rank takes the same step. Rank 0 alone prints and runs the callbacks.

    fit tunes glibc's malloc for training (:func:`xpcnn.parallel.tune_allocator`).
    """
    _parallel.tune_allocator()
    epochs, batch_size = as_int("fit", "epochs", epochs, 1), as_int("fit", "batch_size", batch_size, 1)
    seed, start_epoch = as_int("fit", "seed", seed, 0), as_int("fit", "start_epoch", start_epoch, 0)
    train_data, validation_data = _fit_data(model, loss_fn, train_data, validation_data, validation_split, seed,
                                            batch_size)
    if distributed is not None and compile:
        raise ValueError("fit: compile=True cannot be combined with distributed= (the all-reduce of the gradient "
                         "runs on the host, between backward and update); pass compile=None or False")
    processes = _Processes(distributed)
    step = TrainStep(model, loss_fn, optimizer, compile=False if distributed is not None else compile,
                     reduce_gradients=processes.reduce_gradients())
    processes.agree(model, {
        "epochs": epochs, "batch_size": batch_size, "seed": seed, "start_epoch": start_epoch,
        "train samples": len(train_data), "sample shape": train_data.sample_shape,
        "optimizer": type(optimizer).__name__, "lr": optimizer.lr, "hyper-parameters": getattr(optimizer, "hyper", None),
        "optimizer steps": optimizer.steps, "validation samples": None if validation_data is None else len(validation_data)})
    run = _Run(model, optimizer, step, train_data, epochs, batch_size, seed, scheduler, augment, processes,
               progress and processes.is_root)
    callbacks = list(callbacks) if processes.is_root else []
    hooked = _begin(callbacks, model, optimizer, train_data, validation_data is not None)
    history = history or History()
    try:
        for epoch in range(start_epoch, epochs):
            logs = _train_epoch(run, epoch)
            processes.sync_buffers(model)
            if validation_data is not None:
                val = _score(model, validation_data, loss_fn, 1000, distributed, None)
                logs.update(val_loss=val["loss"], val_accuracy=val["accuracy"])
            for key, value in logs.items():
                getattr(history, key).append(value)
            if run.progress:
                _say(_epoch_line(logs, epochs))
            for callback in callbacks:
                callback(epoch + 1, logs)
            if processes.decide(any(getattr(callback, "stop_training", False) for callback in callbacks)):
                if run.progress:
                    _say(f"training stopped by a callback after epoch {epoch + 1}")
                break
    finally:
        for callback in hooked:
            callback.on_train_end()
    return history


def _fit_data(model: Any, loss_fn: Any, train_data: Any, validation_data: Any, validation_split: Any, seed: int,
              batch_size: int) -> tuple[Dataset, Dataset | None]:
    """The training and validation Datasets on the model's backend, checked against the model and the loss."""
    train_data = _as_dataset(train_data, "train_data", model)
    if validation_split is not None:
        validation_split = as_float("fit", "validation_split", validation_split, 0, 1, low_open=True, high_open=True)
        if validation_data is not None:
            raise ValueError("fit: give validation_data or validation_split, not both")
        train_data, validation_data = train_data.split(validation_split, seed=seed)
    _check_data(model, train_data, loss_fn, "train_data", batch_size, training=True)
    if validation_data is not None:
        validation_data = _as_dataset(validation_data, "validation_data", model, normalization=train_data)
        _check_data(model, validation_data, loss_fn, "validation_data", 1)
    return train_data, validation_data


def _begin(callbacks: list, model: Any, optimizer: Any, data: Dataset, validation: bool) -> list:
    """Tell the :class:`~xpcnn.callbacks.Callback` objects training begins, and what each epoch will log; the
    ones told, to tell them when it ends."""
    names = ["epoch", "loss", "accuracy", "lr", "seconds", "images_per_s"]
    names += ["val_loss", "val_accuracy"] if validation else []
    hooked = [c for c in callbacks if isinstance(c, Callback)]
    for callback in hooked:
        check = getattr(callback, "check_metrics", None)
        if check is not None:
            check(names)
    for callback in hooked:
        callback.on_train_begin(model, optimizer)
        callback.normalization = data.normalization()
    return hooked


def _train_epoch(run: _Run, epoch: int) -> dict:
    """One epoch of steps; its logs (loss, accuracy, lr, seconds, images_per_s)."""
    from tqdm.auto import tqdm

    run.model.train()
    n, batch_size = len(run.data), run.batch_size
    steps = math.ceil(n / batch_size)
    start = time.perf_counter()
    total, correct, seen, checked, loss_sum = 0.0, 0, 0, 0, 0.0
    augment_rng = np.random.default_rng([run.seed, epoch, 1])
    batches = run.data.batches(batch_size, epoch_order(run.seed, epoch, n), run.processes.part)
    with tqdm(total=n, desc=f"epoch {epoch + 1}/{run.epochs}", unit="img", unit_scale=True,
              disable=None if run.progress else True, leave=False, dynamic_ncols=True) as bar:   # None: off in logs
        for step, (x, y) in enumerate(batches):
            if run.scheduler is not None:
                run.scheduler.set_epoch(epoch + step / steps)
            if run.augment is not None:
                x = run.augment(x, augment_rng)
            count = min(batch_size, n - step * batch_size)       # the global batch
            loss, batch_correct = run.step(x, y, run.processes.share(int(x.shape[0]), count))
            total, correct, seen = total + loss * count, correct + batch_correct, seen + count
            bar.update(count)
            if (step + 1) % READ_BACK_EVERY == 0 or seen == n:
                loss_sum, right = _read_back(total, correct)
                if not math.isfinite(loss_sum):
                    raise TrainingDivergedError(
                        f"the loss became {loss_sum} at epoch {epoch + 1}, between steps {checked + 1} and "
                        f"{step + 1} (of {steps}); training stopped. Try a lower learning rate (it was "
                        f"{run.optimizer.lr:g}).", epoch + 1, step + 1)
                checked = step + 1
                bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{100 * right / seen:.2f}%")
    if not parameters_finite(run.model):
        raise TrainingDivergedError(
            f"the weights hold NaN or Inf values after epoch {epoch + 1} (the loss was {loss_sum / seen:g}); "
            f"training stopped. Try a lower learning rate (it was {run.optimizer.lr:g}).", epoch + 1, checked)
    seconds = time.perf_counter() - start
    return {"epoch": epoch + 1, "loss": loss_sum / seen, "accuracy": right / seen, "lr": run.optimizer.lr,
            "seconds": seconds, "images_per_s": seen / seconds}


def _epoch_line(logs: dict, epochs: int) -> str:
    line = f"epoch {logs['epoch']}/{epochs}: loss {logs['loss']:.4f}, accuracy {100 * logs['accuracy']:.2f}%"
    if "val_loss" in logs:
        line += f", val loss {logs['val_loss']:.4f}, val accuracy {100 * logs['val_accuracy']:.2f}%"
    return line + f", lr {logs['lr']:.4g}, {logs['seconds']:.1f}s, {logs['images_per_s']:,.0f} img/s"


def evaluate(model: Any, data: Any, loss_fn: Any = None, batch_size: int = 1000,
             distributed: Any = None, top_k: int | None = None) -> dict[str, Any]:
    """``model`` on ``data`` in eval mode: ``"accuracy"``, ``"n"``, ``"confusion"`` (a K x K integer NumPy array,
    rows the true class, columns the predicted one; 2 x 2 for a one-output binary classifier),
    ``"per_class_accuracy"`` (a NumPy array, NaN for a class with no sample), and ``"loss"`` (the mean) when
    ``loss_fn`` is given, ``"top_k_accuracy"`` with ``top_k`` (the true class among the k largest outputs).
    ``data``: a :class:`~xpcnn.data.Dataset` normalized as the training images were (or a pair of NumPy arrays,
    floating images taken as they are); it must hold samples whose labels the model can score (class indices in
    [0, K)). ``distributed``: each rank evaluates its shard of
    ``data`` and the sums are all-reduced. The model's mode and pending backward are left as they are."""
    batch_size = as_int("evaluate", "batch_size", batch_size, 1)
    if top_k is not None:
        top_k = as_int("evaluate", "top_k", top_k, 1)
    data = _as_dataset(data, "data", model, normalization=False)
    _check_data(model, data, loss_fn, "evaluate: data", 1)
    return _score(model, data, loss_fn, batch_size, distributed, top_k)


def _score(model: Any, data: Dataset, loss_fn: Any, batch_size: int, distributed: Any,
           top_k: int | None) -> dict[str, Any]:
    """:func:`evaluate` on data already checked. Sums stay on the device and are read back at the end: the
    counts in one transfer, the loss with the top-k count in another."""
    threshold = _metrics.decision_threshold(model, loss_fn)
    call = model.infer if isinstance(model, Module) else model      # eval mode; the model's own mode left alone
    total_loss, confusion, top = 0.0, None, 0
    for x, y in data.batches(batch_size, part=_Processes(distributed).part):
        if not x.shape[0]:
            continue                                     # this rank's share of a small last batch
        outputs = call(x)
        batch = _metrics.confusion(outputs, y, threshold)
        confusion = batch if confusion is None else confusion + batch
        if loss_fn is not None:
            total_loss = total_loss + loss_fn(outputs, y) * int(x.shape[0])
        if top_k is not None:
            top = top + _metrics.in_top_k(outputs, y, top_k)
    if confusion is None:                                   # no sample on this rank: the classes from the model
        classes = model.check_input((1, *data.sample_shape))[0] if hasattr(model, "check_input") else 0
        confusion = np.zeros((2 if classes == 1 else classes,) * 2, np.int64)      # one output: binary
    counts = np.asarray(_backend.to_numpy(confusion), np.int64)
    loss_sum, top = _read_back(total_loss, top)
    if distributed is not None:
        reduced = distributed.allreduce(np.concatenate([[loss_sum, top], counts.ravel()]).astype(np.float64))
        loss_sum, top = float(reduced[0]), int(round(reduced[1]))
        counts = np.rint(reduced[2:]).astype(np.int64).reshape(counts.shape)
    n = len(data)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.diagonal(counts) / counts.sum(axis=1)
    result = {"accuracy": int(np.trace(counts)) / n, "n": n, "confusion": counts, "per_class_accuracy": per_class}
    if loss_fn is not None:
        result["loss"] = loss_sum / n
    if top_k is not None:
        result["top_k_accuracy"] = top / n
    return result
