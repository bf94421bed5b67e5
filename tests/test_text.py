"""The character-level transformer, the text data and the sequence distillers.

Independent checks: parameter counts from the closed form, attention scores from the
weights by hand, bits per character from a NumPy log-softmax, the padded-batch losses
against the same losses on each sequence alone.
"""
import copy
import math
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import kd_ref
from kd_ref.data.text import (CharVocab, RandomCrops, ValidationWindows, bits_per_char, first_chars, load_text,
                              split_text)
from kd_ref.models import CharGPT, GPTConfig, count_parameters
from kd_ref.distillers import LogitKD, Scratch
from kd_ref.losses import IGNORE_INDEX
from kd_ref.sequence_distillers import HiddenAttentionKD, uniform_layer_map

V = 11


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run faster on one thread (and do not fight other jobs for the cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def gpt(n_layer=2, n_head=2, width=16, context=12, seed=0, **kw):
    torch.manual_seed(seed)
    return CharGPT(GPTConfig(vocab_size=V, context=context, n_layer=n_layer, n_head=n_head, width=width, **kw)).eval()


def tokens(B, T, seed=1):
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


def closed_form_parameters(V, context, L, C, tied=False):
    # embeddings + L blocks (2 LayerNorms 4C, qkv 3C^2+3C, proj C^2+C, MLP 8C^2+5C) + final LayerNorm + head.
    return V * C + context * C + L * (12 * C * C + 13 * C) + 2 * C + (0 if tied else V * C)


# ---------------------------------------------------------------- the model

def test_shapes_of_logits_hidden_states_and_attention():
    model = gpt(n_layer=3, n_head=2, width=16)
    x = tokens(4, 10)
    assert model(x).shape == (4, 10, V)
    out = model.forward_internals(x, attentions=True)
    assert len(out.hidden_states) == 3 + 1                              # embedding output + each block
    assert all(h.shape == (4, 10, 16) for h in out.hidden_states)
    assert len(out.attention_scores) == len(out.attention_probs) == 3
    assert all(a.shape == (4, 2, 10, 10) for a in out.attention_scores + out.attention_probs)
    only_hidden = model.forward_internals(x)
    assert only_hidden.attention_probs is None and only_hidden.attention_scores is None
    assert isinstance(model(x), torch.Tensor)                           # forward: always the logits tensor
    torch.testing.assert_close(only_hidden.logits, model(x))


@pytest.mark.parametrize("V_, context, L, H, C, tied", [
    (103, 64, 4, 4, 96, False),     # the cpu teacher
    (103, 64, 2, 4, 48, False),     # the cpu student
    (103, 256, 6, 6, 384, False),   # the gpu teacher (nanoGPT's character-level scale)
    (11, 12, 2, 2, 16, True),
])
def test_parameter_counts_match_the_closed_form(V_, context, L, H, C, tied):
    model = CharGPT(GPTConfig(vocab_size=V_, context=context, n_layer=L, n_head=H, width=C, tie_weights=tied))
    assert count_parameters(model) == closed_form_parameters(V_, context, L, C, tied)


def test_parameter_counts_pinned():
    assert count_parameters(CharGPT(GPTConfig(103, 64, 4, 4, 96))) == 473_472
    assert count_parameters(CharGPT(GPTConfig(103, 64, 2, 4, 48))) == 69_600
    assert count_parameters(CharGPT(GPTConfig(103, 256, 6, 6, 384))) == 10_824_960


def test_weight_tying_shares_one_matrix():
    model = gpt(tie_weights=True)
    assert model.head.weight is model.tok_emb.weight


def test_causal_a_future_token_never_changes_past_logits():
    model = gpt(n_layer=2)
    x = tokens(2, 12)
    changed = x.clone()
    changed[:, 7] = (changed[:, 7] + 1) % V
    for run in (model, lambda ids: model.forward_internals(ids, attentions=True).logits):   # fused, explicit
        a, b = run(x), run(changed)
        torch.testing.assert_close(a[:, :7], b[:, :7], rtol=0, atol=1e-6)
        assert (a[:, 7:] - b[:, 7:]).abs().max() > 1e-3                 # the change is seen from position 7 on


def test_fused_and_explicit_attention_give_the_same_logits():
    model = gpt(n_layer=3, n_head=4, width=32)
    x = tokens(3, 12)
    mask = torch.ones(3, 12, dtype=torch.bool)
    mask[0, 8:] = False
    mask[2, 3:5] = False
    for m in (None, mask):
        fused = model(x, m)
        explicit = model.forward_internals(x, m, attentions=True).logits
        torch.testing.assert_close(fused, explicit, rtol=1e-5, atol=1e-5)


def test_embedding_output_and_head_by_hand():
    model = gpt()
    x = tokens(2, 9)
    out = model.forward_internals(x)
    by_hand = model.tok_emb.weight[x] + model.pos_emb.weight[:9]         # (B, T, C)
    torch.testing.assert_close(out.hidden_states[0], by_hand)
    torch.testing.assert_close(out.logits, model.head(model.ln_f(out.hidden_states[-1])))


def test_attention_scores_and_probabilities_by_hand():
    model = gpt(n_layer=1, n_head=2, width=16)
    x = tokens(2, 6)
    out = model.forward_internals(x, attentions=True)
    block = model.blocks[0]
    q, k, _ = block.attn.qkv(block.ln_attn(out.hidden_states[0])).split(16, dim=2)
    q = q.view(2, 6, 2, 8).transpose(1, 2)
    k = k.view(2, 6, 2, 8).transpose(1, 2)
    expected = q @ k.transpose(-2, -1) / math.sqrt(8)                      # (B, H, T, T)
    future = torch.ones(6, 6, dtype=torch.bool).triu(1)
    scores, probs = out.attention_scores[0], out.attention_probs[0]
    assert torch.isneginf(scores[..., future]).all()                      # -inf above the diagonal
    torch.testing.assert_close(scores[..., ~future], expected[..., ~future])
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, 2, 6))        # rows sum to 1
    assert (probs[..., future] == 0).all()                                # 0 above the diagonal


