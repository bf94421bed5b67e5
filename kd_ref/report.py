"""Results of a study: rows of mean ± std over seeds, paired effects with a 95 % interval, tables, JSON.

Every ``kd-ref`` recipe writes the same JSON shape (a contract, see the README)::

    {"profile", "data", "device", "seconds",
     "rows": [{"name", "metric", "mean", "std", "n"}, ...]}

``std`` is the sample standard deviation over seeds (ddof = 1), 0 for one seed.
Accuracy-like metrics are fractions in [0, 1] in the JSON and percentages in the table.

Comparisons between two rows are *paired*: the students of one seed share their initial
weights and data, so the per-seed differences are what varies. :func:`paired_effect`
reports their mean ± standard error and a t-based 95 % confidence interval; a difference
is called a gain or a loss only when that interval excludes 0 (:meth:`Effect.verdict`).
"""
from __future__ import annotations

import json
import math
import os
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


def summarize(name: str, metric: str, values: Sequence[float]) -> dict:
    """One result row: the mean and sample std of ``values`` (one per seed)."""
    if not values:
        raise ValueError(f"no values for {name} / {metric}")
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"name": name, "metric": metric, "mean": statistics.fmean(values), "std": std, "n": len(values)}


def summarize_runs(per_seed: list[dict], metrics: Sequence[str]) -> list[dict]:
    """JSON rows from ``[{model: {metric: value}}]`` (one dict per seed), metric by metric in ``metrics`` order.

    A model that lacks a metric (the teacher has no fidelity) gets no row for it.
    """
    rows = []
    for metric in metrics:
        for name, scores in per_seed[0].items():
            if metric in scores:
                rows.append(summarize(name, metric, [run[name][metric] for run in per_seed]))
    return rows


def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile of Student's t distribution with ``df`` degrees of freedom (SciPy)."""
    from scipy.stats import t
    return float(t.ppf(p, df))


@dataclass(frozen=True)
class Effect:
    """A paired difference over ``n`` seeds: mean, standard error and the 95 % t interval.

    ``low`` / ``high`` are None for one seed (no spread can be estimated).
    """

    mean: float
    se: float | None
    low: float | None
    high: float | None
    n: int

    def verdict(self, gain: str = "helps", loss: str = "hurts") -> str:
        """``gain`` when the interval lies above 0, ``loss`` below 0, else "no detectable difference"."""
        if self.low is None:
            return "one seed: no interval"
        if self.low > 0:
            return gain
        if self.high < 0:
            return loss
        return "no detectable difference"

    def format(self, digits: int = 1, unit: str = "") -> str:
        """``+1.2 ± 0.3 (95 % CI [+0.5, +1.9], 5 seeds)`` with ``digits`` decimals."""
        if self.se is None:
            return f"{self.mean:+.{digits}f}{unit} (one seed)"
        return (f"{self.mean:+.{digits}f} ± {self.se:.{digits}f}{unit} (95 % CI [{self.low:+.{digits}f}, "
                f"{self.high:+.{digits}f}], {self.n} seeds)")


def paired_effect(values: Sequence[float], baseline: Sequence[float]) -> Effect:
    """Mean of ``values[i] - baseline[i]`` over seeds, its standard error and t-based 95 % interval.

    The interval is ``mean ± t_{0.975, n-1} · sd / √n`` (the paired t interval).
    """
    if len(values) != len(baseline) or not values:
        raise ValueError(f"values and baseline must pair up seed by seed, got {len(values)} and {len(baseline)}")
    diffs = [a - b for a, b in zip(values, baseline)]
    n, mean = len(diffs), statistics.fmean(diffs)
    if n == 1:
        return Effect(mean, None, None, None, 1)
    se = statistics.stdev(diffs) / math.sqrt(n)
    half = t_quantile(0.975, n - 1) * se
    return Effect(mean, se, mean - half, mean + half, n)


def compare(per_seed: list[dict], name: str, baseline: str, metric: str, scale: float = 1.0) -> Effect:
    """The paired effect of ``name`` over ``baseline`` on ``metric`` (times ``scale``) in ``[{model: {metric: value}}]``.

    Positive means ``name`` scored higher; for a metric where lower is better (bits per
    character), swap the two names.
    """
    return paired_effect([scale * run[name][metric] for run in per_seed],
                         [scale * run[baseline][metric] for run in per_seed])


