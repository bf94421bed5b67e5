"""Attention-transfer and transformer attention losses against NumPy and gradcheck."""
import numpy as np
import pytest
import torch

import kd_ref

import numpy_ref as ref


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_attention_map_matches_numpy_and_is_unit_norm():
    f = rand(3, 5, 4, 4, seed=1)
    for p in (1, 2, 3):
        got = kd_ref.attention_map(f, p).numpy()
        np.testing.assert_allclose(got, ref.attention_map(f.numpy(), p), rtol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(kd_ref.attention_map(f).numpy(), axis=1), np.ones(3), rtol=1e-12)
    # Tiny closed form: one channel [[1, 0], [0, 1]] -> map (1, 0, 0, 1) / sqrt(2).
    one = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]], dtype=torch.float64)
    np.testing.assert_allclose(kd_ref.attention_map(one).numpy(), [[2**-0.5, 0, 0, 2**-0.5]], rtol=1e-12)


def test_at_loss_matches_numpy_for_equal_and_pooled_sizes():
    fs, ft = rand(2, 4, 6, 6, seed=2), rand(2, 9, 6, 6, seed=3)   # channel counts may differ
    assert kd_ref.at_loss(fs, ft).item() == pytest.approx(ref.at(fs.numpy(), ft.numpy()), rel=1e-12)
    big = rand(2, 3, 12, 12, seed=4)                            # the larger map is pooled 2x2
    expected = ref.at(ref.avg_pool(big.numpy(), 2), ft.numpy())
    assert kd_ref.at_loss(big, ft).item() == pytest.approx(expected, rel=1e-12)
    assert kd_ref.at_loss(ft, big).item() == pytest.approx(ref.at(ft.numpy(), ref.avg_pool(big.numpy(), 2)), rel=1e-12)


def test_at_loss_is_invariant_to_permuting_channels():
    fs, ft = rand(3, 8, 5, 5, seed=5), rand(3, 16, 5, 5, seed=6)
    base = kd_ref.at_loss(fs, ft).item()
    perm_s, perm_t = torch.randperm(8), torch.randperm(16)
    assert kd_ref.at_loss(fs[:, perm_s], ft[:, perm_t]).item() == pytest.approx(base, rel=1e-12)
    assert kd_ref.at_loss(ft, ft).item() == 0.0


def test_at_gradcheck_and_errors():
    fs, ft = rand(2, 3, 4, 4, seed=7).requires_grad_(), rand(2, 5, 2, 2, seed=8)
    assert torch.autograd.gradcheck(lambda a: kd_ref.at_loss(a, ft), (fs,))
    with pytest.raises(ValueError, match=r"same batch size B.*\(2, 3, 4, 4\).*\(3, 5, 2, 2\)"):
        kd_ref.at_loss(fs, rand(3, 5, 2, 2))
    with pytest.raises(ValueError, match=r"feat must have shape \(B, C, H, W\), got feat \(2, 3\)"):
        kd_ref.attention_map(rand(2, 3))


def causal(L):
    return torch.tril(torch.ones(L, L, dtype=torch.bool))[None, None]


def test_attention_score_loss_matches_numpy_with_masks():
    s, t = rand(2, 3, 4, 4, seed=9), rand(2, 3, 4, 4, seed=10)
    assert kd_ref.attention_score_loss(s, t).item() == pytest.approx(((s - t) ** 2).mean().item(), rel=1e-12)
    tokens = torch.tensor([[True, True, True, False], [True, True, False, False]])
    pair = (tokens[:, None, :, None] & tokens[:, None, None, :]).expand(2, 3, 4, 4).numpy()
    sq = (s.numpy() - t.numpy()) ** 2
    assert kd_ref.attention_score_loss(s, t, tokens).item() == pytest.approx(sq[pair].mean(), rel=1e-12)
    # A causal model's scores are -inf above the diagonal: excluded, so the loss stays finite.
    c = causal(4)
    s_c, t_c = s.masked_fill(~c, float("-inf")), t.masked_fill(~c, float("-inf"))
    got = kd_ref.attention_score_loss(s_c, t_c, c).item()
    assert got == pytest.approx(sq[np.broadcast_to(c.numpy(), sq.shape)].mean(), rel=1e-12)


