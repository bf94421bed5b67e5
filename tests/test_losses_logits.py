"""kd_ref's logit losses against NumPy, autograd's gradcheck and their known identities."""
import inspect

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import kd_ref
from kd_ref.losses.logits import _dkd_parts

import numpy_ref as ref

T_VALUES = [0.5, 1.0, 4.0, 20.0]


def logits(*shape, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(*shape, generator=g, dtype=torch.float64))


# -- temperature softmax --------------------------------------------------------------

def test_softmax_t_matches_numpy_and_closed_form():
    z = torch.tensor([[0.1, 0.3, 0.6]], dtype=torch.float64)
    e = np.exp([0.1, 0.3, 0.6])
    np.testing.assert_allclose(kd_ref.softmax_t(z).numpy()[0], e / e.sum(), rtol=1e-12)
    # The ERRATA item 1 example: the true softmax is about [0.2584, 0.3156, 0.4260].
    np.testing.assert_allclose(kd_ref.softmax_t(z).numpy()[0], [0.2584, 0.3156, 0.4260], atol=5e-5)
    for T in T_VALUES:
        z = logits(4, 7, seed=1)
        np.testing.assert_allclose(kd_ref.softmax_t(z, T).numpy(), ref.softmax(z.numpy(), T), rtol=1e-12)
        np.testing.assert_allclose(kd_ref.log_softmax_t(z, T).numpy(), np.log(ref.softmax(z.numpy(), T)),
                                   rtol=1e-10, atol=1e-12)


def test_softmax_t_limits_and_stability():
    z = torch.tensor([[1e4, 0.0, -1e4]])
    p = kd_ref.softmax_t(z, T=1.0)
    assert torch.isfinite(p).all() and p[0, 0] == 1.0
    # T -> infinity gives the uniform distribution; dim is honoured.
    np.testing.assert_allclose(kd_ref.softmax_t(logits(3, 5), T=1e9).numpy(), np.full((3, 5), 0.2), atol=1e-8)
    cols = kd_ref.softmax_t(logits(3, 5), T=2.0, dim=0)
    np.testing.assert_allclose(cols.sum(0).numpy(), np.ones(5), rtol=1e-12)


# -- kd_loss -----------------------------------------------------------------------

@pytest.mark.parametrize("T", T_VALUES)
def test_kd_loss_matches_numpy(T):
    s, t = logits(6, 10, seed=2), logits(6, 10, seed=3)
    assert kd_ref.kd_loss(s, t, T=T).item() == pytest.approx(ref.kd(s.numpy(), t.numpy(), T), rel=1e-12)


def test_kd_loss_closed_form_2x3():
    # Two samples, three classes, T = 2; teacher and student written out by hand.
    s = torch.tensor([[0.0, 0.0, 0.0], [2.0, 0.0, 0.0]], dtype=torch.float64)
    t = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    # Row 1: identical distributions, KL = 0.  Row 2: teacher uniform, student
    # softmax([1, 0, 0]) = (e, 1, 1) / (e + 2); KL(u || q) = -log 3 - (1/3) sum log q_i
    #   = -log 3 - (1/3)(1 - 3 log(e + 2)) = log(e + 2) - log 3 - 1/3.
    kl_row2 = np.log(np.e + 2) - np.log(3) - 1 / 3
    expected = 4 * (0 + kl_row2) / 2
    assert kd_ref.kd_loss(s, t, T=2.0).item() == pytest.approx(expected, rel=1e-12)


def test_kd_loss_equals_batchmean_kl_div_times_T2():
    s, t, T = logits(5, 4, seed=4), logits(5, 4, seed=5), 3.0
    torch_way = F.kl_div(F.log_softmax(s / T, -1), F.softmax(t / T, -1), reduction="batchmean") * T * T
    assert kd_ref.kd_loss(s, t, T).item() == pytest.approx(torch_way.item(), rel=1e-12)


