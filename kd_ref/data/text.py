"""Character-level text data: the corpus, its vocabulary, a train / validation / test split,
random training crops and a deterministic validation evaluator (bits per character).

The default corpus ships with every CPython: ``pydoc_data.topics.topics``, the text of
``help()`` on Python's keywords and topics (a dict of str; here its values are joined
in sorted-key order). It is real English technical prose with code, about 465k
characters (464,970 with CPython 3.11.7; the exact count changes a little between
Python versions). Any UTF-8 text file can replace it.

Split: the character ids are cut into ``n_blocks`` contiguous blocks of (nearly) equal
length; a seeded permutation picks ``val_fraction`` of the blocks for validation and the
next ``test_fraction`` of them for test; the rest are for training. A crop never crosses
a block boundary, so no training window sees text that is held-out text or that is not
contiguous in the corpus. Validation is for choices (settings, curves); the test blocks
are scored once, at the end, by the final models.

Language-model batches: ``x = ids[i : i + T]``, ``y = ids[i + 1 : i + T + 1]``; the
model predicts ``y[t]`` from ``x[0..t]``. Padded positions (at the end of a short
window) hold target ``IGNORE_INDEX`` = -1 and are left out of every loss and metric.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .batches import SeededBatches
from ..losses.cross_entropy import IGNORE_INDEX, masked_cross_entropy



def load_text(path: str | Path | None = None) -> tuple[str, str]:
    """The corpus and a one-line description of where it came from.

    ``path=None``: CPython's ``pydoc_data.topics`` (values joined in sorted-key order).
    Otherwise the UTF-8 file at ``path``. Raises ``ValueError`` with a readable message
    for a missing, unreadable, non-UTF-8 or empty file.
    """
    if path is None:
        from pydoc_data.topics import topics
        text = "".join(topics[key] for key in sorted(topics))
        return text, f"pydoc_data.topics (CPython's help texts, {len(topics)} topics)"
    path = Path(path)
    if not path.exists():
        raise ValueError(f"text file {str(path)!r} does not exist")
    if not path.is_file():
        raise ValueError(f"text path {str(path)!r} is not a file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"text file {str(path)!r} is not valid UTF-8 ({err.reason} at byte {err.start})") from None
    except OSError as err:
        raise ValueError(f"cannot read text file {str(path)!r}: {err.strerror or err}") from None
    if not text:
        raise ValueError(f"text file {str(path)!r} is empty")
    return text, str(path)


class CharVocab:
    """The sorted set of characters of a text; ``encode`` / ``decode`` between str and ids."""

    def __init__(self, text: str):
        if not text:
            raise ValueError("cannot build a vocabulary from an empty text")
        self.chars = sorted(set(text))
        self._index = {ch: i for i, ch in enumerate(self.chars)}

    def __len__(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> torch.Tensor:
        """``(len(text),)`` int64 ids; raises ``ValueError`` for a character not in the vocabulary."""
        try:
            return torch.tensor([self._index[ch] for ch in text], dtype=torch.long)
        except KeyError as err:
            raise ValueError(f"character {err.args[0]!r} is not in the vocabulary of {len(self)} characters") from None

    def decode(self, ids) -> str:
        """The string of a sequence of ids (a 1-D tensor or a list of ints)."""
        return "".join(self.chars[int(i)] for i in ids)


@dataclass(frozen=True)
class TextSplit:
    """Contiguous blocks of character ids: ``train``, ``val`` and ``test`` are lists of 1-D int64 tensors.

    ``train_blocks`` / ``val_blocks`` / ``test_blocks`` are the block numbers (positions
    in the corpus) that each part holds, in corpus order; ``bounds[i]`` is the
    ``(start, end)`` of block i in the corpus. ``test`` is empty when the split was made
    with ``test_fraction=0``.
    """

    train: list[torch.Tensor]
    val: list[torch.Tensor]
    train_blocks: list[int]
    val_blocks: list[int]
    bounds: list[tuple[int, int]]
    test: list[torch.Tensor] = field(default_factory=list)
    test_blocks: list[int] = field(default_factory=list)

    @property
    def n_train(self) -> int:
        return sum(len(b) for b in self.train)

    @property
    def n_val(self) -> int:
        return sum(len(b) for b in self.val)

    @property
    def n_test(self) -> int:
        return sum(len(b) for b in self.test)


def split_text(ids: torch.Tensor, context: int, val_fraction: float = 0.1, n_blocks: int = 100,
               seed: int = 0, test_fraction: float = 0.1) -> TextSplit:
    """Cut ``ids`` into contiguous blocks; hold out a seeded ``val_fraction`` and ``test_fraction`` of them.

    One seeded permutation of the block numbers: its first ``round(n_blocks * val_fraction)``
    blocks (at least one) are validation, the next ``round(n_blocks * test_fraction)`` (at
    least one, none when ``test_fraction`` is 0) are test, the rest train. So the validation
    blocks do not depend on ``test_fraction``: adding a test split takes its blocks from the
    training side only. Every block holds at least ``context + 1`` characters (one full
    window and its next-character targets); with a short text there are fewer, longer
    blocks, and validation and test shrink first so that at least one block is left for
    training. The same arguments always give the same split.

    Raises ``ValueError`` for fractions outside [0, 1) (validation: (0, 1)) or summing to
    1 or more, and when the text is too short for one block per part.
    """
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got val_fraction={val_fraction!r}")
    if not 0 <= test_fraction < 1:
        raise ValueError(f"test_fraction must be in [0, 1), got test_fraction={test_fraction!r}")
    if val_fraction + test_fraction >= 1:
        raise ValueError(f"val_fraction + test_fraction must be below 1 (some text must be left for training), "
                         f"got {val_fraction!r} + {test_fraction!r}")
    if context < 1 or n_blocks < 2:
        raise ValueError(f"need context >= 1 and n_blocks >= 2, got context={context}, n_blocks={n_blocks}")
    n = len(ids)
    parts = 3 if test_fraction > 0 else 2
    n_blocks = min(n_blocks, n // (context + 1))
    if n_blocks < parts:
        held_out = "a validation and a test window" if parts == 3 else "a validation window"
        raise ValueError(f"the text has {n:,} characters, too short for context {context}: need at least "
                         f"{parts * (context + 1):,} (a training, {held_out} of {context + 1} characters each)")
    edges = [round(i * n / n_blocks) for i in range(n_blocks + 1)]
    bounds = list(zip(edges[:-1], edges[1:]))
    n_val = max(1, round(n_blocks * val_fraction))
    n_test = max(1, round(n_blocks * test_fraction)) if test_fraction > 0 else 0
    while n_val + n_test > n_blocks - 1:                                  # leave at least one training block
        if n_test > n_val or (n_test == n_val and n_test > 1):
            n_test -= 1
        else:
            n_val -= 1
    order = torch.randperm(n_blocks, generator=torch.Generator().manual_seed(seed)).tolist()
    val_blocks = sorted(order[:n_val])
    test_blocks = sorted(order[n_val:n_val + n_test])
    train_blocks = sorted(order[n_val + n_test:])
    return TextSplit(
        train=[ids[slice(*bounds[i])] for i in train_blocks],
        val=[ids[slice(*bounds[i])] for i in val_blocks],
        train_blocks=train_blocks, val_blocks=val_blocks, bounds=bounds,
        test=[ids[slice(*bounds[i])] for i in test_blocks], test_blocks=test_blocks,
    )


def first_chars(blocks: list[torch.Tensor], n_chars: int | None, context: int) -> list[torch.Tensor]:
    """The first ``n_chars`` characters of ``blocks`` (in order), as blocks; all of them for ``None``.

    A last piece of ``context`` characters or fewer is dropped (it would hold little more
    than one window), but the first block is always kept, cut to ``n_chars``.
    """
    if n_chars is None:
        return list(blocks)
    kept, left = [], n_chars
    for block in blocks:
        if kept and left <= context:
            break
        kept.append(block[:left])
        left -= len(kept[-1])
        if left <= 0:
            break
    return kept


class RandomCrops(SeededBatches):
    """``steps`` batches of random windows from the training blocks, reproducible from ``seed``.

    Each batch is ``x, y`` of shape ``(batch_size, context)``: a window start is drawn
    uniformly over every position where a full window and its targets fit inside one
    block. Iterating again continues the same seeded stream (new crops); build a new
    object with the same seed to replay it. ``len()`` is ``steps``.
    """

    def __init__(self, blocks: list[torch.Tensor], context: int, batch_size: int, steps: int, seed: int = 0):
        if batch_size < 1 or steps < 1:
            raise ValueError(f"need batch_size >= 1 and steps >= 1, got batch_size={batch_size}, steps={steps}")
        usable = [b for b in blocks if len(b) >= context + 1]
        if not usable:
            raise ValueError(f"no training block holds context + 1 = {context + 1} characters")
        self.ids = torch.cat(usable)                                          # (N,)
        starts, offset = [], 0
        for b in usable:
            starts.append(torch.arange(offset, offset + len(b) - context))   # windows inside this block
            offset += len(b)
        self.starts = torch.cat(starts)                                       # (n_windows,)
        self.context, self.batch_size, self.steps = context, batch_size, steps
        self.generator = torch.Generator().manual_seed(seed)
        self._offsets = torch.arange(context + 1)                             # (T + 1,)

    def __len__(self) -> int:
        return self.steps

    def batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One batch ``(x, y)``, each ``(batch_size, context)`` int64."""
        pick = torch.randint(len(self.starts), (self.batch_size,), generator=self.generator)   # (B,)
        windows = self.ids[self.starts[pick][:, None] + self._offsets]                       # (B, T + 1)
        return windows[:, :-1], windows[:, 1:]                                                # (B, T), (B, T)

    def __iter__(self):
        for _ in range(self.steps):
            yield self.batch()


