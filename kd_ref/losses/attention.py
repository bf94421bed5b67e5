"""Attention losses: attention transfer for CNNs, attention matrices for transformers."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .._checks import as_compute_dtype, check_pair, check_tensor, masked_mean, shape_str


def attention_map(feat: torch.Tensor, p: float = 2) -> torch.Tensor:
    """Spatial attention map of a conv feature: ``normalize(mean_c |f_c|^p)``.

    Zagoruyko & Komodakis (2017), "Paying More Attention to Attention", ICLR: the map
    F_sum^p(A) = sum_c |A_c|^p of section 3.1, divided by its L2 norm as in the loss of
    eq. (2). Convention of the authors' code: the channel *mean* (the normalisation
    makes mean and sum equal).

    Args:
        feat: ``(B, C, H, W)``.
        p: exponent > 0 (2 in the paper's experiments).
    Returns:
        ``(B, H * W)``, each row of unit L2 norm (a zero row stays zero).
    """
    check_tensor(feat, "feat")
    if feat.dim() != 4:
        raise ValueError(f"feat must have shape (B, C, H, W), got feat {shape_str(feat)}")
    if not p > 0:
        raise ValueError(f"p must be > 0, got p={p!r}")
    (feat,) = as_compute_dtype(feat)
    am = feat.abs().pow(p).mean(dim=1)                                    # (B, H, W)
    return F.normalize(am.flatten(1), p=2, dim=1, eps=1e-12)              # (B, H*W)


def at_loss(student_feat: torch.Tensor, teacher_feat: torch.Tensor, p: float = 2) -> torch.Tensor:
    """Attention-transfer loss: ``mean_(b, j) (Q_s[b, j] - Q_t[b, j])^2`` of the maps.

    Zagoruyko & Komodakis (2017), eq. (2). The paper takes the L2 norm of the difference
    of the normalised maps; the authors' code (followed here, as by most public code)
    takes its square, averaged over batch and positions, and multiplies it by
    beta / 2 with beta = 1000 in training, which is the caller's weight. Channel counts may differ. When spatial
    sizes differ, the larger feature map is average-pooled to the smaller size first
    (``adaptive_avg_pool2d``, as in the CRD repository's AT implementation).

    Args:
        student_feat: ``(B, C_s, H_s, W_s)``.
        teacher_feat: ``(B, C_t, H_t, W_t)``; treated as a constant.
    """
    check_tensor(student_feat, "student_feat")
    check_tensor(teacher_feat, "teacher_feat")
    if student_feat.dim() != 4 or teacher_feat.dim() != 4 or student_feat.shape[0] != teacher_feat.shape[0]:
        raise ValueError(
            "student_feat and teacher_feat must both be (B, C, H, W) with the same batch size B, "
            f"got student_feat {shape_str(student_feat)} and teacher_feat {shape_str(teacher_feat)}"
        )
    teacher_feat = teacher_feat.detach()
    (h_s, w_s), (h_t, w_t) = student_feat.shape[2:], teacher_feat.shape[2:]
    if (h_s, w_s) != (h_t, w_t):
        if h_s * w_s > h_t * w_t:
            student_feat = F.adaptive_avg_pool2d(student_feat, (h_t, w_t))
        else:
            teacher_feat = F.adaptive_avg_pool2d(teacher_feat, (h_s, w_s))
    return (attention_map(student_feat, p) - attention_map(teacher_feat, p)).pow(2).mean()


def _pair_mask(mask, scores, name):
    """(B, L) token mask -> (B, 1, L, L) query/key pair mask; 4-D masks broadcast."""
    B, H, L, _ = scores.shape
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor):
        raise ValueError(f"mask must be a torch.Tensor or None, got {type(mask).__name__}")
    mask = mask if mask.dtype == torch.bool else mask != 0
    if mask.dim() == 2 and mask.shape == (B, L):
        return mask[:, None, :, None] & mask[:, None, None, :]
    if mask.dim() == 4 and all(m in (1, n) for m, n in zip(mask.shape, (B, H, L, L))):
        return mask
    raise ValueError(
        f"mask must be a (B, L) = ({B}, {L}) token mask or broadcastable to (B, heads, L, L) = "
        f"({B}, {H}, {L}, {L}), got mask {shape_str(mask)} for {name} {shape_str(scores)}"
    )


def _check_attention_pair(student, teacher, s_name, t_name):
    check_pair(student, teacher, s_name, t_name, min_dim=4,
               what="(B, heads, L, L): head counts must match; map heads first if they differ")
    if student.dim() != 4 or student.shape[-1] != student.shape[-2]:
        raise ValueError(f"{s_name} must have shape (B, heads, L, L), got {s_name} {shape_str(student)}")


def attention_score_loss(student_scores: torch.Tensor, teacher_scores: torch.Tensor,
                         mask: torch.Tensor | None = None) -> torch.Tensor:
    """TinyBERT attention loss: MSE between pre-softmax attention scores.

    Jiao et al. (2020), "TinyBERT", Findings of EMNLP, attention-based distillation:
    ``1/h sum_i MSE(A_i^S, A_i^T)`` with A the unnormalised scores ``QK^T / sqrt(d)``. Mean over every unmasked (b, head, query,
    key) entry. Masked entries (padding, or future keys of a causal model, where
    scores are -inf) are excluded, never compared; so pass the mask whenever scores
    hold -inf.

    Args:
        student_scores, teacher_scores: ``(B, heads, L, L)``, same shape.
        mask: optional bool, ``(B, L)`` token mask (an entry counts when query and key
            are both real tokens) or anything broadcastable to ``(B, heads, L, L)``
            (e.g. a causal ``(1, 1, L, L)`` mask).
    """
    _check_attention_pair(student_scores, teacher_scores, "student_scores", "teacher_scores")
    pair = _pair_mask(mask, student_scores, "student_scores")
    s, t = as_compute_dtype(student_scores, teacher_scores.detach())
    if pair is None:
        return (s - t).pow(2).mean()
    pair = pair.expand_as(s)
    diff = torch.where(pair, s, torch.zeros_like(s)) - torch.where(pair, t, torch.zeros_like(t))
    return masked_mean(diff.pow(2), pair)


def attention_kl_loss(student_probs: torch.Tensor, teacher_probs: torch.Tensor,
                      mask: torch.Tensor | None = None) -> torch.Tensor:
    """MiniLM attention loss: ``KL(teacher row || student row)`` of attention distributions.

    Wang, Wei, Dong, Bao, Yang & Zhou (2020), "MiniLM: Deep Self-Attention Distillation
    for Task-Agnostic Compression of Pre-Trained Transformers", NeurIPS, self-attention
    distribution transfer: for each
    (batch, head, query) the KL divergence between the teacher's and the student's
    distributions over keys, summed over keys and averaged over batch, heads and
    (unmasked) query positions. Keys where the teacher gives probability 0 (masked or
    future keys) contribute 0.

    Args:
        student_probs, teacher_probs: ``(B, heads, L, L)`` softmax outputs, rows sum to 1.
        mask: optional bool ``(B, L)`` token mask: padded queries are not averaged and
            padded keys are not summed.
    """
    _check_attention_pair(student_probs, teacher_probs, "student_probs", "teacher_probs")
    B, H, L, _ = student_probs.shape
    if mask is not None and (not isinstance(mask, torch.Tensor) or mask.shape != (B, L)):
        got = shape_str(mask) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"mask must be a (B, L) = ({B}, {L}) token mask, got mask {got}")
    p_s, p_t = as_compute_dtype(student_probs, teacher_probs.detach())
    keep = p_t > 0
    if mask is not None:
        mask = mask if mask.dtype == torch.bool else mask != 0
        keep = keep & mask[:, None, None, :]
    # Safe logs: entries that are dropped are set to 1 before the log, so neither the
    # value nor the gradient can become NaN there.
    one = torch.ones_like(p_t)
    log_ratio = torch.log(torch.where(keep, p_t, one)) - torch.log(torch.where(keep, p_s, one))
    kl_rows = (torch.where(keep, p_t, torch.zeros_like(p_t)) * log_ratio).sum(-1)  # (B, H, L)
    rows = None if mask is None else mask[:, None, :].expand(B, H, L)
    return masked_mean(kl_rows, rows)
