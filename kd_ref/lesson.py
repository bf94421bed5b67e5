"""What makes a lesson's saved outputs a real run that can be checked.

A lesson notebook creates one :class:`Lesson` in its first cell and

1. prints :meth:`Lesson.header` first: profile, data, CPU model and cores, torch, date, commit;
2. declares the settings that shape its studies with :meth:`Lesson.settings` (seeds, epochs,
   weights, the recipe configuration it borrows): they, together with the notebook's code,
   give the results their *fingerprint*;
3. records each study's per-seed numbers with :meth:`Lesson.record`, the same numbers its
   tables print;
4. ends with :meth:`Lesson.finish`, which writes ``results/<lesson>.<profile>.json`` beside
   the notebook (provenance, settings, fingerprint, rows) and prints the wall time.

The committed ``notebooks/results/<lesson>.cpu.json`` files are what the saved outputs show.
``python -m kd_ref.lesson check`` (a unit test runs it) recomputes each file's fingerprint from
the notebook as it is now and fails when they differ, so results cannot silently go stale;
``python -m kd_ref.lesson reproduce [LESSON ...]`` (``make reproduce``) re-executes lessons
under ``KD_PROFILE=cpu`` in a scratch copy and compares every row with the committed file.

The fingerprint is the SHA-256 of the settings (canonical JSON) and of the source of every
code cell, so editing a code cell, or a recipe setting the lesson reads, makes the saved run
stale until the lesson is re-run; editing the markdown does not.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from .profiles import get_profile

RESULTS_DIR = "results"          # beside the notebooks
CAPTURE_ENV = "KD_LESSON_CAPTURE"  # set by `check`: Lesson.settings stops the notebook there


class SettingsCaptured(Exception):
    """Raised by :meth:`Lesson.settings` while ``check`` reads a notebook's settings."""

    def __init__(self, lesson: "Lesson"):
        super().__init__(lesson.name)
        self.lesson = lesson


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else :func:`platform.processor`)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def git_commit(where: str | os.PathLike = ".") -> str:
    """The short commit of the repository holding ``where``, ``+`` when tracked files outside ``notebooks/`` differ; else "unknown"."""
    try:
        run = lambda *args: subprocess.run(["git", *args], cwd=where, capture_output=True, text=True,
                                           timeout=10, check=True).stdout.strip()
        commit = run("rev-parse", "--short", "HEAD")
        # The saved lessons and their results files are what a run writes: they do not count as a change
        # of the code (a lesson's own code is covered by its fingerprint).
        changed = run("status", "--porcelain", "--untracked-files=no", "--", ":/", ":(top,exclude)notebooks")
        return commit + ("+" if changed else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def cpu_capability() -> str:
    """The vector instruction set torch's CPU kernels use here ("AVX2", "AVX512", "DEFAULT", ...).

    Two CPUs with the same model name (a cloud's "AMD EPYC", say) can differ in it, and then
    the same float32 code rounds differently.
    """
    return torch.backends.cpu.get_cpu_capability()


def provenance(where: str | os.PathLike | None = None) -> dict:
    """Where and when a run happened: CPU model, kernels' instruction set and cores, torch, Python, UTC date, commit."""
    return {"cpu": cpu_model(), "cpu_capability": cpu_capability(), "cores": os.cpu_count(), "torch": torch.__version__,
            "python": platform.python_version(), "date": f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
            "commit": git_commit(where if where is not None else Path(__file__).resolve().parent)}


def notebook_code(path: str | os.PathLike) -> list[str]:
    """The source of every code cell of the notebook at ``path``, trailing spaces removed."""
    cells = json.loads(Path(path).read_text(encoding="utf-8"))["cells"]
    sources = ["".join(c["source"]) if isinstance(c["source"], list) else c["source"]
               for c in cells if c["cell_type"] == "code"]
    return ["\n".join(line.rstrip() for line in s.strip().splitlines()) for s in sources]


def fingerprint(settings: dict, code: list[str]) -> str:
    """SHA-256 (first 16 hex digits) of the canonical JSON of ``settings`` and the code cells."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for source in code:
        digest.update(b"\0" + source.encode())
    return digest.hexdigest()[:16]


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)} min {seconds % 60:.0f} s" if seconds >= 60 else f"{seconds:.0f} s"


def _add_row(table: dict[str, list[dict]], study: str, seed: int, name: str, metric: str, value: float,
             verb: str) -> None:
    """Append one finite number to ``table[study]``, refusing a second one for the same seed, name and metric."""
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{study}/{name}/{metric} seed {seed}: value must be finite, got {value}")
    rows = table.setdefault(study, [])
    if any((r["seed"], r["name"], r["metric"]) == (seed, name, metric) for r in rows):
        raise ValueError(f"{study}: seed {seed}, {name}, {metric} {verb} twice")
    rows.append({"seed": int(seed), "name": name, "metric": metric, "value": value})


class Lesson:
    """One run of a lesson notebook: its header, settings, study results and results file.

    ``name`` is the notebook's file name without ``.ipynb``; the notebook is looked up in the
    working directory (where Jupyter, nbval and nbconvert start a notebook's kernel) unless
    ``notebook`` is given. Results go to ``results_dir`` (default ``$KD_RESULTS_DIR``, else
    ``results/`` beside the notebook).
    """

    def __init__(self, name: str, *, data: str, profile: str | None = None,
                 notebook: str | os.PathLike | None = None, results_dir: str | os.PathLike | None = None):
        self.name, self.data = name, data
        self.profile = get_profile(profile)
        self.notebook = Path(notebook) if notebook is not None else Path.cwd() / f"{name}.ipynb"
        self.results_dir = Path(results_dir or os.environ.get("KD_RESULTS_DIR") or self.notebook.parent / RESULTS_DIR)
        self.started = time.perf_counter()
        self.date = datetime.now(timezone.utc)
        self.commit = git_commit(self.notebook.parent if self.notebook.parent.exists() else ".")
        self.device = "cuda" if self.profile == "gpu" and torch.cuda.is_available() else "cpu"
        self._settings: dict | None = None
        self.studies: dict[str, list[dict]] = {}
        self.timings: dict[str, list[dict]] = {}

    # -- what the notebook calls ------------------------------------------------------------
    def header(self) -> None:
        """Print the run's provenance: the first output of every lesson."""
        device = torch.cuda.get_device_name() if self.device == "cuda" else "no GPU used"
        print(f"lesson {self.name} | profile {self.profile} | data: {self.data}")
        print(f"machine: {cpu_model()} ({cpu_capability()} kernels), {os.cpu_count()} cores, {device} | torch {torch.__version__}, "
              f"Python {platform.python_version()}")
        print(f"run: {self.date:%Y-%m-%d %H:%M} UTC, commit {self.commit}")

    def settings(self, **settings) -> str:
        """Declare the settings that shape this lesson's studies; return the fingerprint.

        Values must be JSON-serialisable (dataclasses: pass ``dataclasses.asdict(config)``).
        """
        try:
            settings = json.loads(json.dumps(settings))     # as the results file will hold them (tuples -> lists)
        except TypeError as err:
            raise ValueError(f"settings must be JSON-serialisable: {err}") from None
        self._settings = settings
        if os.environ.get(CAPTURE_ENV):
            raise SettingsCaptured(self)
        return self.fingerprint

    @property
    def fingerprint(self) -> str:
        if self._settings is None:
            raise RuntimeError("call lesson.settings(...) before recording results")
        return fingerprint(self._settings, notebook_code(self.notebook) if self.notebook.exists() else [])

    def record(self, study: str, seed: int, name: str, metric: str, value: float) -> None:
        """Record one number of ``study``: model ``name``'s ``metric`` for ``seed``."""
        _add_row(self.studies, study, seed, name, metric, value, "recorded")

    def record_timing(self, study: str, seed: int, name: str, metric: str, value: float) -> None:
        """Record one clock measurement (a latency, a throughput, seconds) of ``study``.

        Kept in the results file under ``"timings"``, beside the studies, so that machines can be
        compared; :func:`compare` shows them but never judges them (a clock is not reproducible,
        even on the same machine), so a lesson's timings cannot make ``make reproduce`` fail.
        """
        _add_row(self.timings, study, seed, name, metric, value, "timed")

    def record_scores(self, study: str, seed: int, scores: dict[str, dict[str, float]]) -> None:
        """Record ``{name: {metric: value}}`` for ``seed`` (what :func:`kd_ref.train.evaluate` returns, per model)."""
        for name, metrics in scores.items():
            for metric, value in metrics.items():
                self.record(study, seed, name, metric, value)

    def finish(self) -> None:
        """Write the results file (:attr:`results_path`) and print where, with the wall time of the whole run."""
        seconds = time.perf_counter() - self.started
        path = self.results_path
        if self.studies:
            payload = {
                "lesson": self.name, "profile": self.profile, "data": self.data,
                "provenance": {**provenance(), "device": self.device, "date": f"{self.date:%Y-%m-%d %H:%M} UTC",
                               "commit": self.commit, "seconds": round(seconds, 1)},
                "settings": self._settings, "fingerprint": self.fingerprint,
                "studies": self.studies,
                **({"timings": self.timings} if self.timings else {}),
            }
            self.results_dir.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
            n = sum(len(rows) for rows in self.studies.values())
            print(f"results: {n} numbers of {len(self.studies)} stud{'y' if len(self.studies) == 1 else 'ies'} "
                  f"written to {RESULTS_DIR}/{path.name}")
        print(f"wall time of this run: {_minutes(seconds)} (profile {self.profile}, {os.cpu_count()} cores)")

    @property
    def results_path(self) -> Path:
        """Where :meth:`finish` writes the results: ``<results_dir>/<lesson>.<profile>.json``."""
        return self.results_dir / f"{self.name}.{self.profile}.json"


# -- checking and reproducing --------------------------------------------------------------------
def read_settings(notebook: Path) -> dict:
    """Execute ``notebook``'s code cells in order, under the cpu profile, up to ``lesson.settings``.

    Returns ``{"settings", "fingerprint"}``. Only the cells before the settings are run (the
    imports, the header and the settings cell): cheap, and no study starts.
    """
    import contextlib
    import io
    os.environ[CAPTURE_ENV] = "1"
    os.environ["KD_PROFILE"] = "cpu"
    os.environ.setdefault("MPLBACKEND", "Agg")
    namespace = {"__name__": "__lesson__"}
    cwd = os.getcwd()
    os.chdir(notebook.parent)
    try:
        for source in notebook_code(notebook):
            if not source or source.lstrip().startswith(("%", "!")):
                continue
            try:
                with contextlib.redirect_stdout(io.StringIO()):
                    exec(compile(source, str(notebook), "exec"), namespace)
            except SettingsCaptured as captured:
                return {"settings": captured.lesson._settings, "fingerprint": captured.lesson.fingerprint}
    finally:
        os.chdir(cwd)
        del os.environ[CAPTURE_ENV]
    raise ValueError(f"{notebook.name} never calls lesson.settings(...)")


def check(notebooks: Path, profile: str = "cpu") -> list[str]:
    """Problems with the committed results files of ``notebooks`` (empty when all are current)."""
    problems = []
    for path in sorted((notebooks / RESULTS_DIR).glob(f"*.{profile}.json")):
        saved = json.loads(path.read_text(encoding="utf-8"))
        notebook = notebooks / f"{saved.get('lesson')}.ipynb"
        if not notebook.exists():
            continue  # a recipe's results file (no notebook): checked by its own test
        current = read_settings(notebook)
        if current["fingerprint"] != saved["fingerprint"]:
            changed = sorted(k for k in set(current["settings"]) | set(saved["settings"] or {})
                             if current["settings"].get(k) != (saved["settings"] or {}).get(k))
            why = f"settings changed: {', '.join(changed)}" if changed else "the notebook's code changed"
            problems.append(f"{path.name}: fingerprint {saved['fingerprint']} is stale (now {current['fingerprint']}; "
                            f"{why}); re-run the lesson under KD_PROFILE=cpu and commit it with its results file")
    return problems


def _groups(rows: list[dict]) -> dict[tuple, list[float]]:
    groups: dict[tuple, list[float]] = {}
    for r in rows:
        groups.setdefault((r["name"], r["metric"]), []).append(r["value"])
    return groups


def _standard_error(values: list[float]) -> float | None:
    return statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else None


def compare(saved: dict, rerun: dict) -> tuple[list[str], bool]:
    """Compare two results payloads row by row; return the printed lines and whether they agree.

    Same machine (CPU model, torch's CPU instruction set, core count and torch version; a file
    that does not record one of them counts as another machine): every value must be identical
    (same seeds and the same thread counts, so the same floating-point operations; lesson 07's
    study uses every core, the others one thread). Otherwise the per-seed values may differ in rounding,
    which training amplifies; each model/metric's mean over seeds must then agree within 2 standard
    errors of the difference of the two means, √(se_saved² + se_rerun²) (about a 95 % band for
    a difference that is only seed noise). A single-seed row cannot be judged there and is
    reported as such. Clock measurements (the payloads' ``"timings"``) are listed, never judged.
    """
    fields = ("cpu", "cpu_capability", "cores", "torch")
    same_cpu = all(saved["provenance"].get(f) is not None and saved["provenance"].get(f) == rerun["provenance"].get(f)
                   for f in fields)
    where = lambda p: (f"{p['cpu']} ({p.get('cpu_capability', 'kernels not recorded')}), {p.get('cores', '?')} cores, "
                       f"torch {p.get('torch', '?')}")
    lines = [f"{saved['lesson']}: saved on {where(saved['provenance'])} ({saved['provenance']['date']}), "
             f"re-run on {where(rerun['provenance'])}; tolerance: "
             + ("exact (same CPU model, instruction set, cores and torch)" if same_cpu
                else "2 standard errors of the difference of seed means")]
    ok = True
    for study in sorted(set(saved["studies"]) | set(rerun["studies"])):
        old, new = saved["studies"].get(study), rerun["studies"].get(study)
        if old is None or new is None:
            lines.append(f"  study {study}: {'missing in the re-run' if new is None else 'not in the saved file'}")
            ok = False
            continue
        lines.append(f"  study {study}:")
        index = {(r["seed"], r["name"], r["metric"]): r["value"] for r in new}
        if same_cpu:
            lines.append(f"    {'seed':>4}  {'name':<28}{'metric':<24}{'saved':>12}{'re-run':>12}  verdict")
            for r in old:
                key = (r["seed"], r["name"], r["metric"])
                value = index.pop(key, None)
                verdict = "missing" if value is None else ("same" if value == r["value"] else "DIFFERS")
                ok &= verdict == "same"
                shown = "-" if value is None else f"{value:.6g}"
                lines.append(f"    {r['seed']:>4}  {r['name']:<28}{r['metric']:<24}{r['value']:>12.6g}{shown:>12}  {verdict}")
            for key in index:
                lines.append(f"    {key[0]:>4}  {key[1]:<28}{key[2]:<24}{'-':>12}{index[key]:>12.6g}  extra")
                ok = False
        else:
            old_g, new_g = _groups(old), _groups(new)
            lines.append(f"    {'name':<28}{'metric':<24}{'saved mean':>12}{'re-run mean':>12}{'allowed':>10}  verdict")
            for key in old_g:
                a, b = old_g[key], new_g.get(key)
                if b is None:
                    lines.append(f"    {key[0]:<28}{key[1]:<24}{statistics.fmean(a):>12.6g}{'-':>12}{'':>10}  missing")
                    ok = False
                    continue
                se_a, se_b = _standard_error(a), _standard_error(b)
                diff = abs(statistics.fmean(a) - statistics.fmean(b))
                if se_a is None or se_b is None:
                    verdict, allowed = ("same" if diff == 0 else "one seed: not judged"), "-"
                else:
                    bound = 2 * math.hypot(se_a, se_b)
                    verdict, allowed = ("within" if diff <= bound else "DIFFERS"), f"{bound:.3g}"
                    ok &= verdict == "within"
                lines.append(f"    {key[0]:<28}{key[1]:<24}{statistics.fmean(a):>12.6g}{statistics.fmean(b):>12.6g}"
                             f"{allowed:>10}  {verdict}")
    for study in sorted(set(saved.get("timings", {})) | set(rerun.get("timings", {}))):
        old, new = saved.get("timings", {}).get(study, []), rerun.get("timings", {}).get(study, [])
        index = {(r["seed"], r["name"], r["metric"]): r["value"] for r in new}
        lines.append(f"  timings {study}: {len(old)} saved, {len(new)} re-run (clock measurements: shown, not judged)")
        for r in old:
            value = index.get((r["seed"], r["name"], r["metric"]))
            shown = "-" if value is None else f"{value:.6g}"
            lines.append(f"    {r['seed']:>4}  {r['name']:<28}{r['metric']:<24}{r['value']:>12.6g}{shown:>12}  timing")
    return lines, ok


def reproduce(repo: Path, lessons: list[str], *, keep: Path | None = None) -> bool:
    """Re-execute ``lessons`` (name prefixes such as ``03``) under the cpu profile in a scratch copy
    of ``repo/notebooks`` and compare their results with the committed files. True when all agree."""
    source = repo / "notebooks"
    with_results = {p.name.removesuffix(".cpu.json") for p in (source / RESULTS_DIR).glob("*.cpu.json")}
    chosen = [p for p in sorted(source.glob("[0-9][0-9]_*.ipynb"))
              if not lessons or any(p.name.startswith(prefix) for prefix in lessons)]
    if not chosen:
        raise SystemExit(f"no lesson matches {lessons!r} in {source}")
    scratch = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="kd-reproduce-"))
    shutil.copytree(source, scratch / "notebooks", dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns(RESULTS_DIR, ".ipynb_checkpoints"))
    all_ok = True
    for path in chosen:
        name = path.stem
        copy = scratch / "notebooks" / path.name
        print(f"== {name}: executing under KD_PROFILE=cpu in {copy.parent} ...", flush=True)
        print(f"   executed in {_minutes(execute(copy, 'cpu', scratch / RESULTS_DIR))}")
        if name not in with_results:
            print("   no study results file for this lesson: nothing to compare")
            continue
        saved = json.loads((source / RESULTS_DIR / f"{name}.cpu.json").read_text(encoding="utf-8"))
        rerun = json.loads((scratch / RESULTS_DIR / f"{name}.cpu.json").read_text(encoding="utf-8"))
        lines, ok = compare(saved, rerun)
        print("\n".join(lines))
        print(f"   {name}: {'AGREES' if ok else 'DISAGREES'} with the saved run")
        all_ok &= ok
    print(f"scratch copy kept in {scratch}" if keep else "", end="")
    if not keep:
        shutil.rmtree(scratch, ignore_errors=True)
    return all_ok


