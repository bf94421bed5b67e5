"""``ConvRegressor``: the learned map from student features to the teacher's shape (FitNets)."""
from __future__ import annotations

import torch
from torch import nn

from ._checks import shape_str


class ConvRegressor(nn.Module):
    """Maps ``(B, C_s, H_s, W_s)`` student features to ``(B, C_t, H_t, W_t)``.

    Romero et al. (2015), "FitNets", ICLR: a convolutional regressor r(.) on
    the student's guided layer, trained with the hint loss. Layers chosen from the
    sizes (the same choices as the CRD repository's ConvReg):

    - equal sizes: 1x1 convolution;
    - student twice the teacher's size: 3x3 convolution, stride 2;
    - student half the teacher's size: 4x4 transposed convolution, stride 2;

    then BatchNorm (``norm=True``) and an optional ReLU (``relu=True``; use it only
    when the teacher's features come after a ReLU, since it cannot produce negatives).

    Args:
        student_channels, teacher_channels: C_s and C_t.
        student_size, teacher_size: spatial side H (= W) of each feature map; omit
            both for equal sizes.
    """

    def __init__(self, student_channels: int, teacher_channels: int, student_size: int | None = None,
                 teacher_size: int | None = None, norm: bool = True, relu: bool = False):
        super().__init__()
        for name, value in (("student_channels", student_channels), ("teacher_channels", teacher_channels)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {name}={value!r}")
        if (student_size is None) != (teacher_size is None):
            raise ValueError("give both student_size and teacher_size, or neither, got "
                             f"student_size={student_size!r}, teacher_size={teacher_size!r}")
        s, t = student_size, teacher_size
        if s is None or s == t:
            conv = nn.Conv2d(student_channels, teacher_channels, kernel_size=1, bias=not norm)
        elif s == 2 * t:
            conv = nn.Conv2d(student_channels, teacher_channels, kernel_size=3, stride=2, padding=1, bias=not norm)
        elif 2 * s == t:
            conv = nn.ConvTranspose2d(student_channels, teacher_channels, kernel_size=4, stride=2, padding=1,
                                      bias=not norm)
        else:
            raise ValueError(f"ConvRegressor supports equal sizes or a factor of 2, got student_size={s} and "
                             f"teacher_size={t}; pool or resample one of the features first")
        self.student_channels, self.teacher_channels = student_channels, teacher_channels
        self.student_size, self.teacher_size = s, t
        layers = [conv]
        if norm:
            layers.append(nn.BatchNorm2d(teacher_channels))
        if relu:
            layers.append(nn.ReLU(inplace=True))
        self.net = nn.Sequential(*layers)

    def forward(self, student_feat: torch.Tensor) -> torch.Tensor:
        if student_feat.dim() != 4 or student_feat.shape[1] != self.student_channels or (
                self.student_size is not None and tuple(student_feat.shape[2:]) != (self.student_size,) * 2):
            side = "H, W" if self.student_size is None else f"{self.student_size}, {self.student_size}"
            raise ValueError(f"student_feat must have shape (B, {self.student_channels}, {side}), "
                             f"got student_feat {shape_str(student_feat)}")
        return self.net(student_feat)
