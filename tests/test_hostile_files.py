"""Files and servers that lie: memory and disk stay bounded by what the data really holds, digests cover the
bytes parsed, and every case ends in one clear error (issue 19's data, download and image cases). The network
cases use an HTTP server on 127.0.0.1 that the test starts, and nothing else."""

from __future__ import annotations

import builtins
import gzip
import hashlib
import http.server
import io
import struct
import tarfile
import threading
import time
import tracemalloc

import numpy as np
import pytest

from xpcnn import data
from xpcnn.data import cifar, files, mnist
from xpcnn.data.images import read_images

MIB = 2**20


def _idx_header(*dims):
    return bytes([0, 0, 8, len(dims)]) + struct.pack(f">{len(dims)}I", *dims)


class _Peak:
    """The most memory Python allocated inside the block (tracemalloc)."""

    def __enter__(self):
        tracemalloc.start()
        return self

    def __exit__(self, *exc):
        self.bytes = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()


# ---------------------------------------------------------------- IDX (MNIST, Fashion-MNIST)
def test_a_small_gz_whose_header_claims_more_than_mnist_holds_is_refused_before_decompressing(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(_idx_header(2_000_000, 28, 28) + bytes(MIB)))
    with _Peak() as peak, pytest.raises(data.DataError, match=r"its header declares \(2000000, 28, 28\) "
                                                              r"\(1,568,000,016 bytes\); this file holds at most "
                                                              r"47,040,016"):
        data.read_idx(path, max_bytes=mnist.IDX_BYTES["train-images-idx3-ubyte"])
    assert peak.bytes < 8 * MIB


def test_a_gzip_bomb_is_decompressed_no_further_than_its_header_declares(tmp_path):
    path = tmp_path / "bomb.gz"
    path.write_bytes(gzip.compress(_idx_header(3) + bytes(256 * MIB), compresslevel=1))
    assert path.stat().st_size < 2 * MIB
    with _Peak() as peak, pytest.raises(data.DataError, match=r"holds more data than its header \(3,\) declares"):
        data.read_idx(path)
    assert peak.bytes < 8 * MIB, f"{peak.bytes / MIB:.0f} MiB for a {path.stat().st_size:,}-byte file"


def test_a_sparse_raw_mnist_file_claiming_6_gb_is_refused_from_its_size_on_disk(tmp_path):
    folder = tmp_path / "mnist"
    folder.mkdir()
    images = folder / "train-images-idx3-ubyte"
    with open(images, "wb") as handle:
        handle.write(_idx_header(7_653_061, 28, 28))
        handle.truncate(16 + 7_653_061 * 28 * 28)                     # 6 GB, sparse: nothing really written
    for name in ("train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (folder / name).write_bytes(b"")
    with _Peak() as peak, pytest.raises(data.DataError, match=r"is 5,999,999,840 bytes on disk; this file is at most "
                                                              r"47,040,016 bytes"):
        data.load_mnist("train", folder, download=False)
    assert peak.bytes < 8 * MIB


def test_a_raw_idx_file_whose_size_does_not_match_its_header_is_refused_before_it_is_read(tmp_path, monkeypatch):
    path = tmp_path / "labels"
    path.write_bytes(_idx_header(1_000_000_000) + bytes(10))
    with pytest.raises(data.DataError, match=r"holds less data than its header \(1000000000,\) declares"):
        data.read_idx(path)


def test_fashion_mnist_is_hashed_on_the_bytes_it_parses_in_one_read(tmp_path, monkeypatch):
    """The digest of the .gz file and the labels come from one open: a file swapped between a check and a
    second read can no longer get unchecked labels through."""
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    payload = gzip.compress(_idx_header(4) + bytes([1, 2, 3, 4]))
    path.write_bytes(payload)
    opened = []
    real_open = builtins.open
    monkeypatch.setattr(builtins, "open", lambda file, *a, **k: opened.append(str(file)) or real_open(file, *a, **k))
    labels = data.read_idx(path, file_sha256=hashlib.sha256(payload).hexdigest())
    assert labels.tolist() == [1, 2, 3, 4] and opened.count(str(path)) == 1
    with pytest.raises(data.DataError, match="SHA-256 is .* expected 00"):
        data.read_idx(path, file_sha256="00" * 32)


# ---------------------------------------------------------------- CIFAR-10
def _archive(path, members):
    with tarfile.open(path, "w:gz", compresslevel=1) as archive:
        for name, raw in members:
            info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
            info.size = len(raw)
            archive.addfile(info, io.BytesIO(raw))


def test_a_cifar_member_declaring_more_than_a_batch_is_refused_without_reading_it(tmp_path, monkeypatch):
    path = tmp_path / "c.tar.gz"
    _archive(path, [("test_batch.bin", bytes((cifar.BATCH + 1) * cifar.RECORD))])
    monkeypatch.setattr(tarfile.ExFileObject, "read", lambda *a: pytest.fail("the member was read"), raising=False)
    with pytest.raises(data.DataError, match=r"test_batch.bin declares 30,733,073 bytes, not a whole number of "
                                             r"3073-byte records up to 10,000"):
        data.read_cifar10_archive(path, "test", expected_sha256=None)


def test_the_cifar_archive_is_hashed_on_the_bytes_it_is_parsed_from(tmp_path, monkeypatch):
    path = tmp_path / "c.tar.gz"
    record = bytes([3]) + bytes(3072)
    _archive(path, [("test_batch.bin", record * 2)])
    digest = files.sha256_file(path)
    opened = []
    real_open = builtins.open
    monkeypatch.setattr(builtins, "open", lambda file, *a, **k: opened.append(str(file)) or real_open(file, *a, **k))
    images, labels = data.read_cifar10_archive(path, "test", expected_sha256=digest)
    assert labels.tolist() == [3, 3] and images.shape == (2, 3, 32, 32)
    assert opened.count(str(path)) == 1, "the digest and the members come from one open"
    with pytest.raises(data.DataError, match="SHA-256 is .* expected 00"):
        data.read_cifar10_archive(path, "test", expected_sha256="00" * 32)


# ---------------------------------------------------------------- downloads from a local server
class _Server:
    """An HTTP server on 127.0.0.1 whose every GET runs ``behaviour(handler)``."""

    def __init__(self, behaviour):
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):  # noqa: N802 -- the http.server name
                try:
                    behaviour(self)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        outer.thread.start()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


