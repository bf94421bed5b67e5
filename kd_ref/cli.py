"""The ``kd-ref`` command: ready-made distillation recipes.

Each subcommand lives in its own module under ``kd_ref.recipes`` and registers
itself here; this file only parses arguments and turns expected failures into a
one-line message and a non-zero exit code.
"""
from __future__ import annotations

import argparse
import sys


class CommandError(Exception):
    """An expected failure (bad option value, unwritable path, missing data): no traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kd-ref", description="Knowledge-distillation recipes from kd_ref.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    from .recipes import register_all  # here, not at the top: recipes import CommandError from this module
    register_all(subparsers)
    return parser


def _version() -> str:
    from . import __version__
    return __version__


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except CommandError as err:
        print(f"kd-ref {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    # `python -m kd_ref.cli` runs this file as __main__, a second copy of the module; the
    # recipes raise kd_ref.cli.CommandError, so call main() from that one.
    from kd_ref.cli import main as package_main
    sys.exit(package_main())
