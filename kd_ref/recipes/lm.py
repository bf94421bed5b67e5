"""``kd-ref lm``: distilling a language model as it is done now, on ``CharGPT`` and the CPython text.

One cached teacher (``kd_ref.teacher_cache``, the ``kd-ref text`` teacher of the same
profile), then, for each seed, students that start from **one** initial student and see
the **same prompts** (the seeded training crops) for the **same number of updates**:

    student_scratch   cross-entropy on the corpus                          (Scratch)
    student_kd        token-level forward KD on the corpus: T^2 KL(p_t || p_s) at every
                      position (+ ce_weight CE), "supervised KD"           (LogitKD)
    student_seqkd     sequence-level KD (Kim & Rush 2016): cross-entropy on continuations
                      the *teacher* generated for training prompts, a fixed pool of
                      samples made once (as DeepSeek-R1's small models were trained on
                      teacher samples)                                      (CompletionCE)
    student_onpolicy  on-policy reverse KL (Gu et al. 2024; Agarwal et al. 2024 at beta = 1):
                      the student continues each prompt itself (no gradient through the
                      sampling), the teacher scores every generated position, and the loss
                      is the exact per-token KL(p_s || p_t) over the vocabulary (OnPolicyKD)
    student_gkd       GKD (Agarwal et al. 2024): a fraction ``lam`` of the rows are the
                      student's own continuations, the rest the corpus's; loss JSD_beta
                      on the continuation positions                         (OnPolicyKD)
    student_init_kd   DistiLBERT's trick (Sanh et al. 2019, section 3): a student as wide as
                      the teacher, initialised from its embeddings, evenly spaced blocks,
                      final LayerNorm and head, then token-level KD         (LogitKD)
    student_wide_kd   the same wide student from a random start + token-level KD: the
                      paired control that says what the initialisation itself buys

Scored on held-out **test** text (the test blocks of ``kd-ref text``'s split; settings are
chosen on its validation blocks): bits per character; the teacher's bits per character on the student's own
samples (how likely the teacher finds what the student writes); the student's entropy on
its own samples (mode seeking lowers it); top-1 agreement with the teacher at each
position of the student's own continuation (exposure bias); and cost (teacher tokens
processed, student tokens sampled, wall seconds).
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import math
import statistics
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..data.batches import SeededBatches
from ..data.text import CharVocab, RandomCrops, ValidationWindows, bits_per_char, load_text, split_text
from ..distillers import Distiller, LogitKD, Scratch
from ..losses import IGNORE_INDEX, generalized_jsd_loss, masked_cross_entropy, reverse_kl_loss
from ..models import CharGPT, count_parameters
from ..report import effect_lines, summarize, text_table
from ..teacher import teacher_forward
from ..teacher_cache import cached_text_teacher
from ..train import cosine_schedule, fit, seed_everything
from .seeds import map_seeds
from .options import CommandError, add_study_options, save_json_option, start_study
from .text import CONFIGS as TEXT_CONFIGS, SPLIT_SEED, TEST_FRACTION

METHODS = ("student_scratch", "student_kd", "student_seqkd", "student_onpolicy", "student_gkd",
           "student_init_kd", "student_wide_kd")


@dataclass(frozen=True)
class LMConfig:
    """The study's settings beyond the model sizes (those come from ``kd_ref.recipes.text.CONFIGS``).

    ``prompt`` characters of corpus text start every sequence; ``new`` characters follow
    (the corpus's, the teacher's or the student's, by method); ``prompt + new <= context``.
    """

    prompt: int = 24
    new: int = 24
    batch_size: int = 16
    steps: int = 100                 # student updates, every method
    lr: float = 1.5e-2               # the text recipe's student learning rate
    warmup: int = 10
    temperature: float = 1.0         # sampling temperature of the students and of the teacher's pool
    pool: int = 256                  # teacher continuations for sequence-level KD
    beta: float = 0.5                # GKD's JSD_beta (beta = weight of the teacher in the mixture)
    lam: float = 0.5                 # GKD's fraction of on-policy rows
    eval_prompts: int = 48           # test prompts whose continuations are scored
    eval_chars: int = 8000           # test characters scored for bits per character


LM_CONFIGS = {
    "smoke": LMConfig(prompt=8, new=16, batch_size=8, steps=12, warmup=2, pool=32, eval_prompts=8, eval_chars=1500),
    "cpu": LMConfig(),
    "gpu": LMConfig(prompt=128, new=128, batch_size=64, steps=2000, lr=2e-3, warmup=200, pool=16384,
                    eval_prompts=512, eval_chars=200000),
}


# -- data ---------------------------------------------------------------------------------------
def lm_split(ids: torch.Tensor, context: int, split_seed: int = SPLIT_SEED):
    """``(train_blocks, val_blocks, test_blocks)``: the text recipe's split (``TEST_FRACTION`` of the blocks for test).

    The same split as ``kd-ref text`` and its cached teacher: the teacher never saw a validation
    or test block. Settings are chosen on ``val``; ``test`` is scored once.
    """
    split = split_text(ids, context, seed=split_seed, test_fraction=TEST_FRACTION)
    return split.train, split.val, split.test


def truncate_blocks(blocks: list[torch.Tensor], chars: int, context: int) -> list[torch.Tensor]:
    """The first ``chars`` characters of ``blocks`` (whole blocks, then a cut one), for a cheaper score."""
    kept, left = [], chars
    for block in blocks:
        if left <= context:
            break
        kept.append(block[:left])
        left -= len(kept[-1])
    return kept or blocks[:1]


def prompts_from(blocks: list[torch.Tensor], n: int, length: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` seeded windows of ``length`` characters, as ``(prompts, corpus continuations)`` halves.

    Returns the full windows ``(n, length)``; callers cut them at the prompt length.
    """
    crops = RandomCrops(blocks, length - 1, n, 1, seed=seed)
    x, y = crops.batch()                                                      # (n, length - 1) each
    return torch.cat([x, y[:, -1:]], dim=1)                                   # (n, length)


class SequenceBatches(SeededBatches):
    """``steps`` seeded batches of rows of a fixed pool of sequences ``(N, L)``, as LM ``(x, y)`` pairs.

    ``x = seq[:, :-1]``, ``y = seq[:, 1:]`` with the targets of the first ``prompt - 1``
    positions set to ``IGNORE_INDEX``: only the continuation is learned.
    """

    def __init__(self, sequences: torch.Tensor, prompt: int, batch_size: int, steps: int, seed: int = 0):
        self.sequences, self.prompt = sequences, prompt
        self.batch_size, self.steps = batch_size, steps
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        for _ in range(self.steps):
            pick = torch.randint(len(self.sequences), (self.batch_size,), generator=self.generator)
            seq = self.sequences[pick]                                        # (B, L)
            y = seq[:, 1:].clone()                                            # (B, L - 1)
            y[:, :self.prompt - 1] = IGNORE_INDEX                             # prompt positions: not learned
            yield seq[:, :-1], y


# -- sampling and counting ------------------------------------------------------------------------
@torch.no_grad()
def sample_continuations(model: CharGPT, prompts: torch.Tensor, new: int, temperature: float = 1.0,
                         generator: torch.Generator | None = None, top_k: int | None = None) -> torch.Tensor:
    """``(B, P + new)``: each prompt ``(B, P)`` continued by ``new`` tokens sampled from ``model``.

    Runs under ``torch.no_grad()`` (and ``CharGPT.generate`` is no-grad itself): the samples
    are integer constants, so nothing downstream can backpropagate into the sampling.
    """
    return model.generate(prompts, new, temperature=temperature, top_k=top_k, generator=generator)


class TokenCounter:
    """Counts the token positions a model processes (``B * T`` per forward call), with a forward pre-hook."""

    def __init__(self, model: nn.Module):
        self.tokens = 0
        self._handle = model.register_forward_pre_hook(self._count)

    def _count(self, module, args):
        self.tokens += int(args[0].numel())

    def remove(self) -> None:
        self._handle.remove()


# -- distillers -----------------------------------------------------------------------------------
class CompletionCE(Distiller):
    """Cross-entropy on the positions whose target is not ``IGNORE_INDEX``; no attention mask.

    Unlike ``Scratch(padding=True)``, ignored positions here are real tokens (a prompt)
    that the model must still *see*: they are only left out of the loss. Sequence-level KD
    (Kim & Rush 2016, "Sequence-Level Knowledge Distillation", EMNLP, section 3.2) is this
    loss on sequences the teacher generated.
    """

    def forward(self, x, y):
        logits = self.student(x)                                              # (B, L, V)
        return logits, {"ce": masked_cross_entropy(logits, y)}


class OnPolicyKD(Distiller):
    """On-policy distillation: the student writes, the teacher grades every token.

    For a batch of corpus windows ``x`` ``(B, L)``: the first ``prompt`` characters of the
    first ``round(lam * B)`` rows are continued by the **student** (``new`` tokens, sampled
    under no_grad at ``temperature``); the other rows keep the corpus's continuation. Both
    models then read the sequences (teacher in eval mode, no graph), and the loss compares
    their next-token distributions at every continuation position, exactly over the
    vocabulary:

    - ``beta = 1`` (and ``lam = 1``): the reverse KL ``KL(p_s || p_t)``
      (:func:`kd_ref.reverse_kl_loss`): on-policy distillation as in MiniLLM (Gu et al.
      2024) and the Qwen3 report, with the exact per-token KL in place of a sampled
      estimate;
    - ``0 < beta < 1``: GKD's ``JSD_beta`` (:func:`kd_ref.generalized_jsd_loss`; Agarwal et
      al. 2024, "On-Policy Distillation of Language Models", ICLR, algorithm 1 with
      student data fraction ``lam``).

    Gradients flow only through the student's logits on the (constant) sampled tokens:
    this is the GKD objective, which does not differentiate through the sampling.
    Counters ``sampled_tokens`` and (from ``TokenCounter``) the teacher's tokens are kept
    for the cost table.
    """

    def __init__(self, student: CharGPT, teacher: CharGPT, prompt: int, new: int, beta: float = 1.0,
                 lam: float = 1.0, temperature: float = 1.0, seed: int = 0, top_k: int | None = None):
        super().__init__(student, teacher)
        if prompt < 1 or new < 1:
            raise ValueError(f"need prompt >= 1 and new >= 1, got prompt={prompt}, new={new}")
        if not 0.0 <= lam <= 1.0:
            raise ValueError(f"lam must be in [0, 1], got lam={lam!r}")
        self.prompt, self.new, self.beta, self.lam = prompt, new, beta, lam
        self.temperature, self.top_k = temperature, top_k
        self.generator = torch.Generator().manual_seed(seed)
        self.sampled_tokens = 0

    def sequences(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``(B, prompt + new)``: student continuations for the first rows, corpus text for the rest."""
        length = self.prompt + self.new
        corpus = torch.cat([x, y[:, -1:]], dim=1)[:, :length]                # (B, length)
        if corpus.size(1) < length:
            raise ValueError(f"windows of {x.size(1) + 1} characters are too short for prompt {self.prompt} "
                             f"+ new {self.new}")
        n_on = round(self.lam * x.size(0))
        if n_on == 0:
            return corpus
        generator = self.generator if x.device.type == "cpu" else None
        own = sample_continuations(self.student, corpus[:n_on, :self.prompt], self.new, self.temperature,
                                   generator, self.top_k)                    # (n_on, length), constant
        self.sampled_tokens += n_on * self.new
        return torch.cat([own, corpus[n_on:]], dim=0)                         # (B, length)

    def forward(self, x, y):
        seq = self.sequences(x, y)                                            # (B, P + N)
        inp = seq[:, :-1]                                                     # (B, P + N - 1)
        mask = torch.zeros_like(inp, dtype=torch.bool)
        mask[:, self.prompt - 1:] = True                                      # positions predicting new tokens
        logits = self.student(inp)                                            # (B, P + N - 1, V)
        teacher_logits = teacher_forward(self.teacher, inp)                   # same shape, no graph
        if self.beta == 1.0:
            return logits, {"reverse_kl": reverse_kl_loss(logits, teacher_logits, mask=mask)}
        return logits, {"jsd": generalized_jsd_loss(logits, teacher_logits, beta=self.beta, mask=mask)}


def init_from_teacher(teacher: CharGPT, n_layer: int) -> CharGPT:
    """A student of ``n_layer`` blocks *as wide as the teacher*, initialised from the teacher's weights.

    DistilBERT (Sanh, Debut, Chaumond & Wolf 2019, section 3, "Student initialization")
    keeps the teacher's width and takes one layer out of two. Here: the token and
    position embeddings, the final LayerNorm and the head are copied, and student block i
    is teacher block ``round(i * (L_t - 1) / (L_s - 1))`` (evenly spaced, first and last
    included; for 2 of 4 blocks: 0 and 3). Returns a new trainable model.
    """
    t = teacher.config
    if not 1 <= n_layer <= t.n_layer:
        raise ValueError(f"n_layer must be in 1..{t.n_layer} (the teacher's depth), got n_layer={n_layer}")
    student = CharGPT(dataclasses.replace(t, n_layer=n_layer))
    picks = [0] if n_layer == 1 else [round(i * (t.n_layer - 1) / (n_layer - 1)) for i in range(n_layer)]
    state = teacher.state_dict()
    new_state = {}
    for name in student.state_dict():
        if name.startswith("blocks."):
            _, i, rest = name.split(".", 2)
            new_state[name] = state[f"blocks.{picks[int(i)]}.{rest}"].clone()
        else:
            new_state[name] = state[name].clone()
    student.load_state_dict(new_state)
    student.requires_grad_(True)
    return student.train()


# -- scores ---------------------------------------------------------------------------------------
@torch.no_grad()
def sample_scores(model: CharGPT, teacher: CharGPT, prompts: torch.Tensor, new: int, temperature: float = 1.0,
                  seed: int = 0, batch_size: int = 64) -> dict:
    """How the teacher judges the model's own continuations of ``prompts`` ``(N, P)``.

    Returns ``teacher_bits_per_char`` (the teacher's cross-entropy of the sampled
    characters, in bits), ``entropy_bits`` (the model's own mean next-token entropy on
    them), ``agreement`` (mean top-1 agreement of model and teacher at the continuation
    positions) and ``agreement_by_position`` (a list of ``new``: agreement at generated
    position k, i.e. after k generated characters; exposure bias shows as a decline).
    """
    generator = torch.Generator().manual_seed(seed)
    was_training = model.training
    P = prompts.size(1)
    bits, entropy, agree = [], [], []
    for chunk in prompts.split(batch_size):
        seq = sample_continuations(model, chunk, new, temperature, generator)  # (b, P + new)
        inp, target = seq[:, :-1], seq[:, 1:]                                  # (b, P + new - 1)
        s = teacher_forward(model, inp)[:, P - 1:].float()                     # (b, new, V)
        t = teacher_forward(teacher, inp)[:, P - 1:].float()                   # (b, new, V)
        log_t = F.log_softmax(t, -1)
        bits.append(-log_t.gather(-1, target[:, P - 1:, None])[..., 0] / math.log(2))   # (b, new)
        log_s = F.log_softmax(s, -1)
        entropy.append(-(log_s.exp() * log_s).sum(-1) / math.log(2))                 # (b, new)
        agree.append((s.argmax(-1) == t.argmax(-1)).float())                           # (b, new)
    model.train(was_training)
    bits, entropy, agree = torch.cat(bits), torch.cat(entropy), torch.cat(agree)
    return {"teacher_bits_per_char": bits.mean().item(), "entropy_bits": entropy.mean().item(),
            "agreement": agree.mean().item(), "agreement_by_position": agree.mean(0).tolist()}


# -- one seed ------------------------------------------------------------------------------------------
@dataclass
class LMData:
    """What every seed shares: the vocabulary, the blocks, the scoring windows and prompts, the teacher's pool."""

    vocab: CharVocab
    train: list
    val_windows: ValidationWindows
    test_windows: ValidationWindows
    val_prompts: torch.Tensor
    test_prompts: torch.Tensor


def prepare_data(text: str, config, lm: LMConfig) -> LMData:
    """Split the corpus (``lm_split``), build the scoring windows and the fixed scoring prompts."""
    vocab = CharVocab(text)
    train, val, test = lm_split(vocab.encode(text), config.context)
    length = lm.prompt + lm.new
    return LMData(
        vocab=vocab, train=train,
        val_windows=ValidationWindows(truncate_blocks(val, lm.eval_chars, config.context), config.context,
                                      config.eval_batch_size),
        test_windows=ValidationWindows(truncate_blocks(test, lm.eval_chars, config.context), config.context,
                                       config.eval_batch_size),
        val_prompts=prompts_from(val, lm.eval_prompts, length, seed=1)[:, :lm.prompt],
        test_prompts=prompts_from(test, lm.eval_prompts, length, seed=2)[:, :lm.prompt],
    )


def teacher_pool(teacher: CharGPT, data: LMData, lm: LMConfig, seed: int = 0) -> tuple[torch.Tensor, dict]:
    """Sequence-level KD's data: ``lm.pool`` training prompts continued by the teacher; and its cost."""
    prompts = prompts_from(data.train, lm.pool, lm.prompt + lm.new, seed=10_000 + seed)[:, :lm.prompt]
    counter = TokenCounter(teacher)
    start = time.perf_counter()
    generator = torch.Generator().manual_seed(seed)
    pool = torch.cat([sample_continuations(teacher, chunk, lm.new, lm.temperature, generator)
                      for chunk in prompts.split(256)])                         # (pool, P + new)
    counter.remove()
    teacher.eval()
    return pool, {"teacher_tokens": counter.tokens, "sampled_tokens": lm.pool * lm.new,
                  "seconds": time.perf_counter() - start}


def cached_teacher_pool(teacher: CharGPT, teacher_info: dict, data: LMData, lm: LMConfig, seed: int = 0,
                        verbose: bool = True) -> tuple[torch.Tensor, dict]:
    """:func:`teacher_pool`, kept beside the cached teacher (``kd_ref.teacher_cache``) and reused.

    The file is named after the teacher's file and the pool's settings (prompt, new, pool
    size, temperature, seed); ``cost`` is what generating it took when it was made, plus
    ``"cached"``. Like DeepSeek-R1's distillation data, the teacher's samples are made once.
    """
    key = f"{lm.prompt}-{lm.new}-{lm.pool}-{lm.temperature:g}-{seed}"
    path = Path(teacher_info["path"]).with_suffix(f".pool-{key}.pt")
    if path.exists():
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if verbose:
            print(f"teacher pool loaded from the cache: {path.name}")   # no local path in saved outputs
        return saved["pool"], {**saved["cost"], "cached": True}
    pool, cost = teacher_pool(teacher, data, lm, seed)
    torch.save({"pool": pool, "cost": cost}, path)
    return pool, {**cost, "cached": False}


def make_student(name: str, initial: CharGPT, initial_wide: CharGPT, teacher: CharGPT, config, lm: LMConfig,
                 seed: int):
    """The distiller of a method (see the module docstring); students are copies of the shared starts."""
    kd = dict(T=config.T, kd_weight=config.kd_weight, ce_weight=config.ce_weight, padding=True)
    if name == "student_scratch":
        return Scratch(copy.deepcopy(initial), padding=True)
    if name == "student_kd":
        return LogitKD(copy.deepcopy(initial), teacher, **kd)
    if name == "student_seqkd":
        return CompletionCE(copy.deepcopy(initial))
    if name == "student_onpolicy":
        return OnPolicyKD(copy.deepcopy(initial), teacher, lm.prompt, lm.new, beta=1.0, lam=1.0,
                          temperature=lm.temperature, seed=seed)
    if name == "student_gkd":
        return OnPolicyKD(copy.deepcopy(initial), teacher, lm.prompt, lm.new, beta=lm.beta, lam=lm.lam,
                          temperature=lm.temperature, seed=seed)
    if name == "student_init_kd":
        return LogitKD(init_from_teacher(teacher, config.student_layers), teacher, **kd)
    if name == "student_wide_kd":
        return LogitKD(copy.deepcopy(initial_wide), teacher, **kd)
    raise ValueError(f"unknown method {name!r}; choose from {', '.join(METHODS)}")


def run_lm_seed(seed: int, teacher: CharGPT, data: LMData, config, lm: LMConfig, methods=METHODS,
                pool: torch.Tensor | None = None, split: str = "test", device="cpu", on_model=None) -> dict:
    """Train every method of ``methods`` from the seed's initial student; score it on ``split``.

    Returns ``{name: {"bits_per_char", "teacher_bits_per_char", "entropy_bits", "agreement",
    "agreement_by_position", "teacher_tokens", "sampled_tokens", "seconds", "parameters",
    "history"}}``. ``pool`` (teacher continuations, :func:`teacher_pool`) is needed by
    ``student_seqkd``; its generation cost is not included here (it is paid once).
    """
    if split not in ("val", "test"):
        raise ValueError(f"split must be 'val' or 'test', got {split!r}")
    windows, prompts = ((data.val_windows, data.val_prompts) if split == "val"
                        else (data.test_windows, data.test_prompts))
    seed_everything(seed)
    initial = CharGPT(config.model(len(data.vocab), "student"))
    initial_wide = CharGPT(dataclasses.replace(teacher.config, n_layer=config.student_layers))
    results = {}
    for name in methods:
        if name == "student_seqkd" and pool is None:
            raise ValueError("student_seqkd needs the teacher's pool of continuations (teacher_pool)")
        distiller = make_student(name, initial, initial_wide, teacher, config, lm, seed)
        if name == "student_seqkd":
            batches = SequenceBatches(pool, lm.prompt, lm.batch_size, lm.steps, seed=1000 + seed)
        else:
            batches = RandomCrops(data.train, config.context, lm.batch_size, lm.steps, seed=1000 + seed)
        counter = TokenCounter(teacher)
        start = time.perf_counter()
        with distiller:
            history = fit(distiller, batches, lr=cosine_schedule(lm.lr, lm.steps, lm.warmup, final=lm.lr / 10),
                          optimizer=partial(torch.optim.AdamW, betas=(0.9, 0.99), weight_decay=config.weight_decay),
                          grad_clip=1.0, device=device, autocast_dtype="auto", desc=f"seed {seed} {name}")
        seconds = time.perf_counter() - start
        counter.remove()
        teacher.eval()
        student = distiller.student.eval()
        scores = sample_scores(student, teacher, prompts.to(device), lm.new, lm.temperature, seed=seed)
        results[name] = {
            "bits_per_char": bits_per_char(student, windows, device), **scores,
            "teacher_tokens": counter.tokens, "sampled_tokens": getattr(distiller, "sampled_tokens", 0),
            "seconds": seconds, "parameters": count_parameters(student), "history": history,
        }
        if on_model is not None:
            on_model(name, results[name])
    return results


def gkd_validation(beta: float, teacher: CharGPT, data: LMData, config, lm: LMConfig, seed: int = 0) -> dict:
    """One GKD student with ``beta``, scored on the **validation** half (for choosing beta); its results."""
    trial = dataclasses.replace(lm, beta=beta)
    return run_lm_seed(seed, teacher, data, config, trial, ("student_gkd",), split="val")["student_gkd"]


def teacher_scores(teacher: CharGPT, data: LMData, lm: LMConfig, split: str = "test", seed: int = 0) -> dict:
    """The teacher's own row: bits per character and the scores of its own samples."""
    windows, prompts = ((data.val_windows, data.val_prompts) if split == "val"
                        else (data.test_windows, data.test_prompts))
    scores = sample_scores(teacher, teacher, prompts, lm.new, lm.temperature, seed=seed)
    teacher.eval()
    return {"bits_per_char": bits_per_char(teacher, windows), **scores}


METRICS = ("bits_per_char", "teacher_bits_per_char", "entropy_bits", "agreement", "seconds")


def summarize_lm(per_seed: list[dict], teacher_row: dict | None = None) -> list[dict]:
    """JSON rows (mean, std over seeds) of every method and metric; the teacher first (one model, n = 1)."""
    rows = []
    if teacher_row is not None:
        rows += [summarize("teacher", m, [teacher_row[m]]) for m in ("bits_per_char", "teacher_bits_per_char",
                                                                     "entropy_bits")]
    for name in per_seed[0]:
        for metric in METRICS:
            rows.append(summarize(name, metric, [run[name][metric] for run in per_seed]))
    return rows


def format_lm(per_seed: list[dict], teacher_row: dict | None = None) -> str:
    """The results table: one line per method, mean ± std over seeds, then the cost columns."""
    def cell(name, metric, digits=3):
        values = [run[name][metric] for run in per_seed]
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.fmean(values):.{digits}f} ± {std:.{digits}f}"
    lines = []
    if teacher_row is not None:
        lines.append(["teacher", f"{teacher_row['bits_per_char']:.3f}", f"{teacher_row['teacher_bits_per_char']:.3f}",
                      f"{teacher_row['entropy_bits']:.3f}", "-", "|", "-", "-", "-"])
    for name in per_seed[0]:
        r0 = per_seed[0][name]
        lines.append([name, cell(name, "bits_per_char"), cell(name, "teacher_bits_per_char"),
                      cell(name, "entropy_bits"), cell(name, "agreement"), "|",
                      f"{r0['teacher_tokens'] / 1e3:,.0f}k", f"{r0['sampled_tokens'] / 1e3:,.1f}k",
                      f"{statistics.fmean(run[name]['seconds'] for run in per_seed):.0f}"])
    return text_table(["name", "bits/char", "teacher bits/char on own samples", "own entropy (bits)",
                       "top-1 agreement", "|", "teacher tokens", "sampled tokens", "train s"], lines, separators=[5])


COMPARISONS = [
    ("student_kd", "student_scratch", "token-level KD over scratch"),
    ("student_seqkd", "student_scratch", "sequence-level KD over scratch"),
    ("student_onpolicy", "student_kd", "on-policy reverse KL over token-level KD"),
    ("student_gkd", "student_kd", "GKD over token-level KD"),
    ("student_init_kd", "student_wide_kd", "teacher-layer initialisation, same wide student"),
]


def effects(per_seed: list[dict], metric: str = "bits_per_char") -> list[str]:
    """The paired comparisons of ``COMPARISONS`` present in ``per_seed`` (lower is better)."""
    present = [c for c in COMPARISONS if c[0] in per_seed[0] and c[1] in per_seed[0]]
    return effect_lines(per_seed, present, metric, digits=3, lower_is_better=True)


# -- command -------------------------------------------------------------------------------------------
def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "lm", help="language-model distillation now: token KD, sequence KD, on-policy reverse KL, GKD, init",
        description="A cached CharGPT teacher, then students from one initial student for the same number of "
                    "updates on the same prompts: " + ", ".join(METHODS) + ". Scores on held-out test text.")
    add_study_options(parser, seeds=3)
    parser.add_argument("--methods", default=",".join(METHODS),
                        help=f"comma-separated subset of {','.join(m.removeprefix('student_') for m in METHODS)}")
    parser.add_argument("--text", metavar="FILE", help="a UTF-8 text file (default: CPython's pydoc_data.topics)")
    parser.add_argument("--teacher-cache", metavar="DIR", default=None,
                        help="where trained teachers are kept (default: $KD_TEACHER_CACHE, else runs/teachers)")
    parser.set_defaults(run=run)


