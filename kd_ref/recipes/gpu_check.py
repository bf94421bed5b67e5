"""``kd-ref bench gpu`` (``make gpu-check``): what the gpu profiles cost on this CUDA device.

One command, no network, a few minutes: it prints

1. CIFAR, gpu profile (``kd_ref.recipes.cifar.CONFIGS["gpu"]``): training steps of the
   teacher (resnet32x4, cross-entropy) and of the KD student (resnet8x4 with the teacher's
   forward pass), batch 64, bf16 autocast, channels-last, on generated uint8 images of
   CIFAR's size kept on the device (``DeviceBatches``, random crop and flip): images/s,
   and the epoch time that rate gives for 45,000 training images;
2. bf16 against fp32 on one batch (the KD student's loss and gradient, same weights; fp32
   with TF32 switched off): relative loss difference, gradient cosine and norm ratio;
3. ``torch.compile``: the KD student's training step compiled (``--compile`` of
   ``kd-ref cifar``) against eager, after a warm-up that pays the compilation;
4. peak GPU memory of each phase (``torch.cuda.max_memory_allocated``);
5. text, gpu profile (``kd_ref.recipes.text.CONFIGS["gpu"]``): training tokens/s of the
   CharGPT teacher and of the token-KD student on random token ids.

Rates are measured over a fixed number of steps after a warm-up, so the whole check fits
in ``--max-seconds`` (default 270 s); a phase that would start after that is skipped and
says so. Without CUDA it prints that nothing was measured and exits 0.

It runs from a source tree (``PYTHONPATH=. python3 -m kd_ref bench gpu``) on a plain
PyTorch image: it needs torch, numpy and tqdm, nothing else (no SciPy, no scikit-learn).
"""
from __future__ import annotations

import copy
import time
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from ..data.device_pipeline import DeviceBatches
from ..distillers import Scratch
from ..models.resnet_cifar import cifar_resnet

CIFAR_TRAIN = 45_000       # the gpu profile's training images (50,000 less the validation split)
CIFAR_CLASSES = 100        # the benchmark pair is trained on CIFAR-100
TEXT_VOCAB = 100           # about the character count of the course's corpus


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def _fp32_exact():
    """fp32 without TF32 (convolutions and matmuls), restored afterwards."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _steps_per_second(distiller, batches, steps: int, warmup: int, lr: float = 0.05) -> float:
    """Training steps per second of ``distiller`` (SGD, bf16 autocast), after ``warmup`` steps.

    The device is the distiller's; ``warmup`` is capped by the module-level ``_WARMUP_CAP``
    (the CPU dry run of the tests sets it to 1).
    """
    warmup = min(warmup, _WARMUP_CAP)
    device = next(distiller.parameters()).device
    params = [p for p in distiller.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=5e-4)
    distiller.train()
    done, start = 0, None
    while True:
        for x, y in batches:
            if done == warmup:
                _sync(device)
                start = time.perf_counter()
            with torch.autocast(device.type, dtype=torch.bfloat16):
                _, terms = distiller(x, y)
            opt.zero_grad(set_to_none=True)
            sum(terms.values()).backward()
            opt.step()
            done += 1
            if done == warmup + steps:
                _sync(device)
                return steps / (time.perf_counter() - start)


class _Phases:
    """Runs the check's phases in order within a time budget; records peak memory per phase."""

    def __init__(self, budget: float, device: torch.device, skip=()):
        self.start, self.budget, self.memory = time.perf_counter(), budget, {}
        self.device, self.skip, self.failed = device, set(skip), []

    def run(self, name: str, phase, *args) -> None:
        elapsed = time.perf_counter() - self.start
        if name in self.skip or elapsed > self.budget:
            print(f"[{name}] skipped" + ("" if name in self.skip else
                                          f": {elapsed:.0f} s spent, over the budget of {self.budget:.0f} s"))
            return
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        try:
            phase(*args)
        except Exception as err:          # one failing phase must not hide the others' figures
            print(f"[{name}] FAILED: {type(err).__name__}: {err}")
            self.failed.append(name)
        if cuda:
            self.memory[name] = torch.cuda.max_memory_allocated() / 2**30
        print(f"[{name}] {time.perf_counter() - t0:.0f} s" + (f", peak memory {self.memory[name]:.2f} GiB" if cuda else ""),
              flush=True)


