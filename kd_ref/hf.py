"""The ``kd_ref`` losses on Hugging Face causal language models (``pip install kd_ref[hf]``).

    from kd_ref import hf
    loss = hf.token_kd_loss(student, teacher, input_ids, attention_mask, labels=labels, T=1.0)
    loss = hf.on_policy_gkd_loss(student, teacher, prompt_ids, prompt_mask, max_new_tokens=16, beta=0.5)

The losses themselves need nothing from ``transformers``: they take logits ``(..., V)``.
What a causal LM adds, and what this module handles:

- **next-token alignment**: the logits at position j predict token j + 1, so a sequence of L
  tokens gives L - 1 scored positions (``logits[:, :-1]`` against ``input_ids[:, 1:]``);
- **attention masks**: padded positions (``attention_mask == 0``) are left out of the loss, and
  ``position_ids`` are computed from the mask, so a left-padded prompt gets the positions it
  would have without padding, in sampling and in scoring alike;
- **completion-only masks**: ``labels`` with ``-100`` (Hugging Face's ignore index) on the
  prompt's tokens, as TRL's collators make them, restrict the loss to the completion;
- **vocabularies**: the two models must score the same token ids. Different tokenizers are
  refused with a ``ValueError``. Models often pad their embedding matrix beyond the tokenizer
  (to a multiple of 64 or 128): then pass ``vocab_size=len(tokenizer)`` and the extra rows,
  which no real token uses, are dropped from both models' logits before the loss.

The teacher runs in eval mode under ``torch.no_grad()`` (as ``kd_ref.teacher_forward`` runs one); on-policy
samples are drawn under ``torch.no_grad()`` too (``model.generate`` records no graph), so no
gradient flows through the sampling.
"""
from __future__ import annotations

import torch

from .losses import IGNORE_INDEX, generalized_jsd_loss, kd_loss

HF_IGNORE_INDEX = -100


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """``(B, L)`` positions counted over the real tokens only (0 on left padding), as ``generate`` does."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def align_vocabularies(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                       vocab_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The two logits over one vocabulary, or a ``ValueError`` that says what to do.

    ``vocab_size``: the tokenizer's size; rows beyond it (embedding padding) are dropped from
    both. Without it, the two last dimensions must be equal.
    """
    v_s, v_t = student_logits.shape[-1], teacher_logits.shape[-1]
    if vocab_size is not None:
        if not (isinstance(vocab_size, int) and 1 <= vocab_size <= min(v_s, v_t)):
            raise ValueError(f"vocab_size must be an integer in 1..{min(v_s, v_t)} (the smaller of the two "
                             f"models' logit widths {v_s} and {v_t}), got vocab_size={vocab_size!r}")
        return student_logits[..., :vocab_size], teacher_logits[..., :vocab_size]
    if v_s != v_t:
        raise ValueError(
            f"the student scores {v_s} token ids and the teacher {v_t}: distillation compares the two "
            f"distributions id by id, so both models must use the same tokenizer. If they do and the "
            f"difference is only padding rows of an embedding matrix (resized to a multiple of 64, say), pass "
            f"vocab_size=len(tokenizer) to drop those rows; if the tokenizers differ, token-level KD does not "
            f"apply (use sequence-level KD on the teacher's decoded text, or a cross-tokenizer method)")
    return student_logits, teacher_logits


