"""Do two computations of the same number agree? The lessons' ``cmp`` helper, defined once.

A lesson checks each ``kd_ref`` number against a second, independent computation (NumPy, a
formula written out, finite differences). :func:`cmp` prints one line for one such check::

    softmax_steps vs kd_ref.softmax_t        exact: True  | approx: True  | maxdiff: < 1e-12

and :func:`agree` prints **one line for a group** of checks, listing only the ones that fail::

    with agree("softmax_steps vs kd_ref.softmax_t, T = 0.5, 1, 4, 20") as check:
        for T in (0.5, 1.0, 4.0, 20.0):
            check(f"T = {T}", softmax_steps(z, T), kd_ref.softmax_t(z, T))
    # softmax_steps vs kd_ref.softmax_t, T = 0.5, 1, 4, 20: 4 of 4 agree | exact: 4 of 4 | maxdiff: < 1e-12

The words mean:

- ``exact``: identical after rounding both sides to float32. Two float64 computations that take
  different routes usually differ in their last bit or two, and *which* bits can change from one
  CPU to another; float32 rounding hides that, so the saved outputs are the same on every machine.
  ``exact=False`` (finite differences, which are only accurate to about 1e-10) prints ``n/a``.
- ``approx``: every element within ``atol`` (absolute, no relative part).
- ``maxdiff``: the largest absolute difference, printed as ``< floor`` below ``floor`` (for the
  same reason as ``exact``).

Inputs may be tensors (with or without gradients), NumPy arrays, lists or Python numbers; they
are compared in float64 after broadcasting to a common shape. Both sides NaN in the same place
count as agreeing; a NaN on one side only never does.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["Agreement", "agree", "cmp", "compare_values"]

NAME_WIDTH = 46


@dataclass(frozen=True)
class Agreement:
    """The outcome of one comparison (see the module docstring for what each field means)."""

    name: str
    exact: bool | None          # None when exactness was not asked
    approx: bool
    maxdiff: float
    floor: float

    @property
    def ok(self) -> bool:
        """Agrees: within ``atol``, and identical at float32 when that was asked."""
        return self.approx and self.exact is not False

    def shown_maxdiff(self) -> str:
        return _shown(self.maxdiff, self.floor)

    def line(self, width: int = NAME_WIDTH) -> str:
        exact = "n/a" if self.exact is None else str(self.exact)
        return (f"{self.name:<{width}} exact: {exact:<5} | approx: {self.approx!s:<5} | "
                f"maxdiff: {self.shown_maxdiff()}")


def _shown(d: float, floor: float) -> str:
    if np.isnan(d):
        return "nan"
    return f"< {floor:.0e}" if d < floor else f"{d:.1e}"


def _as_float64(x) -> torch.Tensor:
    if torch.is_tensor(x):
        return x.detach().cpu().to(torch.float64)
    return torch.as_tensor(np.asarray(x, dtype=np.float64))


def compare_values(name: str, a, b, *, atol: float = 1e-10, floor: float = 1e-12, exact: bool = True) -> Agreement:
    """Compare ``a`` with ``b`` without printing; see the module docstring."""
    if atol < 0 or floor <= 0:
        raise ValueError(f"atol must be >= 0 and floor > 0, got atol={atol}, floor={floor}")
    a, b = _as_float64(a), _as_float64(b)
    try:
        a, b = torch.broadcast_tensors(a, b)
    except RuntimeError:
        raise ValueError(f"{name}: the two sides have shapes {tuple(a.shape)} and {tuple(b.shape)}, "
                         "which do not broadcast") from None
    both_nan = a.isnan() & b.isnan()
    diff = torch.where(both_nan, torch.zeros_like(a), (a - b).abs())
    maxdiff = float(diff.max()) if diff.numel() else 0.0
    approx = bool(torch.allclose(a, b, rtol=0.0, atol=atol, equal_nan=True))
    same32 = bool(torch.equal(a.float().nan_to_num(nan=0.0), b.float().nan_to_num(nan=0.0))
                  and torch.equal(a.isnan(), b.isnan())) if exact else None
    return Agreement(name, same32, approx, maxdiff, floor)


def cmp(name: str, a, b, *, atol: float = 1e-10, floor: float = 1e-12, exact: bool = True) -> None:
    """Compare two computations of the same quantity and print one line (:func:`compare_values` returns it)."""
    print(compare_values(name, a, b, atol=atol, floor=floor, exact=exact).line())


class agree:  # noqa: N801 - used as a context manager, like open()
    """A group of checks that prints one line when it ends (and a line for each check that fails).

    ``check(name, a, b, atol=None, exact=None)`` compares like :func:`cmp` without printing;
    ``atol``, ``floor`` and ``exact`` given to ``agree`` are the group's defaults. The summary
    line is printed when the ``with`` block ends, or by :meth:`report`. ``ok`` says whether
    every check agreed.
    """

    def __init__(self, title: str, *, atol: float = 1e-10, floor: float = 1e-12, exact: bool = True):
        self.title, self.atol, self.floor, self.exact = title, atol, floor, exact
        self.results: list[Agreement] = []
        self._reported = False

    def __call__(self, name: str, a, b, *, atol: float | None = None, exact: bool | None = None) -> Agreement:
        result = compare_values(name, a, b, atol=self.atol if atol is None else atol, floor=self.floor,
                                exact=self.exact if exact is None else exact)
        self.results.append(result)
        return result

    @property
    def ok(self) -> bool:
        return bool(self.results) and all(r.ok for r in self.results)

    def summary(self) -> str:
        """The group's line, then one indented line per failing check."""
        n = len(self.results)
        if n == 0:
            return f"{self.title}: no checks were run"
        agreeing = sum(r.ok for r in self.results)
        asked = [r for r in self.results if r.exact is not None]
        exact = f"{sum(bool(r.exact) for r in asked)} of {len(asked)}" if asked else "n/a"
        worst = max(self.results, key=lambda r: (np.nan_to_num(r.maxdiff, nan=np.inf)))
        lines = [f"{self.title}: {agreeing} of {n} agree | exact: {exact} | maxdiff: {worst.shown_maxdiff()}"]
        lines += ["  DISAGREES: " + r.line(width=0).strip() for r in self.results if not r.ok]
        return "\n".join(lines)

    def report(self) -> None:
        print(self.summary())
        self._reported = True

    def __enter__(self) -> "agree":
        return self

    def __exit__(self, exc_type, *exc) -> bool:
        if exc_type is None and not self._reported:
            self.report()
        return False
