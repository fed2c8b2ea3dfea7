"""xpcnn.atomic: files written whole or not at all, and only the writer's own dead temporaries removed."""

from __future__ import annotations

import subprocess
import sys

import pytest

from xpcnn import atomic


def _dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    return int(done.stdout)


def test_only_a_dead_writers_own_temporaries_are_removed(tmp_path):
    """A user's files that merely look alike (.model.npz.notes.tmp) are never touched; a temporary of exactly the
    writer's form whose PID is dead is."""
    dead = _dead_pid()
    keep = [".model.npz.notes.tmp", f".model.npz.{dead}.tmp", f".model.npz.{dead}.abc.tmp",
            f".other.npz.{dead}.abcdefgh.tmp", ".model.npz.123.abcdefgh.tmp.bak"]
    stale = f".model.npz.{dead}.a1b_c2d3.tmp"
    for name in [*keep, stale]:
        (tmp_path / name).write_text("x")
    atomic.write_atomic(tmp_path / "model.npz", b"data")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*keep, "model.npz"])
    assert (tmp_path / "model.npz").read_bytes() == b"data"


def test_a_failed_block_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "file.gz"
    path.write_bytes(b"old")
    with pytest.raises(ValueError, match="checksum"):
        with atomic.replacing(path, suffix=".part.gz") as temp:
            temp.write_bytes(b"new but wrong")
            raise ValueError("checksum mismatch")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["file.gz"]
    with atomic.replacing(path, suffix=".part.gz") as temp:
        temp.write_bytes(b"new")
    assert path.read_bytes() == b"new" and [p.name for p in tmp_path.iterdir()] == ["file.gz"]


def test_a_download_left_by_a_killed_writer_is_removed_by_the_next_one(tmp_path):
    dead = _dead_pid()
    (tmp_path / f".train.gz.{dead}.x1y2z3w4.part.gz").write_bytes(b"half")
    with atomic.replacing(tmp_path / "train.gz", suffix=".part.gz") as temp:
        temp.write_bytes(b"whole")
    assert [p.name for p in tmp_path.iterdir()] == ["train.gz"]


def test_a_missing_folder_is_an_error_naming_it_and_is_never_made(tmp_path):
    """As ``open`` refuses: a typo in the folder must not write somewhere unexpected."""
    typo = tmp_path / "typo" / "dir"
    with pytest.raises(FileNotFoundError, match=f"cannot write {typo / 'f.bin'}: the folder {typo} does not exist; "
                                                f"create it first"):
        atomic.write_atomic(typo / "f.bin", b"data")
    with pytest.raises(FileNotFoundError, match=f"the folder {typo} does not exist"):
        with atomic.replacing(typo / "g.bin"):
            pass
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(NotADirectoryError, match="notes.txt is not a folder"):
        atomic.write_atomic(tmp_path / "notes.txt" / "f.bin", b"data")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
