"""Attention losses: attention transfer for CNNs, attention matrices for transformers."""
from __future__ import annotations

import math

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

    Difference from the authors' code (``TinyBERT/task_distill.py`` and
    ``general_distill.py`` in huawei-noah/Pretrained-Language-Model): there, every
    score <= -100 (the keys BERT masks by adding -10000) is set to 0 in both models and
    ``MSELoss`` averages over **all** B x heads x L x L entries, so masked entries count
    in the denominator as zero errors, and padded query rows are compared in full.
    kd_ref averages over the unmasked entries only, so the value does not depend on how
    much padding a batch holds. With a key-only mask (``(B, 1, 1, L)``, what BERT
    masks) the two are related by ``theirs = ours * n_unmasked / n_all``; a (B, L)
    token mask also leaves out the padded queries' rows, which their code compares. To
    reproduce their number exactly, zero the masked scores yourself and call this loss
    without a mask.

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


_KL_INPUTS = ("probs", "scores", "log_probs")


def _token_mask(mask, B, L):
    """A (B, L) bool token mask, or None; anything else is a ValueError."""
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor) or mask.shape != (B, L):
        got = shape_str(mask) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"mask must be a (B, L) = ({B}, {L}) token mask, got mask {got}")
    return mask if mask.dtype == torch.bool else mask != 0


