"""Accuracy, fidelity and expected calibration error against hand-computed values and NumPy."""
import pytest
import torch

from kd_ref.metrics import accuracy, expected_calibration_error, fidelity


def test_accuracy_by_hand():
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [0.0, 1.0, 5.0], [4.0, 0.0, 1.0]])
    targets = torch.tensor([0, 1, 2, 2])  # the last one is wrong
    assert accuracy(logits, targets) == 0.75


def test_fidelity_is_agreement_with_the_teacher_not_with_labels():
    student = torch.tensor([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0], [0.0, 1.0], [5.0, 0.0]])  # argmax 0 1 0 1 0
    teacher = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 2.0], [3.0, 0.0], [2.0, 1.0]])  # argmax 0 1 1 0 0
    assert fidelity(student, teacher) == pytest.approx(3 / 5)
    assert fidelity(teacher, teacher) == 1.0


def test_ece_by_hand():
    # Logits = log-probabilities, so softmax gives these confidences back exactly.
    probs = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.3, 0.7], [0.55, 0.45]])
    targets = torch.tensor([0, 1, 1, 1])  # right, wrong, right, wrong
    # Bins of width 1/15: {0.9, 0.9} share bin 14, 0.7 is in bin 11, 0.55 in bin 9.
    # ECE = 2/4 |0.5 - 0.9| + 1/4 |1 - 0.7| + 1/4 |0 - 0.55| = 0.2 + 0.075 + 0.1375
    assert expected_calibration_error(probs.log(), targets) == pytest.approx(0.4125, abs=1e-6)
    # One bin: |accuracy - mean confidence| = |0.5 - 0.7625|.
    assert expected_calibration_error(probs.log(), targets, n_bins=1) == pytest.approx(0.2625, abs=1e-6)


def numpy_ece(probs, targets, n_bins=15):
    """Guo et al. (2017), eq. (3), bin by bin, with bins ((m-1)/M, m/M]."""
    confidence, prediction = probs.max(1), probs.argmax(1)
    total = 0.0
    for m in range(1, n_bins + 1):
        lo, hi = (m - 1) / n_bins, m / n_bins
        in_bin = (confidence > lo) & (confidence <= hi)
        if in_bin.any():
            acc = (prediction[in_bin] == targets[in_bin]).mean()
            total += in_bin.mean() * abs(acc - confidence[in_bin].mean())
    return total


def test_ece_matches_numpy_on_random_logits():
    g = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(500, 10, generator=g, dtype=torch.float64)
    targets = torch.randint(0, 10, (500,), generator=g)
    expected = numpy_ece(torch.softmax(logits, 1).numpy(), targets.numpy())
    assert expected_calibration_error(logits, targets) == pytest.approx(expected, abs=1e-6)


def test_ece_is_zero_when_confidence_equals_accuracy():
    # Confidence 0.75 everywhere and 3 of 4 right: perfectly calibrated.
    logits = torch.tensor([[0.75, 0.25]] * 4).log()
    assert expected_calibration_error(logits, torch.tensor([0, 0, 0, 1])) == pytest.approx(0.0, abs=1e-7)


def test_metrics_reject_bad_input():
    logits = torch.zeros(3, 4)
    with pytest.raises(ValueError, match="unlabelled"):
        accuracy(logits, torch.tensor([0, -1, 2]))
    with pytest.raises(ValueError, match="targets must have shape"):
        expected_calibration_error(logits, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="same shape"):
        fidelity(logits, torch.zeros(3, 5))
    with pytest.raises(ValueError, match="empty"):
        accuracy(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))
