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
    with pytest.raises(data.DataError, match=r"short\.gz: holds 2 bytes of data but its header \(3,\) needs 3"):
        data.read_idx(_idx(tmp_path, "short", good[:-1]))
    with pytest.raises(data.DataError, match="SHA-256 .* expected 00"):
        data.read_idx(_idx(tmp_path, "sum", good), expected_sha256="00" * 32)
    cut = tmp_path / "cut.gz"
    cut.write_bytes(gzip.compress(good)[:-6])
    with pytest.raises(data.DataError, match="cut.gz: cannot be read or decompressed"):
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
        ds = data.Dataset.from_numpy(images[:100], labels[:100])
    assert len(ds) == 100 and ds.sample_shape == (1, 28, 28)
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
    with pytest.raises(ValueError, match="dataset must be 'bundled' or 'mnist'; got 'cifar'"):
        data.load_dataset("cifar")
    with pytest.raises(TypeError, match="uint8"):
        data.normalize(np.zeros((1, 28, 28)))


def test_copy_of_full_set_in_data_dir_is_found(tmp_path):
    src = FULL if (FULL / "t10k-labels-idx1-ubyte.gz").is_file() else None
    if src is None:
        pytest.skip(f"full MNIST not found at {FULL}")
    for name in data.FILES:
        shutil.copy(src / f"{name}.gz", tmp_path)
    ds = data.load_dataset("mnist", "test", data_dir=tmp_path)
    assert len(ds) == 10_000 and str(tmp_path) in ds.source
