"""Lesson 10's studies: which teacher to distil from, and how to train and run it.

The setting is the digits recipe's (``kd_ref.recipes.digits``): a ``DigitsCNN(width=4)``
student with 5 labels per class and the other training images as an unlabelled transfer
set, so that what the student learns comes mostly from its teacher's soft targets
(Hinton, Vinyals & Dean 2015, sections 2 and 6). The teachers are trained once (seed 0)
on all 1,079 training labels and shared by every seed; a seed draws the student's labels,
initial weights and batch order, so the students of one seed pair up.

Without augmentation a frozen teacher gives the same outputs at every epoch, so its logits
on the training images are computed **once** and the students train from that cache
(:class:`CachedKD`, through :func:`kd_ref.losses.cached.cached_kd_loss`, exact at k = C): a
teacher of any size costs one forward pass over the data. The patient-and-consistent study
(Beyer et al. 2022) is where the cache stops being free: with augmentation, function
matching runs the teacher on every new view (:class:`CountingTeacher` counts them).

Pieces, each tested on its own:

- :func:`shift_images` / :class:`ShiftedBatches`: random integer pixel shifts of the 8x8
  images, zero-filled (the augmentation);
- :class:`CachedKD`: a distiller that reads the teacher's targets from a cache by example index;
- :class:`CountingTeacher`: a teacher wrapper counting forward images and seconds;
- :func:`template_plane`: the projection of Müller, Kornblith & Hinton (2019, section 2,
  fig. 1) of penultimate-layer activations onto the plane through three class templates;
- :func:`cluster_spread`: within-class spread over between-class distance of such a picture;
- :func:`train_teacher` and :func:`run_seed`: the studies (module-level, so that
  :func:`kd_ref.recipes.seeds.map_seeds` can run them in parallel processes);
- :class:`TextTeacherConfig`, :func:`load_text_teachers`, :func:`text_teacher_seed` and
  :func:`text_student_job`: the same question on text, in lesson 07's setting
  (``kd_ref.recipes.text``), where the student stays far from its teacher: three teachers
  (lesson 07's, the same trained for fewer steps, one of the student's own size), each
  trained once with seed 0 and kept in the teacher cache (``kd_ref.teacher_cache``), and per
  seed one scratch student and one token-level KD student per teacher from the same start
  on the same crops.
"""
from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ..data import TensorBatches, keep_labels, load_digits_split
from ..data.batches import SeededBatches
from ..data.text import CharVocab, bits_per_char
from ..distillers import Distiller, LogitKD, Scratch
from ..losses import IGNORE_INDEX, masked_cross_entropy
from ..losses.cached import TopKTargets, cached_kd_loss, topk_targets
from ..models import CharGPT, DigitsCNN, count_parameters
from ..teacher_cache import cached_text_teacher
from ..train import evaluate, fit, predict, seed_everything
from . import text as text_recipe
from .text import TextConfig

SPLIT_SEED = 0


