"""Teacher helpers and forward hooks, on a torchvision model that kd_ref never edits."""
import pytest
import torch
import torchvision
from torch import nn

import kd_ref


def tiny_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.ReLU(), nn.Linear(8, 3))


def test_teacher_forward_uses_eval_mode_and_no_grad():
    teacher = tiny_net().train()
    x = torch.randn(16, 4)
    running_before = teacher[1].running_mean.clone()
    out = kd_ref.teacher_forward(teacher, x)
    assert not teacher.training and not out.requires_grad
    assert torch.equal(teacher[1].running_mean, running_before)       # BatchNorm statistics untouched
    assert torch.equal(out, kd_ref.teacher_forward(teacher, x))       # dropout off: deterministic
    assert kd_ref.teacher_forward(teacher, x, grad=True).requires_grad


def test_freeze_turns_off_training_mode_and_gradients():
    teacher = kd_ref.freeze(tiny_net().train())
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())


def test_feature_hooks_capture_named_modules_of_an_unedited_model():
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)
    reference = model(x)
    with kd_ref.FeatureHooks(model, ["layer2", "layer4.1.conv2", "avgpool"]) as feats:
        out = model(x)
        assert feats["layer2"].shape == (2, 128, 8, 8)
        assert feats["layer4.1.conv2"].shape == (2, 512, 2, 2)
        assert feats["avgpool"].shape == (2, 512, 1, 1)
        assert [f.shape[1] for f in feats.values()] == [128, 512, 512]
    assert torch.equal(out, reference)                               # outputs unchanged by the hooks
    assert not model.layer2._forward_hooks                          # and the hooks are gone afterwards
    # The captured features are what a manual forward computes.
    manual = model.layer2(model.layer1(model.maxpool(model.relu(model.bn1(model.conv1(x))))))
    with kd_ref.FeatureHooks(model, "layer2") as feats:
        model(x)
        assert torch.allclose(feats["layer2"], manual)


def test_feature_hooks_inputs_and_gradients():
    model = tiny_net()
    hooks = kd_ref.FeatureHooks(model, ["4"], capture="input")
    out = model(torch.randn(5, 4))
    assert hooks["4"].shape == (5, 8) and hooks["4"].requires_grad
    out.sum().backward()
    hooks.remove()


def test_feature_hooks_bad_names():
    model = tiny_net()
    with pytest.raises(ValueError, match=r"names \['layer9'\] not found in Sequential; known names: 0, 1, 2, 3, 4"):
        kd_ref.FeatureHooks(model, ["0", "layer9"])
    hooks = kd_ref.FeatureHooks(model, ["1"])
    with pytest.raises(KeyError, match="has not run yet"):
        hooks["1"]
    with pytest.raises(KeyError, match="was not hooked"):
        hooks["2"]
    with pytest.raises(ValueError, match="capture must be 'output' or 'input'"):
        kd_ref.FeatureHooks(model, ["1"], capture="grad")