def test_padding_keys_are_masked_out():
    model = gpt(n_layer=2)
    x = tokens(2, 12)
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[0, 3:6] = False                                                  # padding in the middle of row 0
    mask[1, 9:] = False                                                   # padding at the end of row 1
    out = model.forward_internals(x, mask, attentions=True)
    for probs in out.attention_probs:
        real_queries = mask[:, None, :, None] & ~torch.eye(12, dtype=torch.bool)
        padded_keys = ~mask[:, None, None, :]
        assert (probs[(real_queries & padded_keys).expand_as(probs)] == 0).all()
    other = x.clone()
    other[~mask] = (other[~mask] + 3) % V                                 # change only the padding tokens
    for run in (model, lambda ids, m: model.forward_internals(ids, m, attentions=True).logits):
        a, b = run(x, mask), run(other, mask)
        torch.testing.assert_close(a[mask], b[mask], rtol=0, atol=1e-6)   # real positions never see padding


def test_model_guard_rails():
    with pytest.raises(ValueError, match="width must be divisible by n_head"):
        GPTConfig(vocab_size=5, n_head=3, width=16)
    with pytest.raises(ValueError, match="n_layer"):
        GPTConfig(vocab_size=5, n_layer=0)
    model = gpt(context=12)
    with pytest.raises(ValueError, match="exceeds the model's context=12"):
        model(tokens(1, 13))
    with pytest.raises(ValueError, match=r"padding_mask must have shape \(B, T\) = \(2, 5\)"):
        model(tokens(2, 5), torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="idx must be an integer tensor"):
        model(torch.zeros(2, 5))


def test_generate_is_seeded_and_stays_in_the_vocabulary():
    model = gpt(context=8)
    start = tokens(1, 3)
    a = model.generate(start, 20, temperature=0.8, generator=torch.Generator().manual_seed(0))
    b = model.generate(start, 20, temperature=0.8, generator=torch.Generator().manual_seed(0))
    c = model.generate(start, 20, temperature=0.8, generator=torch.Generator().manual_seed(1))
    assert a.shape == (1, 23) and torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(a[:, :3], start) and a.min() >= 0 and a.max() < V


# ---------------------------------------------------------------- the data

@pytest.fixture(scope="module")
def corpus():
    text, source = load_text()
    return text, source


