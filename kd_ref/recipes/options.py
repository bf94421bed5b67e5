"""What every ``kd-ref`` command shares: the error type, option parsers, the ``--json`` checks, the start.

This module sits below the recipes (they import it; it imports no recipe), so
``kd_ref.cli`` can import every recipe at the top without a cycle.
"""
from __future__ import annotations

import argparse

import torch

from ..profiles import get_profile, profile_device
from ..report import check_writable, write_json


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


def fraction(text: str) -> float:
    """argparse type of a number in [0, 1) (e.g. ``--teacher-label-smoothing``)."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1), got {text!r}")
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


def start_study(args: argparse.Namespace, one_thread_on_cpu: bool = False) -> tuple[str, torch.device]:
    """The shared start of a study command: resolve the profile, check ``--json``, pick the device.

    ``one_thread_on_cpu``: run PyTorch on one thread on a CPU (tiny models: as fast, and
    their numbers do not depend on the machine's core count).
    Returns ``(profile, device)``.
    """
    try:
        profile = get_profile(getattr(args, "profile", None))
    except ValueError as err:
        raise CommandError(err) from None
    check_json_option(getattr(args, "json", None))
    device = profile_device(profile)
    if device.type == "cpu" and one_thread_on_cpu:
        torch.set_num_threads(1)
    return profile, device


def add_study_options(parser: argparse.ArgumentParser, seeds: int, profile: bool = True) -> None:
    """``--profile`` (optional), ``--seeds N`` and ``--json PATH``: the options every study command has."""
    if profile:
        parser.add_argument("--profile", metavar="P", help="smoke, cpu, gpu or auto (default: $KD_PROFILE, else auto)")
    parser.add_argument("--seeds", type=positive_int, default=seeds, help=f"number of seeds, 0..N-1 (default {seeds})")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
