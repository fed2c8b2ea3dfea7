"""xpcnn.data: IDX checks, where files are looked for, downloads, the bundled subset, batches."""

from __future__ import annotations

import gzip
import pathlib
import shutil

import numpy as np
import pytest

import xpcnn
from xpcnn import data

FULL = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
needs_full = pytest.mark.skipif(not (FULL / "t10k-labels-idx1-ubyte.gz").is_file(),
                                reason=f"full MNIST not found at {FULL}")


def test_bundled_subset_is_real_mnist():
    images, labels = data.load_bundled("train")
    assert images.shape == (10_000, 28, 28) and images.dtype == np.uint8 and labels.shape == (10_000,)
    assert set(np.unique(labels)) == set(range(10))
    test_images, test_labels = data.load_bundled("test")
    assert test_images.shape == (2_000, 28, 28)
    assert abs(images.mean() / 255 - data.MEAN) < 0.01


@needs_full
def test_full_mnist_checksums_and_label_counts():
    images, labels = data.load_mnist("test", FULL, download=False)
    assert images.shape == (10_000, 28, 28)
    np.testing.assert_array_equal(np.bincount(labels), [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009])
    bundled_images, bundled_labels = data.load_bundled("test")
    np.testing.assert_array_equal(bundled_images, images[:2000])       # the subset is the head of the real set
    np.testing.assert_array_equal(bundled_labels, labels[:2000])


def _idx(tmp_path, name, payload: bytes, gz=True):
    path = tmp_path / (name + (".gz" if gz else ""))
    path.write_bytes(gzip.compress(payload) if gz else payload)
    return path


def test_read_idx_rejects_corrupt_files(tmp_path):
    good = bytes([0, 0, 8, 1]) + (3).to_bytes(4, "big") + bytes([1, 2, 3])
    np.testing.assert_array_equal(data.read_idx(_idx(tmp_path, "ok", good)), [1, 2, 3])
    np.testing.assert_array_equal(data.read_idx(_idx(tmp_path, "raw", good, gz=False)), [1, 2, 3])
    with pytest.raises(data.DataError, match=r"bad\.gz: bad IDX magic number 504b0304"):
        data.read_idx(_idx(tmp_path, "bad", b"PK\x03\x04" + good[4:]))
    with pytest.raises(data.DataError, match=r"short\.gz: holds less data than its header \(3,\) declares \(3 bytes"):
        data.read_idx(_idx(tmp_path, "short", good[:-1]))
    with pytest.raises(data.DataError, match="SHA-256 .* expected 00"):
        data.read_idx(_idx(tmp_path, "sum", good), expected_sha256="00" * 32)
    cut = tmp_path / "cut.gz"
    cut.write_bytes(gzip.compress(good)[:-6])
    with pytest.raises(data.DataError, match="cut.gz: cannot be decompressed"):
        data.read_idx(cut)


def test_find_mnist_search_order_and_failure_message(tmp_path, monkeypatch):
    a, b, cache = tmp_path / "a", tmp_path / "b", tmp_path / "cache"
    for folder in (a, b):
        folder.mkdir()
        for name in data.FILES:
            (folder / name).write_bytes(b"")
    monkeypatch.setenv("XPCNN_DATA_DIR", str(b))
    assert data.find_mnist(a, download=False, cache=cache) == a
    assert data.find_mnist(None, download=False, cache=cache) == b
    monkeypatch.delenv("XPCNN_DATA_DIR")
    with pytest.raises(data.DataNotFoundError) as info:
        data.find_mnist(tmp_path / "nowhere", mirrors=(f"file://{tmp_path}/no-mirror/",), cache=cache)
    message = str(info.value)
    for words in ("--data-dir", "nowhere: no such folder", "XPCNN_DATA_DIR: not set", "cache", "download into",
                  "no-mirror/train-images-idx3-ubyte.gz", "--dataset bundled"):
        assert words in message


@needs_full
def test_download_from_a_mirror_verifies_and_caches(tmp_path):
    cache = tmp_path / "cache"
    folder = data.find_mnist(None, mirrors=(f"file://{tmp_path}/empty/", f"file://{FULL}/"), cache=cache)
    assert folder == cache
    assert sorted(p.name for p in cache.iterdir()) == sorted(f"{n}.gz" for n in data.FILES)   # no leftovers


