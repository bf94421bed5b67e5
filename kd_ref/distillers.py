"""Distillers: a student, an optional frozen teacher, and the loss terms that train it.

A distiller's ``forward(x, y)`` returns ``(student_logits, {name: loss})`` with every
term already weighted (the pattern of mdistiller's ``Distiller.forward_train``,
Zhao et al. 2022). ``kd_ref.train.fit`` sums the terms, backpropagates the sum and
logs each term by name, so a learner sees what every part of the objective does.

Labels equal to ``IGNORE_INDEX`` (-1) mark the *transfer set*: images the student
learns from only through the teacher's outputs (Hinton, Vinyals & Dean 2015,
section 2); with ``padding=True``, the padded positions of a sequence (see
``Distiller``). Cross-entropy is averaged over the samples that have a target only.

Logit methods: ``Scratch``, ``LogitKD``, ``PseudoLabelKD``, ``DecoupledKD``; they take
images ``(B, C)`` or sequences ``(B, L, V)`` alike.
Feature and relation methods (``FitNetKD``, ``AttentionKD``, ``RelationKD``,
``SimilarityKD``) read intermediate features of both networks through forward hooks
on named modules (``kd_ref.FeatureHooks``), so they work on any model without
editing it: a CIFAR ResNet (``layer1..3``, ``embedding``) or the digits CNN
(``block1..3``, ``embedding``). Their default weights are those of the CIFAR-100
benchmark code of the CRD repository (Tian, Krishnan & Isola 2020) unless a class
says otherwise; the feature term is added to cross-entropy (weight 1) without a KD
term, as in that benchmark (``kd_weight`` adds one).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .hooks import FeatureHooks
from .losses import IGNORE_INDEX, at_loss, dkd_loss, hint_loss, kd_loss, masked_cross_entropy, rkd_loss, sp_loss
from .teacher import freeze, teacher_forward


class Distiller(nn.Module):
    """Holds ``student`` (trained) and ``teacher`` (frozen, kept in eval mode); the interface of every method.

    The interface ``kd_ref.train.fit`` and the recipes rely on, and nothing else:

    - ``forward(x, y) -> (student_logits, {name: weighted loss})``;
    - ``set_progress(epochs_done)``: called by ``fit`` before every step with the
      fractional number of epochs done after it (a warm-up such as DKD's uses it; a
      no-op by default);
    - ``close()``: releases what the distiller attached to the models (forward hooks);
      also called on leaving a ``with`` block. A no-op by default.

    The teacher is a registered submodule, so ``.to(device)`` moves it too, but its
    parameters have ``requires_grad=False`` and ``train()`` never switches it out of
    eval mode. The optimizer takes ``[p for p in distiller.parameters() if
    p.requires_grad]``: the student plus any learned helper (e.g. a FitNets regressor).

    Targets equal to ``IGNORE_INDEX`` (-1) mean one of two things, chosen by ``padding``:

    - ``padding=False`` (images): an unlabelled sample of the transfer set. It is left out
      of the cross-entropy only; the teacher's soft targets still teach on it.
    - ``padding=True`` (sequences, ``y`` of shape ``(B, L)``): a padded position. It is
      left out of every term, and the models are called as ``model(x, padding_mask)``
      with ``padding_mask = y != IGNORE_INDEX`` (``(B, L)`` bool) so that no real
      position attends to padding. A batch without padding takes the fast path:
      ``model(x)`` and no mask.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module | None = None, *, padding: bool = False):
        super().__init__()
        self.student = student
        self.teacher = None if teacher is None else freeze(teacher)
        self.padding = padding

    def train(self, mode: bool = True) -> "Distiller":
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError("a distiller returns (student_logits, {name: weighted loss})")

    def set_progress(self, epochs_done: float) -> None:
        """Told by the training loop how far training has got (fractional epochs); no-op by default."""

    def close(self) -> None:
        """Release hooks or other attachments to the models; no-op by default."""

    def __enter__(self) -> "Distiller":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def real_positions(self, y: torch.Tensor) -> torch.Tensor | None:
        """The ``(B, L)`` bool mask of real (unpadded) positions, or None when nothing is padded."""
        if not self.padding:
            return None
        real = y != IGNORE_INDEX                                               # (B, L)
        return None if bool(real.all()) else real

    def run_student(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """``student(x)``, or ``student(x, mask)`` when positions are padded."""
        return self.student(x) if mask is None else self.student(x, mask)

    def run_teacher(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """The teacher's logits in eval mode under no_grad (``kd_ref.teacher_forward``), padding-masked if need be."""
        return teacher_forward(self.teacher, x) if mask is None else teacher_forward(self.teacher, x, mask)


class Scratch(Distiller):
    """Plain supervised training: ``{"ce": CE(student(x), y)}`` over the samples (or positions) with a target.

    Trains a teacher, or the scratch baseline that KD is compared against; with
    ``padding=True`` a language model on padded sequences. ``label_smoothing`` > 0 trains
    with smoothed targets: Müller, Kornblith & Hinton (2019), "When Does Label Smoothing
    Help?", NeurIPS, section 5, find that teachers trained so are worse teachers for
    distillation, although they are more accurate.
    """

    def __init__(self, student: nn.Module, label_smoothing: float = 0.0, *, padding: bool = False):
        super().__init__(student, padding=padding)
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got label_smoothing={label_smoothing}")
        self.label_smoothing = label_smoothing

    def forward(self, x, y):
        mask = self.real_positions(y)
        logits = self.run_student(x, mask)                                     # (B, C) or (B, L, V)
        return logits, {"ce": masked_cross_entropy(logits, y, mask, self.label_smoothing)}


class LogitKD(Distiller):
    """Hinton KD: ``kd_weight * T^2 KL(p_t || p_s)`` + ``ce_weight * CE`` on the targets that exist.

    Hinton, Vinyals & Dean (2015), section 2: the soft-target term (``kd_ref.kd_loss``)
    needs no label, so it also teaches on the unlabelled transfer set; the hard-label
    term uses the true labels where they exist, at T = 1 (it is left out when
    ``ce_weight`` is 0). With ``padding=True`` the same loss runs at every real position
    of a sequence (token-level KD, as in DistilBERT: Sanh et al. 2019, section 3), the
    teacher's next-token distribution being each position's soft target.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, T: float = 4.0,
                 kd_weight: float = 0.9, ce_weight: float = 0.1, *, padding: bool = False):
        super().__init__(student, teacher, padding=padding)
        self.T, self.kd_weight, self.ce_weight = T, kd_weight, ce_weight

    def logit_terms(self, logits: torch.Tensor, teacher_logits: torch.Tensor, y: torch.Tensor,
                    mask: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """``{"kd": ..., "ce": ...}`` from the two models' logits (shared with the subclasses)."""
        terms = {"kd": self.kd_weight * kd_loss(logits, teacher_logits, T=self.T, mask=mask)}
        if self.ce_weight:
            terms["ce"] = self.ce_weight * masked_cross_entropy(logits, y, mask)
        return terms

    def forward(self, x, y):
        mask = self.real_positions(y)
        logits = self.run_student(x, mask)                                     # (B, C) or (B, L, V)
        teacher_logits = self.run_teacher(x, mask)                             # same shape, no graph
        return logits, self.logit_terms(logits, teacher_logits, y, mask)


class PseudoLabelKD(Distiller):
    """``LogitKD`` with the teacher's soft targets replaced by its arg-max class.

    ``pseudo_weight * CE(s, argmax t)`` on every sample + ``ce_weight * CE(s, y)`` on
    the labelled ones. A control experiment: it keeps the transfer set but drops what
    Hinton et al. (2015) call dark knowledge, the relative probabilities the teacher
    gives to the wrong classes. The gap between the two shows what softness adds.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, pseudo_weight: float = 0.9, ce_weight: float = 0.1):
        super().__init__(student, teacher)
        self.pseudo_weight, self.ce_weight = pseudo_weight, ce_weight

    def forward(self, x, y):
        logits = self.student(x)                                               # (B, C)
        pseudo_labels = teacher_forward(self.teacher, x).argmax(-1)            # (B,)
        return logits, {
            "pseudo": self.pseudo_weight * F.cross_entropy(logits, pseudo_labels),
            "ce": self.ce_weight * masked_cross_entropy(logits, y),
        }


class DecoupledKD(Distiller):
    """DKD: ``ce_weight * CE + min(epochs_done / warmup_epochs, 1) * dkd_loss(alpha, beta, T)``.

    Zhao, Cui, Song, Qiu & Liang (2022), "Decoupled Knowledge Distillation", CVPR. The
    defaults are the authors' (mdistiller) for CIFAR-100: CE weight 1, alpha 1, beta 8,
    T 4, and a linear warm-up of the DKD weight over the first 20 epochs. The authors
    raise the weight once per epoch (epoch e uses e / 20); here it rises every step
    (``kd_ref.train.fit`` calls ``set_progress`` with the fractional epochs done)
    and reaches their value at the end of each epoch, which keeps a warm-up in short
    runs too: at full weight from the first step a confident teacher's DKD term
    (tens of times the CE term) wrecks a freshly initialised student at lr 0.05.
    Every sample needs a label (DKD splits the target class from the others).
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, alpha: float = 1.0, beta: float = 8.0,
                 T: float = 4.0, ce_weight: float = 1.0, warmup_epochs: float = 20.0):
        super().__init__(student, teacher)
        if not warmup_epochs > 0:
            raise ValueError(f"warmup_epochs must be > 0, got warmup_epochs={warmup_epochs}")
        self.alpha, self.beta, self.T, self.ce_weight = alpha, beta, T, ce_weight
        self.warmup_epochs = warmup_epochs
        self.epoch = warmup_epochs          # full weight unless the loop says otherwise

    def set_progress(self, epochs_done: float) -> None:
        self.epoch = epochs_done

    def forward(self, x, y):
        logits = self.student(x)                                               # (B, C)
        teacher_logits = teacher_forward(self.teacher, x)                      # (B, C), no graph
        warmup = min(self.epoch / self.warmup_epochs, 1.0)
        return logits, {
            "ce": self.ce_weight * masked_cross_entropy(logits, y),
            "dkd": warmup * dkd_loss(logits, teacher_logits, y, self.alpha, self.beta, self.T),
        }


class HookedDistiller(Distiller):
    """A distiller that also compares intermediate features, captured by module name.

    ``forward`` runs the teacher (eval mode, no gradients) and the student once each,
    reads the features of ``teacher_layers`` / ``student_layers`` from forward hooks,
    and returns ``ce_weight * CE`` (+ ``kd_weight * kd_loss`` at ``T`` when
    ``kd_weight`` > 0) plus the terms of ``feature_terms``. Subclasses define only that.

    Args:
        student_layers, teacher_layers: module names (``kd_ref.module_names(model)``),
            paired in order.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, student_layers, teacher_layers,
                 ce_weight: float = 1.0, kd_weight: float = 0.0, T: float = 4.0):
        super().__init__(student, teacher)
        student_layers = [student_layers] if isinstance(student_layers, str) else list(student_layers)
        teacher_layers = [teacher_layers] if isinstance(teacher_layers, str) else list(teacher_layers)
        if len(student_layers) != len(teacher_layers) or not student_layers:
            raise ValueError(f"student_layers and teacher_layers must pair up one to one, got "
                             f"{student_layers} and {teacher_layers}")
        self.student_layers, self.teacher_layers = student_layers, teacher_layers
        self.ce_weight, self.kd_weight, self.T = ce_weight, kd_weight, T
        self.student_hooks = FeatureHooks(student, student_layers)
        self.teacher_hooks = FeatureHooks(self.teacher, teacher_layers)

    def feature_terms(self, student_feats: list[torch.Tensor], teacher_feats: list[torch.Tensor]
                      ) -> dict[str, torch.Tensor]:
        raise NotImplementedError("return {name: weighted loss} from the paired features")

    def forward(self, x, y):
        teacher_logits = teacher_forward(self.teacher, x)                      # (B, C), no graph
        teacher_feats = self.teacher_hooks.values()                            # constants: no_grad
        logits = self.student(x)                                               # (B, C)
        student_feats = self.student_hooks.values()                            # with their graph
        terms = {"ce": self.ce_weight * masked_cross_entropy(logits, y)}
        if self.kd_weight:
            terms["kd"] = self.kd_weight * kd_loss(logits, teacher_logits, T=self.T)
        terms.update(self.feature_terms(student_feats, teacher_feats))
        self.student_hooks.clear()                                             # drop the references
        self.teacher_hooks.clear()
        return logits, terms

    def close(self) -> None:
        """Detach the hooks from both models (the distiller cannot run afterwards)."""
        self.student_hooks.remove()
        self.teacher_hooks.remove()


class FitNetKD(HookedDistiller):
    """FitNets: ``CE + hint_weight * hint_loss(regressor(student feature), teacher feature)``.

    Romero et al. (2015), "FitNets: Hints for Thin Deep Nets", ICLR. One student layer
    (the guided layer), one teacher layer (the hint) and a learned ``regressor``
    (``kd_ref.ConvRegressor``, trained with the student). The paper trains in two
    stages; the CRD benchmark trains hint and CE jointly with ``hint_weight`` 100 on
    the middle stage (its ``hint_layer`` 2), as done here.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, student_layer: str, teacher_layer: str,
                 regressor: nn.Module, hint_weight: float = 100.0, **kwargs):
        super().__init__(student, teacher, [student_layer], [teacher_layer], **kwargs)
        self.regressor = regressor
        self.hint_weight = hint_weight

    def feature_terms(self, student_feats, teacher_feats):
        return {"hint": self.hint_weight * hint_loss(self.regressor(student_feats[0]), teacher_feats[0])}


