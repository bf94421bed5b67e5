"""Feature (hint) losses: FitNets hints and transformer hidden-state matching.

The teacher's intermediate features are the student's *targets*, never its inputs
(ERRATA item 7). When widths differ, a learned map (``ConvRegressor`` for conv
features, a ``projection`` for hidden states) takes the student's features to the
teacher's width before the distance is measured (ERRATA item 6).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from .._checks import as_compute_dtype, check_mask, check_pair, check_tensor, masked_mean, shape_str


def hint_loss(student_feat: torch.Tensor, teacher_feat: torch.Tensor) -> torch.Tensor:
    """FitNets hint loss: mean squared error between projected student and teacher features.

    Romero, Ballas, Kahou, Chassang, Gatta & Bengio (2015), "FitNets: Hints for Thin
    Deep Nets", ICLR: the hint objective ``1/2 * ||u_h(x) - r(v_g(x))||^2`` with u_h the
    teacher's hint layer and r the regressor on the student's guided layer. Like most public code (e.g. the CRD
    repository's HintLoss) this uses the mean over all elements instead of half the
    sum, so the weight does not depend on the feature size.

    Args:
        student_feat: any shape, already mapped to the teacher's shape (e.g. by
            :class:`kd_ref.ConvRegressor`).
        teacher_feat: the same shape; treated as a constant.
    """
    check_pair(student_feat, teacher_feat, "student_feat", "teacher_feat",
               what="project the student's features first, e.g. with ConvRegressor")
    s, t = as_compute_dtype(student_feat, teacher_feat.detach())
    return F.mse_loss(s, t)


def _project_hidden(student_hidden, teacher_hidden, projection, mask):
    check_tensor(student_hidden, "student_hidden", min_dim=2)
    check_tensor(teacher_hidden, "teacher_hidden", min_dim=2)
    if student_hidden.shape[:-1] != teacher_hidden.shape[:-1]:
        raise ValueError(
            "student_hidden and teacher_hidden must agree in every dimension but the last (width), "
            f"got student_hidden {shape_str(student_hidden)} and teacher_hidden {shape_str(teacher_hidden)}"
        )
    d_s, d_t = student_hidden.shape[-1], teacher_hidden.shape[-1]
    if projection is None:
        if d_s != d_t:
            raise ValueError(
                f"student_hidden width {d_s} differs from teacher_hidden width {d_t}: pass a projection "
                f"mapping {d_s} -> {d_t} (e.g. nn.Linear({d_s}, {d_t}, bias=False)); got projection=None"
            )
        projected = student_hidden
    elif isinstance(projection, torch.Tensor):
        if projection.shape != (d_s, d_t):
            raise ValueError(
                f"projection must have shape (student width, teacher width) = ({d_s}, {d_t}), "
                f"got projection {shape_str(projection)}"
            )
        projected = student_hidden @ projection
    elif callable(projection):
        projected = projection(student_hidden)
        if projected.shape != teacher_hidden.shape:
            raise ValueError(
                f"projection output must match teacher_hidden {shape_str(teacher_hidden)}, "
                f"got projection(student_hidden) {shape_str(projected)} from student_hidden {shape_str(student_hidden)}"
            )
    else:
        raise ValueError(f"projection must be None, a (d_s, d_t) tensor or a module, got {type(projection).__name__}")
    mask = check_mask(mask, teacher_hidden.shape[:-1], against="teacher_hidden.shape[:-1]")
    s, t = as_compute_dtype(projected, teacher_hidden.detach())
    return s, t, mask


def hidden_state_loss(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor,
                      projection: torch.Tensor | Callable | None = None,
                      mask: torch.Tensor | None = None) -> torch.Tensor:
    """Hidden-state distillation: ``MSE(h_s W, h_t)`` over ``(B, L, d_t)``.

    The seed-002 formula; TinyBERT (Jiao et al. 2020, "TinyBERT: Distilling BERT for
    Natural Language Understanding", Findings of EMNLP, hidden-states distillation in
    its Transformer-layer loss) uses the same loss with a learnable W.

    Convention: mean over every element of the (unmasked) positions, i.e. over
    ``B * L * d_t`` numbers without a mask.

    Args:
        student_hidden: ``(..., d_s)``, e.g. ``(B, L, d_s)``.
        teacher_hidden: ``(..., d_t)``; treated as a constant.
        projection: maps d_s -> d_t: a ``(d_s, d_t)`` tensor W or a module such as
            ``nn.Linear(d_s, d_t)``. Required when ``d_s != d_t``.
        mask: optional bool ``(...)`` (e.g. ``(B, L)``) of positions that count.
    """
    s, t, mask = _project_hidden(student_hidden, teacher_hidden, projection, mask)
    per_position = (s - t).pow(2).mean(-1)
    return masked_mean(per_position, mask)


def hidden_state_cosine_loss(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor,
                             projection: torch.Tensor | Callable | None = None,
                             mask: torch.Tensor | None = None) -> torch.Tensor:
    """Cosine variant: ``mean over positions of (1 - cos(h_s W, h_t))``.

    Aligns directions and ignores norms, as DistilBERT's cosine embedding loss on the
    last hidden states (Sanh, Debut, Chaumond & Wolf 2019, "DistilBERT, a distilled
    version of BERT", section 2). Same arguments as :func:`hidden_state_loss`; 0 when aligned, 2 when
    opposite.
    """
    s, t, mask = _project_hidden(student_hidden, teacher_hidden, projection, mask)
    return masked_mean(1.0 - F.cosine_similarity(s, t, dim=-1, eps=1e-8), mask)