_GOOD = b"twelve bytes"
_SOURCE = files.Source("test", "Test data", {"f.bin": hashlib.sha256(_GOOD).hexdigest()}, (),
                       lambda path, name: files.check_file_sha256(path, _SOURCE.files[name]), limits={"f.bin": 100})


def _download(tmp_path, server):
    files.download(_SOURCE, tmp_path / "cache", mirrors=(server.url,), progress=False)


def _endless(handler):
    handler.send_response(200)
    handler.end_headers()
    while True:
        handler.wfile.write(bytes(65536))


def _announces_too_much(handler):
    handler.send_response(200)
    handler.send_header("Content-Length", str(10**9))
    handler.end_headers()
    handler.wfile.write(bytes(1000))


def _trickle(handler, pause=0.3):
    """One byte every ``pause`` seconds."""
    handler.send_response(200)
    handler.send_header("Content-Length", "12")
    handler.end_headers()
    for byte in _GOOD:
        handler.wfile.write(bytes([byte]))
        handler.wfile.flush()
        time.sleep(pause)


def _cut_mid_chunk(handler):
    handler.send_response(200)
    handler.send_header("Transfer-Encoding", "chunked")
    handler.end_headers()
    handler.wfile.write(b"100\r\n" + bytes(10))             # a 256-byte chunk, cut after 10
    handler.wfile.flush()
    handler.close_connection = True


def _good(handler):
    handler.send_response(200)
    handler.send_header("Content-Length", str(len(_GOOD)))
    handler.end_headers()
    handler.wfile.write(_GOOD)


@pytest.mark.parametrize("behaviour, words", [
    (_endless, "sent more than 100 bytes"),
    (_announces_too_much, "the server announces 1,000,000,000 bytes; f.bin is at most 100"),
    (_trickle, "too slow"),
    (_cut_mid_chunk, "IncompleteRead"),
], ids=["endless", "announces-too-much", "trickle", "cut-mid-chunk"])
def test_a_hostile_mirror_ends_in_one_error_and_leaves_nothing_behind(tmp_path, monkeypatch, behaviour, words):
    monkeypatch.setattr(files, "DOWNLOAD_GRACE_S", 0.5)
    with _Server(behaviour) as server, pytest.raises(OSError, match=f"could not download f.bin:\n  .*{words}"):
        _download(tmp_path, server)
    assert list((tmp_path / "cache").iterdir()) == [], "a partial file was left"


