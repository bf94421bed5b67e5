"""A small causal transformer over characters (a GPT-style language model), in one file.

    model = CharGPT(GPTConfig(vocab_size=103, context=64, n_layer=4, n_head=4, width=128))
    logits = model(idx)                                   # (B, T, vocab_size), always a tensor
    out = model.forward_internals(idx, attentions=True)   # a GPTOutput
    out.logits, out.hidden_states, out.attention_scores, out.attention_probs

The architecture is the decoder-only transformer of GPT-2 (Radford et al. 2019,
"Language Models are Unsupervised Multitask Learners", section 2.3): learned token
and position embeddings, ``n_layer`` pre-LayerNorm blocks (causal multi-head
self-attention, then a 4x-wide MLP with GELU, each added to the residual stream),
a final LayerNorm and a linear head over the vocabulary. Position t sees only the
tokens 0..t, so one forward pass gives a next-token prediction at every position.

What distillation needs from it, returned by ``forward_internals`` (``forward`` returns
the logits only, like every other model of the course):

- ``hidden_states``: ``n_layer + 1`` tensors ``(B, T, width)``: the embedding output
  (token + position), then the residual stream after each block (before the final
  LayerNorm). Index m is "layer m" in a layer map such as TinyBERT's.
- ``attention_scores``: per block ``(B, n_head, T, T)``, the pre-softmax scores
  ``q k^T / sqrt(head_dim)``, ``-inf`` where a key may not be seen (a future key, or a
  padding key); the input of TinyBERT's score loss.
- ``attention_probs``: per block ``(B, n_head, T, T)``, the softmax of the scores
  (rows sum to 1, 0 above the diagonal); the input of MiniLM's KL loss.

Without ``attentions=True`` the attention runs through
``torch.nn.functional.scaled_dot_product_attention`` (a fused kernel that never
stores the ``(T, T)`` matrices); with it, through the explicit formula. Both give
the same logits (tests/test_text.py checks it).

Padding: ``padding_mask`` ``(B, T)`` marks real tokens (True). Padding keys are
masked out for every query; the causal mask always applies. A padding query keeps
its own position as a key (the diagonal), so that no row of scores is all ``-inf``
(which would make its softmax NaN); its output is meaningless and a loss must
ignore it (pass the same mask to the loss).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class GPTConfig:
    """Sizes of a :class:`CharGPT`.

    Args:
        vocab_size: number of distinct tokens (characters).
        context: the longest sequence the model accepts (the position table's size).
        n_layer: transformer blocks (depth).
        n_head: attention heads per block; must divide ``width``.
        width: model width, the size of every hidden state (d_model).
        dropout: dropout on attention probabilities and residual branches (0 = off).
        tie_weights: share the token-embedding matrix with the output head
            (Press & Wolf 2017, "Using the Output Embedding to Improve Language Models").
    """

    vocab_size: int
    context: int = 64
    n_layer: int = 4
    n_head: int = 4
    width: int = 128
    dropout: float = 0.0
    tie_weights: bool = False

    def __post_init__(self):
        for name in ("vocab_size", "context", "n_layer", "n_head", "width"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {name}={value!r}")
        if self.width % self.n_head:
            raise ValueError(f"width must be divisible by n_head, got width={self.width}, n_head={self.n_head}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got dropout={self.dropout!r}")


class GPTOutput(NamedTuple):
    """What ``CharGPT.forward_internals`` returns (the attention fields are None unless requested)."""

    logits: torch.Tensor                                   # (B, T, vocab_size)
    hidden_states: tuple[torch.Tensor, ...]                # n_layer + 1 of (B, T, width)
    attention_scores: tuple[torch.Tensor, ...] | None      # n_layer of (B, n_head, T, T)
    attention_probs: tuple[torch.Tensor, ...] | None       # n_layer of (B, n_head, T, T)


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention where position t attends to keys 0..t only.

    ``softmax(q k^T / sqrt(d_head) + mask) v`` per head (Vaswani et al. 2017,
    "Attention Is All You Need", section 3.2), heads concatenated and projected.
    """

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.dropout = config.dropout
        self.qkv = nn.Linear(config.width, 3 * config.width)   # queries, keys and values in one matmul
        self.proj = nn.Linear(config.width, config.width)
        self.resid_drop = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor | None, explicit: bool):
        """``allowed``: bool ``(B, 1, T, T)`` (True = query may see key) or None for causal only."""
        B, T, C = x.size()                                                  # batch, time, width
        q, k, v = self.qkv(x).split(C, dim=2)                               # 3 x (B, T, C)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)     # (B, H, T, D)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)     # (B, H, T, D)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)     # (B, H, T, D)
        p_drop = self.dropout if self.training else 0.0
        if not explicit:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=p_drop,
                                               is_causal=allowed is None)   # (B, H, T, D)
            scores = probs = None
        else:
            if allowed is None:
                allowed = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()[None, None]  # (1, 1, T, T)
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(k.size(-1))     # (B, H, T, T)
            scores = scores.masked_fill(~allowed, float("-inf"))           # (B, H, T, T)
            probs = torch.softmax(scores, dim=-1)                           # (B, H, T, T), rows sum to 1
            y = F.dropout(probs, p_drop, training=self.training) @ v       # (B, H, T, D)
        y = y.transpose(1, 2).contiguous().view(B, T, C)                    # (B, T, C): heads side by side
        return self.resid_drop(self.proj(y)), scores, probs


