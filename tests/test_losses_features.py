"""Hint and hidden-state losses, and ConvRegressor, against NumPy and gradcheck."""
import numpy as np
import pytest
import torch
from torch import nn

import kd_ref


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_hint_loss_is_elementwise_mse():
    s, t = rand(2, 3, 4, 4, seed=1), rand(2, 3, 4, 4, seed=2)
    expected = ((s.numpy() - t.numpy()) ** 2).mean()
    assert kd_ref.hint_loss(s, t).item() == pytest.approx(expected, rel=1e-12)
    with pytest.raises(ValueError, match=r"student_feat.*\(2, 3, 4, 4\).*teacher_feat.*\(2, 8, 4, 4\)"):
        kd_ref.hint_loss(s, rand(2, 8, 4, 4))


def test_hidden_state_loss_with_matrix_and_module():
    hs, ht, W = rand(2, 5, 3, seed=3), rand(2, 5, 4, seed=4), rand(3, 4, seed=5)
    expected = ((hs.numpy() @ W.numpy() - ht.numpy()) ** 2).mean()
    assert kd_ref.hidden_state_loss(hs, ht, W).item() == pytest.approx(expected, rel=1e-12)
    lin = nn.Linear(3, 4, bias=False).double()
    with torch.no_grad():
        lin.weight.copy_(W.T)
    assert kd_ref.hidden_state_loss(hs, ht, lin).item() == pytest.approx(expected, rel=1e-12)
    # Equal widths: no projection needed.
    assert kd_ref.hidden_state_loss(ht, ht).item() == 0.0


def test_hidden_state_loss_mask_selects_positions():
    hs, ht = rand(2, 4, 3, seed=6), rand(2, 4, 3, seed=7)
    mask = torch.tensor([[True, True, False, False], [True, True, True, False]])
    sq = ((hs.numpy() - ht.numpy()) ** 2).mean(-1)
    assert kd_ref.hidden_state_loss(hs, ht, mask=mask).item() == pytest.approx(sq[mask.numpy()].mean(), rel=1e-12)


def test_hidden_state_cosine_loss():
    hs, ht = rand(3, 2, 4, seed=8), rand(3, 2, 4, seed=9)
    a, b = hs.numpy(), ht.numpy()
    cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
    assert kd_ref.hidden_state_cosine_loss(hs, ht).item() == pytest.approx((1 - cos).mean(), rel=1e-12)
    assert kd_ref.hidden_state_cosine_loss(2.5 * ht, ht).item() == pytest.approx(0.0, abs=1e-12)
    assert kd_ref.hidden_state_cosine_loss(-ht, ht).item() == pytest.approx(2.0, rel=1e-12)


def test_hidden_state_errors_name_the_projection():
    hs, ht = rand(2, 5, 3), rand(2, 5, 4)
    with pytest.raises(ValueError, match="width 3 differs from teacher_hidden width 4: pass a projection"):
        kd_ref.hidden_state_loss(hs, ht)
    with pytest.raises(ValueError, match=r"projection output must match teacher_hidden \(2, 5, 4\).*\(2, 5, 6\)"):
        kd_ref.hidden_state_loss(hs, ht, nn.Linear(3, 6).double())
    with pytest.raises(ValueError, match=r"projection must have shape .* = \(3, 4\), got projection \(3, 5\)"):
        kd_ref.hidden_state_loss(hs, ht, rand(3, 5))
    with pytest.raises(ValueError, match=r"every dimension but the last.*\(2, 5, 3\).*\(2, 6, 4\)"):
        kd_ref.hidden_state_loss(hs, rand(2, 6, 4), rand(3, 4))
    with pytest.raises(ValueError, match=r"mask must have shape .*\(2, 5\).*got mask \(2, 4\)"):
        kd_ref.hidden_state_cosine_loss(hs, ht, rand(3, 4), mask=torch.ones(2, 4, dtype=torch.bool))


def test_gradcheck_feature_losses():
    s, t, W = rand(2, 3, 2, seed=10).requires_grad_(), rand(2, 3, 4, seed=11), rand(2, 4, seed=12).requires_grad_()
    mask = torch.tensor([[True, False, True], [True, True, True]])
    assert torch.autograd.gradcheck(lambda a, w: kd_ref.hidden_state_loss(a, t, w, mask=mask), (s, W))
    assert torch.autograd.gradcheck(lambda a, w: kd_ref.hidden_state_cosine_loss(a, t, w), (s, W))
    f = rand(2, 3, 2, 2, seed=13).requires_grad_()
    assert torch.autograd.gradcheck(lambda a: kd_ref.hint_loss(a, rand(2, 3, 2, 2, seed=14)), (f,))


@pytest.mark.parametrize("s_size,t_size,module,kernel", [(None, None, nn.Conv2d, 1), (8, 8, nn.Conv2d, 1),
                                                          (16, 8, nn.Conv2d, 3), (4, 8, nn.ConvTranspose2d, 4)])
def test_conv_regressor_maps_to_the_teacher_shape(s_size, t_size, module, kernel):
    reg = kd_ref.ConvRegressor(16, 32, s_size, t_size)
    side = s_size or 8
    out = reg(torch.randn(2, 16, side, side))
    assert out.shape == (2, 32, t_size or 8, t_size or 8)
    assert isinstance(reg.net[0], module) and isinstance(reg.net[1], nn.BatchNorm2d) and len(reg.net) == 2
    assert reg.net[0].kernel_size == (kernel, kernel)


def test_conv_regressor_1x1_is_a_per_pixel_linear_map():
    # Teacher features that are a channel mix A of the student's: the 1x1 regressor with
    # weight A reproduces them exactly, and the hint loss sends gradients to the regressor.
    g = torch.Generator().manual_seed(0)
    s, A = torch.randn(8, 4, 5, 5, generator=g), torch.randn(6, 4, generator=g)
    t = torch.einsum("oc,bchw->bohw", A, s)
    reg = kd_ref.ConvRegressor(4, 6, norm=False)
    with torch.no_grad():
        reg.net[0].weight.copy_(A[:, :, None, None])
        reg.net[0].bias.zero_()
    assert kd_ref.hint_loss(reg(s), t).item() < 1e-10
    with torch.no_grad():
        reg.net[0].weight.mul_(0.5)
    kd_ref.hint_loss(reg(s), t).backward()
    assert reg.net[0].weight.grad.abs().sum() > 0


def test_conv_regressor_bad_input():
    with pytest.raises(ValueError, match="equal sizes or a factor of 2, got student_size=6 and teacher_size=8"):
        kd_ref.ConvRegressor(4, 8, 6, 8)
    with pytest.raises(ValueError, match="give both student_size and teacher_size"):
        kd_ref.ConvRegressor(4, 8, 6)
    with pytest.raises(ValueError, match=r"student_feat must have shape \(B, 4, 8, 8\), got student_feat \(2, 5, 8, 8\)"):
        kd_ref.ConvRegressor(4, 8, 8, 8)(torch.randn(2, 5, 8, 8))
    with pytest.raises(ValueError, match=r"student_channels must be a positive int"):
        kd_ref.ConvRegressor(0, 8)
