"""Losses on logits: temperature softmax, KD, soft cross-entropy, DKD.

Shapes: logits are ``(..., C)`` with classes in the last dimension; every other
dimension is a *position* (the batch, or batch x sequence). Each loss is summed over
classes and averaged over positions (only the positions where ``mask`` is True when a
mask is given), and returns a scalar.

Teacher tensors are treated as constants: they are detached, so a teacher that was
run with gradients by mistake is still never trained by these losses.

fp16 / bf16 inputs (from autocast) are computed in float32; float64 stays float64.
All probabilities are handled in log space, so logits of magnitude 1e4 give finite
losses and gradients.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .._checks import (
    as_compute_dtype,
    check_mask,
    check_pair,
    check_targets,
    check_temperature,
    check_tensor,
    check_weight,
    masked_mean,
)
from .cross_entropy import masked_cross_entropy


def softmax_t(logits: torch.Tensor, T: float = 1.0, dim: int = -1) -> torch.Tensor:
    """Softmax with temperature: ``p_i = exp(z_i / T) / sum_j exp(z_j / T)``.

    Hinton, Vinyals & Dean (2015), "Distilling the Knowledge in a Neural Network",
    eq. (1). T > 1 softens the distribution, T -> 0 approaches the arg-max one-hot.
    Stable for any finite logits (PyTorch subtracts the maximum before ``exp``).
    """
    check_tensor(logits, "logits")
    T = check_temperature(T)
    (logits,) = as_compute_dtype(logits)
    return F.softmax(logits / T, dim=dim)


def log_softmax_t(logits: torch.Tensor, T: float = 1.0, dim: int = -1) -> torch.Tensor:
    """``log softmax(z / T)``, computed directly (never as ``log(softmax(...))``)."""
    check_tensor(logits, "logits")
    T = check_temperature(T)
    (logits,) = as_compute_dtype(logits)
    return F.log_softmax(logits / T, dim=dim)


def _kl_rows(log_p: torch.Tensor, log_q: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """``sum_i p_i (log p_i - log q_i)`` along ``dim``, with ``0 log 0 = 0``.

    ``torch.where`` drops the terms where p underflows to 0 (or a logit was -inf);
    the log-ratio is made safe *before* the product so no NaN reaches the gradient.
    """
    p = log_p.exp()
    log_ratio = torch.where(p > 0, log_p - log_q, torch.zeros_like(log_p))
    return (p * log_ratio).sum(dim)


def _prepare(student_logits, teacher_logits, T, mask):
    check_pair(student_logits, teacher_logits, "student_logits", "teacher_logits", min_dim=2,
               what="(..., num_classes)")
    T = check_temperature(T)
    mask = check_mask(mask, student_logits.shape[:-1], against="student_logits.shape[:-1]")
    s, t = as_compute_dtype(student_logits, teacher_logits.detach())
    return F.log_softmax(s / T, dim=-1), F.log_softmax(t / T, dim=-1), T, mask


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, T: float = 4.0,
            mask: torch.Tensor | None = None) -> torch.Tensor:
    """Hinton KD loss: ``T^2 * KL(softmax(t / T) || softmax(s / T))``.

    Hinton, Vinyals & Dean (2015), section 2: the soft-target term, multiplied by T^2
    so that its gradient keeps the same scale as the hard-label term when T changes
    (the gradient of the un-scaled KL shrinks as 1/T^2 at high T, eq. 4).

    Convention: KL summed over classes, averaged over every other position, the same
    as ``F.kl_div(log_p_s, p_t, reduction="batchmean") * T**2`` on 2-D logits. Its
    gradient with respect to the student logits is ``T * (p_s - p_t) / N`` with N the
    number of positions averaged over.

    Args:
        student_logits: ``(..., C)``.
        teacher_logits: ``(..., C)``, same shape; treated as a constant.
        T: temperature > 0.
        mask: optional bool ``(...)`` = ``student_logits.shape[:-1]``; only True
            positions count (e.g. real tokens, not padding).
    Returns:
        scalar loss (float32 for fp16 / bf16 inputs).
    """
    log_p_s, log_p_t, T, mask = _prepare(student_logits, teacher_logits, T, mask)
    return T * T * masked_mean(_kl_rows(log_p_t, log_p_s), mask)


def soft_cross_entropy(student_logits: torch.Tensor, teacher_logits: torch.Tensor, T: float = 4.0,
                       mask: torch.Tensor | None = None) -> torch.Tensor:
    """Soft-target cross-entropy: ``T^2 * H(p_t, p_s) = -T^2 * sum_i p_t,i log p_s,i``.

    The form in which Hinton, Vinyals & Dean (2015), section 2, state the soft-target
    objective ("cross entropy with the soft target distribution").

    Same averaging and scaling as :func:`kd_loss`. The two differ by the teacher's
    entropy, a constant for the student: ``soft_cross_entropy = kd_loss + T^2 H(p_t)``,
    so their gradients with respect to the student are identical while their values
    are not (a loss curve of this one never reaches 0).
    """
    log_p_s, log_p_t, T, mask = _prepare(student_logits, teacher_logits, T, mask)
    p_t = log_p_t.exp()
    cross = -(p_t * torch.where(p_t > 0, log_p_s, torch.zeros_like(log_p_s))).sum(-1)
    return T * T * masked_mean(cross, mask)


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor,
                      T: float = 4.0, kd_weight: float = 0.9, ce_weight: float = 0.1,
                      mask: torch.Tensor | None = None) -> torch.Tensor:
    """The usual training objective: ``kd_weight * kd_loss + ce_weight * CE(s, y)``.

    The cross-entropy with the ground-truth labels uses T = 1 (Hinton et al. 2015,
    section 2). Source documents and public code put a single ``alpha`` on either term
    (lesson 02 has the table); named weights remove that ambiguity.

    Args:
        student_logits, teacher_logits: ``(..., C)``.
        targets: integer class indices, shape ``(...)``, values in ``[0, C)`` (masked-out
            positions may hold anything, e.g. -100).
        T: temperature of the KD term.
        kd_weight, ce_weight: finite, >= 0.
        mask: optional bool ``(...)``; applied to both terms.
    """
    kd_weight = check_weight(kd_weight, "kd_weight")
    ce_weight = check_weight(ce_weight, "ce_weight")
    soft = kd_loss(student_logits, teacher_logits, T=T, mask=mask)
    mask = check_mask(mask, student_logits.shape[:-1], against="student_logits.shape[:-1]")
    targets = check_targets(targets, student_logits, mask=mask)
    return kd_weight * soft + ce_weight * masked_cross_entropy(student_logits, targets, mask)


def _dkd_parts(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor,
               T: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample TCKD and NCKD of Zhao et al. (2022), without T^2, in log space.

    TCKD: KL between the binary distributions (p_target, 1 - p_target) of teacher and
    student. NCKD: KL between the distributions over the non-target classes only.
    """
    gt = F.one_hot(targets, student_logits.shape[-1]).bool()               # (N, C)
    s, t = student_logits / T, teacher_logits / T
    log_p_s, log_p_t = F.log_softmax(s, -1), F.log_softmax(t, -1)
    neg_inf = torch.tensor(float("-inf"), dtype=s.dtype, device=s.device)

    def binary(log_p):                                                    # (N, 2)
        log_target = log_p.masked_select(gt).view(-1, 1)
        log_rest = torch.where(gt, neg_inf, log_p).logsumexp(-1, keepdim=True)
        return torch.cat([log_target, log_rest], dim=-1)

    tckd = _kl_rows(binary(log_p_t), binary(log_p_s))
    # Non-target distribution: drop the target class exactly (the authors subtract
    # 1000 from its logit, which is the same up to exp(-1000) for ordinary logits).
    log_q_s = F.log_softmax(torch.where(gt, neg_inf, s), -1)
    log_q_t = F.log_softmax(torch.where(gt, neg_inf, t), -1)
    nckd = _kl_rows(log_q_t, log_q_s)
    return tckd, nckd


