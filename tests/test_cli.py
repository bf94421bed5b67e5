"""``kd-ref digits``: its JSON contract, bad input, determinism; and the report helpers."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from kd_ref.cli import main
from kd_ref.recipes.digits import CONFIGS, kd_effect, run_seed
from kd_ref.report import check_writable, format_table, paired_effect, summarize, text_table

ROWS = ["teacher", "student_scratch", "student_kd", "student_pseudo", "student_kd_few"]


@pytest.fixture
def smoke(monkeypatch):
    monkeypatch.setenv("KD_PROFILE", "smoke")
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)   # the command sets one thread on the CPU


def test_digits_smoke_writes_the_json_contract(smoke, tmp_path, capsys):
    path = tmp_path / "digits.json"
    assert main(["digits", "--seeds", "1", "--json", str(path)]) == 0
    result = json.loads(path.read_text())
    assert list(result)[:5] == ["profile", "data", "device", "seconds", "rows"]     # the contract, then:
    assert {"cpu", "cores", "torch", "commit", "date"} <= set(result["provenance"])
    assert result["settings"]["seeds"] == 1 and len(result["fingerprint"]) == 16
    assert result["profile"] == "smoke" and result["device"] == "cpu" and "digits" in result["data"]
    assert result["seconds"] > 0
    for row in result["rows"]:
        assert list(row) == ["name", "metric", "mean", "std", "n"]
        assert row["n"] == 1 and row["std"] == 0.0 and 0.0 <= row["mean"] <= 1.0
    accuracy_rows = [row["name"] for row in result["rows"] if row["metric"] == "accuracy"]
    assert accuracy_rows == ROWS
    assert {row["metric"] for row in result["rows"]} == {"accuracy", "fidelity", "ece"}
    out = capsys.readouterr().out
    assert all(name in out for name in ROWS) and "24,058" not in out and "1,702 parameters" in out
    assert "KD effect" in out and "(one seed): one seed: no interval" in out


@pytest.mark.slow
def test_digits_is_deterministic_for_a_seed(smoke):
    config, cpu = CONFIGS["smoke"], torch.device("cpu")
    first, again, other = run_seed(0, config, cpu), run_seed(0, config, cpu), run_seed(1, config, cpu)
    assert first == again                                    # exactly the same numbers
    assert first != other
    assert list(first) == ROWS and set(first["student_kd"]) == {"accuracy", "ece", "fidelity"}


def run_cli(*args, env_profile="smoke"):
    env = {**os.environ, "KD_PROFILE": env_profile}
    return subprocess.run([sys.executable, "-m", "kd_ref", *args], capture_output=True, text=True,
                          timeout=120, env=env)


@pytest.mark.slow
@pytest.mark.parametrize("args, profile, message", [
    (["digits", "--sedes", "2"], "smoke", "kd-ref: error: unrecognized arguments: --sedes 2"),
    (["digits", "--seeds", "0"], "smoke", "kd-ref digits: error: argument --seeds: must be a positive integer, "
                                          "got '0'"),
    (["digits", "--seeds", "two"], "smoke", "kd-ref digits: error: argument --seeds: must be a positive "
                                            "integer, got 'two'"),
    (["digits", "--json", "/no/such/dir/out.json"], "smoke",
     "kd-ref digits: error: cannot write --json '/no/such/dir/out.json': No such file or directory"),
    (["digits"], "laptop", "kd-ref digits: error: unknown profile 'laptop' (KD_PROFILE); choose one of smoke, "
                           "cpu, gpu, auto"),
])
def test_digits_bad_input_is_one_clear_line_and_a_nonzero_exit(args, profile, message):
    result = run_cli(*args, env_profile=profile)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == message    # after argparse's usage line, if any
    assert result.stdout == ""        # refused before any training started


def test_digits_json_path_that_is_a_directory_is_refused_before_training(smoke, tmp_path, capsys):
    assert main(["digits", "--json", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert captured.err == f"kd-ref digits: error: cannot write --json '{tmp_path}': Is a directory\n"
    assert captured.out == ""


def test_check_writable_leaves_nothing_behind(tmp_path):
    new, old = tmp_path / "new.json", tmp_path / "old.json"
    old.write_text("keep")
    check_writable(new)
    check_writable(old)
    assert not new.exists() and old.read_text() == "keep"


def test_summarize_uses_the_sample_standard_deviation():
    row = summarize("student_kd", "accuracy", [0.8, 0.9, 1.0])
    assert row == {"name": "student_kd", "metric": "accuracy", "mean": pytest.approx(0.9),
                   "std": pytest.approx(0.1), "n": 3}
    assert summarize("teacher", "accuracy", [0.5])["std"] == 0.0


def test_format_table_shows_percent_mean_and_std():
    rows = [summarize("teacher", "accuracy", [0.99, 0.97]), summarize("student_kd", "accuracy", [0.9, 0.8]),
            summarize("student_kd", "fidelity", [0.91, 0.91])]
    lines = format_table(rows, ["accuracy", "fidelity"]).splitlines()
    assert lines[0].split() == ["name", "accuracy", "%", "fidelity", "%"]
    assert lines[2].split() == ["teacher", "98.0", "±", "1.4", "-"]
    assert lines[3].split() == ["student_kd", "85.0", "±", "7.1", "91.0", "±", "0.0"]


def test_kd_effect_reports_paired_differences_with_t_intervals():
    def run(teacher, scratch, kd):
        return {"teacher": {"accuracy": teacher}, "student_scratch": {"accuracy": scratch},
                "student_kd": {"accuracy": kd}, "student_pseudo": {"accuracy": kd},
                "student_kd_few": {"accuracy": scratch}}
    # Per-seed differences 10, 12, 14 points: mean 12, sd 2, se 2 / sqrt(3) = 1.155; t(0.975, 2) = 4.3027 (tables):
    # the 95 % interval is 12 ± 4.97 = [7.0, 17.0], above 0: KD helps.
    text = kd_effect([run(0.99, 0.70, 0.80), run(0.99, 0.80, 0.92), run(0.99, 0.90, 1.04)])
    assert "student_kd - student_scratch: +12.0 ± 1.2 (95 % CI [+7.0, +17.0], 3 seeds): helps" in text
    assert "(kd - scratch) / (teacher - scratch) = 63%" in text          # 12 / 19
    assert "student_kd_few - student_scratch: +0.0 ± 0.0" in text


def test_paired_effect_is_the_paired_t_interval():
    effect = paired_effect([1.0, 2.0, 2.5, 1.5], [0.5, 0.5, 0.5, 0.5])   # differences 0.5, 1.5, 2.0, 1.0
    se = np.std([0.5, 1.5, 2.0, 1.0], ddof=1) / 2                       # sd / sqrt(4)
    assert effect.mean == pytest.approx(1.25) and effect.se == pytest.approx(se) and effect.n == 4
    assert effect.high - effect.mean == pytest.approx(3.182446 * se, rel=1e-6)   # t(0.975, 3), from tables
    assert effect.verdict() == "helps"
    assert paired_effect([1.0, -1.0, 0.5], [0.0, 0.0, 0.0]).verdict() == "no detectable difference"
    assert paired_effect([-3.0, -2.0, -2.5], [0.0, 0.0, 0.0]).verdict() == "hurts"
    single = paired_effect([1.0], [0.0])
    assert single.low is None and single.verdict() == "one seed: no interval"
    with pytest.raises(ValueError, match="pair up"):
        paired_effect([1.0, 2.0], [1.0])


def test_text_table_aligns_and_keeps_separators():
    table = text_table(["name", "a", "|", "b"], [["x", "1.0", "|", "22"], ["longer", "10.5", "|", "3"]], separators=[2])
    assert table.splitlines() == ["name       a  |   b", "------  ----  |  --", "x        1.0  |  22",
                                  "longer  10.5  |   3"]
    with pytest.raises(ValueError, match="cells like the header"):
        text_table(["a", "b"], [["only one"]])


def test_run_seed_scores_only_test_or_validation():
    with pytest.raises(ValueError, match="evaluate_on must be 'test' or 'val'"):
        run_seed(0, CONFIGS["smoke"], torch.device("cpu"), evaluate_on="train")


@pytest.mark.slow
def test_seeds_in_parallel_processes_give_the_numbers_of_a_sequential_run(one_thread):
    from kd_ref.recipes.seeds import map_seeds
    config, device = CONFIGS["smoke"], torch.device("cpu")
    sequential = [run_seed(seed, config, device) for seed in (0, 1)]
    assert map_seeds(run_seed, [0, 1], config, device, workers=2) == sequential
