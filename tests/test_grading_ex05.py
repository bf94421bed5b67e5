"""Exercise 05 (relation losses): the typical mistakes lose their question's points, and only those.

Full marks for the solution and 0 for the untouched exercise are checked for every master
by tests/test_grading.py. To keep grading runs few, each notebook below carries two mistakes
in two questions, and the third question must keep its points.
"""

import pytest

from kd_ref.grading import grade_notebook
from kd_ref.grading.assign import SOLUTIONS
from test_grading import with_answer

pytestmark = pytest.mark.slow   # kernels or subprocesses: `make test`, not `make unit`

EX05 = SOLUTIONS / "ex05_relations.ipynb"


DISTANCE_MISTAKES = {
    "not_normalised_by_the_mean": """
        def rkd_distance_loss(student, teacher):
            return F.smooth_l1_loss(torch.cdist(student, student), torch.cdist(teacher, teacher))
        """,
    "mean_over_all_entries_with_the_diagonal": """
        def rkd_distance_loss(student, teacher):
            d_s, d_t = torch.cdist(student, student), torch.cdist(teacher, teacher)
            return F.smooth_l1_loss(d_s / d_s.mean(), d_t / d_t.mean())
        """,
    "squared_distances": """
        def rkd_distance_loss(student, teacher):
            B = student.shape[0]
            d_s, d_t = torch.cdist(student, student) ** 2, torch.cdist(teacher, teacher) ** 2
            return F.smooth_l1_loss(d_s / (d_s.sum() / (B * (B - 1))), d_t / (d_t.sum() / (B * (B - 1))))
        """,
}

ANGLE_MISTAKES = {
    # Dot products of the raw difference vectors: not cosines, and not scale-free.
    "difference_vectors_not_normalised": """
        def rkd_angle_loss(student, teacher):
            def cosines(e):
                diff = e[None, :, :] - e[:, None, :]
                return diff @ diff.transpose(1, 2)
            return F.smooth_l1_loss(cosines(student), cosines(teacher))
        """,
}

SP_MISTAKES = {
    "gram_rows_not_normalised": """
        def sp_loss(student_feat, teacher_feat):
            B = student_feat.shape[0]
            s, t = student_feat.flatten(1), teacher_feat.flatten(1)
            return ((t @ t.T) - (s @ s.T)).pow(2).sum() / (B * B)
        """,
    "divided_by_B_not_B_squared": """
        def sp_loss(student_feat, teacher_feat):
            B = student_feat.shape[0]
            s, t = student_feat.flatten(1), teacher_feat.flatten(1)
            g_s, g_t = F.normalize(s @ s.T, dim=1), F.normalize(t @ t.T, dim=1)
            return (g_t - g_s).pow(2).sum() / B
        """,
}

# (question 1 mistake, second mistake, its question, the question that must keep its points)
CASES = [
    ("not_normalised_by_the_mean", ("def sp_loss(", SP_MISTAKES["gram_rows_not_normalised"]), "q3", "q2"),
    ("mean_over_all_entries_with_the_diagonal", ("def sp_loss(", SP_MISTAKES["divided_by_B_not_B_squared"]),
     "q3", "q2"),
    ("squared_distances", ("def rkd_angle_loss(", ANGLE_MISTAKES["difference_vectors_not_normalised"]),
     "q2", "q3"),
]


@pytest.mark.parametrize("distance_mistake,second,second_question,untouched", CASES, ids=[c[0] for c in CASES])
def test_relation_mistakes_lose_their_points(distance_mistake, second, second_question, untouched, tmp_path):
    path = with_answer(EX05, "def rkd_distance_loss(", DISTANCE_MISTAKES[distance_mistake], tmp_path, "mistakes.ipynb")
    path = with_answer(path, second[0], second[1], tmp_path, "mistakes.ipynb")
    scores = {q.name: q for q in grade_notebook(path, SOLUTIONS).questions}
    assert scores["q1"].score == 0, f"{distance_mistake}: q1 scored {scores['q1'].score}"
    assert scores[second_question].score == 0, f"{second_question} scored {scores[second_question].score}"
    assert scores[untouched].score == scores[untouched].max_score > 0