@pytest.mark.parametrize("T", T_VALUES)
def test_kd_gradient_is_T_times_ps_minus_pt_over_B(T):
    B = 5
    s, t = logits(B, 6, seed=6).requires_grad_(), logits(B, 6, seed=7)
    kd_ref.kd_loss(s, t, T=T).backward()
    expected = T * (ref.softmax(s.detach().numpy(), T) - ref.softmax(t.numpy(), T)) / B
    np.testing.assert_allclose(s.grad.numpy(), expected, rtol=1e-10, atol=1e-14)


def test_kd_loss_sequence_positions_and_mask():
    s, t = logits(2, 3, 5, seed=8), logits(2, 3, 5, seed=9)
    sn, tn = s.numpy().reshape(6, 5), t.numpy().reshape(6, 5)
    assert kd_ref.kd_loss(s, t, 2.0).item() == pytest.approx(ref.kd(sn, tn, 2.0), rel=1e-12)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    got = kd_ref.kd_loss(s, t, 2.0, mask=mask).item()
    assert got == pytest.approx(ref.kd(sn, tn, 2.0, mask=mask.numpy().reshape(6)), rel=1e-12)
    # Padding content is ignored entirely, even when it is not finite.
    s2 = s.clone()
    s2[1, 2] = float("nan")
    assert kd_ref.kd_loss(s2, t, 2.0, mask=mask).item() == pytest.approx(got, rel=1e-12)
    # An all-padding batch contributes zero, not NaN.
    assert kd_ref.kd_loss(s, t, 2.0, mask=torch.zeros(2, 3, dtype=torch.bool)).item() == 0.0


def test_kd_loss_teacher_is_a_constant():
    s, t = logits(3, 4, seed=10).requires_grad_(), logits(3, 4, seed=11).requires_grad_()
    kd_ref.kd_loss(s, t).backward()
    assert t.grad is None and s.grad is not None


# -- soft cross-entropy ------------------------------------------------------------

@pytest.mark.parametrize("T", T_VALUES)
def test_soft_ce_matches_numpy_and_differs_from_kd_by_teacher_entropy(T):
    s, t = logits(4, 6, seed=12), logits(4, 6, seed=13)
    sce = kd_ref.soft_cross_entropy(s, t, T).item()
    assert sce == pytest.approx(ref.soft_ce(s.numpy(), t.numpy(), T), rel=1e-12)
    h_t = ref.entropy(ref.softmax(t.numpy(), T)).mean()
    assert sce - kd_ref.kd_loss(s, t, T).item() == pytest.approx(T * T * h_t, rel=1e-10)


def test_soft_ce_and_kd_have_the_same_gradient():
    s1, t = logits(4, 6, seed=14).requires_grad_(), logits(4, 6, seed=15)
    s2 = s1.detach().clone().requires_grad_()
    kd_ref.kd_loss(s1, t, 3.0).backward()
    kd_ref.soft_cross_entropy(s2, t, 3.0).backward()
    np.testing.assert_allclose(s1.grad.numpy(), s2.grad.numpy(), rtol=1e-10, atol=1e-14)


# -- distillation_loss -------------------------------------------------------------

def test_distillation_loss_is_the_named_weighted_sum():
    s, t, y = logits(8, 5, seed=16), logits(8, 5, seed=17), torch.tensor([0, 1, 2, 3, 4, 0, 1, 2])
    got = kd_ref.distillation_loss(s, t, y, T=3.0, kd_weight=0.7, ce_weight=0.4).item()
    expected = 0.7 * ref.kd(s.numpy(), t.numpy(), 3.0) + 0.4 * ref.cross_entropy(s.numpy(), y.numpy())
    assert got == pytest.approx(expected, rel=1e-12)
    params = inspect.signature(kd_ref.distillation_loss).parameters
    assert "alpha" not in params and params["kd_weight"].default == 0.9 and params["ce_weight"].default == 0.1


