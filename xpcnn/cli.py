"""The ``xpcnn`` command line."""

from __future__ import annotations

import argparse
import platform
import sys

from . import backend as _backend


def _info(args: argparse.Namespace) -> int:
    import array_api_compat

    import xpcnn

    print(f"xpcnn {xpcnn.__version__} (Python {platform.python_version()}, {platform.platform()})")
    print(f"array-api-compat {array_api_compat.__version__}; ops written against array API {_backend.ARRAY_API_VERSION}")
    try:
        selected = _backend.get_backend()
    except (ValueError, _backend.BackendUnavailableError) as exc:
        print(f"selected backend: ERROR: {exc}")
        status = 1
    else:
        api = getattr(selected.xp, "__array_api_version__", "unknown")
        print(f"selected backend: {selected.name} {selected.version}, device {selected.device}, array API {api}")
        status = 0
    print("backends here:")
    for name, state in _backend.available_backends().items():
        print(f"  {name:<17} {state}")
    return status


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xpcnn",
        description="Train and inspect convolutional networks on any array API backend "
        "(select it with XPCNN_BACKEND=numpy|cupy|torch|array_api_strict).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    info = commands.add_parser("info", help="show the selected backend, library versions and available backends")
    info.set_defaults(run=_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
