"""Input checks shared by every loss.

Each check raises a ``ValueError`` that names the offending argument and shows the
shapes involved, so a learner sees at once which tensor is wrong and why. Nothing is
ever broadcast or reshaped silently.
"""
from __future__ import annotations

import math
from numbers import Real

import torch

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def shape_str(x: torch.Tensor) -> str:
    return "(" + ", ".join(str(d) for d in x.shape) + ")"


def as_compute_dtype(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Upcast fp16 / bf16 (autocast outputs) to float32; leave float32/64 alone."""
    return tuple(t.float() if t.dtype in _LOW_PRECISION else t for t in tensors)


def check_tensor(x, name: str, min_dim: int = 1) -> None:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < min_dim:
        raise ValueError(f"{name} must have at least {min_dim} dimension(s), got shape {shape_str(x)}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")


def check_same_shape(a: torch.Tensor, b: torch.Tensor, name_a: str, name_b: str, what: str = "") -> None:
    if a.shape != b.shape:
        hint = f" ({what})" if what else ""
        raise ValueError(
            f"{name_a} and {name_b} must have the same shape{hint}, "
            f"got {name_a} {shape_str(a)} and {name_b} {shape_str(b)}"
        )


def check_pair(student, teacher, student_name: str, teacher_name: str, min_dim: int = 1, what: str = "") -> None:
    check_tensor(student, student_name, min_dim)
    check_tensor(teacher, teacher_name, min_dim)
    check_same_shape(student, teacher, student_name, teacher_name, what)


def check_temperature(T) -> float:
    if isinstance(T, torch.Tensor):
        if T.numel() != 1:
            raise ValueError(f"T must be a positive finite number, got a tensor of shape {shape_str(T)}")
        T = T.item()
    if isinstance(T, bool) or not isinstance(T, Real) or not math.isfinite(T) or T <= 0:
        raise ValueError(f"T must be a positive finite number, got T={T!r}")
    return float(T)


def check_weight(w, name: str) -> float:
    if isinstance(w, torch.Tensor):
        if w.numel() != 1:
            raise ValueError(f"{name} must be a finite number >= 0, got a tensor of shape {shape_str(w)}")
        w = w.item()
    if isinstance(w, bool) or not isinstance(w, Real) or not math.isfinite(w) or w < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {name}={w!r}")
    return float(w)


def check_fraction(x, name: str, allow_one: bool = True) -> float:
    """A mixing weight in [0, 1] (or [0, 1) when ``allow_one`` is False)."""
    if isinstance(x, torch.Tensor):
        if x.numel() != 1:
            raise ValueError(f"{name} must be a number in [0, 1], got a tensor of shape {shape_str(x)}")
        x = x.item()
    upper = "1]" if allow_one else "1)"
    if (isinstance(x, bool) or not isinstance(x, Real) or not math.isfinite(x) or x < 0
            or x > 1 or (x == 1 and not allow_one)):
        raise ValueError(f"{name} must be a number in [0, {upper}, got {name}={x!r}")
    return float(x)


def check_mask(mask, expected_shape: torch.Size, name: str = "mask", against: str = "logits.shape[:-1]") -> torch.Tensor | None:
    """A mask marks the positions that count (True / nonzero = keep)."""
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor or None, got {type(mask).__name__}")
    if mask.shape != expected_shape:
        want = "(" + ", ".join(str(d) for d in expected_shape) + ")"
        raise ValueError(f"{name} must have shape {against} = {want}, got {name} {shape_str(mask)}")
    return mask if mask.dtype == torch.bool else mask != 0


def check_targets(targets, logits: torch.Tensor, name: str = "targets", logits_name: str = "student_logits",
                  mask: torch.Tensor | None = None) -> torch.Tensor:
    """Class indices of shape logits.shape[:-1], each in [0, num_classes) where ``mask`` is True.

    Masked-out positions may hold anything (e.g. -100 for padding); they come back as 0.
    """
    if not isinstance(targets, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of class indices, got {type(targets).__name__}")
    if targets.is_floating_point() or targets.dtype == torch.bool or targets.is_complex():
        raise ValueError(f"{name} must hold integer class indices, got dtype {targets.dtype}")
    if targets.shape != logits.shape[:-1]:
        want = "(" + ", ".join(str(d) for d in logits.shape[:-1]) + ")"
        raise ValueError(
            f"{name} must have shape {logits_name}.shape[:-1] = {want}, "
            f"got {name} {shape_str(targets)} with {logits_name} {shape_str(logits)}"
        )
    num_classes = logits.shape[-1]
    if mask is not None:
        targets = torch.where(mask, targets, torch.zeros_like(targets))
    if targets.numel() and (targets.min() < 0 or targets.max() >= num_classes):
        where = " at unmasked positions" if mask is not None else ""
        raise ValueError(
            f"{name} must lie in [0, {num_classes}) for {num_classes} classes{where}, "
            f"got values in [{int(targets.min())}, {int(targets.max())}]"
        )
    return targets.long()


def masked_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over all entries, or over the entries where ``mask`` is True.

    An all-False mask gives 0 (not NaN), so a batch of pure padding adds nothing.
    """
    if mask is None:
        return values.mean()
    # where(), not a product: masked-out entries may hold inf or NaN (padding).
    total = torch.where(mask, values, torch.zeros_like(values)).sum()
    return total / mask.sum().clamp_min(1).to(values.dtype)
