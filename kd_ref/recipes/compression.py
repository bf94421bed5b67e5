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

The fine-tuning learning rate of each fine-tuned row is chosen on the **validation** split,
seed 0 only (``digits_select`` for the digits rows, ``text_train`` without test scoring for
the text rows; :func:`choose` picks the best candidate), then used for every seed; the test
split is scored once per model.

The text study starts from one cached CharGPT teacher (seed 0): the post-training methods
(pruning, low rank without fine-tuning, int8) are deterministic given that teacher, and the
trained rows (``TEXT_TRAINED_ROWS``: a scratch and a KD student, the factorised and the MLP-pruned
teacher, each fine-tuned with cross-entropy or with KD) are trained
once per seed by
``text_train``, one (seed, row) job at a time so that the jobs of all seeds spread over the
processes. A seed sets the student's initial weights and the training crops.
"""
from __future__ import annotations

import copy
import math
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .. import compress
from ..data import TensorBatches, load_digits_split
from ..data.text import RandomCrops, ValidationWindows, bits_per_char, first_chars, load_text
from ..distillers import LogitKD, Scratch
from ..models import CharGPT, DigitsCNN
from ..teacher_cache import cached_text_teacher
from ..train import evaluate, fit, predict, seed_everything
from .digits import SPLIT_SEED, DigitsConfig
from .text import SPLIT_SEED as TEXT_SPLIT_SEED, _data as text_data, make_distiller, train_model

SELECTION_SEED = 0      # the seed whose validation scores choose the fine-tuning settings


@dataclass(frozen=True)
class CompressionRun:
    """What the lesson's digits study does beyond the recipe's settings.

    The methods' settings (sparsities, width, rank, epochs) are fixed in advance; the
    fine-tuning learning rate of each fine-tuned row is chosen among ``finetune_lrs`` on the
    validation split (:func:`digits_select`, :func:`choose`).
    """

    sparsities: tuple[float, ...] = (0.5, 0.7, 0.9)   # unstructured, no fine-tuning
    finetune_sparsity: float = 0.9                    # unstructured, then fine-tuned (CE or KD)
    pruned_width: int = 8                             # channel pruning: the teacher's width 16 -> 8
    rank_fraction: float = 0.25                       # truncated SVD: a quarter of each layer's rank
    finetune_epochs: int = 5
    finetune_lrs: tuple[float, ...] = (3e-3, 1e-2, 3e-2)   # candidates: the former fixed rate first (wins a
                                                      # tie), the recipe's own training rate, and 3x that (a
                                                      # first save chose 1e-2, the top of (3e-3, 1e-2): widened)
    calibration_images: int = 256                     # static int8: from the training split


# Row names of the digits study, in table order; the "ONNX fp32" and "int8" rows run in ONNX Runtime.
DIGITS_FINETUNED = ("pruned 90% + FT (CE)", "pruned 90% + FT (KD)", "channels /2 + FT (CE)", "channels /2 + FT (KD)",
                    "SVD r/4 + FT (CE)", "SVD r/4 + FT (KD)")
DIGITS_ROWS = (
    "teacher", "teacher ONNX fp32", "teacher int8 dynamic", "teacher int8 static",
    "teacher pruned 50%", "teacher pruned 70%", "teacher pruned 90%",
    "pruned 90% + FT (CE)", "pruned 90% + FT (KD)",
    "channels /2", "channels /2 + FT (CE)", "channels /2 + FT (KD)",
    "SVD r/4", "SVD r/4 + FT (CE)", "SVD r/4 + FT (KD)",
    "student scratch", "student KD", "student KD ONNX fp32", "student KD int8 dynamic", "student KD int8 static",
)


def choose(scores: dict[float, dict[str, float]], key: str, higher_is_better: bool,
           tie: str | None = None) -> tuple[float, float]:
    """``(lr, score)``: the candidate of ``{lr: {metric: value}}`` with the best ``key``, in insertion order.

    ``tie``: a second metric, lower is better, that decides between equal ``key`` scores (a
    validation loss behind an accuracy); the first listed candidate wins a remaining tie.
    """
    if not scores:
        raise ValueError("scores must hold at least one candidate, got none")
    sign = -1.0 if higher_is_better else 1.0

    def rank(lr):
        return (sign * scores[lr][key], scores[lr][tie] if tie else 0.0)
    best = min(scores, key=rank)                      # min keeps the first of equal ranks
    return best, scores[best][key]


def _digits_teacher(seed: int, config: DigitsConfig, split) -> DigitsCNN:
    """The seed's digits teacher, trained on every training label (what :func:`digits_seed` starts from)."""
    seed_everything(seed)
    teacher = DigitsCNN(config.teacher_width)
    batches = TensorBatches(split.x_train, split.y_train, config.teacher_batch_size, shuffle=True, seed=seed)
    fit(Scratch(teacher), batches, epochs=config.teacher_epochs, lr=config.lr, weight_decay=config.weight_decay,
        desc=f"seed {seed} teacher")
    return teacher.eval()


