"""The training loop: :func:`fit` and :func:`evaluate`."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable

import numpy as np
from array_api_compat import array_namespace, device

from . import backend as _backend
from . import parallel as _parallel
from .data import Dataset
from .nn import Module
from .callbacks import Callback
from .step import TrainStep, _confusion, _correct, _in_top_k, decision_threshold

__all__ = ["History", "TrainingDivergedError", "epoch_order", "evaluate", "fit"]


class TrainingDivergedError(FloatingPointError):
    """The loss became NaN or infinite; carries the epoch and step (1-based) where it happened."""

    def __init__(self, message: str, epoch: int, step: int):
        super().__init__(message)
        self.epoch, self.step = epoch, step


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


def _as_dataset(data: Any, name: str, model: Any = None) -> Dataset:
    """``data`` as a Dataset on the backend and device of ``model``'s parameters (NumPy arrays given to a torch or
    jax model are moved there once, as Keras does)."""
    if isinstance(data, (tuple, list)) and len(data) == 2:
        data = Dataset(data[0], data[1])
    if not isinstance(data, Dataset):
        raise TypeError(f"{name} must be an xpcnn.data.Dataset or a pair (images, labels); got {type(data).__name__}")
    first = next(iter(model.parameters()), None) if isinstance(model, Module) else None
    if first is not None:
        images, labels = (_backend.asarray_like(a, first.data) for a in (data.images, data.labels))
        if images is not data.images or labels is not data.labels:
            data = Dataset(images, labels, data.source, data.mean, data.std)
    return data


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
    (no handler on the root logger or on ``xpcnn``), it is printed as before, between the progress bars; once it
    has, the line goes to its handlers instead."""
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


def _check_labels(data: Dataset, output_shape: tuple, loss_fn: Any = None) -> None:
    """Class indices must lie in [0, K) for K outputs, and binary cross-entropy's targets in [0, 1]: checked once, with
    one read-back, since the losses only turn a bad label into an infinite or NaN loss (a per-step check would
    stall a GPU, and cannot run inside a compiled step)."""
    labels = data.labels
    if labels.shape[0] == 0:
        return
    bce = getattr(loss_fn, "decision_threshold", None) is not None     # BCELoss, BCEWithLogitsLoss: targets in [0, 1]
    if not bce and (labels.ndim != 1 or len(output_shape) != 1):
        return
    xp = array_namespace(labels)
    low, high = (float(v) for v in _backend.to_numpy(xp.stack([xp.min(labels), xp.max(labels)])))
    if bce and (low < 0 or high > 1):
        raise ValueError(f"train_data: targets for {type(loss_fn).__name__} must lie in [0, 1]; got values from "
                         f"{low:g} to {high:g}")
    if not bce and (low < 0 or high >= output_shape[0]):
        raise ValueError(f"train_data: labels must lie in [0, {output_shape[0]}) for a model with {output_shape[0]} "
                         f"outputs; got values from {low:g} to {high:g}")


