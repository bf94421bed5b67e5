"""One training loop for every model of the course: digits, CIFAR and the character-level GPT.

    history = fit(distiller, batches, epochs=30, lr=3e-3, validate=classifier_scores(val_batches))

Each step: ``logits, terms = distiller(x, y)``; ``loss = sum(terms.values())``; backward;
optional gradient clipping; optimizer step at the learning rate of that step. The loop
knows nothing about the losses: a new method is a new distiller (``kd_ref.distillers``),
whose small interface (``forward``, ``set_progress``, ``close``) is all ``fit`` uses.

What it records: after every epoch (or every ``eval_every`` steps) one entry of the
returned history, with the mean of every loss term since the last entry, the learning
rate, and the student's validation scores from ``validate`` (e.g.
:class:`ClassifierScores`, which computes the teacher's validation logits once per run,
or bits per character for text). Lessons plot it as the validation curve.

The learning rate is a plain function of the step: ``lr=cosine_schedule(...)``,
``step_decay(...)`` or any ``step -> float``; a number means the default, a cosine from
it down to 0 over the run. The optimizer is any ``params -> torch.optim.Optimizer``
(default AdamW); ``fit`` sets its learning rate before every step.

For long runs:

- ``checkpoint=PATH`` writes the whole training state (``kd_ref.checkpoint.TrainState``)
  atomically at every record; ``resume=True`` continues from it, so a killed run loses
  at most one record interval and then ends with exactly the numbers of an uninterrupted
  run (same seed, same machine). A finished run is just loaded.
- Under ``torchrun`` the distiller is wrapped in DistributedDataParallel
  (``kd_ref.distributed``); only rank 0 writes checkpoints.
- ``autocast_dtype="auto"`` runs the forward pass under bf16 autocast on CUDA and in
  full precision elsewhere.
"""
from __future__ import annotations

import bisect
import math
import os
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from . import distributed
from .checkpoint import TrainState, rng_state, set_rng_state
from .distillers import Distiller
from .metrics import accuracy, expected_calibration_error, fidelity

