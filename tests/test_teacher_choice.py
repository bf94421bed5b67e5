"""Lesson 10's study pieces (kd_ref.recipes.teacher_choice), each against an independent computation."""
import copy
import dataclasses

import numpy as np
import pytest
import torch

from kd_ref.data import TensorBatches
from kd_ref.data.text import RandomCrops, bits_per_char
from kd_ref.distillers import LogitKD, Scratch
from kd_ref.losses.cached import topk_targets
from kd_ref.models import CharGPT, DigitsCNN
from kd_ref.recipes import text as text_recipe
from kd_ref.recipes.teacher_choice import (TEXT_CONFIGS, CachedKD, CountingTeacher, ShiftedBatches, TextTeacherConfig,
                                           cluster_spread, load_text_teachers, shift_images, tail_mass,
                                           template_plane, text_student_job, text_teacher_configs, text_teacher_seed)
from kd_ref.teacher_cache import teacher_key
from kd_ref.train import fit, seed_everything


def np_shift(img, dy, dx):
    # Zero-filled shift of one (C, H, W) image, written with np.pad and slicing.
    C, H, W = img.shape
    padded = np.pad(img, ((0, 0), (H, H), (W, W)))
    return padded[:, H - dy:2 * H - dy, W - dx:2 * W - dx]


def test_shift_images_matches_numpy():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(12, 2, 8, 8, generator=g)
    shifts = torch.randint(-2, 3, (12, 2), generator=g)
    out = shift_images(x, shifts)
    for i in range(12):
        expected = np_shift(x[i].numpy(), *shifts[i].tolist())
        np.testing.assert_array_equal(out[i].numpy(), expected)
    assert torch.equal(shift_images(x, torch.zeros(12, 2, dtype=torch.long)), x)


def test_shift_images_rejects_bad_input():
    with pytest.raises(ValueError, match="shifts"):
        shift_images(torch.zeros(3, 1, 8, 8), torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="smaller than the image"):
        shift_images(torch.zeros(1, 1, 8, 8), torch.tensor([[8, 0]]))


def test_shifted_batches_draw_new_views_reproducibly():
    x = torch.arange(4 * 64, dtype=torch.float32).reshape(4, 1, 8, 8) + 1
    base = TensorBatches(x, torch.arange(4), batch_size=4)
    a = [b[0] for b in ShiftedBatches(base, 1, seed=3)]
    b = [b[0] for b in ShiftedBatches(base, 1, seed=3)]
    assert len(ShiftedBatches(base, 1)) == 1 and torch.equal(a[0], b[0])
    views = ShiftedBatches(base, 1, seed=3)
    first, second = next(iter(views))[0], next(iter(views))[0]
    assert not torch.equal(first, second)                       # a new shift every time an image is served
    for i in range(4):                                          # each view is one of the 9 shifts of its image
        assert any(np.array_equal(first[i].numpy(), np_shift(x[i].numpy(), dy, dx))
                   for dy in (-1, 0, 1) for dx in (-1, 0, 1))
    with pytest.raises(ValueError, match="max_shift"):
        ShiftedBatches(base, -1)


def test_cached_kd_trains_exactly_like_logit_kd():
    torch.manual_seed(0)
    x = torch.rand(40, 1, 8, 8, dtype=torch.float64)
    y = torch.randint(0, 10, (40,))
    y[::3] = -1                                                 # unlabelled examples of the transfer set
    teacher = DigitsCNN(4).double().eval()
    student = DigitsCNN(2).double()
    twin = copy.deepcopy(student)
    with torch.no_grad():
        logits = teacher(x)
    s_logits, live = LogitKD(copy.deepcopy(student), teacher, T=4.0)(x, y)
    _, cached = CachedKD(copy.deepcopy(student), topk_targets(logits, 10, T=4.0), y)(x, torch.arange(40))
    for name in ("kd", "ce"):
        torch.testing.assert_close(cached[name], live[name], rtol=1e-12, atol=1e-12)
    fit(LogitKD(student, teacher, T=4.0), TensorBatches(x, y, 16, shuffle=True, seed=1), epochs=2, lr=1e-2)
    fit(CachedKD(twin, topk_targets(logits, 10, T=4.0), y), TensorBatches(x, torch.arange(40), 16, shuffle=True, seed=1),
        epochs=2, lr=1e-2)
    for p, q in zip(student.parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="labels"):
        CachedKD(twin, topk_targets(logits, 10), y[:5])


