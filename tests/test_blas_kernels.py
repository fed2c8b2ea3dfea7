"""Which OpenBLAS kernels NumPy's products run: measured in child processes (xpcnn.machine), chosen by
`xpcnn train --blas-kernels` before training (xpcnn.cli.blas), recorded in checkpoints and kept by --resume."""

from __future__ import annotations

import types

import numpy as np
import pytest

import xpcnn
from xpcnn import cli, machine
from xpcnn.cli import blas
from xpcnn.cli.common import CommandError

from test_cli import xpcnn_cmd

NUMPY = types.SimpleNamespace(name="numpy")


def _cpuinfo(tmp_path, flags: str) -> str:
    path = tmp_path / "cpuinfo"
    path.write_text(f"processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: {flags}\n\n")
    return str(path)


def _other_kernels() -> tuple[str, str]:
    """The kernels OpenBLAS loaded here and another core type this CPU runs; skips where there is none."""
    choices = machine.kernel_choices()
    if len(choices) < 2:
        pytest.skip(f"no second OpenBLAS core type to choose here (NumPy's BLAS: {machine.blas_kernels()})")
    return choices[0], choices[1]


@pytest.mark.parametrize("loaded, flags, expected", [
    ("SkylakeX", "sse avx avx2 fma avx512f avx512bw avx512dq avx512vl avx512cd", ("SkylakeX", "Haswell")),
    ("Haswell", "avx avx2 fma avx512f avx512bw avx512dq avx512vl avx512cd", ("Haswell", "SkylakeX")),
    ("Zen", "avx avx2 fma", ("Zen", "Haswell")),
    ("Sandybridge", "sse avx", ("Sandybridge",)),
    (None, "avx2 fma", ()),
])
def test_the_choices_are_the_loaded_kernels_and_those_the_cpu_flags_allow(tmp_path, monkeypatch, loaded, flags,
                                                                          expected):
    monkeypatch.setattr(machine, "loaded_kernels", lambda: loaded)
    assert machine.kernel_choices(_cpuinfo(tmp_path, flags)) == expected


def test_kernels_are_timed_in_children_and_a_core_type_that_does_not_load_is_left_out():
    loaded = machine.loaded_kernels()
    if loaded is None:
        pytest.skip(f"NumPy's BLAS here is not an OpenBLAS that picks kernels at load ({machine.blas_kernels()})")
    found = machine.time_kernels((loaded, "NoSuchCoreType"), rounds=1, repeats=1, check_bits=True)
    assert set(found) == {loaded} and 0 < found[loaded].seconds < 60
    with xpcnn.parallel._busy:
        assert found[loaded].keeps_bits is xpcnn.parallel.blas_keeps_bits(), "the child's check is parallel's"
    assert machine.time_kernels((loaded,), rounds=1, repeats=1)[loaded].keeps_bits is None, "not asked: unchecked"


@pytest.mark.parametrize("times, busy, expected, words", [
    ({"SkylakeX": 1.0, "Haswell": 0.8}, 0, "Haswell", "auto measured Haswell 800.0 ms, SkylakeX 1000.0 ms"),
    ({"SkylakeX": 1.0, "Haswell": 0.95}, 0, "SkylakeX", "OpenBLAS's own pick kept"),
    ({"SkylakeX": 0.9, "Haswell": 1.2}, 0, "SkylakeX", "OpenBLAS's own pick kept"),
    ({"SkylakeX": 1.0, "Haswell": 0.5}, 2, "SkylakeX", "not measured: 2 tasks of other processes running"),
    ({"Haswell": 0.5}, 0, "SkylakeX", "could not be measured"),
])
def test_auto_takes_other_kernels_only_when_clearly_faster_and_never_on_a_busy_machine(monkeypatch, times, busy,
                                                                                     expected, words):
    monkeypatch.setattr(machine, "kernel_choices", lambda: ("SkylakeX", "Haswell"))
    monkeypatch.setattr(machine, "time_kernels",
                        lambda names, check_bits: {name: machine.KernelTiming(t, True) for name, t in times.items()})
    monkeypatch.setattr(xpcnn.parallel, "busy_elsewhere", lambda: busy)
    choice = blas.resolve("auto", None, NUMPY)
    assert choice.name == expected and words in choice.how


