"""``kd-ref cifar``: a teacher, a scratch student and one student per distillation method on CIFAR.

For each seed: train the teacher once, then, from the same initial student weights,
the scratch student and one student per method; score each on the test split once, at
the end (accuracy, and fidelity = top-1 agreement with the teacher). Settings are
never chosen on the test split: the validation split (5,000 training images, seed 0)
is what the per-epoch log reports. That is the course's protocol (``--protocol course``,
the default); ``--protocol crd`` reproduces the published benchmark's instead (below).

Methods and loss weights (``kd_ref.distillers``), those of the CIFAR-100 benchmark
scripts of the CRD repository (Tian, Krishnan & Isola 2020, "Contrastive
Representation Distillation", ICLR; ``scripts/run_cifar_distill.sh``) unless noted:

    kd      0.1 CE + 0.9 kd_loss, T = 4
    fitnet  CE + 100 hint_loss(ConvRegressor(layer2 of the student), layer2 of the teacher)
    at      CE + 500 sum of at_loss over layer1..3 (beta / 2 with beta = 1000: the AT
            authors' code; the CRD script uses 1000, and so does --protocol crd)
    rkd     CE + rkd_loss(embeddings), distance weight 25, angle weight 50
    sp      CE + 3000 sp_loss(layer3)
    dkd     CE + dkd_loss(alpha 1, beta 8, T 4), its weight warmed up linearly over the
            first 20 of 240 epochs (mdistiller, Zhao et al. 2022; the same fraction of
            shorter runs, raised every step)

Feature methods get no KD term, as in the CRD benchmark table.

Adding a method is one entry: a factory registered with ``@method("name")`` and its
weights in ``DEFAULT_WEIGHTS`` (a profile may override them in ``CifarConfig.weights``).

Optimisation (``kd_ref.train.step_decay``): SGD, momentum 0.9 with Nesterov (this
course's choice: the CRD and mdistiller code use plain momentum, as ``--protocol crd``
does), weight decay 5e-4, batch 64, lr 0.05 for teachers and students, x0.1 after 150,
180 and 210 of 240 epochs (the CRD and mdistiller schedule; shorter profiles scale the
milestones).
Augmentation: random crop with 4-pixel padding and horizontal flip, on the device
(``kd_ref.data.device_pipeline``). bf16 autocast on CUDA; channels-last everywhere.

Profiles (sizes are per seed):

    smoke  resnet8_w8 -> resnet8_tiny, 256 / 64 / 128 images (a generated set in the
           real on-disk format unless real CIFAR is found), 3 + 2 epochs: seconds, CI
    cpu    resnet20 -> resnet8, 5,000 training / 1,000 validation images of real CIFAR,
           full 10,000-image test set, 15 epochs each: about 29 minutes per seed on two
           CPU cores (21 s per teacher epoch, 14 s per KD-student epoch, measured on
           generated images of CIFAR's size)
    gpu    resnet32x4 -> resnet8x4, 45,000 / 5,000 / 10,000 images, 240 epochs each

Protocols. The published CIFAR-100 numbers (``PUBLISHED_ACCURACY``) were measured another
way than the course measures, so ``--protocol crd`` repeats RepDistiller's
``train_student.py`` (Tian, Krishnan & Isola 2020; ``scripts/run_cifar_distill.sh``):

    course  (default) validation split held out, Nesterov momentum, AT weight 500, the test
            set scored once, after the last epoch
    crd     every training image (no validation split; the profile's ``train_size`` still
            applies, so ``--profile gpu`` trains on all 50,000), plain momentum 0.9, AT weight
            1000, the last incomplete batch kept; the test set is scored after every epoch
            and both figures are reported: ``accuracy`` (the last epoch, what the CRD paper
            reports) and ``best_accuracy`` (the best epoch, chosen on the test set, what
            mdistiller reports for DKD; optimistic by construction)

Checkpoints go to ``--checkpoints DIR`` (default runs/cifar), one file per model and
seed, after every epoch; ``--resume`` continues a killed run (``kd_ref.train.fit``).
Under ``torchrun --nproc_per_node=N`` the same command trains with
DistributedDataParallel (``kd_ref.distributed``).
"""
from __future__ import annotations

import argparse
import copy
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import torch

