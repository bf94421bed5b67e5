"""Lesson 11's studies (kd_ref.recipes.compression): the validation choice, and that a chosen run is the study's run."""
import math

import pytest
import torch

from kd_ref.recipes import compression

pytestmark = pytest.mark.usefixtures("restore_threads")   # tests/conftest.py


def test_choose_takes_the_best_then_the_tie_metric_then_the_first_listed():
    scores = {3e-3: {"acc": 0.9, "loss": 0.3}, 1e-3: {"acc": 0.95, "loss": 0.4}, 1e-2: {"acc": 0.95, "loss": 0.2}}
    assert compression.choose(scores, "acc", higher_is_better=True, tie="loss") == (1e-2, 0.95)
    assert compression.choose(scores, "acc", higher_is_better=True) == (1e-3, 0.95)        # first of the tie
    assert compression.choose(scores, "loss", higher_is_better=False) == (1e-2, 0.2)
    with pytest.raises(ValueError, match="at least one candidate"):
        compression.choose({}, "acc", higher_is_better=True)


@pytest.mark.slow                                   # trains the smoke digits models and quantizes two of them
def test_digits_selection_trains_the_models_the_study_trains():
    from kd_ref.data import TensorBatches, load_digits_split
    from kd_ref.recipes.digits import CONFIGS, SPLIT_SEED
    from kd_ref.train import evaluate

    config = CONFIGS["smoke"]
    run = compression.CompressionRun(pruned_width=config.teacher_width // 2, finetune_epochs=1)
    lrs = dict(zip(compression.DIGITS_FINETUNED, list(run.finetune_lrs) * 3))     # each rate for some rows
    chosen = {lr: compression.digits_select(lr, config, run) for lr in run.finetune_lrs}
    study = compression.digits_seed(compression.SELECTION_SEED, config, run, keep=True, lrs=lrs)
    split = load_digits_split(SPLIT_SEED)
    val = TensorBatches(split.x_val, split.y_val, batch_size=512)
    for name, lr in lrs.items():                    # seed 0 at the same rate: the same model, the same validation score
        assert evaluate(study["models"][name], val)["accuracy"] == pytest.approx(chosen[lr][name]["val_accuracy"],
                                                                                  abs=1e-12), name
        assert 0.0 <= chosen[lr][name]["val_accuracy"] <= 1.0 and chosen[lr][name]["val_loss"] > 0
    assert list(study["accuracy"]) == list(compression.DIGITS_ROWS)
    with pytest.raises(ValueError, match="lrs must give a learning rate"):
        compression.digits_seed(0, config, run, lrs={"SVD r/4 + FT (CE)": 1e-3})


@pytest.mark.slow                                   # trains the smoke teacher (cached in tmp_path) and a few short runs
def test_text_runs_repeat_exactly_and_score_test_only_when_asked(tmp_path, monkeypatch):
    from kd_ref.recipes.text import CONFIGS

    monkeypatch.setenv("KD_TEACHER_CACHE", str(tmp_path))
    config = CONFIGS["smoke"]
    run = compression.TextCompressionRun(student_steps=6, finetune_steps=4, finetune_warmup=1, eval_chars=1000)
    for row in ("teacher MLP /2 + FT (KD)", "teacher SVD r/4 + FT (CE)"):
        candidate = compression.text_train((0, row, 1e-3, False), config, run, True)       # a validation candidate
        study = compression.text_train((0, row, 1e-3, True), config, run, True)           # the study's seed-0 run
        assert "test_bits_per_char" not in candidate and math.isfinite(study["test_bits_per_char"])
        assert candidate["val_bits_per_char"] == study["val_bits_per_char"]
        for (name, a), b in zip(candidate["model"].state_dict().items(), study["model"].state_dict().values()):
            assert torch.equal(a, b), name
    kd = compression.text_train((1, "student KD", None, True), config, run, True)
    scratch = compression.text_train((1, "student scratch", None, True), config, run, False)
    assert kd["lr"] == scratch["lr"] == config.student_lr
    assert set(kd["onnx_test_bits_per_char"]) == set(kd["onnx"]) == {
        "student KD ONNX fp32", "student KD int8 dynamic", "student KD int8 static"}
    assert kd["onnx_test_bits_per_char"]["student KD ONNX fp32"] == pytest.approx(kd["test_bits_per_char"], abs=1e-4)
    assert "model" not in scratch and "onnx" not in scratch
    with pytest.raises(ValueError, match="row must be one of"):
        compression.text_train((0, "teacher", None, True), config, run)
