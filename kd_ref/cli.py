"""The ``kd-ref`` command: ready-made distillation recipes.

Each subcommand lives in its own module under ``kd_ref.recipes`` and registers
itself here; this file parses the arguments, holds the option helpers the recipes
share (``positive_int``, the ``--json`` checks), and turns expected failures into a
one-line message and a non-zero exit code.
"""
from __future__ import annotations

import argparse
import sys

from .report import check_writable, write_json


class CommandError(Exception):
    """An expected failure (bad option value, unwritable path, missing data): no traceback."""


def positive_int(text: str) -> int:
    """argparse type of ``--seeds`` and the like: an integer >= 1, else a one-line error."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def check_json_option(path: str | None) -> None:
    """Refuse an unwritable ``--json PATH`` before any work starts (None: no JSON asked for)."""
    if path is None:
        return
    try:
        check_writable(path)
    except OSError as err:
        raise CommandError(f"cannot write --json {path!r}: {err.strerror or err}") from None


def save_json_option(path: str | None, **result) -> None:
    """Write a recipe's result to ``--json PATH`` (``kd_ref.report.write_json``) and say so."""
    if path is None:
        return
    try:
        write_json(path, **result)
    except OSError as err:
        raise CommandError(f"cannot write --json {path!r}: {err.strerror or err}") from None
    print(f"\nwrote {path}")


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
