"""Relation losses: the student matches how samples relate, not the samples themselves.

Embeddings are ``(B, D)``; conv features ``(B, ...)`` are flattened per sample. The
widths of student and teacher may differ: only B-by-B (or B-by-B-by-B) relations are
compared, so no projection is needed.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .._checks import as_compute_dtype, check_tensor, check_weight, shape_str


def _check_batch_pair(student, teacher, s_name, t_name, min_batch=1):
    check_tensor(student, s_name, min_dim=2)
    check_tensor(teacher, t_name, min_dim=2)
    if student.shape[0] != teacher.shape[0]:
        raise ValueError(
            f"{s_name} and {t_name} must have the same batch size, "
            f"got {s_name} {shape_str(student)} and {t_name} {shape_str(teacher)}"
        )
    if student.shape[0] < min_batch:
        raise ValueError(f"{s_name} needs a batch of at least {min_batch} samples, got {shape_str(student)}")
    return as_compute_dtype(student.flatten(1), teacher.detach().flatten(1))


def _pairwise_distances(e: torch.Tensor) -> torch.Tensor:
    """Euclidean distances ``(B, B)`` from differences (no ``|a|^2 + |b|^2 - 2ab`` cancellation).

    The diagonal is exactly 0 with a zero gradient; the squared distance is clamped at
    1e-12 before the square root, as in the RKD authors' code, so duplicate samples
    do not give an infinite gradient.
    """
    B = e.shape[0]
    sq = (e[:, None, :] - e[None, :, :]).pow(2).sum(-1)                    # (B, B)
    off = ~torch.eye(B, dtype=torch.bool, device=e.device)
    return torch.where(off, sq.clamp_min(1e-12).sqrt(), torch.zeros_like(sq))


def _normalised_distances(e: torch.Tensor) -> torch.Tensor:
    d = _pairwise_distances(e)
    B = e.shape[0]
    mean_positive = d.sum() / (B * (B - 1))          # every off-diagonal entry is > 0
    return d / mean_positive


def rkd_distance_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """RKD distance loss: ``mean_(i, j) smoothL1(d_s(i, j) / mu_s, d_t(i, j) / mu_t)``.

    Park, Kim, Lu & Cho (2019), "Relational Knowledge Distillation", CVPR, section 3.2
    (distance-wise loss): mu is the mean distance over distinct pairs, so the loss ignores the overall scale
    of either embedding. Huber / smooth-L1 with threshold 1. As in the authors' code the
    mean runs over all B^2 entries of the distance matrix (the zero diagonal included).

    Args:
        student: ``(B, D_s)`` (or ``(B, ...)``, flattened), B >= 2.
        teacher: ``(B, D_t)``; treated as a constant.
    """
    s, t = _check_batch_pair(student, teacher, "student", "teacher", min_batch=2)
    return F.smooth_l1_loss(_normalised_distances(s), _normalised_distances(t), beta=1.0)


def _angles(e: torch.Tensor) -> torch.Tensor:
    """``cos angle(e_i - e_j, e_k - e_j)`` for every triplet, as a ``(B, B, B)`` tensor ``[j, i, k]``."""
    diff = e[None, :, :] - e[:, None, :]                                  # (B, B, D): [j, i] = e_i - e_j
    unit = F.normalize(diff, p=2, dim=-1, eps=1e-12)                      # zero vectors stay zero
    return unit @ unit.transpose(1, 2)                                    # (B, B, B)


def rkd_angle_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """RKD angle loss: smooth-L1 between the cosines of all triplet angles.

    Park et al. (2019), section 3.2 (angle-wise loss): ``cos angle_ijk = <e(i - j), e(k - j)>`` with e the
    unit vector. Over all B^3 triplets as in the authors' code (degenerate triplets
    with i = j or k = j give 0 for both, and count in the mean).
    """
    s, t = _check_batch_pair(student, teacher, "student", "teacher", min_batch=3)
    return F.smooth_l1_loss(_angles(s), _angles(t), beta=1.0)


def rkd_loss(student: torch.Tensor, teacher: torch.Tensor, distance_weight: float = 25.0,
             angle_weight: float = 50.0) -> torch.Tensor:
    """``distance_weight * rkd_distance_loss + angle_weight * rkd_angle_loss``.

    The weights 25 and 50 are those of the RKD authors' CIFAR classification script and
    the defaults of the CRD benchmark code (Tian, Krishnan & Isola 2020, "Contrastive
    Representation Distillation"), whose CIFAR-100 tables later KD papers reuse; the
    authors' metric-learning example uses 1 and 2 instead.
    """
    dw, aw = check_weight(distance_weight, "distance_weight"), check_weight(angle_weight, "angle_weight")
    return dw * rkd_distance_loss(student, teacher) + aw * rkd_angle_loss(student, teacher)


def sp_loss(student_feat: torch.Tensor, teacher_feat: torch.Tensor) -> torch.Tensor:
    """Similarity-preserving KD: ``||G_t - G_s||_F^2 / B^2``.

    Tung & Mori (2019), "Similarity-Preserving Knowledge Distillation", ICCV, section 3:
    ``G = normalize_rows(F F^T)`` with F the ``(B, -1)`` flattened features and
    each row of the B-by-B Gram matrix divided by its L2 norm.

    Args:
        student_feat: ``(B, ...)``.
        teacher_feat: ``(B, ...)``, any width; treated as a constant.
    """
    s, t = _check_batch_pair(student_feat, teacher_feat, "student_feat", "teacher_feat")
    B = s.shape[0]
    g_s = F.normalize(s @ s.T, p=2, dim=1)                                # (B, B)
    g_t = F.normalize(t @ t.T, p=2, dim=1)
    return (g_t - g_s).pow(2).sum() / (B * B)
