"""Training curves: a PNG of the loss and the accuracy per epoch (needs matplotlib: the ``[plot]`` extra)."""

from __future__ import annotations

import pathlib

__all__ = ["write_plot"]


def write_plot(history: dict, path: str) -> None:
    """A PNG at ``path`` with the loss and the accuracy per epoch of ``history`` (:meth:`xpcnn.History.as_dict`):
    train, and validation/test where recorded."""
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
