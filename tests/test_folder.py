"""Dataset.from_folder from the user's side: small class folders written with Pillow in tmp_path, read batch by
batch (issue 33)."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

import xpcnn
from xpcnn import data
from xpcnn.data import folder

Image = pytest.importorskip("PIL.Image", reason="Pillow is not installed")


def _write(root, counts, size=(8, 6), mode="L", suffix=".png", seed=0):
    """``counts[name]`` random images per class folder ``name``; the pixels written, by class, in file order."""
    rng = np.random.default_rng(seed)
    written = {}
    for name, count in counts.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        written[name] = []
        for i in range(count):
            shape = (size[0], size[1]) + ((3,) if mode == "RGB" else ())
            pixels = rng.integers(0, 256, shape, dtype=np.uint8)
            Image.fromarray(pixels, mode).save(root / name / f"{i:03d}{suffix}")
            written[name].append(pixels)
    return written


def test_classes_labels_pixels_and_statistics(tmp_path):
    """Sorted subfolders are the classes; a batch holds the files' own pixels, normalized with the folder's
    statistics, which equal those of the same images as one array."""
    written = _write(tmp_path, {"dogs": 3, "cats": 2, "birds": 4})
    ds = data.Dataset.from_folder(tmp_path)
    assert ds.classes == ("birds", "cats", "dogs") and len(ds) == 9 and ds.sample_shape == (1, 8, 6)
    assert list(xpcnn.to_numpy(ds.labels)) == [0, 0, 0, 0, 1, 1, 2, 2, 2]
    pixels = np.stack([p for name in ds.classes for p in written[name]])[:, None]
    reference = data.Dataset.from_numpy(pixels, xpcnn.to_numpy(ds.labels))
    np.testing.assert_allclose(ds.mean, reference.mean, rtol=1e-9)
    np.testing.assert_allclose(ds.std, reference.std, rtol=1e-9)
    order = np.random.default_rng(1).permutation(9)
    for (x, y), (rx, ry) in zip(ds.batches(4, order), reference.batches(4, order), strict=True):
        np.testing.assert_allclose(xpcnn.to_numpy(x), xpcnn.to_numpy(rx), atol=1e-6)
        assert list(xpcnn.to_numpy(y)) == list(xpcnn.to_numpy(ry))
    assert ds.normalization() == {"mean": list(ds.mean), "std": list(ds.std)}


def test_colour_is_chosen_from_the_files_or_the_mode_and_sizes_from_image_size(tmp_path):
    _write(tmp_path, {"a": 2}, mode="L", suffix=".bmp")
    _write(tmp_path, {"b": 2}, mode="RGB", suffix=".jpg", seed=1)
    assert data.Dataset.from_folder(tmp_path).sample_shape == (3, 8, 6)          # one colour file: RGB
    gray = data.Dataset.from_folder(tmp_path, image_size=(5, 7), mode="grayscale")
    assert gray.sample_shape == (1, 5, 7)
    assert next(gray.batches(4))[0].shape == (4, 1, 5, 7)
    assert data.Dataset.from_folder(tmp_path, image_size=4, mode="rgb", mean=0.5, std=0.25).std == (0.25,) * 3


def test_differing_sizes_without_image_size_are_refused_naming_two_files(tmp_path):
    _write(tmp_path, {"a": 1}, size=(8, 6))
    _write(tmp_path, {"b": 1}, size=(9, 9))
    with pytest.raises(data.DataError, match=r"a/000.png is 8x6, .*b/000.png is 9x9 .*pass image_size"):
        data.Dataset.from_folder(tmp_path)
    assert data.Dataset.from_folder(tmp_path, image_size=(8, 8)).sample_shape == (1, 8, 8)


def test_folders_that_cannot_make_a_classifier_are_refused(tmp_path):
    with pytest.raises(data.DataError, match="image folder .*missing: does not exist"):
        data.Dataset.from_folder(tmp_path / "missing")
    with pytest.raises(data.DataError, match="has no subfolders; put each class's images in a subfolder"):
        data.Dataset.from_folder(tmp_path)
    _write(tmp_path, {"only": 3})
    with pytest.raises(data.DataError, match="every label is 0; a classifier needs at least two classes"):
        data.Dataset.from_folder(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(data.DataError, match=r"the class folder empty/ holds no images \(.png, .jpg"):
        data.Dataset.from_folder(tmp_path)
    with pytest.raises(ValueError, match="mode must be None, 'grayscale' or 'rgb'; got 'RGB'"):
        data.Dataset.from_folder(tmp_path, mode="RGB")
    with pytest.raises(ValueError, match=r"image_size must be a positive int or \(height, width\); got \(0, 4\)"):
        data.Dataset.from_folder(tmp_path, image_size=(0, 4))


def test_bad_files_are_data_errors_naming_them(tmp_path):
    """A file with an image's name that is not one, and a picture too large to decode safely, as predict says."""
    _write(tmp_path, {"a": 2, "b": 2})
    (tmp_path / "b" / "notes.txt").write_text("not an image, and not listed")
    (tmp_path / "b" / ".hidden.png").write_bytes(b"hidden files are skipped")
    assert len(data.Dataset.from_folder(tmp_path)) == 4
    (tmp_path / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(data.DataError, match=r"b/broken.png: not an image Pillow can read"):
        data.Dataset.from_folder(tmp_path)
    (tmp_path / "b" / "broken.png").unlink()
    Image.new("L", (3000, 3000)).save(tmp_path / "b" / "huge.png")
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = 1000
    try:
        with pytest.raises(data.DataError, match=r"b/huge.png: too many pixels to read safely"):
            data.Dataset.from_folder(tmp_path, image_size=8)
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def test_split_and_parts_follow_dataset(tmp_path):
    """split holds out the samples Dataset.split would; a rank's part is its slice of each batch."""
    _write(tmp_path, {"a": 5, "b": 5})
    ds = data.Dataset.from_folder(tmp_path, mean=0.5, std=0.5)
    arrays = data.Dataset.from_numpy(np.zeros((10, 1, 8, 6), np.uint8), xpcnn.to_numpy(ds.labels), mean=0.5, std=0.5)
    rest, held = ds.split(0.3, seed=4)
    _, reference = arrays.split(0.3, seed=4)
    assert len(rest) == 7 and list(xpcnn.to_numpy(held.labels)) == list(xpcnn.to_numpy(reference.labels))
    assert held.classes == ds.classes and held.mean == ds.mean
    sizes = [[int(x.shape[0]) for x, _ in ds.batches(4, part=(rank, 3))] for rank in range(3)]
    assert sizes == [[2, 2, 1], [1, 1, 1], [1, 1, 0]]
    with pytest.raises(data.DataError, match="cannot hold out"):
        held.split(0.5)[0].split(0.5)          # 3 samples: 1 left, which cannot be split


def test_a_test_folder_takes_the_training_classes_and_normalization(tmp_path):
    """A test folder may hold some of the classes (even one); its labels index the training classes."""
    _write(tmp_path / "train", {"a": 2, "b": 2, "c": 2})
    _write(tmp_path / "test", {"c": 3})
    train = data.Dataset.from_folder(tmp_path / "train")
    test = data.Dataset.from_folder(tmp_path / "test", classes=train.classes, mean=train.mean, std=train.std)
    assert test.classes == ("a", "b", "c") and list(xpcnn.to_numpy(test.labels)) == [2, 2, 2]
    assert test.mean == train.mean
    _write(tmp_path / "test", {"d": 1})
    with pytest.raises(data.DataError, match="the folder.*d are not among the classes a, b, c"):
        data.Dataset.from_folder(tmp_path / "test", classes=train.classes)


def test_data_option_takes_a_folder_or_an_npz(tmp_path):
    """load_data: --data FOLDER is a FolderDataset with no test split; errors name --data; a file is load_arrays."""
    _write(tmp_path / "images", {"a": 2, "b": 2})
    assert isinstance(data.load_data(tmp_path / "images"), data.FolderDataset)
    assert data.load_data(tmp_path / "images", "test") is None
    assert data.load_data(tmp_path / "images", image_size=4, mode="rgb").sample_shape == (3, 4, 4)
    (tmp_path / "images" / "b" / "000.png").write_bytes(b"not a png")
    with pytest.raises(data.DataError, match=r"^--data .*000.png: not an image Pillow can read"):
        data.load_data(tmp_path / "images")
    np.savez(tmp_path / "d.npz", x_train=np.zeros((4, 6, 6), np.uint8), y_train=np.arange(4) % 2)
    assert len(data.load_data(tmp_path / "d.npz")) == 4


def test_without_pillow_the_error_says_how_to_install_it(tmp_path, monkeypatch):
    import sys

    _write(tmp_path, {"a": 1, "b": 1})
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(ImportError, match="needs Pillow: pip install pillow"):
        data.Dataset.from_folder(tmp_path)


def _peak(root, count, batch):
    """tracemalloc's peak while reading the folder (statistics pass included) and while iterating an epoch."""
    _write(root, {"a": count // 2, "b": count - count // 2}, size=(64, 64), mode="RGB")
    tracemalloc.start()
    ds = data.Dataset.from_folder(root)
    built = tracemalloc.get_traced_memory()[1]
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    for _ in ds.batches(batch, np.random.default_rng(0).permutation(count)):
        pass
    epoch = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    return built, epoch


def test_peak_memory_does_not_grow_with_the_number_of_images(tmp_path, monkeypatch):
    """Four times the images: the peak grows by less than a tenth of one float32 image per extra image (the
    file names), for the statistics pass and for an epoch, where holding the set would add a whole image each."""
    monkeypatch.setattr(folder, "STATISTICS_BATCH", 8)
    small = _peak(tmp_path / "small", 24, 8)
    large = _peak(tmp_path / "large", 96, 8)
    image = 3 * 64 * 64 * 4
    assert large[0] - small[0] < 0.1 * 72 * image, (small, large)        # the statistics pass
    assert large[1] - small[1] < 0.1 * 72 * image, (small, large)        # an epoch


def test_fit_and_evaluate_consume_a_folder(tmp_path):
    """Two classes a model tells apart (dark and light images): fit reads the folder batch by batch."""
    rng = np.random.default_rng(0)
    for name, low in (("dark", 0), ("light", 160)):
        (tmp_path / name).mkdir()
        for i in range(12):
            Image.fromarray(rng.integers(low, low + 96, (6, 6), dtype=np.uint8), "L").save(tmp_path / name / f"{i}.png")
    ds = data.Dataset.from_folder(tmp_path)
    model = xpcnn.nn.Sequential(xpcnn.nn.Flatten(), xpcnn.nn.Linear(36, 2), input_shape=(1, 6, 6))
    opt = xpcnn.optim.SGD(model.parameters(), lr=0.1)
    try:
        history = xpcnn.fit(model, xpcnn.nn.CrossEntropyLoss(), opt, ds, epochs=3, batch_size=8, progress=False,
                            validation_split=0.25)
    except TypeError as exc:
        if "must be an xpcnn.data.Dataset" not in str(exc):
            raise
        pytest.skip(f"fit does not take a FolderDataset yet (xpcnn/train.py's _as_dataset): {exc}")
    assert history.accuracy[-1] == 1.0
    assert xpcnn.evaluate(model, ds)["accuracy"] == 1.0


# --------------------------------------------------------------------------- the command line on image folders
def _shades(root, counts, size=(8, 8), mode="L", seed=0):
    """Class folders a small network tells apart in one epoch: dark, mid and light noise images."""
    rng = np.random.default_rng(seed)
    lows = {"dark": 0, "mid": 80, "light": 160}
    for name, count in counts.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            shape = size + ((3,) if mode == "RGB" else ())
            Image.fromarray(rng.integers(lows[name], lows[name] + 96, shape, dtype=np.uint8), mode).save(
                root / name / f"{i:02d}.png")
    return root


def _cli(capsys, *argv):
    from xpcnn import cli

    status = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def test_train_on_a_folder_then_evaluate_predict_and_export_read_images_as_it_did(tmp_path, capsys):
    """train --data FOLDER --val-split: one output per class folder; the checkpoint records the classes, image
    size, colour mode and normalization, which evaluate on a test folder of some of the classes, predict and
    export use."""
    train = _shades(tmp_path / "train", {"dark": 10, "mid": 10, "light": 10})
    test = _shades(tmp_path / "test", {"light": 4, "mid": 3}, seed=1)
    path = tmp_path / "m.npz"
    status, out, err = _cli(capsys, "train", "--data", train, "--val-split", "0.2", "--epochs", "1", "--quiet",
                            "--checkpoint", path)
    assert status == 0, err
    assert f"on {train} (30 train images / no test split; 3 classes: dark, light, mid)" in out, out
    assert f"{train} is one image folder (no test split), so no test accuracy; score a test folder with xpcnn " \
           f"evaluate --checkpoint {path} --data TESTFOLDER" in out
    saved = xpcnn.load(path)
    folder_data = data.Dataset.from_folder(train)
    assert saved.model.input_shape == (1, 8, 8) and saved.model.check_input((1, 1, 8, 8)) == (3,)
    assert saved.extra["classes"] == ["dark", "light", "mid"] and saved.extra["image_size"] == [8, 8]
    assert saved.extra["color_mode"] == "grayscale" and saved.extra["normalization"] == folder_data.normalization()

    status, out, err = _cli(capsys, "evaluate", "--checkpoint", path, "--data", test)
    assert status == 0, err
    reference = data.Dataset.from_folder(test, classes=folder_data.classes, mean=folder_data.mean,
                                         std=folder_data.std)
    assert list(xpcnn.to_numpy(reference.labels)) == [1] * 4 + [2] * 3
    expected = xpcnn.evaluate(saved.model, reference)
    assert f"accuracy: {100 * expected['accuracy']:.2f}% ({round(expected['accuracy'] * 7)}/7)" in out, out
    assert f"on {test}, backend" in out and "classes: 0 dark, 1 light, 2 mid" in out

    for argv, words in ((["--split", "train"], "--split is for a data file; --data"),
                        ([], f"was trained on the image folder {train}, which has no test split; give --data "
                             f"TESTFOLDER")):
        status, _, err = _cli(capsys, "evaluate", "--checkpoint", path, *(["--data", test] if argv else []), *argv)
        assert status == 2 and words in err, err
    status, out, err = _cli(capsys, "evaluate", "--checkpoint", path, "--split", "train")
    assert status == 0 and "/30), loss" in out and "(as recorded by the checkpoint)" in out, out + err

    picture = test / "light" / "00.png"                              # the first of reference's batches
    status, out, err = _cli(capsys, "predict", "--checkpoint", path, picture)
    probabilities = xpcnn.to_numpy(xpcnn.functional.softmax(saved.model.eval()(next(reference.batches(1))[0])))
    assert status == 0 and out.startswith(f"{picture}: {saved.extra['classes'][int(np.argmax(probabilities))]} "
                                          f"(probability {np.max(probabilities):.3f}; next "), out
    assert "background looks light" not in err                       # that warning is about MNIST digits

    pytest.importorskip("onnx", reason="onnx is not installed (pip install -e '.[onnx]')")
    status, out, err = _cli(capsys, "export", "--checkpoint", path, tmp_path / "m.onnx")
    mean, std = folder_data.mean[0], folder_data.std[0]
    assert status == 0, err
    assert f"normalization (mean {mean:.4g}, std {std:.4g}) stored as metadata; add --raw-input to put it in the " \
           f"graph" in out and "class names (dark, light, mid) stored as metadata" in out, out


def test_folder_options_are_recorded_and_a_resume_reads_the_folder_alike(tmp_path, capsys):
    """--image-size and --color-mode read a folder of mixed sizes; a resumed run takes them (and the classes) from
    the checkpoint, and refuses others or a new class folder; they are refused for a data file; no output may
    be written into the folder."""
    train = _shades(tmp_path / "train", {"dark": 6, "light": 6}, size=(9, 7), mode="RGB")
    _shades(train, {"mid": 6}, size=(8, 8), mode="RGB", seed=2)
    path = tmp_path / "m.npz"
    status, _, err = _cli(capsys, "train", "--data", train, "--epochs", "1", "--quiet", "--checkpoint", path)
    assert status == 2 and "images of different sizes" in err and "pass image_size" in err, err
    status, out, err = _cli(capsys, "train", "--data", train, "--epochs", "1", "--quiet", "--checkpoint", path,
                            "--image-size", "6x5", "--color-mode", "grayscale")
    assert status == 0, err
    saved = xpcnn.load(path)
    assert saved.model.input_shape == (1, 6, 5) and saved.extra["image_size"] == [6, 5]
    assert saved.extra["color_mode"] == "grayscale"
    status, _, err = _cli(capsys, "train", "--epochs", "2", "--quiet", "--resume", path, "--image-size", "7")
    assert status == 2 and f"read its images with --image-size 6x5; drop --image-size" in err, err
    status, out, err = _cli(capsys, "train", "--epochs", "2", "--quiet", "--resume", path, "--checkpoint", path)
    assert status == 0 and f"on {train} (18 train images" in out, err
    assert xpcnn.load(path).epoch == 2
    status, _, err = _cli(capsys, "train", "--data", train, "--epochs", "1", "--image-size", "32",
                          "--plot", train / "dark" / "curves.png")
    assert status == 2 and f"is inside the --data folder {train}, whose files are read as images" in err, err
    (train / "extra").mkdir()
    Image.new("L", (8, 8)).save(train / "extra" / "0.png")
    status, _, err = _cli(capsys, "train", "--epochs", "3", "--quiet", "--resume", path)
    assert status == 2 and "extra are not among the classes dark, light, mid" in err, err
    np.savez(tmp_path / "d.npz", x_train=np.zeros((4, 6, 6), np.uint8), y_train=np.arange(4) % 2)
    status, _, err = _cli(capsys, "train", "--data", tmp_path / "d.npz", "--image-size", "4")
    assert status == 2 and "--image-size and --color-mode are for --data FOLDER (an image folder)" in err, err
