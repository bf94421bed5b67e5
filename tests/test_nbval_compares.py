"""nbval really compares saved outputs: change one checked output and it must fail."""
import json
import os
import subprocess
import sys
from pathlib import Path
import pytest

pytestmark = pytest.mark.slow   # kernels or subprocesses: `make test`, not `make unit`

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "solutions" / "ex01_softmax_temperature.ipynb"


def run_nbval(path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "KD_PROFILE": "smoke"}
    return subprocess.run([sys.executable, "-m", "pytest", "--nbval", "--nbval-current-env", "-q", "-p", "no:cacheprovider",
                           str(path)], capture_output=True, text=True, cwd=path.parent, env=env, timeout=600)


def test_nbval_fails_when_a_checked_output_changes(tmp_path):
    nb = json.loads(SOURCE.read_text())
    # Find the first code cell whose saved output is a result (e.g. "tensor([1., 0., 0.])").
    cell = next(c for c in nb["cells"] if c["cell_type"] == "code" and any(o.get("output_type") == "execute_result"
                                                                           for o in c.get("outputs", [])))
    result = next(o for o in cell["outputs"] if o.get("output_type") == "execute_result")
    original = "".join(result["data"]["text/plain"])

    untouched = tmp_path / "untouched.ipynb"
    untouched.write_text(json.dumps(nb))
    ok = run_nbval(untouched)
    assert ok.returncode == 0, ok.stdout[-3000:]

    result["data"]["text/plain"] = original.replace("1.", "2.", 1)
    assert result["data"]["text/plain"] != original
    edited = tmp_path / "edited.ipynb"
    edited.write_text(json.dumps(nb))
    failed = run_nbval(edited)
    assert failed.returncode != 0
    assert "1 failed" in failed.stdout and "2." in failed.stdout
