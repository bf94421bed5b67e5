"""Teacher outputs computed once and stored: full, or the top k classes plus one remainder bucket.

A teacher's soft targets can be cached so that the teacher never runs again while students
train (no augmentation, or one fixed view per example; Beyer et al. 2022 discuss what that
costs). Storing every logit costs ``C`` numbers per position, which for a language model's
vocabulary is the dominant memory; the common remedy is to keep the teacher's top ``k``
classes only.

:class:`TopKTargets` keeps, per position and at one temperature T, the indices of the teacher's
``k`` most probable classes, their log-probabilities, and the log of the mass left outside them
(the *remainder*). :func:`cached_kd_loss` is the KD loss on that coarsened distribution: the
teacher's ``k + 1`` buckets (the top k classes, and "every other class") against the student's
probabilities of the same buckets,

    T² · [ Σ_{i ∈ top-k} p_t,i log(p_t,i / p_s,i) + r_t log(r_t / r_s) ],

with r the mass outside the top k. This convention (one bucket for the rest, rather than
spreading the remainder uniformly over the other classes) keeps the loss an exact KL between
two distributions, so:

* with ``k = C`` it equals :func:`kd_loss` exactly (r = 0);
* for any k it is never larger than the full KL (merging classes cannot increase a KL divergence),
  and the gap is exactly ``T² · r_t · KL(p_t(· | rest) ‖ p_s(· | rest))``, the tail's own KL
  weighted by the tail's mass: small when the teacher's tail mass is small.

The tests check both identities against NumPy.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .._checks import as_compute_dtype, check_mask, check_temperature, check_tensor, masked_mean, shape_str


@dataclass(frozen=True)
class TopKTargets:
    """A teacher's soft targets at temperature ``T``, reduced to its top ``k`` classes per position.

    ``indices`` ``(..., k)`` (int64), ``log_probs`` ``(..., k)`` the teacher's log-probabilities of
    those classes at T, ``log_remainder`` ``(...)`` the log of the mass outside them (``-inf`` when
    k = C), ``num_classes`` C.
    """

    indices: torch.Tensor
    log_probs: torch.Tensor
    log_remainder: torch.Tensor
    num_classes: int
    T: float

    @property
    def k(self) -> int:
        return self.indices.shape[-1]

    def bytes_per_position(self, index_dtype: torch.dtype = torch.int32, value_dtype: torch.dtype = torch.float16) -> int:
        """Storage per position when saved compactly: k indices, k values and the remainder."""
        index_bytes = torch.empty((), dtype=index_dtype).element_size()
        value_bytes = torch.empty((), dtype=value_dtype).element_size()
        return self.k * (index_bytes + value_bytes) + value_bytes

    def __getitem__(self, index) -> "TopKTargets":
        """The targets of the positions ``index`` (any tensor index over the leading dimensions), e.g. a batch."""
        return TopKTargets(self.indices[index], self.log_probs[index], self.log_remainder[index],
                           self.num_classes, self.T)

    def to(self, device) -> "TopKTargets":
        return TopKTargets(self.indices.to(device), self.log_probs.to(device), self.log_remainder.to(device),
                           self.num_classes, self.T)


def full_bytes_per_position(num_classes: int, value_dtype: torch.dtype = torch.float16) -> int:
    """Storage per position of every teacher logit (the uncached-top-k baseline)."""
    return num_classes * torch.empty((), dtype=value_dtype).element_size()


def topk_targets(teacher_logits: torch.Tensor, k: int, T: float = 1.0) -> TopKTargets:
    """Cache the teacher's top ``k`` classes at temperature ``T`` from its logits ``(..., C)``.

    Raises ``ValueError`` when k is not in ``[1, C]``.
    """
    check_tensor(teacher_logits, "teacher_logits", min_dim=1)
    T = check_temperature(T)
    num_classes = teacher_logits.shape[-1]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= num_classes:
        raise ValueError(f"k must be an integer in [1, {num_classes}] for teacher_logits {shape_str(teacher_logits)}, "
                         f"got k={k!r}")
    (logits,) = as_compute_dtype(teacher_logits.detach())
    log_p = F.log_softmax(logits / T, dim=-1)
    top, indices = log_p.topk(k, dim=-1)
    return TopKTargets(indices, top, _log_rest(log_p, indices), num_classes, T)


def _log_rest(log_p: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """log of the probability mass outside ``indices``, computed without cancellation.

    ``log(1 - Σ top)`` loses every digit when the top classes hold almost all the mass, so the
    rest is summed directly in log space over the classes that are not kept.
    """
    outside = torch.ones_like(log_p, dtype=torch.bool).scatter(-1, indices, False)
    return torch.where(outside, log_p, torch.full_like(log_p, float("-inf"))).logsumexp(-1)


def cached_kd_loss(student_logits: torch.Tensor, targets: TopKTargets, mask: torch.Tensor | None = None) -> torch.Tensor:
    """KD loss against cached top-k teacher targets: ``T²`` · KL over the k classes and one remainder bucket.

    Equals :func:`kd_loss` (same T, same averaging over unmasked positions) when ``k = C``, and
    is at most :func:`kd_loss` otherwise (module docstring). The student runs at the temperature
    stored in ``targets``.

    Args:
        student_logits: ``(..., C)``.
        targets: from :func:`topk_targets` on teacher logits of the same shape.
        mask: optional bool ``(...)``; only True positions count.
    """
    check_tensor(student_logits, "student_logits", min_dim=1)
    if not isinstance(targets, TopKTargets):
        raise ValueError(f"targets must be TopKTargets (from topk_targets), got {type(targets).__name__}")
    if student_logits.shape[-1] != targets.num_classes or student_logits.shape[:-1] != targets.indices.shape[:-1]:
        raise ValueError(f"student_logits {shape_str(student_logits)} must be (..., C) with ... = "
                         f"{tuple(targets.indices.shape[:-1])} and C = {targets.num_classes} as in targets")
    mask = check_mask(mask, student_logits.shape[:-1], against="student_logits.shape[:-1]")
    T = targets.T
    (s,) = as_compute_dtype(student_logits)
    log_q = F.log_softmax(s / T, dim=-1)
    log_p = targets.log_probs.to(log_q.dtype)
    if targets.k < targets.num_classes:                     # the remainder bucket: every class not kept
        log_p = torch.cat([log_p, targets.log_remainder.to(log_q.dtype).unsqueeze(-1)], -1)
        log_q = torch.cat([log_q.gather(-1, targets.indices), _log_rest(log_q, targets.indices).unsqueeze(-1)], -1)
    else:                                                   # k = C: no bucket (its logsumexp would have no term)
        log_q = log_q.gather(-1, targets.indices)
    p = log_p.exp()
    terms = torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p))       # 0 log 0 = 0 (k = C: no rest)
    return T * T * masked_mean(terms.sum(-1), mask)