def test_download_refuses_a_file_with_the_wrong_checksum(tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for name in data.FILES:
        (mirror / f"{name}.gz").write_bytes(gzip.compress(bytes([0, 0, 8, 1, 0, 0, 0, 1, 7])))
    with pytest.raises(OSError, match="SHA-256"):
        data.download_mnist(tmp_path / "cache", mirrors=(f"file://{mirror}/",), progress=False)
    assert not any((tmp_path / "cache").iterdir())


def test_dataset_batches_on_every_backend(B):
    name, _, device = B.name.partition(":")
    images, labels = data.load_bundled("test")
    with xpcnn.use_backend(name, device or None):
        ds = data.Dataset.from_numpy(images[:100], labels[:100], mean=data.MEAN, std=data.STD)
    assert len(ds) == 100 and ds.sample_shape == (1, 28, 28) and (ds.mean, ds.std) == ((data.MEAN,), (data.STD,))
    host = data.normalize(images[:100])
    assert abs(host.mean()) < 0.2 and host.dtype == np.float32
    order = np.random.default_rng(0).permutation(100)
    seen = []
    for x, y in ds.batches(32, order):
        assert x.device == B.device and x.dtype == B.xp.float32
        seen.extend(B.numpy(y).tolist())
        np.testing.assert_array_equal(B.numpy(x), host[order[len(seen) - len(B.numpy(y)):len(seen)]])
    assert seen == labels[:100][order].tolist()
    assert [int(x.shape[0]) for x, _ in ds.batches(40)] == [40, 40, 20]


def test_unknown_names_are_refused():
    with pytest.raises(ValueError, match="split must be one of train, test; got 'val'"):
        data.load_bundled("val")
    with pytest.raises(ValueError, match="dataset must be one of bundled, mnist, fashion-mnist, cifar10; got 'cifar'"):
        data.load_dataset("cifar")
    with pytest.raises(TypeError, match="normalize: images must be uint8 pixels 0..255 or floats; got int64"):
        data.normalize(np.zeros((1, 28, 28), np.int64))


def test_copy_of_full_set_in_data_dir_is_found(tmp_path):
    src = FULL if (FULL / "t10k-labels-idx1-ubyte.gz").is_file() else None
    if src is None:
        pytest.skip(f"full MNIST not found at {FULL}")
    for name in data.FILES:
        shutil.copy(src / f"{name}.gz", tmp_path)
    ds = data.load_dataset("mnist", "test", data_dir=tmp_path)
    assert len(ds) == 10_000 and str(tmp_path) in ds.source


# --------------------------------------------------------------------------- Fashion-MNIST and CIFAR-10
def _idx_bytes(array: np.ndarray) -> bytes:
    return bytes([0, 0, 8, array.ndim]) + b"".join(n.to_bytes(4, "big") for n in array.shape) + array.tobytes()


def _fashion_files(folder, n=6):
    """The four Fashion-MNIST files in the official format (gzip'd IDX), with small random contents."""
    rng = np.random.default_rng(0)
    folder.mkdir(exist_ok=True)
    made = {}
    for prefix, count in (("train", n), ("t10k", n // 2)):
        images = rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, count).astype(np.uint8)
        for kind, array in (("images-idx3-ubyte", images), ("labels-idx1-ubyte", labels)):
            (folder / f"{prefix}-{kind}.gz").write_bytes(gzip.compress(_idx_bytes(array)))
        made[prefix] = (images, labels)
    return made


def _digests(folder, names):
    return {name: data.files.sha256_file(folder / name) for name in names}


def test_fashion_mnist_reader_and_checksum_refusal(tmp_path, monkeypatch):
    made = _fashion_files(tmp_path / "fashion")
    with pytest.raises(data.DataError, match=r"train-images-idx3-ubyte.gz: SHA-256 is [0-9a-f]{64}, expected "
                                             "3aede38d"):
        data.load_fashion_mnist("train", tmp_path / "fashion", download=False)
    for name, digest in _digests(tmp_path / "fashion", data.FASHION_MNIST_SHA256).items():
        monkeypatch.setitem(data.FASHION_MNIST_SHA256, name, digest)      # as if these were the published files
    images, labels = data.load_fashion_mnist("train", tmp_path / "fashion", download=False)
    np.testing.assert_array_equal(images, made["train"][0])
    np.testing.assert_array_equal(labels, made["train"][1])
    ds = data.load_dataset("fashion-mnist", "test", data_dir=tmp_path / "fashion")
    assert len(ds) == 3 and ds.sample_shape == (1, 28, 28) and "Fashion-MNIST from" in ds.source
    np.testing.assert_allclose(xpcnn.to_numpy(ds.images), data.normalize(made["t10k"][0], mean=0.2860, std=0.3530))


def _cifar_archive(path, per_batch=4, label_max=9):
    """A cifar-10-binary.tar.gz in the official layout with ``per_batch`` random records per member."""
    import io
    import tarfile

    rng = np.random.default_rng(1)
    made = {"train": [], "test": []}
    with tarfile.open(path, "w:gz") as archive:
        members = [(f"data_batch_{i}.bin", "train") for i in range(1, 6)] + [("test_batch.bin", "test")]
        for name, split in members:
            labels = rng.integers(0, label_max + 1, per_batch).astype(np.uint8)
            images = rng.integers(0, 256, (per_batch, 3, 32, 32), dtype=np.uint8)
            raw = np.concatenate([labels[:, None], images.reshape(per_batch, -1)], axis=1).tobytes()
            info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
            info.size = len(raw)
            archive.addfile(info, io.BytesIO(raw))
            made[split].append((images, labels))
    return {k: (np.concatenate([i for i, _ in v]), np.concatenate([l for _, l in v])) for k, v in made.items()}


def test_cifar10_reader_and_checksum_refusal(tmp_path, monkeypatch):
    folder = tmp_path / "cifar"
    folder.mkdir()
    made = _cifar_archive(folder / "cifar-10-binary.tar.gz")
    with pytest.raises(data.DataError, match="SHA-256 is .* expected c4a38c50"):
        data.load_cifar10("train", folder, download=False)
    images, labels = data.read_cifar10_archive(folder / "cifar-10-binary.tar.gz", "train", expected_sha256=None)
    assert images.shape == (20, 3, 32, 32) and labels.dtype == np.int64
    np.testing.assert_array_equal(images, made["train"][0])
    np.testing.assert_array_equal(labels, made["train"][1])
    monkeypatch.setitem(data.CIFAR10_SHA256, "cifar-10-binary.tar.gz",
                        data.files.sha256_file(folder / "cifar-10-binary.tar.gz"))
    ds = data.load_dataset("cifar10", "test", data_dir=folder)
    assert len(ds) == 4 and ds.sample_shape == (3, 32, 32)
    host = xpcnn.to_numpy(ds.images)
    expected = (made["test"][0][:, 1] / 255 - 0.4822) / 0.2435                 # the green channel
    np.testing.assert_allclose(host[:, 1], expected, rtol=1e-5, atol=1e-5)


def test_cifar10_reader_refuses_damaged_archives(tmp_path):
    _cifar_archive(tmp_path / "bad-labels.tar.gz", label_max=200)
    with pytest.raises(data.DataError, match="labels up to .*CIFAR-10 has 10 classes"):
        data.read_cifar10_archive(tmp_path / "bad-labels.tar.gz", expected_sha256=None)
    good = tmp_path / "good.tar.gz"
    _cifar_archive(good)
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(good.read_bytes()[:2000])
    with pytest.raises(data.DataError, match="cannot be read as a .tar.gz archive"):
        data.read_cifar10_archive(cut, expected_sha256=None)
    (tmp_path / "empty.tar.gz").write_bytes(gzip.compress(b""))
    with pytest.raises(data.DataError):
        data.read_cifar10_archive(tmp_path / "empty.tar.gz", expected_sha256=None)


def test_every_dataset_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.delenv("XPCNN_DATA_DIR", raising=False)
    for name, title in (("fashion-mnist", "Fashion-MNIST"), ("cifar10", "CIFAR-10")):
        with pytest.raises(data.DataNotFoundError, match=f"(?s){title} files not found. Looked in:.*no such folder"):
            data.load_dataset(name, data_dir=tmp_path / "nowhere", download=False, cache=tmp_path / "cache")


def test_random_crop_flip_on_every_backend(B):
    """Each output image is a window of the zero-padded input, mirrored or not; the same draws give the
    same batch on every backend."""
    x = np.random.default_rng(2).standard_normal((8, 3, 6, 5)).astype(np.float32)
    out = B.numpy(data.random_crop_flip(B.asarray(x), np.random.default_rng(3), padding=2))
    reference = data.random_crop_flip(x, np.random.default_rng(3), padding=2)
    np.testing.assert_array_equal(out, reference)
    padded = np.pad(x, ((0, 0), (0, 0), (2, 2), (2, 2)))
    flipped = 0
    for image, source in zip(out, padded):
        windows = [(source[:, i:i + 6, j:j + 5], False) for i in range(5) for j in range(5)]
        windows += [(w[:, :, ::-1], True) for w, _ in windows]
        match = [mirrored for w, mirrored in windows if np.array_equal(w, image)]
        assert match, "an output image is not a (mirrored) window of the padded input"
        flipped += match[0]
    assert 0 < flipped < 8


def test_read_images_is_a_library_function_with_data_errors(tmp_path):
    from xpcnn.data.images import read_images

    np.save(tmp_path / "two.npy", np.zeros((2, 28, 28), np.uint8))
    assert read_images(str(tmp_path / "two.npy"), (1, 28, 28)).shape == (2, 1, 28, 28)
    np.save(tmp_path / "wrong.npy", np.zeros((2, 5, 5), np.uint8))
    with pytest.raises(xpcnn.data.DataError, match="expected images of 1x28x28"):
        read_images(str(tmp_path / "wrong.npy"), (1, 28, 28))
    with pytest.raises(xpcnn.data.DataError, match="does not exist"):
        read_images(str(tmp_path / "missing.png"), (1, 28, 28))
    np.save(tmp_path / "light.npy", np.full((1, 28, 28), 255, np.uint8))
    with pytest.warns(UserWarning, match="background looks light"):
        read_images(str(tmp_path / "light.npy"), (1, 28, 28))


@pytest.mark.parametrize("layout", ["NHW", "NCHW", "NHWC"])
def test_own_arrays_in_any_layout_are_normalized_with_their_own_statistics(layout):
    """uint8 or floats, (N, H, W), (N, C, H, W) or (N, H, W, C): (N, C, H, W) floats with zero mean and unit std per
    channel, and the statistics kept on the dataset (on the [0, 1] scale for uint8)."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (50, 3, 8, 8), dtype=np.uint8)
    pixels[:, 1] //= 2                                            # channels with different statistics
    given = {"NHW": pixels[:, 0], "NCHW": pixels, "NHWC": np.moveaxis(pixels, 1, 3)}[layout]
    channels = 1 if layout == "NHW" else 3
    for images in (given, given.astype(np.float64) / 255):        # uint8, and floats already on [0, 1]
        ds = data.Dataset.from_numpy(images, np.arange(50) % 4)
        x = xpcnn.to_numpy(ds.images)
        assert x.shape == (50, channels, 8, 8) and x.dtype == np.float32
        np.testing.assert_allclose(x.mean(axis=(0, 2, 3)), 0, atol=1e-5)
        np.testing.assert_allclose(x.std(axis=(0, 2, 3)), 1, rtol=1e-4)
        expected = pixels[:, :channels].astype(np.float64) / 255
        np.testing.assert_allclose(ds.mean, expected.mean(axis=(0, 2, 3)), rtol=1e-6)
        np.testing.assert_allclose(ds.std, expected.std(axis=(0, 2, 3)), rtol=1e-6)
    held = data.Dataset.from_numpy(given, np.arange(50) % 4).split(0.2)[1]
    assert held.mean == ds.mean and held.std == ds.std


def test_given_statistics_and_an_explicit_layout_are_used():
    images = np.full((4, 2, 5, 3), 128, np.uint8)                 # NHWC: H=2, W=5, C=3
    ds = data.Dataset.from_numpy(images, np.zeros(4, np.int64), mean=0.5, std=0.25, layout="NHWC")
    assert ds.sample_shape == (3, 2, 5) and ds.mean == (0.5,) * 3 and ds.std == (0.25,) * 3
    np.testing.assert_allclose(xpcnn.to_numpy(ds.images), (128 / 255 - 0.5) / 0.25, atol=1e-6)
    with pytest.raises(ValueError, match="layout must be None, 'NCHW' or 'NHWC'; got 'HWC'"):
        data.Dataset.from_numpy(images, np.zeros(4, np.int64), layout="HWC")


# ---------------------------------------------------------------- what enters: checked with one helper (issue 32)
def _pixels(n=8, shape=(1, 6, 6), dtype=np.float32):
    return np.random.default_rng(0).random((n, *shape)).astype(dtype)


@pytest.mark.parametrize("shape", [(6, 6), (1, 6, 6)], ids=["3-D", "4-D"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_inf_pixels_are_counted_and_located_before_normalizing(shape, bad):
    images = _pixels(8, shape)
    images[5, ..., 2, 3] = bad
    images[6, ..., 0, 0] = bad
    counts = "2 NaN and 0 infinite" if np.isnan(bad) else "0 NaN and 2 infinite"
    where = r"\(5, 0, 2, 3\)" if len(shape) == 3 else r"\(5, 2, 3\)"
    with pytest.raises(data.DataError, match=rf"images holds {counts} pixel values \(the first at index {where}: "
                                             r"image 5\)"):
        data.Dataset.from_numpy(images, np.arange(8) % 2)


def test_nan_pixels_in_a_data_file_are_refused_in_either_split_and_any_layout(tmp_path):
    x = _pixels(8, (6, 6))
    bad = x.copy()
    bad[1, 2, 2] = np.nan
    for arrays, key in (({"x_train": bad}, "x_train"), ({"x_train": x, "x_test": bad, "y_test": np.arange(8) % 2},
                                                         "x_test")):
        np.savez(tmp_path / "d.npz", y_train=np.arange(8) % 2, **{"x_train": x, **arrays})
        with pytest.raises(data.DataError, match=rf"--data .*d.npz: {key} holds 1 NaN and 0 infinite"):
            data.load_arrays(tmp_path / "d.npz")


@pytest.mark.parametrize("std, words", [(0, "std must be positive"), (-1, "std must be positive"),
                                        ((0.5, 0.0, 0.5), "std must be positive"),
                                        (float("nan"), "std must be finite")])
def test_a_zero_negative_or_nan_std_is_refused(std, words):
    with pytest.raises(data.DataError, match=words):
        data.Dataset.from_numpy(_pixels(4, (3, 4, 4)), np.arange(4) % 2, mean=0.5, std=std)


def test_mean_or_std_of_the_wrong_length_is_refused():
    images = _pixels(4, (3, 4, 4))
    with pytest.raises(data.DataError, match=r"mean must be one number or one per channel \(3\); got \(0.5, 0.5\)"):
        data.Dataset.from_numpy(images, np.arange(4) % 2, mean=(0.5, 0.5), std=0.2)
    with pytest.raises(data.DataError, match=r"std must be one number or one per channel \(3\); got 'x'"):
        data.Dataset.from_numpy(images, np.arange(4) % 2, mean=0.5, std="x")
    ds = data.Dataset.from_numpy(images, np.arange(4) % 2, mean=[0.5], std=(0.1, 0.2, 0.3))
    assert ds.mean == (0.5,) * 3 and ds.std == (0.1, 0.2, 0.3)


def test_labels_that_are_not_whole_numbers_or_strings_are_refused():
    images = _pixels(3)
    with pytest.raises(data.DataError, match=r"labels: 3 of 3 labels are not whole numbers \(0.5, 1.7, 2.2"):
        data.Dataset.from_numpy(images, np.array([0.5, 1.7, 2.2]))
    with pytest.raises(data.DataError, match=r"labels must be integer class indices .* got <U3 values \('cat', "
                                             r"'dog', 'cat'.*np.unique\(labels, return_inverse=True\)"):
        data.Dataset.from_numpy(images, np.array(["cat", "dog", "cat"]))
    with pytest.raises(data.DataError, match="labels holds the negative class index -1"):
        data.Dataset.from_numpy(images, np.array([0, -1, 1]))
    ds = data.Dataset.from_numpy(images, np.array([0.0, 2.0, 1.0]))          # whole floats are class indices
    assert ds.labels.dtype == np.int64 and list(xpcnn.to_numpy(ds.labels)) == [0, 2, 1]


def test_a_label_of_a_billion_is_refused_without_allocating_for_it():
    import tracemalloc

    tracemalloc.start()
    with pytest.raises(data.DataError, match=r"the class index 1,000,000,000, which would mean 1,000,000,001 classes"):
        data.Dataset.from_numpy(_pixels(3), np.array([0, 1, 10**9]))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 2**20


def test_empty_images_are_refused_in_python_and_in_a_data_file(tmp_path):
    with pytest.raises(data.DataError, match=r"images holds no images \(shape \(0, 1, 6, 6\)\)"):
        data.Dataset.from_numpy(np.zeros((0, 1, 6, 6), np.float32), np.zeros(0, np.int64))
    np.savez(tmp_path / "d.npz", x_train=np.zeros((0, 6, 6), np.uint8), y_train=np.zeros(0, np.int64))
    with pytest.raises(data.DataError, match=r"--data .*d.npz: x_train holds no images"):
        data.load_arrays(tmp_path / "d.npz")


def test_a_data_file_of_a_single_class_is_refused(tmp_path):
    np.savez(tmp_path / "d.npz", x_train=_pixels(16, (6, 6)), y_train=np.zeros(16, np.int64))
    with pytest.raises(data.DataError, match="y_train: every label is 0; a classifier needs at least two classes"):
        data.load_arrays(tmp_path / "d.npz")


def test_labels_counted_from_one_are_named(tmp_path):
    np.savez(tmp_path / "d.npz", x_train=_pixels(16, (6, 6)), y_train=np.arange(16) % 3 + 1)
    with pytest.warns(UserWarning, match=r"y_train: class 0 never appears \(labels run 1..3\).* subtract 1"):
        ds = data.load_arrays(tmp_path / "d.npz")
    assert len(ds) == 16
    with pytest.warns(UserWarning, match=r"1 of 4 classes never appear \(2\)"):
        data.check_labels(np.array([0, 1, 3, 3]), training=True)


def test_a_test_split_is_checked_when_the_training_split_is_loaded(tmp_path):
    x, y = _pixels(8, (6, 6)), np.arange(8) % 2
    cases = [({"x_test": x}, "has x_test but no y_test; give both or neither"),
             ({"y_test": y}, "has y_test but no x_test"),
             ({"x_test": _pixels(8, (8, 8)), "y_test": y},
              r"x_test holds images of shape \(1, 8, 8\) \(C, H, W\); the training images are \(1, 6, 6\)"),
             ({"x_test": x, "y_test": y + 1}, "y_test holds the class index 2; a model with 2 outputs")]
    for extra, words in cases:
        np.savez(tmp_path / "d.npz", x_train=x, y_train=y, **extra)
        with pytest.raises(data.DataError, match=words):
            data.load_arrays(tmp_path / "d.npz", "train")


def test_one_image_cannot_be_split_for_validation():
    one = data.Dataset.from_numpy(_pixels(1), np.array([0]))
    with pytest.raises(data.DataError, match=r"cannot hold out 50% of 1 sample: a split needs at least 2"):
        one.split(0.5)
    model = xpcnn.nn.Sequential(xpcnn.nn.Flatten(), xpcnn.nn.Linear(36, 2), input_shape=(1, 6, 6))
    opt = xpcnn.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(data.DataError, match="cannot hold out 50% of 1 sample"):
        xpcnn.fit(model, xpcnn.nn.CrossEntropyLoss(), opt, one, epochs=1, validation_split=0.5, progress=False)
    assert [len(part) for part in data.Dataset.from_numpy(_pixels(10), np.arange(10) % 2).split(np.float32(0.2))] \
        == [8, 2]


def test_check_dataset_is_the_entry_check_for_fit_and_evaluate():
    ds = data.Dataset.from_numpy(_pixels(6), np.array([0, 1, 2, 0, 1, 5]))
    data.check_dataset(ds, "data", classes=6)
    with pytest.raises(data.DataError, match="data labels holds the class index 5; a model with 3 outputs takes "
                                             "class indices 0..2"):
        data.check_dataset(ds, "data", classes=3)
    with pytest.raises(data.DataError, match="train_data labels: every label is 0"):
        data.check_dataset(data.Dataset(np.zeros((4, 1, 2, 2)), np.zeros(4, np.int64)), "train_data",
                           classes=10, training=True)
    with pytest.raises(data.DataError, match="data holds no samples; there is nothing to evaluate"):
        data.check_dataset(data.Dataset(np.zeros((0, 1, 2, 2)), np.zeros(0, np.int64)), "data")