class AttentionKD(HookedDistiller):
    """Attention transfer: ``CE + at_weight * sum over layer pairs of at_loss(s, t, p)``.

    Zagoruyko & Komodakis (2017), "Paying More Attention to Attention", ICLR. The
    authors' code adds ``beta / 2 * sum`` of the per-pair losses with beta = 1000, so
    ``at_weight`` = 500 by default (the CRD benchmark uses 1000). Usually applied to
    every stage output (``layer1..3`` of a CIFAR ResNet); channel counts may differ.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, student_layers, teacher_layers,
                 at_weight: float = 1000.0 / 2, p: float = 2.0, **kwargs):
        super().__init__(student, teacher, student_layers, teacher_layers, **kwargs)
        self.at_weight, self.p = at_weight, p

    def feature_terms(self, student_feats, teacher_feats):
        total = sum(at_loss(s, t, self.p) for s, t in zip(student_feats, teacher_feats))
        return {"at": self.at_weight * total}


class RelationKD(HookedDistiller):
    """Relational KD: ``CE + rkd_weight * rkd_loss(student embedding, teacher embedding)``.

    Park, Kim, Lu & Cho (2019), "Relational Knowledge Distillation", CVPR: distance
    (weight 25) and angle (weight 50) terms on the pre-classifier embeddings of a
    batch, as in the CRD benchmark (which adds the sum with weight 1).
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, student_layer: str = "embedding",
                 teacher_layer: str = "embedding", rkd_weight: float = 1.0, distance_weight: float = 25.0,
                 angle_weight: float = 50.0, **kwargs):
        super().__init__(student, teacher, [student_layer], [teacher_layer], **kwargs)
        self.rkd_weight, self.distance_weight, self.angle_weight = rkd_weight, distance_weight, angle_weight

    def feature_terms(self, student_feats, teacher_feats):
        loss = rkd_loss(student_feats[0], teacher_feats[0], self.distance_weight, self.angle_weight)
        return {"rkd": self.rkd_weight * loss}


