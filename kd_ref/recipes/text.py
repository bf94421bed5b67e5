"""``kd-ref text``: a character-level transformer distilled into a smaller one.

For each seed: train a ``CharGPT`` teacher on the training blocks of the corpus; then,
from **one** initial student and on **one** seeded sequence of training crops, three
students for the same number of steps, so the loss is the only difference between them:

    student_scratch         cross-entropy on the next character            (Scratch, padding=True)
    student_kd              kd_weight T^2 KL(p_t || p_s) at every position
                            + ce_weight CE                                  (LogitKD, padding=True)
    student_kd_hidden_attn  the same + hidden_weight hidden-state MSE through learned
                            projections + attention_weight attention KL, on TinyBERT's
                            uniform layer map                               (HiddenAttentionKD)

Data: the corpus is cut into 100 contiguous blocks; a seeded permutation (``SPLIT_SEED``)
holds out 10 for **validation** and 10 for **test**, the other 80 are for training
(``kd_ref.data.text.split_text``). Every model is trained by ``kd_ref.train.fit`` (AdamW,
warm-up then cosine to a tenth, gradient clipping at 1), which records the validation
bits per character every ``eval_every`` steps: the validation curve. Each final model is
then scored **once** on the test blocks. With ``--checkpoints DIR`` each model's training
state is saved at every record, and ``--resume`` continues a killed run (losing at most
one record interval) with the numbers of an uninterrupted one.

The results are the validation and the test bits per character (every held-out
character scored once), mean and std over seeds, and the paired differences between
students on the **test** split (``kd_effect``: mean ± standard error, t-based 95 %
interval over seeds, ``kd_ref.report.effect_lines``).

Profiles (``CONFIGS``):

    smoke  teacher 2 blocks of width 32, student 1 of 16, context 32, 120 / 80 steps,
           3,000 validation and 3,000 test characters: seconds, for CI; the numbers
           are not meaningful
    cpu    teacher 4 blocks of width 96 (473,472 parameters), student 2 of 48 (69,600),
           context 64, 600 / 400 steps of 32 windows; measured: see the README (2-core CPU)
    gpu    teacher 6 blocks of width 384, context 256 (10.8M parameters, the size of
           nanoGPT's character-level model), student 3 of 192 (1.4M), 5,000 / 2,500 steps
           of 64 windows; not measured

How the settings were chosen. The model sizes are fixed by the budget (cpu: about ten
minutes on two cores) and by the attention KL (equal head counts; the teacher's depth a
multiple of the student's for the uniform map). The optimiser settings (AdamW, warm-up,
cosine to a tenth, clipping at 1) are the usual ones for small GPTs. The students'
learning rate, the temperature and the KD weights (``SELECTED``) are chosen by
``kd-ref text --select`` (:func:`select`) on the **validation** split only, seed 0: the
students' learning rate for the scratch student (``SELECTION_GRIDS``), then T and
(kd_weight, ce_weight) for the token-level KD student at that learning rate. The
hidden-state and attention weights were not searched again (kept from earlier runs,
whose record is lost). The selection run of the cpu profile is committed in
``notebooks/results/text_selection.cpu.json`` and a unit test checks that
``CONFIGS["cpu"]`` holds its choices. That run kept the learning rate and T = 1 and
dropped the cross-entropy term of the KD students (ce_weight 0.5 -> 0), on one seed and
by a small margin (see the file). The smoke and gpu profiles were not selected this way
(smoke: numbers not meaningful; gpu: not measured). The test split plays no part in any
choice.
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path

import torch

from ..data.text import (CharVocab, RandomCrops, TextSplit, ValidationWindows, bits_per_char, first_chars, load_text,
                         split_text)
from ..distillers import LogitKD, Scratch
from ..models.count import count_parameters
from ..models.gpt import CharGPT, GPTConfig
from ..report import effect_lines, summarize_runs as summarize_metrics, text_table
from ..sequence_distillers import HiddenAttentionKD
from ..teacher_cache import cached_text_teacher
from ..train import cosine_schedule, fit, seed_everything
from .options import CommandError, add_study_options, save_json_option, start_study

SPLIT_SEED = 0          # the train / validation / test split is the same for every run
TEST_FRACTION = 0.1     # of the blocks, for test (and 0.1 for validation: split_text's default)
SELECTION_SEED = 0      # --select trains the teacher and its candidates with this seed
SELECTED = ("student_lr", "T", "kd_weight", "ce_weight")   # the TextConfig fields that --select chooses


@dataclass(frozen=True)
class TextConfig:
    """Sizes and hyper-parameters of one profile."""

    context: int = 64
    teacher_layers: int = 4
    teacher_width: int = 96
    student_layers: int = 2
    student_width: int = 48
    n_head: int = 4                 # the same for teacher and student (attention KL pairs heads)
    batch_size: int = 32
    teacher_steps: int = 600
    student_steps: int = 400
    lr: float = 3e-3                # teacher
    student_lr: float = 1.5e-2      # every student (chosen for the scratch student by --select)
    weight_decay: float = 0.0
    warmup: int = 50
    T: float = 1.0
    kd_weight: float = 1.0
    ce_weight: float = 0.5
    hidden_weight: float = 3.0
    attention_weight: float = 0.01
    eval_every: int = 200
    eval_batch_size: int = 64
    val_chars: int | None = None    # score only the first val_chars validation and test characters (None = all)
    sample_chars: int = 160

    def model(self, vocab_size: int, role: str) -> GPTConfig:
        layers, width = ((self.teacher_layers, self.teacher_width) if role == "teacher"
                         else (self.student_layers, self.student_width))
        return GPTConfig(vocab_size=vocab_size, context=self.context, n_layer=layers, n_head=self.n_head,
                         width=width)


CONFIGS = {
    "smoke": TextConfig(context=32, teacher_layers=2, teacher_width=32, student_layers=1, student_width=16,
                        n_head=2, batch_size=16, teacher_steps=120, student_steps=80, lr=1e-2, warmup=10,
                        eval_every=20, val_chars=3000, sample_chars=60),
    "cpu": TextConfig(ce_weight=0.0),   # student_lr, T, kd_weight, ce_weight: notebooks/results/text_selection.cpu.json
    "gpu": TextConfig(context=256, teacher_layers=6, teacher_width=384, student_layers=3, student_width=192,
                      n_head=6, batch_size=64, teacher_steps=5000, student_steps=2500, lr=1e-3,
                      student_lr=2e-3, warmup=200, eval_every=250),
}

METHODS = ("student_scratch", "student_kd", "student_kd_hidden_attn")
# The ablation of the last row: token KD + one intermediate term only (the other's weight set to 0).
ABLATIONS = ("student_kd_hidden", "student_kd_attn")


def learning_rate(step: int, total: int, peak: float, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then a cosine from ``peak`` down to ``peak / 10`` at ``total``."""
    return cosine_schedule(peak, total, warmup, final=peak / 10)(step)