def test_counting_teacher_counts_images_and_calls():
    counting = CountingTeacher(torch.nn.Flatten())
    out = counting(torch.zeros(5, 1, 8, 8))
    counting(torch.zeros(3, 1, 8, 8))
    assert out.shape == (5, 64) and counting.images == 8 and counting.calls == 2 and counting.seconds >= 0


def test_template_plane_matches_numpy_and_keeps_distances():
    rng = np.random.default_rng(0)
    templates = rng.normal(size=(3, 6))
    features = rng.normal(size=(7, 6))
    coords = template_plane(torch.from_numpy(features), torch.from_numpy(templates)).numpy()
    # independent: an orthonormal basis of span(w1 - w0, w2 - w0) from NumPy's QR, fixed in sign
    q, r = np.linalg.qr(np.stack([templates[1] - templates[0], templates[2] - templates[0]], 1))
    q = q * np.sign(np.diag(r))
    np.testing.assert_allclose(coords, (features - templates[0]) @ q, rtol=1e-12, atol=1e-12)
    on_plane = template_plane(torch.from_numpy(templates), torch.from_numpy(templates)).numpy()
    for i in range(3):
        for j in range(3):
            np.testing.assert_allclose(np.linalg.norm(on_plane[i] - on_plane[j]),
                                       np.linalg.norm(templates[i] - templates[j]), rtol=1e-12)
    normal = np.linalg.svd(np.stack([templates[1] - templates[0], templates[2] - templates[0]]))[2][-1]
    moved = template_plane(torch.from_numpy(features + 3.0 * normal), torch.from_numpy(templates)).numpy()
    np.testing.assert_allclose(moved, coords, atol=1e-12)     # a step orthogonal to the plane does not move a point


def test_template_plane_rejects_bad_input():
    with pytest.raises(ValueError, match="templates"):
        template_plane(torch.zeros(4, 5), torch.zeros(2, 5))
    with pytest.raises(ValueError, match="collinear"):
        template_plane(torch.zeros(4, 2), torch.tensor([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]]))


def test_cluster_spread_matches_numpy():
    rng = np.random.default_rng(1)
    coords = rng.normal(size=(30, 2))
    labels = np.repeat([0, 1, 2], 10)
    cents = np.stack([coords[labels == c].mean(0) for c in range(3)])
    within = np.mean([np.linalg.norm(coords[i] - cents[labels[i]]) for i in range(30)])
    between = np.mean([np.linalg.norm(cents[a] - cents[b]) for a, b in ((0, 1), (0, 2), (1, 2))])
    assert cluster_spread(torch.from_numpy(coords), torch.from_numpy(labels)) == pytest.approx(within / between, rel=1e-12)
    with pytest.raises(ValueError, match="two classes"):
        cluster_spread(torch.zeros(3, 2), torch.zeros(3, dtype=torch.long))


def test_tail_mass_matches_numpy():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(6, 10)) * 3
    p = np.exp(logits / 2.0)
    p /= p.sum(1, keepdims=True)
    expected = np.mean(1 - np.sort(p, 1)[:, -3:].sum(1))
    assert tail_mass(torch.from_numpy(logits), 3, 2.0) == pytest.approx(expected, rel=1e-10)
    assert tail_mass(torch.from_numpy(logits), 10, 2.0) == 0.0


# -- the text study ---------------------------------------------------------------------------------------------------
TEXT = "the quick brown fox jumps over the lazy dog. " * 60
TINY = TextTeacherConfig(dataclasses.replace(text_recipe.CONFIGS["smoke"], context=16, teacher_steps=4, eval_every=2,
                                             warmup=1, batch_size=4),
                         short_teacher_steps=2, student_steps=3, seeds=2)


def test_text_teachers_differ_in_size_or_steps_and_in_their_cache_keys():
    base = TEXT_CONFIGS["cpu"].text
    configs = text_teacher_configs(TEXT_CONFIGS["cpu"])
    assert configs["full"] == base
    assert configs["short"] == dataclasses.replace(base, teacher_steps=TEXT_CONFIGS["cpu"].short_teacher_steps)
    small = configs["small"].model(103, "teacher")
    assert (small.n_layer, small.width) == (base.student_layers, base.student_width) == (2, 48)
    assert small == base.model(103, "student")                       # the student's own architecture
    keys = {name: teacher_key(c, TEXT, 0, 0)["hash"] for name, c in configs.items()}
    assert len(set(keys.values())) == 3
    for change in (dict(teacher_layers=2), dict(teacher_width=48), dict(teacher_steps=150), dict(lr=1e-2)):
        assert teacher_key(dataclasses.replace(base, **change), TEXT, 0, 0)["hash"] != keys["full"], change


