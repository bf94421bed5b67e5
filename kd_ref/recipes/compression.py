"""Lesson 11's studies: the compression methods of :mod:`kd_ref.compress` beside distillation.

``digits_seed`` trains, for one seed, the digits teacher and the students, compresses the
teacher every way the lesson compares, fine-tunes where the method calls for it, and scores
every model once on the test split. It is a module-level function so that
:func:`kd_ref.recipes.seeds.map_seeds` can run seeds in parallel processes.

Unlike ``kd-ref digits`` (a few-label study), every model here learns from all 1,079
training labels: the question is what a practitioner who has the teacher's training data
gets from each way of making it smaller. The KD student sees the same images and labels
as its scratch twin, plus the teacher's soft targets (T, weights and epochs from
``kd_ref.recipes.digits.CONFIGS``, chosen there on the validation split).

``text_study`` does the post-training methods (pruning, low rank without fine-tuning, int8)
on one cached CharGPT teacher, and distils one student briefly (one seed: the text models are
the expensive part of the lesson's budget).
"""
from __future__ import annotations

import copy
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .. import compress
from ..data import TensorBatches, load_digits_split
from ..distillers import LogitKD, Scratch
from ..models import DigitsCNN
from ..train import evaluate, fit, seed_everything
from .digits import SPLIT_SEED, DigitsConfig


@dataclass(frozen=True)
class CompressionRun:
    """What the lesson's digits study does beyond the recipe's settings (fixed in advance, not tuned)."""

    sparsities: tuple[float, ...] = (0.5, 0.7, 0.9)   # unstructured, no fine-tuning
    finetune_sparsity: float = 0.9                    # unstructured, then fine-tuned (CE or KD)
    pruned_width: int = 8                             # channel pruning: the teacher's width 16 -> 8
    rank_fraction: float = 0.25                       # truncated SVD: a quarter of each layer's rank
    finetune_epochs: int = 5
    finetune_lr: float = 3e-3
    calibration_images: int = 256                     # static int8: from the training split


# Row names of the digits study, in table order; the "ONNX fp32" and "int8" rows run in ONNX Runtime.
DIGITS_ROWS = (
    "teacher", "teacher ONNX fp32", "teacher int8 dynamic", "teacher int8 static",
    "teacher pruned 50%", "teacher pruned 70%", "teacher pruned 90%",
    "pruned 90% + FT (CE)", "pruned 90% + FT (KD)",
    "channels /2", "channels /2 + FT (CE)", "channels /2 + FT (KD)",
    "SVD r/4", "SVD r/4 + FT (CE)",
    "student scratch", "student KD", "student KD ONNX fp32", "student KD int8 dynamic", "student KD int8 static",
)


def _onnx_accuracy(path: Path, x: torch.Tensor, y: torch.Tensor) -> float:
    logits = compress.OnnxModel(path)(x)                                          # (N, 10)
    return float((logits.argmax(1) == y.numpy()).mean())


