"""Exercise 04 (attention maps, AT loss, attention KL) is graded as promised.

The solved master scoring full marks and the untouched exercise scoring 0 are checked for
every exercise by tests/test_grading.py. Here: the typical mistakes of lesson 04 lose their
question's points, and the other questions keep theirs. Each graded notebook carries two
mistakes in different questions (one grading run each, about 8 s), so three runs cover
six mistakes; q2's checks substitute kd_ref's attention map for the learner's, so a wrong
q1 never costs q2 its points (mistake sets A and B show it).
"""
import pytest

from kd_ref.grading.assign import SOLUTIONS
from test_grading import assert_scores, grade_with_answers

pytestmark = pytest.mark.slow   # kernels or subprocesses: `make test`, not `make unit`

EX04 = SOLUTIONS / "ex04_attention.ipynb"

MAP_MISTAKES = {
    # sum of |f|^2 over channels, never normalised: the scale of the feature leaks into the map
    "channel_sum_without_normalisation": """
        def attention_map(feat, p=2):
            return feat.abs().pow(p).sum(dim=1).flatten(1)
        """,
    # one norm for the whole batch: a bright image shrinks every other image's map
    "batch_normalised": """
        def attention_map(feat, p=2):
            am = feat.abs().pow(p).mean(dim=1).flatten(1)
            return am / am.norm()
        """,
}

AT_MISTAKES = {
    # maps of different sizes cannot be compared: no pooling raises on the subtraction
    "no_pooling": """
        def at_loss(student_feat, teacher_feat, p=2):
            return (attention_map(student_feat, p) - attention_map(teacher_feat.detach(), p)).pow(2).mean()
        """,
}

KL_MISTAKES = {
    # KL(student || teacher): the arguments the wrong way round
    "kl_direction_swapped": """
        def attention_kl(student_probs, teacher_probs, mask):
            p_t = teacher_probs.detach()
            keep = (p_t > 0) & mask[:, None, None, :]
            kl = torch.where(keep, student_probs * (student_probs.log() - p_t.log()), torch.zeros_like(p_t))
            return kl.sum(-1)[mask[:, None, :].expand(kl.shape[:-1])].mean()
        """,
    # padded keys left out, but every query row (padded ones too) averaged
    "padded_query_rows_averaged": """
        def attention_kl(student_probs, teacher_probs, mask):
            p_t = teacher_probs.detach()
            keep = (p_t > 0) & mask[:, None, None, :]
            kl = torch.where(keep, p_t * (p_t.log() - student_probs.log()), torch.zeros_like(p_t))
            return kl.sum(-1).mean()
        """,
    # padded query rows left out, but padded keys still summed
    "padded_keys_kept": """
        def attention_kl(student_probs, teacher_probs, mask):
            p_t = teacher_probs.detach()
            keep = p_t > 0
            kl = torch.where(keep, p_t * (p_t.log() - student_probs.log()), torch.zeros_like(p_t))
            return kl.sum(-1)[mask[:, None, :].expand(kl.shape[:-1])].mean()
        """,
}

# (answers replaced, question expected to score 0): two mistakes per grading run.
CASES = {
    "A": ({"def attention_map(": MAP_MISTAKES["channel_sum_without_normalisation"],
           "def attention_kl(": KL_MISTAKES["kl_direction_swapped"]}, {"q1", "q3"}),
    "B": ({"def attention_map(": MAP_MISTAKES["batch_normalised"],
           "def attention_kl(": KL_MISTAKES["padded_query_rows_averaged"]}, {"q1", "q3"}),
    "C": ({"def at_loss(": AT_MISTAKES["no_pooling"],
           "def attention_kl(": KL_MISTAKES["padded_keys_kept"]}, {"q2", "q3"}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_lesson_04_mistakes_lose_their_points_and_only_theirs(case, tmp_path):
    answers, wrong = CASES[case]
    report = grade_with_answers(EX04, answers, tmp_path, f"mistakes_{case}.ipynb")
    assert_scores(report, {"q1": 3.0, "q2": 3.0, "q3": 4.0}, {name: 0 for name in wrong}, case)