def _masked_log_softmax(scores: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """log softmax over keys of ``(B, H, L, L)`` scores; padded keys get no probability.

    Rows of padded queries are replaced by zeros before the softmax: they are never
    counted, and a row of -inf there (a model that masks padded queries) would put NaN
    into the backward pass of ``log_softmax`` even though its value is discarded.
    """
    if mask is None:
        return torch.log_softmax(scores, dim=-1)
    neg_inf = torch.tensor(float("-inf"), dtype=scores.dtype, device=scores.device)
    scores = torch.where(mask[:, None, None, :], scores, neg_inf)           # padded keys
    scores = torch.where(mask[:, None, :, None], scores, torch.zeros_like(scores))  # padded queries
    return torch.log_softmax(scores, dim=-1)


def _row_kl_from_log_probs(log_p_s: torch.Tensor, log_p_t: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """KL(teacher row || student row) over keys, averaged over (B, H, unmasked queries)."""
    B, H, L, _ = log_p_t.shape
    keep = log_p_t > float("-inf")                                          # teacher gives mass
    if mask is not None:
        keep = keep & mask[:, None, None, :]
    zero = torch.zeros_like(log_p_t)
    log_ratio = torch.where(keep, log_p_t, zero) - torch.where(keep, log_p_s, zero)
    kl_rows = (torch.where(keep, log_p_t.exp(), zero) * log_ratio).sum(-1)  # (B, H, L)
    rows = None if mask is None else mask[:, None, :].expand(B, H, L)
    return masked_mean(kl_rows, rows)


def attention_kl_loss(student_probs: torch.Tensor, teacher_probs: torch.Tensor,
                      mask: torch.Tensor | None = None, *, inputs: str = "probs") -> torch.Tensor:
    """MiniLM attention loss: ``KL(teacher row || student row)`` of attention distributions.

    Wang, Wei, Dong, Bao, Yang & Zhou (2020), "MiniLM: Deep Self-Attention Distillation
    for Task-Agnostic Compression of Pre-Trained Transformers", NeurIPS, self-attention
    distribution transfer: for each
    (batch, head, query) the KL divergence between the teacher's and the student's
    distributions over keys, summed over keys and averaged over batch, heads and
    (unmasked) query positions. Keys where the teacher gives probability 0 (masked or
    future keys) contribute 0.

    What the tensors hold is chosen by ``inputs``:

    - ``"probs"`` (the default, for compatibility): softmax outputs, rows sum to 1. Not
      stable for peaked rows: when a student probability underflows to 0 where the
      teacher's is positive (a score gap of about 104 in float32), ``log 0`` makes the
      loss infinite although the scores it came from were finite.
    - ``"scores"`` (recommended): the pre-softmax scores ``QK^T / sqrt(d)``, with -inf
      (or a large negative number) at masked keys, as MiniLM's own code works from.
      Both distributions are formed here with ``log_softmax``, so any finite scores
      give a finite loss and gradient. With a token ``mask``, padded keys are removed
      before the softmax (as a model that masks them does), so the result equals the
      ``"probs"`` form of the same model wherever that one is finite. A row that is
      -inf everywhere (a padded query some models mask out) needs the token mask.
    - ``"log_probs"``: log-softmax outputs (-inf at masked keys); stable as well, as
      long as the rows it keeps are finite somewhere.

    Args:
        student_probs, teacher_probs: ``(B, heads, L, L)``, what ``inputs`` says; the
            argument names are the historical ones.
        mask: optional bool ``(B, L)`` token mask: padded queries are not averaged and
            padded keys are not summed.
        inputs: ``"probs"``, ``"scores"`` or ``"log_probs"`` (keyword only).
    """
    _check_attention_pair(student_probs, teacher_probs, "student_probs", "teacher_probs")
    if inputs not in _KL_INPUTS:
        raise ValueError(f"inputs must be one of {_KL_INPUTS}, got inputs={inputs!r}")
    B, H, L, _ = student_probs.shape
    mask = _token_mask(mask, B, L)
    s, t = as_compute_dtype(student_probs, teacher_probs.detach())
    if inputs == "scores":
        return _row_kl_from_log_probs(_masked_log_softmax(s, mask), _masked_log_softmax(t, mask), mask)
    if inputs == "log_probs":
        return _row_kl_from_log_probs(s, t, mask)
    p_s, p_t = s, t
    keep = p_t > 0
    if mask is not None:
        keep = keep & mask[:, None, None, :]
    # Safe logs: entries that are dropped are set to 1 before the log, so neither the
    # value nor the gradient can become NaN there.
    one = torch.ones_like(p_t)
    log_ratio = torch.log(torch.where(keep, p_t, one)) - torch.log(torch.where(keep, p_s, one))
    kl_rows = (torch.where(keep, p_t, torch.zeros_like(p_t)) * log_ratio).sum(-1)  # (B, H, L)
    rows = None if mask is None else mask[:, None, :].expand(B, H, L)
    return masked_mean(kl_rows, rows)


def value_relation_loss(student_values: torch.Tensor, teacher_values: torch.Tensor,
                        mask: torch.Tensor | None = None) -> torch.Tensor:
    """MiniLM value relation: ``KL(VR_t row || VR_s row)``, ``VR = softmax(V V^T / sqrt(d_head))``.

    Wang et al. (2020), MiniLM, section 3 (self-attention value-relation transfer). For
    each head, the value vectors of one layer are related to each other by their scaled
    dot products, ``VR = softmax(V V^T / sqrt(d_k))`` over the second position (an
    ``(L, L)`` matrix whose rows are distributions, like attention maps), each model
    scaled by its own head size (``d_k`` for the teacher, ``d_k'`` for the student).
    The loss is ``1 / (A_h |x|) * sum_a sum_t KL(VR_t[a, t] || VR_s[a, t])``: teacher
    first, summed over the second position, averaged over heads and positions (and the
    batch). MiniLM trains on ``attention_kl_loss + value_relation_loss`` of the last
    layer.

    Because only ``(L, L)`` relations are compared, the head sizes of student and
    teacher may differ (no projection); the head counts must match. Computed from the
    relation scores with ``log_softmax``, so it is finite for any finite values.

    Args:
        student_values: ``(B, heads, L, d_s)`` per-head values of the student.
        teacher_values: ``(B, heads, L, d_t)``; treated as a constant.
        mask: optional bool ``(B, L)`` token mask: padded positions are neither related
            to (columns) nor averaged over (rows).
    """
    check_tensor(student_values, "student_values", min_dim=4)
    check_tensor(teacher_values, "teacher_values", min_dim=4)
    if (student_values.dim() != 4 or teacher_values.dim() != 4
            or student_values.shape[:3] != teacher_values.shape[:3]):
        raise ValueError(
            "student_values and teacher_values must both be (B, heads, L, d_head) with the same B, heads "
            "and L (d_head may differ), got "
            f"student_values {shape_str(student_values)} and teacher_values {shape_str(teacher_values)}"
        )
    B, H, L, _ = student_values.shape
    mask = _token_mask(mask, B, L)
    v_s, v_t = as_compute_dtype(student_values, teacher_values.detach())

    def relation_log_probs(v):                                             # (B, H, L, L)
        scores = v @ v.transpose(-1, -2) / math.sqrt(v.shape[-1])
        return _masked_log_softmax(scores, mask)

    return _row_kl_from_log_probs(relation_log_probs(v_s), relation_log_probs(v_t), mask)
