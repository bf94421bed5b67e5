"""`kd-ref grade --sandbox`: a hostile notebook is stopped, the stops are reported, everything else is graded.

One sandboxed gradebook run (two notebooks, two processes) serves the whole module. Skipped,
with bwrap's own reason, only on a machine where bubblewrap cannot run (``.ci/run`` installs it).
"""
import secrets
import socket
import threading
import time
from pathlib import Path

import nbformat
import pytest

from kd_ref.grading import grade_folder, grade_notebook, sandbox
from kd_ref.grading.assign import REPO, SOLUTIONS

pytestmark = pytest.mark.slow   # kernels or subprocesses: `make test`, not `make unit`

EX02 = SOLUTIONS / "ex02_kd_loss.ipynb"


def sandbox_missing_reason():
    try:
        sandbox.check_sandbox()
    except sandbox.SandboxUnavailable as err:
        return str(err)
    return None


needs_bwrap = pytest.mark.skipif(sandbox_missing_reason() is not None, reason=str(sandbox_missing_reason()))


class Listener:
    """A TCP server on 127.0.0.1 that counts the connections it accepts."""

    def __init__(self):
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port, self.accepted = self.server.getsockname()[1], 0
        self.server.settimeout(0.5)
        self.stop = False
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        while not self.stop:
            try:
                conn, _ = self.server.accept()
            except OSError:
                continue
            self.accepted += 1
            conn.close()

    def close(self):
        self.stop = True
        self.thread.join()
        self.server.close()


@pytest.fixture(scope="module")
def sandboxed_class(tmp_path_factory):
    token = secrets.token_hex(6)
    secret = Path.home() / f".kd_ref_secret_{token}"
    secret.write_text("the instructor's secret")
    escape = REPO / f".kd_ref_escape_{token}"
    listener = Listener()
    hostile = {
        "write outside": f"open({str(escape)!r}, 'w').write('escaped')",
        "read home": f"print(open({str(secret)!r}).read())",
        "socket": f"import socket\nsocket.create_connection(('127.0.0.1', {listener.port}), timeout=5).sendall(b'hi')",
        "memory": "import torch\nhog = []\nwhile True:\n    hog.append(torch.ones(2**26))",
        "fork": ("import os, time\nwhile True:\n    if os.fork() == 0:\n        time.sleep(3600)\n"
                 "        os._exit(0)"),
    }
    folder = tmp_path_factory.mktemp("sandboxed")
    nb = nbformat.read(EX02, as_version=4)
    first = len(nb.cells)
    nb.cells += [nbformat.v4.new_code_cell(code) for code in hostile.values()]
    nbformat.write(nb, folder / "hostile.ipynb")
    nbformat.write(nbformat.read(EX02, as_version=4), folder / "solved.ipynb")
    try:
        book = grade_folder(folder, SOLUTIONS, jobs=2, sandbox=True, limits=sandbox.Limits(memory_mb=2048),
                            cell_timeout=60)
        time.sleep(0.5)
        yield book, dict(zip(hostile, range(first, first + len(hostile)))), escape, listener.accepted
    finally:
        listener.close()
        secret.unlink()
        escape.unlink(missing_ok=True)


@needs_bwrap
def test_each_hostile_cell_is_stopped_and_reported(sandboxed_class):
    book, cells, escape, accepted = sandboxed_class
    rows = {Path(r.notebook).name: r for r in book.rows}
    problems = rows["hostile.ipynb"].problems
    said = {kind: next((p for p in problems if p.startswith(f"cell {index}:")), None) for kind, index in cells.items()}
    assert all(said.values()), f"not reported: {[k for k, v in said.items() if not v]}\n{problems}"
    assert "Read-only file system" in said["write outside"] and not escape.exists()
    assert "No such file or directory" in said["read home"]
    assert "Connection refused" in said["socket"] and accepted == 0
    assert any(word in said["memory"] for word in ("MemoryError", "can't allocate memory", "Cannot allocate memory"))
    assert "BlockingIOError" in said["fork"] or "Resource temporarily unavailable" in said["fork"]