def fit(model: Any, loss_fn: Any, optimizer: Any, train_data: Any, epochs: int, batch_size: int = 64,
        validation_data: Any = None, callbacks: Iterable[Callable[[int, dict], None]] = (), scheduler: Any = None,
        seed: int = 0, start_epoch: int = 0, history: History | None = None, progress: bool = True,
        augment: Callable[[Any, np.random.Generator], Any] | None = None, distributed: Any = None,
        compile: bool | None = None, validation_split: float | None = None) -> History:
    """Train ``model`` for epochs ``start_epoch + 1 .. epochs`` and return the :class:`History`.

    Each step (a :class:`xpcnn.TrainStep`): forward, loss, backward, the optimizer's update, gradients cleared.
    ``compile``: whether the step is compiled as one function (None, the default: where the backend has a
    compiler, i.e. jax; True: insist; False: run it op by op). ``scheduler`` (if any) sets
    the learning rate from the fractional epoch. After each epoch every callback is called as
    ``callback(epoch, logs)`` (epoch 1-based; logs holds this epoch's metrics); an :mod:`xpcnn.callbacks` object
    can stop training (EarlyStopping), and fit then returns the History so far. ``validation_split``: hold out
    this fraction of ``train_data`` (chosen by ``seed``, :meth:`Dataset.split`) and score it after every epoch,
    as ``validation_data`` would be (give one or the other). Data order depends on
    ``(seed, epoch)`` only, so resuming at ``start_epoch`` continues exactly. The loss stays on the device
    and is read back once every ``READ_BACK_EVERY`` (10) steps and at the end of the epoch (each read-back
    stalls a GPU's queue); a NaN or infinite loss then, or non-finite weights at the end of an epoch, raise
    :class:`TrainingDivergedError` naming the epoch and steps. ``augment(x, rng)`` (e.g.
    :func:`xpcnn.data.random_crop_flip`) transforms each training batch; its generator depends on
    ``(seed, epoch)`` only, so resumed runs repeat it too.

    ``distributed`` (from :func:`xpcnn.distributed.init`): data-parallel training. ``batch_size`` is the
    global batch; every rank takes its slice of each batch, and one all-reduce per step sums the flat
    gradient with the loss and correct counts, so every rank takes the same step and sees the same metrics
    (a NaN stops them all together). Rank 0 alone prints and runs the callbacks (checkpoints); the others
    wait at a barrier. Evaluation is sharded across ranks.

    On the numpy backend, big batches run on every CPU core (:mod:`xpcnn.parallel`: the same numbers), and
    glibc's malloc is told to keep its memory (:func:`xpcnn.parallel.tune_allocator`).
    """
    from tqdm.auto import tqdm

    _parallel.tune_allocator()

    train_data = _as_dataset(train_data, "train_data", model)
    if validation_split is not None:
        if validation_data is not None:
            raise ValueError("fit: give validation_data or validation_split, not both")
        train_data, validation_data = train_data.split(validation_split, seed=seed)
    if validation_data is not None:
        validation_data = _as_dataset(validation_data, "validation_data", model)
    callbacks = list(callbacks)
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive integer; got {epochs!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}")
    if len(train_data) == 0:
        raise ValueError("train_data is empty")
    if hasattr(model, "check_input"):
        output = model.check_input((batch_size, *train_data.sample_shape))
        _check_labels(train_data, output, loss_fn)
    history = history or History()
    n = len(train_data)
    steps_per_epoch = math.ceil(n / batch_size)
    ctx = distributed
    if ctx is not None and compile:
        raise ValueError("fit: compile=True cannot be combined with distributed= (data-parallel steps all-reduce "
                         "the gradient between backward and update, and run eagerly); pass compile=None or False")
    train_step = TrainStep(model, loss_fn, optimizer, compile=compile) if ctx is None else None
    if ctx is not None:                        # the same run on every rank, or the same error on every rank
        ctx.check_same({"epochs": epochs, "batch_size": batch_size, "seed": seed, "start_epoch": start_epoch,
                        "train samples": len(train_data), "sample shape": train_data.sample_shape,
                        "optimizer": type(optimizer).__name__, "lr": optimizer.lr,
                        "hyper-parameters": getattr(optimizer, "hyper", None), "optimizer steps": optimizer.steps,
                        "validation samples": None if validation_data is None else len(validation_data)},
                       "fit settings")
        ctx.sync_model(model)                  # same shapes and dtypes (or a clear error), rank 0's values everywhere
        progress = progress and ctx.is_root
    part = (0, 1) if ctx is None else (ctx.rank, ctx.size)
    hooked = [c for c in callbacks if isinstance(c, Callback)] if ctx is None or ctx.is_root else []
    for callback in hooked:
        callback.on_train_begin(model, optimizer)
        callback.normalization = train_data.normalization()
    try:
        for epoch in range(start_epoch, epochs):
            model.train()
            start = time.perf_counter()
            total_loss, correct, seen, checked = 0.0, 0, 0, 0
            augment_rng = np.random.default_rng([seed, epoch, 1])
            with tqdm(total=n, desc=f"epoch {epoch + 1}/{epochs}", unit="img", unit_scale=True,
                      disable=None if progress else True, leave=False, dynamic_ncols=True) as bar:   # None: off in logs
                for step, (x, y) in enumerate(train_data.batches(batch_size, epoch_order(seed, epoch, n), part)):
                    if scheduler is not None:
                        scheduler.set_epoch(epoch + step / steps_per_epoch)
                    if augment is not None:
                        x = augment(x, augment_rng)
                    count = min(batch_size, n - step * batch_size)       # the global batch
                    if ctx is None:
                        loss, batch_correct = train_step(x, y)
                        batch_loss = loss * count                                  # on the device
                    else:
                        batch_loss, batch_correct = _data_parallel_step(ctx, model, loss_fn, optimizer, x, y, count)
                    total_loss, correct = total_loss + batch_loss, correct + batch_correct
                    model.zero_grad()
                    seen += count
                    bar.update(count)
                    if (step + 1) % READ_BACK_EVERY == 0 or seen == n:
                        loss_sum, right = _read_back(total_loss, correct)
                        if not math.isfinite(loss_sum):
                            raise TrainingDivergedError(
                                f"the loss became {loss_sum} at epoch {epoch + 1}, between steps {checked + 1} and "
                                f"{step + 1} (of {steps_per_epoch}); training stopped. Try a lower learning rate "
                                f"(it was {optimizer.lr:g}).", epoch + 1, step + 1)
                        checked = step + 1
                        bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{100 * right / seen:.2f}%")
            if not parameters_finite(model):
                raise TrainingDivergedError(
                    f"the weights hold NaN or Inf values after epoch {epoch + 1} (the loss was {loss_sum / seen:g}); "
                    f"training stopped. Try a lower learning rate (it was {optimizer.lr:g}).", epoch + 1, checked)
            seconds = time.perf_counter() - start
            logs = {"epoch": epoch + 1, "loss": loss_sum / seen, "accuracy": right / seen,
                    "lr": optimizer.lr, "seconds": seconds, "images_per_s": seen / seconds}
            if ctx is not None:
                ctx.sync_buffers(model)                # rank 0's running statistics, as DDP's broadcast_buffers
            if validation_data is not None:
                val = evaluate(model, validation_data, loss_fn=loss_fn, distributed=ctx)
                logs.update(val_loss=val["loss"], val_accuracy=val["accuracy"])
            for key, value in logs.items():
                getattr(history, key).append(value)
            if progress:
                line = (f"epoch {epoch + 1}/{epochs}: loss {logs['loss']:.4f}, accuracy {100 * logs['accuracy']:.2f}%")
                if validation_data is not None:
                    line += f", val loss {logs['val_loss']:.4f}, val accuracy {100 * logs['val_accuracy']:.2f}%"
                _say(line + f", lr {logs['lr']:.4g}, {seconds:.1f}s, {logs['images_per_s']:,.0f} img/s")
            stop = False
            if ctx is None or ctx.is_root:
                for callback in callbacks:
                    callback(epoch + 1, logs)
                stop = any(getattr(callback, "stop_training", False) for callback in callbacks)
            if ctx is not None:
                ctx.barrier()
                stop = float(ctx.allreduce(np.asarray([float(stop)]))[0]) > 0     # rank 0 decides for all
            if stop:
                if progress:
                    _say(f"training stopped by a callback after epoch {epoch + 1}")
                break
    finally:
        for callback in hooked:
            callback.on_train_end()
    return history