def train_model(distiller, crops: RandomCrops, *, lr: float, config: "TextConfig", windows: ValidationWindows,
                device, desc: str, checkpoint: Path | None = None, resume: bool = False,
                run_info: dict | None = None) -> dict:
    """Train a sequence distiller for ``len(crops)`` steps with ``kd_ref.train.fit``; its log and throughput.

    AdamW (betas 0.9, 0.99), warm-up then cosine to ``lr / 10``, gradient clipping at 1,
    validation bits per character every ``config.eval_every`` steps and at the end.
    Returns ``{"history": [...], "train_tokens_per_s": float}`` (validation excluded).
    """
    total = len(crops)
    history = fit(distiller, crops, lr=cosine_schedule(lr, total, config.warmup, final=lr / 10),
                  optimizer=partial(torch.optim.AdamW, betas=(0.9, 0.99), weight_decay=config.weight_decay),
                  grad_clip=1.0, device=device, eval_every=config.eval_every, autocast_dtype="auto",
                  validate=lambda model: {"bpc": bits_per_char(model, windows, device)}, desc=desc,
                  checkpoint=checkpoint, resume=resume, run_info=run_info)
    tokens = total * crops.batch_size * crops.context
    return {"history": history, "train_tokens_per_s": tokens / max(history[-1]["train_seconds"], 1e-9)}


