"""Distillation losses, one family per module: cross-entropy, logits, divergences, features, attention, relations."""
from .attention import at_loss, attention_kl_loss, attention_map, attention_score_loss, value_relation_loss
from .cached import TopKTargets, cached_kd_loss, topk_targets
from .cross_entropy import IGNORE_INDEX, masked_cross_entropy
from .divergences import generalized_jsd_loss, reverse_kl_loss, skew_kl_loss, skew_reverse_kl_loss
from .features import hidden_state_cosine_loss, hidden_state_loss, hint_loss
from .logits import distillation_loss, dkd_loss, kd_loss, log_softmax_t, soft_cross_entropy, softmax_t
from .relations import rkd_angle_loss, rkd_distance_loss, rkd_loss, sp_loss

__all__ = [
    "IGNORE_INDEX", "masked_cross_entropy",
    "TopKTargets", "topk_targets", "cached_kd_loss",
    "softmax_t", "log_softmax_t", "kd_loss", "soft_cross_entropy", "distillation_loss", "dkd_loss",
    "reverse_kl_loss", "generalized_jsd_loss", "skew_kl_loss", "skew_reverse_kl_loss",
    "hint_loss", "hidden_state_loss", "hidden_state_cosine_loss",
    "attention_map", "at_loss", "attention_score_loss", "attention_kl_loss", "value_relation_loss",
    "rkd_distance_loss", "rkd_angle_loss", "rkd_loss", "sp_loss",
]
