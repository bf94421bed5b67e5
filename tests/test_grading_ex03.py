"""Exercise 03 (hints and hooks): the typical mistakes lose their question's points, and only those.

Full marks for the solution and 0 for the untouched exercise are checked for every master
by tests/test_grading.py.
"""

import pytest

from kd_ref.grading import grade_notebook
from kd_ref.grading.assign import SOLUTIONS
from test_grading import with_answer

pytestmark = pytest.mark.slow   # kernels or subprocesses: `make test`, not `make unit`

EX03 = SOLUTIONS / "ex03_hints_and_hooks.ipynb"



REGRESSOR = """
    class Regressor1x1(nn.Module):
        def __init__(self, student_channels, teacher_channels):
            super().__init__()
            self.conv = nn.Conv2d(student_channels, teacher_channels, kernel_size=1)

        def forward(self, student_feat):
            return self.conv(student_feat)
    """

# Question 1: the regressor and the hint loss.
HINT_MISTAKES = {
    # The regressor applied to the teacher's features: (B, 32, H, W) into a conv that expects 8 channels.
    "regressor_on_the_teacher_side": REGRESSOR + """
    def hint_loss(student_feat, teacher_feat):
        return ((student_feat - teacher_feat) ** 2).mean()

    def guided_hint_loss(student_feat, teacher_feat, regressor):
        return hint_loss(student_feat, regressor(teacher_feat))
    """,
    # The squared error summed instead of averaged over the elements.
    "mse_sum_instead_of_mean": REGRESSOR + """
    def hint_loss(student_feat, teacher_feat):
        return F.mse_loss(student_feat, teacher_feat, reduction="sum")

    def guided_hint_loss(student_feat, teacher_feat, regressor):
        return hint_loss(regressor(student_feat), teacher_feat)
    """,
}

# Question 2: capture a named layer.
CAPTURE_MISTAKES = {
    # The right name, the wrong module: the hook sits on the submodule's first child (its conv).
    "hooks_the_wrong_module": """
    def capture(model, name, x):
        captured = {}
        module = model.get_submodule(name)
        target = next(module.children(), module)
        handle = target.register_forward_hook(lambda m, i, o: captured.update(out=o))
        model(x)
        handle.remove()
        return captured["out"]
    """,
    # The right value, but the hook stays registered on the model.
    "leaves_the_hook_registered": """
    def capture(model, name, x):
        captured = {}
        model.get_submodule(name).register_forward_hook(lambda m, i, o: captured.update(out=o))
        model(x)
        return captured["out"]
    """,
}


# (question 1 answer, question 2 answer, questions that must score 0, questions that keep their points);
# None keeps the solution. Three grading runs cover the four mistakes.
CASES = {
    "regressor_on_the_teacher_side": ("regressor_on_the_teacher_side", None, ["q1"], ["q2"]),
    "leaves_the_hook_registered": (None, "leaves_the_hook_registered", ["q2"], ["q1"]),
    "mse_sum_and_wrong_module": ("mse_sum_instead_of_mean", "hooks_the_wrong_module", ["q1", "q2"], []),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_mistakes_lose_their_question_only(case, tmp_path):
    hint, hook, lost, kept = CASES[case]
    path = EX03
    if hint is not None:
        path = with_answer(path, "class Regressor1x1(", HINT_MISTAKES[hint], tmp_path, f"{case}.ipynb")
    if hook is not None:
        path = with_answer(path, "def capture(", CAPTURE_MISTAKES[hook], tmp_path, f"{case}.ipynb")
    scores = {q.name: q for q in grade_notebook(path, SOLUTIONS).questions}
    for name in lost:
        assert scores[name].score == 0, f"{case}: {name} scored {scores[name].score}"
    for name in kept:
        assert scores[name].score == scores[name].max_score > 0, f"{case}: {name} lost points"