class ValidationWindows:
    """Every character of held-out blocks (validation or test) scored once, in non-overlapping windows of ``context``.

    Each block is cut into consecutive windows; the last, shorter window of a block is
    padded (input id 0, target ``IGNORE_INDEX``) and its ``mask`` is False there. Every
    character of a block except its first is a target exactly once, so ``n_targets`` =
    ``sum(len(block) - 1)``. Iterating yields ``(x, y, mask)`` batches, always in the
    same order. A window's first positions have little context, so this scores a
    model a bit worse than a sliding window would; it is exact and cheap.
    """

    def __init__(self, blocks: list[torch.Tensor], context: int, batch_size: int = 64):
        xs, ys = [], []
        for b in blocks:
            for start in range(0, len(b) - 1, context):
                x = b[start:start + context]                                  # (<= T,)
                y = b[start + 1:start + context + 1]                          # (<= T,)
                x = x[:len(y)]
                xs.append(F.pad(x, (0, context - len(x)), value=0))
                ys.append(F.pad(y, (0, context - len(y)), value=IGNORE_INDEX))
        if not xs:
            raise ValueError("no validation window: every validation block is shorter than 2 characters")
        self.x, self.y = torch.stack(xs), torch.stack(ys)                     # (n_windows, T) each
        self.mask = self.y != IGNORE_INDEX                                      # (n_windows, T)
        self.batch_size = batch_size

    @property
    def n_targets(self) -> int:
        return int(self.mask.sum())

    def __len__(self) -> int:
        return -(-len(self.x) // self.batch_size)

    def __iter__(self):
        for i in range(0, len(self.x), self.batch_size):
            sl = slice(i, i + self.batch_size)
            yield self.x[sl], self.y[sl], self.mask[sl]


@torch.no_grad()
def bits_per_char(model: nn.Module, windows: ValidationWindows, device: str | torch.device = "cpu") -> float:
    """Mean next-character cross-entropy over the real targets, in bits: ``CE_nats / ln 2``.

    ``model(x, padding_mask)`` must return logits ``(B, T, V)`` (a
    :class:`kd_ref.models.CharGPT` does). Runs in eval mode; a model that predicts the
    uniform distribution over V characters scores exactly ``log2(V)``.
    """
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for x, y, mask in windows:
        x, y, mask = x.to(device), y.to(device), mask.to(device)
        logits = model(x, mask)                                               # (B, T, V)
        n = int(mask.sum())
        total += masked_cross_entropy(logits, y, mask).double().item() * n   # summed over the batch's targets
        count += n
    model.train(was_training)
    return total / count / math.log(2)