class SimilarityKD(HookedDistiller):
    """Similarity-preserving KD: ``CE + sp_weight * sum over layer pairs of sp_loss(s, t)``.

    Tung & Mori (2019), "Similarity-Preserving Knowledge Distillation", ICCV: the
    B-by-B similarity matrices of a batch must agree. The CRD benchmark uses the last
    stage (``layer3``) and ``sp_weight`` 3000.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, student_layers, teacher_layers,
                 sp_weight: float = 3000.0, **kwargs):
        super().__init__(student, teacher, student_layers, teacher_layers, **kwargs)
        self.sp_weight = sp_weight

    def feature_terms(self, student_feats, teacher_feats):
        return {"sp": self.sp_weight * sum(sp_loss(s, t) for s, t in zip(student_feats, teacher_feats))}


@torch.no_grad()
def feature_shapes(model: nn.Module, names, example: torch.Tensor) -> dict[str, tuple[int, ...]]:
    """Shapes of the named features for ``example`` input, from one eval-mode forward pass.

    Sizes a learned helper before training, e.g. ``ConvRegressor(C_s, C_t, H_s, H_t)``.
    The model's train/eval mode is restored afterwards.
    """
    was_training = model.training
    with FeatureHooks(model, names) as hooks:
        model.eval()
        model(example)
        shapes = {name: tuple(hooks[name].shape) for name in hooks}
    model.train(was_training)
    return shapes