def test_attention_kl_loss_matches_numpy():
    s_scores, t_scores = rand(2, 2, 5, 5, seed=11), rand(2, 2, 5, 5, seed=12)
    c = causal(5)
    p_s = torch.softmax(s_scores.masked_fill(~c, float("-inf")), -1)
    p_t = torch.softmax(t_scores.masked_fill(~c, float("-inf")), -1)
    expected = ref.kl(p_t.numpy(), p_s.numpy()).mean()          # KL(teacher || student) per row
    assert kd_ref.attention_kl_loss(p_s, p_t).item() == pytest.approx(expected, rel=1e-12)


def test_attention_kl_padding_mask_with_unequal_lengths():
    # Sequence 0 has 5 real tokens, sequence 1 has 3 then 2 of padding. The padded batch
    # must give the same loss as the two sequences computed alone, rows weighted equally.
    H, L = 2, 5
    lengths = [5, 3]
    tokens = torch.tensor([[i < n for i in range(L)] for n in lengths])
    pair = tokens[:, None, :, None] & tokens[:, None, None, :] & causal(L)
    scores_s, scores_t = rand(2, H, L, L, seed=13), rand(2, H, L, L, seed=14)
    p_s = torch.softmax(scores_s.masked_fill(~pair, float("-inf")), -1).nan_to_num(0.0)
    p_t = torch.softmax(scores_t.masked_fill(~pair, float("-inf")), -1).nan_to_num(0.0)
    rows = []
    for b, n in enumerate(lengths):
        cs = torch.softmax(scores_s[b, :, :n, :n].masked_fill(~causal(n)[0], float("-inf")), -1)
        ct = torch.softmax(scores_t[b, :, :n, :n].masked_fill(~causal(n)[0], float("-inf")), -1)
        rows.append(ref.kl(ct.numpy(), cs.numpy()).reshape(-1))
    expected = np.concatenate(rows).mean()
    assert kd_ref.attention_kl_loss(p_s, p_t, tokens).item() == pytest.approx(expected, rel=1e-12)
    # And the score loss with the same padding + causal mask equals the unpadded computation.
    got = kd_ref.attention_score_loss(scores_s, scores_t, pair).item()
    sq = [((scores_s[b, :, :n, :n] - scores_t[b, :, :n, :n]) ** 2)[causal(n)[0].expand(H, n, n)].numpy()
          for b, n in enumerate(lengths)]
    assert got == pytest.approx(np.concatenate(sq).mean(), rel=1e-12)


def test_attention_losses_gradcheck():
    s, t = rand(1, 2, 3, 3, seed=15).requires_grad_(), rand(1, 2, 3, 3, seed=16)
    tokens = torch.tensor([[True, True, False]])
    assert torch.autograd.gradcheck(lambda a: kd_ref.attention_score_loss(a, t, tokens), (s,))
    p_t = torch.softmax(t, -1)
    assert torch.autograd.gradcheck(lambda a: kd_ref.attention_kl_loss(torch.softmax(a, -1), p_t, tokens), (s,))