def make_distiller(name: str, student: CharGPT, teacher: CharGPT, config: TextConfig):
    """The distiller of a student row: scratch, token KD, token KD + hidden + attention, or one of its
    ablations (``ABLATIONS``: token KD + hidden states only, token KD + attention only)."""
    kd = dict(T=config.T, kd_weight=config.kd_weight, ce_weight=config.ce_weight)
    if name == "student_scratch":
        return Scratch(student, padding=True)
    if name == "student_kd":
        return LogitKD(student, teacher, **kd, padding=True)
    weights = {"student_kd_hidden_attn": (config.hidden_weight, config.attention_weight),
               "student_kd_hidden": (config.hidden_weight, 0.0), "student_kd_attn": (0.0, config.attention_weight)}
    if name in weights:
        hidden_weight, attention_weight = weights[name]
        return HiddenAttentionKD(student, teacher, **kd, hidden_weight=hidden_weight,
                                 attention_weight=attention_weight)
    raise ValueError(f"unknown student method {name!r}; choose one of {', '.join(METHODS + ABLATIONS)}")


def inference_tokens_per_s(model: CharGPT, windows: ValidationWindows, device) -> float:
    """Validation characters scored per second by ``model`` (a forward pass, no gradients)."""
    start = time.perf_counter()
    bits_per_char(model, windows, device)
    return windows.n_targets / (time.perf_counter() - start)


@dataclass(frozen=True)
class SelectionGrid:
    """What ``--select`` tries: the students' learning rates (scratch student), then T x (kd_weight, ce_weight)."""

    student_lr: tuple[float, ...]
    T: tuple[float, ...] = (1.0, 2.0, 4.0)
    weights: tuple[tuple[float, float], ...] = ((1.0, 0.5), (1.0, 0.0))    # (kd_weight, ce_weight)

    def size(self) -> int:
        return len(self.student_lr) + len(self.T) * len(self.weights)


SELECTION_GRIDS = {
    "smoke": SelectionGrid(student_lr=(7.5e-3, 1.5e-2, 3e-2)),
    "cpu": SelectionGrid(student_lr=(7.5e-3, 1.5e-2, 3e-2)),
    "gpu": SelectionGrid(student_lr=(1e-3, 2e-3, 4e-3)),
}


def _data(config: TextConfig, text: str, *, test: bool = True):
    """The vocabulary, the split, the validation windows and (``test``) the test windows (else None).

    ``config.val_chars`` limits each of validation and test to its first characters.
    """
    vocab = CharVocab(text)
    split = split_text(vocab.encode(text), config.context, seed=SPLIT_SEED, test_fraction=TEST_FRACTION)
    val = ValidationWindows(first_chars(split.val, config.val_chars, config.context), config.context,
                            config.eval_batch_size)
    test_windows = (ValidationWindows(first_chars(split.test, config.val_chars, config.context), config.context,
                                      config.eval_batch_size) if test else None)
    return vocab, split, val, test_windows


def _trainer(seed: int, config: TextConfig, split: TextSplit, windows: ValidationWindows, device,
             checkpoints: Path | None = None, resume: bool = False, run_info: dict | None = None):
    """``train(name, distiller, steps, crop_seed, lr) -> log``: one model of a seed, validated on ``windows``."""
    def train(name, distiller, steps, crop_seed, lr):
        crops = RandomCrops(split.train, config.context, config.batch_size, steps, seed=crop_seed)
        path = None if checkpoints is None else Path(checkpoints) / f"seed{seed}" / f"{name}.pt"
        info = {**(run_info or {}), "seed": seed, "model": name, "steps": steps}
        return train_model(distiller, crops, lr=lr, config=config, windows=windows, device=device,
                           desc=f"seed {seed} {name}", checkpoint=path, resume=resume, run_info=info)
    return train