Schedule = Callable[[int], float]


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and PyTorch's generators (all devices) with ``seed``."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def cosine_schedule(peak: float, total_steps: int, warmup: int = 0, final: float = 0.0) -> Schedule:
    """Linear warm-up to ``peak`` over ``warmup`` steps, then a cosine down to ``final`` at ``total_steps``.

    Step s of the warm-up uses ``peak * (s + 1) / warmup``; after it, with progress
    ``p = (s - warmup) / (total_steps - warmup)``, ``final + (peak - final) (1 + cos(pi p)) / 2``
    (Loshchilov & Hutter 2017, "SGDR", eq. 5, without restarts).
    """
    if not (total_steps >= 1 and 0 <= warmup and peak >= 0 and final >= 0):
        raise ValueError(f"need total_steps >= 1, warmup >= 0, peak >= 0, final >= 0, got total_steps={total_steps}, "
                         f"warmup={warmup}, peak={peak}, final={final}")

    def lr(step: int) -> float:
        if step < warmup:
            return peak * (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return final + (peak - final) * 0.5 * (1 + math.cos(math.pi * progress))
    return lr


def step_decay(peak: float, steps_per_epoch: int, milestones: Sequence[int], decay: float = 0.1) -> Schedule:
    """``peak * decay ** (milestones passed)``, the milestones counted in completed epochs.

    The CIFAR recipe of the KD benchmarks (the CRD repository of Tian, Krishnan & Isola
    2020 and mdistiller of Zhao et al. 2022): lr 0.05, x0.1 after epochs 150, 180 and 210
    of 240; see :func:`scaled_milestones` for shorter runs.
    """
    milestones = sorted(milestones)
    return lambda step: peak * decay ** bisect.bisect_right(milestones, step // steps_per_epoch)


def scaled_milestones(epochs: int, reference_epochs: int = 240, reference=(150, 180, 210)) -> tuple[int, ...]:
    """The benchmark's milestones (150, 180, 210 of 240 epochs) scaled to a run of ``epochs``."""
    return tuple(sorted({max(1, round(m * epochs / reference_epochs)) for m in reference}))


def _trainable_state(distiller: nn.Module) -> dict:
    """The distiller's state without the frozen teacher (saved once, by the teacher's own run)."""
    return {k: v for k, v in distiller.state_dict().items() if not k.startswith("teacher.")}


def _load_trainable_state(distiller: nn.Module, state: dict, path) -> None:
    missing, unexpected = distiller.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("teacher.")]
    if missing or unexpected:
        raise ValueError(f"checkpoint {path} does not fit this model (missing {missing[:5]}, unexpected "
                         f"{unexpected[:5]}); delete it or run without resuming")


def _autocast(dtype, device: torch.device):
    if dtype == "auto":
        dtype = torch.bfloat16 if device.type == "cuda" else None
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def fit(distiller: Distiller, batches, *, epochs: int = 1, lr: float | Schedule = 1e-3,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None, weight_decay: float = 0.0,
        grad_clip: float | None = None, device: str | torch.device = "cpu",
        validate: Callable[[nn.Module], dict[str, float]] | None = None, eval_every: int | None = None,
        autocast_dtype: torch.dtype | str | None = "auto", checkpoint: str | os.PathLike | None = None,
        resume: bool = False, run_info: dict | None = None, desc: str = "train") -> list[dict[str, float]]:
    """Train ``distiller`` and return its history (one entry per record: see below).

    Args:
        distiller: a ``kd_ref.distillers.Distiller``: ``forward(x, y) -> (student_logits,
            {name: weighted loss})``, told ``set_progress(epochs_done)`` before every step.
        batches: re-iterable ``(x, y)`` batches with a ``len()`` (``TensorBatches``,
            ``DeviceBatches``, ``RandomCrops``: an "epoch" of ``RandomCrops`` is the whole run).
        epochs: passes over ``batches``.
        lr: the learning rate of each step, ``step -> float`` (steps count from 0); a
            number is the peak of a cosine from it to 0 over all steps.
        optimizer: ``params -> Optimizer`` (e.g. ``functools.partial(torch.optim.SGD,
            momentum=0.9)``); default AdamW with ``weight_decay``.
        grad_clip: clip the gradients' global norm to this value (None: no clipping).
        device: where the model and each batch go.
        validate: ``student -> {metric: value}``, called at every record (e.g.
            :class:`ClassifierScores`); its values are logged as ``val_<metric>``.
        eval_every: record every this many steps (and at the last); None = every epoch.
        autocast_dtype: ``"auto"`` = bf16 on CUDA, full precision elsewhere; a dtype; or None.
        checkpoint: file written (atomically) at every record; None = no checkpoints.
            ``batches`` must then have ``state_dict()`` / ``load_state_dict()``.
        resume: continue from ``checkpoint`` when it exists.
        run_info: plain values that identify the run; resuming a checkpoint written with
            other values raises ``ValueError``.
        desc: label of the progress bar, shown only when stderr is a terminal.
    Returns:
        one dict per record: ``epoch`` (fractional epochs done), ``step``, ``loss`` (the
        sum), each term's mean since the previous record, ``lr`` (at the interval's first
        step), ``train_seconds`` (training time so far, validation excluded) and the
        ``val_*`` scores.
    """
    if not isinstance(distiller, Distiller):
        raise TypeError(f"fit trains a kd_ref.distillers.Distiller (forward(x, y) -> (logits, terms)), got "
                        f"{type(distiller).__name__}; wrap a plain model in Scratch(model)")
    steps = len(batches)
    if epochs < 1 or steps < 1 or (eval_every is not None and eval_every < 1):
        raise ValueError(f"need epochs >= 1, at least one batch and eval_every >= 1, got epochs={epochs}, "
                         f"{steps} batches, eval_every={eval_every}")
    if checkpoint is not None and not callable(getattr(batches, "state_dict", None)):
        raise ValueError(f"checkpoint needs batches whose order can be saved (state_dict / load_state_dict, as "
                         f"TensorBatches, DeviceBatches and RandomCrops have), got {type(batches).__name__}")
    total = epochs * steps
    schedule = lr if callable(lr) else cosine_schedule(lr, total)
    device = torch.device(device)
    distiller.to(device)
    params = [p for p in distiller.parameters() if p.requires_grad]
    opt = (optimizer or torch.optim.AdamW)(params, **({} if optimizer else {"weight_decay": weight_decay}))

    state = TrainState(run_info, epoch=0, skip=0, step=0, history=[], resumes=[], model={}, optimizer={},
                       batches=batches.state_dict() if checkpoint is not None else None, rng={})
    if checkpoint is not None and resume and Path(checkpoint).exists():
        saved = TrainState.load(checkpoint)
        if saved.run_info != run_info:
            raise ValueError(f"checkpoint {checkpoint} belongs to another run ({saved.run_info}, now {run_info}); "
                             f"delete it or run without --resume")
        _load_trainable_state(distiller, saved.model, checkpoint)
        opt.load_state_dict(saved.optimizer)
        batches.load_state_dict(saved.batches)
        set_rng_state(saved.rng)
        state = saved
        if state.step < total:
            state.resumes = [*state.resumes, state.step]

    model = distributed.wrap(distiller, device)   # DistributedDataParallel under torchrun
    main = distributed.is_main()
    bar = tqdm(total=total, initial=state.step, desc=desc, unit="step", leave=False, disable=None if main else True)
    sums: dict[str, torch.Tensor] = {}              # summed on the device: no sync per step
    n_sum, interval_lr = 0, None
    seconds = state.history[-1]["train_seconds"] if state.history else 0.0
    done_in_epoch = state.skip                       # batches of the first epoch trained before a resume
    for epoch in range(state.epoch, epochs):
        if checkpoint is not None and done_in_epoch == 0:
            state.batches = batches.state_dict()     # the order of this epoch, for a resume inside it
        for i, (x, y) in enumerate(batches):
            if i < done_in_epoch:
                continue                             # trained before the run was resumed
            start = time.perf_counter()
            distiller.train()
            distiller.set_progress(epoch + (i + 1) / steps)
            step_lr = schedule(state.step)
            for group in opt.param_groups:
                group["lr"] = step_lr
            interval_lr = step_lr if interval_lr is None else interval_lr
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with _autocast(autocast_dtype, device):
                _, terms = model(x, y)
            if not terms or {"epoch", "step", "loss", "lr", "train_seconds"} & terms.keys():
                raise ValueError(f"{type(distiller).__name__} must return at least one loss term, none named "
                                 f"epoch, step, loss, lr or train_seconds (the log uses those), got {sorted(terms)}")
            loss = sum(terms.values())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip:
                torch.nn.utils.clip_grad_norm_(params, grad_clip)
            opt.step()
            for name, value in terms.items():
                sums[name] = sums.get(name, 0.0) + value.detach().float()
            n_sum += 1
            state.step += 1
            seconds += time.perf_counter() - start
            bar.update(1)
            end_of_epoch = i + 1 == steps
            due = (state.step % eval_every == 0 or state.step == total) if eval_every else end_of_epoch
            if not due:
                continue
            record = _record(distiller, device, sums, n_sum, epoch + (i + 1) / steps, state.step, interval_lr,
                             seconds, validate, desc)
            state.history.append(record)
            bar.set_postfix({k: f"{v:.3g}" for k, v in record.items() if k not in ("epoch", "step")})
            sums, n_sum, interval_lr = {}, 0, None
            state.epoch, state.skip = (epoch + 1, 0) if end_of_epoch else (epoch, i + 1)
            if checkpoint is not None and main:
                if end_of_epoch:
                    state.batches = batches.state_dict()
                state.model, state.optimizer, state.rng = _trainable_state(distiller), opt.state_dict(), rng_state()
                state.save(checkpoint)
        done_in_epoch = 0
    bar.close()
    opt.zero_grad(set_to_none=True)   # free the gradients' memory; the model comes back clean
    return state.history


def _record(distiller, device, sums, n_sum, epochs_done, step, lr, seconds, validate, desc) -> dict:
    """One history entry: the terms' means over the interval (averaged over ranks) and the validation scores."""
    distributed.broadcast_buffers(distiller)      # rank 0's BatchNorm statistics everywhere
    means = distributed.mean_over_ranks(torch.stack([torch.as_tensor(t, device=device).float()
                                                     for t in sums.values()]) / n_sum)
    terms = dict(zip(sums, means.tolist()))
    record = {"epoch": epochs_done, "step": step, "loss": sum(terms.values()), **terms, "lr": lr,
              "train_seconds": seconds}
    if not all(math.isfinite(v) for v in record.values()):
        raise FloatingPointError(f"{desc}: a loss term is not finite at step {step}: {record}")
    if validate is not None:
        record.update({f"val_{name}": value for name, value in validate(distiller.student).items()})
    return record


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


class ClassifierScores:
    """``validate`` for classifiers: ``accuracy`` and ``ece`` of a model on labelled ``batches``,
    and ``fidelity`` (top-1 agreement) with ``teacher`` when one is given.

    The teacher's logits are computed on the first call and kept: the teacher is frozen,
    so once per run is enough (the batches must come in the same order every time).
    """

    def __init__(self, batches, device: str | torch.device = "cpu", teacher: nn.Module | None = None):
        self.batches, self.device, self.teacher = batches, torch.device(device), teacher
        self._teacher_logits: torch.Tensor | None = None

    def teacher_logits(self) -> torch.Tensor:
        if self._teacher_logits is None:
            self._teacher_logits = predict(self.teacher, self.batches, self.device)[0]
        return self._teacher_logits

    def __call__(self, model: nn.Module) -> dict[str, float]:
        logits, labels = predict(model, self.batches, self.device)
        scores = {"accuracy": accuracy(logits, labels), "ece": expected_calibration_error(logits, labels)}
        if self.teacher is not None:
            scores["fidelity"] = fidelity(logits, self.teacher_logits())
        return scores


def evaluate(model: nn.Module, batches, device: str | torch.device = "cpu",
             teacher: nn.Module | None = None) -> dict[str, float]:
    """``accuracy`` and ``ece`` of ``model`` on labelled ``batches``; ``fidelity`` too when a teacher is given."""
    return ClassifierScores(batches, device, teacher)(model)