def test_distillation_loss_mask_applies_to_both_terms():
    s, t = logits(2, 3, 4, seed=18), logits(2, 3, 4, seed=19)
    y = torch.tensor([[0, 1, 2], [3, 0, 1]])
    mask = torch.tensor([[True, False, True], [True, True, False]])
    keep = mask.numpy().reshape(-1)
    sn, tn, yn = s.numpy().reshape(6, 4)[keep], t.numpy().reshape(6, 4)[keep], y.numpy().reshape(-1)[keep]
    got = kd_ref.distillation_loss(s, t, y, T=2.0, kd_weight=0.5, ce_weight=0.5, mask=mask).item()
    assert got == pytest.approx(0.5 * ref.kd(sn, tn, 2.0) + 0.5 * ref.cross_entropy(sn, yn), rel=1e-12)
    # Padding labels (-100, as Hugging Face writes them) are fine where the mask is False.
    padded = y.masked_fill(~mask, -100)
    again = kd_ref.distillation_loss(s, t, padded, T=2.0, kd_weight=0.5, ce_weight=0.5, mask=mask).item()
    assert again == pytest.approx(got, rel=1e-12)
    with pytest.raises(ValueError, match="at unmasked positions"):
        kd_ref.distillation_loss(s, t, padded, mask=mask | torch.tensor([[False, True, False], [False] * 3]))


# -- DKD ---------------------------------------------------------------------------

@pytest.mark.parametrize("T", [1.0, 4.0])
def test_dkd_matches_the_authors_computation(T):
    s, t = logits(6, 10, seed=20), logits(6, 10, seed=21)
    y = torch.tensor([0, 3, 9, 2, 2, 5])
    got = kd_ref.dkd_loss(s, t, y, alpha=1.0, beta=8.0, T=T).item()
    assert got == pytest.approx(ref.dkd_authors(s.numpy(), t.numpy(), y.numpy(), 1.0, 8.0, T), rel=1e-10)


def test_dkd_decomposition_per_sample():
    # KL(p_t || p_s) = TCKD + (1 - p_t[target]) * NCKD, sample by sample (Zhao et al. 2022, eq. 7).
    T = 2.0
    s, t = logits(7, 5, seed=22), logits(7, 5, seed=23)
    y = torch.tensor([0, 1, 2, 3, 4, 0, 1])
    tckd, nckd = _dkd_parts(s, t, y, T)
    pt = ref.softmax(t.numpy(), T)
    kl = ref.kl(pt, ref.softmax(s.numpy(), T))
    np.testing.assert_allclose(tckd.numpy() + (1 - pt[np.arange(7), y.numpy()]) * nckd.numpy(), kl, rtol=1e-10)
    # With alpha = 1 and beta = 1 - p_t (per sample) DKD is KD; with alpha = beta = 1 it is an upper bound.
    assert kd_ref.dkd_loss(s, t, y, alpha=1.0, beta=1.0, T=T).item() >= kd_ref.kd_loss(s, t, T).item()


def _dkd_the_authors_way(s, t, y, alpha=1.0, beta=8.0, T=4.0):
    """The authors' arithmetic in PyTorch: softmax, then log of the binary probabilities."""
    gt = F.one_hot(y, s.shape[1]).bool()
    ps, pt = F.softmax(s / T, 1), F.softmax(t / T, 1)
    bs = torch.stack([(ps * gt).sum(1), (ps * ~gt).sum(1)], 1)
    bt = torch.stack([(pt * gt).sum(1), (pt * ~gt).sum(1)], 1)
    tckd = F.kl_div(torch.log(bs), bt, reduction="sum") * T * T / len(y)
    nckd = F.kl_div(F.log_softmax(s / T - 1000 * gt, 1), F.softmax(t / T - 1000 * gt, 1),
                    reduction="sum") * T * T / len(y)
    return alpha * tckd + beta * nckd