def run_seed(seed: int, config: TextConfig, text: str, device, methods=METHODS, sample_prompt: str = "\n",
             on_model=None, checkpoints: Path | None = None, resume: bool = False,
             run_info: dict | None = None, teacher_cache: bool | str | Path = False) -> dict:
    """Train the teacher and each student with ``seed``; return every model's results.

    ``{name: {"val_bits_per_char", "test_bits_per_char", "bits_per_char", "train_tokens_per_s",
    "infer_tokens_per_s", "history", "sample", "parameters", "model"}}``. The validation
    curve (``history``, records with ``val_bpc``) is recorded during training; its last
    point is ``val_bits_per_char`` (``bits_per_char`` is the same number, the older
    name). When a model's training is over, the final model is scored once on the test
    blocks: ``test_bits_per_char``. The students of a seed start from the same initial
    weights and see the same sequence of training crops, so the loss is the only
    difference between them. ``on_model(name, result)`` is called after each model.
    ``checkpoints``: a folder for one checkpoint per model (``seed<k>/<name>.pt``);
    ``resume`` continues from them; ``run_info`` identifies the run (see ``fit``).

    ``teacher_cache``: ``True`` (the default folder of :mod:`kd_ref.teacher_cache`) or a folder
    loads the seed's teacher from the cache, training and saving it there first when it is
    missing. The cached teacher is trained by the same code from the same seed, and the
    students' initial weights are drawn exactly as without the cache, so the results are the
    same; the teacher's ``history`` is then the one recorded when it was trained (on all
    validation blocks, whatever ``config.val_chars``) and its last point is rescored here.
    """
    vocab, split, windows, test_windows = _data(config, text)
    cached = None
    if teacher_cache is not False and teacher_cache is not None:
        cached = cached_text_teacher(config, text, seed, split_seed=SPLIT_SEED, device=device,
                                     root=None if teacher_cache is True else teacher_cache)
    seed_everything(seed)
    teacher = CharGPT(config.model(len(vocab), "teacher"))              # drawn even when cached: same students
    initial_student = CharGPT(config.model(len(vocab), "student"))
    train = _trainer(seed, config, split, windows, device, checkpoints, resume, run_info)

    results = {}
    if cached is None:
        log = train("teacher", Scratch(teacher, padding=True), config.teacher_steps, seed, config.lr)
    else:
        trained, info = cached
        teacher = trained
        log = _cached_teacher_log(teacher, info, config, windows, device)
    results["teacher"] = _result(teacher, log, windows, test_windows, vocab, seed, config, device, sample_prompt)
    if on_model is not None:
        on_model("teacher", results["teacher"])
    for name in methods:
        student = copy.deepcopy(initial_student)
        with make_distiller(name, student, teacher, config) as distiller:
            log = train(name, distiller, config.student_steps, 1000 + seed, config.student_lr)
        results[name] = _result(student, log, windows, test_windows, vocab, seed, config, device, sample_prompt)
        if on_model is not None:
            on_model(name, results[name])
    return results


def _cached_teacher_log(teacher: CharGPT, info: dict, config: TextConfig, windows: ValidationWindows, device) -> dict:
    """What ``train_model`` would have returned for a cached teacher: its recorded curve, rescored at the end."""
    history = [dict(record) for record in info["history"]]
    history[-1]["val_bpc"] = bits_per_char(teacher, windows, device)
    tokens = config.teacher_steps * config.batch_size * config.context
    return {"history": history, "train_tokens_per_s": tokens / max(history[-1]["train_seconds"], 1e-9)}


