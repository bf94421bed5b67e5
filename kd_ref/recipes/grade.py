"""``kd-ref grade NOTEBOOK``: the score table of a learner's exercise notebook, graded locally.

Runs the notebook in a fresh kernel, then each question's public and hidden checks
(from the master in ``solutions/``) under a time limit; no Docker, no network.
"""
from __future__ import annotations

import argparse
import json

from .options import CommandError, check_json_option


def positive_seconds(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0 seconds, got {text}")
    return value


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "grade", help="score table for an exercise notebook",
        description="Grade a learner's exercise notebook (exercises/exNN_*.ipynb) against the public and hidden "
                    "checks of its master in solutions/. Each question is scored on its own: an error or a time-out "
                    "costs that question only.")
    parser.add_argument("notebook", metavar="NOTEBOOK", help="the exercise notebook to grade")
    parser.add_argument("--json", metavar="PATH", help="also write the scores as JSON to PATH")
    parser.add_argument("--solutions", metavar="DIR", help="where the masters are (default: ./solutions, "
                                                          "else the repository's)")
    parser.add_argument("--cell-timeout", type=positive_seconds, default=300, metavar="S",
                        help="seconds allowed to each notebook cell (default 300)")
    parser.add_argument("--question-timeout", type=positive_seconds, default=60, metavar="S",
                        help="seconds allowed to each question's checks (default 60)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        from ..grading import grade_notebook
    except ImportError as err:
        raise CommandError(f"grading needs the course extra ({err.name} is missing): pip install -e '.[dev]'") from None
    check_json_option(args.json)
    try:
        report = grade_notebook(args.notebook, args.solutions, cell_timeout=args.cell_timeout,
                                question_timeout=args.question_timeout)
    except ValueError as err:
        raise CommandError(err) from None
    print(f"notebook: {args.notebook}")
    print(report.table())
    for question in report.questions:
        for message in question.messages:
            print(f"\n{question.name}: {message}")
    if args.json is not None:
        with open(args.json, "w") as f:
            json.dump(report.to_json(), f, indent=2)
            f.write("\n")
    return 0
