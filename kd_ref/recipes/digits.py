"""``kd-ref digits``: a teacher, a scratch student and distilled students on real digits.

The setting is one where KD is known to help (Hinton, Vinyals & Dean 2015, "Distilling
the Knowledge in a Neural Network", sections 2 and 6): **few labels, plus an
unlabelled transfer set**. The teacher learns from all 1,079 labelled training images.
A 14x smaller student gets only 5 labels per class (50 images); the other 1,029
training images keep no label (``-1``). Cross-entropy learns nothing from them; the
KD term needs no label, so the teacher's soft targets teach on all of them.

Rows (the students of one seed start from the same initial weights, so the loss and
the data are the only differences, and seeds pair up):

    teacher          DigitsCNN(width=16): cross-entropy on all 1,079 training labels
    student_scratch  DigitsCNN(width=4): cross-entropy on the 50 labelled images
    student_kd       0.9 * kd_loss (T = 4) on all 1,079 images + 0.1 * CE on the 50 labels
    student_pseudo   as student_kd, but the teacher's arg-max class replaces its soft targets
    student_kd_few   as student_kd, but only on the 50 labelled images (no transfer set)

student_pseudo and student_kd_few take KD apart: the first keeps the transfer set and
drops the soft targets' dark knowledge, the second keeps the dark knowledge and drops
the transfer set (Hinton et al.'s section 6: soft targets on 3% of the data).

How the settings were chosen: on the validation split only, seeds 0-4, validation
accuracy in % (mean over seeds); the test split is scored once, after training.

- teacher: lr 1e-2 (98.9) over 3e-3 (98.7); 20 epochs (30 gave no more).
- epochs: transfer-set students 20 / 40 / 80 epochs gave student_kd 96.7 / 97.8 /
  97.9, so 40; labelled-only students 100 / 300 epochs gave student_kd_few 82.2 /
  83.8 and student_scratch 79.7 / 80.3, so 300 (about the same number of steps).
- T in {1, 2, 4, 8}: student_kd 97.7 / 97.4 / 97.8 / 97.4 (flat); student_kd_few
  80.6 / 85.0 / 83.8 / 84.6 (T = 1 soft targets are nearly one-hot: no gain). One T
  for both, T = 4.
- kd_weight = ce_weight = 1 was worse than 0.9 / 0.1 (96.7 vs 97.9, 20 epochs); a
  width-2 student (496 parameters) was weak and unstable (55-87% over the settings tried).
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time
from dataclasses import asdict, dataclass

import torch

from ..data import TensorBatches, keep_labels, load_digits_split
from ..data.digits import NUM_CLASSES
from ..distillers import LogitKD, PseudoLabelKD, Scratch
from ..losses import IGNORE_INDEX
from ..models import DigitsCNN, count_parameters
from ..report import effect_lines, format_table, summarize_runs as summarize_metrics
from ..train import evaluate, fit, seed_everything
from .options import add_study_options, save_json_option, start_study
from .seeds import default_workers, map_seeds

SPLIT_SEED = 0  # the train / validation / test split is the same for every run


@dataclass(frozen=True)
class DigitsConfig:
    """Sizes and hyper-parameters of one profile (see the module docstring for why)."""

    teacher_width: int = 16
    student_width: int = 4
    labels_per_class: int = 5
    teacher_epochs: int = 20
    transfer_epochs: int = 40      # 9 batches of 128 per epoch: 360 steps
    few_label_epochs: int = 300    # 1 batch of the 50 labelled images per epoch: 300 steps
    lr: float = 1e-2
    weight_decay: float = 5e-4
    teacher_batch_size: int = 64
    student_batch_size: int = 128
    T: float = 4.0
    kd_weight: float = 0.9
    ce_weight: float = 0.1


CONFIGS = {
    "smoke": DigitsConfig(teacher_width=8, teacher_epochs=3, transfer_epochs=3, few_label_epochs=20),
    "cpu": DigitsConfig(),
    "gpu": DigitsConfig(),
}


def student_plans(config: DigitsConfig, teacher: torch.nn.Module) -> dict:
    """``name -> (make_distiller(student), trains on the transfer set?)``, in table order."""
    kd = dict(T=config.T, kd_weight=config.kd_weight, ce_weight=config.ce_weight)
    return {
        "student_scratch": (Scratch, False),
        "student_kd": (lambda student: LogitKD(student, teacher, **kd), True),
        "student_pseudo": (lambda student: PseudoLabelKD(student, teacher, pseudo_weight=config.kd_weight,
                                                         ce_weight=config.ce_weight), True),
        "student_kd_few": (lambda student: LogitKD(student, teacher, **kd), False),
    }


def run_seed(seed: int, config: DigitsConfig, device: torch.device, evaluate_on: str = "test") -> dict:
    """Train the teacher and every student with ``seed``; return ``{name: {metric: value}}``.

    ``evaluate_on="val"`` scores the validation split instead (to choose settings).
    """
    if evaluate_on not in ("test", "val"):
        raise ValueError(f"evaluate_on must be 'test' or 'val', got {evaluate_on!r}")
    split = load_digits_split(SPLIT_SEED)
    x_eval, y_eval = (split.x_test, split.y_test) if evaluate_on == "test" else (split.x_val, split.y_val)
    eval_batches = TensorBatches(x_eval, y_eval, batch_size=512)
    seed_everything(seed)

    teacher = DigitsCNN(config.teacher_width)
    labelled = TensorBatches(split.x_train, split.y_train, config.teacher_batch_size, shuffle=True, seed=seed)
    fit(Scratch(teacher), labelled, epochs=config.teacher_epochs, lr=config.lr,
        weight_decay=config.weight_decay, device=device, desc=f"seed {seed} teacher")
    results = {"teacher": evaluate(teacher, eval_batches, device)}

    few_labels = keep_labels(split.y_train, config.labels_per_class, seed=seed)  # (N,), -1 = unlabelled
    has_label = few_labels != IGNORE_INDEX                                         # (N,)
    initial_student = DigitsCNN(config.student_width)
    for name, (make_distiller, on_transfer_set) in student_plans(config, teacher).items():
        student = copy.deepcopy(initial_student)
        if on_transfer_set:
            x, y, epochs = split.x_train, few_labels, config.transfer_epochs
        else:
            x, y, epochs = split.x_train[has_label], few_labels[has_label], config.few_label_epochs
        batches = TensorBatches(x, y, config.student_batch_size, shuffle=True, seed=seed)
        fit(make_distiller(student), batches, epochs=epochs, lr=config.lr, weight_decay=config.weight_decay,
            device=device, desc=f"seed {seed} {name}")
        results[name] = evaluate(student, eval_batches, device, teacher=teacher)
    return results


def temperature_sweep_seed(seed: int, config: DigitsConfig, teacher_state: dict, temperatures, kd_epochs: int,
                           scratch_epochs: int) -> dict[str, float]:
    """One seed of lesson 02's payoff study: validation accuracy of a scratch student and of KD students.

    The teacher (``DigitsCNN(config.teacher_width)`` with ``teacher_state``) is shared by every
    seed. The seed draws the ``config.labels_per_class`` labels per class that the students
    may see, the students' initial weights (one draw, copied to every student: the seed's
    students differ only in their loss and data) and the batch order. Returns
    ``{"student_scratch": acc, "student_kd_T<T>": acc, ...}``: the scratch student learns from
    the labelled images alone (``scratch_epochs`` epochs); each KD student learns from every
    training image, the unlabelled ones through the KD term only (``kd_epochs`` epochs, at
    temperature T, ``config.kd_weight`` / ``config.ce_weight``).

    A module-level function, so that :func:`kd_ref.recipes.seeds.map_seeds` can run seeds in
    parallel processes.
    """
    split = load_digits_split(SPLIT_SEED)
    val_batches = TensorBatches(split.x_val, split.y_val, batch_size=512)
    teacher = DigitsCNN(config.teacher_width)
    teacher.load_state_dict(teacher_state)
    teacher.eval()
    seed_everything(seed)
    few_labels = keep_labels(split.y_train, config.labels_per_class, seed=seed)  # (N,), -1 = unlabelled
    has_label = few_labels != IGNORE_INDEX
    initial_student = DigitsCNN(config.student_width)
    fit_options = dict(lr=config.lr, weight_decay=config.weight_decay)

    student = copy.deepcopy(initial_student)
    labelled = TensorBatches(split.x_train[has_label], few_labels[has_label], config.student_batch_size,
                             shuffle=True, seed=seed)
    fit(Scratch(student), labelled, epochs=scratch_epochs, **fit_options, desc=f"seed {seed} scratch")
    results = {"student_scratch": evaluate(student, val_batches)["accuracy"]}
    transfer = TensorBatches(split.x_train, few_labels, config.student_batch_size, shuffle=True, seed=seed)
    for T in temperatures:
        student = copy.deepcopy(initial_student)
        fit(LogitKD(student, teacher, T=T, kd_weight=config.kd_weight, ce_weight=config.ce_weight), transfer,
            epochs=kd_epochs, **fit_options, desc=f"seed {seed} KD T={T:g}")
        results[f"student_kd_T{T:g}"] = evaluate(student, val_batches)["accuracy"]
    return results


def summarize_runs(per_seed: list[dict]) -> list[dict]:
    """Result rows: accuracy of every model, then fidelity of the students, then ECE."""
    return summarize_metrics(per_seed, ("accuracy", "fidelity", "ece"))


def kd_effect(per_seed: list[dict]) -> str:
    """Does ``student_kd`` beat ``student_scratch``? The paired difference with its 95 % interval.

    "helps" only when the t interval over seeds excludes 0 (``kd_ref.report``). Also the
    fraction of the teacher-student gap that KD recovers, ``(kd - scratch) / (teacher -
    scratch)`` on the means, and the paired differences that take the effect apart.
    """
    mean = {name: 100 * statistics.fmean(run[name]["accuracy"] for run in per_seed) for name in per_seed[0]}
    lines = ["KD effect on test accuracy (paired over seeds, points, mean ± standard error):",
             *effect_lines(per_seed, [("student_kd", "student_scratch", "")], "accuracy", scale=100)]
    gap = mean["teacher"] - mean["student_scratch"]
    if gap > 0:
        gain = mean["student_kd"] - mean["student_scratch"]
        lines.append(f"  teacher-student gap recovered: (kd - scratch) / (teacher - scratch) = {gain / gap:.0%}")
    lines.append("Taking it apart:")
    lines += effect_lines(per_seed, [
        ("student_pseudo", "student_scratch", "transfer set, teacher's hard labels"),
        ("student_kd_few", "student_scratch", "soft targets, no transfer set"),
        ("student_kd", "student_pseudo", "soft instead of hard on the transfer set"),
    ], "accuracy", scale=100)
    return "\n".join(lines)


WHY = """\
Why KD helps here: each student has only {labels} labels ({per_class} per class); the other
{unlabelled} training images are an unlabelled transfer set (Hinton, Vinyals & Dean 2015,
sections 2 and 6). Cross-entropy cannot use them; the KD term needs no label, so the
teacher's soft targets teach the student on every image. The last two rows take this
apart: student_pseudo keeps the transfer set but gives it the teacher's hard labels;
student_kd_few keeps the soft targets at T = {T:g} (which also say which wrong classes an
image resembles) but only on the {labels} labelled images. Settings were chosen on the
validation split; the test split is scored once, at the end. Fidelity = top-1 agreement
with the teacher (Stanton et al. 2021); ECE = expected calibration error, 15 equal-width
bins (Guo et al. 2017)."""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "digits", help="teacher, scratch student and KD students on the 8x8 digits (CPU, about a minute)",
        description="Distil a CNN teacher into a 14x smaller student on scikit-learn's digits, with 5 labels "
                    "per class and the rest of the training images as an unlabelled transfer set. "
                    "Sizes follow KD_PROFILE (smoke, cpu, gpu, auto).")
    add_study_options(parser, seeds=5, profile=False)
    parser.set_defaults(run=run)


def recipe_settings(config: "DigitsConfig", seeds: int) -> dict:
    """What shapes the study's numbers: the profile's settings and the seeds (fingerprinted in --json)."""
    return {"config": asdict(config), "seeds": seeds, "split_seed": SPLIT_SEED}


def run(args: argparse.Namespace) -> int:
    """The ``digits`` subcommand: check the arguments, train every seed, print and save the results."""
    # Models this small run as fast on one thread as on two (measured: 2.4x slower on two
    # here), and one thread makes the numbers independent of the machine's core count;
    # the seeds run side by side instead, one process per core (kd_ref.recipes.seeds).
    profile, device = start_study(args, one_thread_on_cpu=True)
    config = CONFIGS[profile]

    teacher_params = count_parameters(DigitsCNN(config.teacher_width))
    student_params = count_parameters(DigitsCNN(config.student_width))
    split = load_digits_split(SPLIT_SEED)
    n_train = len(split.y_train)
    n_labels = config.labels_per_class * NUM_CLASSES
    data = (f"digits (sklearn load_digits, 8x8): train {n_train} ({n_labels} labelled) / val {len(split.y_val)} "
            f"/ test {len(split.y_test)}, split seed {SPLIT_SEED}")
    print(f"kd-ref digits | profile {profile} | device {device} | seeds 0..{args.seeds - 1}")
    print(f"data: {data}")
    print(f"teacher DigitsCNN(width={config.teacher_width}): {teacher_params:,} parameters; "
          f"student DigitsCNN(width={config.student_width}): {student_params:,} parameters "
          f"({teacher_params / student_params:.0f}x fewer)")

    start = time.perf_counter()
    workers = default_workers(args.seeds) if device.type == "cpu" else 1
    per_seed = map_seeds(run_seed, range(args.seeds), config, device, workers=workers)
    seconds = time.perf_counter() - start
    rows = summarize_runs(per_seed)

    print()
    print(format_table(rows, ["accuracy", "fidelity", "ece"], labels={"accuracy": "test accuracy", "ece": "ECE"}))
    print(f"(mean ± std over {args.seeds} seed(s); {seconds:.0f} s"
          + (f", seeds run {workers} at a time, one process per core)" if workers > 1 else ")"))
    print()
    print(kd_effect(per_seed))
    print()
    print(WHY.format(labels=n_labels, per_class=config.labels_per_class, unlabelled=n_train - n_labels, T=config.T))
    save_json_option(args.json, profile=profile, data=data, device=str(device), seconds=seconds, rows=rows,
                     settings=recipe_settings(config, args.seeds))
    return 0