from .. import distributed
from ..data.cifar import PUBLISHED_STATS, SPECS, CifarData, channel_stats, cifar_or_generated
from ..data.device_pipeline import DeviceBatches
from ..distillers import (AttentionKD, DecoupledKD, Distiller, FitNetKD, LogitKD, RelationKD, Scratch,
                          SimilarityKD, feature_shapes)
from ..models import count_parameters
from ..models.resnet_cifar import STAGES, cifar_resnet
from ..regressor import ConvRegressor
from ..report import format_table, summarize_runs as summarize_metrics
from ..train import ClassifierScores, evaluate, fit, scaled_milestones, seed_everything, step_decay
from .options import CommandError, add_study_options, fraction, save_json_option, start_study

SPLIT_SEED = 0           # the train / validation split is the same for every run
VAL_SIZE = 5_000         # validation images carved from the 50,000 training images


@dataclass(frozen=True)
class CifarConfig:
    """Sizes and hyper-parameters of one profile (see the module docstring)."""

    teacher: str
    student: str
    teacher_epochs: int
    student_epochs: int
    train_size: int | None = None     # None: every training image not in the validation split
    val_size: int = VAL_SIZE          # validation images used (taken from the 5,000 held out)
    test_size: int | None = None      # None: the whole test set
    batch_size: int = 64
    lr: float = 0.05
    weight_decay: float = 5e-4
    momentum: float = 0.9
    nesterov: bool = True
    eval_batch_size: int = 500
    protocol: str = "course"          # "course" or "crd" (see the module docstring; ``with_protocol``)
    generated_train: int = 640        # size of the generated set when real CIFAR is absent (smoke)
    generated_test: int = 128
    weights: dict = field(default_factory=lambda: copy.deepcopy(DEFAULT_WEIGHTS))   # method -> its loss weights


# The loss weights of each method (see the module docstring for their sources).
DEFAULT_WEIGHTS = {
    "kd": {"T": 4.0, "kd_weight": 0.9, "ce_weight": 0.1},
    "fitnet": {"hint_weight": 100.0},
    "at": {"at_weight": 1000.0 / 2},
    "rkd": {"rkd_weight": 1.0, "distance_weight": 25.0, "angle_weight": 50.0},
    "sp": {"sp_weight": 3000.0},
    "dkd": {"alpha": 1.0, "beta": 8.0, "T": 4.0, "warmup_fraction": 20 / 240},
}

CONFIGS = {
    "smoke": CifarConfig("resnet8_w8", "resnet8_tiny", teacher_epochs=3, student_epochs=2, val_size=64,
                         generated_train=320, generated_test=128),
    "cpu": CifarConfig("resnet20", "resnet8", teacher_epochs=15, student_epochs=15, train_size=5_000,
                       val_size=1_000),
    "gpu": CifarConfig("resnet32x4", "resnet8x4", teacher_epochs=240, student_epochs=240),
}

PROTOCOLS = ("course", "crd")


