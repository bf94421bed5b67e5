"""Run profiles: one setting, ``KD_PROFILE``, chooses every size in the course.

``smoke`` runs in seconds (CI), ``cpu`` in minutes on a laptop, ``gpu`` is the full
run; ``auto`` (the default) means ``gpu`` when CUDA is available, else ``cpu``.
"""
from __future__ import annotations

import os

import torch

PROFILES = ("smoke", "cpu", "gpu")


def get_profile(name: str | None = None) -> str:
    """The resolved profile name: ``name``, else ``$KD_PROFILE``, else ``"auto"``.

    Raises ``ValueError`` for a name that is not smoke, cpu, gpu or auto.
    """
    if name is None:
        name = os.environ.get("KD_PROFILE") or "auto"
    resolved = name.strip().lower()
    if resolved == "auto":
        return "gpu" if torch.cuda.is_available() else "cpu"
    if resolved not in PROFILES:
        raise ValueError(f"unknown profile {name!r} (KD_PROFILE); choose one of smoke, cpu, gpu, auto")
    return resolved


def profile_device(profile: str) -> torch.device:
    """``cuda`` for the gpu profile when CUDA is present; ``cpu`` otherwise."""
    return torch.device("cuda" if profile == "gpu" and torch.cuda.is_available() else "cpu")
