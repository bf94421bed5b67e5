"""Grade a learner's exercise notebook locally; the learner's kernel returns outputs, the grader decides.

How a score is made (the design; the README's grading section states its limits):

1. **Reference.** The master's solution cells run in the grader's own process (never in the
   learner's kernel), then every check of the master (:mod:`.harness`): each call of an answer is
   recorded. The master's checks assert in that kernel that the solution agrees with the
   ``kd_ref`` oracle on those very inputs; a reference that fails its own check stops grading.
2. **Learner.** A fresh kernel (sandboxed with ``sandbox=True``) imports torch, kd_ref and otter
   (a warm-up under its own limit that binds no names), runs the learner's cells top to bottom
   (errors allowed, a time limit per cell), then the same checks, one at a time, under a time
   limit per question. The kernel only writes records of the answers' outputs to a file the
   grader names; the grader loads it with ``torch.load(weights_only=True)`` (plain data only).
3. **Verdict, in the grader's process.** A check passes when the learner's record equals the
   reference's (same calls, outputs equal within rtol 1e-4 / atol 1e-5, same gradients, buffers,
   training modes and hooks left on the objects the answers touched) and the answer raised
   nothing. Hidden checks draw their inputs from seeds mixed with a salt drawn at grading time
   (``secrets``), sent to the kernel only after the learner's cells have run: outputs cannot be
   prepared in advance. Nothing the learner's kernel prints, patches or reports can pass a
   check: only outputs equal to the reference's can.
4. **Forbidden shortcuts** (:mod:`.rules`) score the question 0: a static scan of the question's
   cells in the grader's process, and the oracle disabled in place while the answers run.

Points: the checks' otter points (public checks 0, hidden checks sharing the question's points).
"""
from __future__ import annotations

import ast
import math
import os
import re
import secrets
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
import torch
from nbclient import NotebookClient
from nbclient.exceptions import DeadKernelError

from ..report import text_table
from . import sandbox as sandbox_mod
from .assign import SOLUTIONS, assignment_name, master_for, question_tests
from .rules import forbidden_uses, rule_for

HARNESS = (Path(__file__).with_name("harness.py")).read_text()

# Run once, before the learner's cells: importing torch, kd_ref and otter takes about 6 s on an
# idle 2-core machine (more under load), time that is not the learner's. It has its own limit,
# never less than _WARM_UP_LIMIT seconds whatever the cell and question limits, and `__import__`
# leaves the learner's namespace as it was.
_WARM_UP = "__import__('torch'), __import__('kd_ref'), __import__('otter.test_files');"
_WARM_UP_LIMIT = 120
_MAX_RECORD_BYTES = 64 * 2**20
RTOL, ATOL = 1e-4, 1e-5
# Drawn once per grading process, when it starts: every notebook it grades gets the same hidden
# inputs (a fair class), and the master's records are made once per exercise.
SESSION_SALT = secrets.randbelow(2**62)


@dataclass
class Check:
    """One test case of a question's otter test file."""
    name: str                         # the test function's name (unique in its exercise)
    question: str
    hidden: bool
    points: float
    params: list[str]
    source: str                       # the whole test file: the check is one function of it
    looks_at: frozenset = frozenset()  # what of the answers' objects the check inspects after the call (see _aspects)

    @property
    def key(self) -> str:
        """Unique in its exercise (two questions may name their checks alike)."""
        return f"{self.question}/{self.name}"


@dataclass
class QuestionResult:
    name: str
    score: float
    max_score: float
    messages: list[str] = field(default_factory=list)
    failed_public: list[str] = field(default_factory=list)     # the public checks' messages that failed
    hidden_failed: int = 0                                      # how many hidden checks failed (never which)
    forbidden: list[str] = field(default_factory=list)          # forbidden shortcuts found


@dataclass
class GradeReport:
    notebook: str
    questions: list[QuestionResult]
    problems: list[str] = field(default_factory=list)           # what went wrong outside the checks
    seconds: float = 0.0

    @property
    def score(self) -> float:
        return sum(q.score for q in self.questions)

    @property
    def max_score(self) -> float:
        return sum(q.max_score for q in self.questions)

    def to_json(self) -> dict:
        """The structure of DESIGN.md: notebook, score, max_score, questions."""
        return {"notebook": self.notebook, "score": self.score, "max_score": self.max_score,
                "questions": [{"name": q.name, "score": q.score, "max_score": q.max_score} for q in self.questions]}

    def instructor_json(self) -> dict:
        """:meth:`to_json` plus, per question, the failed public messages and the count of failed hidden checks."""
        out = self.to_json()
        for row, q in zip(out["questions"], self.questions):
            row.update(failed_public=q.failed_public, hidden_failed=q.hidden_failed, forbidden=q.forbidden)
        out["problems"] = self.problems
        return out

    def table(self) -> str:
        lines = [[q.name, f"{q.score:.2f}", f"{q.max_score:.2f}"] for q in self.questions]
        return text_table(["question", "score", "max"],
                          [*lines, ["total", f"{self.score:.2f}", f"{self.max_score:.2f}"]])


