"""Distillers for language models: every position of a sequence is a prediction.

Same pattern as ``kd_ref.distillers`` (a distiller's ``forward(x, y)`` returns
``(student_logits, {name: weighted loss})``), with ``x`` and ``y`` of shape ``(B, T)``:
token ids and next-token targets. A target equal to ``PAD_TARGET`` (-1) marks a
padded position: it is left out of every term, and the models are told which keys
are padding (``padding_mask``). Without padding, every position counts.

    TokenCE                 cross-entropy on the next character (teacher, scratch student)
    TokenKD                 + Hinton KD on every position: T^2 KL(p_t || p_s), masked mean
    TokenKDHiddenAttention  + hidden-state MSE through learned projections (TinyBERT)
                            + attention-distribution KL (MiniLM), on a uniform layer map

The layer map is TinyBERT's uniform strategy (Jiao et al. 2020, "TinyBERT: Distilling
BERT for Natural Language Understanding", Findings of EMNLP, section 3.1, the mapping
function n = g(m)): student layer m learns from teacher layer ``m * L_t / L_s``, with
layer 0 the embedding output, so the last student layer meets the last teacher layer.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .data.text import PAD_TARGET
from .distillers import Distiller
from .losses import attention_kl_loss, hidden_state_loss, kd_loss
from .teacher import teacher_forward


def uniform_layer_map(n_student: int, n_teacher: int) -> list[int]:
    """TinyBERT's uniform map: entry m (m = 0 .. n_student) is the teacher layer ``m * n_teacher / n_student``.

    Layer 0 is the embedding output and layer m the output of block m, as in
    ``CharGPT``'s ``hidden_states``. Example: 3 student layers, 6 teacher layers ->
    ``[0, 2, 4, 6]``. For attention, student block m (1-based) uses teacher block
    ``map[m]``. Requires ``n_teacher`` to be a multiple of ``n_student``.
    """
    for name, value in (("n_student", n_student), ("n_teacher", n_teacher)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {name}={value!r}")
    if n_teacher % n_student:
        raise ValueError(f"the uniform map needs n_teacher to be a multiple of n_student, got "
                         f"n_student={n_student}, n_teacher={n_teacher}")
    step = n_teacher // n_student
    return [m * step for m in range(n_student + 1)]


def target_mask(y: torch.Tensor) -> torch.Tensor | None:
    """``(B, T)`` bool mask of real targets, or None when nothing is padded (the fast path)."""
    real = y != PAD_TARGET                                                  # (B, T)
    return None if bool(real.all()) else real


def sequence_cross_entropy(logits: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Next-token cross-entropy (nats), averaged over the real targets. ``logits`` ``(B, T, V)``, ``y`` ``(B, T)``."""
    ce = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten().clamp_min(0), reduction="none")  # (B*T,)
    if mask is None:
        return ce.mean()
    mask = mask.flatten()                                                   # (B*T,)
    return torch.where(mask, ce, torch.zeros_like(ce)).sum() / mask.sum().clamp_min(1)


class TokenCE(Distiller):
    """Plain language-model training: ``{"ce": CE(student(x), y)}`` over real targets."""

    def __init__(self, student: nn.Module):
        super().__init__(student)

    def forward(self, x, y):
        mask = target_mask(y)
        logits = self.student(x, mask)                                      # (B, T, V)
        return logits, {"ce": sequence_cross_entropy(logits, y, mask)}


class TokenKD(Distiller):
    """Token-level KD: ``kd_weight * kd_loss(s, t, T, mask) + ce_weight * CE(s, y)``.

    Hinton, Vinyals & Dean (2015), section 2, applied at every position of the
    sequence, as in DistilBERT's distillation loss (Sanh et al. 2019, section 3): the
    teacher's full next-character distribution is the soft target of each position.
    ``kd_ref.kd_loss`` averages the T^2-scaled KL over the real positions only.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, T: float = 2.0,
                 kd_weight: float = 1.0, ce_weight: float = 0.0):
        super().__init__(student, teacher)
        self.T, self.kd_weight, self.ce_weight = T, kd_weight, ce_weight

    def forward(self, x, y):
        mask = target_mask(y)
        logits = self.student(x, mask)                                      # (B, T, V)
        teacher_logits = teacher_forward(self.teacher, x, mask)             # (B, T, V), no graph
        terms = {"kd": self.kd_weight * kd_loss(logits, teacher_logits, T=self.T, mask=mask)}
        if self.ce_weight:
            terms["ce"] = self.ce_weight * sequence_cross_entropy(logits, y, mask)
        return logits, terms


class TokenKDHiddenAttention(TokenKD):
    """Token KD + hidden states through learned projections + attention distributions.

    Terms (each already weighted, averaged over the matched layers):

    - ``hidden``: ``hidden_state_loss(h_s[m], h_t[g(m)], W_m)`` for m = 0 .. L_s (the
      embedding output and every block), with ``W_m = nn.Linear(d_s, d_t)`` learned
      with the student (TinyBERT's W_h; one per matched layer here);
    - ``attention``: ``attention_kl_loss(A_s[m], A_t[g(m)])`` for blocks m = 1 .. L_s,
      KL(teacher row || student row) of the attention probabilities (MiniLM, Wang et
      al. 2020; TinyBERT matches the pre-softmax scores with an MSE instead).

    Why the head counts must match: ``attention_kl_loss`` compares the two
    ``(B, heads, T, T)`` tensors head by head, and there is no natural pairing of, say,
    6 teacher heads with 4 student heads. So teacher and student are built with the
    same number of heads and differ in depth and width; each student head is then
    narrower (width / heads), but its attention pattern over keys has the same shape
    as its teacher head's. (MiniLMv2 lifts the restriction by comparing relations
    between re-split heads; not done here.)
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, T: float = 2.0, kd_weight: float = 1.0,
                 ce_weight: float = 0.0, hidden_weight: float = 1.0, attention_weight: float = 1.0):
        super().__init__(student, teacher, T=T, kd_weight=kd_weight, ce_weight=ce_weight)
        s, t = student.config, teacher.config
        if s.n_head != t.n_head:
            raise ValueError(f"attention KL compares heads one to one: the student has n_head={s.n_head}, "
                             f"the teacher n_head={t.n_head}; build them with the same head count")
        self.layer_map = uniform_layer_map(s.n_layer, t.n_layer)
        self.projections = nn.ModuleList(nn.Linear(s.width, t.width) for _ in self.layer_map)
        self.hidden_weight, self.attention_weight = hidden_weight, attention_weight

    def forward(self, x, y):
        mask = target_mask(y)
        out_s = self.student(x, mask, output_hidden=True, output_attentions=True)
        out_t = teacher_forward(self.teacher, x, mask, output_hidden=True, output_attentions=True)
        hidden = torch.stack([
            hidden_state_loss(out_s.hidden_states[m], out_t.hidden_states[n], projection=w, mask=mask)
            for m, (n, w) in enumerate(zip(self.layer_map, self.projections))
        ]).mean()
        attention = torch.stack([
            attention_kl_loss(out_s.attention_probs[m - 1], out_t.attention_probs[n - 1], mask=mask)
            for m, n in enumerate(self.layer_map) if m > 0
        ]).mean()
        terms = {"kd": self.kd_weight * kd_loss(out_s.logits, out_t.logits, T=self.T, mask=mask)}
        if self.ce_weight:
            terms["ce"] = self.ce_weight * sequence_cross_entropy(out_s.logits, y, mask)
        terms["hidden"] = self.hidden_weight * hidden
        terms["attention"] = self.attention_weight * attention
        return out_s.logits, terms