def test_dkd_finite_where_the_authors_code_is_not():
    s = torch.zeros(2, 10, dtype=torch.float32)
    s[:, 3] = 400.0                                          # a very confident student, T = 4
    t = torch.randn(2, 10, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([3, 3])
    theirs_in = s.clone().requires_grad_()
    theirs = _dkd_the_authors_way(theirs_in, t, y)
    theirs.backward()
    assert torch.isnan(theirs_in.grad).all()                 # 1 / p_other overflows float32
    s.requires_grad_()
    loss = kd_ref.dkd_loss(s, t, y, T=4.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()
    # The value agrees with the authors' formula evaluated in float64, where nothing underflows.
    exact = ref.dkd_authors(s.detach().double().numpy(), t.double().numpy(), y.numpy(), 1.0, 8.0, 4.0)
    assert loss.item() == pytest.approx(exact, rel=1e-6)


# -- gradients, precision, extremes -------------------------------------------------

def test_gradcheck_logit_losses():
    s, t = logits(3, 4, seed=24).requires_grad_(), logits(3, 4, seed=25)
    y = torch.tensor([0, 2, 3])
    mask = torch.tensor([True, False, True])
    for fn in (lambda a: kd_ref.kd_loss(a, t, 2.5), lambda a: kd_ref.kd_loss(a, t, 2.5, mask=mask),
               lambda a: kd_ref.soft_cross_entropy(a, t, 0.7),
               lambda a: kd_ref.distillation_loss(a, t, y, T=3.0, kd_weight=0.6, ce_weight=0.4),
               lambda a: kd_ref.dkd_loss(a, t, y, alpha=1.0, beta=8.0, T=4.0),
               lambda a: kd_ref.log_softmax_t(a, 2.0).sum()):
        assert torch.autograd.gradcheck(fn, (s,))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_inputs_compute_in_float32(dtype):
    s, t = logits(4, 6, seed=26).to(dtype), logits(4, 6, seed=27).to(dtype)
    y = torch.tensor([0, 1, 2, 3])
    for fn in (kd_ref.kd_loss, kd_ref.soft_cross_entropy):
        out = fn(s, t, 4.0)
        assert out.dtype == torch.float32
        assert out.item() == pytest.approx(fn(s.float(), t.float(), 4.0).item(), rel=1e-6)
    assert kd_ref.distillation_loss(s, t, y).dtype == torch.float32
    assert kd_ref.dkd_loss(s, t, y).dtype == torch.float32
    assert kd_ref.softmax_t(s).dtype == torch.float32


def test_extreme_logits_give_finite_loss_and_gradient():
    g = torch.Generator().manual_seed(28)
    s = (1e4 * torch.randn(4, 6, generator=g)).requires_grad_()
    t = 1e4 * torch.randn(4, 6, generator=g)
    y = torch.tensor([0, 1, 2, 3])
    for fn in (lambda: kd_ref.kd_loss(s, t, 1.0), lambda: kd_ref.kd_loss(s, t, 4.0),
               lambda: kd_ref.soft_cross_entropy(s, t, 4.0), lambda: kd_ref.distillation_loss(s, t, y),
               lambda: kd_ref.dkd_loss(s, t, y)):
        s.grad = None
        loss = fn()
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(s.grad).all()


# -- bad input ------------------------------------------------------------------------

@pytest.mark.parametrize("fn", [kd_ref.kd_loss, kd_ref.soft_cross_entropy])
def test_bad_input_raises_value_error_naming_the_argument(fn):
    s, t = torch.randn(4, 5), torch.randn(4, 5)
    with pytest.raises(ValueError, match=r"student_logits.*\(4, 5\).*teacher_logits.*\(4, 6\)"):
        fn(s, torch.randn(4, 6))                                   # wrong class count
    with pytest.raises(ValueError, match=r"student_logits.*\(3, 5\)"):
        fn(torch.randn(3, 5), t)                                   # batch mismatch
    for T in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="T must be a positive finite number"):
            fn(s, t, T)
    with pytest.raises(ValueError, match=r"mask must have shape .*\(4\).*got mask \(4, 1\)"):
        fn(s, t, 4.0, mask=torch.ones(4, 1, dtype=torch.bool))
    with pytest.raises(ValueError, match="student_logits must have at least 2"):
        fn(torch.randn(5), torch.randn(5))


def test_bad_targets_and_weights():
    s, t = torch.randn(4, 5), torch.randn(4, 5)
    with pytest.raises(ValueError, match=r"targets must have shape .*\(4\).*got targets \(4, 1\)"):
        kd_ref.distillation_loss(s, t, torch.zeros(4, 1, dtype=torch.long))
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 5\).*\[0, 5\]"):
        kd_ref.distillation_loss(s, t, torch.tensor([0, 1, 2, 5]))
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 5\).*\[-1, 2\]"):
        kd_ref.dkd_loss(s, t, torch.tensor([0, -1, 2, 2]))
    with pytest.raises(ValueError, match="integer class indices"):
        kd_ref.distillation_loss(s, t, torch.zeros(4))
    for bad in (float("nan"), float("inf"), -0.5):
        with pytest.raises(ValueError, match="kd_weight must be a finite number"):
            kd_ref.distillation_loss(s, t, torch.zeros(4, dtype=torch.long), kd_weight=bad)
        with pytest.raises(ValueError, match="beta must be a finite number"):
            kd_ref.dkd_loss(s, t, torch.zeros(4, dtype=torch.long), beta=bad)
    with pytest.raises(ValueError, match=r"student_logits must have shape \(batch, num_classes >= 2\)"):
        kd_ref.dkd_loss(torch.randn(2, 3, 4), torch.randn(2, 3, 4), torch.zeros(2, 3, dtype=torch.long))