def _result(model, log, windows, test_windows, vocab, seed, config, device, prompt) -> dict:
    generator = torch.Generator(device=device).manual_seed(seed)
    start = vocab.encode(prompt)[None].to(device)                           # (1, len(prompt))
    sample = model.generate(start, config.sample_chars, temperature=0.8, generator=generator)[0, len(prompt):]
    val = log["history"][-1]["val_bpc"]
    return {
        "val_bits_per_char": val,
        "test_bits_per_char": bits_per_char(model, test_windows, device),   # the only time a model sees test
        "bits_per_char": val,
        "train_tokens_per_s": log["train_tokens_per_s"],
        "infer_tokens_per_s": inference_tokens_per_s(model, windows, device),
        "history": log["history"],
        "sample": vocab.decode(sample.cpu()),
        "parameters": count_parameters(model),
        "model": model,
    }


def select(config: TextConfig, text: str, device, grid: SelectionGrid, on_candidate=None) -> dict:
    """Choose the students' learning rate, T and the KD weights on the validation split (seed 0).

    Trains the teacher once (``SELECTION_SEED``, as ``run_seed`` does), then from one
    initial student on one sequence of crops: the scratch student at each of
    ``grid.student_lr`` (the lowest final validation bits per character wins), then the
    token-level KD student at that learning rate for each T in ``grid.T`` and each
    ``(kd_weight, ce_weight)`` in ``grid.weights`` (the lowest wins; the first listed on
    a tie). The test blocks are never scored. ``on_candidate(candidate)`` is called
    after each. Returns ``{"seed", "teacher_val_bits_per_char", "candidates", "chosen"}``;
    ``chosen`` holds the ``SELECTED`` fields.
    """
    vocab, split, windows, _ = _data(config, text, test=False)
    seed = SELECTION_SEED
    seed_everything(seed)
    teacher = CharGPT(config.model(len(vocab), "teacher"))
    initial_student = CharGPT(config.model(len(vocab), "student"))
    train = _trainer(seed, config, split, windows, device)
    teacher_log = train("teacher", Scratch(teacher, padding=True), config.teacher_steps, seed, config.lr)
    candidates = []

    def candidate(stage, name, settings):
        trial = replace(config, **settings)
        student = copy.deepcopy(initial_student)
        with make_distiller(name, student, teacher, trial) as distiller:
            log = train(name, distiller, trial.student_steps, 1000 + seed, trial.student_lr)
        row = {"stage": stage, "student": name, **{k: settings.get(k) for k in SELECTED},
               "val_bits_per_char": log["history"][-1]["val_bpc"]}
        candidates.append(row)
        if on_candidate is not None:
            on_candidate(row)
        return row

    lr_rows = [candidate("student_lr", "student_scratch", {"student_lr": lr}) for lr in grid.student_lr]
    student_lr = min(lr_rows, key=lambda row: row["val_bits_per_char"])["student_lr"]
    kd_rows = [candidate("kd", "student_kd", {"student_lr": student_lr, "T": T, "kd_weight": kd, "ce_weight": ce})
               for T in grid.T for kd, ce in grid.weights]
    best = min(kd_rows, key=lambda row: row["val_bits_per_char"])
    return {"seed": seed, "teacher_val_bits_per_char": teacher_log["history"][-1]["val_bpc"],
            "candidates": candidates, "chosen": {k: best[k] for k in SELECTED}}


def summarize_runs(per_seed: list[dict]) -> list[dict]:
    """JSON rows: the validation, then the test bits per character of every model, mean and std over seeds."""
    return summarize_metrics(per_seed, ("val_bits_per_char", "test_bits_per_char"))


