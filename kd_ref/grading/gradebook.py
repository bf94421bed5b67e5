"""A class at once: grade every notebook of a folder, one process per core, one row per notebook.

The master's records (the expected outputs) are made once, in this process, for the salt of
this run, and handed to the workers; each worker grades one notebook at a time in a kernel of
its own (sandboxed with ``sandbox=True``, under a user id of its own). A notebook that cannot
be read, belongs to another exercise, loops, crashes its kernel or raises costs its own row only.
"""
from __future__ import annotations

import csv
import json
import multiprocessing
import os
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from ..report import text_table
from . import grade as grade_mod
from . import sandbox as sandbox_mod
from .assign import SOLUTIONS, assignment_name, master_for, question_tests


@dataclass
class Row:
    """One notebook of the class."""
    notebook: str
    scores: dict[str, float]                      # question -> score (absent: not graded)
    total: float
    problems: list[str] = field(default_factory=list)
    details: dict = field(default_factory=dict)   # the instructor's report of the notebook (GradeReport.instructor_json)


@dataclass
class Gradebook:
    folder: str
    exercise: str | None
    questions: dict[str, float]                   # question -> max points
    rows: list[Row]

    @property
    def max_score(self) -> float:
        return sum(self.questions.values())

    def summary(self) -> list[dict]:
        """Per question: mean score and how many notebooks got full marks."""
        out = []
        for name, max_points in self.questions.items():
            scores = [row.scores.get(name, 0.0) for row in self.rows]
            out.append({"name": name, "max_score": max_points, "mean": sum(scores) / len(scores) if scores else 0.0,
                        "full_marks": sum(1 for s in scores if s == max_points)})
        totals = [row.total for row in self.rows]
        out.append({"name": "total", "max_score": self.max_score, "mean": sum(totals) / len(totals) if totals else 0.0,
                    "full_marks": sum(1 for t in totals if t == self.max_score)})
        return out

    def table(self) -> str:
        names = list(self.questions)
        lines = [[Path(r.notebook).name, *(f"{r.scores[n]:.2f}" if n in r.scores else "-" for n in names),
                  f"{r.total:.2f}", "; ".join(r.problems)] for r in self.rows]
        summary = [[q["name"], f"{q['max_score']:.2f}", f"{q['mean']:.2f}", f"{q['full_marks']} of {len(self.rows)}"]
                   for q in self.summary()]
        return "\n".join([text_table(["notebook", *names, "total", "problems"], lines), "",
                          text_table(["question", "max", "mean", "full marks"], summary)])

    def feedback(self) -> str:
        """The instructor's report: per notebook and question, the failed public messages and the count of
        failed hidden checks (never what the hidden checks are)."""
        lines = []
        for row in self.rows:
            for q in row.details.get("questions", []):
                said = [*q.get("failed_public", []), *q.get("forbidden", [])]
                if q.get("hidden_failed"):
                    said.append(f"{q['hidden_failed']} hidden check(s) failed")
                for message in said:
                    lines.append(f"{Path(row.notebook).name} {q['name']}: {message}")
        return "\n".join(lines)

    def write_csv(self, path: str | Path) -> None:
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["notebook", *self.questions, "total", "max_score", "problems"])
            for row in self.rows:
                writer.writerow([row.notebook, *(row.scores.get(n, "") for n in self.questions), row.total,
                                 self.max_score, "; ".join(row.problems)])

    def to_json(self) -> dict:
        return {"folder": self.folder, "exercise": self.exercise, "max_score": self.max_score,
                "summary": self.summary(),
                "notebooks": [{"notebook": r.notebook, "score": r.total, "max_score": self.max_score,
                               "questions": [{"name": n, "score": r.scores.get(n, 0.0), "max_score": m}
                                             for n, m in self.questions.items()],
                               "problems": r.problems, "report": r.details} for r in self.rows]}

    def write_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=2) + "\n")