def test_default_corpus_is_pydoc_topics_joined_in_key_order(corpus):
    from pydoc_data.topics import topics
    text, source = corpus
    assert text == "".join(topics[k] for k in sorted(topics))
    assert len(text) == sum(len(v) for v in topics.values())
    assert 400_000 < len(text) < 550_000 and "pydoc_data.topics" in source
    if sys.version_info[:3] == (3, 11, 7):                                # the count stated in the lesson
        assert len(text) == 464_970 and len(set(text)) == 103


def test_vocabulary_is_the_sorted_characters_and_round_trips(corpus):
    text, _ = corpus
    vocab = CharVocab(text)
    assert vocab.chars == sorted(set(text)) and len(vocab) == len(set(text))
    ids = vocab.encode(text[:5000])
    assert ids.dtype == torch.int64 and vocab.decode(ids) == text[:5000]
    assert vocab.encode("ab").tolist() == [vocab.chars.index("a"), vocab.chars.index("b")]
    with pytest.raises(ValueError, match="not in the vocabulary"):
        vocab.encode("\u2603")


def test_split_is_disjoint_complete_contiguous_and_seeded():
    ids = torch.arange(10_000)
    split = split_text(ids, context=16, val_fraction=0.1, n_blocks=100, seed=0)     # test_fraction 0.1 by default
    assert len(split.train) == 80 and len(split.val) == 10 and len(split.test) == 10
    parts = [set(split.train_blocks), set(split.val_blocks), set(split.test_blocks)]
    assert not parts[0] & parts[1] and not parts[0] & parts[2] and not parts[1] & parts[2]   # disjoint
    assert sorted(split.train_blocks + split.val_blocks + split.test_blocks) == list(range(100))   # cover it all
    assert torch.equal(torch.cat([ids[slice(*split.bounds[i])] for i in range(100)]), ids)   # blocks tile the text
    for blocks, numbers in ((split.train, split.train_blocks), (split.val, split.val_blocks),
                            (split.test, split.test_blocks)):
        assert numbers == sorted(numbers)
        for block, i in zip(blocks, numbers):
            assert torch.equal(block, ids[slice(*split.bounds[i])])                     # contiguous, in place
    assert split.n_train + split.n_val + split.n_test == 10_000
    assert split.n_test == sum(len(b) for b in split.test) > 0
    again, other = split_text(ids, 16, seed=0), split_text(ids, 16, seed=1)
    assert (again.val_blocks, again.test_blocks, again.train_blocks) == (split.val_blocks, split.test_blocks,
                                                                         split.train_blocks)   # the same every run
    assert other.val_blocks != split.val_blocks and other.test_blocks != split.test_blocks


def test_the_test_blocks_come_from_the_training_side_only():
    ids = torch.arange(10_000)
    with_test = split_text(ids, 16, seed=0, test_fraction=0.2)
    without = split_text(ids, 16, seed=0, test_fraction=0.0)
    assert without.test == [] and without.test_blocks == [] and without.n_test == 0
    assert len(without.train) == 90 and len(with_test.test) == 20 and len(with_test.train) == 70
    assert with_test.val_blocks == without.val_blocks                      # validation does not move
    assert set(with_test.test_blocks) <= set(without.train_blocks)


def test_split_of_a_short_text_uses_fewer_blocks_and_refuses_a_too_short_one():
    split = split_text(torch.arange(100), context=16)                     # 100 // 17 = 5 blocks
    assert (len(split.train), len(split.val), len(split.test)) == (3, 1, 1)
    assert all(len(b) >= 17 for b in split.train + split.val + split.test)
    three = split_text(torch.arange(60), context=16, val_fraction=0.5, test_fraction=0.4)   # 3 blocks: one each
    assert (len(three.train), len(three.val), len(three.test)) == (1, 1, 1)
    with pytest.raises(ValueError, match="too short for context 16: need at least 51"):
        split_text(torch.arange(50), context=16)
    assert len(split_text(torch.arange(50), context=16, test_fraction=0).val) == 1          # two parts fit
    with pytest.raises(ValueError, match="too short for context 16: need at least 34"):
        split_text(torch.arange(33), context=16, test_fraction=0)


