"""Checkpoints that survive a kill and load safely.

- **Atomic**: written to ``NAME.tmp`` in the same folder, flushed to disk, then renamed
  over ``NAME`` with ``os.replace`` (atomic on POSIX and Windows). A run killed while
  saving leaves the previous checkpoint intact, never half a file.
- **Safe to load**: ``torch.load(..., weights_only=True)`` unpickles only tensors and
  plain Python values (dict, list, tuple, str, int, float, bool, None), never arbitrary
  objects, so a checkpoint from elsewhere cannot run code. Everything saved here is
  of those types: that is why the NumPy generator state is stored as a tensor.
- **Complete**: with ``rng_state()`` the generators of Python, NumPy and PyTorch (CPU
  and every GPU) are saved too, so a resumed run draws the same random numbers as an
  uninterrupted one.
"""
from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch


def save_checkpoint(path: str | os.PathLike, state: dict) -> None:
    """Write ``state`` to ``path`` atomically (temp file + fsync + ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint with ``weights_only=True``; a damaged file gives a clear ``ValueError``."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as err:
        raise ValueError(f"checkpoint {path} cannot be loaded ({type(err).__name__}: {str(err)[:200]}); "
                         f"delete it to start that run again") from None


def rng_state() -> dict:
    """The state of every global generator, as tensors and plain values."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    """Restore what ``rng_state()`` returned."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