def effect_lines(per_seed: list[dict], comparisons: Sequence[tuple[str, str, str]], metric: str, *,
                 scale: float = 1.0, digits: int = 1, unit: str = "", lower_is_better: bool = False) -> list[str]:
    """One line per ``(name, baseline, meaning)``: the paired difference, its 95 % interval and the verdict.

    The verdict is "helps" when the interval lies on the better side of 0 (above it, or
    below it when ``lower_is_better``), "hurts" on the other side, else "no detectable difference".

    ``"  student_kd - student_scratch: +19.5 ± 0.8 (95 % CI [+17.3, +21.7], 5 seeds): helps  (meaning)"``.
    """
    lines = []
    for name, baseline, meaning in comparisons:
        effect = compare(per_seed, name, baseline, metric, scale)
        note = f"  ({meaning})" if meaning else ""
        verdict = effect.verdict("hurts", "helps") if lower_is_better else effect.verdict()
        lines.append(f"  {name} - {baseline}: {effect.format(digits, unit)}: {verdict}{note}")
    return lines


def text_table(header: Sequence[str], lines: Sequence[Sequence[str]], separators: Sequence[int] = ()) -> str:
    """A fixed-width text table: first column left-aligned, the others right-aligned.

    ``separators``: column indices whose cells are a literal ``|`` (kept as is in the rule line).
    """
    lines = [list(map(str, line)) for line in lines]
    header = list(header)
    if any(len(line) != len(header) for line in lines):
        raise ValueError(f"every line needs {len(header)} cells like the header, got {[len(l) for l in lines]}")
    widths = [max(len(line[i]) for line in [header, *lines]) for i in range(len(header))]

    def fmt(line):
        return "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths)))

    rule = ["|" if i in separators else "-" * w for i, w in enumerate(widths)]
    return "\n".join([fmt(header), fmt(rule), *map(fmt, lines)])


def format_table(rows: list[dict], metrics: Sequence[str], labels: dict[str, str] | None = None,
                percent: bool = True, digits: int = 1) -> str:
    """The results table of :func:`summarize` rows: one line per name, one ``mean ± std`` column per metric.

    ``percent``: show fractions as percentages (accuracy-like metrics); a missing value is ``-``.
    """
    labels = labels or {}
    scale, suffix = (100, " %") if percent else (1, "")
    names = list(dict.fromkeys(row["name"] for row in rows))
    cells = {(row["name"], row["metric"]): f"{scale * row['mean']:.{digits}f} ± {scale * row['std']:.{digits}f}"
             for row in rows}
    header = ["name", *(labels.get(m, m) + suffix for m in metrics)]
    return text_table(header, [[n, *(cells.get((n, m), "-") for m in metrics)] for n in names])


def check_writable(path: str | os.PathLike) -> None:
    """Raise ``OSError`` now if ``path`` cannot be written, rather than after a long run.

    Opens the file for appending (which creates it) and removes it again if it did
    not exist before, so the check leaves nothing behind.
    """
    existed = os.path.exists(path)
    with open(path, "a"):
        pass
    if not existed:
        os.remove(path)


def write_json(path: str | os.PathLike, *, profile: str, data: str, device: str, seconds: float,
               rows: list[dict], settings: dict | None = None) -> None:
    """Write the recipe's results in the shared JSON shape (keys in the contract's order).

    After the contract's keys come the run's ``provenance`` (CPU model and cores, torch,
    Python, date, commit) and, when ``settings`` are given, the settings and their
    ``fingerprint`` (:func:`kd_ref.lesson.fingerprint`), so a committed results file can be
    checked against the settings of the code as it is now.
    """
    from .lesson import fingerprint, provenance
    result = {"profile": profile, "data": data, "device": device, "seconds": round(seconds, 1), "rows": rows,
              "provenance": provenance()}
    if settings is not None:
        result.update(settings=settings, fingerprint=fingerprint(settings, []))
    Path(path).write_text(json.dumps(result, indent=2) + "\n")
