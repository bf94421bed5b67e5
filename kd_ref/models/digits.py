"""Teacher and student networks for the 8x8 digits images.

Both families take ``(B, 1, 8, 8)`` images and return ``(B, 10)`` logits. Width is
the knob between teacher (wide) and student (narrow). Submodules have names meant
for ``kd_ref.FeatureHooks`` (lessons 03-05 hook them without editing the model):

``DigitsCNN``::

    block1      conv3x3 -> BN -> ReLU               (B, w, 8, 8)
    block2      conv3x3 -> BN -> ReLU -> maxpool    (B, 2w, 4, 4)
    block3      conv3x3 -> BN -> ReLU -> maxpool    (B, 4w, 2, 2)
    embedding   global average pool -> flatten      (B, 4w)
    classifier  linear                              (B, 10)

``DigitsMLP``::

    layer1      flatten -> linear -> ReLU           (B, h)
    embedding   linear -> ReLU                      (B, h)
    classifier  linear                              (B, 10)

Parameter counts (``kd_ref.models.count_parameters``): the CNN has
``90 w^2 + 63 w + 10`` (convolutions have no bias: BatchNorm's shift replaces it),
the MLP ``h^2 + 76 h + 10``.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

NUM_CLASSES = 10


def _conv_block(c_in: int, c_out: int, pool: bool) -> nn.Sequential:
    layers = OrderedDict(
        conv=nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False),
        bn=nn.BatchNorm2d(c_out),
        relu=nn.ReLU(inplace=True),
    )
    if pool:
        layers["pool"] = nn.MaxPool2d(2)
    return nn.Sequential(layers)


class DigitsCNN(nn.Module):
    """A three-block convolutional network of width ``w`` (channels w, 2w, 4w)."""

    def __init__(self, width: int = 16, num_classes: int = NUM_CLASSES):
        super().__init__()
        if width < 1:
            raise ValueError(f"width must be >= 1, got width={width}")
        self.width = width
        self.block1 = _conv_block(1, width, pool=False)
        self.block2 = _conv_block(width, 2 * width, pool=True)
        self.block3 = _conv_block(2 * width, 4 * width, pool=True)
        self.embedding = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block1(x)                 # (B, w, 8, 8)
        x = self.block2(x)                 # (B, 2w, 4, 4)
        x = self.block3(x)                 # (B, 4w, 2, 2)
        return self.classifier(self.embedding(x))  # (B, 4w) -> (B, 10)


class DigitsMLP(nn.Module):
    """A two-hidden-layer perceptron of width ``h`` on the 64 flattened pixels."""

    def __init__(self, hidden: int = 128, num_classes: int = NUM_CLASSES):
        super().__init__()
        if hidden < 1:
            raise ValueError(f"hidden must be >= 1, got hidden={hidden}")
        self.hidden = hidden
        self.layer1 = nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(inplace=True))
        self.embedding = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(inplace=True))
        self.classifier = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embedding(self.layer1(x)))  # (B, 1, 8, 8) -> (B, h) -> (B, 10)
