"""``kd-ref text``: the JSON contract, the printed study, bad input, and the paired-effect report."""
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from kd_ref.cli import main
from kd_ref.recipes.text import CONFIGS, METHODS, SELECTED, SELECTION_GRIDS, kd_effect, learning_rate


pytestmark = pytest.mark.usefixtures("restore_threads")   # tests/conftest.py


@pytest.mark.slow
def test_text_smoke_writes_the_json_contract_and_prints_the_study(tmp_path, capsys):
    out = tmp_path / "text.json"
    assert main(["text", "--profile", "smoke", "--seeds", "2", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert list(result)[:5] == ["profile", "data", "device", "seconds", "rows"]   # the contract, then provenance
    assert result["profile"] == "smoke" and result["device"] == "cpu" and result["seconds"] > 0
    assert result["data"].startswith("pydoc_data.topics (CPython's help texts")
    names = ["teacher", *METHODS]
    assert [(r["name"], r["metric"]) for r in result["rows"]] == ([(n, "val_bits_per_char") for n in names]
                                                                  + [(n, "test_bits_per_char") for n in names])
    for row in result["rows"]:
        assert list(row) == ["name", "metric", "mean", "std", "n"]
        assert row["n"] == 2
        assert 0.0 < row["mean"] < 7.0 and row["std"] >= 0.0          # below log2(103) = 6.69 after training
    assert "/ test 46,499 characters (80 / 10 / 10 contiguous blocks" in result["data"]
    printed = capsys.readouterr().out
    assert "kd-ref text | profile smoke | device cpu | seeds 0..1" in printed
    assert "473,472" not in printed and "33,088 parameters" in printed  # the smoke teacher, not the cpu one
    assert "val bits/char  test bits/char" in printed
    assert "Effects on test bits/char" in printed and "2 seeds):" in printed and "95 % CI" in printed
    assert "Samples (seed 0" in printed and "numbers not meaningful" in printed


@pytest.mark.slow
def test_text_select_tries_the_grid_on_validation_and_writes_every_candidate(tmp_path, capsys, monkeypatch):
    import kd_ref.data.text as data
    scored = []                                  # the number of windows of every evaluation: never the test ones
    real = data.bits_per_char
    monkeypatch.setattr("kd_ref.recipes.text.bits_per_char",
                        lambda model, windows, device="cpu": scored.append(windows.n_targets) or real(model, windows, device))
    out = tmp_path / "selection.json"
    assert main(["text", "--profile", "smoke", "--select", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    grid = SELECTION_GRIDS["smoke"]
    assert result["profile"] == "smoke" and result["seed"] == 0 and result["split_seed"] == 0
    assert result["config"] == asdict(CONFIGS["smoke"])
    candidates = result["candidates"]
    assert len(candidates) == grid.size() == 9
    lrs = [c for c in candidates if c["stage"] == "student_lr"]
    kds = [c for c in candidates if c["stage"] == "kd"]
    assert [c["student_lr"] for c in lrs] == list(grid.student_lr) and {c["student"] for c in lrs} == {"student_scratch"}
    best_lr = min(lrs, key=lambda c: c["val_bits_per_char"])["student_lr"]
    assert [(c["T"], c["kd_weight"], c["ce_weight"]) for c in kds] == [(T, kd, ce) for T in grid.T
                                                                        for kd, ce in grid.weights]
    assert {c["student_lr"] for c in kds} == {best_lr}
    best = min(kds, key=lambda c: c["val_bits_per_char"])
    assert result["chosen"] == {k: best[k] for k in SELECTED}
    assert scored and set(scored) == {3000 - 1}     # validation only: its first 3,000 characters, one block
    printed = capsys.readouterr().out
    assert "kd-ref text --select | profile smoke" in printed and "chosen: student_lr" in printed


def test_select_refuses_checkpoints(capsys):
    assert main(["text", "--profile", "smoke", "--select", "--checkpoints", "ck"]) == 2
    assert "--select does not save or resume checkpoints" in capsys.readouterr().err


def test_the_cpu_config_holds_the_choices_of_the_committed_selection_run():
    """``notebooks/results/text_selection.cpu.json`` is a real ``kd-ref text --profile cpu --select`` run."""
    path = Path(__file__).resolve().parents[1] / "notebooks" / "results" / "text_selection.cpu.json"
    selection = json.loads(path.read_text())
    config = CONFIGS["cpu"]
    assert selection["profile"] == "cpu" and selection["seed"] == 0
    for field in SELECTED:                              # the chosen settings are the study's settings
        assert getattr(config, field) == selection["chosen"][field], field
    for field, value in asdict(config).items():         # and the rest is what the selection ran with
        if field not in SELECTED:
            assert selection["config"][field] == value, f"{field}: rerun kd-ref text --profile cpu --select"
    grid = SELECTION_GRIDS["cpu"]
    assert len(selection["candidates"]) == grid.size()
    kds = [c for c in selection["candidates"] if c["stage"] == "kd"]
    assert {c["T"] for c in kds} >= {1.0, 2.0, 4.0} and len({(c["kd_weight"], c["ce_weight"]) for c in kds}) >= 2
    assert selection["chosen"] == {k: min(kds, key=lambda c: c["val_bits_per_char"])[k] for k in SELECTED}


@pytest.mark.slow
def test_text_reads_any_text_file(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog. " * 200, encoding="utf-8")
    assert main(["text", "--profile", "smoke", "--seeds", "1", "--text", str(corpus)]) == 0
    printed = capsys.readouterr().out
    assert f"data: {corpus}: 9,000 characters, vocabulary 28" in printed
    assert "(one seed): one seed: no interval" in printed


@pytest.mark.parametrize("args, message", [
    (["--seeds", "0"], "argument --seeds: must be a positive integer, got '0'"),
    (["--profile", "laptop"], "unknown profile 'laptop' (KD_PROFILE); choose one of smoke, cpu, gpu, auto"),
    (["--text", "/no/such/file.txt"], "/no/such/file.txt"),
    (["--json", "/no/such/dir/out.json"], "cannot write --json '/no/such/dir/out.json': No such file or directory"),
])
def test_bad_input_is_one_clear_line_before_any_training(args, message, capsys):
    try:
        code = main(["text", "--profile", "smoke", *args])
    except SystemExit as exit_:                      # argparse's own errors
        code = exit_.code
    assert code == 2
    captured = capsys.readouterr()
    last = captured.err.strip().splitlines()[-1]
    assert last.startswith("kd-ref text: error: ") and message in last
    assert "kd-ref text | profile" not in captured.out        # refused before training started


def test_a_text_too_short_for_the_context_is_refused(tmp_path, capsys):
    short = tmp_path / "short.txt"
    short.write_text("too short", encoding="utf-8")
    assert main(["text", "--profile", "smoke", "--text", str(short)]) == 2
    assert "too short for context 32" in capsys.readouterr().err


def _runs(pairs, metric="test_bits_per_char"):
    """Per-seed results with the given (scratch, kd) bits per character; teacher 2.0, hidden = kd - 0.1.

    The other split's metric holds a constant 9.0 for every model, so a report that read it would show no gap.
    """
    other = "val_bits_per_char" if metric == "test_bits_per_char" else "test_bits_per_char"
    return [{"teacher": {metric: 2.0, other: 9.0}, "student_scratch": {metric: s, other: 9.0},
             "student_kd": {metric: k, other: 9.0}, "student_kd_hidden_attn": {metric: k - 0.1, other: 9.0}}
            for s, k in pairs]


def test_kd_effect_reports_paired_differences_with_t_intervals_and_the_gap_closed():
    # kd - scratch = -0.3, -0.4, -0.5: mean -0.4, sd 0.1, se 0.1 / sqrt(3) = 0.0577; t(0.975, 2) = 4.3027
    # (tables), so the 95 % interval is -0.4 ± 0.248 = [-0.648, -0.152]: below 0, fewer bits: KD helps.
    text = kd_effect(_runs([(2.5, 2.2), (3.0, 2.6), (3.5, 3.0)]))
    assert text.startswith("Effects on test bits/char (lower is better")
    assert ("student_kd - student_scratch: -0.400 ± 0.058 (95 % CI [-0.648, -0.152], 3 seeds): helps"
            in text)
    assert "(scratch - kd) / (scratch - teacher) = 40%" in text          # 0.4 / (3.0 - 2.0)
    assert "student_kd_hidden_attn - student_kd: -0.100 ± 0.000 (95 % CI [-0.100, -0.100], 3 seeds): helps" in text
    # An interval that straddles 0 is no evidence either way.
    mixed = kd_effect(_runs([(2.5, 2.2), (3.0, 3.1), (3.5, 3.4)]))
    assert "student_kd - student_scratch: -0.100" in mixed and "no detectable difference  (token-level KD)" in mixed
    # KD that costs bits on every seed, consistently: "hurts".
    worse = kd_effect(_runs([(2.5, 2.7), (3.0, 3.25), (3.5, 3.65)]))   # +0.2, +0.25, +0.15: [+0.076, +0.324]
    assert "student_kd - student_scratch: +0.200" in worse and "hurts  (token-level KD)" in worse
    # The validation split on request.
    val = kd_effect(_runs([(2.5, 2.2), (3.0, 2.6), (3.5, 3.0)], metric="val_bits_per_char"), "val_bits_per_char")
    assert val.startswith("Effects on validation bits/char") and "-0.400 ± 0.058" in val
    # With the ablation rows: each intermediate term alone over token KD, and what the other adds to it.
    runs = _runs([(2.5, 2.2), (3.0, 2.6), (3.5, 3.0)])
    for run, (hidden, attn) in zip(runs, [(-0.08, 0.01), (-0.10, -0.01), (-0.12, 0.0)]):
        run["student_kd_hidden"] = {"test_bits_per_char": run["student_kd"]["test_bits_per_char"] + hidden}
        run["student_kd_attn"] = {"test_bits_per_char": run["student_kd"]["test_bits_per_char"] + attn}
    ablated = kd_effect(runs)
    assert "student_kd_hidden - student_kd: -0.100 ± 0.012 (95 % CI [-0.150, -0.050], 3 seeds): helps  (+ hidden states alone)" in ablated
    assert "student_kd_attn - student_kd: +0.000" in ablated and "no detectable difference  (+ attention alone)" in ablated
    assert "student_kd_hidden_attn - student_kd_hidden: +0.000" in ablated and "(adding attention to hidden states)" in ablated
    assert "student_kd_hidden_attn - student_kd_attn: -0.100" in ablated and "(adding hidden states to attention)" in ablated
    # No "twice the std" rule anywhere.
    assert "2 x" not in text + mixed + worse and "std" not in text + mixed + worse


def test_learning_rate_warms_up_then_decays_to_a_tenth():
    peak, total, warmup = 1e-2, 100, 10
    assert learning_rate(0, total, peak, warmup) == pytest.approx(peak / 10)
    assert learning_rate(9, total, peak, warmup) == pytest.approx(peak)
    assert learning_rate(10, total, peak, warmup) == pytest.approx(peak)
    assert learning_rate(55, total, peak, warmup) == pytest.approx(peak * (0.1 + 0.9 * 0.5))
    assert learning_rate(total, total, peak, warmup) == pytest.approx(peak / 10)


def test_profiles_keep_equal_head_counts_and_a_whole_layer_map():
    for name, config in CONFIGS.items():
        assert config.teacher_layers % config.student_layers == 0, name
        assert config.teacher_width % config.n_head == 0 and config.student_width % config.n_head == 0, name


def test_the_ablations_keep_one_intermediate_term_and_match_the_full_rows_terms():
    from kd_ref.models import CharGPT
    from kd_ref.recipes.text import ABLATIONS, make_distiller

    config = CONFIGS["smoke"]
    torch.manual_seed(0)
    teacher, student = CharGPT(config.model(11, "teacher")), CharGPT(config.model(11, "student"))
    ids = torch.randint(0, 11, (3, config.context + 1), generator=torch.Generator().manual_seed(1))
    x, y = ids[:, :-1], ids[:, 1:]

    def terms(name):
        torch.manual_seed(2)                       # the same projections for every row
        distiller = make_distiller(name, student, teacher, config)
        return distiller, distiller(x, y)[1]

    _, full = terms("student_kd_hidden_attn")
    assert full["hidden"] > 0 and full["attention"] > 0
    for name, kept, dropped in (("student_kd_hidden", "hidden", "attention"), ("student_kd_attn", "attention", "hidden")):
        assert name in ABLATIONS and name not in METHODS     # the lesson's rows are unchanged
        distiller, got = terms(name)
        assert got[dropped].item() == 0.0, name
        torch.testing.assert_close(got[kept], full[kept], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got["kd"], full["kd"], rtol=1e-5, atol=1e-6)
        sum(got.values()).backward()
        projections_trained = any(p.grad is not None and p.grad.abs().sum() > 0
                                  for p in distiller.projections.parameters())
        assert projections_trained == (kept == "hidden"), name
        student.zero_grad(set_to_none=True)
    with pytest.raises(ValueError, match="student_kd_attn"):
        make_distiller("student_kd_typo", student, teacher, config)


@pytest.mark.slow
def test_a_killed_text_run_resumes_with_the_numbers_of_an_uninterrupted_one(tmp_path):
    """Kill ``kd-ref text`` right after its first checkpoint, resume it, and compare with a fresh run."""
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "KD_PROFILE": "smoke"}
    args = [sys.executable, "-m", "kd_ref", "text", "--profile", "smoke", "--seeds", "1"]
    killed = subprocess.Popen([*args, "--checkpoints", str(tmp_path / "ck")], env=env, cwd=repo,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    teacher = tmp_path / "ck" / "smoke" / "seed0" / "teacher.pt"
    deadline = time.monotonic() + 120
    while not teacher.exists() and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert killed.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    saved = torch.load(teacher, weights_only=True)
    config = CONFIGS["smoke"]
    assert saved["step"] % config.eval_every == 0 and saved["step"] < config.teacher_steps   # mid-run, on a record

    resumed = subprocess.run([*args, "--checkpoints", str(tmp_path / "ck"), "--resume", "--json",
                              str(tmp_path / "resumed.json")], env=env, cwd=repo, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    state = torch.load(teacher, weights_only=True)
    assert state["resumes"] == [saved["step"]] and state["step"] == config.teacher_steps   # continued, not restarted
    assert [h["step"] for h in state["history"]] == list(range(config.eval_every, config.teacher_steps + 1,
                                                               config.eval_every))          # one validation curve

    fresh = subprocess.run([*args, "--json", str(tmp_path / "fresh.json")], env=env, cwd=repo, capture_output=True,
                           text=True)
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    rows = [json.loads((tmp_path / f"{run}.json").read_text())["rows"] for run in ("resumed", "fresh")]
    assert rows[0] == rows[1]                                       # same seed, same CPU: the same numbers


def test_resume_without_checkpoints_is_refused(capsys):
    assert main(["text", "--profile", "smoke", "--resume"]) == 2
    assert "--resume needs --checkpoints DIR" in capsys.readouterr().err



@pytest.mark.slow
def test_a_cached_teacher_gives_the_same_students_as_training_it_in_the_run(tmp_path):
    import argparse
    from dataclasses import replace

    from kd_ref.data.text import load_text
    from kd_ref.recipes import text as recipe
    from kd_ref.recipes.text import run_seed

    torch.set_num_threads(1)
    text, _ = load_text()
    config = replace(CONFIGS["smoke"], teacher_steps=30, student_steps=20, eval_every=10)   # seconds
    plain = run_seed(1, config, text, "cpu", methods=("student_kd",))
    first = run_seed(1, config, text, "cpu", methods=("student_kd",), teacher_cache=tmp_path)   # trains, saves
    again = run_seed(1, config, text, "cpu", methods=("student_kd",), teacher_cache=tmp_path)   # loads
    assert len(list(tmp_path.glob("chargpt-*.pt"))) == 1
    for run in (first, again):
        for name in ("teacher", "student_kd"):
            assert run[name]["test_bits_per_char"] == plain[name]["test_bits_per_char"], name
            assert run[name]["val_bits_per_char"] == plain[name]["val_bits_per_char"], name
            assert run[name]["sample"] == plain[name]["sample"], name
        assert run["teacher"]["train_tokens_per_s"] > 0
    # the command's option: bare (the default folder), a folder, or absent
    parser = argparse.ArgumentParser()
    recipe.register(parser.add_subparsers())
    assert parser.parse_args(["text", "--teacher-cache"]).teacher_cache is True
    assert parser.parse_args(["text", "--teacher-cache", "dir"]).teacher_cache == "dir"
    assert parser.parse_args(["text"]).teacher_cache is False
