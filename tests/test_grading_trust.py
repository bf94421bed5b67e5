"""Grading an instructor can trust: tampering earns nothing, forbidden shortcuts score 0, a class at once.

Kernel launches are the cost here, so one gradebook run (two processes) grades a folder of
solved, untouched, hostile, corrupt, looping and wrong-exercise notebooks, and every test of
this module reads its results: the scores, the CSV and JSON files, and what was printed.
"""
import csv
import json
import re
import textwrap

import nbformat
import pytest

from kd_ref.grading import grade_notebook
from kd_ref.grading.assign import EXERCISES, SOLUTIONS
from test_grading import with_answer

pytestmark = pytest.mark.slow   # kernels or subprocesses: `make test`, not `make unit`

EX01 = SOLUTIONS / "ex01_softmax_temperature.ipynb"
EX02 = SOLUTIONS / "ex02_kd_loss.ipynb"

# Each hostile cell runs first in the untouched ex02 notebook; each would raise the score (or did, for
# the first, against the grader that ran otter's checks in the learner's kernel).
TAMPERING = {
    # The attack: otter's test results all marked as passed.
    "otter_patched": """
        import otter.test_files
        _run = otter.test_files.ExceptionTestFile.run
        def _all_pass(self, env):
            _run(self, env)
            for result in self.test_case_results:
                result.passed = True
        otter.test_files.ExceptionTestFile.run = _all_pass
        """,
    # The comparison functions and builtins the checks use, made to agree with anything.
    "comparisons_and_builtins": """
        import builtins, math, torch
        torch.allclose = lambda *args, **kwargs: True
        torch.equal = lambda *args, **kwargs: True
        torch.isfinite = lambda x: torch.ones((), dtype=torch.bool)
        math.isclose = lambda *args, **kwargs: True
        builtins.abs = lambda x: 0.0
        builtins.isinstance = lambda *args: True
        builtins.AssertionError = type("Nothing", (BaseException,), {})
        """,
    # The oracle made to return whatever the learner's answers return.
    "oracle_patched": """
        import kd_ref, kd_ref.losses.logits
        for _name in ("kd_loss", "distillation_loss", "soft_cross_entropy", "softmax_t", "teacher_forward"):
            setattr(kd_ref, _name, lambda *args, **kwargs: None)
        kd_ref.losses.logits.kd_loss = kd_ref.kd_loss
        """,
    # A forged result line on the output channel, and print / json replaced so every line says "full marks".
    "forged_output": """
        import builtins, json, sys
        _line = 'KD_REF_GRADE_RESULT {"name": "q1", "score": 4.0, "max_score": 4.0, "failed": [], "hidden_failed": 0}'
        print(_line)
        json.dumps = lambda *args, **kwargs: '{"score": 4.0, "max_score": 4.0, "failed": [], "hidden_failed": 0}'
        _write = sys.stdout.write
        sys.stdout.write = lambda text: _write(_line + "\\n")
        builtins.print = lambda *args, **kwargs: _write(_line + "\\n")
        """,
    # The record itself forged: exec (which the grader's check cell uses) and torch.save replaced.
    "record_forged": """
        import builtins, torch
        _save = torch.save
        def _forged_run_check(user_ns, source, name, params, salt, forbidden, ops, out_path):
            _save({"events": [], "post": [], "outcome": ["ok", ""], "forbidden": []}, out_path)
        _exec = builtins.exec
        def _exec_forging(code, namespace=None, *rest):
            _exec(code, namespace, *rest)
            if isinstance(namespace, dict) and "run_check" in namespace:
                namespace["run_check"] = _forged_run_check
        builtins.exec = _exec_forging
        torch.save = lambda obj, path, *args, **kwargs: _save({"events": [], "post": [], "outcome": ["ok", ""],
                                                                "forbidden": []}, path)
        """,
}

LOOPING_CELL = "while True:\n    pass"


def prepend(notebook, code, path):
    """A copy of ``notebook`` with ``code`` as a new cell after its first code cell."""
    nb = nbformat.read(notebook, as_version=4)
    first = next(i for i, c in enumerate(nb.cells) if c.cell_type == "code")
    nb.cells.insert(first + 1, nbformat.v4.new_code_cell(textwrap.dedent(code).strip()))
    nbformat.write(nb, path)
    return path


@pytest.fixture(scope="module")
def gradebook_run(tmp_path_factory):
    """One `kd-ref grade DIR --jobs 2 --csv --json` run over a mixed class; (folder, printed, csv rows, json)."""
    import contextlib
    import io

    from kd_ref.cli import main

    folder = tmp_path_factory.mktemp("class")
    nbformat.write(nbformat.read(EX02, as_version=4), folder / "solved.ipynb")
    nbformat.write(nbformat.read(EXERCISES / EX02.name, as_version=4), folder / "untouched.ipynb")
    for kind, code in TAMPERING.items():
        prepend(EXERCISES / EX02.name, code, folder / f"hostile_{kind}.ipynb")
    prepend(EX02, LOOPING_CELL, folder / "looping.ipynb")
    (folder / "corrupt.ipynb").write_text('{"cells": [ this is not json')
    nbformat.write(nbformat.read(EXERCISES / "ex01_softmax_temperature.ipynb", as_version=4), folder / "other.ipynb")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["grade", str(folder), "--jobs", "2", "--cell-timeout", "20", "--csv", str(folder / "book.csv"),
                     "--json", str(folder / "book.json")])
    assert code == 0
    with open(folder / "book.csv") as f:
        rows = {r["notebook"].rsplit("/", 1)[-1]: r for r in csv.DictReader(f)}
    return folder, out.getvalue(), rows, json.loads((folder / "book.json").read_text())