def checks_of(test_file: Path) -> tuple[float, list[Check]]:
    """The question's points and its checks, read in the grader's process (otter resolves the points)."""
    import inspect

    from otter.test_files import ExceptionTestFile
    tf = ExceptionTestFile.from_file(str(test_file))
    source = Path(test_file).read_text()
    functions = [getattr(tc.body, "test_func", tc.body) for tc in tf.test_cases]   # otter wraps each test function
    bodies = {node.name: ast.get_source_segment(source, node) or "" for node in ast.parse(source).body
              if isinstance(node, ast.FunctionDef)}
    checks = [Check(f.__name__, tf.name, tc.hidden, float(tc.points), list(inspect.signature(f).parameters), source,
                    _aspects(bodies.get(f.__name__, "")))
              for tc, f in zip(tf.test_cases, functions)]
    return float(tf.possible), checks


def _aspects(body: str) -> frozenset:
    """What a check inspects on the objects an answer was given or made, once the answer has returned.

    The record holds all of it; the verdict compares what the check itself looks at, so a check of
    values does not fail for a hook left behind (the check of hooks does).
    """
    found = set()
    if re.search(r"\.grad\b|backward\(", body):
        found.add("grad")
    if re.search(r"_(forward|forward_pre|backward)_hooks", body):
        found.add("hooks")
    if re.search(r"running_|state_dict|\.training|parameters\(|buffers\(|\.weight|\.bias", body):
        found.add("state")
    return frozenset(found)


# --- kernels ---------------------------------------------------------------------------------------------

class KernelStuck(RuntimeError):
    """The kernel did not answer after a time limit and an interrupt (a notebook can ignore SIGINT or break
    the kernel's messaging): it is killed and the notebook's grading ends there."""


_PROBE_LIMIT = 15


class _Kernel:
    """One kernel running cells of ``nb``: plain, or inside the sandbox; outputs of answers go to ``scratch``.

    A cell over its time limit is interrupted and reported as timed out (``self.timed_out``) without
    waiting for the kernel; the next cell then first checks that the kernel answers within
    ``_PROBE_LIMIT`` seconds, else raises :class:`KernelStuck`, so that no notebook can hold the grader.
    """

    def __init__(self, nb, cwd: Path, scratch: Path, sandboxed: bool, limits: sandbox_mod.Limits, slot: int):
        self.nb, self.scratch = nb, scratch
        km = None
        if sandboxed:
            from jupyter_client import KernelManager

            class SandboxedKernelManager(KernelManager):
                def format_kernel_cmd(self, extra_arguments=None):
                    return sandbox_mod.command(super().format_kernel_cmd(extra_arguments), scratch, limits, slot)

                def write_connection_file(self, **kwargs):
                    super().write_connection_file(**kwargs)
                    os.chmod(self.connection_file, 0o644)           # the sandbox's user reads it

            sandbox_mod.prepare_scratch(scratch)
            km = SandboxedKernelManager(kernel_name="python3", transport="ipc", ip=str(scratch / "kernel"),
                                        connection_file=str(scratch / "kernel.json"))
        self.client = NotebookClient(nb, km=km, kernel_name="python3", allow_errors=True, interrupt_on_timeout=True,
                                     error_on_timeout={"ename": "TimeoutError", "evalue": "time limit", "traceback": []},
                                     timeout=60, shutdown_kernel="immediate", resources={"metadata": {"path": str(cwd)}})
        self.timed_out = False

    def run(self, source: str, limit: float):
        """Run ``source`` as a new cell under ``limit`` seconds; return the cell (with its outputs)."""
        cell = nbformat.v4.new_code_cell(source)
        self.nb.cells.append(cell)                      # nbclient stores outputs by index
        return self.run_existing(len(self.nb.cells) - 1, limit)

    def run_existing(self, index: int, limit: float):
        if self.timed_out:                              # the last cell was interrupted: does the kernel answer?
            self.timed_out = False
            probe = nbformat.v4.new_code_cell("pass")
            self.nb.cells.append(probe)
            self._execute(probe, len(self.nb.cells) - 1, _PROBE_LIMIT)
            if self.timed_out:
                raise KernelStuck(f"the kernel did not answer within {_PROBE_LIMIT} s of an interrupt")
        self._execute(self.nb.cells[index], index, limit)
        return self.nb.cells[index]

    def _execute(self, cell, index: int, limit: float) -> None:
        self.client.timeout = math.ceil(limit)          # nbclient counts whole seconds: round up
        start = time.monotonic()
        self.client.execute_cell(cell, index)
        self.timed_out = time.monotonic() - start >= self.client.timeout