_WARMUP_CAP = 10**9


def _cifar_batches(device: torch.device, n: int, seed: int = 0) -> DeviceBatches:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)     # CIFAR's size and type
    labels = torch.randint(0, CIFAR_CLASSES, (n,), generator=g)
    return DeviceBatches(images, labels, 64, mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762),
                         device=device, augment=True, shuffle=True, seed=seed, drop_last=True)


def _cifar_models(config, device):
    torch.manual_seed(0)
    teacher = cifar_resnet(config.teacher, CIFAR_CLASSES).to(device, memory_format=torch.channels_last)
    student = cifar_resnet(config.student, CIFAR_CLASSES).to(device, memory_format=torch.channels_last)
    return teacher, student


def run_check(steps: int = 100, budget: float = 270.0, *, device: str | None = None,
              images: int = CIFAR_TRAIN, skip=()) -> int:
    """Print the figures (see the module docstring); returns 0, also without CUDA.

    ``device``, ``images`` and ``skip`` (phase names) exist for the tests' CPU dry run
    (``device="cpu"``): every phase but ``torch.compile`` runs there with 1 warm-up step.
    """
    global _WARMUP_CAP
    print(f"kd-ref bench gpu | torch {torch.__version__} | CUDA available: {torch.cuda.is_available()}")
    if device is None and not torch.cuda.is_available():
        print("no CUDA device: nothing measured (this check needs a GPU; run it there with `make gpu-check`)")
        return 0
    device = torch.device(device or "cuda")
    _WARMUP_CAP = 10**9 if device.type == "cuda" else 1
    from .cifar import CONFIGS as CIFAR_CONFIGS, make_distiller
    from .text import CONFIGS as TEXT_CONFIGS, make_distiller as make_text_distiller
    from ..models import CharGPT

    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        print(f"device: {torch.cuda.get_device_name(device)}, {props.total_memory / 2**30:.0f} GiB, CUDA "
              f"{torch.version.cuda}, bf16 supported: {torch.cuda.is_bf16_supported()}")
        torch.backends.cudnn.benchmark = True
    else:
        print(f"device: {device} (a dry run of the check's code: these figures are not the GPU's)")
    config = CIFAR_CONFIGS["gpu"]
    steps_per_epoch = CIFAR_TRAIN // config.batch_size
    phases = _Phases(budget, device, skip)
    batches = _cifar_batches(device, images)
    example = next(iter(batches))[0][:2]
    rates = {}

    def cifar(name):
        teacher, student = _cifar_models(config, device)
        distiller = Scratch(teacher) if name == "teacher" else make_distiller("kd", student, teacher, config, example)
        per_s = _steps_per_second(distiller, batches, steps, warmup=20)
        rates[name] = per_s
        print(f"cifar gpu profile, {name:<10} ({config.teacher if name == 'teacher' else config.student}): "
              f"{per_s * config.batch_size:,.0f} images/s, {steps_per_epoch / per_s:.1f} s per epoch of "
              f"{CIFAR_TRAIN:,} images ({steps} steps measured, batch {config.batch_size}, bf16, channels-last)")

    def precision():
        teacher, student = _cifar_models(config, device)
        x, y = next(iter(batches))
        results = {}
        for label, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
            distiller = make_distiller("kd", copy.deepcopy(student), teacher, config, example)
            distiller.train()
            with _fp32_exact(), torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
                _, terms = distiller(x, y)
            loss = sum(terms.values())
            loss.backward()
            grad = torch.cat([p.grad.float().flatten() for p in distiller.student.parameters()])
            results[label] = (loss.item(), grad)
        (l32, g32), (l16, g16) = results["fp32"], results["bf16"]
        cosine = F.cosine_similarity(g32, g16, dim=0).item()
        print(f"bf16 vs fp32, KD student, one batch of 64: loss {l32:.5f} vs {l16:.5f} (relative difference "
              f"{abs(l16 - l32) / abs(l32):.2e}); gradient cosine {cosine:.5f}, norm ratio "
              f"{(g16.norm() / g32.norm()).item():.4f}")

    def compiled():
        teacher, student = _cifar_models(config, device)
        eager = make_distiller("kd", copy.deepcopy(student), teacher, config, example)
        eager_rate = _steps_per_second(eager, batches, steps, warmup=20)
        fast = make_distiller("kd", copy.deepcopy(student), teacher, config, example)
        fast.student.compile()                                      # what `kd-ref cifar --compile` does
        t0 = time.perf_counter()
        _steps_per_second(fast, batches, 1, warmup=2)               # pays the compilation
        compile_s = time.perf_counter() - t0
        fast_rate = _steps_per_second(fast, batches, steps, warmup=5)
        print(f"torch.compile, KD student step: eager {eager_rate * config.batch_size:,.0f} images/s, compiled "
              f"{fast_rate * config.batch_size:,.0f} images/s: speed-up {fast_rate / eager_rate:.2f}x "
              f"(compilation and warm-up {compile_s:.0f} s)")

    def text(name):
        tc = TEXT_CONFIGS["gpu"]
        torch.manual_seed(0)
        teacher = CharGPT(tc.model(TEXT_VOCAB, "teacher")).to(device)
        student = CharGPT(tc.model(TEXT_VOCAB, "student")).to(device)
        distiller = Scratch(teacher, padding=True) if name == "teacher" else make_text_distiller(
            "student_kd", student, teacher, tc)
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(0, TEXT_VOCAB, (8, tc.batch_size, tc.context + 1), generator=g).to(device)
        batches = [(b[:, :-1], b[:, 1:]) for b in ids]              # 8 distinct batches, reused
        per_s = _steps_per_second(distiller, batches, steps, warmup=10, lr=tc.lr)
        tokens = tc.batch_size * tc.context
        total = tc.teacher_steps if name == "teacher" else tc.student_steps
        print(f"text gpu profile, {name:<10} ({'teacher' if name == 'teacher' else 'student'} "
              f"{tc.teacher_layers if name == 'teacher' else tc.student_layers} layers, width "
              f"{tc.teacher_width if name == 'teacher' else tc.student_width}): {per_s * tokens:,.0f} tokens/s; "
              f"its {total:,} steps would take {total / per_s / 60:.1f} min")

    phases.run("cifar teacher", cifar, "teacher")
    phases.run("cifar KD student", cifar, "kd")
    phases.run("bf16 vs fp32", precision)
    phases.run("text teacher", text, "teacher")
    phases.run("text KD student", text, "kd")
    phases.run("torch.compile", compiled)
    if {"teacher", "kd"} <= rates.keys():
        epochs = config.teacher_epochs
        seed_hours = (epochs * steps_per_epoch / rates["teacher"]
                      + 7 * config.student_epochs * steps_per_epoch / rates["kd"]) / 3600
        print(f"estimate: one seed of `kd-ref cifar --profile gpu` (teacher + 7 students x {epochs} epochs, "
              f"each student costed as the KD one) {seed_hours:.1f} h, validation excluded")
    if phases.memory:
        print("peak memory by phase (GiB): " + ", ".join(f"{k} {v:.2f}" for k, v in phases.memory.items()))
    print(f"total {time.perf_counter() - phases.start:.0f} s"
          + (f"; phases that failed: {', '.join(phases.failed)}" if phases.failed else "; every phase ran"))
    return 0

