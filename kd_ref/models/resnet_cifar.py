"""CIFAR ResNets: the teacher and student families of the KD benchmarks.

He, Zhang, Ren & Sun (2016), "Deep Residual Learning for Image Recognition", CVPR,
section 4.2: a 3x3 stem, then three stages of n basic blocks (two 3x3 convolutions
each) on 32x32, 16x16 and 8x8 maps, global average pooling and one linear layer:
6n + 2 weighted layers (n = 3, 5, 9, 18 gives resnet20, 32, 56, 110).

Shortcuts: the paper's CIFAR networks use option A (identity, zero-padded channels)
when a stage changes the shape. The KD benchmark code that later papers reuse (the
CRD repository of Tian, Krishnan & Isola 2020, "Contrastive Representation
Distillation", ICLR; mdistiller of Zhao et al. 2022) uses a 1x1 convolution + BN
there (option B), and so does this module. It adds 2,752 parameters to resnet20
(272,474 instead of 269,722): both round to the paper's 0.27M.

``resnet8x4`` and ``resnet32x4`` are the CRD repository's wide variants: a 32-channel
stem and stages of 64, 128, 256 channels (so the first stage needs a 1x1 shortcut too).

Module names (hook them with ``kd_ref.FeatureHooks``; the model is never edited)::

    stem        conv3x3 -> BN -> ReLU                 (B, c0, 32, 32)
    layer1      n blocks                              (B, c1, 32, 32)
    layer2      n blocks, the first with stride 2     (B, c2, 16, 16)
    layer3      n blocks, the first with stride 2     (B, c3, 8, 8)
    embedding   global average pool -> flatten        (B, c3)   the pre-classifier embedding
    classifier  linear                                (B, num_classes)

Each stage output is taken after the block's final ReLU (the features AT, FitNets and
SP use in the CRD benchmark); ``layerK.i`` is the output of block i of stage K.

Exact parameter counts (10 classes / 100 classes) are in ``PARAMETERS`` and tested.

Small widths: the tiny networks of the smoke profile (``resnet8_tiny``, ``resnet8_w8``)
keep at least 8 channels going into every stride-2 1x1 shortcut. With fewer (say 4),
the backward pass of that convolution in channels-last memory format corrupts memory
and kills the process on x86 CPUs without AVX-512 (oneDNN's AVX2 1x1 weight-gradient
kernel, PyTorch 2.15, seen on an AMD EPYC); ``tests/test_cifar_models.py`` trains a step
of every listed network channels-last in a subprocess to catch it.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn


class BasicBlock(nn.Module):
    """``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``.

    ``shortcut`` is the identity when shapes agree, else a 1x1 convolution (with the
    block's stride) and BatchNorm.
    """

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c_out, c_out, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(OrderedDict(
                conv=nn.Conv2d(c_in, c_out, kernel_size=1, stride=stride, bias=False),
                bn=nn.BatchNorm2d(c_out),
            ))
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))     # (B, c_out, H / stride, W / stride)
        out = self.bn2(self.conv2(out))
        # Not in place: x may be a hooked feature (the previous stage's output).
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """A CIFAR ResNet of ``depth = 6n + 2`` layers.

    Args:
        depth: 8, 14, 20, 32, 44, 56, 110, ... (``(depth - 2) % 6 == 0``).
        widths: ``(c0, c1, c2, c3)``: stem channels, then the three stages' channels.
        num_classes: 10 for CIFAR-10, 100 for CIFAR-100.
    """

    def __init__(self, depth: int, widths: tuple[int, int, int, int] = (16, 16, 32, 64), num_classes: int = 10):
        super().__init__()
        if not isinstance(depth, int) or depth < 8 or (depth - 2) % 6 != 0:
            raise ValueError(f"depth must be 6n + 2 with n >= 1 (8, 14, 20, 32, 56, 110, ...), got depth={depth!r}")
        if len(widths) != 4 or any(not isinstance(w, int) or w < 1 for w in widths):
            raise ValueError(f"widths must be 4 positive ints (stem, stage1, stage2, stage3), got widths={widths!r}")
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got num_classes={num_classes}")
        n = (depth - 2) // 6
        self.depth, self.widths, self.num_classes = depth, tuple(widths), num_classes
        c0, c1, c2, c3 = widths
        self.stem = nn.Sequential(OrderedDict(
            conv=nn.Conv2d(3, c0, kernel_size=3, padding=1, bias=False),
            bn=nn.BatchNorm2d(c0),
            relu=nn.ReLU(inplace=True),
        ))
        self.layer1 = self._stage(c0, c1, n, stride=1)
        self.layer2 = self._stage(c1, c2, n, stride=2)
        self.layer3 = self._stage(c2, c3, n, stride=2)
        self.embedding = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(c3, num_classes)
        for m in self.modules():  # the initialisation of the CRD code (He et al. 2015 for convolutions)
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @staticmethod
    def _stage(c_in: int, c_out: int, n: int, stride: int) -> nn.Sequential:
        return nn.Sequential(*[BasicBlock(c_in if i == 0 else c_out, c_out, stride if i == 0 else 1) for i in range(n)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)                      # (B, c0, 32, 32)
        x = self.layer1(x)                    # (B, c1, 32, 32)
        x = self.layer2(x)                    # (B, c2, 16, 16)
        x = self.layer3(x)                    # (B, c3, 8, 8)
        return self.classifier(self.embedding(x))  # (B, c3) -> (B, num_classes)


# name -> (depth, widths). The He et al. family, the CRD wide pair, and two narrow
# networks (the ``_w`` suffix is the stem width) small enough for the smoke profile.
ARCHITECTURES = {
    "resnet8": (8, (16, 16, 32, 64)),
    "resnet14": (14, (16, 16, 32, 64)),
    "resnet20": (20, (16, 16, 32, 64)),
    "resnet32": (32, (16, 16, 32, 64)),
    "resnet44": (44, (16, 16, 32, 64)),
    "resnet56": (56, (16, 16, 32, 64)),
    "resnet110": (110, (16, 16, 32, 64)),
    "resnet8x4": (8, (32, 64, 128, 256)),
    "resnet32x4": (32, (32, 64, 128, 256)),
    "resnet8_tiny": (8, (8, 8, 8, 16)),     # the smoke student; see "Small widths" above
    "resnet8_w8": (8, (8, 8, 16, 32)),
}

# Exact counts of this implementation, (CIFAR-10, CIFAR-100); tested.
PARAMETERS = {
    "resnet8": (78_042, 83_892),
    "resnet14": (175_258, 181_108),
    "resnet20": (272_474, 278_324),
    "resnet32": (466_906, 472_756),
    "resnet44": (661_338, 667_188),
    "resnet56": (855_770, 861_620),
    "resnet110": (1_730_714, 1_736_564),
    "resnet8x4": (1_210_410, 1_233_540),
    "resnet32x4": (7_410_730, 7_433_860),
}


def cifar_resnet(name: str, num_classes: int = 10) -> CifarResNet:
    """A fresh, randomly initialised network by name (see ``ARCHITECTURES``)."""
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown CIFAR ResNet {name!r}; choose one of {', '.join(ARCHITECTURES)}")
    depth, widths = ARCHITECTURES[name]
    return CifarResNet(depth, widths, num_classes)


STAGES = ("layer1", "layer2", "layer3")   # stage outputs, for AT
EMBEDDING = "embedding"                   # pre-classifier embedding, for RKD