def format_results(per_seed: list[dict]) -> str:
    """The results table: parameters, validation and test bits/char (mean ± std), then the hardware-dependent throughput."""
    def cell(values):
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.fmean(values):.3f} ± {std:.3f}"

    lines = []
    for name in per_seed[0]:
        lines.append([name, f"{per_seed[0][name]['parameters']:,}",
                      cell([run[name]["val_bits_per_char"] for run in per_seed]),
                      cell([run[name]["test_bits_per_char"] for run in per_seed]), "|",
                      f"{statistics.fmean(run[name]['train_tokens_per_s'] for run in per_seed):,.0f}",
                      f"{statistics.fmean(run[name]['infer_tokens_per_s'] for run in per_seed):,.0f}"])
    return text_table(["name", "parameters", "val bits/char", "test bits/char", "|", "train tok/s", "infer tok/s"],
                      lines, separators=[4])


def kd_effect(per_seed: list[dict], metric: str = "test_bits_per_char") -> str:
    """Does token-level KD lower the bits per character? Paired differences with their 95 % intervals.

    On the test split by default (the settings were chosen on validation). Negative
    differences are gains (fewer bits): "helps" only when the t interval over seeds lies
    below 0, "hurts" when above, else "no detectable difference" (``kd_ref.report``).
    Then the same for hidden + attention over token KD alone, for each ablation present
    (``ABLATIONS``: one intermediate term over token KD, and what the other term adds to it),
    and the fraction of the teacher-student gap that KD closes (a ratio of means, no interval).
    """
    split = {"test_bits_per_char": "test", "val_bits_per_char": "validation", "bits_per_char": "validation"}
    mean = {name: statistics.fmean(run[name][metric] for run in per_seed) for name in per_seed[0]}
    comparisons = [("student_kd", "student_scratch", "token-level KD")]
    if "student_kd_hidden_attn" in mean:
        comparisons.append(("student_kd_hidden_attn", "student_kd", "+ hidden states and attention"))
    for name, added in (("student_kd_hidden", "hidden states"), ("student_kd_attn", "attention")):
        if name in mean:                                          # the ablations: one intermediate term at a time
            comparisons.append((name, "student_kd", f"+ {added} alone"))
            if "student_kd_hidden_attn" in mean:
                other = "attention" if name == "student_kd_hidden" else "hidden states"
                comparisons.append(("student_kd_hidden_attn", name, f"adding {other} to {added}"))
    lines = [f"Effects on {split.get(metric, metric)} bits/char (lower is better; paired over seeds, "
             "mean ± standard error, t-based 95 % interval):",
             *effect_lines(per_seed, comparisons, metric, digits=3, lower_is_better=True)]
    gap = mean["student_scratch"] - mean["teacher"]
    if gap > 0:
        closed = (mean["student_scratch"] - mean["student_kd"]) / gap
        lines.append(f"  teacher-student gap closed by KD: (scratch - kd) / (scratch - teacher) = {closed:.0%}")
    return "\n".join(lines)