@pytest.mark.parametrize("kwargs, message", [
    (dict(val_fraction=0.0), "val_fraction must be in \\(0, 1\\)"),
    (dict(val_fraction=1.0), "val_fraction must be in \\(0, 1\\)"),
    (dict(test_fraction=-0.1), "test_fraction must be in \\[0, 1\\)"),
    (dict(test_fraction=1.0), "test_fraction must be in \\[0, 1\\)"),
    (dict(val_fraction=0.5, test_fraction=0.5), "val_fraction \\+ test_fraction must be below 1"),
])
def test_split_refuses_bad_fractions(kwargs, message):
    with pytest.raises(ValueError, match=message):
        split_text(torch.arange(10_000), context=16, **kwargs)


def test_first_chars_keeps_the_first_characters_of_the_blocks():
    blocks = [torch.arange(0, 100), torch.arange(200, 300)]
    assert first_chars(blocks, None, context=8) == blocks
    kept = first_chars(blocks, 150, context=8)
    assert [b.tolist() for b in kept] == [list(range(100)), list(range(200, 250))]
    assert [len(b) for b in first_chars(blocks, 105, context=8)] == [100]      # a piece of <= context dropped
    assert [len(b) for b in first_chars(blocks, 5, context=8)] == [5]          # the first block always stays


def test_random_crops_are_seeded_shifted_by_one_and_inside_one_block():
    ids = torch.arange(5_000)
    split = split_text(ids, context=8, n_blocks=50, seed=0)
    crops = RandomCrops(split.train, context=8, batch_size=16, steps=5, seed=3)
    batches = list(crops)
    assert len(crops) == 5 and len(batches) == 5
    x, y = batches[0]
    assert x.shape == y.shape == (16, 8) and x.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    train_ids = set(torch.cat(split.train).tolist())
    for x, y in batches:
        window = torch.cat([x, y[:, -1:]], dim=1)                          # (B, T + 1)
        assert (window.diff(dim=1) == 1).all()                            # contiguous in the corpus
        assert set(window.flatten().tolist()) <= train_ids                 # never held-out text
    replay = list(RandomCrops(split.train, 8, 16, 5, seed=3))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, replay))
    assert not torch.equal(next(iter(RandomCrops(split.train, 8, 16, 5, seed=4)))[0], batches[0][0])


def test_validation_windows_score_every_character_once():
    blocks = [torch.arange(0, 30), torch.arange(100, 117)]
    windows = ValidationWindows(blocks, context=8, batch_size=3)
    assert windows.n_targets == 29 + 16
    assert windows.x.shape == (4 + 2, 8)                                  # ceil(29/8) + ceil(16/8) windows
    targets = windows.y[windows.mask]
    assert targets.tolist() == list(range(1, 30)) + list(range(101, 117))
    inputs = windows.x[windows.mask]
    assert inputs.tolist() == list(range(0, 29)) + list(range(100, 116))  # each input precedes its target
    assert (windows.y[~windows.mask] == IGNORE_INDEX).all()
    assert [len(x) for x, _, _ in windows] == [3, 3]


class Uniform(torch.nn.Module):
    def forward(self, x, mask=None):
        return torch.zeros(*x.shape, V)


def test_bits_per_char_of_a_uniform_model_is_log2_of_the_vocabulary():
    windows = ValidationWindows([torch.randint(0, V, (500,)), torch.randint(0, V, (77,))], context=16)
    assert bits_per_char(Uniform(), windows) == pytest.approx(math.log2(V), abs=1e-6)


def test_bits_per_char_against_numpy():
    model = gpt(context=16)
    blocks = [tokens(1, 70, seed=5)[0], tokens(1, 40, seed=6)[0]]
    windows = ValidationWindows(blocks, context=16, batch_size=4)
    total, count = 0.0, 0
    for block in blocks:                                                  # the same windows, one at a time
        for start in range(0, len(block) - 1, 16):
            x = block[start:start + 16][:len(block[start + 1:start + 17])]
            y = block[start + 1:start + 17].numpy()
            with torch.no_grad():
                z = model(x[None])[0].double().numpy()                    # (t, V)
            log_p = z - z.max(-1, keepdims=True)
            log_p = log_p - np.log(np.exp(log_p).sum(-1, keepdims=True))
            total -= log_p[np.arange(len(y)), y].sum()
            count += len(y)
    assert bits_per_char(model, windows) == pytest.approx(total / count / math.log(2), rel=1e-6)