def notebooks_in(folder: Path) -> list[Path]:
    return sorted(p for p in Path(folder).rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)


_SLOT = None


def _init_worker(counter) -> None:
    global _SLOT
    with counter.get_lock():
        _SLOT = counter.value
        counter.value += 1


def _grade_one(path: str, solutions_dir: str, options: dict, references: dict) -> dict:
    """In a worker: one notebook's report as plain data, or its failure."""
    try:
        report = grade_mod.grade_notebook(path, solutions_dir, slot=_SLOT or 0, references=references, **options)
    except Exception as err:                                    # noqa: BLE001 - a failure costs this row only
        return {"error": f"not graded: {type(err).__name__}: {err}"}
    return {"report": report.instructor_json()}


def grade_folder(folder: str | Path, solutions_dir: str | Path | None = None, *, jobs: int | None = None,
                 sandbox: bool = False, limits: sandbox_mod.Limits | None = None, cell_timeout: float = 300,
                 question_timeout: float = 60, salt: int | None = None) -> Gradebook:
    """Grade every ``*.ipynb`` under ``folder`` (``jobs`` processes, default one per core)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder")
    if solutions_dir is None:
        solutions_dir = Path("solutions") if Path("solutions").is_dir() else SOLUTIONS
    solutions_dir = Path(solutions_dir)
    if sandbox:
        sandbox_mod.check_sandbox()
    salt = grade_mod.SESSION_SALT if salt is None else salt

    rows: dict[str, Row] = {}
    found: dict[str, str] = {}
    for path in notebooks_in(folder):
        try:
            nb = grade_mod.read_notebook(path)
            name = assignment_name(nb)
            master_for(nb, solutions_dir)
            found[str(path)] = name
        except ValueError as err:
            kind = "not a notebook" if "not a readable notebook" in str(err) else "wrong exercise"
            rows[str(path)] = Row(str(path), {}, 0.0, [f"{kind}: {err}"])
    exercise = Counter(found.values()).most_common(1)[0][0] if found else None
    for path, name in found.items():
        if name != exercise:
            rows[path] = Row(path, {}, 0.0, [f"wrong exercise: {name}, not {exercise}"])
    todo = [p for p, name in found.items() if name == exercise]

    questions: dict[str, float] = {}
    if exercise is not None:
        master = master_for(grade_mod.read_notebook(Path(todo[0])), solutions_dir)
        checks = []
        for test in question_tests(master):
            points, question_checks = grade_mod.checks_of(test)
            questions[test.stem] = points
            checks += question_checks
        references = grade_mod.reference_records(master, salt, checks)
        options = dict(cell_timeout=cell_timeout, question_timeout=question_timeout, sandbox=sandbox,
                       limits=limits, salt=salt)
        jobs = max(1, jobs or os.cpu_count() or 1)
        context = multiprocessing.get_context("spawn")
        counter = context.Value("i", 0)
        with ProcessPoolExecutor(max_workers=min(jobs, len(todo)), mp_context=context, initializer=_init_worker,
                                 initargs=(counter,)) as pool:
            futures = {p: pool.submit(_grade_one, p, str(solutions_dir), options, references) for p in todo}
            for path, future in futures.items():
                try:
                    result = future.result()
                except Exception as err:                       # noqa: BLE001 - a dead worker costs this row
                    result = {"error": f"not graded: the grading process failed ({type(err).__name__}: {err})"}
                if "error" in result:
                    rows[path] = Row(path, {}, 0.0, [result["error"]])
                    continue
                report = result["report"]
                problems = list(report["problems"])
                problems += [f"{q['name']}: forbidden shortcut" for q in report["questions"] if q["forbidden"]]
                rows[path] = Row(path, {q["name"]: q["score"] for q in report["questions"]}, report["score"],
                                 problems, report)
    return Gradebook(str(folder), exercise, questions, [rows[p] for p in sorted(rows)])
