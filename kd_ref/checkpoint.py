"""Checkpoints that survive a kill and load safely.

- **Atomic**: written to ``NAME.tmp`` in the same folder, flushed to disk, then renamed
  over ``NAME`` with ``os.replace`` (atomic on POSIX and Windows). A run killed while
  saving leaves the previous checkpoint intact, never half a file.
- **Safe to load**: ``torch.load(..., weights_only=True)`` unpickles only tensors and
  plain Python values (dict, list, tuple, str, int, float, bool, None), never arbitrary
  objects, so a checkpoint from elsewhere cannot run code. Everything saved here is
  of those types: that is why the NumPy generator state is stored as a tensor.
- **Complete**: ``TrainState`` holds a training run's whole state; with ``rng_state()`` the generators of Python, NumPy and PyTorch (CPU
  and every GPU) are saved too, so a resumed run draws the same random numbers as an
  uninterrupted one.
"""
from __future__ import annotations

import os
import random
from dataclasses import asdict, dataclass, fields
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


@dataclass
class TrainState:
    """Everything ``kd_ref.train.fit`` needs to continue a run exactly where it stopped.

    ``epoch`` epochs are complete and ``skip`` batches of the next one are already
    trained; ``batches`` is the batch iterator's state at the start of that epoch (so a
    resumed run re-draws the epoch and skips what was done); ``step`` counts every
    optimizer step so far. ``resumes`` lists the steps after which a run was resumed.
    ``run_info`` (plain values) identifies the run: resuming another run is refused.
    """

    run_info: dict | None
    epoch: int
    skip: int
    step: int
    history: list
    resumes: list
    model: dict
    optimizer: dict
    batches: dict | None
    rng: dict

    def save(self, path: str | os.PathLike) -> None:
        save_checkpoint(path, asdict(self))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "TrainState":
        state = load_checkpoint(path)
        names = [f.name for f in fields(cls)]
        if not isinstance(state, dict) or sorted(state) != sorted(names):
            raise ValueError(f"checkpoint {path} is not a training state of this version of kd_ref (keys "
                             f"{sorted(state) if isinstance(state, dict) else type(state).__name__}); delete it "
                             f"to start that run again")
        return cls(**state)