def _error_of(cell) -> str | None:
    for out in cell.get("outputs", []):
        if out.get("output_type") == "error":
            return f"{out.get('ename')}: {out.get('evalue')}"
    return None


def _check_cell(check: Check, salt: int | None, out: Path, rule) -> str:
    return (f"__kd_grading = {{}}\nexec({HARNESS!r}, __kd_grading)\n"
            f"__kd_grading['run_check'](globals(), {check.source!r}, {check.name!r}, {check.params!r}, "
            f"{salt if check.hidden else None!r}, {list(rule.oracle)!r}, {list(rule.ops)!r}, {str(out)!r})\n"
            f"del __kd_grading")


def _load_record(path: Path) -> dict | None:
    """A record written by the kernel: plain data only (``weights_only``), bounded in size; None if absent or bad."""
    try:
        if not path.is_file() or path.stat().st_size > _MAX_RECORD_BYTES:
            return None
        record = torch.load(path, weights_only=True)
    except Exception:                                   # noqa: BLE001 - a bad record is a failed check
        return None
    finally:
        path.unlink(missing_ok=True)
    if not isinstance(record, dict) or not {"events", "post", "outcome", "forbidden"} <= set(record):
        return None
    return record


def _run_checks(kernel: _Kernel, checks: list[Check], salt: int, assignment: str, question_timeout: float,
                on_timeout, records: dict[str, dict | None]) -> dict[str, dict | None]:
    """Each check in ``kernel``; its record (in ``records``), or None. A question whose check times out skips
    its other checks."""
    timed_out: set[str] = set()
    for check in checks:
        if check.question in timed_out:
            records[check.key] = None
            continue
        out = kernel.scratch / f"record-{secrets.token_hex(8)}.pt"
        cell = kernel.run(_check_cell(check, salt, out, rule_for(assignment, check.question)), question_timeout)
        if kernel.timed_out:
            timed_out.add(check.question)
            on_timeout(check.question)
        records[check.key] = _load_record(out)
    return records


# --- the reference ---------------------------------------------------------------------------------------

_REFERENCES: dict[tuple, dict] = {}


def _solution_cells(master_nb) -> list[int]:
    """Indices of the master's code cells that are not checks."""
    keep, in_tests = [], False
    for i, cell in enumerate(master_nb.cells):
        if cell.cell_type == "raw":
            in_tests = {"# BEGIN TESTS": True, "# END TESTS": False}.get(cell.source.strip(), in_tests)
        elif cell.cell_type == "code" and not in_tests:
            keep.append(i)
    return keep


def reference_records(master: Path, salt: int, checks: list[Check] | None = None) -> dict[str, dict]:
    """The record of every check of ``master`` run on the master's solution, in the grader's own process.

    The master's solution cells (its code cells, checks left out) run in a private namespace of
    this process; then every check runs on it through the same harness as in the learner's kernel,
    its assertions included: they compare the solution with the ``kd_ref`` oracle on the very
    (salted) inputs of this grading run, so a reference that disagrees with the oracle stops grading.
    """
    master = Path(master).resolve()
    key = (str(master), master.stat().st_mtime_ns, salt)
    if key in _REFERENCES:
        return _REFERENCES[key]
    if checks is None:
        checks = [c for t in question_tests(master) for c in checks_of(t)[1]]
    nb = nbformat.read(master, as_version=4)
    rules = {c.question: rule_for(assignment_name(nb), c.question) for c in checks}
    namespace: dict = {"__name__": f"kd_ref_reference_{master.stem}"}
    threads, cwd = torch.get_num_threads(), os.getcwd()
    records = {}
    try:
        os.chdir(master.parent)
        for index in _solution_cells(nb):
            exec(compile(nb.cells[index].source, f"<{master.name} cell {index}>", "exec"), namespace)
        harness: dict = {}
        exec(compile(HARNESS, "<kd_ref grading harness>", "exec"), harness)
        with tempfile.TemporaryDirectory(prefix="kd_ref_reference_") as scratch:
            for check in checks:
                out = Path(scratch) / f"{secrets.token_hex(8)}.pt"
                rule = rules[check.question]
                harness["run_check"](namespace, check.source, check.name, check.params,
                                     salt if check.hidden else None, list(rule.oracle), list(rule.ops), str(out))
                records[check.key] = _load_record(out)
    finally:
        os.chdir(cwd)
        torch.set_num_threads(threads)
        torch.set_printoptions(profile="default")
    for name, record in records.items():
        if record is None or record["outcome"][0] != "ok" or record["forbidden"]:
            detail = record and (record["outcome"], record["forbidden"])
            raise RuntimeError(f"the master {master.name} fails its own check {name}: {detail}")
    _REFERENCES[key] = records
    return records


