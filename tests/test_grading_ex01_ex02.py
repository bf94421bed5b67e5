"""Exercises 01 and 02 (issue 12): the public checks catch the mistakes the lessons teach, typical wrong
answers lose their points, and the forbidden shortcuts score 0 for their question in any form.

Kernel launches are the cost, so each graded notebook carries several wrong answers, one per question.
"""
import nbformat
import pytest

from kd_ref.grading import grade_notebook
from kd_ref.grading.assign import SOLUTIONS, assignment_name
from kd_ref.grading.rules import forbidden_uses, module_aliases, rule_for, static_findings
from test_grading import with_answer
from test_grading_trust import prepend

EX01 = SOLUTIONS / "ex01_softmax_temperature.ipynb"
EX02 = SOLUTIONS / "ex02_kd_loss.ipynb"


# -- the static scan, without a kernel --------------------------------------------------------------------
def test_a_kd_ref_name_imported_in_another_cell_is_caught_in_the_question_that_uses_it():
    cells = ["import torch\nfrom kd_ref.losses import kd_loss as oracle_loss\nimport kd_ref as k", "x = 1"]
    assert module_aliases(cells, ("kd_ref",)) == {"oracle_loss", "k"}
    rule = rule_for("ex02_kd_loss", "q3")
    found = static_findings("kd_T2 = float(oracle_loss(zs, zt, 2.0))", rule, frozenset({"oracle_loss"}))
    assert found and "another cell" in found[0]
    assert static_findings("kd_T2 = float(my_loss(zs, zt, 2.0))", rule, frozenset({"oracle_loss"})) == []


def test_the_masters_use_nothing_forbidden():
    for master in (EX01, EX02):
        nb = nbformat.read(master, as_version=4)
        assert forbidden_uses(nb, assignment_name(nb)) == {}


def test_every_ex01_question_forbids_the_builtin_softmax_and_ex02_every_oracle_loss():
    for q in ("q1", "q2", "q3", "q4"):
        assert "softmax" in rule_for("ex01_softmax_temperature", q).names
    assert rule_for("ex01_softmax_temperature", "q1").ops          # q1's function also runs under the op guard
    for q in ("q1", "q2", "q3", "q4", "q5"):
        oracle = rule_for("ex02_kd_loss", q).oracle
        for name in ("kd_ref.kd_loss", "kd_ref.reverse_kl_loss", "kd_ref.generalized_jsd_loss",
                     "kd_ref.distillation_loss", "kd_ref.soft_cross_entropy"):
            assert name in oracle, (q, name)


# -- graded notebooks (kernels) ---------------------------------------------------------------------------
def _scores(report):
    return {q.name: q for q in report.questions}


@pytest.mark.slow
def test_ex02_typical_wrong_answers_lose_their_points_and_the_public_checks_say_why(tmp_path):
    answers = {
        # q2: a wrong list of bugs ("reduction should be mean" is not one of them)
        'bugs = "abdf"': 'bugs = "abcdf"',
        # q3: the KD loss at T = 2 without its T^2 factor
        "zt = torch.tensor([1.2": """
            zt = torch.tensor([1.2, -0.4, 2.5, 0.3], dtype=torch.float64)
            zs = torch.tensor([0.8, 0.1, 1.9, -0.6], dtype=torch.float64)
            p_teacher = torch.softmax(zt, 0).tolist()
            ce_T1 = float(-(torch.softmax(zt, 0) * torch.log_softmax(zs, 0)).sum())
            kl_T1 = float((torch.softmax(zt, 0) * (torch.log_softmax(zt, 0) - torch.log_softmax(zs, 0))).sum())
            kd_T2 = float((torch.softmax(zt / 2, 0) * (torch.log_softmax(zt / 2, 0) - torch.log_softmax(zs / 2, 0))).sum())
            """,
        # q4: the slopes typed from the prompt instead of measured
        "slope_without_T2 = float(": """
            import numpy as np
            g = torch.Generator().manual_seed(0)
            zs, zt = 3 * torch.randn(16, 10, generator=g), 3 * torch.randn(16, 10, generator=g)
            Ts = [1, 2, 3, 4, 6]
            norms = [soft_grad_norm(zs, zt, T) for T in Ts]
            slope_without_T2 = -2.0
            slope_with_T2 = 0.0
            """,
        # q5: batchmean on (B, L, V): divides by B, sums over positions and padding
        "def masked_kd_loss(": """
            def masked_kd_loss(student_logits, teacher_logits, T, mask):
                return F.kl_div(F.log_softmax(student_logits / T, -1), F.softmax(teacher_logits / T, -1),
                                reduction="batchmean") * T * T
            """,
    }
    path = EX02
    for marker, code in answers.items():
        path = with_answer(path, marker, code, tmp_path, "wrong.ipynb")
    report = grade_notebook(path, SOLUTIONS)
    scores = _scores(report)
    assert scores["q1"].score == 4, report.table()
    assert scores["q2"].score == pytest.approx(4 * 2 / 3), report.table()     # the bugs check of 3 hidden checks
    assert scores["q3"].score == 0 and scores["q5"].score == 0, report.table()
    assert scores["q4"].score == pytest.approx(2), report.table()             # the norm is right, the slopes are not
    assert any("T^2" in m for m in scores["q3"].failed_public), scores["q3"].failed_public
    assert any("slope_without_T2" in m for m in scores["q4"].failed_public), scores["q4"].failed_public
    assert any("real positions" in m for m in scores["q5"].failed_public), scores["q5"].failed_public
    for q in scores.values():                                                 # no public message gives the answer away
        assert not any("abdf" in m or "-1.86" in m for m in q.failed_public)


