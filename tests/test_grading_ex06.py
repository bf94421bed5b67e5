"""Exercise 06 (batched crop and flip on uint8, fidelity, the KD + AT step): mistakes lose their points.

That the solution scores full marks and the untouched exercise 0 is checked for every exercise
by tests/test_grading.py. Here, for each mistake issue 13 lists:

* fast, no kernel: each hidden check of its question, run through the grader's own harness on
  the wrong answer and on the master's, with three salts, is failed by the wrong answer every
  time (the hidden inputs fix which images are flipped, which crops touch the border and which
  samples agree, whatever the salt, so no verdict depends on chance), and passed by the solution;
* fast: calling kd_ref's crop_flip or metrics in the answer is caught, torchvision is forbidden in
  q1's cells, and the two grader rules this exercise needs (a uint8 reference needs a uint8
  answer; a returned dict's key order does not matter) hold;
* slow, whole notebooks in a grading kernel (three cases): the mistakes cost their question's
  points, and the other questions keep theirs.
"""
import functools
import json
import tempfile
import textwrap
from pathlib import Path

import pytest
import torch

from kd_ref.grading import grade as grade_mod
from kd_ref.grading.assign import SOLUTIONS
from kd_ref.grading.rules import rule_for

EX06 = SOLUTIONS / "ex06_feature_kd_step.ipynb"
PRELUDE = "import torch\nimport torch.nn.functional as F\nfrom torch import nn\nimport kd_ref\n"

# --- q1: crop and flip ----------------------------------------------------------------------------------

_GATHER = """
        i, j = torch.arange(h), torch.arange(w)
        rows = top[:, None] + i
        cols = left[:, None] + torch.where(flip[:, None], w - 1 - j, j)
        batch = torch.arange(n)[:, None, None]
        return padded[batch, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
"""
CROP_MISTAKES = {
    # the border is a reflection of the image, not zeros
    "reflect_padding": """
    def crop_and_flip(images, top, left, flip, pad=4):
        n, _, h, w = images.shape
        padded = F.pad(images.float(), (pad, pad, pad, pad), mode="reflect").to(torch.uint8)
    """ + _GATHER,
    # offsets counted from 1 (top = 0 silently wraps to the last row)
    "offsets_off_by_one": """
    def crop_and_flip(images, top, left, flip, pad=4):
        n, _, h, w = images.shape
        padded = F.pad(images, (pad, pad, pad, pad))
        i, j = torch.arange(h), torch.arange(w)
        rows = top[:, None] - 1 + i
        cols = left[:, None] - 1 + torch.where(flip[:, None], w - 1 - j, j)
        batch = torch.arange(n)[:, None, None]
        return padded[batch, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    """,
    # mirrored top-bottom (the height axis)
    "flips_the_rows": """
    def crop_and_flip(images, top, left, flip, pad=4):
        n, _, h, w = images.shape
        padded = F.pad(images, (pad, pad, pad, pad))
        i, j = torch.arange(h), torch.arange(w)
        rows = top[:, None] + torch.where(flip[:, None], h - 1 - i, i)
        cols = left[:, None] + j
        batch = torch.arange(n)[:, None, None]
        return padded[batch, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    """,
    # right pixels as int64 (a float answer fails an integer reference anyway): a uint8 reference needs uint8
    "returns_int64": """
    def crop_and_flip(images, top, left, flip, pad=4):
        n, _, h, w = images.shape
        padded = F.pad(images, (pad, pad, pad, pad)).long()
    """ + _GATHER,
}

# --- q2: agreement scores -------------------------------------------------------------------------------

_SCORES = """
    def agreement_scores(batches):
        n = agree = s_right = t_right = 0
        kl = 0.0
        for s, t, y in batches:
            ps, pt = s.argmax(-1), t.argmax(-1)
            agree += {agree}
            s_right += (ps == y).sum().item()
            t_right += (pt == y).sum().item()
            log_s, log_t = F.log_softmax(s, -1), F.log_softmax(t, -1)
            kl += {kl}
            n += len(y)
        return {{"student_accuracy": s_right / n, "teacher_accuracy": t_right / n, "fidelity": agree / n,
                 "kl": kl / n}}
    """