def _digits_starts(teacher: DigitsCNN, run: CompressionRun) -> dict[str, tuple[torch.nn.Module, str]]:
    """``row -> (compressed copy of the teacher, fine-tuning loss)`` for every row of ``DIGITS_FINETUNED``."""
    def pruned():
        return compress.magnitude_prune(copy.deepcopy(teacher), run.finetune_sparsity, permanent=False)

    def factorised():
        model = copy.deepcopy(teacher)
        compress.factorize(model, run.rank_fraction)
        return model

    starts = {}
    for loss in ("CE", "KD"):
        starts[f"pruned {run.finetune_sparsity:.0%} + FT ({loss})"] = (pruned(), loss)
        starts[f"channels /2 + FT ({loss})"] = (compress.prune_channels(teacher, run.pruned_width), loss)
        starts[f"SVD r/4 + FT ({loss})"] = (factorised(), loss)
    return {name: starts[name] for name in DIGITS_FINETUNED}


def _digits_finetune(model, teacher, loss: str, lr: float, seed: int, config: DigitsConfig, run: CompressionRun,
                     split, desc: str):
    """Fine-tune ``model`` for ``run.finetune_epochs`` at ``lr``: cross-entropy (``"CE"``) or KD from ``teacher``."""
    model.requires_grad_(True)               # a copy of the teacher comes frozen (LogitKD froze the teacher)
    kd = dict(T=config.T, kd_weight=config.kd_weight, ce_weight=config.ce_weight)
    distiller = Scratch(model) if loss == "CE" else LogitKD(model, teacher, **kd)
    batches = TensorBatches(split.x_train, split.y_train, config.student_batch_size, shuffle=True, seed=seed)
    fit(distiller, batches, epochs=run.finetune_epochs, lr=lr, weight_decay=config.weight_decay, desc=desc)
    return compress.make_pruning_permanent(model).eval()


def digits_select(lr: float, config: DigitsConfig, run: CompressionRun) -> dict[str, dict[str, float]]:
    """Every fine-tuned digits row at learning rate ``lr``, seed ``SELECTION_SEED``: its **validation** scores.

    ``{row: {"val_accuracy", "val_loss"}}`` (the loss: mean cross-entropy). Trains the seed's
    teacher as :func:`digits_seed` does and fine-tunes each compressed copy as it does; the
    test split is not touched. A module-level function of ``lr`` so that the candidates can
    run in parallel processes (:func:`kd_ref.recipes.seeds.map_seeds`).
    """
    torch.set_num_threads(1)
    seed = SELECTION_SEED
    split = load_digits_split(SPLIT_SEED)
    val = TensorBatches(split.x_val, split.y_val, batch_size=512)
    teacher = _digits_teacher(seed, config, split)
    scores = {}
    for name, (model, loss) in _digits_starts(teacher, run).items():
        tuned = _digits_finetune(model, teacher, loss, lr, seed, config, run, split, f"select {name} lr {lr:g}")
        logits, labels = predict(tuned, val)
        scores[name] = {"val_accuracy": float((logits.argmax(1) == labels).float().mean()),
                        "val_loss": float(F.cross_entropy(logits, labels))}
    return scores


def _onnx_accuracy(path: Path, x: torch.Tensor, y: torch.Tensor) -> float:
    logits = compress.OnnxModel(path)(x)                                          # (N, 10)
    return float((logits.argmax(1) == y.numpy()).mean())


