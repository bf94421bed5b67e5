"""Lesson 10's study pieces (kd_ref.recipes.teacher_choice), each against an independent computation."""
import copy

import numpy as np
import pytest
import torch

from kd_ref.data import TensorBatches
from kd_ref.distillers import LogitKD
from kd_ref.losses.cached import topk_targets
from kd_ref.models import DigitsCNN
from kd_ref.recipes.teacher_choice import (CachedKD, CountingTeacher, ShiftedBatches, cluster_spread, shift_images,
                                           tail_mass, template_plane)
from kd_ref.train import fit


def np_shift(img, dy, dx):
    # Zero-filled shift of one (C, H, W) image, written with np.pad and slicing.
    C, H, W = img.shape
    padded = np.pad(img, ((0, 0), (H, H), (W, W)))
    return padded[:, H - dy:2 * H - dy, W - dx:2 * W - dx]


def test_shift_images_matches_numpy():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(12, 2, 8, 8, generator=g)
    shifts = torch.randint(-2, 3, (12, 2), generator=g)
    out = shift_images(x, shifts)
    for i in range(12):
        expected = np_shift(x[i].numpy(), *shifts[i].tolist())
        np.testing.assert_array_equal(out[i].numpy(), expected)
    assert torch.equal(shift_images(x, torch.zeros(12, 2, dtype=torch.long)), x)


def test_shift_images_rejects_bad_input():
    with pytest.raises(ValueError, match="shifts"):
        shift_images(torch.zeros(3, 1, 8, 8), torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="smaller than the image"):
        shift_images(torch.zeros(1, 1, 8, 8), torch.tensor([[8, 0]]))


def test_shifted_batches_draw_new_views_reproducibly():
    x = torch.arange(4 * 64, dtype=torch.float32).reshape(4, 1, 8, 8) + 1
    base = TensorBatches(x, torch.arange(4), batch_size=4)
    a = [b[0] for b in ShiftedBatches(base, 1, seed=3)]
    b = [b[0] for b in ShiftedBatches(base, 1, seed=3)]
    assert len(ShiftedBatches(base, 1)) == 1 and torch.equal(a[0], b[0])
    views = ShiftedBatches(base, 1, seed=3)
    first, second = next(iter(views))[0], next(iter(views))[0]
    assert not torch.equal(first, second)                       # a new shift every time an image is served
    for i in range(4):                                          # each view is one of the 9 shifts of its image
        assert any(np.array_equal(first[i].numpy(), np_shift(x[i].numpy(), dy, dx))
                   for dy in (-1, 0, 1) for dx in (-1, 0, 1))
    with pytest.raises(ValueError, match="max_shift"):
        ShiftedBatches(base, -1)


def test_cached_kd_trains_exactly_like_logit_kd():
    torch.manual_seed(0)
    x = torch.rand(40, 1, 8, 8, dtype=torch.float64)
    y = torch.randint(0, 10, (40,))
    y[::3] = -1                                                 # unlabelled examples of the transfer set
    teacher = DigitsCNN(4).double().eval()
    student = DigitsCNN(2).double()
    twin = copy.deepcopy(student)
    with torch.no_grad():
        logits = teacher(x)
    s_logits, live = LogitKD(copy.deepcopy(student), teacher, T=4.0)(x, y)
    _, cached = CachedKD(copy.deepcopy(student), topk_targets(logits, 10, T=4.0), y)(x, torch.arange(40))
    for name in ("kd", "ce"):
        torch.testing.assert_close(cached[name], live[name], rtol=1e-12, atol=1e-12)
    fit(LogitKD(student, teacher, T=4.0), TensorBatches(x, y, 16, shuffle=True, seed=1), epochs=2, lr=1e-2)
    fit(CachedKD(twin, topk_targets(logits, 10, T=4.0), y), TensorBatches(x, torch.arange(40), 16, shuffle=True, seed=1),
        epochs=2, lr=1e-2)
    for p, q in zip(student.parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="labels"):
        CachedKD(twin, topk_targets(logits, 10), y[:5])


def test_counting_teacher_counts_images_and_calls():
    counting = CountingTeacher(torch.nn.Flatten())
    out = counting(torch.zeros(5, 1, 8, 8))
    counting(torch.zeros(3, 1, 8, 8))
    assert out.shape == (5, 64) and counting.images == 8 and counting.calls == 2 and counting.seconds >= 0


def test_template_plane_matches_numpy_and_keeps_distances():
    rng = np.random.default_rng(0)
    templates = rng.normal(size=(3, 6))
    features = rng.normal(size=(7, 6))
    coords = template_plane(torch.from_numpy(features), torch.from_numpy(templates)).numpy()
    # independent: an orthonormal basis of span(w1 - w0, w2 - w0) from NumPy's QR, fixed in sign
    q, r = np.linalg.qr(np.stack([templates[1] - templates[0], templates[2] - templates[0]], 1))
    q = q * np.sign(np.diag(r))
    np.testing.assert_allclose(coords, (features - templates[0]) @ q, rtol=1e-12, atol=1e-12)
    on_plane = template_plane(torch.from_numpy(templates), torch.from_numpy(templates)).numpy()
    for i in range(3):
        for j in range(3):
            np.testing.assert_allclose(np.linalg.norm(on_plane[i] - on_plane[j]),
                                       np.linalg.norm(templates[i] - templates[j]), rtol=1e-12)
    normal = np.linalg.svd(np.stack([templates[1] - templates[0], templates[2] - templates[0]]))[2][-1]
    moved = template_plane(torch.from_numpy(features + 3.0 * normal), torch.from_numpy(templates)).numpy()
    np.testing.assert_allclose(moved, coords, atol=1e-12)     # a step orthogonal to the plane does not move a point


def test_template_plane_rejects_bad_input():
    with pytest.raises(ValueError, match="templates"):
        template_plane(torch.zeros(4, 5), torch.zeros(2, 5))
    with pytest.raises(ValueError, match="collinear"):
        template_plane(torch.zeros(4, 2), torch.tensor([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]]))


def test_cluster_spread_matches_numpy():
    rng = np.random.default_rng(1)
    coords = rng.normal(size=(30, 2))
    labels = np.repeat([0, 1, 2], 10)
    cents = np.stack([coords[labels == c].mean(0) for c in range(3)])
    within = np.mean([np.linalg.norm(coords[i] - cents[labels[i]]) for i in range(30)])
    between = np.mean([np.linalg.norm(cents[a] - cents[b]) for a, b in ((0, 1), (0, 2), (1, 2))])
    assert cluster_spread(torch.from_numpy(coords), torch.from_numpy(labels)) == pytest.approx(within / between, rel=1e-12)
    with pytest.raises(ValueError, match="two classes"):
        cluster_spread(torch.zeros(3, 2), torch.zeros(3, dtype=torch.long))


def test_tail_mass_matches_numpy():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(6, 10)) * 3
    p = np.exp(logits / 2.0)
    p /= p.sum(1, keepdims=True)
    expected = np.mean(1 - np.sort(p, 1)[:, -3:].sum(1))
    assert tail_mass(torch.from_numpy(logits), 3, 2.0) == pytest.approx(expected, rel=1e-10)
    assert tail_mass(torch.from_numpy(logits), 10, 2.0) == 0.0
