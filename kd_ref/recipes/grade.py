"""``kd-ref grade NOTEBOOK|DIR``: a learner's score table, or a class gradebook, graded locally.

One notebook: its score table, and per question the public checks that failed and how many
hidden checks failed. A folder: one row per notebook (``--csv``), a summary per question, and
the same feedback per notebook. ``--sandbox`` runs each notebook in bubblewrap (no network,
memory and CPU limits, a scratch directory only) and refuses where bubblewrap cannot run.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from .options import CommandError, check_json_option, positive_int


def positive_seconds(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0 seconds, got {text}")
    return value


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "grade", help="score table for an exercise notebook, or a gradebook for a folder of them",
        description="Grade a learner's exercise notebook (exercises/exNN_*.ipynb), or every notebook of a folder, "
                    "against the public and hidden checks of its master in solutions/. The expected values are "
                    "computed by the grader, never in the learner's kernel. Each question is scored on its own: an "
                    "error or a time-out costs that question only, a broken notebook its own row only.")
    parser.add_argument("notebook", metavar="NOTEBOOK|DIR", help="the exercise notebook, or a folder of them")
    parser.add_argument("--json", metavar="PATH", help="also write the scores as JSON to PATH")
    parser.add_argument("--csv", metavar="PATH", help="(a folder) write the gradebook as CSV to PATH")
    parser.add_argument("--jobs", type=positive_int, metavar="N", help="(a folder) notebooks graded at once "
                                                                        "(default: one per core)")
    parser.add_argument("--sandbox", action="store_true",
                        help="run the notebooks in bubblewrap: no network, memory and CPU-time limits, a scratch "
                             "directory the only writable place, no view of your home directory")
    parser.add_argument("--memory-mb", type=positive_int, default=4096, metavar="MB",
                        help="(--sandbox) memory limit per process (default 4096)")
    parser.add_argument("--cpu-seconds", type=positive_int, default=900, metavar="S",
                        help="(--sandbox) CPU-time limit of the kernel (default 900)")
    parser.add_argument("--solutions", metavar="DIR", help="where the masters are (default: ./solutions, "
                                                          "else the repository's)")
    parser.add_argument("--cell-timeout", type=positive_seconds, default=300, metavar="S",
                        help="seconds allowed to each notebook cell (default 300)")
    parser.add_argument("--question-timeout", type=positive_seconds, default=60, metavar="S",
                        help="seconds allowed to each of a question's checks (default 60)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        from ..grading import grade_folder, grade_notebook
        from ..grading.sandbox import Limits, SandboxUnavailable
    except ImportError as err:
        raise CommandError(f"grading needs the course extra ({err.name} is missing): pip install -e '.[dev]'") from None
    check_json_option(args.json)
    if args.csv is not None:
        check_json_option(args.csv)
    limits = Limits(memory_mb=args.memory_mb, cpu_seconds=args.cpu_seconds)
    options = dict(cell_timeout=args.cell_timeout, question_timeout=args.question_timeout, sandbox=args.sandbox,
                   limits=limits)
    try:
        if Path(args.notebook).is_dir():
            book = grade_folder(args.notebook, args.solutions, jobs=args.jobs, **options)
            print(f"folder: {args.notebook} ({len(book.rows)} notebooks, exercise {book.exercise})")
            print(book.table())
            feedback = book.feedback()
            if feedback:
                print("\nfailed checks (public messages; hidden checks counted only):\n" + feedback)
            if args.csv is not None:
                book.write_csv(args.csv)
                print(f"\nwrote {args.csv}")
            if args.json is not None:
                book.write_json(args.json)
            return 0
        if args.csv is not None or args.jobs is not None:
            raise CommandError("--csv and --jobs are for a folder of notebooks")
        report = grade_notebook(args.notebook, args.solutions, **options)
    except SandboxUnavailable as err:
        raise CommandError(err) from None
    except ValueError as err:
        raise CommandError(err) from None
    print(f"notebook: {args.notebook}")
    print(report.table())
    for question in report.questions:
        for message in question.messages:
            print(f"\n{question.name}: {message}")
    for problem in report.problems:
        print(f"\nproblem: {problem}")
    if args.json is not None:
        with open(args.json, "w") as f:
            json.dump(report.to_json(), f, indent=2)
            f.write("\n")
    return 0