def dkd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor,
             alpha: float = 1.0, beta: float = 8.0, T: float = 4.0) -> torch.Tensor:
    """Decoupled KD: ``T^2 * mean_n (alpha * TCKD_n + beta * NCKD_n)``.

    Zhao, Cui, Song, Qiu & Liang (2022), "Decoupled Knowledge Distillation", CVPR,
    section 3: the classical KD loss splits per sample as
    ``KD = TCKD + (1 - p_target^teacher) * NCKD``; DKD drops the coupling weight and
    gives each part its own weight. T^2 and the batch mean follow the authors' code
    (mdistiller); their defaults for CIFAR-100 are alpha = 1, beta = 8, T = 4. The
    authors' warm-up of the loss weight over the first epochs belongs in the training
    loop, not here.

    Difference from the authors' code: everything is computed in log space (their code
    takes ``log`` of a probability that underflows to 0 for confident students, e.g. a
    target logit of 400 at T = 4, and returns non-finite gradients); values agree
    wherever theirs are finite.

    Args:
        student_logits, teacher_logits: ``(N, C)`` with C >= 2.
        targets: ``(N,)`` integer labels in ``[0, C)``.
    """
    check_pair(student_logits, teacher_logits, "student_logits", "teacher_logits", min_dim=2,
               what="(batch, num_classes)")
    if student_logits.dim() != 2 or student_logits.shape[-1] < 2:
        raise ValueError(f"student_logits must have shape (batch, num_classes >= 2), "
                         f"got {tuple(student_logits.shape)}")
    targets = check_targets(targets, student_logits)
    alpha, beta = check_weight(alpha, "alpha"), check_weight(beta, "beta")
    T = check_temperature(T)
    s, t = as_compute_dtype(student_logits, teacher_logits.detach())
    tckd, nckd = _dkd_parts(s, t, targets, T)
    return T * T * (alpha * tckd + beta * nckd).mean()
