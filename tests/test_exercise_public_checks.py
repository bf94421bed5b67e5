"""The public checks of exercises 03, 04, 06 and 07 catch the typical mistakes themselves.

A learner sees only the public checks while working, so a mistake the prompt warns about
must fail one, with a message that says what was expected: a regressor without a bias
(ex03 q1), attention-transfer code that never pools, or always pools the teacher (ex04 q2:
cases with the student's map larger and with the teacher's larger), a reflected border or
a top-bottom flip in the batched crop and flip (ex06 q1), per-batch fractions averaged, agreement
counted only where right, the predictive KL reversed or taken as ``softmax().log()`` (ex06 q2), and
``softmax(...).log()`` on confident logits (ex07 q1). Each public check is read from the
master notebook and run here on the wrong answer (fast, no kernel); the solution passes it.
The slow tests grade whole notebooks: the same mistakes lose their question's points.
"""
import json
import textwrap

import pytest

from kd_ref.grading.assign import SOLUTIONS
from test_grading_ex06 import _SCORES, AGREE, CROP_MISTAKES, SCORE_MISTAKES

PRELUDE = "import torch\nimport torch.nn.functional as F\nfrom torch import nn\nimport kd_ref\n"


def public_check(master: str, question: str) -> str:
    """The source of ``question``'s public check cell (points 0) in ``solutions/<master>.ipynb``."""
    cells = json.loads((SOLUTIONS / f"{master}.ipynb").read_text(encoding="utf-8"))["cells"]
    current = None
    for cell in cells:
        source = "".join(cell["source"])
        if cell["cell_type"] == "raw" and source.startswith("# BEGIN QUESTION"):
            current = source.split("name:")[1].split()[0]
        if current == question and cell["cell_type"] == "code" and "BEGIN TEST CONFIG" in source:
            return source
    raise LookupError(f"{master}: no public check for {question}")


def solution_code(master: str, marker: str) -> str:
    cells = json.loads((SOLUTIONS / f"{master}.ipynb").read_text(encoding="utf-8"))["cells"]
    return next("".join(c["source"]) for c in cells if c["cell_type"] == "code" and marker in "".join(c["source"])
                and "BEGIN TEST CONFIG" not in "".join(c["source"]) and "# HIDDEN" not in "".join(c["source"]))


def run_public(master: str, question: str, answer: str) -> None:
    namespace = {}
    exec(PRELUDE, namespace)
    exec(textwrap.dedent(answer), namespace)
    exec(public_check(master, question), namespace)


ATTENTION_MAP = """
    def attention_map(feat, p=2):
        am = feat.abs().pow(p).mean(dim=1).flatten(1)
        return am / am.norm(dim=1, keepdim=True).clamp_min(1e-12)
    """
NEVER_POOLS = """
    def {name}(student_feat, teacher_feat, p=2):
        def q(f):
            am = f.abs().pow(p).mean(dim=1).flatten(1)
            return am / am.norm(dim=1, keepdim=True).clamp_min(1e-12)
        return (q(student_feat) - q(teacher_feat.detach())).pow(2).mean()
    """
ALWAYS_POOLS_THE_TEACHER = """
    def {name}(student_feat, teacher_feat, p=2):
        teacher_feat = F.adaptive_avg_pool2d(teacher_feat.detach(), student_feat.shape[-2:])
        def q(f):
            am = f.abs().pow(p).mean(dim=1).flatten(1)
            return am / am.norm(dim=1, keepdim=True).clamp_min(1e-12)
        return (q(student_feat) - q(teacher_feat)).pow(2).mean()
    """
NO_BIAS = """
    class Regressor1x1(nn.Module):
        def __init__(self, student_channels, teacher_channels):
            super().__init__()
            self.conv = nn.Conv2d(student_channels, teacher_channels, kernel_size=1, bias=False)
        def forward(self, x):
            return self.conv(x)
    def hint_loss(s, t):
        return (s - t).pow(2).mean()
    def guided_hint_loss(s, t, regressor):
        return hint_loss(regressor(s), t)
    """
LOG_OF_SOFTMAX = """
    def token_kd_loss(student_logits, teacher_logits, mask, T=2.0):
        p_s = torch.softmax(student_logits / T, dim=-1)
        p_t = torch.softmax(teacher_logits.detach() / T, dim=-1)
        return T * T * (p_t * (p_t.log() - p_s.log())).sum(-1)[mask].mean()
    """
KL_DIV_OF_LOG_SOFTMAX = """
    def token_kd_loss(student_logits, teacher_logits, mask, T=2.0):
        log_p_s = torch.softmax(student_logits / T, dim=-1).log()
        p_t = torch.softmax(teacher_logits.detach() / T, dim=-1)
        kl = F.kl_div(log_p_s, p_t, reduction="none").sum(-1)
        return T * T * kl[mask].mean()
    """