# --- comparing records -----------------------------------------------------------------------------------

def _same(a, b) -> bool:
    """Records equal: same structure; numbers and tensors within RTOL / ATOL (exact for integers and booleans;
    a uint8 reference, an image, needs a uint8 answer)."""
    if isinstance(b, bool) or isinstance(a, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(b, (int, float)) and not isinstance(b, bool):
        return isinstance(a, (int, float)) and math.isclose(a, b, rel_tol=RTOL, abs_tol=ATOL) or (
            isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))
    if isinstance(b, torch.Tensor):
        if not isinstance(a, torch.Tensor) or a.shape != b.shape:
            return False
        if b.dtype == torch.uint8 and a.dtype != torch.uint8:      # images: keeping uint8 is part of the answer
            return False
        if not (b.is_floating_point() or b.is_complex()):
            return (not a.is_floating_point()) and bool(torch.equal(a.to(torch.int64), b.to(torch.int64)))
        return bool(torch.allclose(a.double(), b.double(), rtol=RTOL, atol=ATOL, equal_nan=True))
    if isinstance(b, (list, tuple)):
        return isinstance(a, (list, tuple)) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def _post_view(post: list, looks_at: frozenset) -> list:
    """The parts of the objects' final state that the check looks at (modules: training modes and
    state, gradients, hooks; tensors: gradients)."""
    view = []
    for item in post:
        if isinstance(item, (list, tuple)) and len(item) == 5 and item[0] == "module":
            _, training, state, grads, hooks = item
            view.append(("module", training if "state" in looks_at else None, state if "state" in looks_at else None,
                         grads if "grad" in looks_at else None, hooks if "hooks" in looks_at else None))
        else:
            view.append(item if "grad" in looks_at else None)
    return view


def _verdict(record: dict | None, reference: dict, looks_at: frozenset = frozenset({"grad", "hooks", "state"})
             ) -> tuple[bool, str]:
    """(passed, why not) for one check; only the grader's comparison can pass it."""
    if record is None:
        return False, "no result (the check did not finish)"
    kind, message = record["outcome"]
    if record["forbidden"]:
        return False, "; ".join(record["forbidden"])
    if kind == "error":
        return False, message
    if len(record["post"]) != len(reference["post"]) or not _same(record["events"], reference["events"]) or \
            not _same(_post_view(record["post"], looks_at), _post_view(reference["post"], looks_at)):
        return False, message or "the answer's outputs differ from the expected values"
    return True, ""


# --- grading ---------------------------------------------------------------------------------------------

def read_notebook(notebook: Path):
    if not notebook.exists():
        raise ValueError(f"notebook {notebook} does not exist")
    try:
        return nbformat.read(notebook, as_version=4)
    except Exception as err:                                           # not JSON, not a notebook
        raise ValueError(f"{notebook} is not a readable notebook: {err}") from err


