"""Grade a learner's exercise notebook locally: run it, then run each question's checks.

A fresh kernel first imports what the notebook and the checks import (torch, kd_ref,
otter), under its own limit and binding no names, so that neither the learner's first cell
nor the first question is charged for it. Then the notebook runs top to bottom (errors
allowed, each cell under a time limit), and every question's otter test file (public and
hidden checks) runs in the same kernel under its own time limit. A question whose checks
raise, fail or time out scores 0 for the failed part; the other questions are still graded.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import DeadKernelError

from .assign import SOLUTIONS, master_for, question_tests

_MARK = "KD_REF_GRADE_RESULT "

# Run once, before the learner's cells: importing torch, kd_ref and otter takes about 6 s on an
# idle 2-core machine (more under load), time that is not the learner's. It has its own limit,
# never less than _WARM_UP_LIMIT seconds whatever the cell and question limits, and `__import__`
# leaves the learner's namespace as it was.
_WARM_UP = "__import__('torch'), __import__('kd_ref'), __import__('otter.test_files');"
_WARM_UP_LIMIT = 120

_CHECK = '''
import json as _kd_json
from otter.test_files import ExceptionTestFile as _KdTestFile
_kd_file = _KdTestFile.from_file({path!r})
_kd_file.run(globals())
print({mark!r} + _kd_json.dumps({{
    "name": _kd_file.name, "score": float(_kd_file.score), "max_score": float(_kd_file.possible),
    "failed": [r.message for r in _kd_file.test_case_results if not r.passed and not r.test_case.hidden],
    "hidden_failed": sum(1 for r in _kd_file.test_case_results if not r.passed and r.test_case.hidden),
}}))
'''


@dataclass
class QuestionResult:
    name: str
    score: float
    max_score: float
    messages: list[str] = field(default_factory=list)


@dataclass
class GradeReport:
    notebook: str
    questions: list[QuestionResult]

    @property
    def score(self) -> float:
        return sum(q.score for q in self.questions)

    @property
    def max_score(self) -> float:
        return sum(q.max_score for q in self.questions)

    def to_json(self) -> dict:
        """The structure of DESIGN.md: notebook, score, max_score, questions."""
        return {"notebook": self.notebook, "score": self.score, "max_score": self.max_score,
                "questions": [{"name": q.name, "score": q.score, "max_score": q.max_score} for q in self.questions]}

    def table(self) -> str:
        width = max([len("question"), *(len(q.name) for q in self.questions)])
        lines = [f"{'question':<{width}}  score    max", f"{'-' * width}  -----  -----"]
        for q in self.questions:
            lines.append(f"{q.name:<{width}}  {q.score:5.2f}  {q.max_score:5.2f}")
        lines.append(f"{'total':<{width}}  {self.score:5.2f}  {self.max_score:5.2f}")
        return "\n".join(lines)


def _max_points(test_file: Path) -> float:
    from otter.test_files import ExceptionTestFile
    return float(ExceptionTestFile.from_file(str(test_file)).possible)


def _result_of(cell) -> dict | None:
    for out in cell.get("outputs", []):
        if out.get("output_type") == "stream":
            for line in out.get("text", "").splitlines():
                if line.startswith(_MARK):
                    return json.loads(line[len(_MARK):])
    return None


def _error_of(cell) -> str:
    for out in cell.get("outputs", []):
        if out.get("output_type") == "error":
            return f"{out.get('ename')}: {out.get('evalue')}"
    return "no result"


def grade_notebook(notebook: str | Path, solutions_dir: str | Path | None = None, *,
                   cell_timeout: float = 300, question_timeout: float = 60) -> GradeReport:
    """Score ``notebook`` against the checks of its master in ``solutions_dir``.

    Args:
        notebook: a learner's exercise notebook (or a master: solutions grade full marks).
        solutions_dir: where the masters are (default: ``./solutions`` if present, else the repository's).
        cell_timeout: seconds allowed to each of the learner's cells (then it is interrupted).
        question_timeout: seconds allowed to each question's checks (then the question scores 0).
    """
    notebook = Path(notebook).resolve()
    if not notebook.exists():
        raise ValueError(f"notebook {notebook} does not exist")
    try:
        nb = nbformat.read(notebook, as_version=4)
    except Exception as err:                                           # not JSON, not a notebook
        raise ValueError(f"{notebook} is not a readable notebook: {err}") from err
    if solutions_dir is None:
        solutions_dir = Path("solutions") if Path("solutions").is_dir() else SOLUTIONS
    master = master_for(nb, Path(solutions_dir))

    tests = question_tests(master)
    results = {t.stem: QuestionResult(t.stem, 0.0, _max_points(t)) for t in tests}
    _run(nb, notebook, tests, results, cell_timeout, question_timeout)
    return GradeReport(str(notebook), list(results.values()))


def _run(nb, notebook: Path, tests: list[Path], results: dict, cell_timeout: float,
         question_timeout: float) -> None:
    """Warm up, execute the learner's cells, then each question's checks, in one kernel; fill ``results``.

    The client owns its kernel, so the kernel is shut down when grading ends.
    """
    # nbclient counts whole seconds: a fractional limit is rounded up.
    cell_limit, question_limit = math.ceil(cell_timeout), math.ceil(question_timeout)
    client = NotebookClient(nb, kernel_name="python3", timeout=cell_limit, allow_errors=True,
                            interrupt_on_timeout=True, resources={"metadata": {"path": str(notebook.parent)}})
    try:
        with client.setup_kernel():
            learner_cells = list(enumerate(nb.cells))
            warm_up = nbformat.v4.new_code_cell(_WARM_UP)
            nb.cells.append(warm_up)                      # nbclient stores outputs by index
            client.timeout = max(cell_limit, _WARM_UP_LIMIT)
            client.execute_cell(warm_up, len(nb.cells) - 1)
            client.timeout = cell_limit
            for index, cell in learner_cells:
                if cell.cell_type == "code":
                    client.execute_cell(cell, index)
            client.timeout = question_limit
            for test in tests:
                check = nbformat.v4.new_code_cell(_CHECK.format(path=str(test), mark=_MARK))
                nb.cells.append(check)
                client.execute_cell(check, len(nb.cells) - 1)
                outcome = _result_of(check)
                question = results[test.stem]
                if outcome is None:
                    error = _error_of(check)
                    if "KeyboardInterrupt" in error:
                        error = f"time limit of {question_limit} s exceeded"
                    question.messages.append(error)
                else:
                    question.score = outcome["score"]
                    question.messages.extend(outcome["failed"])
                    if outcome["hidden_failed"]:
                        question.messages.append(f"{outcome['hidden_failed']} hidden check(s) failed")
    except DeadKernelError as err:
        for question in results.values():
            if not question.messages and question.score == 0:
                question.messages.append(f"the kernel died: {err}")