def with_protocol(config: CifarConfig, protocol: str) -> CifarConfig:
    """``config`` under ``protocol``: "course" unchanged; "crd" with RepDistiller's optimiser and weights."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, got protocol={protocol!r}")
    if protocol == "course":
        return config
    weights = copy.deepcopy(config.weights)
    weights["at"] = {"at_weight": 1000.0}            # -b 1000 in scripts/run_cifar_distill.sh
    return replace(config, nesterov=False, momentum=0.9, weight_decay=5e-4, lr=0.05, batch_size=64,
                   weights=weights, protocol="crd")


# resnet32x4 -> resnet8x4 on CIFAR-100, test accuracy in %: the published benchmark figures.
PUBLISHED_ACCURACY = {
    "teacher": 79.42, "student_scratch": 72.50, "student_kd": 73.33, "student_fitnet": 73.50,
    "student_at": 73.44, "student_rkd": 71.90, "student_sp": 72.94, "student_dkd": 76.32,
}
# How each published figure was measured (the protocol stands beside the number).
PUBLISHED_PROTOCOL = {
    "crd": "teacher .. sp: Tian, Krishnan & Isola 2020 (CRD, ICLR), Table 1 and the HobbitLong/RepDistiller "
           "README: mean of 5 runs, each run's test accuracy after the LAST of 240 epochs (the code's comment; "
           "its printed best epoch is not what is reported); all 50,000 training images, no validation split; "
           "SGD with plain momentum 0.9, lr 0.05 x0.1 at 150/180/210, weight decay 5e-4, batch 64; AT weight 1000",
    "dkd": "dkd: Zhao et al. 2022 (DKD, CVPR), CIFAR-100 table, megvii-research/mdistiller: mean of 5 runs, each "
           "run's BEST test accuracy over its 240 epochs (the maintainers' answer in mdistiller issue 30), same "
           "data, optimiser and teacher checkpoint",
}
PUBLISHED = ("Published reference (not this run): resnet32x4 -> resnet8x4 on CIFAR-100, 240 epochs, test accuracy %:\n"
             "  " + ", ".join(f"{name.replace('student_', '')} {value:.2f}" for name, value in PUBLISHED_ACCURACY.items())
             + "\n" + "".join(f"  {text}\n" for text in PUBLISHED_PROTOCOL.values())
             + "  Comparable only with --profile gpu --dataset cifar100 --protocol crd: its 'accuracy' (last epoch) "
               "beside the CRD rows, its 'best_accuracy' beside DKD's.")


@dataclass(frozen=True)
class CifarSplit:
    """Train / validation / test images (uint8) and labels, and what they are."""

    train: tuple[torch.Tensor, torch.Tensor]
    val: tuple[torch.Tensor, torch.Tensor]
    test: tuple[torch.Tensor, torch.Tensor]
    num_classes: int
    description: str
    generated: bool


def split_cifar(data: CifarData, config: CifarConfig) -> CifarSplit:
    """Hold out ``VAL_SIZE`` training images (seeded), then take the profile's subsets.

    Under ``config.protocol == "crd"`` nothing is held out (RepDistiller trains on every
    training image) and ``val`` is the test split: the per-epoch log scores the test set.
    """
    n = len(data.train_labels)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(SPLIT_SEED))
    n_test = len(data.test_labels) if config.test_size is None else min(config.test_size, len(data.test_labels))
    test = (data.test_images[:n_test], data.test_labels[:n_test])
    spec = SPECS[data.name]
    kind = ("generated in the real on-disk format: numbers are not meaningful" if data.generated
            else f"real, {data.folder}")
    if config.protocol == "crd":
        train_idx = order if config.train_size is None else order[:config.train_size]
        description = (f"{spec.title} ({kind}): train {len(train_idx):,} / no validation split / test {n_test:,} "
                       f"(protocol crd: the test set is scored after every epoch)")
        val = test
    else:
        n_val = min(VAL_SIZE, n // 5)
        val_idx, train_idx = order[:n_val][:config.val_size], order[n_val:]
        if config.train_size is not None:
            train_idx = train_idx[:config.train_size]
        description = (f"{spec.title} ({kind}): train {len(train_idx):,} / val {len(val_idx):,} / test {n_test:,}, "
                       f"validation split seed {SPLIT_SEED}")
        val = (data.train_images[val_idx], data.train_labels[val_idx])
    return CifarSplit(
        train=(data.train_images[train_idx], data.train_labels[train_idx]),
        val=val,
        test=test,
        num_classes=spec.num_classes, description=description, generated=data.generated,
    )


Factory = Callable[..., Distiller]
METHODS: dict[str, Factory] = {}     # name -> factory(student, teacher, config, example, **weights), in table order


def method(name: str) -> Callable[[Factory], Factory]:
    """Register a distillation method's factory under ``name`` (its weights: ``CifarConfig.weights[name]``)."""
    def register(factory: Factory) -> Factory:
        METHODS[name] = factory
        return factory
    return register


@method("kd")
def _kd(student, teacher, config, example, **weights):
    return LogitKD(student, teacher, **weights)


@method("fitnet")
def _fitnet(student, teacher, config, example, hint_weight):
    s_shape = feature_shapes(student, ["layer2"], example)["layer2"]          # (B, C_s, H_s, W_s)
    t_shape = feature_shapes(teacher, ["layer2"], example)["layer2"]          # (B, C_t, H_t, W_t)
    regressor = ConvRegressor(s_shape[1], t_shape[1], s_shape[2], t_shape[2], relu=True)
    return FitNetKD(student, teacher, "layer2", "layer2", regressor.to(example.device), hint_weight=hint_weight)


