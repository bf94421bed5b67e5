"""The digits data set: 1,797 real 8x8 handwritten digits that ship with scikit-learn.

``sklearn.datasets.load_digits`` (the UCI "Optical Recognition of Handwritten
Digits" test set): 10 classes, pixel values 0..16, no download. It is small enough
that a teacher and several students train in seconds on a CPU.

Split: stratified and seeded, train 60% / validation 20% / test 20%
(1079 / 359 / 359 images). Choose settings on validation; report test once.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..losses.cross_entropy import IGNORE_INDEX

NUM_CLASSES = 10


@dataclass(frozen=True)
class DigitsSplit:
    """Images ``(N, 1, 8, 8)`` float32 in [0, 1], labels ``(N,)`` int64, and the
    ``(N,)`` row numbers in ``load_digits()`` that each split holds."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    train_index: torch.Tensor
    val_index: torch.Tensor
    test_index: torch.Tensor


def load_digits_split(seed: int = 0, val_fraction: float = 0.2, test_fraction: float = 0.2) -> DigitsSplit:
    """Load digits and split it into stratified train / validation / test sets.

    The same ``seed`` always gives the same split; the three sets are disjoint.
    """
    if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(f"need 0 < val_fraction, test_fraction and val_fraction + test_fraction < 1, "
                         f"got val_fraction={val_fraction}, test_fraction={test_fraction}")
    # scikit-learn is imported here, not with the module: kd_ref.data (and so the CIFAR and
    # text code, and `make gpu-check`) must import on a machine that has only torch and numpy.
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = digits.images.astype(np.float32) / 16.0                    # (1797, 8, 8), in [0, 1]
    y = digits.target.astype(np.int64)                             # (1797,)
    n = len(y)
    n_test, n_val = round(n * test_fraction), round(n * val_fraction)
    idx = np.arange(n)
    rest, test = train_test_split(idx, test_size=n_test, stratify=y, random_state=seed)
    train, val = train_test_split(rest, test_size=n_val, stratify=y[rest], random_state=seed)

    def tensors(i):
        return torch.from_numpy(x[i]).unsqueeze(1), torch.from_numpy(y[i])  # (n, 1, 8, 8), (n,)

    index = [torch.from_numpy(i) for i in (train, val, test)]
    return DigitsSplit(*tensors(train), *tensors(val), *tensors(test), *index)


def keep_labels(y: torch.Tensor, per_class: int, seed: int) -> torch.Tensor:
    """A copy of ``y`` where only ``per_class`` random labels of each class are kept.

    Every other entry becomes ``IGNORE_INDEX`` (-1): those images still serve as the
    *transfer set* that a teacher labels with its soft targets (Hinton et al. 2015,
    section 2), but they give no cross-entropy term.
    """
    if per_class < 1:
        raise ValueError(f"per_class must be >= 1, got per_class={per_class}")
    generator = torch.Generator().manual_seed(seed)
    kept = torch.full_like(y, IGNORE_INDEX)
    for c in y.unique():
        members = (y == c).nonzero().squeeze(1)                    # (n_c,)
        if len(members) < per_class:
            raise ValueError(f"class {int(c)} has only {len(members)} samples, fewer than per_class={per_class}")
        chosen = members[torch.randperm(len(members), generator=generator)[:per_class]]
        kept[chosen] = y[chosen]
    return kept
