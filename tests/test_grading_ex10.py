"""Exercise 10 (a layer's truncated SVD as two layers; the smallest rank within an error budget) is graded as promised.

The solved master scoring full marks and the untouched exercise scoring 0 are checked for every
exercise by tests/test_grading.py. Here: the likely mistakes lose their question's points, and the
other question keeps its own. q1 has two hidden checks (2.5 points each: shapes, bias and error on
salted layers / full rank and dtype); q2 one (3 points).
"""
import pytest

from kd_ref.grading.assign import SOLUTIONS
from test_grading import assert_scores, grade_with_answers

pytestmark = pytest.mark.slow   # kernels or subprocesses: `make test`, not `make unit`

EX10 = SOLUTIONS / "ex10_low_rank.ipynb"

FACTOR_MISTAKES = {
    # the r smallest singular values kept instead of the r largest (right at full rank only)
    "smallest_kept": """
        def low_rank_linear(layer, rank):
            W = layer.weight.detach().double()
            U, S, Vh = torch.linalg.svd(W, full_matrices=False)
            root = S[-rank:].sqrt()
            first = nn.Linear(layer.in_features, rank, bias=False, dtype=layer.weight.dtype)
            second = nn.Linear(rank, layer.out_features, bias=layer.bias is not None, dtype=layer.weight.dtype)
            with torch.no_grad():
                first.weight.copy_(root[:, None] * Vh[-rank:])
                second.weight.copy_(U[:, -rank:] * root[None, :])
                if layer.bias is not None:
                    second.bias.copy_(layer.bias)
            return nn.Sequential(first, second)
        """,
    # the oracle called instead of the learner's own code
    "oracle": """
        def low_rank_linear(layer, rank):
            from kd_ref.compress import low_rank_linear as reference
            return reference(layer, rank)
        """,
}

RANK_MISTAKES = {
    # one too small: the largest rank whose error is still above the budget
    "off_by_one": """
        def smallest_rank(layer, max_relative_error):
            s2 = torch.linalg.svdvals(layer.weight.detach().double()).square()
            tail = s2.flip(0).cumsum(0).flip(0)
            for r in range(1, len(s2) + 1):
                error = (tail[r].sqrt() / tail[0].sqrt()).item() if r < len(s2) else 0.0
                if error <= max_relative_error:
                    return max(1, r - 1)
        """,
    # the absolute error ||W - W_r||_F compared with the budget, not the relative one
    "absolute_error": """
        def smallest_rank(layer, max_relative_error):
            s2 = torch.linalg.svdvals(layer.weight.detach().double()).square()
            tail = s2.flip(0).cumsum(0).flip(0)
            for r in range(1, len(s2) + 1):
                error = tail[r].sqrt().item() if r < len(s2) else 0.0
                if error <= max_relative_error:
                    return r
        """,
}

CASES = {
    "A": ({"def low_rank_linear(": FACTOR_MISTAKES["smallest_kept"],
           "def smallest_rank(": RANK_MISTAKES["off_by_one"]}, {"q1": 2.5, "q2": 0}),
    "B": ({"def low_rank_linear(": FACTOR_MISTAKES["oracle"]}, {"q1": 0}),          # q2 keeps its points
    "C": ({"def smallest_rank(": RANK_MISTAKES["absolute_error"]}, {"q2": 0}),       # q1 keeps its points
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_lesson_11_mistakes_lose_their_points_and_only_theirs(case, tmp_path):
    answers, expected = CASES[case]
    report = grade_with_answers(EX10, answers, tmp_path, f"mistakes_{case}.ipynb")
    assert_scores(report, {"q1": 5.0, "q2": 3.0}, expected, case)
