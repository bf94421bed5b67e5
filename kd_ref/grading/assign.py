"""From a solved master notebook to the learner's notebook and the grading tests (otter assign)."""
from __future__ import annotations

import contextlib
import io
import os
import tempfile
import zipfile
from pathlib import Path

import nbformat
import yaml

REPO = Path(__file__).resolve().parents[2]
SOLUTIONS = REPO / "solutions"
EXERCISES = REPO / "exercises"


def masters(solutions_dir: Path = SOLUTIONS) -> list[Path]:
    """Every exercise master, in course order (``exNN_*.ipynb``)."""
    return sorted(Path(solutions_dir).glob("ex[0-9][0-9]_*.ipynb"))


def assignment_name(nb: nbformat.NotebookNode) -> str | None:
    """The otter assignment name of a learner notebook (metadata) or of a master (config cell)."""
    name = nb.metadata.get("otter", {}).get("assignment_name")
    if name:
        return name
    for cell in nb.cells:
        if cell.cell_type == "raw" and cell.source.lstrip().startswith("# ASSIGNMENT CONFIG"):
            config = yaml.safe_load(cell.source.split("\n", 1)[1]) or {}
            return config.get("name")
    return None


def master_for(notebook: Path | nbformat.NotebookNode, solutions_dir: Path = SOLUTIONS) -> Path:
    """The master a learner notebook was generated from, found by its otter assignment name."""
    nb = nbformat.read(notebook, as_version=4) if isinstance(notebook, (str, Path)) else notebook
    name = assignment_name(nb)
    if not name:
        raise ValueError("not a graded exercise notebook: no otter assignment name in its metadata")
    master = Path(solutions_dir) / f"{name}.ipynb"
    if not master.exists():
        raise ValueError(f"no master notebook {master} for assignment {name!r}")
    return master


def _otter_assign(master: Path, out_dir: Path) -> None:
    """Run otter's ``assign`` on ``master`` (tests are checked by our own pytest suite, not here).

    In this process, not as ``python -m otter assign``: importing otter costs seconds, the
    assignment itself a fraction of one, and the grader and the tests assign every master.
    Otter reads the master relative to the working directory, so it runs from the master's folder.
    """
    from otter.assign import main as otter_assign     # imported here: only grading needs otter

    master, out_dir = Path(master).resolve(), Path(out_dir).resolve()
    cwd, log = os.getcwd(), io.StringIO()
    try:
        os.chdir(master.parent)
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            otter_assign(str(master), str(out_dir), no_pdfs=True)
    except Exception as err:                          # noqa: BLE001 - otter raises many kinds; say which master
        raise RuntimeError(f"otter assign failed for {master}: {err}\n{log.getvalue()[-4000:]}") from err
    finally:
        os.chdir(cwd)


_CACHE_DIR = tempfile.TemporaryDirectory(prefix="kd_ref_grading_")
_ASSIGNED: dict[tuple[str, int], Path] = {}


def _assigned(master: Path) -> Path:
    """The folder of ``otter assign``'s output for ``master`` (``student/``, ``autograder/``).

    Made once per master file version and process (otter assign takes seconds), and
    shared by :func:`learner_notebook` and :func:`question_tests`.
    """
    master = Path(master).resolve()
    key = (str(master), master.stat().st_mtime_ns)
    if key not in _ASSIGNED:
        out = Path(_CACHE_DIR.name) / f"{master.stem}-{len(_ASSIGNED)}"
        _otter_assign(master, out)
        _ASSIGNED[key] = out
    return _ASSIGNED[key]


def learner_notebook(master: Path) -> nbformat.NotebookNode:
    """The learner's form of ``master``: solutions removed, public checks kept in its metadata."""
    nb = nbformat.read(_assigned(master) / "student" / Path(master).name, as_version=4)
    for i, cell in enumerate(nb.cells):               # stable ids: regenerating gives identical files
        cell["id"] = f"cell-{i:03d}"
    return nb


def question_tests(master: Path) -> list[Path]:
    """Every question's test file (public and hidden checks) of ``master``, in question order."""
    out = _assigned(master)
    dest = out / "tests"
    if not dest.exists():
        archive = next((out / "autograder").glob("*.zip"))
        with zipfile.ZipFile(archive) as zf:
            names = [n for n in zf.namelist() if n.startswith("tests/") and n.endswith(".py")]
            dest.mkdir()
            for name in names:
                (dest / Path(name).name).write_bytes(zf.read(name))
    order = _question_order(Path(master))
    return sorted(dest.glob("*.py"), key=lambda p: order.index(p.stem) if p.stem in order else len(order))


def _question_order(master: Path) -> list[str]:
    nb = nbformat.read(master, as_version=4)
    names = []
    for cell in nb.cells:
        if cell.cell_type == "raw" and cell.source.lstrip().startswith("# BEGIN QUESTION"):
            for line in cell.source.splitlines():
                if line.strip().startswith("name:"):
                    names.append(line.split(":", 1)[1].strip())
    return names


def build_exercises(solutions_dir: Path = SOLUTIONS, exercises_dir: Path = EXERCISES) -> list[Path]:
    """Regenerate ``exercises/`` from the masters in ``solutions/``."""
    exercises_dir.mkdir(exist_ok=True)
    written = []
    for master in masters(solutions_dir):
        out = exercises_dir / master.name
        nbformat.write(learner_notebook(master), out)
        written.append(out)
    return written


if __name__ == "__main__":
    for path in build_exercises():
        print(f"wrote {path.relative_to(REPO)}")
