"""Language-model distillation: sampling, the on-policy step, sequence-level KD, teacher init, the cache, `kd-ref lm`."""
import dataclasses
import json

import numpy as np
import pytest
import torch

import numpy_ref as ref
from kd_ref.cli import main
from kd_ref.data.text import split_text
from kd_ref.losses import IGNORE_INDEX
from kd_ref.models import CharGPT, GPTConfig
from kd_ref.recipes import lm as L
from kd_ref.recipes.text import CONFIGS
from kd_ref.teacher_cache import cached_text_teacher, teacher_key

V = 11


def tiny(seed=0, layers=1, width=16, context=24):
    torch.manual_seed(seed)
    return CharGPT(GPTConfig(vocab_size=V, context=context, n_layer=layers, n_head=2, width=width))


# -- generate --------------------------------------------------------------------------------------------
def test_generate_top_k_one_is_greedy_and_batched():
    model = tiny()
    prompt = torch.randint(0, V, (3, 4), generator=torch.Generator().manual_seed(0))
    out = model.generate(prompt, 6, top_k=1, generator=torch.Generator().manual_seed(5))
    assert out.shape == (3, 10) and torch.equal(out[:, :4], prompt)
    greedy = prompt
    for _ in range(6):                                          # the step-by-step argmax, written out
        with torch.no_grad():
            nxt = model(greedy)[:, -1].argmax(-1, keepdim=True)
        greedy = torch.cat([greedy, nxt], 1)
    assert torch.equal(out, greedy)


def test_generate_top_k_keeps_only_the_k_most_likely_tokens():
    model = tiny(1)
    prompt = torch.zeros(200, 1, dtype=torch.long)
    with torch.no_grad():
        allowed = set(model(prompt[:1])[0, -1].topk(3).indices.tolist())
    first = model.generate(prompt, 1, top_k=3, generator=torch.Generator().manual_seed(0))[:, 1]
    assert set(first.tolist()) <= allowed and len(set(first.tolist())) > 1


def test_generate_records_no_gradient_even_when_grad_is_enabled():
    model = tiny()
    with torch.enable_grad():
        out = model.generate(torch.zeros(2, 1, dtype=torch.long), 3)
    assert not out.requires_grad and out.dtype == torch.long and model.training


@pytest.mark.parametrize("top_k", [0, -1, 1.5, True])
def test_generate_refuses_a_bad_top_k(top_k):
    with pytest.raises(ValueError, match="top_k"):
        tiny().generate(torch.zeros(1, 1, dtype=torch.long), 2, top_k=top_k)


# -- the on-policy step ------------------------------------------------------------------------------------------
def _windows(B=4, L_=12, seed=0):
    ids = torch.randint(0, V, (B, L_ + 1), generator=torch.Generator().manual_seed(seed))
    return ids[:, :-1], ids[:, 1:]


def test_on_policy_step_matches_a_numpy_reverse_kl_on_the_continuation_only():
    student, teacher = tiny(0), tiny(1, layers=2)
    distiller = L.OnPolicyKD(student, teacher, prompt=4, new=6, beta=1.0, lam=1.0, seed=3)
    x, y = _windows()
    logits, terms = distiller(x, y)
    # replay: the same seeded samples, then a plain NumPy reverse KL at positions 3..8 (predicting tokens 4..9)
    replay = L.OnPolicyKD(tiny(0), tiny(1, layers=2), prompt=4, new=6, seed=3).sequences(x, y)   # (4, 10)
    assert torch.equal(replay[:, :4], x[:, :4])                 # the prompts are the corpus's
    with torch.no_grad():
        s, t = student(replay[:, :-1]), teacher(replay[:, :-1])
    mask = np.zeros((4, 9), bool)
    mask[:, 3:] = True
    expected = ref.reverse_kl(s.double().numpy(), t.double().numpy(), 1.0, mask)
    assert set(terms) == {"reverse_kl"}
    # float32 logits of a value near 0.004: allow float32 rounding of log-probabilities near 3 (about 1e-7
    # each; 4e-8 seen on an AVX-512 CPU), far below what a wrong mask or direction would change (1e-3).
    assert terms["reverse_kl"].item() == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert distiller.sampled_tokens == 4 * 6


def test_no_gradient_flows_through_sampling():
    student, teacher = tiny(0), tiny(1)
    distiller = L.OnPolicyKD(student, teacher, prompt=4, new=6, seed=3)
    grad_modes = []
    hook = student.register_forward_pre_hook(lambda m, a: grad_modes.append(torch.is_grad_enabled()))
    x, y = _windows()
    _, terms = distiller(x, y)
    hook.remove()
    assert grad_modes[:6] == [False] * 6 and grad_modes[6] is True    # 6 sampling passes, then the scored one
    terms["reverse_kl"].backward()
    got = [p.grad.clone() for p in student.parameters()]
    # the same loss on the same sequences given as constants: identical gradients
    seq = L.OnPolicyKD(tiny(0), tiny(1), prompt=4, new=6, seed=3).sequences(x, y)
    student.zero_grad()
    mask = torch.zeros(4, 9, dtype=torch.bool)
    mask[:, 3:] = True
    from kd_ref import reverse_kl_loss
    reverse_kl_loss(student(seq[:, :-1]), teacher(seq[:, :-1]).detach(), mask=mask).backward()
    for a, p in zip(got, student.parameters()):
        torch.testing.assert_close(a, p.grad)
    assert all(p.grad is None for p in teacher.parameters())