def digits_seed(seed: int, config: DigitsConfig, run: CompressionRun, keep: bool = False,
                lrs: dict[str, float] | None = None) -> dict:
    """One seed of the digits study: ``{"accuracy": {row: test accuracy}}``, plus the models when ``keep``.

    ``lrs``: the fine-tuning learning rate of each row of ``DIGITS_FINETUNED`` (chosen on
    validation); default: the first of ``run.finetune_lrs`` for every row. With ``keep``:
    ``"models"`` (row -> torch model, eval mode), ``"onnx"`` (row -> the ONNX file's bytes)
    and ``"onnx_max_abs_diff"`` (KD student, torch vs ONNX Runtime, test logits).
    """
    torch.set_num_threads(1)
    lrs = lrs or {name: run.finetune_lrs[0] for name in DIGITS_FINETUNED}
    if set(lrs) != set(DIGITS_FINETUNED):
        raise ValueError(f"lrs must give a learning rate for each of {DIGITS_FINETUNED}, got {sorted(lrs)}")
    split = load_digits_split(SPLIT_SEED)
    test = TensorBatches(split.x_test, split.y_test, batch_size=512)
    opts = dict(lr=config.lr, weight_decay=config.weight_decay)
    kd = dict(T=config.T, kd_weight=config.kd_weight, ce_weight=config.ce_weight)

    def batches(size):
        return TensorBatches(split.x_train, split.y_train, size, shuffle=True, seed=seed)

    teacher = _digits_teacher(seed, config, split)
    models = {"teacher": teacher}

    initial_student = DigitsCNN(config.student_width)
    for name, make in (("student scratch", Scratch), ("student KD", lambda s: LogitKD(s, teacher, **kd))):
        student = copy.deepcopy(initial_student)
        fit(make(student), batches(config.student_batch_size), epochs=config.transfer_epochs, **opts,
            desc=f"seed {seed} {name}")
        models[name] = student.eval()

    for s in run.sparsities:
        models[f"teacher pruned {s:.0%}"] = compress.magnitude_prune(copy.deepcopy(teacher), s)
    models["channels /2"] = compress.prune_channels(teacher, run.pruned_width).eval()
    low_rank = copy.deepcopy(teacher)
    compress.factorize(low_rank, run.rank_fraction)
    models["SVD r/4"] = low_rank
    for name, (model, loss) in _digits_starts(teacher, run).items():
        models[name] = _digits_finetune(model, teacher, loss, lrs[name], seed, config, run, split,
                                        f"seed {seed} {name}")

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


@dataclass(frozen=True)
class TextCompressionRun:
    """What the lesson's text study trains on top of the cached teacher (steps fixed by the lesson's budget).

    The fine-tuning learning rate of each fine-tuned row is chosen among ``finetune_lrs`` on
    the validation characters, seed 0 (:func:`choose`); the students keep the recipe's
    ``student_lr`` (chosen by ``kd-ref text --select``).
    """

    student_steps: int = 150                          # scratch and KD students
    finetune_steps: int = 60                          # each compressed teacher
    finetune_warmup: int = 6                          # steps of linear warm-up before the cosine
    finetune_lrs: tuple[float, ...] = (3e-3, 1e-3, 3e-4)   # candidates: the teacher's own lr first (wins a
                                                      # tie); a first save chose 1e-3, the bottom of (3e-3,
                                                      # 1e-3): widened downwards
    rank_fraction: float = 0.25                       # truncated SVD: a quarter of each layer's rank
    mlp_fraction: float = 0.5                         # MLP hidden units kept in every block (4C -> 2C)
    eval_chars: int = 10_000                          # first validation / test characters scored


# The trained text rows: the students, and the compressed teachers fine-tuned (row -> (method, loss)). Each
# compression is fine-tuned with cross-entropy and with KD, so that the loss is the only difference of a pair.
TEXT_STUDENTS = ("student scratch", "student KD")
TEXT_FINETUNED = {"teacher SVD r/4 + FT (CE)": ("SVD r/4", "CE"), "teacher SVD r/4 + FT (KD)": ("SVD r/4", "KD"),
                  "teacher MLP /2 + FT (CE)": ("MLP /2", "CE"), "teacher MLP /2 + FT (KD)": ("MLP /2", "KD")}
TEXT_TRAINED_ROWS = TEXT_STUDENTS + tuple(TEXT_FINETUNED)
TEXT_CROP_SEED = 1000       # + seed: the training crops of every trained row of a seed


def text_compress(teacher: CharGPT, method: str, run: TextCompressionRun) -> CharGPT:
    """A compressed copy of ``teacher``, trainable: ``"SVD r/4"`` (:func:`kd_ref.compress.factorize` at
    ``run.rank_fraction``) or ``"MLP /2"`` (:func:`kd_ref.compress.prune_mlp_units`, ``run.mlp_fraction`` kept)."""
    model = copy.deepcopy(teacher)
    if method == "SVD r/4":
        compress.factorize(model, run.rank_fraction)
    elif method == "MLP /2":
        compress.prune_mlp_units(model, round(run.mlp_fraction * model.blocks[0].mlp[0].out_features))
    else:
        raise ValueError(f"method must be 'SVD r/4' or 'MLP /2', got method={method!r}")
    return model.requires_grad_(True)      # a copy of a teacher that LogitKD froze comes frozen


def text_windows(config, split, n_chars: int) -> tuple[ValidationWindows, ValidationWindows]:
    """The validation and the test windows over the first ``n_chars`` characters of each."""
    def windows(blocks):
        return ValidationWindows(first_chars(blocks, n_chars, config.context), config.context, config.eval_batch_size)
    return windows(split.val), windows(split.test)


