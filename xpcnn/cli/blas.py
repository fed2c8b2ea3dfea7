"""``xpcnn train --blas-kernels``: which OpenBLAS kernels a run's matrix products use, chosen before it trains.

OpenBLAS picks its kernels once, when NumPy loads it: from ``OPENBLAS_CORETYPE`` if set, else by detecting the
CPU. Its pick is not always the fastest for a convolution's thin products (on a Zen 4, the AVX-512 "SkylakeX"
kernels ran them slower than AVX2's "Haswell"; on a Zen 5 it picks Haswell), and a running process cannot change
it. So the command line, which owns its process, starts itself again with the variable set; a Python program
sets ``OPENBLAS_CORETYPE`` before it starts (``xpcnn info --blas`` measures which).

``detected`` (the default) keeps OpenBLAS's pick, so a run's numbers never depend on a measurement; ``auto``
measures the core types this CPU runs (:func:`xpcnn.machine.time_kernels`) and takes another only when it is
clearly faster, and never on a busy machine; a name takes that core type. The choice is recorded in the
checkpoint, and ``--resume`` continues with it (other kernels round differently).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, NamedTuple

from .common import CommandError

__all__ = ["AUTO", "DETECTED", "MARGIN", "ON_NUMPY", "Choice", "apply", "measured", "resolve"]

DETECTED, AUTO = "detected", "auto"
ON_NUMPY = ("numpy", "array_api_strict")     # the backends whose matrix products NumPy's BLAS runs
MARGIN = 0.9     # auto takes other kernels only where they measure at most this fraction of the detected ones' time


class Choice(NamedTuple):
    """The kernels a run wants (``name`` None: whatever OpenBLAS loaded) and how they were chosen."""

    name: str | None = None
    how: str = ""
    restarted: bool = False      # made by the process before this one, which started this one to get them


def _measure(choices: tuple[str, ...], check_bits: bool = False) -> tuple[dict, str]:
    """The core types in ``choices`` timed (:func:`xpcnn.machine.time_kernels`), or ({}, why none were)."""
    from .. import machine, parallel

    if not choices:
        return {}, "NumPy's BLAS is not an OpenBLAS that picks its kernels when it loads"
    if len(choices) == 1:
        return {}, f"this CPU runs no other core type than {choices[0]}"
    busy = parallel.busy_elsewhere()
    if busy:
        return {}, (f"{busy} tasks of other processes running (a measurement on a busy machine would decide by "
                    f"chance; try again when it is quiet)")
    found = machine.time_kernels(choices, check_bits=check_bits)
    return found, "" if found else "no core type loaded as asked"


def measured(choices: tuple[str, ...]) -> str:
    """The measurement of ``choices`` as one line per core type, fastest first, or why there is none."""
    from .. import parallel

    found, why = _measure(choices, check_bits=True)
    if why:
        return f"not measured: {why}"
    lines = []
    for name, timing in sorted(found.items(), key=lambda item: item[1].seconds):
        line = f"{name}: {timing.seconds * 1e3:.1f} ms{' (loaded now)' if name == choices[0] else ''}"
        if timing.keeps_bits is False:
            line += (f"; other bits on 1 thread than on {parallel.usable_cores()}, so xpcnn leaves BLAS's threads as "
                     f"they are on a busy machine")
        lines.append(line)
    return "\n".join(lines)


def resolve(given: str | None, recorded: str | None, backend: Any) -> Choice:
    """The kernels a run wants: ``given`` (``--blas-kernels``), else ``recorded`` (the resumed checkpoint's), else
    OpenBLAS's own pick. A name is checked against what this CPU runs; ``auto`` is measured here."""
    from .. import machine, settings

    chosen = settings.take_restart()             # this process was started again for a choice already made
    if chosen is not None:
        made = json.loads(chosen)
        return Choice(made["name"], made["how"], restarted=True)
    wanted = given if given is not None else recorded
    if wanted is None or wanted == DETECTED:
        return Choice()
    option = "--blas-kernels" if given is not None else "the resumed checkpoint's --blas-kernels"
    if backend.name not in ON_NUMPY:
        raise CommandError(f"{option} {wanted} chooses NumPy's BLAS kernels; the {backend.name} backend does its "
                           f"products in its own library (drop it, or use --backend numpy)")
    choices = machine.kernel_choices()
    if not choices:
        raise CommandError(f"{option} {wanted}: NumPy's BLAS here ({machine.blas_kernels()}) is not an OpenBLAS "
                           f"that picks its kernels when it loads; drop the option")
    if wanted == AUTO:
        return _auto(choices)
    for name in choices:
        if name.lower() == wanted.lower():
            return Choice(name, "--blas-kernels" if given is not None else "as the resumed run")
    raise CommandError(f"{option} {wanted}: this CPU's OpenBLAS offers {', '.join(choices)} ({choices[0]} is its "
                       f"own pick), or 'auto' to measure them, or 'detected'")


def _auto(choices: tuple[str, ...]) -> Choice:
    loaded = choices[0]
    found, why = _measure(choices)
    if why:
        return Choice(loaded, f"--blas-kernels auto, not measured: {why}")
    times = {name: timing.seconds for name, timing in found.items()}
    if loaded not in times:
        return Choice(loaded, "--blas-kernels auto: OpenBLAS's own pick could not be measured; kept")
    best = min(times, key=times.get)
    shown = ", ".join(f"{name} {seconds * 1e3:.1f} ms" for name, seconds in sorted(times.items(), key=lambda i: i[1]))
    if best != loaded and times[best] <= MARGIN * times[loaded]:
        return Choice(best, f"--blas-kernels auto measured {shown}")
    return Choice(loaded, f"--blas-kernels auto measured {shown}; OpenBLAS's own pick kept")


def apply(choice: Choice, program: bool, distributed: bool) -> None:
    """Make this process run ``choice``'s kernels: nothing when OpenBLAS loaded them; else, for the ``xpcnn``
    program, start it again with ``OPENBLAS_CORETYPE`` set (this call then does not return)."""
    from .. import machine, settings

    loaded = machine.loaded_kernels()
    if choice.name is None or (loaded or "").lower() == choice.name.lower():
        return
    if distributed:
        raise CommandError(f"{choice.how}: the ranks of an MPI job cannot restart themselves with {choice.name} "
                           f"kernels; give them the variable instead (mpiexec -genv OPENBLAS_CORETYPE {choice.name} "
                           f"...) or drop the option", collective=True)
    if not program:
        raise CommandError(f"{choice.how}: OpenBLAS chose {loaded} kernels when NumPy loaded, and only the xpcnn "
                           f"command can start again with {choice.name}; from Python set "
                           f"OPENBLAS_CORETYPE={choice.name} before the interpreter starts")
    if choice.restarted:
        raise CommandError(f"{choice.how}: started again with OPENBLAS_CORETYPE={choice.name}, but OpenBLAS loaded "
                           f"{loaded} kernels (it was built without them); drop the option")
    sys.stdout.flush()
    sys.stderr.flush()
    env = settings.for_child(OPENBLAS_CORETYPE=choice.name,
                             **{settings.RESTART: json.dumps({"name": choice.name, "how": choice.how})})
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
