"""``kd-ref grade --sandbox``: run a learner's kernel inside bubblewrap (bwrap), with limits.

The kernel gets: no network (a network namespace of its own, only its own loopback), its own
PID namespace (every process it starts dies with it), the file system read-only, the
instructor's home directory and the course's ``solutions/`` replaced by empty directories,
``/tmp`` empty and unwritable, one writable scratch directory (where the notebook, the
kernel's sockets and the answers' outputs live), and resource limits set with ``prlimit``:
data memory (``RLIMIT_DATA``), CPU seconds (``RLIMIT_CPU``), processes and threads
(``RLIMIT_NPROC``) and file size (``RLIMIT_FSIZE``).

When the grader runs as root (a container, CI), the kernel also drops to an unprivileged
user id of its own (one per concurrent job), so that the process limit applies to it: the
kernel does not apply ``RLIMIT_NPROC`` to root.

Where bwrap is missing or cannot create namespaces, :func:`check_sandbox` raises
:class:`SandboxUnavailable` with the reason: the grader never falls back to grading
unsandboxed when a sandbox was asked for.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from .assign import REPO


class SandboxUnavailable(RuntimeError):
    """``--sandbox`` was asked for but bubblewrap cannot run here."""


@dataclass(frozen=True)
class Limits:
    """The sandbox's resource limits."""
    memory_mb: int = 4096          # RLIMIT_DATA: heap and anonymous memory of each process
    cpu_seconds: int = 900         # RLIMIT_CPU: CPU time of each process (the kernel: all its cells)
    processes: int = 256           # RLIMIT_NPROC: processes and threads of the sandbox's user
    file_mb: int = 512             # RLIMIT_FSIZE: largest file it may write


_CHECKED: dict[str, str | None] = {}


def check_sandbox() -> None:
    """Raise :class:`SandboxUnavailable` unless bwrap and prlimit run here with the namespaces we use."""
    if "result" not in _CHECKED:
        _CHECKED["result"] = _probe()
    if _CHECKED["result"] is not None:
        raise SandboxUnavailable(_CHECKED["result"])


def _probe() -> str | None:
    for tool, package in (("bwrap", "bubblewrap"), ("prlimit", "util-linux")):
        if shutil.which(tool) is None:
            return (f"--sandbox needs `{tool}` (Debian/Ubuntu package {package}: "
                    f"sudo apt-get install -y {package}); refusing to grade unsandboxed")
    try:
        probe = subprocess.run(["bwrap", *_UNSHARE, "--die-with-parent", "--ro-bind", "/", "/",
                                "--proc", "/proc", "--dev", "/dev", "true"],
                               capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"--sandbox: bwrap could not start ({err}); refusing to grade unsandboxed"
    if probe.returncode != 0:
        return (f"--sandbox: bwrap cannot create namespaces on this machine ({probe.stderr.strip()}); "
                "unprivileged user namespaces may be disabled (sysctl kernel.unprivileged_userns_clone, "
                "or a container without them); refusing to grade unsandboxed")
    return None


def _home_dirs() -> list[Path]:
    homes = {Path.home(), Path("/root")}
    if os.environ.get("HOME"):
        homes.add(Path(os.environ["HOME"]))
    return sorted(h.resolve() for h in homes if h.exists())


def _needed_read_only() -> list[Path]:
    """What the kernel must read, even when it lives under a hidden home: Python and the course's package."""
    paths = {Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve(), Path(sys.executable).resolve().parent.parent,
             REPO.resolve() / "kd_ref"}
    for entry in sys.path:                     # site-packages, editable installs, PYTHONPATH entries
        if entry and Path(entry).is_dir():
            paths.add(Path(entry).resolve())
    return sorted(paths)


# Everything but the user namespace as root (setpriv then drops to a real, unprivileged user id), everything
# as another user (bwrap then needs an unprivileged user namespace).
_UNSHARE = (["--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try"]
            if os.geteuid() == 0 else ["--unshare-all"])


def command(argv: list[str], scratch: Path, limits: Limits, slot: int = 0) -> list[str]:
    """``argv`` wrapped in prlimit and bwrap, with ``scratch`` the only writable directory."""
    scratch = scratch.resolve()
    cmd = ["prlimit", f"--data={limits.memory_mb * 2**20}", f"--cpu={limits.cpu_seconds}",
           f"--nproc={limits.processes}", f"--fsize={limits.file_mb * 2**20}", "--",
           "bwrap", *_UNSHARE, "--die-with-parent", "--new-session", "--ro-bind", "/", "/",
           "--proc", "/proc", "--dev", "/dev"]
    hidden = [*_home_dirs(), Path("/tmp")]
    solutions = REPO.resolve() / "solutions"
    if solutions.is_dir():
        hidden.append(solutions)
    for path in hidden:                       # empty in the sandbox, and read-only (remounted below)
        cmd += [*_open_parents(path, hidden), "--perms", "0555", "--tmpfs", str(path)]
    for path in _needed_read_only():
        # a hidden path's ancestor is never bound: that would uncover it (`python -m` and pytest put the
        # course's root on sys.path, and the solutions are hidden inside it)
        if any(path == h or h in path.parents for h in hidden) and not any(
                s == path or s in path.parents for s in [scratch]) and not any(path in h.parents for h in hidden):
            cmd += [*_open_parents(path, hidden), "--ro-bind", str(path), str(path)]
    cmd += [*_open_parents(scratch, hidden), "--bind", str(scratch), str(scratch), "--chdir", str(scratch),
            "--setenv", "HOME", str(scratch), "--setenv", "TMPDIR", str(scratch),
            "--setenv", "IPYTHONDIR", str(scratch / ".ipython"), "--setenv", "MPLCONFIGDIR", str(scratch / ".mpl"),
            "--setenv", "JUPYTER_RUNTIME_DIR", str(scratch / ".runtime"),
            # the kernel cannot see the grader's process id from its PID namespace: no parent polling
            "--unsetenv", "JPY_PARENT_PID"]
    for path in hidden:                       # last: the mount points inside them exist now
        cmd += ["--remount-ro", str(path)]
    if os.geteuid() == 0:
        # root is exempt from RLIMIT_NPROC: drop to a user id of the sandbox's own (one per job)
        uid = 61000 + slot
        cmd += ["--", "setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--inh-caps=-all",
                "--bounding-set=-all", *argv]
    else:
        cmd += ["--", *argv]
    return cmd


def _open_parents(path: Path, hidden: list[Path]) -> list[str]:
    """bwrap options that create ``path``'s parents inside a hidden (tmpfs) directory as mode 0555.

    bwrap otherwise creates a mount point's missing parents with the modes of the real ones, so a
    course cloned into a ``mktemp -d`` folder (mode 0700) would be unreachable for the sandbox's own
    user id: the kernel could not even start Python.
    """
    roots = [h for h in hidden if h in path.parents]
    if not roots:
        return []
    root = max(roots, key=lambda h: len(h.parts))
    parents = [p for p in reversed(path.parents) if root in p.parents]
    return [arg for p in parents for arg in ("--perms", "0555", "--dir", str(p))]


def prepare_scratch(scratch: Path) -> None:
    """The scratch directory, writable by the sandbox's user (another user id when run as root)."""
    scratch.mkdir(parents=True, exist_ok=True)
    for sub in (".ipython", ".mpl", ".runtime"):
        (scratch / sub).mkdir(exist_ok=True)
    if os.geteuid() == 0:
        for path in [scratch, *scratch.rglob("*")]:
            os.chmod(path, 0o777 if path.is_dir() else 0o666)
