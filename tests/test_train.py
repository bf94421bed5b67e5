"""The training loop, the distillers, seeding and profiles."""
import copy
import random
from functools import partial

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kd_ref import kd_loss, masked_cross_entropy
from kd_ref.data import TensorBatches
from kd_ref.distillers import Distiller, LogitKD, PseudoLabelKD, Scratch
from kd_ref.profiles import get_profile, profile_device
from kd_ref.train import ClassifierScores, cosine_schedule, evaluate, fit, predict, seed_everything


def blobs(n=96, seed=0):
    """Three well-separated Gaussian classes in 2-D: a problem a linear model solves."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    centres = torch.tensor([[4.0, 0.0], [-2.0, 3.5], [-2.0, -3.5]])
    return centres[y] + torch.randn(n, 2, generator=g), y


def teacher_net():
    """Dropout and BatchNorm: both behave differently in train mode, so eval mode is visible."""
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(2, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 3))


def trained_teacher():
    teacher = teacher_net()
    x, y = blobs()
    fit(Scratch(teacher), TensorBatches(x, y, 32, shuffle=True), epochs=30, lr=1e-2)
    return teacher


# -- masked cross-entropy ---------------------------------------------------------------

def test_masked_cross_entropy_ignores_unlabelled_samples():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 4, generator=g, dtype=torch.float64)
    targets = torch.tensor([2, -1, 0, -1, -1, 3])
    labelled = targets >= 0
    expected = F.cross_entropy(logits[labelled], targets[labelled])
    assert torch.allclose(masked_cross_entropy(logits, targets), expected, rtol=1e-12)


def test_masked_cross_entropy_of_an_unlabelled_batch_is_zero_not_nan():
    logits = torch.randn(5, 4, requires_grad=True)
    loss = masked_cross_entropy(logits, torch.full((5,), -1))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros(5, 4))
    # What it replaces: PyTorch's ignore_index gives NaN on such a batch.
    assert F.cross_entropy(logits, torch.full((5,), -1), ignore_index=-1).isnan()


# -- distillers ---------------------------------------------------------------------------

def test_distillers_return_logits_and_named_weighted_terms():
    x, y = blobs(8)
    y = torch.where(torch.arange(8) < 4, y, torch.full_like(y, -1))   # half unlabelled
    student, teacher = nn.Linear(2, 3), trained_teacher()
    t = teacher.eval()(x).detach()

    logits, terms = Scratch(student)(x, y)
    assert logits.shape == (8, 3) and list(terms) == ["ce"]
    assert torch.allclose(terms["ce"], F.cross_entropy(student(x)[:4], y[:4]))

    logits, terms = LogitKD(student, teacher, T=2.0, kd_weight=0.7, ce_weight=0.3)(x, y)
    assert sorted(terms) == ["ce", "kd"]
    assert torch.allclose(terms["kd"], 0.7 * kd_loss(student(x), t, T=2.0))
    assert torch.allclose(terms["ce"], 0.3 * F.cross_entropy(student(x)[:4], y[:4]))

    logits, terms = PseudoLabelKD(student, teacher, pseudo_weight=0.6, ce_weight=0.4)(x, y)
    assert sorted(terms) == ["ce", "pseudo"]
    assert torch.allclose(terms["pseudo"], 0.6 * F.cross_entropy(student(x), t.argmax(1)))


def test_distiller_keeps_its_teacher_in_eval_mode_and_frozen():
    distiller = LogitKD(nn.Linear(2, 3), teacher_net())
    distiller.train()
    assert distiller.student.training and not distiller.teacher.training
    assert not any(p.requires_grad for p in distiller.teacher.parameters())
    with pytest.raises(NotImplementedError):
        Distiller(nn.Linear(2, 3))(torch.zeros(1, 2), torch.zeros(1))


# -- the loop -----------------------------------------------------------------------------

def test_fit_decreases_the_loss_and_logs_every_term_by_name():
    x, y = blobs()
    teacher = trained_teacher()
    seed_everything(0)
    student = nn.Linear(2, 3)
    history = fit(LogitKD(student, teacher), TensorBatches(x, y, 32, shuffle=True), epochs=15, lr=3e-2,
                  validate=ClassifierScores(TensorBatches(x, y, 96), teacher=teacher))
    assert len(history) == 15 and [h["epoch"] for h in history] == list(range(1, 16))
    assert [h["step"] for h in history] == [3 * e for e in range(1, 16)]                    # 3 batches per epoch
    assert {"loss", "kd", "ce", "val_accuracy", "val_fidelity", "val_ece"} <= history[0].keys()
    for h in history:
        assert h["loss"] == pytest.approx(h["kd"] + h["ce"])
    assert history[-1]["loss"] < 0.3 * history[0]["loss"]
    assert history[-1]["val_accuracy"] >= 0.95 and history[-1]["val_fidelity"] >= 0.95


def test_teacher_stays_in_eval_and_is_never_changed_by_training():
    x, y = blobs()
    teacher = trained_teacher()
    before = copy.deepcopy(teacher.state_dict())   # includes BatchNorm's running statistics
    reference = teacher.eval()(x)
    fit(LogitKD(nn.Linear(2, 3), teacher), TensorBatches(x, y, 32, shuffle=True), epochs=3, lr=1e-2,
        validate=ClassifierScores(TensorBatches(x, y, 96), teacher=teacher))
    assert not teacher.training
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    for name, value in teacher.state_dict().items():
        assert torch.equal(value, before[name]), name     # running stats unchanged: it ran in eval mode
    assert torch.equal(teacher(x), reference)


def test_fit_learns_from_unlabelled_samples_through_the_teacher_only():
    x, y = blobs()
    unlabelled = torch.full_like(y, -1)
    teacher = trained_teacher()
    seed_everything(0)
    student = nn.Linear(2, 3)
    start = evaluate(student, TensorBatches(x, y, 96), teacher=teacher)["fidelity"]
    history = fit(LogitKD(student, teacher), TensorBatches(x, unlabelled, 32, shuffle=True), epochs=10, lr=3e-2)
    assert all(h["ce"] == 0.0 for h in history)                      # no label: CE is 0, never NaN
    assert history[-1]["kd"] < history[0]["kd"]
    assert start < 0.7 and evaluate(student, TensorBatches(x, y, 96), teacher=teacher)["fidelity"] >= 0.95

    scratch = nn.Linear(2, 3)
    weights = copy.deepcopy(scratch.state_dict())
    history = fit(Scratch(scratch), TensorBatches(x, unlabelled, 32), epochs=2, lr=1e-2)
    assert history[-1]["loss"] == 0.0
    assert all(torch.equal(v, weights[k]) for k, v in scratch.state_dict().items())  # nothing to learn from


def test_fit_under_bf16_autocast_still_learns():
    x, y = blobs()
    seed_everything(0)
    student = nn.Linear(2, 3)
    history = fit(Scratch(student), TensorBatches(x, y, 32, shuffle=True), epochs=10, lr=3e-2,
                  autocast_dtype=torch.bfloat16, validate=ClassifierScores(TensorBatches(x, y, 96)))
    assert student.weight.dtype == torch.float32                      # weights stay full precision
    assert history[-1]["ce"] < 0.5 * history[0]["ce"] and history[-1]["val_accuracy"] >= 0.95


def test_fit_guard_rails():
    x, y = blobs(8)

    class NoTerms(Distiller):
        def forward(self, x, y):
            return self.student(x), {}

    class NaNLoss(Distiller):
        def forward(self, x, y):
            return self.student(x), {"broken": self.student(x).sum() * float("nan")}

    with pytest.raises(ValueError, match="at least one loss term"):
        fit(NoTerms(nn.Linear(2, 3)), TensorBatches(x, y, 4), epochs=1)
    with pytest.raises(FloatingPointError, match="not finite"):
        fit(NaNLoss(nn.Linear(2, 3)), TensorBatches(x, y, 4), epochs=1)
    with pytest.raises(ValueError, match="epochs"):
        fit(Scratch(nn.Linear(2, 3)), TensorBatches(x, y, 4), epochs=0)
    with pytest.raises(ValueError, match="eval_every"):
        fit(Scratch(nn.Linear(2, 3)), TensorBatches(x, y, 4), eval_every=0)
    with pytest.raises(TypeError, match="Distiller"):
        fit(nn.Linear(2, 3), TensorBatches(x, y, 4))                       # a plain model: wrap it in Scratch
    with pytest.raises(ValueError, match="state_dict"):
        fit(Scratch(nn.Linear(2, 3)), [(x, y)], checkpoint="unused.pt")    # its order could not be resumed


def test_masked_cross_entropy_matches_pytorch_on_sequences_masks_and_smoothing():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 5, 7, generator=g, dtype=torch.float64)         # (B, L, V)
    targets = torch.randint(0, 7, (2, 5), generator=g)
    targets[1, 3:] = -1                                                      # padding
    real = targets != -1
    expected = F.cross_entropy(logits[real], targets[real], label_smoothing=0.2)
    assert torch.allclose(masked_cross_entropy(logits, targets, label_smoothing=0.2), expected, rtol=1e-12)
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[0, 0] = False                                                       # a mask removes positions too
    keep = real & mask
    assert torch.allclose(masked_cross_entropy(logits, targets, mask), F.cross_entropy(logits[keep], targets[keep]),
                          rtol=1e-12)
    with pytest.raises(ValueError, match="targets must be integer class indices of shape"):
        masked_cross_entropy(logits, targets[:, :4])
    with pytest.raises(ValueError, match="label_smoothing"):
        masked_cross_entropy(logits, targets, label_smoothing=1.0)


# -- the loop's options -------------------------------------------------------------------

def test_cosine_schedule_closed_form():
    lr = cosine_schedule(1.0, total_steps=10, warmup=2, final=0.1)
    assert [lr(0), lr(1)] == pytest.approx([0.5, 1.0])                       # linear warm-up
    assert lr(2) == pytest.approx(1.0) and lr(10) == pytest.approx(0.1)     # cosine from the peak to final
    assert lr(6) == pytest.approx(0.1 + 0.9 * 0.5)                           # half-way: the mean of the two
    with pytest.raises(ValueError, match="total_steps"):
        cosine_schedule(1.0, 0)


def test_fit_uses_the_schedule_of_each_step_and_records_every_n_steps():
    x, y = blobs()
    seen = []

    def schedule(step):
        seen.append(step)
        return 0.01 * (step + 1)

    history = fit(Scratch(nn.Linear(2, 3)), TensorBatches(x, y, 32), epochs=3, lr=schedule, eval_every=4,
                  validate=ClassifierScores(TensorBatches(x, y, 96)))
    assert seen == list(range(9))                                            # 3 epochs x 3 batches
    assert [h["step"] for h in history] == [4, 8, 9]                        # every 4 steps, and the last
    assert [h["lr"] for h in history] == pytest.approx([0.01, 0.05, 0.09])  # the interval's first step
    assert [h["epoch"] for h in history] == pytest.approx([4 / 3, 8 / 3, 3])
    assert all("val_accuracy" in h for h in history)                        # a validation curve


def test_gradient_clipping_bounds_the_step():
    x, y = blobs(32)
    sgd = partial(torch.optim.SGD)
    moves = {}
    for clip in (None, 0.01):
        seed_everything(0)
        model = nn.Linear(2, 3)
        before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
        fit(Scratch(model), TensorBatches(x, y, 32), lr=lambda step: 1.0, optimizer=sgd, grad_clip=clip)
        after = torch.cat([p.detach().flatten() for p in model.parameters()])
        moves[clip] = float((after - before).norm())                         # = lr * the (clipped) gradient norm
    assert moves[0.01] == pytest.approx(0.01, rel=1e-5) and moves[None] > 0.1


def test_teacher_validation_logits_are_computed_once_per_run():
    x, y = blobs()

    class Counting(nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net, self.calls = net, 0

        def forward(self, x):
            self.calls += 1
            return self.net(x)

    teacher = Counting(trained_teacher())
    fit(LogitKD(nn.Linear(2, 3), teacher), TensorBatches(x, y, 32), epochs=4,
        validate=ClassifierScores(TensorBatches(x, y, 48), teacher=teacher))
    assert teacher.calls == 4 * 3 + 2       # one per training step, then the 2 validation batches once


def test_distiller_interface_progress_and_close():
    class Recording(Scratch):
        def __init__(self, student):
            super().__init__(student)
            self.progress, self.closed = [], False

        def set_progress(self, epochs_done):
            self.progress.append(epochs_done)

        def close(self):
            self.closed = True

    x, y = blobs(64)
    with Recording(nn.Linear(2, 3)) as distiller:
        fit(distiller, TensorBatches(x, y, 32), epochs=2)
        assert distiller.progress == pytest.approx([0.5, 1.0, 1.5, 2.0]) and not distiller.closed
    assert distiller.closed                                                  # leaving the block closes it


def test_predict_runs_in_eval_mode_without_a_graph():
    x, y = blobs(10)
    model = teacher_net().train()
    logits, labels = predict(model, TensorBatches(x, y, 4))
    assert logits.shape == (10, 3) and not logits.requires_grad and torch.equal(labels, y)
    assert not model.training


def test_seed_everything_makes_every_generator_repeat():
    def draw():
        return random.random(), np.random.rand(), torch.rand(1).item()
    seed_everything(123)
    first = draw()
    seed_everything(123)
    assert draw() == first


# -- profiles -----------------------------------------------------------------------------

def test_get_profile(monkeypatch):
    monkeypatch.delenv("KD_PROFILE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert get_profile() == "cpu"                      # the default, auto, without CUDA
    assert get_profile("Smoke") == "smoke" and get_profile("gpu") == "gpu"
    monkeypatch.setenv("KD_PROFILE", "smoke")
    assert get_profile() == "smoke"
    monkeypatch.setenv("KD_PROFILE", "auto")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert get_profile() == "gpu"
    monkeypatch.setenv("KD_PROFILE", "fast")
    with pytest.raises(ValueError, match="unknown profile 'fast'"):
        get_profile()


def test_profile_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert profile_device("gpu").type == "cpu" and profile_device("smoke").type == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert profile_device("gpu").type == "cuda" and profile_device("cpu").type == "cpu"
