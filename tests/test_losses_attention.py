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