def text_calibration(split, config) -> list[torch.Tensor]:
    """Static int8's calibration batches: 4 batches of 8 training windows (seeded)."""
    return [x for x, _ in RandomCrops(split.train, config.context, 8, 4, seed=7)]


def text_int8(model: CharGPT, split, config, example: torch.Tensor, folder: Path, label: str) -> dict[str, Path]:
    """``model`` exported to ONNX and quantized: ``{"<label> ONNX fp32" | "<label> int8 dynamic" |
    "<label> int8 static": path}``, the files in ``folder``."""
    stem = label.replace(" ", "_")
    fp32 = compress.export_onnx(model, example, Path(folder) / f"{stem}.onnx", input_name="idx")
    return {f"{label} ONNX fp32": fp32,
            f"{label} int8 dynamic": compress.quantize_dynamic_int8(fp32, Path(folder) / f"{stem}.dyn.onnx"),
            f"{label} int8 static": compress.quantize_static_int8(fp32, Path(folder) / f"{stem}.static.onnx",
                                                                  text_calibration(split, config))}


def text_train(job: tuple, config, run: TextCompressionRun, keep: bool = False) -> dict:
    """Train one text row for one seed: ``job = (seed, row, lr, score_test)``.

    ``row`` is one of ``TEXT_TRAINED_ROWS``. A student starts from ``CharGPT`` weights drawn
    right after ``seed_everything(seed)`` (the two students of a seed from the same ones) and
    trains ``run.student_steps`` at ``config.student_lr`` (``lr`` is ignored); a fine-tuned row
    starts from the compressed cached teacher (seed 0) and trains ``run.finetune_steps`` at
    ``lr``, with ``run.finetune_warmup`` warm-up steps. KD rows learn from the cached teacher
    with the recipe's T and weights (``kd_ref.recipes.text.make_distiller``). Every row of a
    seed sees the same crops (``TEXT_CROP_SEED + seed``).

    Returns ``{"seed", "row", "lr", "val_bits_per_char", "train_seconds"}`` (the validation
    score on the first ``run.eval_chars`` validation characters), plus with ``score_test``
    ``"test_bits_per_char"``, and for the KD student its ONNX fp32 / int8 versions' test
    scores (``"onnx_test_bits_per_char"``). With ``keep``: ``"model"``, and the KD student's
    ONNX files' bytes (``"onnx"``).
    """
    seed, row, lr, score_test = job
    if row not in TEXT_TRAINED_ROWS:
        raise ValueError(f"row must be one of {TEXT_TRAINED_ROWS}, got row={row!r}")
    torch.set_num_threads(1)
    text, _ = load_text()
    teacher, _ = cached_text_teacher(config, text, 0, split_seed=TEXT_SPLIT_SEED, verbose=False)
    vocab, split, _, _ = text_data(config, text, test=False)
    val, test = text_windows(config, split, run.eval_chars)
    if row in TEXT_STUDENTS:
        seed_everything(seed)
        model = CharGPT(config.model(len(vocab), "student"))
        method = "student_kd" if row == "student KD" else "student_scratch"
        steps, lr, trial = run.student_steps, config.student_lr, config
    else:
        how, loss = TEXT_FINETUNED[row]
        model = text_compress(teacher, how, run)
        method = "student_kd" if loss == "KD" else "student_scratch"
        steps, trial = run.finetune_steps, replace(config, warmup=run.finetune_warmup)
    crops = RandomCrops(split.train, config.context, config.batch_size, steps, seed=TEXT_CROP_SEED + seed)
    with make_distiller(method, model, teacher, trial) as distiller:
        log = train_model(distiller, crops, lr=lr, config=trial, windows=val, device="cpu", desc=f"seed {seed} {row}")
    model.eval()
    result = {"seed": seed, "row": row, "lr": lr, "val_bits_per_char": log["history"][-1]["val_bpc"],
              "train_seconds": log["history"][-1]["train_seconds"]}
    if score_test:
        result["test_bits_per_char"] = bits_per_char(model, test)
        if row == "student KD":
            with tempfile.TemporaryDirectory() as tmp:
                paths = text_int8(model, split, config, test.x[:1], Path(tmp), row)
                result["onnx_test_bits_per_char"] = {name: onnx_bits_per_char(compress.OnnxModel(path), test)
                                                     for name, path in paths.items()}
                if keep:
                    result["onnx"] = {name: path.read_bytes() for name, path in paths.items()}
    if keep:
        result["model"] = model
    return result
