"""Distillers: a student, an optional frozen teacher, and the loss terms that train it.

A distiller's ``forward(x, y)`` returns ``(student_logits, {name: loss})`` with every
term already weighted (the pattern of mdistiller's ``Distiller.forward_train``,
Zhao et al. 2022). ``kd_ref.train.fit`` sums the terms, backpropagates the sum and
logs each term by name, so a learner sees what every part of the objective does.

Labels equal to ``UNLABELLED`` (-1) mark the *transfer set*: images the student
learns from only through the teacher's outputs (Hinton, Vinyals & Dean 2015,
section 2). Cross-entropy is averaged over the labelled samples of a batch only.

Logit methods: ``Scratch``, ``LogitKD``, ``PseudoLabelKD``, ``DecoupledKD``.
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
from .losses import at_loss, dkd_loss, hint_loss, kd_loss, rkd_loss, sp_loss
from .teacher import freeze, teacher_forward

UNLABELLED = -1


def labelled_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0
                           ) -> torch.Tensor:
    """Cross-entropy averaged over the samples whose target is not ``UNLABELLED``.

    ``logits`` ``(B, C)``, ``targets`` ``(B,)``. A batch without any label gives 0
    (not the NaN of ``F.cross_entropy(..., ignore_index=-1)`` on an all-ignored
    batch), still connected to the graph so ``backward()`` works.
    ``label_smoothing`` = eps mixes the one-hot target with the uniform distribution:
    ``(1 - eps) * onehot + eps / C`` (Szegedy et al. 2016, section 7).
    """
    labelled = targets != UNLABELLED                                          # (B,)
    ce = F.cross_entropy(logits, targets.clamp_min(0), reduction="none",      # (B,)
                         label_smoothing=label_smoothing)
    return (ce * labelled).sum() / labelled.sum().clamp_min(1)


class Distiller(nn.Module):
    """Holds ``student`` (trained) and ``teacher`` (frozen, kept in eval mode).

    The teacher is a registered submodule, so ``.to(device)`` moves it too, but its
    parameters have ``requires_grad=False`` and ``train()`` never switches it out of
    eval mode. The optimizer takes ``[p for p in distiller.parameters() if
    p.requires_grad]``: the student plus any learned helper (e.g. a FitNets regressor).
    """

    def __init__(self, student: nn.Module, teacher: nn.Module | None = None):
        super().__init__()
        self.student = student
        self.teacher = None if teacher is None else freeze(teacher)

    def train(self, mode: bool = True) -> "Distiller":
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError("a distiller returns (student_logits, {name: weighted loss})")


class Scratch(Distiller):
    """Plain supervised training: ``{"ce": CE(student(x), y)}`` on the labelled samples.

    Trains a teacher, or the scratch baseline that KD is compared against.
    ``label_smoothing`` > 0 trains with smoothed targets: Müller, Kornblith & Hinton
    (2019), "When Does Label Smoothing Help?", NeurIPS, section 5, find that teachers
    trained so are worse teachers for distillation, although they are more accurate.
    """

    def __init__(self, student: nn.Module, label_smoothing: float = 0.0):
        super().__init__(student)
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got label_smoothing={label_smoothing}")
        self.label_smoothing = label_smoothing

    def forward(self, x, y):
        logits = self.student(x)                                               # (B, C)
        return logits, {"ce": labelled_cross_entropy(logits, y, self.label_smoothing)}


class LogitKD(Distiller):
    """Hinton KD: ``kd_weight * T^2 KL(p_t || p_s)`` on every sample + ``ce_weight * CE`` on labelled ones.

    Hinton, Vinyals & Dean (2015), section 2: the soft-target term (``kd_ref.kd_loss``)
    needs no label, so it also teaches on the unlabelled transfer set; the hard-label
    term uses the true labels where they exist, at T = 1.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, T: float = 4.0,
                 kd_weight: float = 0.9, ce_weight: float = 0.1):
        super().__init__(student, teacher)
        self.T, self.kd_weight, self.ce_weight = T, kd_weight, ce_weight

    def forward(self, x, y):
        logits = self.student(x)                                               # (B, C)
        teacher_logits = teacher_forward(self.teacher, x)                      # (B, C), no graph
        return logits, {
            "kd": self.kd_weight * kd_loss(logits, teacher_logits, T=self.T),
            "ce": self.ce_weight * labelled_cross_entropy(logits, y),
        }


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
            "ce": self.ce_weight * labelled_cross_entropy(logits, y),
        }


class DecoupledKD(Distiller):
    """DKD: ``ce_weight * CE + min(epochs_done / warmup_epochs, 1) * dkd_loss(alpha, beta, T)``.

    Zhao, Cui, Song, Qiu & Liang (2022), "Decoupled Knowledge Distillation", CVPR. The
    defaults are the authors' (mdistiller) for CIFAR-100: CE weight 1, alpha 1, beta 8,
    T 4, and a linear warm-up of the DKD weight over the first 20 epochs. The authors
    raise the weight once per epoch (epoch e uses e / 20); here it rises every step
    (``kd_ref.train.fit`` calls ``set_epoch(progress)`` with the fractional epochs done)
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

    def set_epoch(self, epoch: float) -> None:
        self.epoch = epoch

    def forward(self, x, y):
        logits = self.student(x)                                               # (B, C)
        teacher_logits = teacher_forward(self.teacher, x)                      # (B, C), no graph
        warmup = min(self.epoch / self.warmup_epochs, 1.0)
        return logits, {
            "ce": self.ce_weight * labelled_cross_entropy(logits, y),
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
        terms = {"ce": self.ce_weight * labelled_cross_entropy(logits, y)}
        if self.kd_weight:
            terms["kd"] = self.kd_weight * kd_loss(logits, teacher_logits, T=self.T)
        terms.update(self.feature_terms(student_feats, teacher_feats))
        self.student_hooks.clear()                                             # drop the references
        self.teacher_hooks.clear()
        return logits, terms

    def remove_hooks(self) -> None:
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