SCORES_LOG_OF_SOFTMAX = _SCORES.format(agree=AGREE, kl="(log_t.exp() * (log_t - log_s)).sum().item()").replace(
    "F.log_softmax(s, -1), F.log_softmax(t, -1)", "F.softmax(s, -1).log(), F.softmax(t, -1).log()")

CASES = {   # (master, question, wrong answer, what the failure message must say)
    "ex03 regressor without a bias": ("ex03_hints_and_hooks", "q1", NO_BIAS, "needs a bias"),
    "ex04 never pools": ("ex04_attention", "q2", ATTENTION_MAP + NEVER_POOLS.format(name="at_loss"), None),
    "ex04 always pools the teacher": ("ex04_attention", "q2",
                                      ATTENTION_MAP + ALWAYS_POOLS_THE_TEACHER.format(name="at_loss"),
                                      "pool the LARGER map"),
    "ex06 reflected border": ("ex06_feature_kd_step", "q1", CROP_MISTAKES["reflect_padding"], "pad with zeros"),
    "ex06 rows flipped": ("ex06_feature_kd_step", "q1", CROP_MISTAKES["flips_the_rows"], "mirror the columns"),
    "ex06 offsets off by one": ("ex06_feature_kd_step", "q1", CROP_MISTAKES["offsets_off_by_one"], "counted from 0"),
    "ex06 int64 images": ("ex06_feature_kd_step", "q1", CROP_MISTAKES["returns_int64"], "keep the dtype uint8"),
    "ex06 mean of batch means": ("ex06_feature_kd_step", "q2", SCORE_MISTAKES["mean_of_batch_means"],
                                 "every sample counts once"),
    "ex06 agreement only when right": ("ex06_feature_kd_step", "q2", SCORE_MISTAKES["agreement_only_when_right"],
                                       "whether or not the prediction is right"),
    "ex06 KL reversed": ("ex06_feature_kd_step", "q2", SCORE_MISTAKES["kl_swapped"], "from the teacher to the student"),
    "ex06 softmax().log()": ("ex06_feature_kd_step", "q2", SCORES_LOG_OF_SOFTMAX, "F.log_softmax"),
    "ex07 softmax().log()": ("ex07_token_kd", "q1", LOG_OF_SOFTMAX, "F.log_softmax"),
    "ex07 kl_div of softmax().log()": ("ex07_token_kd", "q1", KL_DIV_OF_LOG_SOFTMAX, "F.log_softmax"),
}


@pytest.mark.parametrize("case", CASES)
def test_the_public_check_catches_the_mistake(case):
    master, question, answer, message = CASES[case]
    with pytest.raises((AssertionError, RuntimeError)) as failure:
        run_public(master, question, answer)
    if message is not None:                     # a readable assertion, not an AttributeError from the check
        assert failure.type is AssertionError and message in str(failure.value), str(failure.value)


@pytest.mark.parametrize("master, question, marker", [
    ("ex03_hints_and_hooks", "q1", "class Regressor1x1("), ("ex04_attention", "q2", "def at_loss("),
    ("ex06_feature_kd_step", "q1", "def crop_and_flip("), ("ex06_feature_kd_step", "q2", "def agreement_scores("),
    ("ex07_token_kd", "q1", "def token_kd_loss(")])
def test_the_solution_passes_the_same_public_check(master, question, marker):
    answer = solution_code(master, marker)
    if master == "ex04_attention":
        answer = textwrap.dedent(ATTENTION_MAP) + "\n" + answer
    run_public(master, question, answer)


@pytest.mark.slow   # a grading kernel per notebook: `make test`, not `make unit`
@pytest.mark.parametrize("case, marker", [
    ("ex03 regressor without a bias", "class Regressor1x1("),
    ("ex04 always pools the teacher", "def at_loss("),
    ("ex06 reflected border", "def crop_and_flip("),
    ("ex07 softmax().log()", "def token_kd_loss(")])
def test_the_mistake_loses_its_question_points(case, marker, tmp_path):
    from test_grading import grade_with_answers

    master, question, answer, _ = CASES[case]
    if master == "ex04_attention":          # q1's own attention_map stays the solution's
        answer = answer.split("def at_loss(")[0].replace(textwrap.dedent(ATTENTION_MAP).strip(), "") + \
            "def at_loss(" + answer.split("def at_loss(")[1]
    report = grade_with_answers(SOLUTIONS / f"{master}.ipynb", {marker: answer}, tmp_path, "mistake.ipynb")
    scores = {q.name: q for q in report.questions}
    assert scores[question].score == 0, report.table()
    assert all(q.score == q.max_score for name, q in scores.items() if name != question), report.table()
