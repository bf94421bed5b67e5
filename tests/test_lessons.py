"""The lessons' saved outputs are real runs, their results files are current, and no result is typed by hand.

See ``kd_ref/lesson.py`` for the machinery and the README ("Real runs, checked") for the policy.
"""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from kd_ref.lesson import Lesson, compare, fingerprint, notebook_code

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
LESSONS = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
GENERATED_DATA = {"06_cifar10"}          # saved from generated CIFAR-sized data, and says so
# A result-like number in prose: a percentage, a ± spread, or bits per character.
RESULT_NUMBER = re.compile(r"[-+−]?\d[\d,]*(?:\.\d+)?\s*(?:%|±\s*\d[\d.]*|bits(?:/| per )char)")


def _cells(path):
    return json.loads(path.read_text(encoding="utf-8"))["cells"]


def _outputs_text(cells) -> str:
    texts = []
    for cell in cells:
        for out in cell.get("outputs", []):
            texts.append("".join(out.get("text", "")))
            texts.append("".join(out.get("data", {}).get("text/plain", "")))
    return "\n".join(texts)


def test_there_are_lessons():
    assert len(LESSONS) >= 8


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.stem[:2])
def test_saved_outputs_are_a_real_run(path):
    cells = _cells(path)
    code = [c for c in cells if c["cell_type"] == "code"]
    first = "".join("".join(o.get("text", "")) for o in code[0]["outputs"])
    assert first.startswith(f"lesson {path.stem} | profile "), "the first output must be the lesson header"
    for needed in ("machine:", "cores", "torch", "run:", "commit"):
        assert needed in first, f"the header lacks {needed!r}"
    expected = "smoke" if path.stem in GENERATED_DATA else "cpu"
    assert f"| profile {expected} |" in first, f"{path.name} must be saved from a KD_PROFILE={expected} run"
    if path.stem in GENERATED_DATA:
        assert "generated" in first
    text = _outputs_text(cells)
    assert "numbers not meaningful" not in text
    assert "wall time of this run:" in text, "the run must end with lesson.finish() (the wall time)"


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.stem[:2])
def test_markdown_reports_no_number_the_outputs_do_not_show(path):
    cells = _cells(path)
    shown = _outputs_text(cells)
    missing = []
    for cell in cells:
        if cell["cell_type"] != "markdown":
            continue
        for match in RESULT_NUMBER.finditer("".join(cell["source"])):
            number = re.match(r"[-+−]?\d[\d,]*(?:\.\d+)?", match.group(0)).group(0).lstrip("+-−")
            if number not in shown:
                missing.append(match.group(0))
    assert not missing, f"{path.name}: result-like numbers in markdown that no saved output shows: {missing}"


