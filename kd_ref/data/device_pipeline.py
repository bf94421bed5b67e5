"""A data pipeline that lives on the device: uint8 images, whole-batch augmentation.

CIFAR's 50,000 training images take 150 MB as uint8, so they fit on any GPU. Keeping
them there removes the per-image Python work of a ``DataLoader`` (decode a PIL image,
pad, crop, flip, convert, normalise: one image at a time) and the host-to-device copy
of every batch. Per batch, everything is a handful of tensor operations:

1. shuffle: one seeded ``torch.randperm`` per epoch (a CPU ``torch.Generator``, so the
   order is the same on every device and can be saved in a checkpoint);
2. random crop with 4-pixel zero padding and horizontal flip, the standard CIFAR
   augmentation (He et al. 2016, section 4.2): the images are padded **once**, stored
   channels-last ``(N, 40, 40, 3)``, and a batch's crops are one gather with index
   arithmetic: output pixel (i, j) of image b comes from padded pixel
   ``(top_b + i, left_b + j)``, or ``(top_b + i, left_b + 31 - j)`` when b is flipped;
3. uint8 -> float and per-channel normalisation ``(x / 255 - mean) / std`` in one
   multiply-add; the result is ``(B, 3, 32, 32)`` in channels-last memory format.

The padding value 0 is a black pixel before normalisation, as torchvision's
``RandomCrop(32, padding=4)`` on a PIL image, so the two pipelines produce the same
images for the same offsets (tested against torchvision, one image at a time).

Multi-GPU: with ``world_size`` > 1 every rank draws the same permutation and
offsets (same seed) and keeps its shard ``[rank::world_size]`` of each global batch.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from .batches import SeededBatches


def pad_channels_last(images: torch.Tensor, pad: int) -> torch.Tensor:
    """uint8 ``(N, C, H, W)`` -> zero-padded, contiguous ``(N, H + 2 pad, W + 2 pad, C)``."""
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad))      # (N, C, H + 2p, W + 2p)
    return padded.permute(0, 2, 3, 1).contiguous()                      # (N, H + 2p, W + 2p, C)


def crop_flip(padded: torch.Tensor, index: torch.Tensor, top: torch.Tensor, left: torch.Tensor,
              flip: torch.Tensor, size: int = 32) -> torch.Tensor:
    """Crop ``size`` x ``size`` windows at ``(top, left)`` and mirror where ``flip``, as one gather.

    Args:
        padded: ``(N, P, P, C)`` channels-last images (see ``pad_channels_last``).
        index: ``(B,)`` which images; ``top``, ``left``: ``(B,)`` window corners in 0..P - size;
            ``flip``: ``(B,)`` bool.
    Returns:
        ``(B, C, size, size)``, same dtype, channels-last memory format.
    """
    n, side, _, channels = padded.shape
    steps = torch.arange(size, device=padded.device)                            # (S,)
    rows = top[:, None] + steps                                                 # (B, S)
    cols = left[:, None] + torch.where(flip[:, None], size - 1 - steps, steps)  # (B, S)
    # Flat pixel numbers in the (N * P * P, C) view: one index_select (3x faster on a CPU
    # than indexing with three broadcast index tensors, the same gather on a GPU).
    pixel = (index[:, None, None] * side + rows[:, :, None]) * side + cols[:, None, :]   # (B, S, S)
    out = padded.view(n * side * side, channels).index_select(0, pixel.view(-1))        # (B * S * S, C)
    return out.view(len(index), size, size, channels).permute(0, 3, 1, 2)               # (B, C, S, S) channels-last


def normalization(mean: Sequence[float], std: Sequence[float], device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale, shift)``, each ``(1, C, 1, 1)``, with ``(x / 255 - mean) / std = x * scale + shift``."""
    scale = torch.tensor([1 / (255 * s) for s in std], device=device).view(1, -1, 1, 1)
    shift = torch.tensor([-m / s for m, s in zip(mean, std)], device=device).view(1, -1, 1, 1)
    return scale, shift


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 ``(B, C, H, W)`` -> float32 ``(x / 255 - mean) / std``, memory format kept."""
    scale, shift = normalization(mean, std, images.device)
    return torch.addcmul(shift, images.float(), scale)                     # (B, C, H, W)


class DeviceBatches(SeededBatches):
    """Normalised ``(x, y)`` batches from uint8 images kept on ``device``.

    Args:
        images: uint8 ``(N, 3, H, W)``; labels: ``(N,)`` int64. Copied to ``device`` once.
        batch_size: images per (global) batch; with ``world_size`` > 1 each rank gets
            ``batch_size / world_size`` of them.
        mean, std: per-channel statistics in [0, 1] units (``kd_ref.data.cifar``).
        augment: random crop (``pad`` pixels of zero padding) and horizontal flip.
        shuffle: a new seeded order every epoch.
        seed: seeds the order and the augmentation; ``state_dict()`` saves the generator
            so a resumed run draws the same epochs as an uninterrupted one.
        drop_last: skip the last incomplete batch (training; needed for equal shards).
        rank, world_size: this process's shard for DistributedDataParallel.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, *, mean: Sequence[float],
                 std: Sequence[float], device: str | torch.device = "cpu", augment: bool = False,
                 shuffle: bool = False, seed: int = 0, pad: int = 4, drop_last: bool = False,
                 rank: int = 0, world_size: int = 1):
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {images.dtype} of shape {tuple(images.shape)}")
        if labels.shape != images.shape[:1]:
            raise ValueError(f"labels must have shape ({len(images)},), got {tuple(labels.shape)}")
        if images.shape[2] != images.shape[3]:
            raise ValueError(f"images must be square, got {tuple(images.shape)}")
        if len(mean) != images.shape[1] or len(std) != images.shape[1] or min(std) <= 0:
            raise ValueError(f"mean and std need {images.shape[1]} values (std > 0), got mean={mean}, std={std}")
        if batch_size < 1 or batch_size % world_size:
            raise ValueError(f"batch_size must be a positive multiple of world_size={world_size}, "
                             f"got batch_size={batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        if pad < 0:
            raise ValueError(f"pad must be >= 0, got pad={pad}")
        self.device = torch.device(device)
        self.size = images.shape[2]
        self.pad = pad if augment else 0
        self.images = pad_channels_last(images.to(self.device), self.pad)     # (N, P, P, C) uint8
        self.labels = labels.to(self.device)
        self.batch_size, self.mean, self.std = batch_size, tuple(mean), tuple(std)
        self._scale, self._shift = normalization(mean, std, self.device)     # made once, not per batch
        self.augment, self.shuffle, self.drop_last = augment, shuffle, drop_last
        self.rank, self.world_size = rank, world_size
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        n = len(self.labels)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def draw_epoch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """This epoch's order and, per position in it, ``top``, ``left`` and ``flip`` (all ``(N,)``)."""
        n, g = len(self.labels), self.generator
        order = torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)
        if self.augment:
            top = torch.randint(0, 2 * self.pad + 1, (n,), generator=g)
            left = torch.randint(0, 2 * self.pad + 1, (n,), generator=g)
            flip = torch.randint(0, 2, (n,), generator=g).bool()
        else:
            top = left = torch.zeros(n, dtype=torch.long)
            flip = torch.zeros(n, dtype=torch.bool)
        return order, top, left, flip

    def __iter__(self):
        order, top, left, flip = (t.to(self.device, non_blocking=True) for t in self.draw_epoch())
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            part = slice(start + self.rank, start + self.batch_size, self.world_size)   # this rank's shard
            index = order[part]                                                        # (b,)
            if self.augment:
                x = crop_flip(self.images, index, top[part], left[part], flip[part], self.size)
            else:
                x = self.images[index].permute(0, 3, 1, 2)                             # (b, C, H, W) channels-last
            yield torch.addcmul(self._shift, x.float(), self._scale), self.labels[index]  # normalize()