def grade_notebook(notebook: str | Path, solutions_dir: str | Path | None = None, *,
                   cell_timeout: float = 300, question_timeout: float = 60, sandbox: bool = False,
                   limits: sandbox_mod.Limits | None = None, salt: int | None = None, slot: int = 0,
                   references: dict | None = None) -> GradeReport:
    """Score ``notebook`` against the checks of its master in ``solutions_dir``.

    Args:
        notebook: a learner's exercise notebook (or a master: solutions grade full marks).
        solutions_dir: where the masters are (default: ``./solutions`` if present, else the repository's).
        cell_timeout: seconds allowed to each of the learner's cells (then it is interrupted).
        question_timeout: seconds allowed to each of a question's checks (then the question's other checks are skipped).
        sandbox: run the learner's kernel in bubblewrap (:mod:`.sandbox`); raises
            :class:`~kd_ref.grading.sandbox.SandboxUnavailable` where it cannot run.
        limits: the sandbox's resource limits.
        salt: mixed into the hidden checks' seeds (default: drawn at random when the grader started).
        slot: which sandbox user id to use (concurrent jobs need different ones).
        references: records of the master's checks for this ``salt`` (default: made now).
    """
    start = time.monotonic()
    notebook = Path(notebook).resolve()
    nb = read_notebook(notebook)
    if solutions_dir is None:
        solutions_dir = Path("solutions") if Path("solutions").is_dir() else SOLUTIONS
    master = master_for(nb, Path(solutions_dir))
    if sandbox:
        sandbox_mod.check_sandbox()
    salt = SESSION_SALT if salt is None else salt
    assignment = assignment_name(nb)

    questions, checks = {}, []
    for test in question_tests(master):
        points, question_checks = checks_of(test)
        questions[test.stem] = QuestionResult(test.stem, 0.0, points)
        checks += question_checks
    if references is None:
        references = reference_records(master, salt, checks)
    report = GradeReport(str(notebook), list(questions.values()))
    records = _run_learner(nb, notebook, checks, salt, assignment, report, questions, cell_timeout,
                           question_timeout, sandbox, limits or sandbox_mod.Limits(), slot)

    static = forbidden_uses(nb, assignment)
    for check in checks:
        question = questions[check.question]
        record = records.get(check.key)
        passed, why = _verdict(record, references[check.key], check.looks_at)
        if passed:
            question.score += check.points
        elif check.hidden:
            question.hidden_failed += 1
        else:
            question.failed_public.append(why)
        if record and record["forbidden"]:
            question.forbidden += [f for f in record["forbidden"] if f not in question.forbidden]
    for name, found in static.items():
        if name in questions:
            questions[name].forbidden.append("forbidden here: " + ", ".join(found))
    for question in questions.values():
        if question.forbidden:
            question.score = 0.0
        question.messages = [*question.messages, *question.failed_public, *question.forbidden]
        if question.hidden_failed:
            question.messages.append(f"{question.hidden_failed} hidden check(s) failed")
    report.seconds = time.monotonic() - start
    return report


def _run_learner(nb, notebook: Path, checks, salt, assignment, report, questions, cell_timeout, question_timeout,
                 sandboxed, limits, slot) -> dict[str, dict | None]:
    """Warm up, run the learner's cells, then each check, in one kernel; the records (absent: None)."""
    scratch = Path(tempfile.mkdtemp(prefix="kd_ref_grade_"))
    try:
        # The kernel works in the scratch folder, beside a copy of the notebook under its exercise's name
        # (otter's `grader = otter.Notebook("exNN_....ipynb")` reads its public checks from that file), so
        # a renamed notebook (alice.ipynb) still gets its `grader.check` cells run.
        if notebook.is_file():
            shutil.copy(notebook, scratch / f"{assignment}.ipynb")
        kernel = _Kernel(nb, scratch, scratch, sandboxed, limits, slot)
        learner_cells = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
        records: dict[str, dict | None] = {}
        try:
            with kernel.client.setup_kernel():
                kernel.run(_WARM_UP, max(cell_timeout, _WARM_UP_LIMIT))
                for index in learner_cells:
                    error = _error_of(kernel.run_existing(index, cell_timeout))
                    if kernel.timed_out:
                        error = f"time limit of {math.ceil(cell_timeout)} s exceeded"
                    if error:
                        report.problems.append(f"cell {index}: {error}")

                def timeout(question):
                    questions[question].messages.append(f"time limit of {math.ceil(question_timeout)} s exceeded")
                    report.problems.append(f"{question}: time limit of {math.ceil(question_timeout)} s exceeded")
                _run_checks(kernel, checks, salt, assignment, question_timeout, timeout, records)
        except (DeadKernelError, KernelStuck) as err:
            what = "the kernel died" if isinstance(err, DeadKernelError) else "the kernel stopped answering"
            report.problems.append(f"killed: {what} ({err}); a resource limit, or the notebook ended it")
            for question in questions.values():
                question.messages.append(f"not graded after that: {what}")
        return records
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
