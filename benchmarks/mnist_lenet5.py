"""Full-MNIST LeNet-5: time to accuracy with the documented recipe, on the selected backend.

    python benchmarks/mnist_lenet5.py                      # numpy; the data from ../shared/data/mnist
    XPCNN_BACKEND=cupy python benchmarks/mnist_lenet5.py --data-dir DIR    # a CUDA GPU

The recipe (the README's): LeNet-5 (ReLU, max pooling), Adam with learning rate 0.002 on a cosine
schedule over 5 epochs, batch 64, seed 0. Prints one line per epoch and a summary.
"""

from __future__ import annotations

import argparse
import pathlib
import time

import xpcnn

FULL_MNIST = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
RECIPE = dict(epochs=5, batch_size=64, lr=0.002, optimizer="adam", seed=0)


def run(data_dir=FULL_MNIST, epochs=5, batch_size=64, lr=0.002, optimizer="adam", seed=0,
        weight_decay=0.0, progress=True):
    backend = xpcnn.get_backend()
    train = xpcnn.data.load_dataset("mnist", "train", data_dir=data_dir, download=False)
    test = xpcnn.data.load_dataset("mnist", "test", data_dir=data_dir, download=False)
    model = xpcnn.models.lenet5(seed=seed)
    if optimizer == "sgd":
        opt = xpcnn.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    else:
        opt = xpcnn.optim.OPTIMIZERS[optimizer](model.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = xpcnn.optim.CosineLR(opt, epochs)
    loss_fn = xpcnn.nn.CrossEntropyLoss()
    start = time.perf_counter()
    xpcnn.fit(model, loss_fn, opt, train, epochs=epochs, batch_size=batch_size, scheduler=schedule, seed=seed,
              progress=progress)
    seconds = time.perf_counter() - start
    result = xpcnn.evaluate(model, test, loss_fn)
    return dict(backend=str(backend), recipe=f"lenet5, {type(opt).__name__} lr {lr}, cosine over {epochs} epochs, batch {batch_size}, "
                f"seed {seed}", accuracy=result["accuracy"], seconds=seconds,
                images_per_s=epochs * len(train) / seconds)


def report(r):
    return "\n".join([
        "Full MNIST (60,000 train / 10,000 test), LeNet-5, time to accuracy", "",
        "| backend | recipe | test accuracy | training time | images/s |", "| --- | --- | ---: | ---: | ---: |",
        f"| {r['backend']} | {r['recipe']} | {100 * r['accuracy']:.2f}% | {r['seconds']:.1f} s | "
        f"{r['images_per_s']:,.0f} |"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=str(FULL_MNIST))
    parser.add_argument("--epochs", type=int, default=RECIPE["epochs"])
    parser.add_argument("--batch-size", type=int, default=RECIPE["batch_size"])
    parser.add_argument("--lr", type=float, default=RECIPE["lr"])
    parser.add_argument("--optimizer", choices=("sgd", "adam", "adamw"), default=RECIPE["optimizer"])
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=RECIPE["seed"])
    args = parser.parse_args()
    print(report(run(args.data_dir, args.epochs, args.batch_size, args.lr, args.optimizer, args.seed,
                     args.weight_decay)))


if __name__ == "__main__":
    main()
