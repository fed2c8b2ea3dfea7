"""Train a small CNN on your own arrays: here 600 RGB images (NHWC uint8) of horizontal or vertical stripes.

    python examples/own_data.py

Replace ``make_images`` with your loading code: any uint8 or float arrays shaped (N, H, W), (N, C, H, W) or
(N, H, W, C) with integer labels (N,).
"""

import numpy as np

import xpcnn
from xpcnn import nn
from xpcnn.callbacks import EarlyStopping


def make_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Noisy 16x16 RGB images, NHWC uint8: class 0 has horizontal stripes, class 1 vertical ones."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    stripes = (np.arange(16) // 2 % 2).astype(np.float64)
    images = np.empty((n, 16, 16, 3))
    for i, label in enumerate(labels):
        pattern = stripes[:, None] * np.ones(16) if label == 0 else np.ones(16)[:, None] * stripes
        images[i] = pattern[:, :, None] * rng.uniform(0.5, 1.0, 3) + rng.normal(0, 0.3, (16, 16, 3))
    return np.clip(images * 255, 0, 255).astype(np.uint8), labels


def main() -> dict:
    images, labels = make_images(600, seed=0)
    data = xpcnn.data.Dataset.from_numpy(images, labels)          # NHWC is recognized: (600, 3, 16, 16)
    train, val = data.split(0.2, seed=0)
    rng = np.random.default_rng(0)
    model = nn.Sequential(
        nn.Conv2D(3, 8, 3, padding=1, rng=rng), nn.ReLU(), nn.MaxPool2D(2),
        nn.Conv2D(8, 8, 3, padding=1, rng=rng), nn.ReLU(), nn.GlobalAvgPool2D(),
        nn.Linear(8, 2, rng=rng), input_shape=data.sample_shape, name="stripes")
    opt = xpcnn.optim.Adam(model.parameters(), lr=0.01)
    history = xpcnn.fit(model, nn.CrossEntropyLoss(), opt, train, epochs=15, batch_size=32, validation_data=val,
                        callbacks=[EarlyStopping(patience=3, restore_best_weights=True)], progress=False)
    test_images, test_labels = make_images(200, seed=1)
    test = xpcnn.data.Dataset.from_numpy(test_images, test_labels, mean=data.mean, std=data.std)
    result = xpcnn.evaluate(model, test)
    probs = model.predict(test.images[:3])
    print(f"trained {len(history.epoch)} epochs; test accuracy {100 * result['accuracy']:.1f}%")
    print("confusion (rows: true class):\n", result["confusion"])
    print("probabilities of the first three test images:\n", probs.round(3))
    return result


if __name__ == "__main__":
    main()
