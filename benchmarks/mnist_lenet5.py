"""Full-MNIST LeNet-5: time to accuracy with the documented recipe, on the selected backend.

    python benchmarks/mnist_lenet5.py --data-dir ../shared/data/mnist          # numpy
    XPCNN_BACKEND=cupy python benchmarks/mnist_lenet5.py --data-dir ...        # a CUDA GPU

Recipe: LeNet-5 (ReLU, max pooling), SGD with momentum 0.9, cosine learning rate over the epochs,
seed 0. Prints one line per epoch, then a Markdown table row for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import time

import xpcnn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default="../shared/data/mnist")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.03)
    parser.add_argument("--optimizer", choices=("sgd", "adam", "adamw"), default="sgd")
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("--nesterov", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    backend = xpcnn.get_backend()
    train = xpcnn.data.load_dataset("mnist", "train", data_dir=args.data_dir, download=False)
    test = xpcnn.data.load_dataset("mnist", "test", data_dir=args.data_dir, download=False)
    model = xpcnn.models.lenet5(seed=args.seed)
    if args.optimizer == "sgd":
        optimizer = xpcnn.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, nesterov=args.nesterov,
                                    weight_decay=args.weight_decay)
    else:
        optimizer = xpcnn.optim.OPTIMIZERS[args.optimizer](model.parameters(), lr=args.lr,
                                                            weight_decay=args.weight_decay)
    schedule = xpcnn.optim.CosineLR(optimizer, args.epochs)
    loss_fn = xpcnn.nn.CrossEntropyLoss()
    start = time.perf_counter()
    history = xpcnn.fit(model, loss_fn, optimizer, train, epochs=args.epochs, batch_size=args.batch_size,
                        scheduler=schedule, seed=args.seed, progress=True)
    seconds = time.perf_counter() - start
    result = xpcnn.evaluate(model, test, loss_fn)
    images_per_s = args.epochs * len(train) / seconds
    print(f"test accuracy: {100 * result['accuracy']:.2f}% after {args.epochs} epochs, {seconds:.1f}s training, "
          f"{images_per_s:,.0f} img/s, backend {backend}")
    print("| date | machine | backend | recipe | test accuracy | training time | images/s |")
    print(f"| {datetime.date.today()} | {platform.machine()}, {platform.processor() or 'cpu'} | {backend} | "
          f"lenet5, {optimizer!r}, cosine, batch {args.batch_size}, {args.epochs} epochs, "
          f"seed {args.seed} | {100 * result['accuracy']:.2f}% | {seconds:.0f} s | {images_per_s:,.0f} |")
    del history


if __name__ == "__main__":
    main()
