"""Running a teacher: ``eval()`` mode and no gradients, by default.

A teacher in training mode changes its BatchNorm statistics and dropout while it
"teaches", and a teacher run with gradients wastes memory and can be trained by
accident (ERRATA item 8). Both are off unless you ask for them.
"""
from __future__ import annotations

import inspect

import torch
from torch import nn


def freeze(teacher: nn.Module) -> nn.Module:
    """Put ``teacher`` in ``eval()`` mode and stop gradients to its parameters; returns it."""
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher


def teacher_forward(teacher, *inputs, train_mode: bool = False, grad: bool = False, **kwargs):
    """Run ``teacher(*inputs, **kwargs)`` in ``eval()`` mode under ``torch.no_grad()``.

    ``teacher`` is a module, or a bound method of one such as
    ``gpt.forward_internals`` (the module it belongs to is put in eval mode).

    The teacher stays in eval mode afterwards (a later ``model.train()`` on a parent
    module can switch it back; calling this again switches it off again).

    Args:
        train_mode: run in training mode instead (rarely wanted).
        grad: record the autograd graph (e.g. for online / mutual distillation).
    """
    module = teacher.__self__ if inspect.ismethod(teacher) else teacher
    module.train(train_mode)
    with torch.set_grad_enabled(grad):
        return teacher(*inputs, **kwargs)