def format_selection(selection: dict) -> str:
    """The candidates of :func:`select` as a table, the chosen one marked with ``*``."""
    chosen = selection["chosen"]
    best = {stage: min((c for c in selection["candidates"] if c["stage"] == stage),
                       key=lambda c: c["val_bits_per_char"]) for stage in ("student_lr", "kd")}

    def show(value):
        return "-" if value is None else f"{value:g}"

    lines = [["*" if c is best[c["stage"]] else "", c["student"], *(show(c[k]) for k in SELECTED),
              f"{c['val_bits_per_char']:.3f}"] for c in selection["candidates"]]
    table = text_table(["", "student", *SELECTED, "val bits/char"], lines)
    return (f"{table}\n(seed {selection['seed']}; validation bits per character of the final model; teacher "
            f"{selection['teacher_val_bits_per_char']:.3f}; * the lowest of its stage)\n"
            "chosen: " + ", ".join(f"{k} {chosen[k]:g}" for k in SELECTED))


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "text", help="a character-level transformer distilled into a smaller one (bits per character)",
        description="Train a character-level GPT teacher, then three smaller students for the same number of "
                    "steps: from scratch, with token-level KD, and with KD + hidden-state + attention losses. "
                    "Prints validation and test bits per character (mean ± std over seeds) and the students' "
                    "paired differences on test. With --select, instead choose the students' learning rate, "
                    "T and the KD weights on the validation split (seed 0).")
    add_study_options(parser, seeds=3)
    parser.add_argument("--text", metavar="FILE", help="a UTF-8 text file (default: CPython's pydoc_data.topics)")
    parser.add_argument("--checkpoints", metavar="DIR", default=None,
                        help="save every model's training state in DIR at each validation (default: none)")
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoints of a killed run")
    parser.add_argument("--teacher-cache", metavar="DIR", nargs="?", const=True, default=False,
                        help="load each seed's teacher from the teacher cache (DIR, else $KD_TEACHER_CACHE, else "
                             "runs/teachers), training and saving it there first when it is missing; the results "
                             "are the same as without it")
    parser.add_argument("--select", action="store_true",
                        help="the selection run: train the teacher once (seed 0) and try a small grid of student "
                             "learning rates, T and KD weights on the validation split only; --json PATH writes "
                             "every candidate and the chosen settings (--seeds is not used)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """The ``text`` subcommand: check the arguments and data, train every seed, print and save the results."""
    if args.resume and args.checkpoints is None:
        raise CommandError("--resume needs --checkpoints DIR (where the killed run saved its state)")
    if args.select and (args.checkpoints is not None or args.resume):
        raise CommandError("--select does not save or resume checkpoints; drop --checkpoints / --resume")
    # The smoke models are so small that one thread is as fast, and one thread makes the
    # numbers independent of the machine's core count. The cpu profile's models gain from
    # every core (measured on 2 cores: 1.5x the tokens per second of one thread).
    profile, device = start_study(args)
    if device.type == "cpu" and profile == "smoke":
        torch.set_num_threads(1)
    config = CONFIGS[profile]
    try:
        text, source = load_text(args.text)
        vocab = CharVocab(text)
        split = split_text(vocab.encode(text), config.context, seed=SPLIT_SEED, test_fraction=TEST_FRACTION)
    except ValueError as err:
        raise CommandError(err) from None

    teacher_config, student_config = config.model(len(vocab), "teacher"), config.model(len(vocab), "student")
    teacher_params = count_parameters(CharGPT(teacher_config))
    student_params = count_parameters(CharGPT(student_config))
    data = (f"{source}: {len(text):,} characters, vocabulary {len(vocab)}; train {split.n_train:,} / "
            f"val {split.n_val:,} / test {split.n_test:,} characters ({len(split.train)} / {len(split.val)} / "
            f"{len(split.test)} contiguous blocks, split seed {SPLIT_SEED})")
    if args.select:
        print(f"kd-ref text --select | profile {profile} | device {device} | seed {SELECTION_SEED}")
    else:
        print(f"kd-ref text | profile {profile} | device {device} | seeds 0..{args.seeds - 1}")
    print(f"data: {data}")
    if device.type == "cpu":
        print(f"torch threads: {torch.get_num_threads()}")
    print(f"teacher CharGPT({_describe(teacher_config)}): {teacher_params:,} parameters; "
          f"student CharGPT({_describe(student_config)}): {student_params:,} parameters "
          f"({teacher_params / student_params:.1f}x fewer)")
    if args.select:
        return _run_selection(args, profile, device, config, text, data)
    print(f"steps: teacher {config.teacher_steps}, each student {config.student_steps} (batch {config.batch_size} "
          f"x {config.context} characters), student lr {config.student_lr:g}; KD at T = {config.T:g}, "
          f"kd_weight {config.kd_weight:g}, ce_weight {config.ce_weight:g}; hidden_weight {config.hidden_weight:g}, "
          f"attention_weight {config.attention_weight:g}")

    prompt = "\n" if "\n" in vocab.chars else text[0]
    checkpoints = None if args.checkpoints is None else Path(args.checkpoints) / profile
    run_info = {"profile": profile, "text": source, "config": repr(config)}
    if checkpoints is not None:
        print(f"checkpoints: {checkpoints}" + (" (resuming)" if args.resume else ""))
    began = time.perf_counter()
    per_seed = []
    for seed in range(args.seeds):
        per_seed.append(run_seed(seed, config, text, device, sample_prompt=prompt,
                                 on_model=lambda name, r, seed=seed: print(
                                     f"  seed {seed} {name}: val {r['val_bits_per_char']:.3f}, "
                                     f"test {r['test_bits_per_char']:.3f} bits/char", flush=True),
                                 checkpoints=checkpoints, resume=args.resume, run_info=run_info,
                                 teacher_cache=args.teacher_cache))
    seconds = time.perf_counter() - began
    rows = summarize_runs(per_seed)

    print()
    print(format_results(per_seed))
    print(f"(bits per character on the validation blocks, where the settings were chosen (kd-ref text --select), "
          f"and on the test blocks, each final model scored once; mean ± std over {args.seeds} seed(s); the columns "
          f"right of | are tokens per second on this machine ({device}), hardware-dependent; {seconds:.0f} s in all)")
    print()
    print(kd_effect(per_seed))
    print()
    print(f"Samples (seed 0, temperature 0.8, {config.sample_chars} characters after {prompt!r}):")
    for name, result in per_seed[0].items():
        print(f"  {name}:")
        for line in result["sample"].splitlines() or [""]:
            print(f"    | {line}")
    if profile == "smoke":
        print("\nprofile smoke: tiny sizes, numbers not meaningful; run with --profile cpu for the real study")
    save_json_option(args.json, profile=profile, data=data, device=str(device), seconds=seconds, rows=rows)
    return 0


def _run_selection(args, profile: str, device, config: TextConfig, text: str, data: str) -> int:
    """``kd-ref text --select``: run :func:`select`, print the candidates, compare with the profile's config, save."""
    grid = SELECTION_GRIDS[profile]
    print(f"selection on the validation split ({grid.size()} students of {config.student_steps} steps after the "
          f"teacher's {config.teacher_steps}): student_lr in {_values(grid.student_lr)} for student_scratch; then "
          f"student_kd at the chosen student_lr with T in {_values(grid.T)} and (kd_weight, ce_weight) in "
          f"{', '.join(f'({kd:g}, {ce:g})' for kd, ce in grid.weights)}")

    def show(c):
        settings = ", ".join(f"{k} {c[k]:g}" for k in SELECTED if c[k] is not None)
        print(f"  {c['student']} ({settings}): {c['val_bits_per_char']:.3f} val bits/char", flush=True)

    began = time.perf_counter()
    selection = select(config, text, device, grid, on_candidate=show)
    seconds = time.perf_counter() - began
    print()
    print(format_selection(selection))
    differs = [k for k in SELECTED if getattr(config, k) != selection["chosen"][k]]
    if differs:
        print(f"CONFIGS[{profile!r}] differs: " + ", ".join(f"{k} {getattr(config, k):g} -> "
                                                            f"{selection['chosen'][k]:g}" for k in differs))
    else:
        print(f"CONFIGS[{profile!r}] holds these settings")
    print(f"({seconds:.0f} s in all)")
    if args.json is not None:
        result = {"profile": profile, "data": data, "device": str(device), "seconds": round(seconds, 1),
                  "split_seed": SPLIT_SEED, "criterion": "validation bits per character of the final model "
                  "(lower is better); the test split is not used", "config": asdict(config),
                  "grid": asdict(grid), **selection}
        try:
            Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        except OSError as err:
            raise CommandError(f"cannot write --json {args.json!r}: {err.strerror or err}") from None
        print(f"\nwrote {args.json}")
    return 0


def _values(values) -> str:
    return "{" + ", ".join(f"{v:g}" for v in values) + "}"


def _describe(config: GPTConfig) -> str:
    return (f"layers={config.n_layer}, heads={config.n_head}, width={config.width}, "
            f"context={config.context}")
