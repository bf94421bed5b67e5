"""Results of a recipe: rows of mean ± std over seeds, a readable table, the JSON file.

Every ``kd-ref`` recipe writes the same JSON shape (a contract, see the README)::

    {"profile", "data", "device", "seconds",
     "rows": [{"name", "metric", "mean", "std", "n"}, ...]}

``std`` is the sample standard deviation over seeds (ddof = 1), 0 for one seed.
Accuracy-like metrics are fractions in [0, 1] in the JSON and percentages in the table.
"""
from __future__ import annotations

import json
import os
import statistics
from pathlib import Path


def summarize(name: str, metric: str, values: list[float]) -> dict:
    """One result row: the mean and sample std of ``values`` (one per seed)."""
    if not values:
        raise ValueError(f"no values for {name} / {metric}")
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"name": name, "metric": metric, "mean": statistics.fmean(values), "std": std, "n": len(values)}


def format_table(rows: list[dict], metrics: list[str], labels: dict[str, str] | None = None) -> str:
    """A fixed-width table: one line per row name, one ``mean ± std`` column (in %) per metric."""
    labels = labels or {}
    names = list(dict.fromkeys(row["name"] for row in rows))
    cells = {(row["name"], row["metric"]): f"{100 * row['mean']:.1f} ± {100 * row['std']:.1f}" for row in rows}
    header = ["name", *(labels.get(m, m) + " %" for m in metrics)]
    lines = [[n, *(cells.get((n, m), "-") for m in metrics)] for n in names]
    widths = [max(len(line[i]) for line in [header, *lines]) for i in range(len(header))]

    def fmt(line):
        return "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths)))

    return "\n".join([fmt(header), fmt(["-" * w for w in widths]), *map(fmt, lines)])


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
               rows: list[dict]) -> None:
    """Write the recipe's results in the shared JSON shape (keys in the contract's order)."""
    result = {"profile": profile, "data": data, "device": device, "seconds": round(seconds, 1), "rows": rows}
    Path(path).write_text(json.dumps(result, indent=2) + "\n")
