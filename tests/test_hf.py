"""kd_ref on Hugging Face causal LMs: tiny GPT-2 models built from configs (no download)."""
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import numpy_ref as ref

transformers = pytest.importorskip("transformers")
from transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402

from kd_ref import hf  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def gpt2(width, layers, vocab=40, seed=0):
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=vocab, n_positions=32, n_embd=width, n_layer=layers, n_head=2,
                        bos_token_id=0, eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2LMHeadModel(config)   # no dropout: the losses are compared with a recomputation


@pytest.fixture
def models(one_thread):
    return gpt2(32, 2, seed=0).eval(), gpt2(16, 1, seed=1)


def _batch():
    ids = torch.randint(1, 40, (3, 10), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(3, 10, dtype=torch.long)
    mask[1, 7:] = 0
    mask[2, 4:] = 0
    return ids, mask


def test_token_kd_matches_a_numpy_kl_over_real_next_tokens(models):
    teacher, student = models
    ids, mask = _batch()
    loss = hf.token_kd_loss(student, teacher, ids, mask, T=2.0)
    with torch.no_grad():
        pos = hf.position_ids(mask)
        s = student(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, :-1].double().numpy()
        t = teacher(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, :-1].double().numpy()
    keep = np.zeros((3, 9), bool)
    keep[0, :], keep[1, :6], keep[2, :3] = True, True, True        # position j counts when token j + 1 is real
    assert loss.item() == pytest.approx(ref.kd(s, t, 2.0, keep), rel=1e-5)


def test_padding_tokens_do_not_change_the_loss(models):
    teacher, student = models
    ids, mask = _batch()
    other = ids.clone()
    other[mask == 0] = 7                                           # different ids at padded positions
    a = hf.token_kd_loss(student, teacher, ids, mask)
    b = hf.token_kd_loss(student, teacher, other, mask)
    assert a.item() == pytest.approx(b.item(), rel=1e-5)


def test_completion_only_labels_keep_only_the_completion(models):
    teacher, student = models
    ids, mask = _batch()
    labels = hf.completion_labels(ids, mask, prompt_lengths=[5, 5, 2])
    assert (labels[0, :5] == -100).all() and (labels[0, 5:] == ids[0, 5:]).all()
    assert (labels[2, :2] == -100).all() and (labels[2, 2:4] == ids[2, 2:4]).all() and (labels[2, 4:] == -100).all()
    keep = hf.next_token_mask(mask, labels)
    expected = torch.zeros(3, 9, dtype=torch.bool)
    expected[0, 4:], expected[1, 4:6], expected[2, 1:3] = True, True, True
    assert torch.equal(keep, expected)
    loss = hf.token_kd_loss(student, teacher, ids, mask, labels=labels)
    with torch.no_grad():
        pos = hf.position_ids(mask)
        s = student(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, :-1].double().numpy()
        t = teacher(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, :-1].double().numpy()
    assert loss.item() == pytest.approx(ref.kd(s, t, 1.0, expected.numpy()), rel=1e-5)


def test_left_padding_gets_the_positions_of_the_unpadded_prompt(models):
    teacher, _ = models
    ids = torch.randint(1, 40, (1, 6), generator=torch.Generator().manual_seed(3))
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), ids], 1)
    mask = torch.cat([torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 6, dtype=torch.long)], 1)
    with torch.no_grad():
        plain = teacher(input_ids=ids).logits
        left = teacher(input_ids=padded, attention_mask=mask, position_ids=hf.position_ids(mask)).logits[:, 3:]
    torch.testing.assert_close(left, plain, atol=1e-5, rtol=1e-5)


def test_different_vocabularies_are_refused_with_the_fix_for_padding_rows(one_thread):
    teacher, student = gpt2(32, 2, vocab=48, seed=0), gpt2(16, 1, vocab=40, seed=1)
    ids, mask = _batch()
    with pytest.raises(ValueError, match=r"student scores 40 token ids and the teacher 48.*vocab_size=len\(tokenizer\)"):
        hf.token_kd_loss(student, teacher, ids, mask)
    loss = hf.token_kd_loss(student, teacher, ids, mask, vocab_size=40)       # teacher rows 40..47: padding
    with torch.no_grad():
        pos = hf.position_ids(mask)
        s = student(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, :-1]
        t = teacher(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, :-1, :40]
    from kd_ref import kd_loss
    assert loss.item() == pytest.approx(kd_loss(s, t, T=1.0, mask=hf.next_token_mask(mask)).item(), rel=1e-5)
    with pytest.raises(ValueError, match="vocab_size"):
        hf.token_kd_loss(student, teacher, ids, mask, vocab_size=44)


def test_one_on_policy_gkd_step_trains_the_student_only_without_gradient_through_sampling(models):
    teacher, student = models
    prompts = torch.randint(1, 40, (3, 5), generator=torch.Generator().manual_seed(4))
    prompt_mask = torch.ones(3, 5, dtype=torch.long)
    prompt_mask[0, :2] = 0                                          # left padding
    modes = []
    hook = student.register_forward_pre_hook(lambda m, a, k: modes.append(torch.is_grad_enabled()), with_kwargs=True)
    torch.manual_seed(0)
    loss = hf.on_policy_gkd_loss(student, teacher, prompts, prompt_mask, max_new_tokens=6, beta=0.5)
    hook.remove()
    assert modes.count(True) == 1 and modes[-1] is True and len(modes) > 1     # sampling passes under no_grad
    assert torch.isfinite(loss) and loss.item() >= 0
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert sum(p.grad.abs().sum() for p in student.parameters() if p.grad is not None) > 0
    # the loss is JSD_beta over the 6 generated positions of each row, recomputed from the same samples
    torch.manual_seed(0)
    seq, mask = hf.sample(student, prompts, prompt_mask, 6)
    assert seq.shape == (3, 11) and not seq.requires_grad and mask[:, 5:].all()
    keep = torch.zeros(3, 10, dtype=torch.bool)
    keep[:, 4:] = True
    with torch.no_grad():
        pos = hf.position_ids(mask)
        s = student(input_ids=seq, attention_mask=mask, position_ids=pos).logits[:, :-1].double().numpy()
        t = teacher(input_ids=seq, attention_mask=mask, position_ids=pos).logits[:, :-1].double().numpy()
    assert loss.item() == pytest.approx(ref.generalized_jsd(s, t, 0.5, 1.0, keep.numpy()), rel=1e-4)


@pytest.mark.slow
def test_the_readme_hugging_face_section_runs(tmp_path):
    import subprocess
    import sys
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Distil a Hugging Face causal LM", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1
    script = tmp_path / "hf_readme.py"
    script.write_text(blocks[0])
    env = {**os.environ, "PYTHONPATH": str(ROOT)}          # this checkout's kd_ref, whatever the cwd
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                            env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "token KD and one on-policy GKD step done" in result.stdout
