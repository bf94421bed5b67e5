"""RKD and similarity-preserving losses against loop-by-loop NumPy and gradcheck."""
import pytest
import torch

import kd_ref

import numpy_ref as ref


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_rkd_distance_matches_numpy():
    s, t = rand(6, 3, seed=1), rand(6, 8, seed=2)
    assert kd_ref.rkd_distance_loss(s, t).item() == pytest.approx(ref.rkd_distance(s.numpy(), t.numpy()), rel=1e-12)


def test_rkd_distance_closed_form():
    # Student: three points on a line at 0, 1, 2 -> distances 1, 1, 2 (mean 4/3).
    # Teacher: an equilateral triangle -> all distances equal (normalised to 1).
    s = torch.tensor([[0.0], [1.0], [2.0]], dtype=torch.float64)
    t = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.5, 3**0.5 / 2]], dtype=torch.float64)
    # Normalised student distances: 3/4, 3/4, 3/2 against 1, 1, 1 -> |diff| 1/4, 1/4, 1/2, each
    # appearing twice in the 3x3 matrix; smooth-L1: 0.5 d^2 -> (2 * (1/32 + 1/32 + 1/8)) / 9.
    assert kd_ref.rkd_distance_loss(s, t).item() == pytest.approx(2 * (1 / 32 + 1 / 32 + 1 / 8) / 9, rel=1e-12)


def test_rkd_angle_matches_numpy_triplet_loops():
    s, t = rand(5, 4, seed=3), rand(5, 7, seed=4)
    assert kd_ref.rkd_angle_loss(s, t).item() == pytest.approx(ref.rkd_angle(s.numpy(), t.numpy()), rel=1e-12)


def test_rkd_loss_weights_and_scale_invariance():
    s, t = rand(6, 4, seed=5), rand(6, 9, seed=6)
    d, a = kd_ref.rkd_distance_loss(s, t).item(), kd_ref.rkd_angle_loss(s, t).item()
    assert kd_ref.rkd_loss(s, t).item() == pytest.approx(25 * d + 50 * a, rel=1e-12)
    assert kd_ref.rkd_loss(s, t, distance_weight=1, angle_weight=0).item() == pytest.approx(d, rel=1e-12)
    # Scaling either embedding (and translating it) changes neither loss.
    assert kd_ref.rkd_loss(3.7 * s + 1.0, 0.2 * t - 5.0).item() == pytest.approx(25 * d + 50 * a, rel=1e-10)
    # Rotating the student changes nothing either: only relations are compared.
    q, _ = torch.linalg.qr(rand(4, 4, seed=7))
    assert kd_ref.rkd_loss(s @ q, t).item() == pytest.approx(25 * d + 50 * a, rel=1e-10)


def test_sp_loss_matches_numpy_and_closed_form():
    fs, ft = rand(4, 3, 2, 2, seed=8), rand(4, 10, seed=9)     # any widths, flattened per sample
    assert kd_ref.sp_loss(fs, ft).item() == pytest.approx(ref.sp(fs.numpy(), ft.numpy()), rel=1e-12)
    # Orthonormal rows give G = I for the teacher; identical rows give G = ones / sqrt(B) rows.
    t = torch.eye(2, dtype=torch.float64)
    s = torch.ones(2, 2, dtype=torch.float64)
    # G_s rows (1, 1)/sqrt 2; G_t = I; squared Frobenius difference = 2 * ((1 - 1/sqrt2)^2 + 1/2).
    assert kd_ref.sp_loss(s, t).item() == pytest.approx(2 * ((1 - 2**-0.5) ** 2 + 0.5) / 4, rel=1e-12)
    assert kd_ref.sp_loss(3.0 * ft, ft).item() == pytest.approx(0.0, abs=1e-14)


def test_relation_losses_gradcheck():
    s, t = rand(4, 3, seed=10).requires_grad_(), rand(4, 5, seed=11)
    for fn in (kd_ref.rkd_distance_loss, kd_ref.rkd_angle_loss, kd_ref.rkd_loss, kd_ref.sp_loss):
        assert torch.autograd.gradcheck(lambda a: fn(a, t), (s,))


def test_relation_losses_bad_input():
    with pytest.raises(ValueError, match=r"same batch size.*student \(4, 3\).*teacher \(5, 3\)"):
        kd_ref.rkd_loss(rand(4, 3), rand(5, 3))
    with pytest.raises(ValueError, match=r"student_feat and teacher_feat must have the same batch size"):
        kd_ref.sp_loss(rand(4, 3), rand(5, 3))
    with pytest.raises(ValueError, match=r"at least 2 samples"):
        kd_ref.rkd_distance_loss(rand(1, 3), rand(1, 3))
    with pytest.raises(ValueError, match="angle_weight must be a finite number"):
        kd_ref.rkd_loss(rand(4, 3), rand(4, 3), angle_weight=float("nan"))
