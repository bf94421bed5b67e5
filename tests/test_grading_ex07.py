"""Exercise 07 (token-level KD with padding, hidden states through a projection) is graded as promised.

The solved master scoring full marks and the untouched exercise scoring 0 are checked for
every exercise by tests/test_grading.py. Here: the typical mistakes of lesson 07 (and of
the seeds: no T², probabilities instead of log-probabilities, the KL the wrong way round)
lose their question's points, and the other questions keep theirs. Each graded notebook
carries up to one mistake per question (one grading run each); q3's checks put kd_ref's losses
in place of the learner's, so a wrong q1 or q2 never costs q3 its points.
"""
import pytest

from kd_ref.grading.assign import SOLUTIONS
from test_grading import assert_scores, grade_with_answers

pytestmark = pytest.mark.slow   # kernels or subprocesses: `make test`, not `make unit`

EX07 = SOLUTIONS / "ex07_token_kd.ipynb"

KD_MISTAKES = {
    # the seeds' formula without T^2 (ERRATA item 4)
    "no_T_squared": """
        def token_kd_loss(student_logits, teacher_logits, mask, T=2.0):
            log_p_s = F.log_softmax(student_logits / T, dim=-1)
            log_p_t = F.log_softmax(teacher_logits.detach() / T, dim=-1)
            return (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1)[mask].mean()
        """,
    # every position averaged, padded ones included
    "padding_averaged_in": """
        def token_kd_loss(student_logits, teacher_logits, mask, T=2.0):
            log_p_s = F.log_softmax(student_logits / T, dim=-1)
            log_p_t = F.log_softmax(teacher_logits.detach() / T, dim=-1)
            return T * T * (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1).mean()
        """,
    # probabilities, then log: -inf * 0 = nan for confident models (ERRATA item 8's family)
    "log_of_softmax": """
        def token_kd_loss(student_logits, teacher_logits, mask, T=2.0):
            p_s = torch.softmax(student_logits / T, dim=-1)
            p_t = torch.softmax(teacher_logits.detach() / T, dim=-1)
            return T * T * (p_t * (p_t.log() - p_s.log())).sum(-1)[mask].mean()
        """,
}

HIDDEN_MISTAKES = {
    # summed over the features instead of averaged
    "sum_over_features": """
        def hidden_loss(student_hidden, teacher_hidden, projection, mask):
            diff = projection(student_hidden) - teacher_hidden.detach()
            return diff.pow(2).sum(-1)[mask].mean()
        """,
    # padded positions averaged in
    "padding_averaged_in": """
        def hidden_loss(student_hidden, teacher_hidden, projection, mask):
            return (projection(student_hidden) - teacher_hidden.detach()).pow(2).mean()
        """,
    # the teacher is not detached: gradients flow into the teacher's hidden states
    "teacher_not_detached": """
        def hidden_loss(student_hidden, teacher_hidden, projection, mask):
            return (projection(student_hidden) - teacher_hidden).pow(2).mean(-1)[mask].mean()
        """,
}

STEP_MISTAKES = {
    # student layer m paired with teacher layer m (not m * L_t / L_s)
    "layer_m_to_layer_m": """
        def distill_terms(student, teacher, projections, x, y, T=2.0, kd_weight=1.0, ce_weight=0.5, hidden_weight=1.0):
            mask = y != -1
            out_s = student.forward_internals(x, mask)
            teacher.eval()
            with torch.no_grad():
                out_t = teacher.forward_internals(x, mask)
            hidden = torch.stack([hidden_loss(h, out_t.hidden_states[m], w, mask)
                                  for m, (h, w) in enumerate(zip(out_s.hidden_states, projections))]).mean()
            return {"kd": kd_weight * token_kd_loss(out_s.logits, out_t.logits, mask, T),
                    "ce": ce_weight * F.cross_entropy(out_s.logits[mask], y[mask]),
                    "hidden": hidden_weight * hidden}
        """,
    # the teacher left in training mode (dropout on) and run with gradients
    "teacher_in_training_mode": """
        def distill_terms(student, teacher, projections, x, y, T=2.0, kd_weight=1.0, ce_weight=0.5, hidden_weight=1.0):
            mask = y != -1
            out_s = student.forward_internals(x, mask)
            out_t = teacher.forward_internals(x, mask)
            step = teacher.config.n_layer // student.config.n_layer
            hidden = torch.stack([hidden_loss(h, out_t.hidden_states[m * step], w, mask)
                                  for m, (h, w) in enumerate(zip(out_s.hidden_states, projections))]).mean()
            return {"kd": kd_weight * token_kd_loss(out_s.logits, out_t.logits, mask, T),
                    "ce": ce_weight * F.cross_entropy(out_s.logits[mask], y[mask]),
                    "hidden": hidden_weight * hidden}
        """,
    # padded positions fed to the cross-entropy (as class 0, after clamping the -1 targets)
    "ce_over_padding": """
        def distill_terms(student, teacher, projections, x, y, T=2.0, kd_weight=1.0, ce_weight=0.5, hidden_weight=1.0):
            mask = y != -1
            out_s = student.forward_internals(x, mask)
            teacher.eval()
            with torch.no_grad():
                out_t = teacher.forward_internals(x, mask)
            step = teacher.config.n_layer // student.config.n_layer
            hidden = torch.stack([hidden_loss(h, out_t.hidden_states[m * step], w, mask)
                                  for m, (h, w) in enumerate(zip(out_s.hidden_states, projections))]).mean()
            ce = F.cross_entropy(out_s.logits.flatten(0, 1), y.flatten().clamp_min(0))
            return {"kd": kd_weight * token_kd_loss(out_s.logits, out_t.logits, mask, T),
                    "ce": ce_weight * ce, "hidden": hidden_weight * hidden}
        """,
}

# (answers replaced, {question: expected score}); questions not listed keep full marks.
# A teacher that is not detached gives the right values but a wrong gradient: it fails one
# of q2's two hidden checks and keeps half of the points.
CASES = {
    "A": ({"def token_kd_loss(": KD_MISTAKES["no_T_squared"],
           "def hidden_loss(": HIDDEN_MISTAKES["sum_over_features"],
           "def distill_terms(": STEP_MISTAKES["layer_m_to_layer_m"]}, {"q1": 0, "q2": 0, "q3": 0}),
    "B": ({"def token_kd_loss(": KD_MISTAKES["padding_averaged_in"],
           "def hidden_loss(": HIDDEN_MISTAKES["padding_averaged_in"],
           "def distill_terms(": STEP_MISTAKES["teacher_in_training_mode"]}, {"q1": 0, "q2": 0, "q3": 0}),
    "C": ({"def token_kd_loss(": KD_MISTAKES["log_of_softmax"],
           "def hidden_loss(": HIDDEN_MISTAKES["teacher_not_detached"]}, {"q1": 0, "q2": 1.5}),
    "D": ({"def distill_terms(": STEP_MISTAKES["ce_over_padding"]}, {"q3": 0}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_lesson_07_mistakes_lose_their_points_and_only_theirs(case, tmp_path):
    answers, expected = CASES[case]
    report = grade_with_answers(EX07, answers, tmp_path, f"mistakes_{case}.ipynb")
    assert_scores(report, {"q1": 4.0, "q2": 3.0, "q3": 3.0}, expected, case)
