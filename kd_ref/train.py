"""One training loop for every recipe: teachers, scratch students and distilled students.

    history = fit(distiller, train_batches, epochs=30, lr=3e-3, device="cpu",
                  val_batches=val_batches)

Each step: ``logits, terms = distiller(x, y)``; ``loss = sum(terms.values())``;
backward; optimizer step. Each epoch records the mean of every term by name and,
with ``val_batches``, the student's validation accuracy (and fidelity to the teacher
when there is one). The loop knows nothing about the losses: a new method is a new
distiller (``kd_ref.distillers``); a distiller with a ``set_epoch(progress)`` method is
told before every step how far training has got, in epochs (a float: 0.5 = half-way
through the first epoch; DKD's warm-up uses it).

Optimizers: AdamW with a per-step cosine schedule (the default, for the small digits
models), or ``sgd=SGDSchedule(...)``: SGD with momentum and step decay per epoch, the
CIFAR recipe of the KD benchmarks.

For long runs (the CIFAR recipe):

- ``checkpoint=PATH`` writes the trainable weights, optimizer, schedule, data-order and
  random-generator states and the log after every epoch, atomically
  (``kd_ref.checkpoint``); ``resume=True`` continues from it, so a killed run loses at
  most the epoch in progress and then ends with exactly the numbers of an
  uninterrupted run (same seed, same machine). ``run_info`` (a dict of plain values
  describing the run) is stored with it; resuming a different run is refused.
- Under ``torchrun`` the distiller is wrapped in DistributedDataParallel
  (``kd_ref.distributed``); only rank 0 writes checkpoints.

Device-agnostic: pass ``device`` ("cpu", "cuda", ...) and the batches are moved
there; ``autocast_dtype=torch.bfloat16`` runs the forward pass under autocast (on
GPUs, and on CPUs too).
"""
from __future__ import annotations

import bisect
import math
import os
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from . import distributed
from .checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .metrics import accuracy, expected_calibration_error, fidelity


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and PyTorch's generators (all devices) with ``seed``."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass(frozen=True)
class SGDSchedule:
    """SGD with momentum; the learning rate is multiplied by ``decay`` after each epoch in ``milestones``.

    The CIFAR recipe of the KD benchmarks (the CRD repository of Tian, Krishnan & Isola
    2020 and mdistiller of Zhao et al. 2022, for teachers and students alike): 240
    epochs, lr 0.05, x0.1 after epochs 150, 180 and 210, momentum 0.9, weight decay
    5e-4, batch 64. Those use plain momentum; ``nesterov=True`` (Sutskever, Martens,
    Dahl & Hinton 2013, "On the importance of initialization and momentum in deep
    learning", ICML) is the default here and rarely changes the result much.
    """

    momentum: float = 0.9
    nesterov: bool = True
    milestones: tuple[int, ...] = (150, 180, 210)
    decay: float = 0.1

    @classmethod
    def scaled(cls, epochs: int, reference_epochs: int = 240, **kwargs) -> "SGDSchedule":
        """The benchmark's milestones (150, 180, 210 of 240) scaled to a run of ``epochs``."""
        milestones = tuple(sorted({max(1, round(m * epochs / reference_epochs)) for m in (150, 180, 210)}))
        return cls(milestones=milestones, **kwargs)

    def factor(self, epochs_done: int) -> float:
        """Learning-rate multiplier after ``epochs_done`` epochs: decay ** (milestones passed)."""
        return self.decay ** bisect.bisect_right(self.milestones, epochs_done)


def _trainable_state(distiller: nn.Module) -> dict:
    """The distiller's state without the frozen teacher (saved once, by the teacher's own run)."""
    return {k: v for k, v in distiller.state_dict().items() if not k.startswith("teacher.")}


def _load_trainable_state(distiller: nn.Module, state: dict, path) -> None:
    missing, unexpected = distiller.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("teacher.")]
    if missing or unexpected:
        raise ValueError(f"checkpoint {path} does not fit this model (missing {missing[:5]}, unexpected "
                         f"{unexpected[:5]}); delete it or run without resuming")


