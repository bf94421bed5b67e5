"""Evaluation metrics for a classifier and its teacher: accuracy, fidelity, calibration.

All take logits ``(N, C)`` (classes last) and return a Python float in [0, 1].
"""
from __future__ import annotations

import torch


def _check_logits(logits: torch.Tensor, name: str) -> None:
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        raise ValueError(f"{name} must be a tensor of shape (N, num_classes), got "
                         f"{tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__}")
    if len(logits) == 0:
        raise ValueError(f"{name} is empty: metrics need at least one sample")


def _check_targets(targets: torch.Tensor, logits: torch.Tensor) -> None:
    if targets.shape != logits.shape[:1]:
        raise ValueError(f"targets must have shape ({len(logits)},) to match logits {tuple(logits.shape)}, "
                         f"got {tuple(targets.shape)}")
    if (targets < 0).any():
        raise ValueError("targets contain unlabelled samples (-1); evaluate on labelled data only")


def accuracy(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Top-1 accuracy: the fraction of samples whose arg-max class is the label."""
    _check_logits(logits, "logits")
    _check_targets(targets, logits)
    return (logits.argmax(-1) == targets).float().mean().item()


def fidelity(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> float:
    """Top-1 agreement between student and teacher, whatever the label.

    Stanton, Izmailov, Kirichenko, Alemi & Wilson (2021), "Does Knowledge
    Distillation Really Work?", NeurIPS: a distilled student can gain accuracy while
    still disagreeing with its teacher on many inputs; fidelity measures the latter.
    """
    _check_logits(student_logits, "student_logits")
    if teacher_logits.shape != student_logits.shape:
        raise ValueError(f"student_logits and teacher_logits must have the same shape, got "
                         f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}")
    return (student_logits.argmax(-1) == teacher_logits.argmax(-1)).float().mean().item()


def expected_calibration_error(logits: torch.Tensor, targets: torch.Tensor, n_bins: int = 15) -> float:
    """ECE = sum_m |B_m| / N * |accuracy(B_m) - confidence(B_m)|.

    Guo, Pleiss, Sun & Weinberger (2017), "On Calibration of Modern Neural Networks",
    ICML, eq. (3): confidence is the top softmax probability; samples fall into
    ``n_bins`` equal-width bins ``((m-1)/M, m/M]`` by confidence; empty bins count 0.
    """
    _check_logits(logits, "logits")
    _check_targets(targets, logits)
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got n_bins={n_bins}")
    probs = logits.float().softmax(-1)                                  # (N, C)
    confidence, prediction = probs.max(-1)                              # (N,), (N,)
    correct = (prediction == targets).float()                           # (N,)
    inner_edges = torch.linspace(0, 1, n_bins + 1, device=logits.device)[1:-1]  # (M - 1,)
    bins = torch.bucketize(confidence, inner_edges)                     # (N,), bin m-1 holds ((m-1)/M, m/M]
    gap = torch.zeros(n_bins, device=logits.device).index_add_(0, bins, correct - confidence)  # (M,)
    # Per bin, |sum(correct - confidence)| = |B_m| * |acc(B_m) - conf(B_m)|; then divide by N.
    return (gap.abs().sum() / len(logits)).item()