@pytest.mark.parametrize("content, message", [
    (None, "does not exist"),
    (b"", "is empty"),
    (b"\xff\xfe\x00bad", "is not valid UTF-8"),
])
def test_load_text_refuses_bad_files(tmp_path, content, message):
    path = tmp_path / "corpus.txt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ValueError, match=message):
        load_text(path)


def test_load_text_reads_a_file(tmp_path):
    path = tmp_path / "poem.txt"
    path.write_text("héllo wörld\n" * 3, encoding="utf-8")
    text, source = load_text(path)
    assert text == "héllo wörld\n" * 3 and "poem.txt" in source


# ---------------------------------------------------------------- distillers and padding

def test_uniform_layer_map():
    assert uniform_layer_map(3, 6) == [0, 2, 4, 6]
    assert uniform_layer_map(2, 4) == [0, 2, 4]
    assert uniform_layer_map(4, 4) == [0, 1, 2, 3, 4]
    assert uniform_layer_map(1, 6) == [0, 6]
    with pytest.raises(ValueError, match="multiple of n_student"):
        uniform_layer_map(4, 6)
    with pytest.raises(ValueError, match="n_student must be a positive integer"):
        uniform_layer_map(0, 6)


def test_hidden_attention_distiller_needs_equal_head_counts():
    with pytest.raises(ValueError, match="n_head=2, the teacher n_head=4"):
        HiddenAttentionKD(gpt(n_layer=1, n_head=2, width=16), gpt(n_layer=2, n_head=4, width=32))


LENGTHS = [12, 7, 9]


@pytest.fixture(scope="module")
def padded():
    """Three sequences of unequal lengths, padded to 12 at the end; a teacher and a student."""
    teacher = gpt(n_layer=4, n_head=2, width=32, seed=3)
    student = gpt(n_layer=2, n_head=2, width=16, seed=4)
    g = torch.Generator().manual_seed(7)
    seqs = [torch.randint(0, V, (n + 1,), generator=g) for n in LENGTHS]   # inputs and their next characters
    x = torch.zeros(3, 12, dtype=torch.long)
    y = torch.full((3, 12), IGNORE_INDEX)
    for i, s in enumerate(seqs):
        x[i, :len(s) - 1], y[i, :len(s) - 1] = s[:-1], s[1:]
    x[1, 7:] = 5                                                          # padding ids are arbitrary
    return teacher, student, seqs, x, y, y != IGNORE_INDEX


def token_weighted(values):
    return sum(n * v for n, v in zip(LENGTHS, values)) / sum(LENGTHS)


def test_token_kd_and_attention_losses_with_padding_equal_each_sequence_alone(padded):
    teacher, student, seqs, x, y, mask = padded
    s = student.forward_internals(x, mask, attentions=True)
    t = teacher.forward_internals(x, mask, attentions=True)
    alone_s = [student.forward_internals(q[None, :-1], attentions=True) for q in seqs]
    alone_t = [teacher.forward_internals(q[None, :-1], attentions=True) for q in seqs]
    kd = kd_ref.kd_loss(s.logits, t.logits, T=2.0, mask=mask)
    kd_alone = [kd_ref.kd_loss(a.logits, b.logits, T=2.0) for a, b in zip(alone_s, alone_t)]
    torch.testing.assert_close(kd, token_weighted(kd_alone))
    att = kd_ref.attention_kl_loss(s.attention_probs[1], t.attention_probs[3], mask=mask)
    att_alone = [kd_ref.attention_kl_loss(a.attention_probs[1], b.attention_probs[3]) for a, b in zip(alone_s, alone_t)]
    torch.testing.assert_close(att, token_weighted(att_alone))
    proj = torch.nn.Linear(16, 32)
    hid = kd_ref.hidden_state_loss(s.hidden_states[1], t.hidden_states[2], projection=proj, mask=mask)
    hid_alone = [kd_ref.hidden_state_loss(a.hidden_states[1], b.hidden_states[2], projection=proj)
                 for a, b in zip(alone_s, alone_t)]
    torch.testing.assert_close(hid, token_weighted(hid_alone))
    # Without the mask the padding would count: a different (wrong) number.
    assert abs(kd_ref.kd_loss(s.logits, t.logits, T=2.0).item() / kd.item() - 1) > 1e-3


