"""CIFAR ResNets (parameter counts, hook names, shapes) and the hook-based feature distillers."""
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from kd_ref import ConvRegressor, FeatureHooks, at_loss, dkd_loss, hint_loss, kd_loss, module_names, rkd_loss, sp_loss
from kd_ref.distillers import (AttentionKD, DecoupledKD, FitNetKD, RelationKD, Scratch, SimilarityKD,
                               feature_shapes)
from kd_ref.models import DigitsCNN, count_parameters
from kd_ref.models.resnet_cifar import ARCHITECTURES, PARAMETERS, CifarResNet, cifar_resnet


pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


@pytest.mark.parametrize("name", sorted(PARAMETERS))
def test_exact_parameter_counts(name):
    assert (count_parameters(cifar_resnet(name, 10)), count_parameters(cifar_resnet(name, 100))) == PARAMETERS[name]


def shortcut_parameters(model):
    """Parameters of the 1x1 projection shortcuts, which the paper's option A does not have."""
    return sum(p.numel() for n, p in model.named_parameters() if ".shortcut." in n)


@pytest.mark.parametrize("name, paper, digits", [
    # He et al. (2016), Table 6 (CIFAR-10, option A shortcuts)
    ("resnet20", 0.27, 2), ("resnet32", 0.46, 2), ("resnet44", 0.66, 2), ("resnet56", 0.85, 2), ("resnet110", 1.7, 1),
])
def test_the_paper_counts_are_ours_without_the_projection_shortcuts(name, paper, digits):
    model = cifar_resnet(name, 10)
    option_a = count_parameters(model) - shortcut_parameters(model)
    assert round(option_a / 1e6, digits) == paper
    assert count_parameters(model) == pytest.approx(paper * 1e6, rel=0.02)     # option B: within 2 %


@pytest.mark.parametrize("name, reported", [("resnet8x4", 1.2), ("resnet32x4", 7.4)])
def test_the_crd_wide_pair_has_the_reported_size(name, reported):
    # The sizes KD papers quote for the CRD repository's networks (CIFAR-100 heads: 1.23M, 7.43M).
    assert round(count_parameters(cifar_resnet(name, 100)) / 1e6, 1) == reported


def test_resnet20_projection_shortcuts_cost_2752_parameters():
    # layer2.0 and layer3.0 get a 1x1 conv + BN: 16*32 + 2*32 + 32*64 + 2*64.
    assert shortcut_parameters(cifar_resnet("resnet20")) == 2_752


def test_module_names_and_feature_shapes_by_hooks():
    model = cifar_resnet("resnet8x4", 100).eval()
    names = module_names(model)
    assert names[:4] == ["stem", "stem.conv", "stem.bn", "stem.relu"]
    assert {"layer1", "layer2", "layer3", "layer3.0", "embedding", "classifier"} <= set(names)
    x = torch.randn(2, 3, 32, 32)
    with FeatureHooks(model, ["stem", "layer1", "layer2", "layer3", "embedding"]) as hooks:
        logits = model(x)
        shapes = {n: tuple(hooks[n].shape) for n in hooks}
        torch.testing.assert_close(model.classifier(hooks["embedding"]), logits)       # the pre-classifier embedding
        torch.testing.assert_close(hooks["layer3"].mean(dim=(2, 3)), hooks["embedding"])
        assert (hooks["layer2"] >= 0).all()                                             # after the block's ReLU
    assert shapes == {"stem": (2, 32, 32, 32), "layer1": (2, 64, 32, 32), "layer2": (2, 128, 16, 16),
                      "layer3": (2, 256, 8, 8), "embedding": (2, 256)}
    assert logits.shape == (2, 100)
    assert feature_shapes(cifar_resnet("resnet20"), ["layer1", "layer3.2"], x) == {
        "layer1": (2, 16, 32, 32), "layer3.2": (2, 64, 8, 8)}


def test_every_architecture_runs_and_channels_last_gives_the_same_logits():
    x = torch.randn(3, 3, 32, 32)
    for name in ("resnet8_tiny", "resnet8_w8", "resnet14"):
        torch.manual_seed(0)
        model = cifar_resnet(name).eval()
        logits = model(x)
        assert logits.shape == (3, 10)
        cl = model.to(memory_format=torch.channels_last)
        torch.testing.assert_close(cl(x.contiguous(memory_format=torch.channels_last)), logits, rtol=1e-4, atol=1e-5)


SMALL = [name for name, (depth, widths) in ARCHITECTURES.items() if depth <= 20 and max(widths) <= 64]