def test_a_name_is_checked_against_what_the_cpu_runs_and_a_resume_takes_the_recorded_one(monkeypatch):
    monkeypatch.setattr(machine, "kernel_choices", lambda: ("SkylakeX", "Haswell"))
    assert blas.resolve("haswell", None, NUMPY) == blas.Choice("Haswell", "--blas-kernels")
    assert blas.resolve(None, "Haswell", NUMPY) == blas.Choice("Haswell", "as the resumed run")
    assert blas.resolve("detected", "Haswell", NUMPY) == blas.Choice()
    assert blas.resolve(None, None, NUMPY) == blas.Choice()
    with pytest.raises(CommandError, match=r"^--blas-kernels Bogus: this CPU's OpenBLAS offers SkylakeX, Haswell "
                                           r"\(SkylakeX is its own pick\), or 'auto'"):
        blas.resolve("Bogus", None, NUMPY)
    with pytest.raises(CommandError, match="the resumed checkpoint's --blas-kernels Zen: this CPU's OpenBLAS"):
        blas.resolve(None, "Zen", NUMPY)
    with pytest.raises(CommandError, match="the torch backend does its products in its own library"):
        blas.resolve("Haswell", None, types.SimpleNamespace(name="torch"))
    assert blas.resolve("Haswell", None, types.SimpleNamespace(name="array_api_strict")).name == "Haswell"
    monkeypatch.setattr(machine, "kernel_choices", lambda: ())
    with pytest.raises(CommandError, match="is not an OpenBLAS that picks its kernels when it loads"):
        blas.resolve("Haswell", None, NUMPY)


def test_the_command_restarts_with_the_kernels_records_them_and_a_resume_continues_exactly(tmp_path):
    _, other = _other_kernels()
    common = ("train", "--quiet", "--batch-size", "256", "--lr", "0.05", "--schedule", "none")
    straight = xpcnn_cmd(*common, "--epochs", "2", "--blas-kernels", other.lower(), "--checkpoint",
                         str(tmp_path / "straight.npz"), tmp_path=tmp_path)
    first = xpcnn_cmd(*common, "--epochs", "1", "--blas-kernels", other, "--checkpoint", str(tmp_path / "half.npz"),
                      tmp_path=tmp_path)
    assert straight.returncode == 0 and first.returncode == 0, straight.stderr + first.stderr
    assert f"BLAS: OpenBLAS {other} kernels (--blas-kernels)" in straight.stdout
    assert straight.stdout.count("xpcnn train:") == 1, "the banner of the restarted process only"
    resumed = xpcnn_cmd(*common, "--epochs", "2", "--resume", str(tmp_path / "half.npz"), "--checkpoint",
                        str(tmp_path / "resumed.npz"), tmp_path=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert f"BLAS: OpenBLAS {other} kernels (as the resumed run)" in resumed.stdout
    a, b = xpcnn.load(tmp_path / "straight.npz"), xpcnn.load(tmp_path / "resumed.npz")
    assert a.extra["blas_kernels"] == b.extra["blas_kernels"] == other
    for p, q in zip(a.model.parameters(), b.model.parameters()):
        np.testing.assert_array_equal(p.data, q.data)


def test_other_kernels_are_refused_where_the_process_cannot_restart(tmp_path, monkeypatch, capsys):
    _, other = _other_kernels()
    monkeypatch.chdir(tmp_path)
    assert cli.main(["train", "--epochs", "1", "--quiet", "--blas-kernels", other]) == 2     # a call from Python
    err = capsys.readouterr().err
    assert "OpenBLAS chose" in err and f"only the xpcnn command can start again with {other}" in err
    assert f"set OPENBLAS_CORETYPE={other} before the interpreter starts" in err
    assert cli.main(["train", "--epochs", "1", "--blas-kernels", "auto", "--distributed"]) == 2
    assert "--blas-kernels auto cannot be combined with --distributed" in capsys.readouterr().err
    with pytest.raises(CommandError, match=f"mpiexec -genv OPENBLAS_CORETYPE {other}"):
        blas.apply(blas.Choice(other, "--blas-kernels"), program=True, distributed=True)
    blas.apply(blas.Choice(), program=False, distributed=False)                 # nothing to change: no error
    blas.apply(blas.Choice(machine.loaded_kernels(), "x"), program=False, distributed=False)


def test_info_blas_measures_the_core_types_and_says_how_to_use_the_fastest(tmp_path):
    loaded, _ = _other_kernels()
    done = xpcnn_cmd("info", "--blas", tmp_path=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "BLAS kernels, one thread, convolution-shaped float32 products:" in done.stdout
    assert f"  {loaded}: " in done.stdout and "(loaded now)" in done.stdout or "not measured: " in done.stdout