def test_gkd_mixes_student_rows_and_corpus_rows_and_uses_jsd():
    student, teacher = tiny(0), tiny(1)
    x, y = _windows(B=4)
    distiller = L.OnPolicyKD(student, teacher, prompt=4, new=6, beta=0.5, lam=0.5, seed=0)
    seq = distiller.sequences(x, y)
    corpus = torch.cat([x, y[:, -1:]], 1)[:, :10]
    assert torch.equal(seq[2:], corpus[2:]) and torch.equal(seq[:2, :4], corpus[:2, :4])
    assert distiller.sampled_tokens == 2 * 6
    _, terms = distiller(x, y)
    assert set(terms) == {"jsd"}
    off = L.OnPolicyKD(student, teacher, prompt=4, new=6, beta=0.5, lam=0.0)
    assert torch.equal(off.sequences(x, y), corpus) and off.sampled_tokens == 0


def test_on_policy_refuses_windows_too_short_and_bad_settings():
    with pytest.raises(ValueError, match="too short"):
        L.OnPolicyKD(tiny(0), tiny(1), prompt=8, new=8).sequences(*_windows(L_=10))
    with pytest.raises(ValueError, match="lam"):
        L.OnPolicyKD(tiny(0), tiny(1), prompt=4, new=4, lam=1.5)


# -- sequence-level KD ------------------------------------------------------------------------------------------------
def test_sequence_batches_mask_the_prompt_and_completion_ce_skips_it():
    pool = torch.randint(0, V, (5, 10), generator=torch.Generator().manual_seed(0))
    x, y = next(iter(L.SequenceBatches(pool, prompt=4, batch_size=3, steps=1, seed=0)))
    assert x.shape == y.shape == (3, 9)
    assert (y[:, :3] == IGNORE_INDEX).all() and (y[:, 3:] != IGNORE_INDEX).all()
    model = tiny()
    logits, terms = L.CompletionCE(model)(x, y)
    s = logits.detach().double().numpy()
    expected = ref.cross_entropy(s[:, 3:].reshape(-1, V), y[:, 3:].reshape(-1).numpy())
    assert terms["ce"].item() == pytest.approx(expected, rel=1e-5)
    # the prompt is still *seen*: its tokens change the continuation's logits (no attention mask on it)
    x2 = x.clone()
    x2[:, 0] = (x2[:, 0] + 1) % V
    with torch.no_grad():
        assert not torch.allclose(model(x2)[:, 5], logits[:, 5].detach())


# -- student initialised from teacher layers --------------------------------------------------------------------------
def test_init_from_teacher_copies_evenly_spaced_blocks_and_the_ends():
    teacher = tiny(2, layers=4, width=16)
    student = L.init_from_teacher(teacher, 2)
    assert student.config.width == teacher.config.width and student.config.n_layer == 2
    for i, j in ((0, 0), (1, 3)):
        for a, b in zip(student.blocks[i].parameters(), teacher.blocks[j].parameters()):
            assert torch.equal(a, b) and a.data_ptr() != b.data_ptr()
    for name in ("tok_emb", "pos_emb", "ln_f", "head"):
        for a, b in zip(getattr(student, name).parameters(), getattr(teacher, name).parameters()):
            assert torch.equal(a, b)
    assert all(p.requires_grad for p in student.parameters())
    full = L.init_from_teacher(teacher, 4)                            # every block: the teacher itself
    x = torch.randint(0, V, (2, 8))
    torch.testing.assert_close(full(x), teacher(x))
    with pytest.raises(ValueError, match="n_layer"):
        L.init_from_teacher(teacher, 5)


