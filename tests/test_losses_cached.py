"""Cached top-k teacher targets (kd_ref.losses.cached) against NumPy, with their identities."""
import numpy as np
import pytest
import torch

from kd_ref import TopKTargets, cached_kd_loss, kd_loss, topk_targets
from kd_ref.losses.cached import full_bytes_per_position
from numpy_ref import kl, softmax


def bucket_kd(s, t, k, T):
    """NumPy: the teacher's top k classes plus one bucket for the rest, against the student's same buckets."""
    p, q = softmax(t, T), softmax(s, T)
    out = []
    for p_row, q_row in zip(p.reshape(-1, p.shape[-1]), q.reshape(-1, q.shape[-1])):
        top = np.argsort(-p_row, kind="stable")[:k]
        rest = np.setdiff1d(np.arange(len(p_row)), top)
        P = np.append(p_row[top], p_row[rest].sum())
        Q = np.append(q_row[top], q_row[rest].sum())
        out.append(T * T * kl(P, Q))
    return np.mean(out)


@pytest.mark.parametrize("k", [1, 3, 7, 10])
@pytest.mark.parametrize("T", [1.0, 4.0])
def test_matches_numpy(k, T):
    g = torch.Generator().manual_seed(k)
    s, t = torch.randn(2, 5, 10, generator=g, dtype=torch.float64) * 3, torch.randn(2, 5, 10, generator=g, dtype=torch.float64) * 3
    loss = cached_kd_loss(s, topk_targets(t, k, T))
    assert loss.item() == pytest.approx(bucket_kd(s.numpy(), t.numpy(), k, T), rel=1e-10, abs=1e-12)


def test_exact_for_k_equal_to_the_classes_and_a_lower_bound_otherwise():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(16, 12, generator=g, dtype=torch.float64), torch.randn(16, 12, generator=g, dtype=torch.float64) * 2
    full = kd_loss(s, t, T=2.0)
    assert torch.allclose(cached_kd_loss(s, topk_targets(t, 12, 2.0)), full, rtol=1e-12, atol=0)
    previous = torch.tensor(0.0, dtype=torch.float64)
    for k in range(1, 13):                                  # more kept classes: never further from the full KL
        loss = cached_kd_loss(s, topk_targets(t, k, 2.0))
        assert previous - 1e-12 <= loss <= full + 1e-12
        previous = loss


def test_the_gap_is_the_tails_kl_weighted_by_its_mass():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(8, 9, generator=g, dtype=torch.float64), torch.randn(8, 9, generator=g, dtype=torch.float64) * 2
    k, T = 4, 1.5
    gap = (kd_loss(s, t, T) - cached_kd_loss(s, topk_targets(t, k, T))).item()
    p, q = softmax(t.numpy(), T), softmax(s.numpy(), T)
    expected = []
    for p_row, q_row in zip(p, q):
        rest = np.argsort(-p_row, kind="stable")[k:]
        r_p, r_q = p_row[rest].sum(), q_row[rest].sum()
        expected.append(T * T * r_p * kl(p_row[rest] / r_p, q_row[rest] / r_q))
    assert gap == pytest.approx(np.mean(expected), rel=1e-9)


def test_gradcheck_float64_and_mask():
    g = torch.Generator().manual_seed(2)
    s = torch.randn(3, 4, 6, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randn(3, 4, 6, generator=g, dtype=torch.float64)
    mask = torch.rand(3, 4, generator=g) > 0.3
    for k in (2, 6):
        targets = topk_targets(t, k, 2.0)
        assert torch.autograd.gradcheck(lambda x: cached_kd_loss(x, targets, mask), (s,))
    masked = cached_kd_loss(s, topk_targets(t, 3, 2.0), mask)
    kept = cached_kd_loss(s[mask], topk_targets(t[mask], 3, 2.0))
    assert torch.allclose(masked, kept, rtol=1e-12)


def test_finite_at_extreme_logits():
    s = torch.tensor([[1e4, -1e4, 0.0, 5.0]], requires_grad=True)
    t = torch.tensor([[-1e4, 1e4, 3.0, 0.0]])
    for k in (1, 2, 4):
        loss = cached_kd_loss(s, topk_targets(t, k, 1.0))
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(s.grad).all()
        s.grad = None


def test_the_remainder_is_computed_without_cancellation():
    t = torch.tensor([[40.0, 0.0, 0.0, 0.0]], dtype=torch.float64)   # the rest holds about 3 e^-40
    targets = topk_targets(t, 1)
    assert targets.log_remainder.item() == pytest.approx(np.log(3) - 40, rel=1e-9)   # log(1 - p_top) would be -inf


def test_memory_per_position():
    targets = topk_targets(torch.randn(2, 3, 100), 8)
    assert targets.bytes_per_position() == 8 * (4 + 2) + 2        # int32 indices, fp16 values, the remainder
    assert full_bytes_per_position(100) == 200
    assert isinstance(targets, TopKTargets) and targets.k == 8 and targets.num_classes == 100


def test_bad_input_names_the_argument():
    t = torch.randn(4, 10)
    with pytest.raises(ValueError, match=r"k must be an integer in \[1, 10\]"):
        topk_targets(t, 11)
    with pytest.raises(ValueError, match="k must be"):
        topk_targets(t, 0)
    with pytest.raises(ValueError, match="T must"):
        topk_targets(t, 3, T=0.0)
    targets = topk_targets(t, 3)
    with pytest.raises(ValueError, match=r"student_logits \(4, 9\)"):
        cached_kd_loss(torch.randn(4, 9), targets)
    with pytest.raises(ValueError, match="mask must have shape"):
        cached_kd_loss(torch.randn(4, 10), targets, mask=torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="TopKTargets"):
        cached_kd_loss(torch.randn(4, 10), t)


def test_indexing_selects_the_targets_of_those_positions():
    teacher = torch.randn(6, 4, 10, dtype=torch.float64)
    targets = topk_targets(teacher, k=3, T=2.0)
    index = torch.tensor([4, 0, 4])
    picked = targets[index]
    want = topk_targets(teacher[index], k=3, T=2.0)
    for name in ("indices", "log_probs", "log_remainder"):
        assert torch.equal(getattr(picked, name), getattr(want, name)), name
    assert (picked.num_classes, picked.T) == (10, 2.0)