def test_a_good_mirror_after_a_hostile_one_delivers(tmp_path, monkeypatch):
    monkeypatch.setattr(files, "DOWNLOAD_GRACE_S", 0.5)
    with _Server(_endless) as bad, _Server(_good) as good:
        files.download(_SOURCE, tmp_path / "cache", mirrors=(bad.url, good.url), progress=False)
    assert (tmp_path / "cache" / "f.bin").read_bytes() == _GOOD


def _slow_trickle(handler):
    _trickle(handler, pause=0.25)


def _stall(handler):
    handler.send_response(200)
    handler.send_header("Content-Length", "12")
    handler.end_headers()
    handler.wfile.write(_GOOD[:2])
    handler.wfile.flush()
    time.sleep(3)


@pytest.mark.parametrize("behaviour, words", [
    (_slow_trickle, r"too slow: \d+ bytes/s over the last 1 s, under the 100 bytes/s a mirror must keep up"),
    (_stall, r"stalled: nothing arrived for 0.4 s"),
], ids=["trickle", "stall"])
def test_a_trickling_or_stalled_mirror_is_abandoned_by_its_rate_not_a_deadline(tmp_path, monkeypatch, behaviour,
                                                                                 words):
    """The deadline is far off; the rate over a window (curl's --speed-limit) ends it within the window."""
    monkeypatch.setattr(files, "DOWNLOAD_GRACE_S", 1000.0)
    monkeypatch.setattr(files, "DOWNLOAD_WINDOW_S", 0.8 if behaviour is _slow_trickle else 0.4)
    monkeypatch.setattr(files, "DOWNLOAD_LOW_SPEED", 100)
    start = time.monotonic()
    with _Server(behaviour) as server, pytest.raises(OSError, match=f"could not download f.bin:\n  .*{words}"):
        _download(tmp_path, server)
    assert time.monotonic() - start < 2.5
    assert list((tmp_path / "cache").iterdir()) == [], "a partial file was left"


def test_the_default_pace_abandons_a_trickle_within_a_minute():
    """One byte every 2 s is under the floor, and the window (also the socket's timeout) ends well within 60 s."""
    assert files.DOWNLOAD_WINDOW_S <= 30 and files.DOWNLOAD_LOW_SPEED > 0.5


def test_every_mirror_is_https_or_a_fallback_behind_one():
    for source in (data.MNIST, data.FASHION_MNIST, cifar.CIFAR10):
        assert source.mirrors[0].startswith("https://"), source.name
        assert source.limits and set(source.limits) == set(source.files), source.name


# ---------------------------------------------------------------- arrays of your own
@pytest.mark.parametrize("shape", [(2_000_000_000,), (196_000_000_000,)], ids=["7.5GB", "730GiB"])
def test_a_small_npy_claiming_gigabytes_is_refused_before_anything_is_allocated(tmp_path, shape):
    path = tmp_path / "claims.npy"
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": shape})
    path.write_bytes(header.getvalue() + bytes(100))
    with _Peak() as peak, pytest.raises(data.DataError, match=r"its header declares shape .* but 100 bytes follow"):
        read_images(str(path), (1, 28, 28))
    assert peak.bytes < 8 * MIB


