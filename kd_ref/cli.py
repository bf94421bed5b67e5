"""The ``kd-ref`` command (also ``python -m kd_ref``): ready-made distillation recipes.

Each subcommand lives in its own module under ``kd_ref.recipes`` and registers itself
here; this file builds the parser and turns expected failures (``CommandError``) into a
one-line message and exit code 2.
"""
from __future__ import annotations

import argparse
import sys

from . import __version__
from .recipes import register_all
from .recipes.options import CommandError

__all__ = ["CommandError", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kd-ref", description="Knowledge-distillation recipes from kd_ref.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    register_all(subparsers)
    return parser


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
    sys.exit(main())
