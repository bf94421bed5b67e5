"""Cross-entropy with ignored targets: the one definition used by losses, distillers and data.

``IGNORE_INDEX`` (-1) is the target of a position that has no label: an image of the
unlabelled *transfer set* (Hinton, Vinyals & Dean 2015, section 2), or a padded position
of a sequence. PyTorch's own default is -100; -1 is used here because it can never be a
class index, reads as "none", and is what the course's data modules write.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .._checks import as_compute_dtype, check_mask, check_tensor, masked_mean, shape_str

IGNORE_INDEX = -1


def masked_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None,
                         label_smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy at T = 1, averaged over the positions that have a target.

    ``logits`` ``(..., C)``, ``targets`` ``(...)``: a position counts when its target is not
    ``IGNORE_INDEX`` (and ``mask`` is True there, when a mask is given). No counted
    position gives 0, not the NaN of ``F.cross_entropy(..., ignore_index=...)`` on an
    all-ignored batch, still connected to the graph so ``backward()`` works.
    ``label_smoothing`` = eps mixes the one-hot target with the uniform distribution,
    ``(1 - eps) * onehot + eps / C`` (Szegedy et al. 2016, "Rethinking the Inception
    Architecture", section 7). fp16 / bf16 logits are computed in float32.
    """
    check_tensor(logits, "logits", min_dim=2)
    if not isinstance(targets, torch.Tensor) or targets.is_floating_point() or targets.shape != logits.shape[:-1]:
        got = shape_str(targets) if isinstance(targets, torch.Tensor) else type(targets).__name__
        raise ValueError(f"targets must be integer class indices of shape logits.shape[:-1], got targets {got} "
                         f"with logits {shape_str(logits)}")
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got label_smoothing={label_smoothing}")
    mask = check_mask(mask, logits.shape[:-1], against="logits.shape[:-1]")
    counted = targets != IGNORE_INDEX                                                  # (...)
    if mask is not None:
        counted = counted & mask
    (logits,) = as_compute_dtype(logits)
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), torch.where(counted, targets, 0).reshape(-1).long(),
                         reduction="none", label_smoothing=label_smoothing)            # (N,)
    return masked_mean(ce, counted.reshape(-1))