def next_token_mask(attention_mask: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
    """``(B, L - 1)`` bool: positions j whose *next* token (j + 1) is real and, with ``labels``, not ignored.

    ``labels`` uses ``-100`` (or kd_ref's ``-1``) for tokens that are not learned, e.g. the prompt.
    """
    keep = attention_mask[:, 1:].bool() & attention_mask[:, :-1].bool()        # (B, L - 1)
    if labels is not None:
        target = labels[:, 1:]
        keep = keep & (target != HF_IGNORE_INDEX) & (target != IGNORE_INDEX)
    return keep


def completion_labels(input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_lengths) -> torch.Tensor:
    """Labels for completion-only training: ``input_ids`` with ``-100`` on each prompt and on padding.

    ``prompt_lengths[b]``: how many real tokens of row b (after any left padding) are prompt; either
    padding side works.
    """
    labels = input_ids.clone()
    labels[attention_mask == 0] = HF_IGNORE_INDEX
    starts = attention_mask.long().argmax(-1)                                   # first real token (left padding)
    for b, n in enumerate(torch.as_tensor(prompt_lengths).tolist()):
        labels[b, : int(starts[b]) + int(n)] = HF_IGNORE_INDEX
    return labels


def _logits(model, input_ids, attention_mask):
    return model(input_ids=input_ids, attention_mask=attention_mask,
                 position_ids=position_ids(attention_mask)).logits               # (B, L, V)


def _teacher_logits(teacher, input_ids, attention_mask):
    """The teacher's logits in eval mode under no_grad (what ``kd_ref.teacher_forward`` does for a module)."""
    teacher.eval()
    with torch.no_grad():
        return _logits(teacher, input_ids, attention_mask)


def token_kd_loss(student, teacher, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  labels: torch.Tensor | None = None, T: float = 1.0, vocab_size: int | None = None) -> torch.Tensor:
    """Token-level forward KD, ``T^2 KL(p_t || p_s)``, at every real (and, with ``labels``, learned) position.

    Args:
        student, teacher: causal LMs whose output has ``.logits`` ``(B, L, V)``.
        input_ids, attention_mask: ``(B, L)``, as a tokenizer returns them (any padding side).
        labels: optional ``(B, L)`` with ``-100`` where a token is not learned (completion-only).
        vocab_size: the tokenizer's size, when the models' logits are padded beyond it.
    """
    mask = next_token_mask(attention_mask, labels)                              # (B, L - 1)
    s = _logits(student, input_ids, attention_mask)[:, :-1]                     # (B, L - 1, V_s)
    t = _teacher_logits(teacher, input_ids, attention_mask)[:, :-1]    # (B, L - 1, V_t), no graph
    s, t = align_vocabularies(s, t, vocab_size)
    return kd_loss(s, t, T=T, mask=mask)


def sample(model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, max_new_tokens: int,
           temperature: float = 1.0, top_k: int | None = None, pad_token_id: int = 0
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Continue left-padded prompts ``(B, P)`` by ``max_new_tokens`` sampled tokens, without gradient.

    Returns ``(sequences, attention_mask)``, both ``(B, P + max_new_tokens)``; the mask is the
    prompt's followed by ones (generation does not stop early: ``min_new_tokens`` is set, so every
    row has the same completion length).
    """
    was_training = model.training
    model.eval()
    with torch.no_grad():
        sequences = model.generate(input_ids=prompt_ids, attention_mask=prompt_mask, do_sample=True,
                                   max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens,
                                   temperature=temperature, top_k=top_k or 0, pad_token_id=pad_token_id)
    model.train(was_training)
    new = sequences.shape[1] - prompt_ids.shape[1]
    mask = torch.cat([prompt_mask, prompt_mask.new_ones(prompt_mask.shape[0], new)], dim=1)
    return sequences, mask


def on_policy_gkd_loss(student, teacher, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                       max_new_tokens: int, beta: float = 0.5, temperature: float = 1.0,
                       vocab_size: int | None = None, pad_token_id: int = 0) -> torch.Tensor:
    """One on-policy GKD step's loss: the student continues the prompts, JSD_beta on the continuation.

    Agarwal et al. (2024), GKD, with student-generated data (lambda = 1 for this batch):
    sample without gradient, score the sequences with the student (with gradient) and the teacher
    (eval, no_grad), and average ``generalized_jsd_loss(beta)`` over the positions that predict the
    sampled tokens (``beta=1``: on-policy reverse KL). Prompts must be **left**-padded.
    """
    sequences, mask = sample(student, prompt_ids, prompt_mask, max_new_tokens, temperature,
                             pad_token_id=pad_token_id)                         # (B, P + N), constants
    P = prompt_ids.shape[1]
    labels = sequences.clone()
    labels[:, :P] = HF_IGNORE_INDEX                                             # completion only
    keep = next_token_mask(mask, labels)                                        # (B, P + N - 1)
    s = _logits(student, sequences, mask)[:, :-1]
    t = _teacher_logits(teacher, sequences, mask)[:, :-1]
    s, t = align_vocabularies(s, t, vocab_size)
    return generalized_jsd_loss(s, t, beta=beta, mask=keep)