def test_attention_losses_bad_input():
    s = rand(2, 4, 3, 3)
    with pytest.raises(ValueError, match=r"head counts must match.*\(2, 4, 3, 3\).*\(2, 2, 3, 3\)"):
        kd_ref.attention_score_loss(s, rand(2, 2, 3, 3))
    with pytest.raises(ValueError, match=r"mask must be a \(B, L\) = \(2, 3\) token mask.*got mask \(2, 4\)"):
        kd_ref.attention_score_loss(s, s, torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"mask must be a \(B, L\) = \(2, 3\) token mask, got mask \(3, 3\)"):
        kd_ref.attention_kl_loss(s.softmax(-1), s.softmax(-1), torch.ones(3, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"student_probs must have shape \(B, heads, L, L\)"):
        kd_ref.attention_kl_loss(rand(2, 4, 3, 5), rand(2, 4, 3, 5))


# -- attention KL from scores or log-probabilities (stable) -------------------------------

def test_attention_kl_from_scores_matches_numpy_and_the_probs_form():
    s, t = rand(2, 2, 5, 5, seed=17), rand(2, 2, 5, 5, seed=18)
    c = causal(5)
    s_c, t_c = s.masked_fill(~c, float("-inf")), t.masked_fill(~c, float("-inf"))
    expected = ref.attention_kl_from_scores(s_c.numpy(), t_c.numpy())
    got = kd_ref.attention_kl_loss(s_c, t_c, inputs="scores").item()
    assert got == pytest.approx(expected, rel=1e-12)
    probs = kd_ref.attention_kl_loss(s_c.softmax(-1), t_c.softmax(-1)).item()
    logs = kd_ref.attention_kl_loss(s_c.log_softmax(-1), t_c.log_softmax(-1), inputs="log_probs").item()
    assert probs == pytest.approx(got, rel=1e-12) and logs == pytest.approx(got, rel=1e-12)


def test_attention_kl_scores_with_padding_equal_each_sequence_alone():
    # Padded keys are removed before the softmax, padded queries are not averaged; the
    # model may leave padded scores as anything (here: garbage, and -inf rows).
    H, L, lengths = 2, 5, [5, 3]
    tokens = torch.tensor([[i < n for i in range(L)] for n in lengths])
    s, t = rand(2, H, L, L, seed=19), rand(2, H, L, L, seed=20)
    c = causal(L)
    s_c, t_c = s.masked_fill(~c, float("-inf")), t.masked_fill(~c, float("-inf"))
    s_c[1, :, 3:, :] = float("-inf")                         # a model that masks padded queries
    expected = ref.attention_kl_from_scores(s_c.numpy(), t_c.numpy(), tokens.numpy())
    got = kd_ref.attention_kl_loss(s_c, t_c, tokens, inputs="scores").item()
    assert got == pytest.approx(expected, rel=1e-12)
    # The probs form of a model that masks the padded keys itself gives the same number.
    pair = tokens[:, None, :, None] & tokens[:, None, None, :] & c
    p_s = torch.softmax(s.masked_fill(~pair, float("-inf")), -1).nan_to_num(0.0)
    p_t = torch.softmax(t.masked_fill(~pair, float("-inf")), -1).nan_to_num(0.0)
    assert kd_ref.attention_kl_loss(p_s, p_t, tokens).item() == pytest.approx(got, rel=1e-12)


def test_attention_kl_at_extreme_scores_scores_path_is_finite_where_probs_are_not():
    # A peaked student row: one key 1000 above the others, so the student's softmax
    # underflows to exactly 0 on keys the teacher still attends to.
    s = torch.zeros(1, 1, 4, 4)
    s[..., 0] = 1000.0
    t = torch.randn(1, 1, 4, 4, generator=torch.Generator().manual_seed(21))
    assert torch.isinf(kd_ref.attention_kl_loss(s.softmax(-1), t.softmax(-1)))   # the probs form cannot help it
    s.requires_grad_()
    loss = kd_ref.attention_kl_loss(s, t, inputs="scores")
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()
    expected = ref.attention_kl_from_scores(s.detach().double().numpy(), t.double().numpy())
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    # Scores of magnitude 1e4 in float32, with a causal mask and padding.
    g = torch.Generator().manual_seed(22)
    big_s = (1e4 * torch.randn(2, 2, 5, 5, generator=g)).masked_fill(~causal(5), float("-inf")).requires_grad_()
    big_t = (1e4 * torch.randn(2, 2, 5, 5, generator=g)).masked_fill(~causal(5), float("-inf"))
    tokens = torch.tensor([[True] * 5, [True, True, True, False, False]])
    loss = kd_ref.attention_kl_loss(big_s, big_t, tokens, inputs="scores")
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(big_s.grad).all()
    expected = ref.attention_kl_from_scores(big_s.detach().double().numpy(), big_t.double().numpy(), tokens.numpy())
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_attention_kl_scores_gradcheck_and_bad_inputs():
    s, t = rand(2, 2, 4, 4, seed=23).requires_grad_(), rand(2, 2, 4, 4, seed=24)
    tokens = torch.tensor([[True, True, True, True], [True, True, False, False]])
    t_c = t.masked_fill(~causal(4), float("-inf"))
    assert torch.autograd.gradcheck(lambda a: kd_ref.attention_kl_loss(a, t_c, tokens, inputs="scores"), (s,))
    assert torch.autograd.gradcheck(
        lambda a: kd_ref.attention_kl_loss(a.log_softmax(-1), t.log_softmax(-1), inputs="log_probs"), (s,))
    bad = r"inputs must be one of \('probs', 'scores', 'log_probs'\), got inputs='logits'"
    with pytest.raises(ValueError, match=bad):
        kd_ref.attention_kl_loss(s, t, inputs="logits")
    with pytest.raises(ValueError, match=r"mask must be a \(B, L\) = \(2, 4\) token mask, got mask \(2, 5\)"):
        kd_ref.attention_kl_loss(s, t, torch.ones(2, 5, dtype=torch.bool), inputs="scores")


# -- TinyBERT's averaging ---------------------------------------------------------------

def test_attention_score_loss_and_tinybert_averaging():
    # TinyBERT's code: scores <= -100 (BERT's -10000 on padded keys) set to 0 in both,
    # then MSE over all B x heads x L x L entries. kd_ref: the unmasked entries only.
    s, t = rand(2, 3, 4, 4, seed=25), rand(2, 3, 4, 4, seed=26)
    tokens = torch.tensor([[True, True, True, False], [True, True, False, False]])
    additive = (~tokens).double()[:, None, None, :] * -10000.0
    s_b, t_b = (s + additive).numpy(), (t + additive).numpy()
    theirs = ((np.where(s_b <= -100, 0, s_b) - np.where(t_b <= -100, 0, t_b)) ** 2).mean()
    keys = tokens[:, None, None, :]                                   # what BERT masks: keys only
    ours = kd_ref.attention_score_loss(torch.from_numpy(s_b), torch.from_numpy(t_b), keys).item()
    n_unmasked = keys.expand(2, 3, 4, 4).sum().item()
    assert theirs == pytest.approx(ours * n_unmasked / s_b.size, rel=1e-12)
    assert ours > theirs                                              # padding dilutes theirs


# -- MiniLM's value relation ----------------------------------------------------------------

def test_value_relation_matches_numpy_with_different_head_sizes():
    vs, vt = rand(2, 3, 5, 4, seed=27), rand(2, 3, 5, 8, seed=28)    # d_head 4 and 8
    got = kd_ref.value_relation_loss(vs, vt).item()
    assert got == pytest.approx(ref.value_relation(vs.numpy(), vt.numpy()), rel=1e-12)
    # Written out for one head: KL(softmax(v_t v_t^T / sqrt 8) || softmax(v_s v_s^T / sqrt 4)), row mean.
    rt = (vt[0, 0] @ vt[0, 0].T / 8**0.5).softmax(-1)
    rs = (vs[0, 0] @ vs[0, 0].T / 4**0.5).softmax(-1)
    one_head = kd_ref.value_relation_loss(vs[:1, :1], vt[:1, :1]).item()
    assert one_head == pytest.approx(ref.kl(rt.numpy(), rs.numpy()).mean(), rel=1e-12)
    assert got > 0


def test_value_relation_identities():
    v = rand(2, 2, 6, 4, seed=29)
    assert kd_ref.value_relation_loss(v, v).item() == pytest.approx(0.0, abs=1e-15)
    # Only relations count: rotating every value vector by the same orthogonal matrix
    # (or padding it with zero dimensions at the same scale) changes nothing.
    q, _ = torch.linalg.qr(rand(4, 4, seed=30))
    assert kd_ref.value_relation_loss(v @ q, v).item() == pytest.approx(0.0, abs=1e-12)
    wide = torch.cat([v, torch.zeros(2, 2, 6, 5, dtype=v.dtype)], -1) * (9 / 4) ** 0.25
    assert kd_ref.value_relation_loss(v, wide).item() == pytest.approx(0.0, abs=1e-12)


def test_value_relation_padding_equals_each_sequence_alone():
    H, L, lengths = 2, 5, [5, 2]
    tokens = torch.tensor([[i < n for i in range(L)] for n in lengths])
    vs, vt = rand(2, H, L, 3, seed=31), rand(2, H, L, 6, seed=32)
    vs[1, :, 2:] = 1e3                                             # padding holds anything
    got = kd_ref.value_relation_loss(vs, vt, tokens).item()
    assert got == pytest.approx(ref.value_relation(vs.numpy(), vt.numpy(), tokens.numpy()), rel=1e-12)
    rows = [kd_ref.value_relation_loss(vs[b:b + 1, :, :n], vt[b:b + 1, :, :n]).item() * n
            for b, n in enumerate(lengths)]
    assert got == pytest.approx(sum(rows) / sum(lengths), rel=1e-12)
    assert kd_ref.value_relation_loss(vs, vt, torch.zeros(2, L, dtype=torch.bool)).item() == 0.0


def test_value_relation_gradcheck_numerics_and_errors():
    vs, vt = rand(1, 2, 4, 3, seed=33).requires_grad_(), rand(1, 2, 4, 5, seed=34).requires_grad_()
    tokens = torch.tensor([[True, True, True, False]])
    assert torch.autograd.gradcheck(lambda a: kd_ref.value_relation_loss(a, vt.detach(), tokens), (vs,))
    kd_ref.value_relation_loss(vs, vt).backward()
    assert vt.grad is None                                         # the teacher is a constant
    big_s = (1e3 * torch.randn(2, 2, 5, 4, generator=torch.Generator().manual_seed(35))).requires_grad_()
    big_t = 1e3 * torch.randn(2, 2, 5, 8, generator=torch.Generator().manual_seed(36))
    loss = kd_ref.value_relation_loss(big_s, big_t)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(big_s.grad).all()
    assert loss.item() == pytest.approx(ref.value_relation(big_s.detach().double().numpy(), big_t.double().numpy()),
                                        rel=1e-4)
    with pytest.raises(ValueError, match=r"same B, heads and L.*\(2, 4, 5, 3\).*\(2, 2, 5, 3\)"):
        kd_ref.value_relation_loss(rand(2, 4, 5, 3), rand(2, 2, 5, 3))
    with pytest.raises(ValueError, match=r"same B, heads and L.*\(2, 4, 5, 3\).*\(2, 4, 6, 3\)"):
        kd_ref.value_relation_loss(rand(2, 4, 5, 3), rand(2, 4, 6, 3))
    with pytest.raises(ValueError, match=r"student_values must have at least 4 dimension"):
        kd_ref.value_relation_loss(rand(4, 5, 3), rand(4, 5, 3))
    with pytest.raises(ValueError, match=r"mask must be a \(B, L\) = \(2, 5\) token mask, got mask \(2, 4\)"):
        kd_ref.value_relation_loss(rand(2, 4, 5, 3), rand(2, 4, 5, 3), torch.ones(2, 4, dtype=torch.bool))