def test_text_teachers_come_from_the_cache_the_second_time(tmp_path, one_thread):
    first = load_text_teachers(TINY, TEXT, root=tmp_path, verbose=False)
    again = load_text_teachers(TINY, TEXT, root=tmp_path, verbose=False)
    assert len(list(tmp_path.glob("chargpt-*.pt"))) == 3
    assert not any(t["cached"] for t in first.values()) and all(t["cached"] for t in again.values())
    for name in first:
        for a, b in zip(first[name]["model"].state_dict().values(), again[name]["model"].state_dict().values()):
            assert torch.equal(a, b)
        assert first[name]["test_bits_per_char"] == again[name]["test_bits_per_char"]
    assert first["short"]["steps"] == 2 and first["full"]["steps"] == first["small"]["steps"] == 4
    assert first["small"]["model"].config.n_layer == TINY.text.student_layers
    assert first["small"]["parameters"] < first["full"]["parameters"]


def test_text_students_of_a_seed_share_their_start_and_crops(tmp_path, one_thread):
    teachers = {name: t["model"] for name, t in load_text_teachers(TINY, TEXT, root=tmp_path, verbose=False).items()}
    seed = 1
    got = text_teacher_seed(seed, TINY, TEXT, teachers, keep_models=True)
    assert list(got) == ["student_scratch", "kd_full", "kd_short", "kd_small"]
    # independently: lesson 07's draws (teacher, then student, after seeding), crops seeded 1000 + seed
    _, split, val, test = text_recipe._data(TINY.text, TEXT)
    vocab_size = teachers["full"].config.vocab_size
    seed_everything(seed)
    CharGPT(TINY.text.model(vocab_size, "teacher"))
    start = CharGPT(TINY.text.model(vocab_size, "student"))
    kd = dict(T=TINY.text.T, kd_weight=TINY.text.kd_weight, ce_weight=TINY.text.ce_weight, padding=True)
    for name, make in (("student_scratch", lambda s: Scratch(s, padding=True)),
                       ("kd_small", lambda s: LogitKD(s, teachers["small"], **kd))):
        student = copy.deepcopy(start)
        crops = RandomCrops(split.train, TINY.text.context, TINY.text.batch_size, TINY.student_steps, seed=1000 + seed)
        text_recipe.train_model(make(student), crops, lr=TINY.text.student_lr, config=TINY.text, windows=val,
                                device="cpu", desc="")
        for a, b in zip(student.state_dict().values(), got[name]["model"].state_dict().values()):
            assert torch.equal(a, b), name
        assert got[name]["test_bits_per_char"] == bits_per_char(student, test, "cpu")
    assert got["kd_full"]["test_bits_per_char"] != got["kd_short"]["test_bits_per_char"]
    # one student alone (as a separate process trains it) is the same student
    alone = text_student_job((seed, "kd_short"), TINY, TEXT, teachers)
    assert alone["test_bits_per_char"] == got["kd_short"]["test_bits_per_char"]
    assert alone["val_bits_per_char"] == got["kd_short"]["val_bits_per_char"]
    with pytest.raises(ValueError, match="unknown students"):
        text_teacher_seed(seed, TINY, TEXT, teachers, names=("kd_huge",))


@pytest.mark.slow
def test_text_students_in_parallel_processes_are_the_sequential_ones(tmp_path, one_thread):
    from kd_ref.recipes.seeds import map_seeds
    teachers = {name: t["model"] for name, t in load_text_teachers(TINY, TEXT, root=tmp_path, verbose=False).items()}
    jobs = [(seed, name) for name in ("kd_full", "student_scratch") for seed in (0, 1)]
    sequential = [text_student_job(job, TINY, TEXT, teachers) for job in jobs]
    parallel = map_seeds(text_student_job, jobs, TINY, TEXT, teachers, workers=2)
    for a, b in zip(sequential, parallel):
        assert (a["val_bits_per_char"], a["test_bits_per_char"]) == (b["val_bits_per_char"], b["test_bits_per_char"])