def _sparse_npy(path, nbytes):
    """A .npy whose header and size agree on ``nbytes`` of float32, written as a sparse file (nothing on disk)."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (nbytes // 4,)})
    with open(path, "wb") as handle:
        handle.write(header.getvalue())
        handle.truncate(len(header.getvalue()) + nbytes // 4 * 4)


def test_a_sparse_npy_larger_than_the_available_memory_is_a_data_error(tmp_path, monkeypatch):
    """Header and size agree, so only memory can refuse it: before allocating when the available memory is
    known, and as a DataError (never a MemoryError through ``xpcnn predict``) when the allocation fails."""
    available = files._memory()
    if available is None:
        pytest.skip("this machine's available memory cannot be read")
    path = tmp_path / "sparse.npy"
    _sparse_npy(path, available + 2**30)
    with _Peak() as peak, pytest.raises(data.DataError, match=r"sparse.npy: holds .* GiB of float32, more than "
                                                              r"the memory this machine has available \("):
        read_images(str(path), (1, 28, 28))
    assert peak.bytes < 8 * MIB

    def no_memory(*args, **kwargs):
        raise MemoryError

    _sparse_npy(path, 4 * MIB)
    monkeypatch.setattr(np.lib.format, "read_array", no_memory)
    with pytest.raises(data.DataError, match="more than the memory this machine has available$"):
        read_images(str(path), (1, 28, 28))


def test_an_npz_member_claiming_more_than_it_holds_is_refused(tmp_path):
    import zipfile

    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False,
                                                  "shape": (1_000_000, 28, 28)})
    path = tmp_path / "own.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("x_train.npy", header.getvalue() + bytes(10))
        buffer = io.BytesIO()
        np.save(buffer, np.zeros(3, np.int64))
        archive.writestr("y_train.npy", buffer.getvalue())
    with pytest.raises(data.DataError, match=r"--data .*own.npz: x_train.npy: its header declares shape "
                                             r"\(1000000, 28, 28\) of uint8"):
        data.load_arrays(path)


def test_an_npy_with_no_images_is_an_error(tmp_path):
    np.save(tmp_path / "none.npy", np.zeros((0, 28, 28), np.uint8))
    with pytest.raises(data.DataError, match=r"holds no images \(shape \(0, 28, 28\)\)"):
        read_images(str(tmp_path / "none.npy"), (1, 28, 28))


# ---------------------------------------------------------------- pictures for xpcnn predict
def _upright():
    """A light block in the top-left corner of a dark 28 x 28 picture: which way up it is read shows."""
    pixels = np.zeros((28, 28), np.uint8)
    pixels[2:12, 2:12] = 255
    return pixels


def _pixels(path, **kwargs):
    """What read_images made of a picture, back on the 0..255 scale (normalized with mean 0, std 1)."""
    return np.round(read_images(str(path), (1, 28, 28), mean=0.0, std=1.0, **kwargs)[0, 0] * 255)


def test_a_phone_jpeg_is_turned_upright_by_its_exif_orientation(tmp_path):
    pytest.importorskip("PIL", reason="Pillow is not installed")
    from PIL import Image

    stored = Image.fromarray(_upright()).transpose(Image.Transpose.ROTATE_90)     # as the sensor saw it
    exif = Image.Exif()
    exif[0x0112] = 6                                                           # "rotate 90 clockwise to show"
    stored.save(tmp_path / "phone.jpg", exif=exif, quality=95)
    got = _pixels(tmp_path / "phone.jpg")
    assert got[2:12, 2:12].mean() > 200 and got[16:, 16:].mean() < 30 and got[16:, :12].mean() < 30


def test_a_16_bit_png_is_scaled_not_clipped_and_not_called_light(tmp_path, recwarn):
    pytest.importorskip("PIL", reason="Pillow is not installed")
    from PIL import Image

    deep = np.full((28, 28), 1000, np.uint16)
    deep[2:12, 2:12] = 60000
    Image.fromarray(deep).save(tmp_path / "deep.png")
    got = _pixels(tmp_path / "deep.png")
    assert got[0, 0] == round(1000 * 255 / 65535) and got[5, 5] == round(60000 * 255 / 65535)
    assert not [w for w in recwarn if "background looks light" in str(w.message)]


def test_a_digit_drawn_on_a_transparent_background_stays_visible(tmp_path):
    pytest.importorskip("PIL", reason="Pillow is not installed")
    from PIL import Image

    rgba = np.zeros((28, 28, 4), np.uint8)
    rgba[..., 3] = _upright()                      # black ink, visible only through its alpha
    Image.fromarray(rgba, "RGBA").save(tmp_path / "ink.png")
    with pytest.warns(UserWarning, match="background looks light"):
        on_paper = _pixels(tmp_path / "ink.png")                  # shown as a viewer does: dark ink on white
    assert on_paper[5, 5] == 0 and on_paper[20, 20] == 255
    np.testing.assert_array_equal(_pixels(tmp_path / "ink.png", invert=True), _upright())


def test_a_decompression_bomb_picture_is_a_data_error(tmp_path, monkeypatch):
    pytest.importorskip("PIL", reason="Pillow is not installed")
    from PIL import Image

    Image.fromarray(_upright()).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)          # 784 pixels: over twice the limit
    with pytest.raises(data.DataError, match="big.png: too many pixels to read safely"):
        read_images(str(tmp_path / "big.png"), (1, 28, 28))