@pytest.mark.slow
def test_ex02_the_gradient_norm_is_pinned_at_T4_publicly(tmp_path):
    # T^2 left in: identical to the right answer at T = 1 (the old public check), wrong at T = 4.
    path = with_answer(EX02, "def soft_grad_norm(", """
        def soft_grad_norm(student_logits, teacher_logits, T):
            s = student_logits.detach().clone().requires_grad_(True)
            loss = F.kl_div(F.log_softmax(s / T, -1), F.softmax(teacher_logits / T, -1), reduction="batchmean") * T * T
            loss.backward()
            return s.grad.norm().item()
        """, tmp_path, "t2.ipynb")
    scores = _scores(grade_notebook(path, SOLUTIONS))
    assert scores["q4"].score == 0
    assert any("T = 4" in m for m in scores["q4"].failed_public), scores["q4"].failed_public


@pytest.mark.slow
def test_ex02_oracle_losses_score_zero_in_any_import_form(tmp_path):
    # q1: reverse KL with its arguments swapped is exactly kd_loss; imported under another name in the set-up cell.
    path = prepend(EX02, "from kd_ref.losses.divergences import reverse_kl_loss as rk", tmp_path / "oracle.ipynb")
    path = with_answer(path, "def kd_loss(", """
        def kd_loss(student_logits, teacher_logits, T):
            return rk(teacher_logits, student_logits, T=T)
        """, tmp_path, "oracle.ipynb")
    # q3: a value computed with an oracle name imported in another cell (no kernel guard can see a value).
    path = prepend(path, "from kd_ref import kd_loss as reference", tmp_path / "oracle.ipynb")
    path = with_answer(path, "zt = torch.tensor([1.2", """
        zt = torch.tensor([1.2, -0.4, 2.5, 0.3], dtype=torch.float64)
        zs = torch.tensor([0.8, 0.1, 1.9, -0.6], dtype=torch.float64)
        p_teacher = torch.softmax(zt, 0).tolist()
        ce_T1 = float(-(torch.softmax(zt, 0) * torch.log_softmax(zs, 0)).sum())
        kl_T1 = float(reference(zs[None], zt[None], T=1.0))
        kd_T2 = float(reference(zs[None], zt[None], T=2.0))
        """, tmp_path, "oracle.ipynb")
    # q5: importlib, generalised JSD at beta = 0 (forward KL).
    path = with_answer(path, "def masked_kd_loss(", """
        def masked_kd_loss(student_logits, teacher_logits, T, mask):
            import importlib
            oracle = importlib.import_module("kd" + "_ref")
            return oracle.generalized_jsd_loss(student_logits, teacher_logits, beta=0.0, T=T, mask=mask) * T * T
        """, tmp_path, "oracle.ipynb")
    report = grade_notebook(path, SOLUTIONS)
    scores = _scores(report)
    assert [scores[q].score for q in ("q1", "q3", "q5")] == [0, 0, 0], report.table()
    assert all(scores[q].forbidden for q in ("q1", "q3", "q5"))
    assert scores["q2"].score == 4 and scores["q4"].score == 4, report.table()


@pytest.mark.slow
def test_ex01_wrong_answers_and_builtin_softmax(tmp_path):
    answers = {
        # q2: no 0 * log 0 guard: nan as soon as a probability underflows (caught publicly now)
        "def entropy_vs_T(": """
            def entropy_vs_T(logits, temperatures):
                return torch.stack([-(softmax_t(logits, T) * softmax_t(logits, T).log()).sum() for T in temperatures])
            """,
        # q3: the built-in softmax in the question's own cell
        "p1, p4 = softmax_t(": """
            p1, p4 = torch.softmax(digit_logits, -1), torch.softmax(digit_logits / 4, -1)
            runner_up = int(p1.argsort()[-2])
            ratio_T1 = float(p1[runner_up] / p1[3])
            ratio_T4 = float(p4[runner_up] / p4[3])
            """,
        # q4: log base 10 instead of the natural log
        "def temperature_for_ratio(": """
            def temperature_for_ratio(logits, ratio):
                top2 = logits.double().topk(2).values
                return float((top2[0] - top2[1]) / math.log10(1.0 / ratio))
            """,
    }
    path = EX01
    for marker, code in answers.items():
        path = with_answer(path, marker, code, tmp_path, "wrong01.ipynb")
    report = grade_notebook(path, SOLUTIONS)
    scores = _scores(report)
    assert scores["q1"].score == 4, report.table()
    assert scores["q2"].score == 0 and any("not finite" in m for m in scores["q2"].failed_public), report.table()
    assert scores["q3"].score == 0 and scores["q3"].forbidden, report.table()
    assert scores["q4"].score == 0 and any("not 10 %" in m for m in scores["q4"].failed_public), report.table()