# -- augmentation ---------------------------------------------------------------------------------
def shift_images(x: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Shift each image of ``x`` ``(B, C, H, W)`` by ``shifts`` ``(B, 2)`` pixels (down, right), zero-filled.

    ``shifts[i] = (dy, dx)``: pixel ``(r, c)`` of the result is pixel ``(r - dy, c - dx)`` of the
    input, 0 where that falls outside. Integer shifts with ``|dy| < H`` and ``|dx| < W``.
    """
    if x.dim() != 4 or shifts.shape != (x.shape[0], 2):
        raise ValueError(f"x must be (B, C, H, W) and shifts (B, 2), got x {tuple(x.shape)} and shifts "
                         f"{tuple(shifts.shape)}")
    H, W = x.shape[-2:]
    if shifts.dtype.is_floating_point or bool((shifts[:, 0].abs() >= H).any() or (shifts[:, 1].abs() >= W).any()):
        raise ValueError(f"shifts must be integers smaller than the image ({H}x{W}), got {shifts.tolist()}")
    out = torch.zeros_like(x)
    for dy, dx in torch.unique(shifts, dim=0).tolist():      # at most (2s + 1)^2 distinct shifts
        rows = (shifts[:, 0] == dy) & (shifts[:, 1] == dx)   # (B,) the images shifted so
        src = x[rows][..., max(0, -dy):H - max(0, dy), max(0, -dx):W - max(0, dx)]
        out[rows, :, max(0, dy):H - max(0, -dy), max(0, dx):W - max(0, -dx)] = src
    return out


class ShiftedBatches(SeededBatches):
    """``batches`` with every image shifted by a random ``(dy, dx)`` in ``[-max_shift, max_shift]``².

    A new shift is drawn for every image every time it is served (from this object's own
    seeded generator), so every epoch shows new views of the same images.
    """

    def __init__(self, batches, max_shift: int = 1, seed: int = 0):
        if max_shift < 0:
            raise ValueError(f"max_shift must be >= 0, got max_shift={max_shift}")
        self.batches, self.max_shift = batches, max_shift
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        for x, y in self.batches:
            shifts = torch.randint(-self.max_shift, self.max_shift + 1, (len(x), 2), generator=self.generator)
            yield shift_images(x, shifts), y


# -- a cached teacher -----------------------------------------------------------------------------
class CachedKD(Distiller):
    """``LogitKD`` whose teacher is a cache: ``kd_weight * cached_kd_loss + ce_weight * CE``.

    ``forward(x, index)`` takes the examples' positions in the cache instead of labels
    (batches of ``(x, torch.arange(N))``, e.g. ``TensorBatches(x, torch.arange(N), ...)``):
    ``targets`` (from :func:`kd_ref.losses.cached.topk_targets` on the teacher's logits of those
    N examples) and ``labels`` ``(N,)`` (``IGNORE_INDEX`` = no label) are looked up there. With
    ``k = C`` the loss is exactly ``LogitKD``'s (tested), without running any teacher.
    """

    def __init__(self, student: nn.Module, targets: TopKTargets, labels: torch.Tensor,
                 kd_weight: float = 0.9, ce_weight: float = 0.1):
        super().__init__(student)
        if labels.shape != targets.indices.shape[:-1]:
            raise ValueError(f"labels {tuple(labels.shape)} must have one entry per cached example "
                             f"{tuple(targets.indices.shape[:-1])}")
        self.targets, self.labels = targets, labels
        self.kd_weight, self.ce_weight = kd_weight, ce_weight

    def forward(self, x, index):
        logits = self.student(x)                                               # (B, C)
        index = index.cpu()
        terms = {"kd": self.kd_weight * cached_kd_loss(logits, self.targets[index].to(logits.device))}
        if self.ce_weight:
            terms["ce"] = self.ce_weight * masked_cross_entropy(logits, self.labels[index].to(logits.device))
        return logits, terms


class CountingTeacher(nn.Module):
    """Wraps a teacher and counts what running it costs: ``images`` seen and ``seconds`` spent."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.images, self.calls, self.seconds = 0, 0, 0.0

    def forward(self, x):
        start = time.perf_counter()
        out = self.model(x)
        self.seconds += time.perf_counter() - start
        self.images += len(x)
        self.calls += 1
        return out


# -- the picture of Müller, Kornblith & Hinton (2019) ---------------------------------------------
def template_plane(features: torch.Tensor, templates: torch.Tensor) -> torch.Tensor:
    """2-D coordinates of ``features`` ``(N, D)`` on the plane through the three ``templates`` ``(3, D)``.

    Müller, Kornblith & Hinton (2019), "When Does Label Smoothing Help?", section 2: the
    template of class k is the k-th row of the last layer's weights (its logit is
    ``x · w_k``); an orthonormal basis of the plane through three templates is found and the
    penultimate-layer activations are projected onto it. Here the plane is the affine one
    through the three points: basis ``e1 = (w1 - w0) / |w1 - w0|``, ``e2`` the part of
    ``w2 - w0`` orthogonal to ``e1``, normalised; coordinates ``((x - w0) · e1, (x - w0) · e2)``.
    The templates themselves land on a triangle with their true pairwise distances.
    """
    if templates.dim() != 2 or templates.shape[0] != 3 or features.dim() != 2 or features.shape[1] != templates.shape[1]:
        raise ValueError(f"features must be (N, D) and templates (3, D), got features {tuple(features.shape)} and "
                         f"templates {tuple(templates.shape)}")
    w = templates.double()
    e1 = w[1] - w[0]
    e2 = w[2] - w[0]
    if float(e1.norm()) == 0:
        raise ValueError("templates 0 and 1 coincide: they span no plane")
    e1 = e1 / e1.norm()
    e2 = e2 - (e2 @ e1) * e1
    if float(e2.norm()) < 1e-12 * float((w[2] - w[0]).norm() + 1):
        raise ValueError("the three templates are collinear: they span no plane")
    e2 = e2 / e2.norm()
    basis = torch.stack([e1, e2], 1)                                           # (D, 2)
    return ((features.double() - w[0]) @ basis).to(features.dtype)             # (N, 2)


def cluster_spread(coords: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean distance of points to their class centroid divided by the mean distance between centroids.

    Small: tight, well separated clusters (what label smoothing produces, Müller et al. 2019,
    fig. 1); large: spread-out classes whose points keep their differences.
    """
    if coords.dim() != 2 or labels.shape != coords.shape[:1]:
        raise ValueError(f"coords must be (N, d) and labels (N,), got {tuple(coords.shape)} and {tuple(labels.shape)}")
    classes = labels.unique()
    if len(classes) < 2:
        raise ValueError("need at least two classes")
    centroids = torch.stack([coords[labels == c].mean(0) for c in classes])    # (K, d)
    within = torch.cat([(coords[labels == c] - centroids[i]).norm(dim=1) for i, c in enumerate(classes)]).mean()
    pairs = torch.cdist(centroids, centroids)[torch.triu_indices(len(classes), len(classes), 1).unbind()]
    return float(within / pairs.mean())


# -- the studies ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class TeacherChoiceConfig:
    """Sizes of the lesson's studies (optimisation settings are the digits recipe's)."""

    teacher_widths: tuple[int, ...] = (4, 8, 16, 32, 64)
    student_width: int = 4
    ta_width: int = 8                    # the assistant between the largest teacher and the student
    checkpoints: tuple[int, ...] = (1, 2, 5, 10)   # epochs of the largest teacher's run that teach too
    label_smoothing: float = 0.1
    ban_width: int = 8                   # born-again: every generation has this architecture
    pc_teacher_width: int = 16           # the teacher of the patient-and-consistent study
    max_shift: int = 1
    teacher_epochs: int = 20
    student_epochs: int = 20             # every transfer-set student (9 batches of 128 per epoch)
    scratch_epochs: int = 300            # the 50-label scratch student (1 batch per epoch)
    ban_epochs: int = 20                 # born-again generations, all labels (17 batches of 64)
    pc_epochs: tuple[int, int] = (20, 60)  # short and long schedule of the patient-and-consistent study
    labels_per_class: int = 5
    lr: float = 1e-2
    weight_decay: float = 5e-4
    teacher_batch_size: int = 64
    student_batch_size: int = 128
    T: float = 4.0
    kd_weight: float = 0.9
    ce_weight: float = 0.1
    train_size: int | None = None        # None: all 1,079 training images (smoke: the first few hundred)

    @property
    def largest(self) -> int:
        return max(self.teacher_widths)


CONFIGS = {
    "smoke": TeacherChoiceConfig(teacher_widths=(4, 8), ta_width=4, checkpoints=(1,), ban_width=4, pc_teacher_width=8,
                                 teacher_epochs=2, student_epochs=1, scratch_epochs=5, ban_epochs=1, pc_epochs=(1, 2),
                                 train_size=300),
    "cpu": TeacherChoiceConfig(),
}
CONFIGS["gpu"] = CONFIGS["cpu"]          # models this small are not faster on a GPU


def load_split(config: TeacherChoiceConfig):
    """The digits split (seed 0), its training set cut to ``config.train_size`` images when that is set."""
    split = load_digits_split(SPLIT_SEED)
    if config.train_size is None:
        return split
    n = config.train_size
    return dataclasses.replace(split, x_train=split.x_train[:n], y_train=split.y_train[:n],
                               train_index=split.train_index[:n])


def train_teacher(width: int, config: TeacherChoiceConfig, label_smoothing: float = 0.0,
                  checkpoints=()) -> dict:
    """Train ``DigitsCNN(width)`` with seed 0 on all training labels; return what the studies need.

    ``{"width", "label_smoothing", "val accuracy", "test accuracy", "state" (its weights),
    "train_logits" (N, C) of the final model, "checkpoints": {epoch: train logits at the end
    of that epoch}, "checkpoint_val": {epoch: validation accuracy}}``. The first argument comes
    first so that :func:`kd_ref.recipes.seeds.map_seeds` can map widths over processes.
    """
    split = load_split(config)
    train_x = TensorBatches(split.x_train, split.y_train, 512)
    val = TensorBatches(split.x_val, split.y_val, 512)
    seed_everything(0)
    model = DigitsCNN(width)
    snapshots, snapshot_val, epoch = {}, {}, [0]

    def at_epoch_end(m):
        epoch[0] += 1
        if epoch[0] in checkpoints:
            snapshots[epoch[0]] = predict(m, train_x)[0]
            snapshot_val[epoch[0]] = evaluate(m, val)["accuracy"]
        return {}

    fit(Scratch(model, label_smoothing=label_smoothing),
        TensorBatches(split.x_train, split.y_train, config.teacher_batch_size, shuffle=True, seed=0),
        epochs=config.teacher_epochs, lr=config.lr, weight_decay=config.weight_decay,
        validate=at_epoch_end if checkpoints else None, desc=f"teacher w{width}")
    model.eval()
    return {"width": width, "label_smoothing": label_smoothing,
            "val accuracy": evaluate(model, val)["accuracy"],
            "test accuracy": evaluate(model, TensorBatches(split.x_test, split.y_test, 512))["accuracy"],
            "state": model.state_dict(), "train_logits": predict(model, train_x)[0],
            "checkpoints": snapshots, "checkpoint_val": snapshot_val}


def train_teacher_job(job: tuple, config: TeacherChoiceConfig) -> dict:
    """:func:`train_teacher` of ``job = (width, label_smoothing, checkpoints)`` (for ``map_seeds``)."""
    width, label_smoothing, checkpoints = job
    return train_teacher(width, config, label_smoothing, tuple(checkpoints))


def _scores(model, split) -> dict[str, float]:
    return {"val accuracy": evaluate(model, TensorBatches(split.x_val, split.y_val, 512))["accuracy"],
            "test accuracy": evaluate(model, TensorBatches(split.x_test, split.y_test, 512))["accuracy"]}


def run_seed(seed: int, config: TeacherChoiceConfig, teacher_logits: dict[str, torch.Tensor],
             pc_teacher_state: dict) -> dict:
    """Every student of one seed; ``{"scores": {name: {"val accuracy", "test accuracy"}}, "costs": {...}}``.

    ``teacher_logits``: ``{teacher name: (N, C) logits on the training images}``, the cache of
    every frozen teacher (see the module docstring). Students (all ``DigitsCNN(config.student_width)``
    from the seed's one initial draw, except the born-again generations):

    - ``student_scratch``: cross-entropy on the seed's 50 labelled images;
    - ``kd_<teacher>``: KD from each cached teacher on the transfer set (capacity gap, early
      stops, label smoothing);
    - ``assistant`` (``DigitsCNN(config.ta_width)``, KD from the largest teacher) and
      ``kd_via_assistant`` (KD from the assistant, same epochs as from the teacher);
    - ``ban_gen0/1/2`` (``DigitsCNN(config.ban_width)``, all labels): generation 0 from the labels,
      each next one by KD from the previous, same architecture (born-again networks);
    - ``pc_<variant>_<epochs>``: with random shifts, function matching (teacher run on every
      view), ``cached_fixed`` (teacher run once on the unshifted images, student on those same
      images), ``cached_stale`` (teacher cached on the unshifted images, student on shifted views).
    """
    split = load_split(config)
    n = len(split.y_train)
    seed_everything(seed)
    few = keep_labels(split.y_train, config.labels_per_class, seed=seed)       # (N,), -1 = unlabelled
    has_label = few != IGNORE_INDEX
    initial = DigitsCNN(config.student_width)
    fit_options = dict(lr=config.lr, weight_decay=config.weight_decay)
    index = torch.arange(n)
    scores, costs = {}, {}

    def cached_student(logits, model=None, epochs=config.student_epochs, batches=None):
        model = copy.deepcopy(initial) if model is None else model
        targets = topk_targets(logits, logits.shape[-1], T=config.T)           # k = C: exact
        batches = batches or TensorBatches(split.x_train, index, config.student_batch_size, shuffle=True, seed=seed)
        fit(CachedKD(model, targets, few, config.kd_weight, config.ce_weight), batches, epochs=epochs, **fit_options)
        return model

    scratch = copy.deepcopy(initial)
    fit(Scratch(scratch), TensorBatches(split.x_train[has_label], few[has_label], config.student_batch_size,
                                        shuffle=True, seed=seed), epochs=config.scratch_epochs, **fit_options)
    scores["student_scratch"] = _scores(scratch, split)
    for name, logits in teacher_logits.items():
        scores[f"kd_{name}"] = _scores(cached_student(logits), split)

    # teacher assistant (Mirzadeh et al. 2020): largest teacher -> assistant -> student
    assistant = cached_student(teacher_logits[f"w{config.largest}"], model=DigitsCNN(config.ta_width))
    scores["assistant"] = _scores(assistant, split)
    ta_logits = predict(assistant, TensorBatches(split.x_train, split.y_train, 512))[0]
    scores["kd_via_assistant"] = _scores(cached_student(ta_logits), split)

    # born-again networks (Furlanello et al. 2018): same architecture, all labels, two generations
    ban_batches = lambda: TensorBatches(split.x_train, index, config.teacher_batch_size, shuffle=True, seed=seed)
    gen = DigitsCNN(config.ban_width)
    fit(Scratch(gen), TensorBatches(split.x_train, split.y_train, config.teacher_batch_size, shuffle=True, seed=seed),
        epochs=config.ban_epochs, **fit_options)
    scores["ban_gen0"] = _scores(gen, split)
    for g in (1, 2):
        logits = predict(gen, TensorBatches(split.x_train, split.y_train, 512))[0]
        gen = DigitsCNN(config.ban_width)
        targets = topk_targets(logits, logits.shape[-1], T=config.T)
        fit(CachedKD(gen, targets, split.y_train, config.kd_weight, config.ce_weight), ban_batches(),
            epochs=config.ban_epochs, **fit_options)
        scores[f"ban_gen{g}"] = _scores(gen, split)

    # patient and consistent teaching (Beyer et al. 2022): augmentation, function matching vs a cache
    teacher = DigitsCNN(config.pc_teacher_width)
    teacher.load_state_dict(pc_teacher_state)
    teacher.eval()
    for epochs in config.pc_epochs:
        counting = CountingTeacher(teacher)
        student = copy.deepcopy(initial)
        views = ShiftedBatches(TensorBatches(split.x_train, few, config.student_batch_size, shuffle=True, seed=seed),
                               config.max_shift, seed=seed)
        start = time.perf_counter()
        fit(LogitKD(student, counting, T=config.T, kd_weight=config.kd_weight, ce_weight=config.ce_weight), views,
            epochs=epochs, **fit_options)
        scores[f"pc_function_matching_{epochs}"] = _scores(student, split)
        costs[f"function_matching_{epochs}"] = {"teacher images": counting.images, "teacher seconds": counting.seconds,
                                               "seconds": time.perf_counter() - start}

        counting = CountingTeacher(teacher)
        start = time.perf_counter()
        fixed_logits = predict(counting, TensorBatches(split.x_train, split.y_train, 512))[0]   # once
        cache_seconds = time.perf_counter() - start
        student = cached_student(fixed_logits, epochs=epochs)
        scores[f"pc_cached_fixed_{epochs}"] = _scores(student, split)
        costs[f"cached_fixed_{epochs}"] = {"teacher images": counting.images, "teacher seconds": counting.seconds,
                                           "seconds": time.perf_counter() - start, "cache seconds": cache_seconds}
        shifted = ShiftedBatches(TensorBatches(split.x_train, index, config.student_batch_size, shuffle=True,
                                               seed=seed), config.max_shift, seed=seed)
        scores[f"pc_cached_stale_{epochs}"] = _scores(cached_student(fixed_logits, epochs=epochs, batches=shifted),
                                                      split)
    return {"scores": scores, "costs": costs}


def tail_mass(logits: torch.Tensor, k: int, T: float) -> float:
    """Mean probability mass (at temperature T) outside each row's top ``k`` classes."""
    return float(torch.exp(topk_targets(logits, k, T).log_remainder).mean()) if k < logits.shape[-1] else 0.0


# -- the text study: which text teacher? -----------------------------------------------------------
@dataclass(frozen=True)
class TextTeacherConfig:
    """The text study of lesson 10: lesson 07's setting (``kd_ref.recipes.text``), three teachers.

    ``text`` is a profile of ``kd_ref.recipes.text.CONFIGS``; its teacher is the ``full`` one.
    ``short_teacher_steps``: the ``short`` teacher, the same architecture trained on a schedule
    of its own this long (warm-up then cosine, as every model here); not a checkpoint of the
    full run. ``student_steps``: every student (``text.student_steps`` is not used; the cpu
    profile's 200 are half of lesson 07's 400, what the lesson's time budget allows). ``seeds``:
    students of seeds 0 .. seeds - 1; the teachers are all trained with seed 0.
    """

    text: TextConfig
    short_teacher_steps: int = 150
    student_steps: int = 200
    seeds: int = 3


TEXT_TEACHERS = ("full", "short", "small")
TEXT_STUDENTS = ("student_scratch", *(f"kd_{name}" for name in TEXT_TEACHERS))
TEXT_CONFIGS = {
    "smoke": TextTeacherConfig(text_recipe.CONFIGS["smoke"], short_teacher_steps=30, student_steps=40, seeds=2),
    "cpu": TextTeacherConfig(text_recipe.CONFIGS["cpu"]),
}
TEXT_CONFIGS["gpu"] = TEXT_CONFIGS["cpu"]      # run on the CPU, as the digits studies: the same numbers


def text_teacher_configs(config: TextTeacherConfig) -> dict[str, TextConfig]:
    """The three teachers, each as the ``TextConfig`` whose teacher role it is (also their cache key).

    ``full``: the profile's teacher. ``short``: the same, ``short_teacher_steps`` steps. ``small``:
    the student's own architecture, trained as a teacher for the teacher's steps at the students'
    learning rate (the one chosen on validation for this architecture): the capacity-gap end
    and a born-again generation 0.
    """
    base = config.text
    return {"full": base,
            "short": dataclasses.replace(base, teacher_steps=config.short_teacher_steps),
            "small": dataclasses.replace(base, teacher_layers=base.student_layers, teacher_width=base.student_width,
                                         lr=base.student_lr)}


def load_text_teachers(config: TextTeacherConfig, text: str, device="cpu", root=None, verbose: bool = True) -> dict:
    """The three teachers from the teacher cache (trained and saved first when missing), scored once.

    ``{name: {"model", "val_bits_per_char", "test_bits_per_char", "parameters", "steps", "layers",
    "width", "lr", "cached", "train_seconds"}}``; validation and test as in ``kd_ref.recipes.text``
    (``_data``: the recipe's split, the first ``val_chars`` characters of each when set).
    """
    _, _, val, test = text_recipe._data(config.text, text)
    teachers = {}
    for name, teacher_config in text_teacher_configs(config).items():
        model, info = cached_text_teacher(teacher_config, text, 0, split_seed=text_recipe.SPLIT_SEED, device=device,
                                          root=root, verbose=verbose)
        teachers[name] = {"model": model, "val_bits_per_char": bits_per_char(model, val, device),
                          "test_bits_per_char": bits_per_char(model, test, device),
                          "parameters": count_parameters(model), "steps": teacher_config.teacher_steps,
                          "layers": teacher_config.teacher_layers, "width": teacher_config.teacher_width,
                          "lr": teacher_config.lr, "cached": info["cached"], "train_seconds": info["train_seconds"]}
    return teachers


def text_initial_student(seed: int, config: TextTeacherConfig, vocab_size: int):
    """The seed's initial student, drawn as ``kd_ref.recipes.text.run_seed`` draws it (after its teacher)."""
    seed_everything(seed)
    CharGPT(config.text.model(vocab_size, "teacher"))       # drawn and dropped: lesson 07's students of this seed
    return CharGPT(config.text.model(vocab_size, "student"))


def text_teacher_seed(seed: int, config: TextTeacherConfig, text: str, teachers: dict, names=TEXT_STUDENTS,
                      device="cpu", keep_models: bool = False) -> dict:
    """The students ``names`` of one seed: ``{name: {"val_bits_per_char", "test_bits_per_char", "history",
    "train_seconds"}}`` (and ``"model"`` with ``keep_models``).

    ``teachers``: ``{teacher name: CharGPT}`` (fixed for every seed). ``student_scratch`` learns
    from the next character alone, ``kd_<teacher>`` by token-level KD from that teacher
    (``kd_ref.recipes.text.make_distiller("student_kd", ...)``: the profile's T and weights). Every
    student of the seed starts from :func:`text_initial_student` and sees the same seeded crops
    (``1000 + seed``, as in ``run_seed``) for ``config.student_steps`` steps at the students'
    learning rate, validated every ``eval_every`` steps; the final model is scored once on test.
    A student's numbers do not depend on which others are trained with it (so the students of a
    seed can be trained in separate processes, :func:`text_student_job`).
    """
    unknown = [n for n in names if n != "student_scratch" and (not n.startswith("kd_") or n[3:] not in teachers)]
    if unknown:
        raise ValueError(f"unknown students {unknown}: names are student_scratch or kd_<teacher> with a teacher "
                         f"of teachers ({', '.join(teachers)})")
    vocab = CharVocab(text)
    _, split, val, test = text_recipe._data(config.text, text)
    initial = text_initial_student(seed, config, len(vocab))
    train = text_recipe._trainer(seed, config.text, split, val, device)
    results = {}
    for name in names:
        student = copy.deepcopy(initial)
        method, teacher = ("student_scratch", None) if name == "student_scratch" else ("student_kd", teachers[name[3:]])
        with text_recipe.make_distiller(method, student, teacher, config.text) as distiller:
            log = train(name, distiller, config.student_steps, 1000 + seed, config.text.student_lr)
        history = log["history"]
        results[name] = {"val_bits_per_char": history[-1]["val_bpc"],
                         "test_bits_per_char": bits_per_char(student, test, device),   # the only look at test
                         "history": history, "train_seconds": history[-1]["train_seconds"]}
        if keep_models:
            results[name]["model"] = student
    return results


def text_student_job(job: tuple, config: TextTeacherConfig, text: str, teachers: dict) -> dict:
    """One student of :func:`text_teacher_seed`, ``job = (seed, name)`` (for ``map_seeds``)."""
    seed, name = job
    return text_teacher_seed(seed, config, text, teachers, names=(name,))[name]