class Block(nn.Module):
    """One pre-LayerNorm transformer block: ``x + attn(ln(x))``, then ``x + mlp(ln(x))``."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_attn = nn.LayerNorm(config.width)
        self.attn = CausalSelfAttention(config)
        self.ln_mlp = nn.LayerNorm(config.width)
        self.mlp = nn.Sequential(
            nn.Linear(config.width, 4 * config.width),
            nn.GELU(),
            nn.Linear(4 * config.width, config.width),
            nn.Dropout(config.dropout),
        )

    def forward(self, x: torch.Tensor, allowed: torch.Tensor | None, explicit: bool):
        a, scores, probs = self.attn(self.ln_attn(x), allowed, explicit)  # (B, T, C)
        x = x + a                                                           # (B, T, C)
        x = x + self.mlp(self.ln_mlp(x))                                    # (B, T, C)
        return x, scores, probs


class CharGPT(nn.Module):
    """Causal transformer language model; see the module docstring.

    Submodules are named for hooks: ``tok_emb``, ``pos_emb``, ``blocks.i`` (i = 0 ..
    n_layer - 1), ``blocks.i.attn``, ``ln_f``, ``head``.
    """

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.width)
        self.pos_emb = nn.Embedding(config.context, config.width)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.width)
        self.head = nn.Linear(config.width, config.vocab_size, bias=False)
        if config.tie_weights:
            self.head.weight = self.tok_emb.weight                          # one (vocab, width) matrix
        self.apply(self._init_weights)
        # GPT-2's scaling of the layers that write into the residual stream: the stream's
        # variance then stays about the same whatever the depth (Radford et al. 2019, section 2.3).
        for block in self.blocks:
            for layer in (block.attn.proj, block.mlp[2]):
                nn.init.normal_(layer.weight, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def _allowed(self, padding_mask: torch.Tensor | None, B: int, T: int, device) -> torch.Tensor | None:
        """Bool ``(B, 1, T, T)``: causal AND key is real, plus the diagonal; None without padding."""
        if padding_mask is None:
            return None
        if not isinstance(padding_mask, torch.Tensor) or padding_mask.shape != (B, T):
            got = tuple(padding_mask.shape) if isinstance(padding_mask, torch.Tensor) else type(padding_mask).__name__
            raise ValueError(f"padding_mask must have shape (B, T) = ({B}, {T}) like idx, got padding_mask {got}")
        real = padding_mask if padding_mask.dtype == torch.bool else padding_mask != 0   # (B, T)
        causal = torch.ones(T, T, dtype=torch.bool, device=device).tril()                # (T, T)
        diagonal = torch.eye(T, dtype=torch.bool, device=device)                         # (T, T)
        return (causal & real[:, None, :]) | diagonal                                    # (B, T, T)

    def forward(self, idx: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Next-token logits ``(B, T, vocab_size)`` at every position (the fused attention kernel).

        Args:
            idx: ``(B, T)`` integer token ids, ``T <= context``.
            padding_mask: optional ``(B, T)``, True (or nonzero) for real tokens.
        """
        return self._run(idx, padding_mask, explicit=False)[0]

    def forward_internals(self, idx: torch.Tensor, padding_mask: torch.Tensor | None = None, *,
                          attentions: bool = False) -> GPTOutput:
        """The same pass, returning a :class:`GPTOutput`: logits and every hidden state, plus with
        ``attentions=True`` every block's scores and probabilities (the explicit, unfused attention)."""
        logits, hidden, scores, probs = self._run(idx, padding_mask, explicit=attentions)
        return GPTOutput(logits=logits, hidden_states=tuple(hidden),
                         attention_scores=tuple(scores) if attentions else None,
                         attention_probs=tuple(probs) if attentions else None)

    def _run(self, idx, padding_mask, explicit: bool):
        if not isinstance(idx, torch.Tensor) or idx.dim() != 2 or idx.is_floating_point():
            got = tuple(idx.shape) if isinstance(idx, torch.Tensor) else type(idx).__name__
            raise ValueError(f"idx must be an integer tensor of shape (B, T), got idx {got}")
        B, T = idx.size()                                                   # batch, time
        if T > self.config.context:
            raise ValueError(f"sequence length T={T} exceeds the model's context={self.config.context}")
        allowed = self._allowed(padding_mask, B, T, idx.device)
        allowed = None if allowed is None else allowed[:, None]             # (B, 1, T, T): same for every head
        positions = torch.arange(T, device=idx.device)                      # (T,)
        x = self.drop(self.tok_emb(idx) + self.pos_emb(positions))          # (B, T, C)
        hidden, scores, probs = [x], [], []
        for block in self.blocks:
            x, s, p = block(x, allowed, explicit=explicit)                  # (B, T, C)
            hidden.append(x)
            scores.append(s)
            probs.append(p)
        return self.head(self.ln_f(x)), hidden, scores, probs               # logits (B, T, vocab_size)

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Extend ``idx`` ``(B, T0)`` by ``max_new_tokens`` sampled tokens; returns ``(B, T0 + max_new_tokens)``.

        Each new token is drawn from ``softmax(logits / temperature)`` at the last
        position (the context is cropped to the last ``context`` tokens); with ``top_k``
        only the k most likely tokens keep their probability (renormalised; Fan, Lewis &
        Dauphin 2018, "Hierarchical Neural Story Generation"). All B prompts are extended
        together (one forward pass per new token). No gradient is recorded: the result
        is a constant integer tensor, so a loss on it cannot backpropagate into the
        sampling (on-policy distillation relies on this). Pass a seeded ``generator`` for
        reproducible samples. Runs in eval mode.
        """
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got temperature={temperature!r}")
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
            raise ValueError(f"top_k must be a positive integer or None, got top_k={top_k!r}")
        was_training = self.training
        self.eval()
        for _ in range(max_new_tokens):
            window = idx[:, -self.config.context:]                          # (B, <= context)
            logits = self(window)[:, -1, :] / temperature                   # (B, vocab_size)
            if top_k is not None and top_k < logits.size(-1):
                kth = logits.topk(top_k, dim=-1).values[:, -1:]              # (B, 1): the k-th largest
                logits = logits.masked_fill(logits < kth, float("-inf"))     # (B, vocab_size)
            probs = torch.softmax(logits.float(), dim=-1)                   # (B, vocab_size)
            nxt = torch.multinomial(probs, 1, generator=generator)          # (B, 1)
            idx = torch.cat([idx, nxt], dim=1)                              # (B, T + 1)
        self.train(was_training)
        return idx
