"""Divergences for distilling language models: reverse KL, GKD's generalised JSD, skew KL.

Which divergence the student minimises decides what it does with probability mass it
cannot place exactly like the teacher. Forward KL(p_t || p_s) (:func:`kd_loss`)
punishes every class the teacher likes and the student misses, so a small student
spreads out to cover all of the teacher's modes ("mode covering"). Reverse
KL(p_s || p_t) punishes the student for mass where the teacher has little, so it
settles on the modes it can fit ("mode seeking"). The generalised JSD and the skew KLs
interpolate between the two and stay bounded when the distributions barely overlap.

Conventions shared with the logit losses (see ``kd_ref.losses.logits``):

- logits are ``(..., V)`` with the vocabulary (classes) last; every other dimension is
  a position, e.g. ``(B, L, V)`` for a batch of sequences;
- each loss is summed over the vocabulary and averaged over positions, only over the
  positions where the bool ``mask`` (shape ``logits.shape[:-1]``, e.g. ``(B, L)``)
  is True when one is given; an all-False mask gives 0;
- probabilities come from ``log_softmax(logits / T)`` and are handled in log space
  throughout (mixtures with ``logaddexp``), so logits of magnitude 1e4 give finite
  losses and gradients;
- every loss is multiplied by T^2, as :func:`kd_loss` is (Hinton et al. 2015), so that
  at T = 1 (the default here, as in on-policy distillation) nothing is rescaled and at
  other T the end points agree exactly with ``kd_loss`` and ``reverse_kl_loss``;
- the teacher's logits are detached; fp16 / bf16 inputs are computed in float32.
"""
from __future__ import annotations

import math

import torch

from .._checks import check_fraction, masked_mean
from .logits import _kl_rows, _prepare


def _log_mix(log_p: torch.Tensor, log_q: torch.Tensor, w: float) -> torch.Tensor:
    """``log(w * p + (1 - w) * q)`` for 0 < w < 1, computed from the log-probabilities.

    Where both p and q are exactly 0 (a logit of -inf in both, e.g. padding rows of a
    vocabulary) the mixture is 0 too; those entries are routed around ``logaddexp`` so
    that its gradient (0 * NaN there) cannot leak a NaN.
    """
    a = log_p + math.log(w)
    b = log_q + math.log1p(-w)
    empty = torch.isneginf(a) & torch.isneginf(b)
    zero = torch.zeros_like(a)
    mixed = torch.logaddexp(torch.where(empty, zero, a), torch.where(empty, zero, b))
    return torch.where(empty, a, mixed)


def reverse_kl_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, T: float = 1.0,
                    mask: torch.Tensor | None = None) -> torch.Tensor:
    """Reverse KL: ``T^2 * KL(p_s || p_t) = T^2 * sum_v p_s,v (log p_s,v - log p_t,v)``.

    The divergence of on-policy distillation and MiniLLM (Gu et al. 2024, "MiniLLM:
    Knowledge Distillation of Large Language Models", ICLR) and the beta = 1 end of GKD
    (Agarwal et al. 2024, see :func:`generalized_jsd_loss`). The expectation is taken
    under the *student's* distribution, so the student pays for every token it likes
    that the teacher does not, and pays nothing for teacher modes it ignores: it is
    mode seeking. Here the expectation over the vocabulary is exact (a sum over all V
    tokens), not estimated from samples.

    Gradient with respect to the student logits at one position:
    ``T * p_s * (r - sum_v p_s,v r_v)`` with ``r = log p_s - log p_t``, divided by the
    number of positions averaged over.

    Args:
        student_logits: ``(..., V)``.
        teacher_logits: ``(..., V)``, same shape; treated as a constant.
        T: temperature > 0 (both distributions are ``softmax(logits / T)``).
        mask: optional bool ``student_logits.shape[:-1]``, e.g. ``(B, L)``; only True
            positions count (real tokens, completion tokens).
    Returns:
        scalar loss (float32 for fp16 / bf16 inputs).
    """
    log_p_s, log_p_t, T, mask = _prepare(student_logits, teacher_logits, T, mask)
    return T * T * masked_mean(_kl_rows(log_p_s, log_p_t), mask)


