"""``kd-ref text``: the JSON contract, the printed study, bad input, and the paired-effect report."""
import json

import pytest

from kd_ref.cli import main
from kd_ref.recipes.text import CONFIGS, METHODS, kd_effect, learning_rate


pytestmark = pytest.mark.usefixtures("restore_threads")   # tests/conftest.py


def test_text_smoke_writes_the_json_contract_and_prints_the_study(tmp_path, capsys):
    out = tmp_path / "text.json"
    assert main(["text", "--profile", "smoke", "--seeds", "2", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert list(result) == ["profile", "data", "device", "seconds", "rows"]
    assert result["profile"] == "smoke" and result["device"] == "cpu" and result["seconds"] > 0
    assert result["data"].startswith("pydoc_data.topics (CPython's help texts")
    assert [r["name"] for r in result["rows"]] == ["teacher", *METHODS]
    for row in result["rows"]:
        assert list(row) == ["name", "metric", "mean", "std", "n"]
        assert row["metric"] == "bits_per_char" and row["n"] == 2
        assert 0.0 < row["mean"] < 7.0 and row["std"] >= 0.0          # below log2(103) = 6.69 after training
    printed = capsys.readouterr().out
    assert "kd-ref text | profile smoke | device cpu | seeds 0..1" in printed
    assert "473,472" not in printed and "33,088 parameters" in printed  # the smoke teacher, not the cpu one
    assert "KD effect on validation bits/char" in printed and "paired, 2 seeds" in printed
    assert "Samples (seed 0" in printed and "numbers not meaningful" in printed


def test_text_reads_any_text_file(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog. " * 200, encoding="utf-8")
    assert main(["text", "--profile", "smoke", "--seeds", "1", "--text", str(corpus)]) == 0
    printed = capsys.readouterr().out
    assert f"data: {corpus}: 9,000 characters, vocabulary 28" in printed
    assert "a spread needs at least 2 seeds" in printed


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


def _runs(pairs):
    """Per-seed results with the given (scratch, kd) bits per character; teacher 2.0, hidden = kd - 0.1."""
    return [{"teacher": {"bits_per_char": 2.0}, "student_scratch": {"bits_per_char": s},
             "student_kd": {"bits_per_char": k}, "student_kd_hidden_attn": {"bits_per_char": k - 0.1}}
            for s, k in pairs]


def test_kd_effect_reports_paired_and_plain_criteria_and_the_gap_closed():
    # Differences 0.3, 0.4, 0.5: mean 0.4 > 2 x std 0.1 = 0.2 (paired holds); scratch std 0.5: 0.4 < 1.0.
    text = kd_effect(_runs([(2.5, 2.2), (3.0, 2.6), (3.5, 3.0)]))
    assert "student_scratch - student_kd = +0.400" in text
    assert "mean of differences +0.400 > 2 x their std (0.200)? holds" in text
    assert "difference of means +0.400 > 2 x std of student_scratch (1.000)? does NOT hold" in text
    assert "(scratch - kd) / (scratch - teacher) = 40%" in text          # 0.4 / (3.0 - 2.0)
    assert "student_kd - student_kd_hidden_attn = +0.100 ± 0.000 (paired)  (helps: > 2 std)" in text


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