def digits_seed(seed: int, config: DigitsConfig, run: CompressionRun, keep: bool = False) -> dict:
    """One seed of the digits study: ``{"accuracy": {row: test accuracy}}``, plus the models when ``keep``.

    With ``keep``: ``"models"`` (row -> torch model, eval mode), ``"onnx"`` (row -> the ONNX
    file's bytes) and ``"onnx_max_abs_diff"`` (KD student, torch vs ONNX Runtime, test logits).
    """
    torch.set_num_threads(1)
    split = load_digits_split(SPLIT_SEED)
    test = TensorBatches(split.x_test, split.y_test, batch_size=512)
    opts = dict(lr=config.lr, weight_decay=config.weight_decay)
    kd = dict(T=config.T, kd_weight=config.kd_weight, ce_weight=config.ce_weight)

    def batches(size):
        return TensorBatches(split.x_train, split.y_train, size, shuffle=True, seed=seed)

    seed_everything(seed)
    teacher = DigitsCNN(config.teacher_width)
    fit(Scratch(teacher), batches(config.teacher_batch_size), epochs=config.teacher_epochs, **opts,
        desc=f"seed {seed} teacher")
    teacher.eval()
    models = {"teacher": teacher}

    initial_student = DigitsCNN(config.student_width)
    for name, make in (("student scratch", Scratch), ("student KD", lambda s: LogitKD(s, teacher, **kd))):
        student = copy.deepcopy(initial_student)
        fit(make(student), batches(config.student_batch_size), epochs=config.transfer_epochs, **opts,
            desc=f"seed {seed} {name}")
        models[name] = student.eval()

    def finetune(model, name, loss):
        model.requires_grad_(True)               # a copy of the teacher comes frozen (LogitKD froze the teacher)
        distiller = Scratch(model) if loss == "CE" else LogitKD(model, teacher, **kd)
        fit(distiller, batches(config.student_batch_size), epochs=run.finetune_epochs, lr=run.finetune_lr,
            weight_decay=config.weight_decay, desc=f"seed {seed} {name}")
        return model.eval()

    for s in run.sparsities:
        models[f"teacher pruned {s:.0%}"] = compress.magnitude_prune(copy.deepcopy(teacher), s)
    for loss in ("CE", "KD"):
        pruned = compress.magnitude_prune(copy.deepcopy(teacher), run.finetune_sparsity, permanent=False)
        name = f"pruned {run.finetune_sparsity:.0%} + FT ({loss})"
        models[name] = compress.make_pruning_permanent(finetune(pruned, name, loss))
    models["channels /2"] = compress.prune_channels(teacher, run.pruned_width).eval()
    for loss in ("CE", "KD"):
        models[f"channels /2 + FT ({loss})"] = finetune(compress.prune_channels(teacher, run.pruned_width),
                                                        f"channels FT {loss}", loss)
    low_rank = copy.deepcopy(teacher)
    compress.factorize(low_rank, run.rank_fraction)
    models["SVD r/4"] = low_rank
    models["SVD r/4 + FT (CE)"] = finetune(copy.deepcopy(low_rank), "SVD FT CE", "CE")

    accuracy = {name: evaluate(model, test)["accuracy"] for name, model in models.items()}
    onnx, result = {}, {}
    calibration = split.x_train[torch.randperm(len(split.x_train),
                                               generator=torch.Generator().manual_seed(seed))[:run.calibration_images]]
    with tempfile.TemporaryDirectory() as tmp:
        for base, label in ((teacher, "teacher"), (models["student KD"], "student KD")):
            fp32 = compress.export_onnx(base, split.x_test[:1], Path(tmp) / f"{seed}-{label}.onnx", input_name="images")
            paths = {f"{label} ONNX fp32": fp32,
                     f"{label} int8 dynamic": compress.quantize_dynamic_int8(fp32, Path(tmp) / f"{seed}-{label}-dyn.onnx"),
                     f"{label} int8 static": compress.quantize_static_int8(
                         fp32, Path(tmp) / f"{seed}-{label}-static.onnx", calibration.split(64))}
            for name, path in paths.items():
                accuracy[name] = _onnx_accuracy(path, split.x_test, split.y_test)
                onnx[name] = path.read_bytes()
        if keep:
            with torch.no_grad():
                reference = models["student KD"](split.x_test).numpy()
            runtime = compress.OnnxModel(Path(tmp) / f"{seed}-student KD.onnx")
            result["onnx_max_abs_diff"] = float(np.abs(runtime(split.x_test) - reference).max())
    result["accuracy"] = {name: accuracy[name] for name in DIGITS_ROWS}
    if keep:
        result.update(models=models, onnx=onnx)
    return result


# -- text -------------------------------------------------------------------------------------------
@torch.no_grad()
def onnx_bits_per_char(runtime: compress.OnnxModel, windows) -> float:
    """Bits per character of an ONNX CharGPT over ``windows`` (as :func:`kd_ref.data.text.bits_per_char`).

    The ONNX model takes no padding mask: the padded positions are at the end of a window and
    attention is causal, so the logits at the real positions are the same.
    """
    total, count = 0.0, 0
    for x, y, mask in windows:
        logits = torch.from_numpy(runtime(x))                                      # (B, T, V)
        ce = F.cross_entropy(logits.flatten(0, 1).double(), y.flatten().clamp(min=0), reduction="none")
        total += float((ce * mask.flatten()).sum())
        count += int(mask.sum())
    return total / count / math.log(2)
