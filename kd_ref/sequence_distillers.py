"""Distilling a transformer's internals: hidden states and attention, on a layer map.

Token-level KD itself is ``kd_ref.distillers.LogitKD(..., padding=True)`` (and the
language-model baseline ``Scratch(..., padding=True)``): the same loss at every real
position of a sequence. This module adds what only transformers have:

    HiddenAttentionKD   token KD + hidden-state MSE through learned projections (TinyBERT)
                        + attention-distribution KL (MiniLM), on a uniform layer map

The layer map is TinyBERT's uniform strategy (Jiao et al. 2020, "TinyBERT: Distilling
BERT for Natural Language Understanding", Findings of EMNLP, section 3.1, the mapping
function n = g(m)): student layer m learns from teacher layer ``m * L_t / L_s``, with
layer 0 the embedding output, so the last student layer meets the last teacher layer.
"""
from __future__ import annotations

import torch
from torch import nn

from .distillers import LogitKD
from .losses import attention_kl_loss, hidden_state_loss
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


class HiddenAttentionKD(LogitKD):
    """Token KD + hidden states through learned projections + attention distributions.

    Terms (each already weighted, averaged over the matched layers):

    - ``hidden``: ``hidden_state_loss(h_s[m], h_t[g(m)], W_m)`` for m = 0 .. L_s (the
      embedding output and every block), with ``W_m = nn.Linear(d_s, d_t)`` learned
      with the student (TinyBERT's W_h; one per matched layer here);
    - ``attention``: ``attention_kl_loss(S_s[m], S_t[g(m)], inputs="scores")`` for
      blocks m = 1 .. L_s, KL(teacher row || student row) of the attention
      distributions (MiniLM, Wang et al. 2020; TinyBERT matches the pre-softmax scores
      with an MSE instead). The loss is given the pre-softmax scores ``S`` that
      ``CharGPT.forward_internals`` returns anyway (its explicit attention computes
      them before the softmax), not the probabilities: the distributions are then
      formed with ``log_softmax``, so a peaked student row whose probability
      underflows to 0 in float32 (a score gap above about 104) still gives a finite
      loss and gradient, where ``log`` of the probabilities would give infinity. Where
      both are finite the two forms agree (tests/test_text.py checks both).

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
        super().__init__(student, teacher, T=T, kd_weight=kd_weight, ce_weight=ce_weight, padding=True)
        s, t = student.config, teacher.config
        if s.n_head != t.n_head:
            raise ValueError(f"attention KL compares heads one to one: the student has n_head={s.n_head}, "
                             f"the teacher n_head={t.n_head}; build them with the same head count")
        self.layer_map = uniform_layer_map(s.n_layer, t.n_layer)
        self.projections = nn.ModuleList(nn.Linear(s.width, t.width) for _ in self.layer_map)
        self.hidden_weight, self.attention_weight = hidden_weight, attention_weight

    def forward(self, x, y):
        mask = self.real_positions(y)
        # A weight of 0 switches its term off (the ablations of the text recipe): it is not computed, and
        # without the attention term both models keep the fused attention kernel.
        attentions = self.attention_weight != 0
        out_s = self.student.forward_internals(x, mask, attentions=attentions)
        out_t = teacher_forward(self.teacher.forward_internals, x, mask, attentions=attentions)   # eval, no graph
        terms = self.logit_terms(out_s.logits, out_t.logits, y, mask)
        zero = out_s.logits.new_zeros(())
        terms["hidden"] = zero if self.hidden_weight == 0 else self.hidden_weight * torch.stack([
            hidden_state_loss(out_s.hidden_states[m], out_t.hidden_states[n], projection=w, mask=mask)
            for m, (n, w) in enumerate(zip(self.layer_map, self.projections))
        ]).mean()
        terms["attention"] = zero if not attentions else self.attention_weight * torch.stack([
            attention_kl_loss(out_s.attention_scores[m - 1], out_t.attention_scores[n - 1], mask=mask,
                              inputs="scores")
            for m, n in enumerate(self.layer_map) if m > 0
        ]).mean()
        return out_s.logits, terms