@method("at")
def _at(student, teacher, config, example, **weights):
    return AttentionKD(student, teacher, STAGES, STAGES, **weights)


@method("rkd")
def _rkd(student, teacher, config, example, **weights):
    return RelationKD(student, teacher, "embedding", "embedding", **weights)


@method("sp")
def _sp(student, teacher, config, example, **weights):
    return SimilarityKD(student, teacher, ["layer3"], ["layer3"], **weights)


@method("dkd")
def _dkd(student, teacher, config, example, warmup_fraction, **weights):
    # the warm-up is a fraction of the run (20 of 240 epochs in mdistiller), raised every step
    return DecoupledKD(student, teacher, **weights, warmup_epochs=warmup_fraction * config.student_epochs)


def make_distiller(name: str, student: torch.nn.Module, teacher: torch.nn.Module, config: CifarConfig,
                   example: torch.Tensor) -> Distiller:
    """The distiller of ``name`` ("scratch" or a registered method) with the profile's weights."""
    if name == "scratch":
        return Scratch(student)
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose from {', '.join(METHODS)}")
    return METHODS[name](student, teacher, config, example, **config.weights[name])


def run_seed(seed: int, config: CifarConfig, split: CifarSplit, methods: list[str], *, device: torch.device,
             info: distributed.DistInfo | None = None, checkpoints: Path | None = None, resume: bool = False,
             run_info: dict | None = None, label_smoothing: float = 0.0,
             autocast_dtype: torch.dtype | str | None = "auto", compile_models: bool = False) -> dict:
    """Train the teacher and every student with ``seed``; ``{name: {metric: value}}`` on the test split.

    Metrics: ``accuracy`` (after the last epoch), ``fidelity`` for students, and under the
    crd protocol ``best_accuracy``, the highest test accuracy over the epochs.
    """
    info = info or distributed.DistInfo(device=device)
    stats = channel_stats(split.train[0])
    n_train = len(split.train[1])
    # RepDistiller keeps the last incomplete batch; equal DDP shards (and BatchNorm) need it dropped otherwise.
    drop_last = config.protocol != "crd" or info.world_size > 1 or n_train % config.batch_size == 1
    train_batches = DeviceBatches(*split.train, config.batch_size, mean=stats[0], std=stats[1], device=device,
                                  augment=True, shuffle=True, seed=seed, drop_last=drop_last,
                                  rank=info.rank, world_size=info.world_size)
    val_batches = DeviceBatches(*split.val, config.eval_batch_size, mean=stats[0], std=stats[1], device=device)
    test_batches = DeviceBatches(*split.test, config.eval_batch_size, mean=stats[0], std=stats[1], device=device)
    example = next(iter(val_batches))[0][:2]                                   # (2, 3, 32, 32), for shapes

    def train(name, distiller, epochs):
        distiller.to(device, memory_format=torch.channels_last)
        if compile_models:
            distiller.student.compile()
        path = None if checkpoints is None else checkpoints / f"seed{seed}" / f"{name}.pt"
        optimizer = partial(torch.optim.SGD, momentum=config.momentum, nesterov=config.nesterov,
                            weight_decay=config.weight_decay)
        history = fit(distiller, train_batches, epochs=epochs, optimizer=optimizer,
            lr=step_decay(config.lr, len(train_batches), scaled_milestones(epochs)), device=device,
            validate=ClassifierScores(val_batches, device, distiller.teacher), autocast_dtype=autocast_dtype,
            desc=f"seed {seed} {name}", checkpoint=path, resume=resume,
            run_info={**(run_info or {}), "seed": seed, "model": name, "epochs": epochs})
        train_batches.generator.manual_seed(seed)       # every model sees the same epochs of data
        if not distributed.replicas_agree(distiller):
            raise RuntimeError(f"seed {seed} {name}: the DistributedDataParallel replicas disagree")
        return history

    def scores(model, history, teacher=None):
        result = evaluate(model, test_batches, device, teacher=teacher)
        if config.protocol == "crd":          # the per-epoch log scored the test set (split.val is split.test)
            result["best_accuracy"] = max(record["val_accuracy"] for record in history)
        return result

    # Each model's initial weights depend only on the seed (not on what ran before), so a
    # resumed run builds exactly the models of an uninterrupted one.
    seed_everything(seed)
    teacher = cifar_resnet(config.teacher, split.num_classes)
    history = train("teacher", Scratch(teacher, label_smoothing=label_smoothing), config.teacher_epochs)
    results = {"teacher": scores(teacher, history)}
    seed_everything(seed)
    initial_student = cifar_resnet(config.student, split.num_classes)
    for name in ["scratch", *methods]:
        student = copy.deepcopy(initial_student).to(device, memory_format=torch.channels_last)
        seed_everything(seed)                                  # e.g. the FitNets regressor's initial weights
        with make_distiller(name, student, teacher, config, example) as distiller:
            history = train(f"student_{name}", distiller, config.student_epochs)
        results[f"student_{name}"] = scores(student, history, teacher)
    return results