def test_the_distilbert_objective_is_distillation_loss_plus_the_cosine_term():
    """Hugging Face's DistilBERT script (examples/research_projects/distillation/distiller.py) with
    --restrict_ce_to_mask: alpha_ce * T^2 * KL(batchmean) on the masked tokens + alpha_mlm * MLM
    cross-entropy + alpha_cos * cosine embedding loss on the non-padding hidden states. With
    kd_weight = alpha_ce and ce_weight = alpha_mlm on the same masked tokens it is
    distillation_loss(mask=mlm) + alpha_cos * hidden_state_cosine_loss(mask=attention). (Moved here
    from lesson 02: it needs sequences, masks and hidden states.)"""
    import torch.nn.functional as F

    import kd_ref

    torch.manual_seed(2)
    B, L, V, d = 2, 6, 11, 8
    s_logits = torch.randn(B, L, V, dtype=torch.float64)
    t_logits = torch.randn(B, L, V, dtype=torch.float64) * 2
    h_s, h_t = torch.randn(B, L, d, dtype=torch.float64), torch.randn(B, L, d, dtype=torch.float64)
    attn = torch.ones(B, L, dtype=torch.bool)
    attn[1, -1] = False                                            # one padding token
    mlm = torch.zeros(B, L, dtype=torch.bool)
    mlm[0, 1] = mlm[0, 4] = mlm[1, 0] = mlm[1, 3] = True           # 4 masked tokens
    tokens = torch.randint(0, V, (B, L))
    lm_labels = torch.where(mlm, tokens, torch.full_like(tokens, -100))
    T, a_ce, a_mlm, a_cos = 2.0, 5.0, 2.0, 1.0

    sel = mlm.unsqueeze(-1).expand_as(s_logits)
    s_sel, t_sel = s_logits.masked_select(sel).view(-1, V), t_logits.masked_select(sel).view(-1, V)
    loss_ce = F.kl_div(F.log_softmax(s_sel / T, -1), F.softmax(t_sel / T, -1), reduction="batchmean") * T**2
    loss_mlm = F.cross_entropy(s_logits.view(-1, V), lm_labels.view(-1), ignore_index=-100)
    hs_sel = h_s.masked_select(attn.unsqueeze(-1)).view(-1, d)
    ht_sel = h_t.masked_select(attn.unsqueeze(-1)).view(-1, d)
    loss_cos = F.cosine_embedding_loss(hs_sel, ht_sel, torch.ones(hs_sel.shape[0], dtype=torch.float64))
    literal = a_ce * loss_ce + a_mlm * loss_mlm + a_cos * loss_cos

    ours = (kd_ref.distillation_loss(s_logits, t_logits, tokens, T=T, kd_weight=a_ce, ce_weight=a_mlm, mask=mlm)
            + a_cos * kd_ref.hidden_state_cosine_loss(h_s, h_t, mask=attn))
    torch.testing.assert_close(ours, literal, rtol=0, atol=1e-12)
