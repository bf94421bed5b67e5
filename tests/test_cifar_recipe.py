"""``kd-ref cifar`` and ``kd-ref bench cifar-pipeline``: JSON contract, bad input, kill + resume, torchrun."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from kd_ref.cli import main
from kd_ref.data.cifar import write_fake_cifar

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("restore_threads")   # tests/conftest.py


def cli(*args, timeout=300):
    """Run ``kd-ref`` in a fresh process (as a user would), smoke profile."""
    return subprocess.run([sys.executable, "-m", "kd_ref", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "KD_PROFILE": "smoke"}, cwd=REPO)


@pytest.mark.slow
def test_cifar_smoke_writes_the_json_contract(tmp_path, capsys):
    out = tmp_path / "cifar.json"
    assert main(["cifar", "--profile", "smoke", "--seeds", "2", "--methods", "at,kd", "--data", str(tmp_path / "none"),
                 "--checkpoints", str(tmp_path / "ck"), "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert list(result)[:5] == ["profile", "data", "device", "seconds", "rows"]   # the contract, then provenance
    assert result["profile"] == "smoke" and result["device"] == "cpu"
    assert result["data"].startswith("CIFAR-10 (generated in the real on-disk format: numbers are not meaningful)")
    names = [(r["name"], r["metric"]) for r in result["rows"]]
    assert names == [("teacher", "accuracy"), ("student_scratch", "accuracy"), ("student_kd", "accuracy"),
                     ("student_at", "accuracy"), ("student_scratch", "fidelity"), ("student_kd", "fidelity"),
                     ("student_at", "fidelity")]
    for row in result["rows"]:
        assert list(row) == ["name", "metric", "mean", "std", "n"]
        assert row["n"] == 2 and 0.0 <= row["mean"] <= 1.0 and row["std"] >= 0.0
    printed = capsys.readouterr().out
    assert "profile smoke | data: CIFAR-10 (generated" in printed and "numbers are not meaningful" in printed
    assert "Published reference (not this run)" in printed and "79.42" in printed
    assert sorted(p.name for p in (tmp_path / "ck" / "smoke-cifar10" / "seed1").iterdir()) == [
        "student_at.pt", "student_kd.pt", "student_scratch.pt", "teacher.pt"]


@pytest.mark.parametrize("args, message", [
    (["--methods", "kd,hint"], "argument --methods: unknown method(s) hint; choose from kd,fitnet,at,rkd,sp,dkd"),
    (["--dataset", "cifar20"], "argument --dataset: invalid choice: 'cifar20' (choose from"),
    (["--seeds", "0"], "argument --seeds: must be a positive integer, got '0'"),
    (["--teacher-label-smoothing", "1.5"], "argument --teacher-label-smoothing: must be a number in [0, 1), got '1.5'"),
])
def test_bad_options_are_one_clear_line(args, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["cifar", *args])
    assert exit_.value.code == 2
    last_line = capsys.readouterr().err.strip().splitlines()[-1]
    assert last_line.startswith("kd-ref cifar: error: ") and message in last_line


def test_missing_or_corrupt_data_and_bad_profile_are_refused_before_training(tmp_path, capsys):
    assert main(["cifar", "--profile", "cpu", "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("kd-ref cifar: error: CIFAR-10 not found: expected "
                          f"{tmp_path}/cifar-10-batches-py/data_batch_1; run with --download")
    folder = write_fake_cifar(tmp_path, "cifar10", train_size=10, test_size=5)
    (folder / "test_batch").write_bytes(b"truncated")
    assert main(["cifar", "--profile", "cpu", "--data", str(tmp_path)]) == 2
    assert f"{folder}/test_batch is corrupt" in capsys.readouterr().err
    assert main(["cifar", "--profile", "laptop"]) == 2
    assert "unknown profile 'laptop'" in capsys.readouterr().err
    assert main(["cifar", "--profile", "smoke", "--json", str(tmp_path / "no" / "dir.json")]) == 2
    captured = capsys.readouterr()
    assert "cannot write --json" in captured.err and captured.out == ""


@pytest.mark.slow
def test_a_killed_run_resumes_and_ends_with_the_numbers_of_an_uninterrupted_one(tmp_path):
    args = ["cifar", "--profile", "smoke", "--seeds", "1", "--methods", "kd", "--data", str(tmp_path / "none")]
    killed = subprocess.Popen([sys.executable, "-m", "kd_ref", *args, "--checkpoints", str(tmp_path / "ck"),
                               "--json", str(tmp_path / "killed.json")], env={**os.environ, "KD_PROFILE": "smoke"},
                              cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    teacher = tmp_path / "ck" / "smoke-cifar10" / "seed0" / "teacher.pt"
    deadline = time.monotonic() + 120
    while not teacher.exists() and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    killed.send_signal(signal.SIGKILL)                             # right after the first checkpoint
    killed.wait()
    assert killed.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (tmp_path / "killed.json").exists()
    saved = torch.load(teacher, weights_only=True)
    assert saved["epoch"] < 3                                      # killed during the teacher's 3 epochs

    resumed = cli(*args, "--checkpoints", str(tmp_path / "ck"), "--resume", "--json", str(tmp_path / "resumed.json"))
    assert resumed.returncode == 0, resumed.stderr
    assert torch.load(teacher, weights_only=True)["resumes"] == [saved["step"]]    # it continued, not restarted

    assert main([*args, "--checkpoints", str(tmp_path / "fresh"), "--json", str(tmp_path / "fresh.json")]) == 0
    rows = [json.loads((tmp_path / f"{run}.json").read_text())["rows"] for run in ("resumed", "fresh")]
    assert rows[0] == rows[1]                                       # same seed, same CPU: the same numbers


@pytest.mark.slow
def test_torchrun_two_processes_gloo_smoke(tmp_path):
    out = tmp_path / "ddp.json"
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "kd_ref",
         "cifar", "--profile", "smoke", "--seeds", "1", "--methods", "kd", "--data", str(tmp_path / "none"),
         "--checkpoints", str(tmp_path / "ck"), "--json", str(out)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "KD_PROFILE": "smoke", "OMP_NUM_THREADS": "1"},
        cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "x 2 processes (DistributedDataParallel)" in result.stdout
    # After every run the recipe checks that both ranks hold identical weights and buffers
    # (kd_ref.distributed.replicas_agree) and fails otherwise.
    assert "the 2 replicas held identical weights after every run" in result.stdout
    assert result.stdout.count("kd-ref cifar | profile smoke") == 1          # rank 0 alone prints
    rows = json.loads(out.read_text())["rows"]
    assert [r["name"] for r in rows if r["metric"] == "accuracy"] == ["teacher", "student_scratch", "student_kd"]
    assert all(0.0 <= r["mean"] <= 1.0 for r in rows)
    accuracy = {r["name"]: r["mean"] for r in rows if r["metric"] == "accuracy"}
    assert accuracy["teacher"] > 0.3                                # learned: chance is 0.1 (generated data)


def test_bench_cifar_pipeline_smoke(capsys):
    assert main(["bench", "cifar-pipeline", "--profile", "smoke", "--workers", "1", "--data", "/nonexistent"]) == 0
    printed = capsys.readouterr().out
    assert "512 generated CIFAR-10-format images" in printed
    for row in ("torchvision DataLoader, 0 workers", "torchvision DataLoader, 1 workers", "kd_ref DeviceBatches on cpu",
                "kd_ref vs DataLoader, 0 workers"):
        assert row in printed