# -- scores ------------------------------------------------------------------------------------------------------------
def test_sample_scores_of_the_teacher_on_its_own_samples():
    teacher = tiny(4)
    prompts = torch.randint(0, V, (6, 3), generator=torch.Generator().manual_seed(1))
    scores = L.sample_scores(teacher, teacher, prompts, 5, seed=0)
    assert scores["agreement"] == 1.0 and scores["agreement_by_position"] == [1.0] * 5
    # the teacher's bits on the samples, recomputed with NumPy from the same seeded samples
    seq = teacher.generate(prompts, 5, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        t = teacher(seq[:, :-1])[:, 2:].double().numpy()                 # (6, 5, V)
    p = ref.softmax(t)
    target = seq[:, 3:].numpy()
    bits = -np.log2(np.take_along_axis(p, target[..., None], -1)).mean()
    assert scores["teacher_bits_per_char"] == pytest.approx(bits, rel=1e-5)
    assert scores["entropy_bits"] == pytest.approx((-(p * np.log2(p)).sum(-1)).mean(), rel=1e-5)


def test_token_counter_counts_positions_and_lm_split_is_the_text_split():
    model = tiny()
    counter = L.TokenCounter(model)
    model(torch.zeros(3, 7, dtype=torch.long))
    counter.remove()
    model(torch.zeros(3, 7, dtype=torch.long))
    assert counter.tokens == 21
    ids = torch.arange(5000) % V
    train, val, test = L.lm_split(ids, 16)                             # the text recipe's split, test included
    split = split_text(ids, 16, seed=0, test_fraction=0.1)
    assert [len(train), len(val), len(test)] == [len(split.train), len(split.val), len(split.test)] == [80, 10, 10]
    starts = lambda blocks: {b.data_ptr() for b in blocks}
    assert not starts(train) & starts(val) and not starts(train) & starts(test) and not starts(val) & starts(test)


def test_parse_methods():
    assert L.parse_methods("kd, onpolicy,student_gkd") == ("student_kd", "student_onpolicy", "student_gkd")
    with pytest.raises(L.CommandError, match="unknown method 'rl'"):
        L.parse_methods("kd,rl")


# -- the teacher cache ------------------------------------------------------------------------------------------------
def test_teacher_cache_trains_once_then_loads_the_same_weights(tmp_path, one_thread):
    config = dataclasses.replace(CONFIGS["smoke"], teacher_steps=3, eval_every=3)
    text = "the quick brown fox jumps over the lazy dog. " * 40
    first, info = cached_text_teacher(config, text, seed=0, root=tmp_path, verbose=False)
    again, info2 = cached_text_teacher(config, text, seed=0, root=tmp_path, verbose=False)
    assert not info["cached"] and info2["cached"] and info2["path"] == info["path"]
    for a, b in zip(first.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
    assert not again.training
    assert teacher_key(config, text, 1, 0)["hash"] != teacher_key(config, text, 0, 0)["hash"]
    assert teacher_key(config, text + "!", 0, 0)["hash"] != teacher_key(config, text, 0, 0)["hash"]
    assert len(list(tmp_path.glob("*.pt"))) == 1


def test_teacher_cache_keeps_one_teacher_per_thread_count_and_device(tmp_path, restore_threads):
    # Two thread counts sum in different orders: a lesson that trains with one thread must not be
    # handed the teacher another lesson trained with two (make reproduce with an empty cache would differ).
    config = dataclasses.replace(CONFIGS["smoke"], teacher_steps=2, eval_every=2)
    text = "the quick brown fox jumps over the lazy dog. " * 40
    torch.set_num_threads(1)
    one = teacher_key(config, text, 0, 0)
    _, info = cached_text_teacher(config, text, seed=0, root=tmp_path, verbose=False)
    assert one["threads"] == 1 and one["device"] == "cpu" and info["threads"] == 1
    torch.set_num_threads(2)
    two = teacher_key(config, text, 0, 0)
    assert two["threads"] == 2 and two["hash"] != one["hash"]
    _, info2 = cached_text_teacher(config, text, seed=0, root=tmp_path, verbose=False)
    assert not info2["cached"] and len(list(tmp_path.glob("*.pt"))) == 2
    cuda = teacher_key(config, text, 0, 0, device="cuda")      # a key only: no CUDA needed to compute it
    assert cuda["device"] == "cuda" and cuda["threads"] is None and cuda["hash"] not in {one["hash"], two["hash"]}

# -- the command ----------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_lm_smoke_writes_the_json_contract(tmp_path, capsys, restore_threads):
    path = tmp_path / "lm.json"
    code = main(["lm", "--profile", "smoke", "--seeds", "2", "--methods", "scratch,kd,seqkd,onpolicy,gkd,init_kd,wide_kd",
                 "--teacher-cache", str(tmp_path / "teachers"), "--json", str(path)])
    assert code == 0
    out = capsys.readouterr().out
    assert "numbers not meaningful" in out and "student_onpolicy - student_kd" in out
    result = json.loads(path.read_text())
    assert list(result)[:5] == ["profile", "data", "device", "seconds", "rows"]
    names = {r["name"] for r in result["rows"]}
    assert names == {"teacher", *L.METHODS}
    for row in result["rows"]:
        assert set(row) == {"name", "metric", "mean", "std", "n"}
        assert row["n"] == (1 if row["name"] == "teacher" else 2)
    assert {r["metric"] for r in result["rows"]} >= {"bits_per_char", "teacher_bits_per_char", "agreement"}


def test_lm_refuses_an_unknown_method_before_any_work(capsys):
    assert main(["lm", "--profile", "smoke", "--methods", "kd,magic"]) == 2
    assert "unknown method 'magic'" in capsys.readouterr().err