def generalized_jsd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, beta: float = 0.5,
                         T: float = 1.0, mask: torch.Tensor | None = None) -> torch.Tensor:
    """GKD's generalised Jensen-Shannon divergence, in the convention TRL implements.

    ``m = beta * p_t + (1 - beta) * p_s``,
    ``JSD_beta = T^2 * [beta * KL(p_t || m) + (1 - beta) * KL(p_s || m)]``,
    per position, summed over the vocabulary, averaged over (unmasked) positions.

    Agarwal, Vieillard, Zhou, Stanczyk, Ramos, Geist & Bachem (2024), "On-Policy
    Distillation of Language Models: Learning from Self-Generated Mistakes" (GKD), ICLR,
    eq. (1) defines the generalised JSD with a mixing weight beta. The direction of
    beta used here is the one of TRL's ``GKDTrainer.generalized_jsd_loss`` (and of its
    ``DistillationTrainer``): beta weights the *teacher* in the mixture, beta = 0 is
    the forward KL ``KL(p_t || p_s)`` and beta = 1 the reverse KL ``KL(p_s || p_t)``.

    The end points are taken explicitly, as TRL does: at beta = 0 this returns exactly
    :func:`kd_loss` and at beta = 1 exactly :func:`reverse_kl_loss` (same T). They are
    *not* the limits of the interior formula: as beta -> 0 the mixture m -> p_s, so
    ``KL(p_s || m) -> 0`` (like beta^2) and the first term is ``beta * KL(p_t || m)``,
    about ``beta * KL(p_t || p_s)``; the interior loss shrinks to 0 like beta times the
    forward KL, then jumps to the full forward KL at beta = 0. The same happens at
    beta -> 1 with the reverse KL. So a beta of 0.01 is not "almost forward KL" in
    scale: it is roughly the forward KL divided by 100 (the gradient direction is close
    to the forward KL's, the step size is not). Lesson 09 plots this.

    Bounds: ``0 <= JSD_beta <= T^2 * (-beta log beta - (1 - beta) log(1 - beta))``
    (at most T^2 log 2, at beta = 1/2) for 0 < beta < 1; and swapping the roles of
    student and teacher together with beta <-> 1 - beta leaves the value unchanged.

    Temperature: TRL divides both logits by ``temperature`` and does **not** multiply
    by T^2 (its trainer calls the loss at the default temperature 1). kd_ref multiplies
    by T^2 like every logit loss, so the end points equal ``kd_loss`` /
    ``reverse_kl_loss`` at any T. At the default T = 1 the two agree; to reproduce
    TRL's number at another T, divide this loss by T^2.

    Args:
        student_logits, teacher_logits: ``(..., V)``, same shape; the teacher's are a
            constant.
        beta: weight of the teacher in the mixture, in [0, 1].
        T: temperature > 0.
        mask: optional bool ``student_logits.shape[:-1]``; TRL's ``labels != -100``.
    """
    beta = check_fraction(beta, "beta")
    log_p_s, log_p_t, T, mask = _prepare(student_logits, teacher_logits, T, mask)
    if beta == 0.0:
        per_position = _kl_rows(log_p_t, log_p_s)                          # forward KL, exactly
    elif beta == 1.0:
        per_position = _kl_rows(log_p_s, log_p_t)                          # reverse KL, exactly
    else:
        log_m = _log_mix(log_p_t, log_p_s, beta)                           # (..., V)
        per_position = beta * _kl_rows(log_p_t, log_m) + (1 - beta) * _kl_rows(log_p_s, log_m)
    return T * T * masked_mean(per_position, mask)


def skew_kl_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, alpha: float = 0.1,
                 T: float = 1.0, mask: torch.Tensor | None = None) -> torch.Tensor:
    """DistiLLM's skew (forward) KL: ``T^2 * KL(p_t || alpha * p_t + (1 - alpha) * p_s)``.

    Ko, Kim, Chen & Yun (2024), "DistiLLM: Towards Streamlined Distillation for Large
    Language Models", ICML, section 3 (skew KL divergence; alpha = 0.1 in their
    experiments). Mixing a little of the teacher into the student's distribution keeps
    the log-ratio bounded: ``m >= alpha * p_t`` so the loss is at most
    ``-T^2 log alpha`` however wrong the student is, and its gradient stays moderate
    where the student gives a teacher token almost no probability. alpha = 0 is the
    forward KL (:func:`kd_loss`); alpha = 1 would be identically 0 and is refused.

    Difference from the authors' code (``distillm/losses.py``, ``skewed_forward_kl``):
    it returns the cross-entropy ``-sum_v p_t,v log m_v`` (this KL plus the teacher's
    entropy, a constant for the student): the gradients are the same, the values differ
    by ``H(p_t)``. It also takes ``log`` of the mixed probabilities; this is computed in
    log space. Neither rescales by T^2; at the default T = 1 nothing changes.

    Args:
        student_logits, teacher_logits: ``(..., V)``, same shape; the teacher's are a
            constant.
        alpha: weight of the teacher in the mixture, in [0, 1).
        T: temperature > 0.
        mask: optional bool ``student_logits.shape[:-1]``.
    """
    alpha = check_fraction(alpha, "alpha", allow_one=False)
    log_p_s, log_p_t, T, mask = _prepare(student_logits, teacher_logits, T, mask)
    log_m = log_p_s if alpha == 0.0 else _log_mix(log_p_t, log_p_s, alpha)
    return T * T * masked_mean(_kl_rows(log_p_t, log_m), mask)


def skew_reverse_kl_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, alpha: float = 0.1,
                         T: float = 1.0, mask: torch.Tensor | None = None) -> torch.Tensor:
    """DistiLLM's skew reverse KL: ``T^2 * KL(p_s || alpha * p_s + (1 - alpha) * p_t)``.

    Ko et al. (2024), the reverse form of :func:`skew_kl_loss` (their SRKL): the student
    is compared with a mixture that holds a fraction alpha of *itself*, so the loss is
    at most ``-T^2 log alpha``. alpha = 0 is the reverse KL (:func:`reverse_kl_loss`);
    alpha = 1 would be identically 0 and is refused. Same computation as the authors'
    ``skewed_reverse_kl`` (which returns the KL itself), in log space.

    A separate function rather than a ``reverse=`` flag of :func:`skew_kl_loss`, as
    :func:`reverse_kl_loss` is separate from :func:`kd_loss`: the name says which
    distribution the expectation is taken under, and alpha keeps the meaning "weight of
    the distribution in front" in both.

    With the generalised JSD (0 < beta < 1):
    ``generalized_jsd_loss(beta) = beta * skew_kl_loss(alpha=beta)
    + (1 - beta) * skew_reverse_kl_loss(alpha=1 - beta)``.

    Args:
        student_logits, teacher_logits: ``(..., V)``, same shape; the teacher's are a
            constant.
        alpha: weight of the student in the mixture, in [0, 1).
        T: temperature > 0.
        mask: optional bool ``student_logits.shape[:-1]``.
    """
    alpha = check_fraction(alpha, "alpha", allow_one=False)
    log_p_s, log_p_t, T, mask = _prepare(student_logits, teacher_logits, T, mask)
    log_m = log_p_t if alpha == 0.0 else _log_mix(log_p_s, log_p_t, alpha)
    return T * T * masked_mean(_kl_rows(log_p_s, log_m), mask)
