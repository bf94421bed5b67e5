"""The project around the library: the API contract, packaging, environment.yml, README."""
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

import kd_ref

ROOT = Path(__file__).resolve().parents[1]

# The public API table of DESIGN.md (a contract: these names must not change).
CONTRACT = [
    "softmax_t", "log_softmax_t", "kd_loss", "soft_cross_entropy", "distillation_loss", "dkd_loss",
    "hint_loss", "ConvRegressor", "attention_map", "at_loss", "rkd_distance_loss", "rkd_angle_loss",
    "rkd_loss", "sp_loss", "attention_score_loss", "attention_kl_loss", "hidden_state_loss",
    "value_relation_loss", "reverse_kl_loss", "generalized_jsd_loss", "skew_kl_loss",
]


def extras(project: dict) -> list[str]:
    """Every optional dependency (the grade and dev extras), without the self-reference of dev to grade."""
    return [r for extra in project["optional-dependencies"].values() for r in extra if not r.startswith("kd_ref")]


def test_every_contract_name_is_importable_from_kd_ref():
    missing = [n for n in CONTRACT if not hasattr(kd_ref, n)]
    assert not missing
    assert set(CONTRACT) <= set(kd_ref.__all__)
    for name in kd_ref.__all__:
        assert getattr(kd_ref, name).__doc__, f"{name} has no docstring"


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = project["dependencies"] + extras(project)
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    listed = [r for r in pip_section if not r.startswith("-")]
    assert {_name(r) for r in listed} == {_name(r) for r in wanted}
    assert sorted(r.replace(" ", "") for r in listed) == sorted(r.replace(" ", "") for r in wanted)
    assert "--editable ." in pip_section
    assert project["requires-python"] == ">=3.10"
    assert project["scripts"]["kd-ref"] == "kd_ref.cli:main"


def test_every_dependency_has_an_upper_bound():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for requirement in project["dependencies"] + extras(project):
        assert "<" in requirement, f"{requirement} has no upper bound"


def test_the_version_is_written_once_and_the_license_matches():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in pyproject["project"] and pyproject["project"]["dynamic"] == ["version"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "kd_ref.__version__"}
    versions = [p for p in (ROOT / "kd_ref").rglob("*.py") if "__version__ =" in p.read_text()]
    assert versions == [ROOT / "kd_ref" / "__init__.py"]
    assert pyproject["project"]["license"] == "MIT"
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    from importlib.metadata import version
    assert version("kd_ref") == kd_ref.__version__                   # the installed metadata reads the same line


def test_the_grade_extra_is_enough_for_grading_and_no_more():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    grade = {_name(r) for r in project["optional-dependencies"]["grade"]}
    assert {"otter-grader", "nbformat", "nbclient", "ipykernel"} <= grade
    assert not grade & {"jupyterlab", "matplotlib", "pytest", "nbval"}    # the course, not the grader
    assert "kd_ref[grade]" in project["optional-dependencies"]["dev"]


@pytest.mark.slow
def test_no_import_cycle_between_the_command_and_the_recipes():
    for path in (ROOT / "kd_ref" / "recipes").glob("*.py"):
        assert "from ..cli" not in path.read_text() and "import kd_ref.cli" not in path.read_text(), path.name
    result = subprocess.run([sys.executable, "-m", "kd_ref", "--version"], capture_output=True, text=True,
                            cwd=ROOT, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == f"kd-ref {kd_ref.__version__}"


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme and "make lab" in readme
    ci = [line.strip() for line in (ROOT / ".ci/run").read_text().splitlines()]
    assert "make test" in ci


def readme_python_blocks():
    return re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


@pytest.mark.slow
def test_readme_code_blocks_run_smoke(tmp_path):
    """Smoke test: every Python block of the README runs as written (so the docs never rot)."""
    blocks = readme_python_blocks()
    assert blocks, "README has no python blocks"
    script = tmp_path / "readme_blocks.py"
    script.write_text("\n\n".join(blocks))
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