def _data_parallel_step(ctx, model, loss_fn, optimizer, x, y, count) -> tuple[Any, Any]:
    """This rank's share of one global batch of ``count`` samples, then ONE all-reduce of the flat gradient
    with the loss and correct sums appended, then the optimizer step every rank takes alike."""
    local = int(x.shape[0])
    flat_params = optimizer.flat_parameters()
    xp = array_namespace(flat_params)
    if local:
        logits = model(x)
        loss = loss_fn(logits, y)
        model.backward(loss_fn.backward(local / count))      # this rank's part of the global mean's gradient
        sums = xp.stack([loss * local, xp.astype(_correct(logits, y, decision_threshold(model, loss_fn)),
                                                 loss.dtype)])
        grad = optimizer.flat_gradients()
    else:                                                     # an uneven split left this rank no sample
        sums = xp.zeros(2, dtype=flat_params.dtype, device=device(flat_params))
        grad = xp.zeros(flat_params.shape, dtype=flat_params.dtype, device=device(flat_params))
    reduced = ctx.allreduce(xp.concat([grad, sums]))
    optimizer.step(flat_grad=reduced[:-2])
    return reduced[-2], reduced[-1]


def evaluate(model: Any, data: Any, loss_fn: Any = None, batch_size: int = 1000,
             distributed: Any = None, top_k: int | None = None) -> dict[str, Any]:
    """``model`` on ``data`` in eval mode: ``"accuracy"``, ``"n"``, ``"confusion"`` (a K x K integer NumPy array,
    rows the true class, columns the predicted one; 2 x 2 for a one-output binary classifier),
    ``"per_class_accuracy"`` (a NumPy array, NaN for a class with no sample), and ``"loss"`` (the mean) when
    ``loss_fn`` is given, ``"top_k_accuracy"`` with ``top_k`` (the true class among the k largest outputs). Sums
    stay on the device and are read back at the end: the counts in one transfer, the loss with the top-k count in
    another. ``distributed``: each rank evaluates its shard of ``data`` and the sums are all-reduced."""
    data = _as_dataset(data, "data", model)
    if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1):
        raise ValueError(f"evaluate: top_k must be a positive integer; got {top_k!r}")
    threshold = decision_threshold(model, loss_fn)
    call = model.infer if isinstance(model, Module) else model      # eval mode; the model's own mode left alone
    total_loss, confusion, top = 0.0, None, 0
    part = (0, 1) if distributed is None else (distributed.rank, distributed.size)
    for x, y in data.batches(batch_size, part=part):
        if not x.shape[0]:
            continue                                     # this rank's share of a small last batch
        logits = call(x)
        batch = _confusion(logits, y, threshold)
        confusion = batch if confusion is None else confusion + batch
        if loss_fn is not None:
            total_loss = total_loss + loss_fn(logits, y) * int(x.shape[0])
        if top_k is not None:
            top = top + _in_top_k(logits, y, top_k)
    if confusion is None:                                   # no sample here: the classes from the model
        classes = model.check_input((1, *data.sample_shape))[0] if hasattr(model, "check_input") else 0
        confusion = np.zeros((2 if classes == 1 else classes,) * 2, np.int64)      # one output: binary
    counts = np.asarray(_backend.to_numpy(confusion), np.int64)
    loss_sum, top = _read_back(total_loss, top)
    if distributed is not None:
        reduced = distributed.allreduce(np.concatenate([[loss_sum, top], counts.ravel()]).astype(np.float64))
        loss_sum, top = float(reduced[0]), int(round(reduced[1]))
        counts = np.rint(reduced[2:]).astype(np.int64).reshape(counts.shape)
    n = max(len(data), 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.diagonal(counts) / counts.sum(axis=1)
    result = {"accuracy": int(np.trace(counts)) / n, "n": len(data), "confusion": counts,
              "per_class_accuracy": per_class}
    if loss_fn is not None:
        result["loss"] = loss_sum / n
    if top_k is not None:
        result["top_k_accuracy"] = top / n
    return result