def test_results_files_match_their_notebooks():
    """A committed results file whose settings or notebook code changed since it was written is stale."""
    run = subprocess.run([sys.executable, "-m", "kd_ref.lesson", "check", "--notebooks", str(NOTEBOOKS)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr


@pytest.mark.parametrize("path", sorted((NOTEBOOKS / "results").glob("[0-9][0-9]_*.cpu.json")), ids=lambda p: p.stem)
def test_results_files_are_what_the_saved_lesson_shows(path):
    """The file was written by the saved run: same commit and date as the notebook's header."""
    saved = json.loads(path.read_text(encoding="utf-8"))
    assert saved["profile"] == "cpu" and saved["studies"]
    for key in ("cpu", "cores", "torch", "commit", "seconds", "date"):
        assert key in saved["provenance"]
    first = [c for c in _cells(NOTEBOOKS / f"{saved['lesson']}.ipynb") if c["cell_type"] == "code"][0]
    header = _outputs_text([first])
    assert f"commit {saved['provenance']['commit']}" in header and saved["provenance"]["date"] in header


# -- the machinery itself -------------------------------------------------------------------------
def _payload(cpu, values, lesson="99_demo"):
    rows = [{"seed": s, "name": "student_kd", "metric": "accuracy", "value": v} for s, v in enumerate(values)]
    machine = {"cpu": cpu, "cpu_capability": "AVX2", "cores": 2, "torch": "2.15.0"}
    return {"lesson": lesson, "provenance": {**machine, "date": "2026-12-03 10:00 UTC"}, "studies": {"main": rows}}


def test_compare_is_exact_on_the_same_cpu():
    _, ok = compare(_payload("A", [0.9, 0.8]), _payload("A", [0.9, 0.8]))
    assert ok
    lines, ok = compare(_payload("A", [0.9, 0.8]), _payload("A", [0.9, 0.8000001]))
    assert not ok and any("DIFFERS" in line for line in lines)


def test_compare_is_exact_only_with_the_same_instruction_set_cores_and_torch():
    saved = _payload("A", [0.90, 0.92, 0.94])
    # A file saved before the instruction set was recorded cannot claim the same machine either: two
    # "AMD EPYC" CPUs, one with AVX-512 kernels, gave different lesson 10 numbers on 2026-12-07.
    for change in ({"cores": 8}, {"torch": "2.99.0"}, {"cpu_capability": "AVX512"}):
        rerun = _payload("A", [0.91, 0.93, 0.95])
        rerun["provenance"].update(change)
        lines, ok = compare(saved, rerun)
        assert ok and "2 standard errors" in lines[0], change   # judged by the seed-mean band, not exactly
    old_file = _payload("A", [0.90, 0.92, 0.94])
    del old_file["provenance"]["cpu_capability"]
    lines, ok = compare(old_file, _payload("A", [0.90, 0.92, 0.94]))
    assert ok and "kernels not recorded" in lines[0] and "2 standard errors" in lines[0]


def test_compare_on_another_cpu_allows_two_standard_errors():
    saved = _payload("A", [0.90, 0.92, 0.94])                     # mean 0.92, se 0.01155
    _, ok = compare(saved, _payload("B", [0.91, 0.93, 0.95]))     # mean 0.93: within 2 * sqrt(2) * se
    assert ok
    _, ok = compare(saved, _payload("B", [0.97, 0.99, 1.01]))     # mean 0.99: far outside
    assert not ok


def test_timings_are_shown_but_never_judged():
    saved, rerun = _payload("A", [0.9, 0.8]), _payload("A", [0.9, 0.8])
    saved["timings"] = {"cost": [{"seed": 0, "name": "student_kd", "metric": "latency_s", "value": 1e-4}]}
    rerun["timings"] = {"cost": [{"seed": 0, "name": "student_kd", "metric": "latency_s", "value": 3e-4}]}
    lines, ok = compare(saved, rerun)
    assert ok and any("not judged" in line for line in lines) and any(line.endswith("timing") for line in lines)
    rerun["studies"]["main"][1]["value"] = 0.7          # a real number still fails the comparison
    assert not compare(saved, rerun)[1]


def test_lesson_keeps_timings_apart_from_the_studies(tmp_path):
    nb = {"cells": [{"cell_type": "code", "source": "pass", "metadata": {}, "outputs": []}],
          "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    (tmp_path / "99_demo.ipynb").write_text(json.dumps(nb))
    lesson = Lesson("99_demo", data="toy", profile="smoke", notebook=tmp_path / "99_demo.ipynb",
                    results_dir=tmp_path / "results")
    lesson.settings(epochs=1)
    lesson.record("cost", 0, "m", "size_bytes", 100)
    lesson.record_timing("cost", 0, "m", "latency_s", 0.001)
    with pytest.raises(ValueError, match="timed twice"):
        lesson.record_timing("cost", 0, "m", "latency_s", 0.002)
    with pytest.raises(ValueError, match="finite"):
        lesson.record_timing("cost", 0, "m", "throughput", float("nan"))
    lesson.finish()
    payload = json.loads(lesson.results_path.read_text())
    assert [r["metric"] for r in payload["studies"]["cost"]] == ["size_bytes"]
    assert [r["metric"] for r in payload["timings"]["cost"]] == ["latency_s"]


@pytest.mark.parametrize("path", sorted((NOTEBOOKS / "results").glob("*.cpu.json")), ids=lambda p: p.name)
def test_no_clock_measurement_is_judged_as_a_result(path):
    """A latency, throughput or duration recorded with lesson.record would make make reproduce fail by chance."""
    payload = json.loads(path.read_text(encoding="utf-8"))
    clocks = {r["metric"] for rows in payload.get("studies", {}).values() for r in rows
              if re.search(r"latency|throughput|seconds|per_s|tok/s", r["metric"])}
    assert not clocks, f"{path.name}: record these with lesson.record_timing: {sorted(clocks)}"


def test_compare_flags_missing_rows_and_studies():
    saved = _payload("A", [0.9, 0.8])
    rerun = _payload("A", [0.9])
    assert not compare(saved, rerun)[1]
    rerun = {**saved, "studies": {}}
    assert not compare(saved, rerun)[1]


def test_fingerprint_changes_with_settings_and_code_not_with_markdown(tmp_path):
    def notebook(code, markdown):
        nb = {"cells": [{"cell_type": "markdown", "source": markdown, "metadata": {}},
                        {"cell_type": "code", "source": code, "metadata": {}, "outputs": []}],
              "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
        path = tmp_path / "nb.ipynb"
        path.write_text(json.dumps(nb))
        return notebook_code(path)

    base = fingerprint({"epochs": 10}, notebook("x = 1\n", "# text"))
    assert base == fingerprint({"epochs": 10}, notebook("x = 1   \n", "# other text"))
    assert base != fingerprint({"epochs": 11}, notebook("x = 1\n", "# text"))
    assert base != fingerprint({"epochs": 10}, notebook("x = 2\n", "# text"))


def test_lesson_records_and_writes_its_results(tmp_path, capsys):
    nb = {"cells": [{"cell_type": "code", "source": "pass", "metadata": {}, "outputs": []}],
          "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    (tmp_path / "99_demo.ipynb").write_text(json.dumps(nb))
    lesson = Lesson("99_demo", data="toy", profile="smoke", notebook=tmp_path / "99_demo.ipynb")
    lesson.header()
    with pytest.raises(RuntimeError, match="settings"):
        lesson.fingerprint
    lesson.settings(epochs=3)
    lesson.record_scores("main", 0, {"student_kd": {"accuracy": 0.5, "fidelity": 0.75}})
    with pytest.raises(ValueError, match="twice"):
        lesson.record("main", 0, "student_kd", "accuracy", 0.5)
    with pytest.raises(ValueError, match="finite"):
        lesson.record("main", 1, "student_kd", "accuracy", float("nan"))
    with pytest.raises(ValueError, match="JSON"):
        lesson.settings(config=object())
    assert lesson.finish() is None                  # nothing for a notebook to echo
    path = lesson.results_path
    saved = json.loads(path.read_text())
    assert path == tmp_path / "results" / "99_demo.smoke.json"
    assert saved["settings"] == {"epochs": 3} and saved["fingerprint"] == fingerprint({"epochs": 3}, ["pass"])
    assert saved["studies"]["main"] == [{"seed": 0, "name": "student_kd", "metric": "accuracy", "value": 0.5},
                                        {"seed": 0, "name": "student_kd", "metric": "fidelity", "value": 0.75}]
    out = capsys.readouterr().out
    assert out.startswith("lesson 99_demo | profile smoke | data: toy") and "wall time of this run" in out


# -- the README's result tables are the committed recipe runs -----------------------------------
def _readme_section(title: str) -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index(title)
    end = text.find("\n## ", start + len(title))
    return text[start:end if end != -1 else None]


def test_readme_digits_table_is_the_committed_run():
    from kd_ref.recipes.digits import CONFIGS, recipe_settings

    saved = json.loads((NOTEBOOKS / "results" / "digits_recipe.cpu.json").read_text(encoding="utf-8"))
    assert saved["fingerprint"] == fingerprint(recipe_settings(CONFIGS["cpu"], saved["settings"]["seeds"]), []), \
        "the digits recipe's cpu settings changed: re-run `kd-ref digits --seeds 5 --json " \
        "notebooks/results/digits_recipe.cpu.json` and update the README"
    section = _readme_section("## Run the digits demo")
    rows = {(r["name"], r["metric"]): r for r in saved["rows"]}
    names = sorted({r["name"] for r in saved["rows"]})
    for name in names:
        line = next(line for line in section.splitlines() if line.startswith(name + " "))
        shown = re.findall(r"\d+\.\d ± \d+\.\d|(?<=\s)-(?=\s|$)", line)
        expected = [f"{100 * rows[name, m]['mean']:.1f} ± {100 * rows[name, m]['std']:.1f}" if (name, m) in rows else "-"
                    for m in ("accuracy", "fidelity", "ece")]
        assert shown == expected, f"README digits table, {name}: {shown} != committed {expected}"
    assert f"{saved['seconds']:.0f} s" in section


def test_readme_text_table_is_lesson_07s_saved_run():
    import statistics

    saved = json.loads((NOTEBOOKS / "results" / "07_transformer_distillation.cpu.json").read_text(encoding="utf-8"))
    rows = saved["studies"]["text"]
    section = _readme_section("## Distil a small transformer: `kd-ref text`")
    names = list(dict.fromkeys(r["name"] for r in rows))
    for name in names:
        line = next(line for line in section.splitlines() if re.match(rf"{name}\s+[\d,]+\s+\d", line))  # table row
        shown = re.findall(r"\d+\.\d{3} ± \d+\.\d{3}", line)
        expected = []
        for metric in ("val bits/char", "test bits/char"):
            values = [r["value"] for r in rows if r["name"] == name and r["metric"] == metric]
            expected.append(f"{statistics.fmean(values):.3f} ± {statistics.stdev(values):.3f}")
        assert shown == expected, f"README text table, {name}: {shown} != lesson 07's saved run {expected}"
    assert saved["provenance"]["commit"] in section


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.stem[:2])
def test_notebooks_readme_states_the_marked_cells(path):
    """notebooks/README.md says, lesson by lesson, how many cells nbval does not compare (and why)."""
    code = [c for c in _cells(path) if c["cell_type"] == "code"]
    marked = sum("".join(c["source"]).startswith("# NBVAL_IGNORE_OUTPUT") for c in code)
    readme = (NOTEBOOKS / "README.md").read_text(encoding="utf-8")
    row = next((line for line in readme.splitlines() if line.startswith(f"| {path.stem[:2]} |")), None)
    assert row is not None, f"notebooks/README.md has no row for lesson {path.stem[:2]}"
    assert f"{marked} of {len(code)} code cells" in row, f"lesson {path.stem[:2]}: {marked} of {len(code)} marked"
