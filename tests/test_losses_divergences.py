"""Reverse KL, GKD's generalised JSD and DistiLLM's skew KLs against NumPy, gradcheck,
a finite difference and their known identities."""
import inspect
import math

import numpy as np
import pytest
import torch

import kd_ref

import numpy_ref as ref

BETAS = [0.0, 0.1, 0.5, 0.9, 1.0]
T_VALUES = [0.5, 1.0, 4.0]


def logits(*shape, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(*shape, generator=g, dtype=torch.float64)


def binary_entropy(beta):
    return -sum(w * math.log(w) for w in (beta, 1 - beta) if w > 0)


# -- against NumPy -----------------------------------------------------------------------

@pytest.mark.parametrize("T", T_VALUES)
def test_reverse_kl_matches_numpy(T):
    s, t = logits(6, 10, seed=1), logits(6, 10, seed=2)
    assert kd_ref.reverse_kl_loss(s, t, T).item() == pytest.approx(ref.reverse_kl(s.numpy(), t.numpy(), T), rel=1e-12)


def test_reverse_kl_closed_form_2x3():
    # Student uniform over 3 tokens, teacher softmax([1, 0, 0]) = (e, 1, 1) / (e + 2):
    # KL(u || q) = -log 3 - (1/3) sum_i log q_i = log(e + 2) - log 3 - 1/3 (per position).
    s = torch.zeros(2, 3, dtype=torch.float64)
    t = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    expected = (np.log(np.e + 2) - np.log(3) - 1 / 3 + 0.0) / 2
    assert kd_ref.reverse_kl_loss(s, t).item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("T", T_VALUES)
def test_generalized_jsd_matches_numpy(beta, T):
    s, t = logits(5, 7, seed=3), logits(5, 7, seed=4)
    got = kd_ref.generalized_jsd_loss(s, t, beta=beta, T=T).item()
    assert got == pytest.approx(ref.generalized_jsd(s.numpy(), t.numpy(), beta, T), rel=1e-10)


@pytest.mark.parametrize("alpha", [0.0, 0.1, 0.5, 0.9])
@pytest.mark.parametrize("T", [1.0, 2.0])
def test_skew_kls_match_numpy(alpha, T):
    s, t = logits(5, 7, seed=5), logits(5, 7, seed=6)
    got = kd_ref.skew_kl_loss(s, t, alpha=alpha, T=T).item()
    assert got == pytest.approx(ref.skew_kl(s.numpy(), t.numpy(), alpha, T), rel=1e-10)
    got = kd_ref.skew_reverse_kl_loss(s, t, alpha=alpha, T=T).item()
    assert got == pytest.approx(ref.skew_reverse_kl(s.numpy(), t.numpy(), alpha, T), rel=1e-10)


def test_defaults_follow_trl_and_distillm():
    sig = inspect.signature
    jsd_args = ["student_logits", "teacher_logits", "beta", "T", "mask"]
    assert list(sig(kd_ref.generalized_jsd_loss).parameters) == jsd_args
    assert sig(kd_ref.generalized_jsd_loss).parameters["beta"].default == 0.5
    assert list(sig(kd_ref.reverse_kl_loss).parameters) == ["student_logits", "teacher_logits", "T", "mask"]
    assert sig(kd_ref.reverse_kl_loss).parameters["T"].default == 1.0
    for fn in (kd_ref.skew_kl_loss, kd_ref.skew_reverse_kl_loss):
        assert sig(fn).parameters["alpha"].default == 0.1


def test_skew_kl_and_the_authors_cross_entropy_differ_by_teacher_entropy():
    # DistiLLM's skewed_forward_kl returns -sum p_t log m (cross-entropy), not the KL.
    s, t, alpha = logits(4, 6, seed=7), logits(4, 6, seed=8), 0.1
    ps, pt = ref.softmax(s.numpy()), ref.softmax(t.numpy())
    theirs = -(pt * np.log(alpha * pt + (1 - alpha) * ps)).sum(-1).mean()
    ours = kd_ref.skew_kl_loss(s, t, alpha).item()
    assert theirs - ours == pytest.approx(ref.entropy(pt).mean(), rel=1e-10)


# -- identities -------------------------------------------------------------------------

@pytest.mark.parametrize("T", T_VALUES)
def test_jsd_end_points_are_exactly_forward_and_reverse_kl(T):
    s, t = logits(3, 4, 9, seed=9), logits(3, 4, 9, seed=10)
    mask = torch.rand(3, 4, generator=torch.Generator().manual_seed(0)) > 0.3
    for m in (None, mask):
        assert kd_ref.generalized_jsd_loss(s, t, 0.0, T, m).item() == kd_ref.kd_loss(s, t, T, m).item()
        assert kd_ref.generalized_jsd_loss(s, t, 1.0, T, m).item() == kd_ref.reverse_kl_loss(s, t, T, m).item()
        assert kd_ref.skew_kl_loss(s, t, 0.0, T, m).item() == kd_ref.kd_loss(s, t, T, m).item()
        assert kd_ref.skew_reverse_kl_loss(s, t, 0.0, T, m).item() == kd_ref.reverse_kl_loss(s, t, T, m).item()


def test_jsd_interior_shrinks_like_beta_times_kl_so_the_end_points_jump():
    # With moderate logits J/beta -> KL within a few beta (with peaked ones more slowly,
    # because the mixture bounds the log-ratio at -log beta).
    s, t = logits(6, 8, seed=11, scale=1.0), logits(6, 8, seed=12, scale=1.0)
    forward, reverse = kd_ref.kd_loss(s, t, 1.0).item(), kd_ref.reverse_kl_loss(s, t).item()
    for eps in (1e-3, 1e-5):
        near_0 = kd_ref.generalized_jsd_loss(s, t, eps).item()
        near_1 = kd_ref.generalized_jsd_loss(s, t, 1 - eps).item()
        assert near_0 / eps == pytest.approx(forward, rel=5 * eps)         # ~ beta * KL(p_t || p_s)
        assert near_1 / eps == pytest.approx(reverse, rel=5 * eps)         # ~ (1 - beta) * KL(p_s || p_t)
        assert near_0 < 0.01 * forward and near_1 < 0.01 * reverse         # the jump at the ends


@pytest.mark.parametrize("beta", [0.0, 0.2, 0.5, 0.7, 1.0])
def test_jsd_symmetry_swapping_roles_and_beta(beta):
    s, t = logits(4, 5, 6, seed=13), logits(4, 5, 6, seed=14)
    a = kd_ref.generalized_jsd_loss(s, t, beta, T=2.0).item()
    b = kd_ref.generalized_jsd_loss(t, s, 1 - beta, T=2.0).item()
    assert a == pytest.approx(b, rel=1e-12)


def test_jsd_bounds():
    for seed in range(10):
        scale = [0.3, 3.0, 30.0][seed % 3]
        s, t = logits(8, 11, seed=100 + seed, scale=scale), logits(8, 11, seed=200 + seed, scale=scale)
        for beta in (0.05, 0.3, 0.5, 0.8, 0.99):
            for T in (1.0, 3.0):
                jsd = kd_ref.generalized_jsd_loss(s, t, beta, T).item()
                assert 0.0 <= jsd <= T * T * binary_entropy(beta) * (1 + 1e-12)
    # Identical distributions give 0; disjoint supports (almost) reach the bound.
    assert kd_ref.generalized_jsd_loss(s, s, 0.3).item() == pytest.approx(0.0, abs=1e-15)
    far_s = torch.tensor([[200.0, 0.0]], dtype=torch.float64)
    far_t = torch.tensor([[0.0, 200.0]], dtype=torch.float64)
    assert kd_ref.generalized_jsd_loss(far_s, far_t, 0.3).item() == pytest.approx(binary_entropy(0.3), rel=1e-12)


def test_skew_kl_bounds_and_jsd_decomposition():
    s, t = logits(5, 9, seed=15, scale=20.0), logits(5, 9, seed=16, scale=20.0)
    for alpha in (0.05, 0.1, 0.5):
        for fn in (kd_ref.skew_kl_loss, kd_ref.skew_reverse_kl_loss):
            assert 0.0 <= fn(s, t, alpha).item() <= -math.log(alpha)
    for beta in (0.1, 0.5, 0.8):
        jsd = kd_ref.generalized_jsd_loss(s, t, beta, T=2.0).item()
        parts = (beta * kd_ref.skew_kl_loss(s, t, beta, T=2.0).item()
                 + (1 - beta) * kd_ref.skew_reverse_kl_loss(s, t, 1 - beta, T=2.0).item())
        assert jsd == pytest.approx(parts, rel=1e-12)


# -- gradients --------------------------------------------------------------------------

def test_reverse_kl_gradient_closed_form_and_finite_difference():
    N, V, T = 4, 6, 2.0
    s, t = logits(N, V, seed=17).requires_grad_(), logits(N, V, seed=18)
    kd_ref.reverse_kl_loss(s, t, T).backward()
    # Closed form: T * p_s * (r - E_{p_s}[r]) / N with r = log p_s - log p_t.
    ps = ref.softmax(s.detach().numpy(), T)
    r = np.log(ps) - np.log(ref.softmax(t.numpy(), T))
    expected = T * ps * (r - (ps * r).sum(-1, keepdims=True)) / N
    np.testing.assert_allclose(s.grad.numpy(), expected, rtol=1e-10, atol=1e-14)
    # Central finite difference of the NumPy oracle, entry by entry.
    h = 1e-6
    fd = np.zeros((N, V))
    base = s.detach().numpy()
    for i in range(N):
        for j in range(V):
            up, down = base.copy(), base.copy()
            up[i, j] += h
            down[i, j] -= h
            fd[i, j] = (ref.reverse_kl(up, t.numpy(), T) - ref.reverse_kl(down, t.numpy(), T)) / (2 * h)
    np.testing.assert_allclose(s.grad.numpy(), fd, rtol=1e-6, atol=1e-9)


def test_gradcheck_divergences():
    s, t = logits(2, 3, 4, seed=19).requires_grad_(), logits(2, 3, 4, seed=20)
    mask = torch.tensor([[True, False, True], [True, True, False]])
    fns = [lambda a: kd_ref.reverse_kl_loss(a, t, 1.5, mask)]
    fns += [lambda a, b=b: kd_ref.generalized_jsd_loss(a, t, b, 1.5, mask) for b in BETAS]
    fns += [lambda a: kd_ref.skew_kl_loss(a, t, 0.1, 2.0, mask), lambda a: kd_ref.skew_reverse_kl_loss(a, t, 0.3)]
    for fn in fns:
        assert torch.autograd.gradcheck(fn, (s,))


def test_teacher_is_a_constant():
    for fn in (kd_ref.reverse_kl_loss, kd_ref.generalized_jsd_loss, kd_ref.skew_kl_loss, kd_ref.skew_reverse_kl_loss):
        s, t = logits(3, 4, seed=21).requires_grad_(), logits(3, 4, seed=22).requires_grad_()
        fn(s, t).backward()
        assert t.grad is None and s.grad is not None


# -- masks ------------------------------------------------------------------------------

DIVERGENCES = {
    "reverse_kl": (kd_ref.reverse_kl_loss, lambda s, t, T, m: ref.reverse_kl(s, t, T, m)),
    "jsd_0.3": (lambda s, t, T, mask: kd_ref.generalized_jsd_loss(s, t, 0.3, T, mask),
                lambda s, t, T, m: ref.generalized_jsd(s, t, 0.3, T, m)),
    "jsd_0": (lambda s, t, T, mask: kd_ref.generalized_jsd_loss(s, t, 0.0, T, mask),
              lambda s, t, T, m: ref.generalized_jsd(s, t, 0.0, T, m)),
    "jsd_1": (lambda s, t, T, mask: kd_ref.generalized_jsd_loss(s, t, 1.0, T, mask),
              lambda s, t, T, m: ref.generalized_jsd(s, t, 1.0, T, m)),
    "skew": (lambda s, t, T, mask: kd_ref.skew_kl_loss(s, t, 0.1, T, mask),
             lambda s, t, T, m: ref.skew_kl(s, t, 0.1, T, m)),
    "skew_reverse": (lambda s, t, T, mask: kd_ref.skew_reverse_kl_loss(s, t, 0.1, T, mask),
                     lambda s, t, T, m: ref.skew_reverse_kl(s, t, 0.1, T, m)),
}


@pytest.mark.parametrize("name", sorted(DIVERGENCES))
def test_padded_positions_do_not_count(name):
    fn, oracle = DIVERGENCES[name]
    s, t = logits(2, 4, 5, seed=23), logits(2, 4, 5, seed=24)
    mask = torch.tensor([[True, True, True, False], [True, True, False, False]])   # lengths 3 and 2
    got = fn(s, t, 2.0, mask).item()
    assert got == pytest.approx(oracle(s.numpy(), t.numpy(), 2.0, mask.numpy()), rel=1e-10)
    # The same as the real positions alone, each counted once.
    real_s = torch.cat([s[0, :3], s[1, :2]])
    real_t = torch.cat([t[0, :3], t[1, :2]])
    assert got == pytest.approx(fn(real_s, real_t, 2.0, None).item(), rel=1e-12)
    # Padding content is ignored, even when it is not finite; all padding gives 0.
    s2, t2 = s.clone(), t.clone()
    s2[1, 3], t2[0, 3] = float("nan"), float("inf")
    assert fn(s2, t2, 2.0, mask).item() == pytest.approx(got, rel=1e-12)
    assert fn(s, t, 2.0, torch.zeros(2, 4, dtype=torch.bool)).item() == 0.0
    # A 0/1 integer mask means the same as a bool one.
    assert fn(s, t, 2.0, mask.long()).item() == pytest.approx(got, rel=1e-12)


# -- numerics ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(DIVERGENCES))
def test_extreme_logits_give_finite_loss_and_gradient(name):
    fn, _ = DIVERGENCES[name]
    g = torch.Generator().manual_seed(25)
    s32 = (1e4 * torch.randn(4, 6, generator=g)).requires_grad_()
    t32 = 1e4 * torch.randn(4, 6, generator=g)
    for T in (1.0, 4.0):
        s32.grad = None
        loss = fn(s32, t32, T, None)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(s32.grad).all()
        # float32 agrees with the same inputs in float64.
        exact = fn(s32.detach().double(), t32.double(), T, None).item()
        assert loss.item() == pytest.approx(exact, rel=1e-4, abs=1e-3)


@pytest.mark.parametrize("name", sorted(DIVERGENCES))
def test_vocabulary_padding_rows_at_minus_infinity(name):
    # Hugging Face models may pad the vocabulary with -inf logits in both models.
    fn, oracle = DIVERGENCES[name]
    s, t = logits(3, 6, seed=26), logits(3, 6, seed=27)
    s[:, 4:], t[:, 4:] = float("-inf"), float("-inf")
    s.requires_grad_()
    loss = fn(s, t, 1.0, None)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()
    assert loss.item() == pytest.approx(oracle(s.detach().numpy()[:, :4], t.numpy()[:, :4], 1.0, None), rel=1e-10)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_inputs_compute_in_float32(dtype):
    s, t = logits(4, 6, seed=28).to(dtype), logits(4, 6, seed=29).to(dtype)
    for name, (fn, _) in DIVERGENCES.items():
        out = fn(s, t, 2.0, None)
        assert out.dtype == torch.float32, name
        assert out.item() == pytest.approx(fn(s.float(), t.float(), 2.0, None).item(), rel=1e-6)


# -- bad input --------------------------------------------------------------------------

@pytest.mark.parametrize("fn", [kd_ref.reverse_kl_loss, kd_ref.generalized_jsd_loss, kd_ref.skew_kl_loss,
                                kd_ref.skew_reverse_kl_loss])
def test_bad_input_raises_value_error_naming_the_argument(fn):
    s, t = torch.randn(2, 3, 5), torch.randn(2, 3, 5)
    with pytest.raises(ValueError, match=r"student_logits.*\(2, 3, 5\).*teacher_logits.*\(2, 3, 7\)"):
        fn(s, torch.randn(2, 3, 7))                                          # vocabularies differ
    with pytest.raises(ValueError, match="student_logits must have at least 2"):
        fn(torch.randn(5), torch.randn(5))
    for T in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="T must be a positive finite number"):
            fn(s, t, T=T)
    with pytest.raises(ValueError, match=r"mask must have shape .*\(2, 3\).*got mask \(2, 4\)"):
        fn(s, t, mask=torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="must be a torch.Tensor"):
        fn(s.tolist(), t)


def test_bad_mixing_weights():
    s, t = torch.randn(3, 4), torch.randn(3, 4)
    for bad in (-0.1, 1.5, float("nan"), True):
        with pytest.raises(ValueError, match=r"beta must be a number in \[0, 1\]"):
            kd_ref.generalized_jsd_loss(s, t, beta=bad)
    for fn in (kd_ref.skew_kl_loss, kd_ref.skew_reverse_kl_loss):
        for bad in (1.0, -0.5, float("inf")):
            with pytest.raises(ValueError, match=r"alpha must be a number in \[0, 1\)"):
                fn(s, t, alpha=bad)
