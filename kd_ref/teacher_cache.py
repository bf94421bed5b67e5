"""Character-level GPT teachers trained once and kept on disk, keyed by their settings and seed.

    teacher, info = cached_text_teacher(CONFIGS["cpu"], text, seed=0)
    info["cached"]          # True when it was loaded, False when it was trained just now
    info["train_seconds"]   # what training it cost (measured when it was trained)

A teacher is the expensive part of every text study, and lessons 07, 09, 10 and 11, the
``kd-ref lm`` recipe and repeated runs all want the same one. The cache key is a SHA-256 of
everything that decides the trained weights: the teacher's model settings, its steps,
batch size and optimiser settings, the split (seed and test fraction), the training seed, the corpus
itself (its characters hash), the torch version, the device type and, on the CPU, the number of
torch threads (a different thread count sums in a different order, and training amplifies the
rounding). Change any of them and a new teacher is trained; the old file stays (delete the
folder, :func:`cache_root`, to reclaim the space). So a lesson that sets one thread gets the
teacher it would train itself, whichever lesson ran first, and ``make reproduce`` gives the same
numbers with an empty cache as with a full one.

The teacher is trained exactly as ``kd_ref.recipes.text.run_seed`` trains its own
(``seed_everything(seed)``, a fresh ``CharGPT``, the seeded crops of the training blocks,
``kd_ref.train.fit`` through ``kd_ref.recipes.text.train_model``), so for a given seed it is
the same model that ``kd-ref text`` builds. Files are written atomically (a temporary file,
then a rename) and read with ``torch.load(..., weights_only=True)``.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from .data.text import CharVocab, RandomCrops, ValidationWindows, bits_per_char, split_text
from .distillers import Scratch
from .models import CharGPT
from .train import seed_everything

CACHE_ENV = "KD_TEACHER_CACHE"          # overrides the folder (tests point it at a temporary one)
TEST_FRACTION = 0.1     # kd_ref.recipes.text.TEST_FRACTION (not imported: the recipes import this module)
_KEY_FIELDS = ("context", "teacher_layers", "teacher_width", "n_head", "batch_size", "teacher_steps", "lr",
               "weight_decay", "warmup", "eval_every")


def cache_root(root: str | os.PathLike | None = None) -> Path:
    """``root``, else ``$KD_TEACHER_CACHE``, else the default folder.

    The default is ``runs/teachers/`` of the course's checkout (git-ignored) when ``kd_ref`` is
    imported from one, so notebooks (run from ``notebooks/``) and commands (run from the top)
    share it; for an installed ``kd_ref``, ``~/.cache/kd_ref/teachers``.
    """
    if root or os.environ.get(CACHE_ENV):
        return Path(root or os.environ[CACHE_ENV])
    checkout = Path(__file__).resolve().parents[1]
    if (checkout / "pyproject.toml").exists():
        return checkout / "runs" / "teachers"
    return Path.home() / ".cache" / "kd_ref" / "teachers"


def teacher_key(config, text: str, seed: int, split_seed: int, device="cpu") -> dict:
    """The settings that decide a trained teacher, and their short hash (``key["hash"]``).

    ``device``: where it is (or was) trained; on the CPU the key holds the current
    ``torch.get_num_threads()``, elsewhere ``threads`` is None.
    """
    device_type = torch.device(device).type
    settings = {name: getattr(config, name) for name in _KEY_FIELDS}
    settings.update(seed=int(seed), split_seed=int(split_seed), test_fraction=TEST_FRACTION, torch=torch.__version__.split("+")[0],
                    text_sha256=hashlib.sha256(text.encode("utf-8")).hexdigest()[:16], n_chars=len(text),
                    device=device_type, threads=torch.get_num_threads() if device_type == "cpu" else None)
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    return {**settings, "hash": digest}


def cached_text_teacher(config, text: str, seed: int, *, split_seed: int = 0, device="cpu",
                        root: str | os.PathLike | None = None, verbose: bool = True) -> tuple[CharGPT, dict]:
    """The teacher of ``config`` (a ``kd_ref.recipes.text.TextConfig``) for ``seed``: loaded, or trained and saved.

    Returns ``(teacher, info)``; the teacher is in eval mode on ``device``. ``info`` has the
    key's settings, ``"cached"`` (loaded from disk?), ``"path"``, ``"train_seconds"`` and
    ``"val_bits_per_char"`` (on the validation blocks, measured when it was trained).
    """
    from .recipes.text import train_model      # the recipe's loop and schedule (imported late: no cycle)
    vocab = CharVocab(text)
    key = teacher_key(config, text, seed, split_seed, device)
    folder = cache_root(root)
    path = folder / f"chargpt-{key['hash']}.pt"
    model_config = config.model(len(vocab), "teacher")
    teacher = CharGPT(model_config)
    if path.exists():
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if saved["key"] != key:
            raise ValueError(f"teacher cache {path} holds another teacher ({saved['key']}); delete it")
        teacher.load_state_dict(saved["state"])
        info = {**key, **saved["info"], "cached": True, "path": str(path)}
        if verbose:
            print(f"teacher (seed {seed}) loaded from the teacher cache, entry {path.name} (trained in {info['train_seconds']:.0f} s)")
        return teacher.to(device).eval(), info

    split = split_text(vocab.encode(text), config.context, seed=split_seed, test_fraction=TEST_FRACTION)
    windows = ValidationWindows(split.val, config.context, config.eval_batch_size)
    seed_everything(seed)
    teacher = CharGPT(model_config)                                    # built right after seeding, as the recipe does
    crops = RandomCrops(split.train, config.context, config.batch_size, config.teacher_steps, seed=seed)
    if verbose:
        print(f"training the teacher (seed {seed}, {config.teacher_steps} steps); it will be cached as {path.name}",
              flush=True)
    start = time.perf_counter()
    log = train_model(Scratch(teacher, padding=True), crops, lr=config.lr, config=config, windows=windows,
                      device=device, desc=f"teacher seed {seed}")
    seconds = time.perf_counter() - start
    info = {"train_seconds": round(seconds, 1), "val_bits_per_char": bits_per_char(teacher, windows, device),
            "steps": config.teacher_steps, "history": log["history"]}
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in teacher.state_dict().items()}
    with tempfile.NamedTemporaryFile(dir=folder, suffix=".tmp", delete=False) as handle:
        torch.save({"key": key, "info": info, "state": state}, handle)
    os.replace(handle.name, path)
    return teacher.to(device).eval(), {**key, **info, "cached": False, "path": str(path)}