def summarize_runs(per_seed: list[dict]) -> list[dict]:
    """Result rows: accuracy of every model, then (crd protocol) best-epoch accuracy, then fidelity of the students."""
    return summarize_metrics(per_seed, ("accuracy", "best_accuracy", "fidelity"))


def method_list(text: str) -> list[str]:
    methods = [m.strip().lower() for m in text.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise argparse.ArgumentTypeError(f"unknown method(s) {', '.join(unknown) or repr(text)}; "
                                         f"choose from {','.join(METHODS)}")
    return [m for m in METHODS if m in methods]        # the table's order, whatever the order given


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "cifar", help="teacher, scratch student and feature/relation/logit KD students on CIFAR-10/100",
        description="Train a CIFAR ResNet teacher, then a scratch student and one student per method; print "
                    "test accuracy and fidelity (mean ± std over seeds). Profiles: smoke (seconds, generated "
                    "data when real CIFAR is absent), cpu (a real CIFAR subset, about 30 minutes per seed on 2 "
                    "cores), gpu (the full 240-epoch runs). Works under torchrun --nproc_per_node=N "
                    "(DistributedDataParallel).")
    parser.add_argument("--data", metavar="DIR", default="data",
                        help="folder holding cifar-10-batches-py/ or cifar-100-python/ (default: data)")
    parser.add_argument("--dataset", choices=sorted(SPECS), default="cifar10", help="default cifar10")
    parser.add_argument("--methods", type=method_list, default=list(METHODS),
                        help=f"comma-separated, from {','.join(METHODS)} (default: all)")
    add_study_options(parser, seeds=3)
    parser.add_argument("--download", action="store_true", help="fetch the data set with torchvision if absent")
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoints of a killed run")
    parser.add_argument("--checkpoints", metavar="DIR", default="runs/cifar",
                        help="where checkpoints go (default: runs/cifar)")
    parser.add_argument("--teacher-label-smoothing", type=fraction, default=0.0, metavar="EPS",
                        help="train the teacher with label smoothing EPS (Müller et al. 2019; default 0)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the networks")
    parser.add_argument("--protocol", choices=PROTOCOLS, default="course",
                        help="course (default: validation split, Nesterov, AT 500, test scored once at the end) or "
                             "crd (RepDistiller's: all training images, no validation split, plain momentum, AT "
                             "1000, test scored every epoch; reports last-epoch and best-epoch accuracy)")
    parser.set_defaults(run=run)


def _load_data(args, profile: str, config: CifarConfig) -> CifarData:
    """Real CIFAR (or downloaded); in the smoke profile a generated set when the real one is absent."""
    generate = (config.generated_train, config.generated_test) if profile == "smoke" else None
    try:
        return cifar_or_generated(args.data, args.dataset, download=args.download, generate=generate)
    except (FileNotFoundError, ValueError) as err:
        raise CommandError(err) from None
    except (OSError, RuntimeError) as err:      # torchvision's downloader: no network, bad archive
        raise CommandError(f"download of {args.dataset} failed ({err}); download it by hand into {args.data}") from None


