"""Every loss: fp16 / bf16 inputs are computed in float32, and the result stays finite."""
import pytest
import torch

import kd_ref

g = torch.Generator().manual_seed(0)
LOGITS = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)
FEATS = torch.randn(4, 3, 4, 4, generator=g), torch.randn(4, 5, 4, 4, generator=g)
SAME_FEATS = torch.randn(4, 3, 4, 4, generator=g), torch.randn(4, 3, 4, 4, generator=g)
EMB = torch.randn(4, 7, generator=g), torch.randn(4, 9, generator=g)
SCORES = torch.randn(2, 2, 3, 3, generator=g), torch.randn(2, 2, 3, 3, generator=g)
PROBS = SCORES[0].softmax(-1), SCORES[1].softmax(-1)
HIDDEN = torch.randn(2, 3, 5, generator=g), torch.randn(2, 3, 5, generator=g)
SEQ_LOGITS = torch.randn(2, 3, 6, generator=g), torch.randn(2, 3, 6, generator=g)
VALUES = torch.randn(2, 2, 3, 4, generator=g), torch.randn(2, 2, 3, 8, generator=g)
Y = torch.tensor([0, 1, 2, 3])

CASES = {
    "kd_loss": (kd_ref.kd_loss, LOGITS),
    "soft_cross_entropy": (kd_ref.soft_cross_entropy, LOGITS),
    "distillation_loss": (lambda s, t: kd_ref.distillation_loss(s, t, Y), LOGITS),
    "dkd_loss": (lambda s, t: kd_ref.dkd_loss(s, t, Y), LOGITS),
    "hint_loss": (kd_ref.hint_loss, SAME_FEATS),
    "at_loss": (kd_ref.at_loss, FEATS),
    "rkd_loss": (kd_ref.rkd_loss, EMB),
    "sp_loss": (kd_ref.sp_loss, FEATS),
    "attention_score_loss": (kd_ref.attention_score_loss, SCORES),
    "attention_kl_loss": (kd_ref.attention_kl_loss, PROBS),
    "hidden_state_loss": (kd_ref.hidden_state_loss, HIDDEN),
    "hidden_state_cosine_loss": (kd_ref.hidden_state_cosine_loss, HIDDEN),
    "attention_kl_loss_scores": (lambda s, t: kd_ref.attention_kl_loss(s, t, inputs="scores"), SCORES),
    "value_relation_loss": (kd_ref.value_relation_loss, VALUES),
    "reverse_kl_loss": (kd_ref.reverse_kl_loss, SEQ_LOGITS),
    "generalized_jsd_loss": (kd_ref.generalized_jsd_loss, SEQ_LOGITS),
    "skew_kl_loss": (kd_ref.skew_kl_loss, SEQ_LOGITS),
    "skew_reverse_kl_loss": (kd_ref.skew_reverse_kl_loss, SEQ_LOGITS),
}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", sorted(CASES))
def test_low_precision_inputs_give_a_float32_loss_close_to_float32(name, dtype):
    fn, (s, t) = CASES[name]
    low = fn(s.to(dtype), t.to(dtype))
    reference = fn(s.to(dtype).float(), t.to(dtype).float())     # same rounded inputs, float32 maths
    assert low.dtype == torch.float32 and low.dim() == 0
    assert low.item() == pytest.approx(reference.item(), rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("name", sorted(CASES))
def test_gradients_reach_the_student_only(name):
    fn, (s, t) = CASES[name]
    s, t = s.clone().requires_grad_(), t.clone().requires_grad_()
    fn(s, t).backward()
    assert s.grad is not None and torch.isfinite(s.grad).all()
    assert t.grad is None                                         # the teacher is a constant