AGREE, KL = "(ps == pt).sum().item()", "(log_t.exp() * (log_t - log_s)).sum().item()"
SCORE_MISTAKES = {
    # the mean of per-batch fractions: the small last batch weighs as much as a full one
    "mean_of_batch_means": """
    def agreement_scores(batches):
        rows = []
        for s, t, y in batches:
            ps, pt = s.argmax(-1), t.argmax(-1)
            log_s, log_t = F.log_softmax(s, -1), F.log_softmax(t, -1)
            rows.append(((ps == y).float().mean().item(), (pt == y).float().mean().item(),
                         (ps == pt).float().mean().item(), (log_t.exp() * (log_t - log_s)).sum(-1).mean().item()))
        m = [sum(r[k] for r in rows) / len(rows) for k in range(4)]
        return {"student_accuracy": m[0], "teacher_accuracy": m[1], "fidelity": m[2], "kl": m[3]}
    """,
    # agreement counted only where both are right (fidelity confused with accuracy)
    "agreement_only_when_right": _SCORES.format(agree="((ps == pt) & (ps == y)).sum().item()", kl=KL),
    # KL(p_s || p_t): the direction swapped
    "kl_swapped": _SCORES.format(agree=AGREE, kl="(log_s.exp() * (log_s - log_t)).sum().item()"),
}

SALTS = (101, 202, 303)


def _cells():
    return json.loads(EX06.read_text(encoding="utf-8"))["cells"]


def _solution(marker):
    source = next("".join(c["source"]) for c in _cells() if c["cell_type"] == "code"
                  and "".join(c["source"]).startswith(marker))
    return source.replace("# BEGIN SOLUTION", "").replace("# END SOLUTION", "")


def _hidden_checks(question):
    """(name, source) of the master's hidden checks of ``question``."""
    current, found = None, []
    for cell in _cells():
        source = "".join(cell["source"])
        if cell["cell_type"] == "raw" and source.startswith("# BEGIN QUESTION"):
            current = source.split("name:")[1].split()[0]
        elif current == question and cell["cell_type"] == "code" and source.startswith("# HIDDEN"):
            name = source.split("def ")[1].split("(")[0]
            # the cell's last line calls the check in the notebook; otter's test file does not
            found.append((name, "\n".join(line for line in source.splitlines() if not line.startswith(name))))
    assert len(found) == 2, found
    return found


def _record(code, name, source, param, salt, question):
    """The harness's record of one check run on ``code`` (the grader runs the master's the same way)."""
    harness = {}
    exec(compile(grade_mod.HARNESS, "<harness>", "exec"), harness)
    rule = rule_for("ex06_feature_kd_step", question)
    namespace = {}
    exec(PRELUDE + textwrap.dedent(code), namespace)
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "record.pt"
        harness["run_check"](namespace, source, name, [param], salt, list(rule.oracle), list(rule.ops), str(out))
        return torch.load(out, weights_only=True)


@functools.cache
def _reference(name, source, param, salt, question):
    record = _record(_solution(f"def {param}("), name, source, param, salt, question)
    assert record["outcome"][0] == "ok", record["outcome"]
    return record


def _verdict(answer_code, name, source, param, salt, question):
    """The grader's verdict on one hidden check for ``answer_code``, against the master's answer."""
    reference = _reference(name, source, param, salt, question)
    return grade_mod._verdict(_record(answer_code, name, source, param, salt, question), reference)[0]


@pytest.mark.parametrize("question, param, mistake", [
    *(("q1", "crop_and_flip", m) for m in CROP_MISTAKES), *(("q2", "agreement_scores", m) for m in SCORE_MISTAKES)])
def test_each_mistake_fails_every_hidden_check_of_its_question_whatever_the_salt(question, param, mistake, one_thread):
    answer = (CROP_MISTAKES if question == "q1" else SCORE_MISTAKES)[mistake]
    for name, source in _hidden_checks(question):
        for salt in SALTS:
            assert not _verdict(answer, name, source, param, salt, question), f"{mistake} passes {name}, salt {salt}"


@pytest.mark.parametrize("question, param", [("q1", "crop_and_flip"), ("q2", "agreement_scores")])
def test_a_right_answer_written_differently_passes_every_hidden_check(question, param, one_thread):
    looped = """
    def crop_and_flip(images, top, left, flip, pad=4):
        out = torch.empty_like(images)
        h, w = images.shape[-2:]
        for k, image in enumerate(F.pad(images, (pad, pad, pad, pad))):
            crop = image[:, top[k]:top[k] + h, left[k]:left[k] + w]
            out[k] = crop.flip(-1) if flip[k] else crop
        return out
    """
    pooled = """
    def agreement_scores(batches):
        s, t, y = (torch.cat(p) for p in zip(*batches))
        kl = F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), log_target=True, reduction="batchmean")
        return {"kl": kl.item(), "fidelity": (s.argmax(-1) == t.argmax(-1)).float().mean().item(),
                "teacher_accuracy": (t.argmax(-1) == y).float().mean().item(),
                "student_accuracy": (s.argmax(-1) == y).float().mean().item()}
    """
    for name, source in _hidden_checks(question):
        for salt in SALTS:
            assert _verdict(looped if question == "q1" else pooled, name, source, param, salt, question), (name, salt)


