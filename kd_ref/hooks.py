"""Capture intermediate outputs of any ``nn.Module`` by module name, without editing it.

    hooks = FeatureHooks(model, ["layer2", "layer3.1.conv2"])
    logits = model(x)
    f = hooks["layer3.1.conv2"]            # output of that submodule in the last forward
    hooks.remove()                          # or use `with FeatureHooks(...) as hooks:`

Names are those of ``model.named_modules()`` (print them with ``module_names(model)``).
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn


def module_names(model: nn.Module) -> list[str]:
    """Every hookable submodule name of ``model``, in registration order."""
    return [name for name, _ in model.named_modules() if name]


class FeatureHooks:
    """Forward hooks that store the output (or input) of named submodules.

    Each forward pass overwrites the stored values, so after ``model(x)`` the dict
    holds that pass's features, with their autograd graph (detach them yourself for
    a teacher, or run the teacher under ``torch.no_grad()``).

    Args:
        model: any ``nn.Module``; it is not modified apart from the hooks.
        names: submodule names, e.g. ``["layer1", "layer2.0.bn1"]``.
        capture: ``"output"`` (default) or ``"input"`` (the first positional input).
    """

    def __init__(self, model: nn.Module, names: Iterable[str], capture: str = "output"):
        if capture not in ("output", "input"):
            raise ValueError(f"capture must be 'output' or 'input', got capture={capture!r}")
        names = [names] if isinstance(names, str) else list(names)
        modules = dict(model.named_modules())
        missing = [n for n in names if n not in modules or n == ""]
        if missing:
            known = module_names(model)
            shown = ", ".join(known[:12]) + (", ..." if len(known) > 12 else "")
            raise ValueError(f"names {missing} not found in {type(model).__name__}; known names: {shown}")
        self.names = names
        self.capture = capture
        self.features: dict[str, torch.Tensor] = {}
        self._handles = [modules[n].register_forward_hook(self._store(n)) for n in names]

    def _store(self, name):
        def hook(module, inputs, output):
            self.features[name] = inputs[0] if self.capture == "input" else output
        return hook

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self.features:
            state = "was not hooked" if name not in self.names else "has not run yet (call the model first)"
            raise KeyError(f"{name!r} {state}")
        return self.features[name]

    def __iter__(self):
        return iter(self.names)

    def values(self) -> list[torch.Tensor]:
        """Captured features in the order of ``names``."""
        return [self[n] for n in self.names]

    def clear(self) -> None:
        self.features.clear()

    def remove(self) -> None:
        """Detach the hooks from the model and drop the stored features."""
        for h in self._handles:
            h.remove()
        self._handles = []
        self.features.clear()

    def __enter__(self) -> "FeatureHooks":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()