def parse_methods(text: str) -> tuple[str, ...]:
    """``"kd,onpolicy"`` -> ``("student_kd", "student_onpolicy")``; unknown names raise ``CommandError``."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    chosen = []
    for n in names:
        full = n if n.startswith("student_") else f"student_{n}"
        if full not in METHODS:
            raise CommandError(f"unknown method {n!r} in --methods; choose from "
                               f"{', '.join(m.removeprefix('student_') for m in METHODS)}")
        chosen.append(full)
    if not chosen:
        raise CommandError("--methods is empty")
    return tuple(dict.fromkeys(chosen))


def run(args: argparse.Namespace) -> int:
    """The ``lm`` subcommand: teacher (cached), pool, every seed's students; print and save the results."""
    methods = parse_methods(args.methods)
    profile, device = start_study(args)
    if device.type == "cpu" and profile == "smoke":
        torch.set_num_threads(1)
    config, lm = TEXT_CONFIGS[profile], LM_CONFIGS[profile]
    try:
        text, source = load_text(args.text)
        data = prepare_data(text, config, lm)
    except ValueError as err:
        raise CommandError(err) from None
    began = time.perf_counter()
    print(f"kd-ref lm | profile {profile} | device {device} | seeds 0..{args.seeds - 1} | methods "
          f"{', '.join(methods)}")
    teacher, info = cached_text_teacher(config, text, seed=0, split_seed=SPLIT_SEED, device=device,
                                        root=args.teacher_cache)
    pool = None
    if "student_seqkd" in methods:
        pool, cost = cached_teacher_pool(teacher, info, data, lm)
        print(f"sequence-level KD pool: {lm.pool} teacher continuations of {lm.new} characters "
              f"({cost['teacher_tokens'] / 1e3:,.0f}k teacher tokens, {cost['seconds']:.0f} s, paid once)")
    if device.type == "cpu":       # seeds side by side, one process per core (kd_ref.recipes.seeds)
        per_seed = map_seeds(run_lm_seed, range(args.seeds), teacher, data, config, lm, methods, pool)
    else:
        per_seed = [run_lm_seed(seed, teacher, data, config, lm, methods, pool=pool, device=device)
                    for seed in range(args.seeds)]
    for seed, results in enumerate(per_seed):
        print(f"  seed {seed}: " + ", ".join(f"{n} {r['bits_per_char']:.3f}" for n, r in results.items())
              + " (test bits/char)")
    teacher_row = teacher_scores(teacher, data, lm)
    seconds = time.perf_counter() - began
    print()
    print(format_lm(per_seed, teacher_row))
    print(f"(test split, mean ± std over {args.seeds} seed(s); right of |: cost of seed 0's training and "
          f"the mean training seconds on this machine; {seconds:.0f} s in all)")
    lines = effects(per_seed)
    if lines:
        print("\nEffects on test bits/char (lower is better; paired over seeds):")
        print("\n".join(lines))
    if profile == "smoke":
        print("\nprofile smoke: tiny sizes, numbers not meaningful; run with --profile cpu for the real study")
    data_line = (f"{source}: {len(text):,} characters; {len(data.train)} training blocks, validation and test "
                 f"blocks of the text recipe's split (split seed {SPLIT_SEED})")
    save_json_option(args.json, profile=profile, data=data_line, device=str(device), seconds=seconds,
                     rows=summarize_lm(per_seed, teacher_row),
                     settings={"text": dataclasses.asdict(config), "lm": dataclasses.asdict(lm),
                               "methods": list(methods)})
    return 0
