"""Exercise 06 (hooks, attention transfer, the KD + AT step): typical mistakes lose their points.

That the solution scores full marks and the untouched exercise 0 is checked for every
exercise by tests/test_grading.py.
"""
from kd_ref.grading import grade_notebook
from kd_ref.grading.assign import SOLUTIONS

from test_grading import with_answer
import pytest

pytestmark = pytest.mark.slow   # kernels or subprocesses: `make test`, not `make unit`

EX06 = SOLUTIONS / "ex06_feature_kd_step.ipynb"

CAPTURES_INPUTS = """
    def capture(model, names, x):
        modules = dict(model.named_modules())
        features, handles = {}, []
        for name in names:
            def hook(module, inputs, output, name=name):
                features[name] = inputs[0]
            handles.append(modules[name].register_forward_hook(hook))
        output = model(x)
        for handle in handles:
            handle.remove()
        return output, features
    """

LEAVES_HOOKS = """
    def capture(model, names, x):
        modules = dict(model.named_modules())
        features = {}
        for name in names:
            def hook(module, inputs, output, name=name):
                features[name] = output
            modules[name].register_forward_hook(hook)
        return model(x), features
    """

UNNORMALISED_MAPS = """
    def at_term(student_feat, teacher_feat, p=2.0):
        s = student_feat.abs().pow(p).mean(dim=1).flatten(1)
        t = teacher_feat.detach().abs().pow(p).mean(dim=1).flatten(1)
        return (s - t).pow(2).mean()
    """

TEACHER_IN_TRAIN_MODE = """
    def kd_at_step(student, teacher, x, y, layers, T=4.0, ce_weight=0.1, kd_weight=0.9, at_weight=500.0):
        with kd_ref.FeatureHooks(teacher, layers) as th, kd_ref.FeatureHooks(student, layers) as sh:
            teacher_logits = teacher(x)              # seed 001's mistake: train mode, with gradients
            logits = student(x)
            at = sum(kd_ref.at_loss(s, t) for s, t in zip(sh.values(), th.values()))
        return logits, {"ce": ce_weight * F.cross_entropy(logits, y),
                        "kd": kd_weight * kd_ref.kd_loss(logits, teacher_logits, T=T), "at": at_weight * at}
    """

NO_T_SQUARED = """
    def kd_at_step(student, teacher, x, y, layers, T=4.0, ce_weight=0.1, kd_weight=0.9, at_weight=500.0):
        teacher.eval()
        with torch.no_grad(), kd_ref.FeatureHooks(teacher, layers) as th:
            teacher_logits = teacher(x)
            tf = th.values()
        with kd_ref.FeatureHooks(student, layers) as sh:
            logits = student(x)
            sf = sh.values()
        kd = F.kl_div(F.log_softmax(logits / T, -1), F.softmax(teacher_logits / T, -1), reduction="batchmean")
        at = sum(kd_ref.at_loss(s, t) for s, t in zip(sf, tf))
        return logits, {"ce": ce_weight * F.cross_entropy(logits, y), "kd": kd_weight * kd, "at": at_weight * at}
    """


def scores(path):
    return {q.name: (q.score, q.max_score) for q in grade_notebook(path, SOLUTIONS).questions}


def test_hooks_on_inputs_and_a_teacher_in_train_mode_lose_their_points(tmp_path):
    path = with_answer(EX06, "def capture(", CAPTURES_INPUTS, tmp_path, "a.ipynb")
    path = with_answer(path, "def kd_at_step(", TEACHER_IN_TRAIN_MODE, tmp_path, "a.ipynb")
    got = scores(path)
    assert got["q1"][0] == 0 and got["q3"][0] == 0, got
    assert got["q2"][0] == got["q2"][1] == 4, got                    # the other question keeps its points


def test_a_forgotten_hook_unnormalised_maps_and_a_missing_t_squared_lose_their_points(tmp_path):
    path = with_answer(EX06, "def capture(", LEAVES_HOOKS, tmp_path, "b.ipynb")
    path = with_answer(path, "def at_term(", UNNORMALISED_MAPS, tmp_path, "b.ipynb")
    path = with_answer(path, "def kd_at_step(", NO_T_SQUARED, tmp_path, "b.ipynb")
    got = scores(path)
    assert 0 < got["q1"][0] < got["q1"][1], got                      # right features, but hooks left behind
    assert got["q2"][0] == 0 and got["q3"][0] == 0, got