def run(args: argparse.Namespace) -> int:
    """The ``cifar`` subcommand: check the arguments, train every seed, print and save the results."""
    profile, device = start_study(args)
    config = with_protocol(CONFIGS[profile], args.protocol)
    if device.type == "cpu" and profile == "smoke":
        torch.set_num_threads(1)     # tiny models: one thread is as fast, and the numbers are machine-stable
    info = distributed.setup(device)
    device = info.device
    say = print if info.is_main else (lambda *a, **k: None)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    with ExitStack() as stack:
        stack.callback(distributed.teardown)
        split = split_cifar(_load_data(args, profile, config), config)
        if len(split.train[1]) < config.batch_size:
            raise CommandError(f"only {len(split.train[1])} training images, fewer than one batch "
                               f"({config.batch_size}); is {args.data} complete?")
        ls = args.teacher_label_smoothing
        checkpoints = Path(args.checkpoints) / (f"{profile}-{args.dataset}" + (f"-ls{ls:g}" if ls else "")
                                                + ("-crd" if config.protocol == "crd" else ""))
        run_info = {"profile": profile, "dataset": args.dataset, "generated": split.generated,
                    "protocol": config.protocol,
                    "teacher": config.teacher, "student": config.student, "label_smoothing": ls,
                    "world_size": info.world_size}
        mean, std = channel_stats(split.train[0])
        published = PUBLISHED_STATS[args.dataset]
        say(f"kd-ref cifar | profile {profile} | protocol {config.protocol} | device {device}"
            + (f" x {info.world_size} processes (DistributedDataParallel)" if info.world_size > 1 else "")
            + f" | seeds 0..{args.seeds - 1}")
        say(f"data: {split.description}")
        say("normalisation, computed on the training split: mean " + ", ".join(f"{v:.4f}" for v in mean)
            + " / std " + ", ".join(f"{v:.4f}" for v in std)
            + f" (published for the real set: {published[0]} / {published[1]})")
        n_t = count_parameters(cifar_resnet(config.teacher, split.num_classes))
        n_s = count_parameters(cifar_resnet(config.student, split.num_classes))
        say(f"teacher {config.teacher}: {n_t:,} parameters, {config.teacher_epochs} epochs"
            + (f", label smoothing {ls:g}" if ls else "")
            + f"; student {config.student}: {n_s:,} parameters, {config.student_epochs} epochs; "
            f"methods: {', '.join(args.methods)}")
        say(f"optimiser: SGD, momentum {config.momentum:g}" + (" (Nesterov)" if config.nesterov else " (plain)")
            + f", lr {config.lr:g} x0.1 at 150, 180, 210 of 240 epochs (scaled to the run), "
            f"weight decay {config.weight_decay:g}, batch {config.batch_size}; "
            f"AT weight {config.weights['at']['at_weight']:g}")
        say(f"checkpoints: {checkpoints}" + (" (resuming)" if args.resume else ""))

        start = time.perf_counter()
        per_seed = [run_seed(seed, config, split, args.methods, device=device, info=info, checkpoints=checkpoints,
                             resume=args.resume, run_info=run_info, label_smoothing=ls,
                             autocast_dtype="auto",
                             compile_models=args.compile)
                    for seed in range(args.seeds)]
        seconds = time.perf_counter() - start
        rows = summarize_runs(per_seed)

        say()
        say(f"profile {profile} | data: {split.description}")
        metrics = ["accuracy", "best_accuracy", "fidelity"] if config.protocol == "crd" else ["accuracy", "fidelity"]
        say(format_table(rows, metrics, labels={"accuracy": "test accuracy", "best_accuracy": "best epoch"}))
        say(f"(mean ± std over {args.seeds} seed(s); fidelity = top-1 agreement with the teacher; {seconds:.0f} s)")
        if config.protocol == "crd":
            say("protocol crd: 'test accuracy' is after the last epoch (as CRD reports); 'best epoch' is the best "
                "of the per-epoch test scores (as mdistiller reports DKD): the test set chose that epoch, so it "
                "is optimistic")
        if split.generated:
            say("generated data: numbers are not meaningful (run with real CIFAR: --profile cpu --download)")
        if info.world_size > 1:
            say(f"DistributedDataParallel: the {info.world_size} replicas held identical weights after every run")
        say()
        say(PUBLISHED)
        if info.is_main:
            save_json_option(args.json, profile=profile, data=split.description, device=str(device),
                             seconds=seconds, rows=rows)
    return 0