def execute(notebook: Path, profile: str = "cpu", results_dir: Path | None = None) -> float:
    """Execute ``notebook`` top to bottom in a fresh kernel under ``profile``; save it in place; return seconds."""
    import nbformat
    from nbclient import NotebookClient

    env_before = dict(os.environ)
    os.environ.update(KD_PROFILE=profile)          # the kernel keeps its inline backend: figures are saved
    if results_dir is not None:
        os.environ["KD_RESULTS_DIR"] = str(results_dir)
    start = time.perf_counter()
    try:
        nb = nbformat.read(notebook, as_version=4)
        NotebookClient(nb, timeout=None, kernel_name="python3",
                       resources={"metadata": {"path": str(notebook.parent)}}).execute()
        nbformat.write(nb, notebook)
    finally:
        os.environ.clear()
        os.environ.update(env_before)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kd_ref.lesson",
                                     description="Check or reproduce the lessons' committed study results.")
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("check", help="fail when a committed results file no longer matches its notebook")
    c.add_argument("--notebooks", type=Path, default=Path("notebooks"))
    r = sub.add_parser("reproduce", help="re-run lessons under KD_PROFILE=cpu and compare with the saved results")
    r.add_argument("lessons", nargs="*", help="lesson numbers or name prefixes (default: every lesson)")
    r.add_argument("--repo", type=Path, default=Path("."))
    r.add_argument("--keep", type=Path, default=None, help="execute in this directory and keep it")
    s = sub.add_parser("save", help="execute lessons in place under KD_PROFILE=cpu: the saved outputs and results files")
    s.add_argument("lessons", nargs="+", help="lesson numbers or name prefixes")
    s.add_argument("--notebooks", type=Path, default=Path("notebooks"))
    s.add_argument("--profile", default="cpu", help="the profile to save under (lesson 06: smoke, generated data)")
    args = parser.parse_args(argv)
    if args.command == "save":
        for path in sorted(args.notebooks.resolve().glob("[0-9][0-9]_*.ipynb")):
            if any(path.name.startswith(prefix) for prefix in args.lessons):
                print(f"{path.name}: executing under KD_PROFILE={args.profile} ...", flush=True)
                print(f"{path.name}: saved in {_minutes(execute(path, args.profile))}", flush=True)
        return 0
    if args.command == "check":
        problems = check(args.notebooks.resolve())
        print("\n".join(problems) if problems else "every results file matches its notebook's settings and code")
        return 1 if problems else 0
    start = time.perf_counter()
    ok = reproduce(args.repo.resolve(), args.lessons, keep=args.keep)
    print(f"\nreproduce: {'every study agrees' if ok else 'SOME STUDIES DISAGREE'} "
          f"({_minutes(time.perf_counter() - start)} in all)")
    return 0 if ok else 1


if __name__ == "__main__":
    # Run kd_ref.lesson's own main, not this __main__ copy of the module: a notebook's
    # `from kd_ref.lesson import Lesson` raises kd_ref.lesson.SettingsCaptured, which only
    # kd_ref.lesson.read_settings catches (the class of __main__ is another class).
    from kd_ref import lesson as _lesson
    sys.exit(_lesson.main())
