"""Exercise 09 (cached top-k KD loss, reading a paired interval) is graded as promised.

The solved master scoring full marks and the untouched exercise scoring 0 are checked for every
exercise by tests/test_grading.py. Here: common mistakes lose their question's points and only
those. Each question has two hidden checks worth half its points; each mistake below fails a
fixed set of them whatever the grader's salt (the checks' inputs are built so that the right and
the wrong answer differ by far more than the tolerance: see the checks in the master). Three
cases only: each starts grading kernels.
"""
import pytest

from kd_ref.grading.assign import SOLUTIONS
from test_grading import assert_scores, grade_with_answers

pytestmark = pytest.mark.slow   # kernels or subprocesses: `make test`, not `make unit`

EX09 = SOLUTIONS / "ex09_cached_teacher.ipynb"

CACHED_MISTAKES = {
    # the top-k terms only: the remainder bucket forgotten (fails the bucket check; exact at k = C)
    "no_remainder_bucket": """
        def cached_kd(student_logits, indices, log_probs, log_remainder, T):
            log_q = F.log_softmax(student_logits / T, dim=-1).gather(-1, indices)
            p = log_probs.exp()
            return T * T * (p * (log_probs - log_q)).sum(-1).mean()
        """,
    # the bucket always added: at k = C its term is 0 * (-inf - -inf) = nan (fails the k = C check)
    "bucket_at_k_equals_c": """
        def cached_kd(student_logits, indices, log_probs, log_remainder, T):
            log_q = F.log_softmax(student_logits / T, dim=-1)
            outside = torch.ones_like(log_q, dtype=torch.bool).scatter(-1, indices, False)
            rest = log_q.masked_fill(~outside, float("-inf")).logsumexp(-1)
            log_p = torch.cat([log_probs, log_remainder.unsqueeze(-1)], -1)
            log_s = torch.cat([log_q.gather(-1, indices), rest.unsqueeze(-1)], -1)
            return T * T * (log_p.exp() * (log_p - log_s)).sum(-1).mean()
        """,
}

VERDICT_MISTAKES = {
    # the normal quantile 1.96 instead of Student's t with n - 1 degrees of freedom
    "z_instead_of_t": """
        def paired_verdict(values, baseline):
            d = [a - b for a, b in zip(values, baseline)]
            n = len(d)
            mean = sum(d) / n
            sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1))
            half = 1.96 * sd / math.sqrt(n)
            if mean - half > 0:
                return "helps"
            if mean + half < 0:
                return "hurts"
            return "no detectable difference"
        """,
    # an unpaired interval: each list's own spread instead of the spread of the differences
    "unpaired": """
        def paired_verdict(values, baseline):
            n = len(values)
            mv, mb = sum(values) / n, sum(baseline) / n
            vv = sum((x - mv) ** 2 for x in values) / (n - 1)
            vb = sum((x - mb) ** 2 for x in baseline) / (n - 1)
            half = stats.t.ppf(0.975, 2 * n - 2) * math.sqrt(vv / n + vb / n)
            low, high = mv - mb - half, mv - mb + half
            if low > 0:
                return "helps"
            if high < 0:
                return "hurts"
            return "no detectable difference"
        """,
}

# (answers replaced, {question: expected score}); questions not listed keep full marks.
CASES = {
    "A": ({"def cached_kd(": CACHED_MISTAKES["no_remainder_bucket"]}, {"q1": 2.5}),           # q2 keeps its points
    "B": ({"def cached_kd(": CACHED_MISTAKES["bucket_at_k_equals_c"],
           "def paired_verdict(": VERDICT_MISTAKES["z_instead_of_t"]}, {"q1": 2.5, "q2": 2.5}),
    "C": ({"def paired_verdict(": VERDICT_MISTAKES["unpaired"]}, {"q2": 0}),                  # q1 keeps its points
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_lesson_10_mistakes_lose_their_points_and_only_theirs(case, tmp_path):
    answers, expected = CASES[case]
    report = grade_with_answers(EX09, answers, tmp_path, f"mistakes_{case}.ipynb")
    assert_scores(report, {"q1": 5.0, "q2": 5.0}, expected, case)