def fit(distiller: nn.Module, train_batches, *, epochs: int, lr: float = 1e-3, weight_decay: float = 0.0,
        device: str | torch.device = "cpu", val_batches=None, autocast_dtype: torch.dtype | None = None,
        desc: str = "train", sgd: SGDSchedule | None = None, checkpoint: str | os.PathLike | None = None,
        resume: bool = False, run_info: dict | None = None) -> list[dict[str, float]]:
    """Train ``distiller`` (see ``kd_ref.distillers``) and return the per-epoch log.

    Args:
        distiller: ``forward(x, y) -> (student_logits, {name: weighted loss})``; it
            has a ``student`` attribute and, for KD, a frozen ``teacher``.
        train_batches: re-iterable ``(x, y)`` batches with a ``len()``; ``y == -1``
            marks unlabelled samples. With ``state_dict()`` / ``load_state_dict()``
            (``DeviceBatches``) their order is checkpointed too.
        epochs: passes over ``train_batches``.
        lr, weight_decay: initial learning rate and weight decay of the optimizer.
        device: where the model and each batch go.
        val_batches: labelled ``(x, y)`` batches evaluated after every epoch.
        autocast_dtype: e.g. ``torch.bfloat16`` for mixed precision; None = full precision.
        desc: label of the progress bar, shown only when stderr is a terminal (so logs,
            tests and saved notebook outputs stay clean).
        sgd: None = AdamW with a cosine schedule to 0 over all steps; an ``SGDSchedule``
            = SGD with momentum and per-epoch step decay.
        checkpoint: file written after every epoch (atomically); None = no checkpoints.
        resume: continue from ``checkpoint`` when it exists (a finished run is just loaded).
        run_info: plain values that identify the run; resuming a checkpoint written with
            other values raises ``ValueError``.
    Returns:
        one dict per epoch: ``epoch``, ``loss`` (the sum), each term's mean, ``lr`` (at the
        epoch's start), and ``val_accuracy``, ``val_ece`` (and ``val_fidelity``) when measured.
        The checkpoint also lists in ``resumes`` the epochs a run was resumed after.
    """
    if epochs < 1 or len(train_batches) < 1:
        raise ValueError(f"need epochs >= 1 and at least one batch, got epochs={epochs}, "
                         f"{len(train_batches)} batches")
    device = torch.device(device)
    distiller.to(device)
    params = [p for p in distiller.parameters() if p.requires_grad]
    if sgd is None:
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * len(train_batches))
    else:
        optimizer = torch.optim.SGD(params, lr=lr, momentum=sgd.momentum, nesterov=sgd.nesterov,
                                    weight_decay=weight_decay)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, sgd.factor)
    teacher = getattr(distiller, "teacher", None)
    history: list[dict[str, float]] = []
    first_epoch, resumes = 1, []
    if checkpoint is not None and resume and Path(checkpoint).exists():
        state = load_checkpoint(checkpoint)
        if state.get("run_info") != run_info:
            raise ValueError(f"checkpoint {checkpoint} belongs to another run ({state.get('run_info')}, now "
                             f"{run_info}); delete it or run without --resume")
        _load_trainable_state(distiller, state["model"], checkpoint)
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        if state["batches"] is not None:
            train_batches.load_state_dict(state["batches"])
        set_rng_state(state["rng"])
        history, first_epoch = state["history"], state["epoch"] + 1
        resumes = state["resumes"] + ([state["epoch"]] if state["epoch"] < epochs else [])
    model = distributed.wrap(distiller, device)   # DistributedDataParallel under torchrun
    main = distributed.is_main()
    bar = tqdm(range(first_epoch, epochs + 1), desc=desc, unit="epoch", leave=False,
               disable=None if main else True, initial=first_epoch - 1, total=epochs)
    steps = len(train_batches)
    for epoch in bar:
        distiller.train()
        epoch_lr = optimizer.param_groups[0]["lr"]
        sums: dict[str, torch.Tensor] = defaultdict(float)  # summed on the device: no sync per step
        for step, (x, y) in enumerate(train_batches):
            if hasattr(distiller, "set_epoch"):
                distiller.set_epoch(epoch - 1 + (step + 1) / steps)   # epochs done after this step
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                _, terms = model(x, y)
            if not terms or {"epoch", "loss"} & terms.keys():
                raise ValueError(f"{type(distiller).__name__} must return at least one loss term, none named "
                                 f"'epoch' or 'loss' (the log uses those), got {sorted(terms)}")
            loss = sum(terms.values())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if sgd is None:
                schedule.step()
            for name, value in terms.items():
                sums[name] = sums[name] + value.detach().float()
        if sgd is not None:
            schedule.step()
        distributed.broadcast_buffers(distiller)      # rank 0's BatchNorm statistics everywhere
        means = distributed.mean_over_ranks(torch.stack([torch.as_tensor(t, device=device).float()
                                                         for t in sums.values()]) / steps)
        record = dict(zip(sums, means.tolist()))
        record = {"epoch": epoch, "loss": sum(record.values()), **record, "lr": epoch_lr}
        if not all(math.isfinite(v) for v in record.values()):
            raise FloatingPointError(f"{desc}: a loss term is not finite at epoch {epoch}: {record}")
        if val_batches is not None:
            scores = evaluate(distiller.student, val_batches, device, teacher=teacher)
            record.update({f"val_{name}": value for name, value in scores.items()})
        history.append(record)
        bar.set_postfix({k: f"{v:.3g}" for k, v in record.items() if k != "epoch"})
        if checkpoint is not None and main:
            state_of_batches = train_batches.state_dict() if hasattr(train_batches, "state_dict") else None
            save_checkpoint(checkpoint, {
                "run_info": run_info, "epoch": epoch, "history": history, "resumes": resumes,
                "model": _trainable_state(distiller), "optimizer": optimizer.state_dict(),
                "schedule": schedule.state_dict(), "batches": state_of_batches, "rng": rng_state(),
            })
    optimizer.zero_grad(set_to_none=True)  # free the gradients' memory; the model comes back clean
    return history


@torch.no_grad()
def predict(model: nn.Module, batches, device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Logits ``(N, C)`` (float32, on the CPU) and labels ``(N,)`` of ``model`` over ``batches``.

    Runs in eval mode under no_grad, as ``kd_ref.teacher_forward`` does for a teacher.
    """
    device = torch.device(device)
    model.eval()
    logits, labels = [], []
    for x, y in batches:
        logits.append(model(x.to(device, non_blocking=True)).float().cpu())  # (b, C)
        labels.append(y.cpu())                                               # (b,)
    return torch.cat(logits), torch.cat(labels)


def evaluate(model: nn.Module, batches, device: str | torch.device = "cpu",
             teacher: nn.Module | None = None) -> dict[str, float]:
    """``accuracy`` and ``ece`` of ``model`` on labelled ``batches``; ``fidelity`` too when a teacher is given."""
    logits, labels = predict(model, batches, device)
    scores = {"accuracy": accuracy(logits, labels), "ece": expected_calibration_error(logits, labels)}
    if teacher is not None:
        teacher_logits, _ = predict(teacher, batches, device)
        scores["fidelity"] = fidelity(logits, teacher_logits)
    return scores