def test_tampering_earns_nothing(gradebook_run):
    _, printed, rows, _ = gradebook_run
    for kind in TAMPERING:
        row = rows[f"hostile_{kind}.ipynb"]
        assert float(row["total"]) == 0, f"{kind} scored {row['total']}\n{printed}"
    assert float(rows["untouched.ipynb"]["total"]) == 0


def test_the_gradebook_has_a_row_per_notebook_and_says_what_went_wrong(gradebook_run):
    _, printed, rows, book = gradebook_run
    assert list(next(iter(rows.values()))) == ["notebook", "q1", "q2", "q3", "q4", "q5", "total", "max_score", "problems"]
    assert len(rows) == 10 and book["exercise"] == "ex02_kd_loss" and book["max_score"] == 18
    assert float(rows["solved.ipynb"]["total"]) == 18 and rows["solved.ipynb"]["problems"] == ""
    # A looping cell is interrupted; the notebook's answers are still graded.
    assert float(rows["looping.ipynb"]["total"]) == 18
    assert "time limit of 20 s exceeded" in rows["looping.ipynb"]["problems"]
    assert rows["corrupt.ipynb"]["problems"].startswith("not a notebook")
    assert rows["other.ipynb"]["problems"].startswith("wrong exercise: ex01_softmax_temperature")
    assert float(rows["corrupt.ipynb"]["total"]) == float(rows["other.ipynb"]["total"]) == 0
    # The summary per question: mean and full marks (solved and looping have full marks).
    summary = {q["name"]: q for q in book["summary"]}
    assert summary["q1"]["full_marks"] == 2 and summary["total"]["full_marks"] == 2
    assert summary["q1"]["mean"] == pytest.approx(8 / 10)
    assert re.search(r"^q1\s+4\.00\s+0\.80\s+2 of 10$", printed, re.M), printed


def test_the_instructor_sees_public_messages_and_hidden_counts_never_hidden_content(gradebook_run):
    folder, printed, _, book = gradebook_run
    assert "untouched.ipynb q1: return a scalar tensor" in printed
    assert "untouched.ipynb q1: 3 hidden check(s) failed" in printed
    untouched = next(n for n in book["notebooks"] if n["notebook"].endswith("untouched.ipynb"))
    q1 = untouched["report"]["questions"][0]
    assert q1["failed_public"] == ["return a scalar tensor"] and q1["hidden_failed"] == 3
    everything = printed + (folder / "book.json").read_text() + (folder / "book.csv").read_text()
    for hidden in ("test_hidden", "manual_seed(3)", "running_mean", 'bugs == "abdf"'):
        assert hidden not in everything


def test_forbidden_oracle_scores_zero_whatever_the_import_form(tmp_path):
    # q1: the oracle imported under another name in the set-up cell (outside q1's cells): caught in the kernel.
    path = prepend(EX02, "from kd_ref.losses.logits import kd_loss as reference_loss", tmp_path / "forbidden.ipynb")
    path = with_answer(path, "def kd_loss(", """
        def kd_loss(student_logits, teacher_logits, T):
            return reference_loss(student_logits, teacher_logits, T)
        """, tmp_path, "forbidden.ipynb")
    # q2: an obfuscated import inside the answer.
    path = with_answer(path, "def fixed_kd_step(", """
        def fixed_kd_step(student, teacher, x, y, T, kd_weight, ce_weight):
            oracle = __import__("".join(["kd", "_", "ref"]))
            return oracle.distillation_loss(student(x), oracle.teacher_forward(teacher, x), y, T=T,
                                            kd_weight=kd_weight, ce_weight=ce_weight)
        """, tmp_path, "forbidden.ipynb")
    # q3: the oracle named in the question's cells, even unused, is caught by the static scan.
    path = with_answer(path, "zt = torch.tensor([1.2", """
        import kd_ref as unused
        zt, zs = torch.tensor([0.1, 0.3, 0.6], dtype=torch.float64), torch.tensor([0.05, 0.2, 0.75], dtype=torch.float64)
        p_teacher = torch.softmax(zt, 0).tolist()
        ce_T1 = float(-(torch.softmax(zt, 0) * torch.log_softmax(zs, 0)).sum())
        kl_T1 = float((torch.softmax(zt, 0) * (torch.log_softmax(zt, 0) - torch.log_softmax(zs, 0))).sum())
        kd_T2 = float(4 * (torch.softmax(zt / 2, 0) * (torch.log_softmax(zt / 2, 0) - torch.log_softmax(zs / 2, 0))).sum())
        """, tmp_path, "forbidden.ipynb")
    report = grade_notebook(path, SOLUTIONS)
    scores = {q.name: q for q in report.questions}
    assert [scores[q].score for q in ("q1", "q2", "q3", "q4")] == [0, 0, 0, 4], report.table()
    assert all(scores[q].forbidden for q in ("q1", "q2", "q3")) and not scores["q4"].forbidden
    assert "import kd_ref" in " ".join(scores["q3"].forbidden)


def test_forbidden_torch_softmax_scores_zero_in_any_form(tmp_path):
    path = with_answer(EX01, "def softmax_t(", """
        import torch.nn.functional as F
        from torch import softmax as hidden_name
        def softmax_t(logits, T=1.0):
            z = logits / T
            return hidden_name(z, -1) if z.dim() > 1 else F.softmax(z, -1)
        """, tmp_path, "softmax.ipynb")
    report = grade_notebook(path, SOLUTIONS)
    scores = {q.name: q for q in report.questions}
    assert scores["q1"].score == 0 and scores["q1"].forbidden, report.table()
    assert scores["q2"].score == scores["q2"].max_score and scores["q3"].score == scores["q3"].max_score