@needs_bwrap
def test_the_hostile_notebooks_answers_and_the_other_notebook_are_still_graded(sandboxed_class):
    book = sandboxed_class[0]
    # exercise 02 is worth 18 points since issue 12 (was 15): full marks for both notebooks
    assert [(Path(r.notebook).name, r.total) for r in book.rows] == [("hostile.ipynb", 18.0), ("solved.ipynb", 18.0)]
    assert book.rows[1].problems == []


def test_without_bwrap_the_grader_refuses_rather_than_grading_unsandboxed(monkeypatch, capsys):
    from kd_ref.cli import main

    monkeypatch.setattr(sandbox.shutil, "which", lambda tool: None)
    monkeypatch.setattr(sandbox, "_CHECKED", {})
    with pytest.raises(sandbox.SandboxUnavailable, match="needs `bwrap`.*refusing to grade unsandboxed"):
        grade_notebook(EX02, SOLUTIONS, sandbox=True)
    assert main(["grade", str(EX02), "--sandbox"]) == 2
    assert "apt-get install -y bubblewrap" in capsys.readouterr().err


@needs_bwrap
def test_a_course_in_a_private_folder_under_tmp_stays_readable_to_the_sandbox(tmp_path, monkeypatch):
    # a clone made by `mktemp -d` sits in a mode-0700 folder under the hidden /tmp; bwrap would
    # recreate that folder's mode for the mount point, and the sandbox's own user id (as root)
    # could then not start Python. The parents are created as 0555 instead.
    import subprocess
    import tempfile

    private = Path(tempfile.mkdtemp(prefix="kd_ref_private_", dir="/tmp"))
    try:
        assert private.stat().st_mode & 0o777 == 0o700
        course = private / "course"
        course.mkdir()
        (course / "answer.txt").write_text("reached")
        course.chmod(0o755)
        (course / "answer.txt").chmod(0o644)
        needed = sandbox._needed_read_only()
        monkeypatch.setattr(sandbox, "_needed_read_only", lambda: [*needed, course])
        scratch = tmp_path / "scratch"
        sandbox.prepare_scratch(scratch)
        cmd = sandbox.command(["cat", str(course / "answer.txt")], scratch, sandbox.Limits())
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        assert (done.returncode, done.stdout) == (0, "reached"), done.stderr
    finally:
        import shutil
        shutil.rmtree(private)


@needs_bwrap
def test_a_course_root_on_sys_path_does_not_uncover_the_solutions(tmp_path, monkeypatch):
    # pytest and `python -m kd_ref grade` put the course's root on sys.path. For a clone under the hidden
    # /tmp, binding that root read-only would show the hidden solutions again (and, in a mode-0700
    # folder, hide the virtual environment from the sandbox's user). Only what the kernel needs is bound.
    import subprocess
    import tempfile

    private = Path(tempfile.mkdtemp(prefix="kd_ref_clone_", dir="/tmp"))
    try:
        (private / "solutions").mkdir()
        (private / "solutions" / "key.txt").write_text("the answers")
        (private / "kd_ref").mkdir()
        (private / "kd_ref" / "module.txt").write_text("reached")
        for path in (private / "solutions", private / "kd_ref"):
            path.chmod(0o755)
        for path in (private / "solutions" / "key.txt", private / "kd_ref" / "module.txt"):
            path.chmod(0o644)
        needed = sandbox._needed_read_only()
        monkeypatch.setattr(sandbox, "_needed_read_only", lambda: [*needed, private, private / "kd_ref"])
        monkeypatch.setattr(sandbox, "REPO", private)
        scratch = tmp_path / "scratch"
        sandbox.prepare_scratch(scratch)
        script = f"cat {private / 'kd_ref' / 'module.txt'}; ls {private / 'solutions'}"
        for mode in (0o755, 0o700):           # a `mktemp -d` clone, and a clone any user can enter
            private.chmod(mode)
            done = subprocess.run(sandbox.command(["sh", "-c", script], scratch, sandbox.Limits()),
                                  capture_output=True, text=True, timeout=60)
            assert done.stdout.split() == ["reached"], (oct(mode), done.stdout, done.stderr)   # solutions: empty
    finally:
        import shutil
        shutil.rmtree(private)