@pytest.mark.slow
@pytest.mark.parametrize("name", SMALL)
def test_a_channels_last_training_step_does_not_crash_the_process(name):
    """A regression test for a oneDNN bug: a stride-2 1x1 convolution with < 8 input channels,
    channels-last, corrupts memory in its backward pass on AVX2 CPUs (see kd_ref.models.resnet_cifar).
    Run in a subprocess, so a crash fails this test instead of killing pytest."""
    code = (f"import torch; from kd_ref.models.resnet_cifar import cifar_resnet; torch.set_num_threads(1); "
            f"m = cifar_resnet({name!r}).to(memory_format=torch.channels_last); "
            f"x = torch.randn(64, 3, 32, 32).contiguous(memory_format=torch.channels_last); "
            f"[m(x).logsumexp(-1).mean().backward() for _ in range(3)]; print('ok')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", (done.returncode, done.stderr[-500:])


def test_resnet_guard_rails():
    with pytest.raises(ValueError, match="6n \\+ 2"):
        CifarResNet(21)
    with pytest.raises(ValueError, match="unknown CIFAR ResNet 'resnet18'"):
        cifar_resnet("resnet18")
    assert "resnet32x4" in ARCHITECTURES


# -- hook-based distillers, on a CIFAR ResNet and on the digits CNN -----------------------------

@pytest.fixture
def nets():
    torch.manual_seed(0)
    return cifar_resnet("resnet8_tiny").train(), cifar_resnet("resnet8_w8").eval()


def stage_outputs(model, x):
    """The stage outputs computed by calling the submodules by hand (no hooks)."""
    f0 = model.stem(x)
    f1 = model.layer1(f0)
    f2 = model.layer2(f1)
    f3 = model.layer3(f2)
    emb = model.embedding(f3)
    return [f1, f2, f3], emb, model.classifier(emb)


def test_attention_kd_terms_equal_a_hand_computation(nets):
    student, teacher = nets
    x, y = torch.randn(6, 3, 32, 32), torch.tensor([0, 1, 2, 3, 4, 5])
    stages = ["layer1", "layer2", "layer3"]
    distiller = AttentionKD(student, teacher, stages, stages, kd_weight=0.5, T=3.0)
    logits, terms = distiller(x, y)
    assert sorted(terms) == ["at", "ce", "kd"]
    s_feats, _, s_logits = stage_outputs(student, x)       # train mode too: BatchNorm uses batch statistics
    with torch.no_grad():
        t_feats, _, t_logits = stage_outputs(teacher.eval(), x)
    torch.testing.assert_close(logits, s_logits)
    torch.testing.assert_close(terms["at"], 500 * sum(at_loss(s, t) for s, t in zip(s_feats, t_feats)))
    torch.testing.assert_close(terms["kd"], 0.5 * kd_loss(s_logits, t_logits, T=3.0))
    torch.testing.assert_close(terms["ce"], F.cross_entropy(s_logits, y))
    sum(terms.values()).backward()
    assert all(p.grad is None for p in teacher.parameters()) and not teacher.training
    assert student.layer1[0].conv1.weight.grad is not None


def test_fitnet_relation_and_similarity_terms_on_the_digits_cnn():
    torch.manual_seed(1)
    student, teacher = DigitsCNN(width=2), DigitsCNN(width=4).eval()
    x, y = torch.rand(5, 1, 8, 8), torch.tensor([1, 2, 3, 4, -1])
    regressor = ConvRegressor(4, 8, relu=True)
    fit_logits, fit_terms = FitNetKD(student, teacher, "block2", "block2", regressor, hint_weight=7.0)(x, y)
    _, rkd_terms = RelationKD(student, teacher, rkd_weight=2.0)(x, y)
    _, sp_terms = SimilarityKD(student, teacher, ["block3"], ["block3"], sp_weight=30.0)(x, y)
    s = {"block2": student.block2(student.block1(x))}
    s["block3"] = student.block3(s["block2"])
    s["embedding"] = student.embedding(s["block3"])
    with torch.no_grad():
        t = {"block2": teacher.block2(teacher.block1(x))}
        t["block3"] = teacher.block3(t["block2"])
        t["embedding"] = teacher.embedding(t["block3"])
    torch.testing.assert_close(fit_terms["hint"], 7.0 * hint_loss(regressor(s["block2"]), t["block2"]))
    torch.testing.assert_close(rkd_terms["rkd"], 2.0 * rkd_loss(s["embedding"], t["embedding"]))
    torch.testing.assert_close(sp_terms["sp"], 30.0 * sp_loss(s["block3"], t["block3"]))
    torch.testing.assert_close(fit_terms["ce"], F.cross_entropy(fit_logits[:4], y[:4]))   # labelled samples only
    assert "kd" not in fit_terms                                                           # CE + feature term only


def test_hooks_are_released_and_wrong_names_are_refused(nets):
    student, teacher = nets
    distiller = SimilarityKD(student, teacher, ["layer3"], ["layer3"])
    distiller(torch.randn(2, 3, 32, 32), torch.tensor([0, 1]))
    assert distiller.student_hooks.features == {}              # references dropped after each step
    distiller.close()
    assert not student.layer3._forward_hooks and not teacher.layer3._forward_hooks
    with pytest.raises(ValueError, match="names \\['layer4'\\] not found"):
        AttentionKD(student, teacher, ["layer4"], ["layer3"])
    with pytest.raises(ValueError, match="pair up one to one"):
        AttentionKD(student, teacher, ["layer1", "layer2"], ["layer3"])


def test_dkd_warms_up_linearly(nets):
    student, teacher = nets
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    distiller = DecoupledKD(student, teacher, warmup_epochs=4)
    with torch.no_grad():
        full = dkd_loss(student(x), teacher(x), y, alpha=1.0, beta=8.0, T=4.0)
        for epoch, weight in ((0.5, 0.125), (1, 0.25), (2, 0.5), (4, 1.0), (9, 1.0)):   # fractional epochs too
            distiller.set_progress(epoch)
            torch.testing.assert_close(distiller(x, y)[1]["dkd"], weight * full)


def test_label_smoothing_of_the_teacher(nets):
    student, _ = nets
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    _, terms = Scratch(student, label_smoothing=0.1)(x, y)
    torch.testing.assert_close(terms["ce"], F.cross_entropy(student(x), y, label_smoothing=0.1))
    with pytest.raises(ValueError, match="label_smoothing"):
        Scratch(student, label_smoothing=1.0)