def test_distillers_with_padding_equal_each_sequence_alone(padded):
    teacher, student, seqs, x, y, _ = padded
    torch.manual_seed(0)
    for distiller in (Scratch(student, padding=True), LogitKD(student, teacher, T=2.0, kd_weight=0.7, ce_weight=0.3, padding=True),
                      HiddenAttentionKD(student, teacher, T=1.0, ce_weight=0.5, hidden_weight=2.0,
                                             attention_weight=0.5)):
        _, terms = distiller(x, y)
        alone = [distiller(q[None, :-1], q[None, 1:])[1] for q in seqs]
        assert set(terms) == set(alone[0])
        for name in terms:
            torch.testing.assert_close(terms[name], token_weighted([a[name] for a in alone]))


def test_token_kd_terms_match_kd_ref(padded):
    teacher, student, _, x, y, mask = padded
    _, terms = LogitKD(student, teacher, T=2.0, kd_weight=0.7, ce_weight=0.3, padding=True)(x, y)
    s, t = student(x, mask), teacher(x, mask)
    torch.testing.assert_close(terms["kd"] + terms["ce"],
                               kd_ref.distillation_loss(s, t, y, T=2.0, kd_weight=0.7, ce_weight=0.3, mask=mask))
    ce = F.cross_entropy(s[mask], y[mask])
    torch.testing.assert_close(terms["ce"], 0.3 * ce)


def test_hidden_attention_distiller_trains_its_projections_not_the_teacher(padded):
    teacher, student, _, x, y, _ = padded
    distiller = HiddenAttentionKD(student, teacher, hidden_weight=1.0, attention_weight=1.0)
    assert distiller.layer_map == [0, 2, 4] and len(distiller.projections) == 3
    _, terms = distiller(x, y)
    sum(terms.values()).backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None for p in distiller.projections.parameters())
    student.zero_grad()


def test_hidden_attention_distiller_attention_term_is_the_kl_of_the_scores(padded):
    """The distiller's attention term: the scores form of attention_kl_loss, equal to the probabilities form."""
    teacher, student, _, x, y, mask = padded
    distiller = HiddenAttentionKD(student, teacher, hidden_weight=0.0, attention_weight=1.0)
    _, terms = distiller(x, y)
    s = student.forward_internals(x, mask, attentions=True)
    t = teacher.forward_internals(x, mask, attentions=True)
    expected = torch.stack([kd_ref.attention_kl_loss(s.attention_probs[m - 1], t.attention_probs[n - 1], mask)
                            for m, n in enumerate(distiller.layer_map) if m > 0]).mean()
    torch.testing.assert_close(terms["attention"], expected)


def test_hidden_attention_distiller_is_finite_at_extreme_attention_scores(padded):
    """A student whose queries are scaled 1e4 has rows of scores hundreds apart: its attention
    probabilities underflow to 0, so the probabilities form is infinite; the distiller stays finite,
    equals a float64 NumPy log-space reference, and gives finite gradients."""
    import numpy_ref as ref

    teacher, student, _, x, y, mask = padded
    student = copy.deepcopy(student)
    width = student.config.width
    with torch.no_grad():
        for block in student.blocks:
            block.attn.qkv.weight[:width] *= 1e4            # the query rows of the fused qkv matrix
            block.attn.qkv.bias[:width] *= 1e4
    s = student.forward_internals(x, mask, attentions=True)
    t = teacher.forward_internals(x, mask, attentions=True)
    distiller = HiddenAttentionKD(student, teacher, hidden_weight=0.0, attention_weight=1.0)
    pairs = [(m - 1, n - 1) for m, n in enumerate(distiller.layer_map) if m > 0]
    probs_form = torch.stack([kd_ref.attention_kl_loss(s.attention_probs[i], t.attention_probs[j], mask)
                              for i, j in pairs]).mean()
    assert torch.isinf(probs_form)                           # the case is really extreme
    _, terms = distiller(x, y)
    assert torch.isfinite(terms["attention"])
    expected = np.mean([ref.attention_kl_from_scores(s.attention_scores[i].detach().double().numpy(),
                                                     t.attention_scores[j].double().numpy(), mask.numpy())
                        for i, j in pairs])
    assert terms["attention"].item() == pytest.approx(expected, rel=1e-4)
    terms["attention"].backward()
    grads = [p.grad for p in student.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
