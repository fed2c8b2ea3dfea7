"""The ``xpcnn`` command line: ``train``, ``evaluate``, ``predict``, ``export`` and ``info``.

Each command resolves its flags (and a checkpoint's record) into settings checked before anything is trained or
written, then builds, runs and reports; :mod:`.config` holds ``train``'s frozen configuration, :mod:`.common`
what the commands share. A user's mistake is one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys

from .common import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE, CommandError

__all__ = ["EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_USAGE", "CommandError", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__
    from .inspection import add_info_parser, add_parsers
    from .train import add_parser as add_train_parser

    parser = argparse.ArgumentParser(
        prog="xpcnn",
        description="Train and inspect convolutional networks on any array API backend "
                    "(select it with XPCNN_BACKEND=numpy|cupy|torch|array_api_strict|jax or --backend).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_info_parser(commands)
    add_train_parser(commands)
    add_parsers(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; its exit status (2: a usage error, 1: a failure, 130: interrupted)."""
    args = build_parser().parse_args(argv)
    args.program = argv is None         # the command itself, which may start again (cli.blas), not a call from Python
    distributed = getattr(args, "distributed", False)
    try:
        status = args.run(args)
        sys.stdout.flush()              # a closed pipe shows here, not in the interpreter's final flush
        return status
    except CommandError as exc:
        if not (exc.collective and distributed and _rank() != 0):
            print(f"xpcnn {args.command}: error: {exc}", file=sys.stderr)
        if distributed and not exc.collective:     # met by this rank alone: the others must not wait for it
            from ..distributed import abort

            abort(exc.status)
        return exc.status
    except BrokenPipeError:             # `xpcnn evaluate ... | head`: the reader left; say nothing more
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())   # the interpreter's final flush would fail again
        return EXIT_FAILED


def _rank() -> int:
    from ..distributed import current

    ctx = current()
    return 0 if ctx is None else ctx.rank
