"""Mini-batches from tensors that already sit in memory (or on the GPU).

For a data set that fits in memory, indexing whole tensors with a shuffled index
is all a loader has to do; it is much faster than ``DataLoader`` over
``TensorDataset``, which collates one sample at a time. Any iterable of ``(x, y)``
batches with a ``len()`` works with ``kd_ref.train.fit``; this is the simplest one.
"""
from __future__ import annotations

import torch


class SeededBatches:
    """A batch iterator whose order comes from its own ``torch.Generator`` (``self.generator``).

    ``state_dict()`` / ``load_state_dict()`` save and restore that generator (a uint8
    tensor, checkpoint-safe), so a resumed run draws the same batches as an
    uninterrupted one (``kd_ref.train.fit``).
    """

    generator: torch.Generator

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


class TensorBatches(SeededBatches):
    """Iterate over ``(x[idx], y[idx])`` mini-batches, reshuffled every epoch.

    Args:
        x: ``(N, ...)`` inputs.
        y: ``(N,)`` labels (``IGNORE_INDEX`` = -1 marks an unlabelled sample, see ``kd_ref.distillers``).
        batch_size: samples per batch; the last batch may be smaller.
        shuffle: draw a new order every time the batches are iterated.
        seed: seeds the shuffling, so the sequence of epochs is reproducible.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, shuffle: bool = False, seed: int = 0):
        if len(x) != len(y):
            raise ValueError(f"x and y must have the same length, got {len(x)} and {len(y)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got batch_size={batch_size}")
        self.x, self.y = x, y
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return -(-len(self.x) // self.batch_size)  # ceil(N / batch_size)

    def __iter__(self):
        n = len(self.x)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        for idx in order.split(self.batch_size):
            idx = idx.to(self.x.device)
            yield self.x[idx], self.y[idx]