def test_the_oracle_and_torchvision_are_forbidden_in_the_rebuilt_questions(one_thread):
    from kd_ref.grading.rules import static_findings
    by_kd_ref = """
    def crop_and_flip(images, top, left, flip, pad=4):
        from kd_ref.data.device_pipeline import crop_flip as c, pad_channels_last as p
        return c(p(images, pad), torch.arange(len(images)), top, left, flip, images.shape[-1]).contiguous()
    """
    by_metrics = """
    def agreement_scores(batches):
        from kd_ref.metrics import accuracy, fidelity as agreement
        s, t, y = (torch.cat(p) for p in zip(*batches))
        return {"student_accuracy": accuracy(s, y), "teacher_accuracy": accuracy(t, y),
                "fidelity": agreement(s, t), "kl": kd_ref.kd_loss(s, t, T=1.0).item()}
    """
    for question, param, code in (("q1", "crop_and_flip", by_kd_ref), ("q2", "agreement_scores", by_metrics)):
        name, source = _hidden_checks(question)[0]
        record = _record(code, name, source, param, SALTS[0], question)
        assert record["forbidden"] and not grade_mod._verdict(record, _reference(name, source, param, SALTS[0],
                                                                                  question))[0]
    assert static_findings("import torchvision.transforms.v2.functional as TF",
                           rule_for("ex06_feature_kd_step", "q1")) == ["import torchvision.transforms.v2.functional"]


def test_the_grader_holds_a_uint8_reference_to_its_dtype_and_other_integers_as_before():
    image = torch.arange(12, dtype=torch.uint8).view(1, 3, 2, 2)
    assert grade_mod._same(image.clone(), image)
    assert not grade_mod._same(image.long(), image) and not grade_mod._same(image.float(), image)
    assert grade_mod._same(image.long().int(), image.long())                  # int32 for int64: unchanged


def test_a_dicts_key_order_is_not_part_of_the_record():
    source = "def test_order(f):\n    f()\n"
    records = []
    for body in ('{"a": 1.0, "b": torch.ones(2)}', '{"b": torch.ones(2), "a": 1.0}'):
        harness, namespace = {}, {}
        exec(compile(grade_mod.HARNESS, "<harness>", "exec"), harness)
        exec(f"import torch\ndef f():\n    return {body}\n", namespace)
        with tempfile.TemporaryDirectory() as scratch:
            out = Path(scratch) / "record.pt"
            harness["run_check"](namespace, source, "test_order", ["f"], None, [], [], str(out))
            records.append(torch.load(out, weights_only=True))
    assert grade_mod._verdict(records[1], records[0])[0]


# --- whole notebooks, graded in a kernel ----------------------------------------------------------------

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

# (answers replaced, {question: expected score}); questions not listed keep full marks.
CASES = {
    "A": ({"def crop_and_flip(": CROP_MISTAKES["reflect_padding"],
           "def agreement_scores(": SCORE_MISTAKES["mean_of_batch_means"]}, {"q1": 0, "q2": 0}),
    "B": ({"def crop_and_flip(": CROP_MISTAKES["flips_the_rows"],
           "def kd_at_step(": TEACHER_IN_TRAIN_MODE}, {"q1": 0, "q3": 0}),
    "C": ({"def agreement_scores(": SCORE_MISTAKES["kl_swapped"],
           "def kd_at_step(": NO_T_SQUARED}, {"q2": 0, "q3": 0}),
}
MAX_SCORES = {"q1": 4.0, "q2": 4.0, "q3": 5.0}


@pytest.mark.slow   # a grading kernel per notebook: `make test`, not `make unit`
@pytest.mark.parametrize("case", sorted(CASES))
def test_mistakes_lose_their_points_and_only_theirs(case, tmp_path):
    from test_grading import assert_scores, grade_with_answers

    answers, expected = CASES[case]
    report = grade_with_answers(EX06, answers, tmp_path, f"mistakes_{case}.ipynb")
    assert_scores(report, MAX_SCORES, expected, case)
