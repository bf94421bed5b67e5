"""``kd-ref cifar --protocol crd``: RepDistiller's protocol on generated CIFAR files in the real format.

What it must change (HobbitLong/RepDistiller ``train_student.py`` and
``scripts/run_cifar_distill.sh``): every training image, no validation split; SGD with
plain momentum 0.9, lr 0.05, weight decay 5e-4, batch 64; AT weight 1000; the test set
scored after every epoch, with the last-epoch and the best-epoch accuracy both reported.
"""
import json
from dataclasses import replace

import pytest
import torch

from kd_ref.cli import main
from kd_ref.data.cifar import load_cifar, write_fake_cifar
from kd_ref.recipes import cifar as recipe

pytestmark = pytest.mark.usefixtures("one_thread")       # tests/conftest.py


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    write_fake_cifar(root, "cifar10", train_size=150, test_size=40, seed=0)    # 150 = 2 x 64 + 22: a partial batch
    return load_cifar(root, "cifar10")


def test_the_crd_protocol_changes_the_optimiser_and_the_at_weight_only():
    course = recipe.CONFIGS["gpu"]
    crd = recipe.with_protocol(course, "crd")
    assert recipe.with_protocol(course, "course") is course
    assert (course.nesterov, crd.nesterov) == (True, False)
    assert (crd.momentum, crd.lr, crd.weight_decay, crd.batch_size) == (0.9, 0.05, 5e-4, 64)
    assert (course.weights["at"]["at_weight"], crd.weights["at"]["at_weight"]) == (500.0, 1000.0)
    assert {k: v for k, v in crd.weights.items() if k != "at"} == {k: v for k, v in course.weights.items() if k != "at"}
    assert (crd.teacher, crd.student, crd.teacher_epochs, crd.student_epochs) == ("resnet32x4", "resnet8x4", 240, 240)
    assert course.weights["at"]["at_weight"] == 500.0                 # the course config is not modified
    with pytest.raises(ValueError, match="protocol must be one of course, crd"):
        recipe.with_protocol(course, "mdistiller")


def test_the_crd_split_trains_on_every_image_and_scores_the_test_set(data):
    crd = recipe.split_cifar(data, recipe.with_protocol(recipe.CONFIGS["smoke"], "crd"))
    course = recipe.split_cifar(data, recipe.CONFIGS["smoke"])
    assert len(crd.train[1]) == 150 and torch.equal(crd.train[1].sort().values, data.train_labels.sort().values)
    assert crd.val[0] is crd.test[0] and len(crd.test[1]) == 40
    assert "no validation split" in crd.description
    assert len(course.train[1]) + 30 == 150 and len(course.val[1]) == 30    # course: 150 // 5 held out


def test_the_crd_protocol_uses_plain_momentum_and_reports_last_and_best_epoch(data, monkeypatch):
    made = []
    real_sgd = torch.optim.SGD

    def spy(params, **kwargs):
        made.append(kwargs)
        return real_sgd(params, **kwargs)

    monkeypatch.setattr(torch.optim, "SGD", spy)
    config = replace(recipe.with_protocol(recipe.CONFIGS["smoke"], "crd"), teacher="resnet8_tiny",
                     teacher_epochs=2, student_epochs=2)
    split = recipe.split_cifar(data, config)
    result = recipe.run_seed(0, config, split, ["at"], device=torch.device("cpu"), autocast_dtype=None)
    assert made and all(kw["momentum"] == 0.9 and kw["nesterov"] is False and kw["weight_decay"] == 5e-4
                        for kw in made)
    for name in ("teacher", "student_scratch", "student_at"):
        scores = result[name]
        assert 0.0 <= scores["accuracy"] <= scores["best_accuracy"] <= 1.0    # the last epoch is one of the epochs
    rows = recipe.summarize_runs([result])
    assert [r["metric"] for r in rows if r["name"] == "student_at"] == ["accuracy", "best_accuracy", "fidelity"]


def test_the_crd_protocol_keeps_the_last_partial_batch(data, monkeypatch):
    seen = []
    real = recipe.DeviceBatches

    def spy(*args, **kwargs):
        batches = real(*args, **kwargs)
        seen.append((kwargs.get("augment"), kwargs.get("drop_last"), len(batches)))
        return batches

    monkeypatch.setattr(recipe, "DeviceBatches", spy)
    config = replace(recipe.with_protocol(recipe.CONFIGS["smoke"], "crd"), teacher="resnet8_tiny",
                     teacher_epochs=1, student_epochs=1)
    recipe.run_seed(0, config, recipe.split_cifar(data, config), [], device=torch.device("cpu"), autocast_dtype=None)
    assert [(drop, n) for augment, drop, n in seen if augment] == [(False, 3)]        # 64 + 64 + 22 images
    seen.clear()
    config = replace(config, protocol="course")
    recipe.run_seed(0, config, recipe.split_cifar(data, config), [], device=torch.device("cpu"), autocast_dtype=None)
    assert [(drop, n) for augment, drop, n in seen if augment] == [(True, 1)]         # 120 images: one full batch


@pytest.mark.slow
def test_cli_protocol_crd_smoke_json_and_table(tmp_path, capsys):
    out = tmp_path / "crd.json"
    assert main(["cifar", "--profile", "smoke", "--protocol", "crd", "--seeds", "1", "--methods", "at",
                 "--data", str(tmp_path / "none"), "--checkpoints", str(tmp_path / "ck"), "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert {(r["name"], r["metric"]) for r in rows} >= {("teacher", "best_accuracy"), ("student_at", "best_accuracy")}
    printed = capsys.readouterr().out
    assert "protocol crd" in printed and "momentum 0.9 (plain)" in printed and "AT weight 1000" in printed
    assert "best epoch %" in printed and "no validation split" in printed
    assert "76.32" in printed and "mean of 5 runs" in printed
    assert (tmp_path / "ck" / "smoke-cifar10-crd" / "seed0" / "student_at.pt").exists()
