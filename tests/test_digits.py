"""The digits data split, the few-label helper, the batch iterator and the digits models."""
import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from kd_ref import FeatureHooks
from kd_ref.data import TensorBatches, keep_labels, load_digits_split
from kd_ref.models import DigitsCNN, DigitsMLP, count_parameters


@pytest.fixture(scope="module")
def split():
    return load_digits_split(seed=0)


def test_digits_split_sizes_shapes_and_values(split):
    assert split.x_train.shape == (1079, 1, 8, 8)
    assert split.x_val.shape == (359, 1, 8, 8)
    assert split.x_test.shape == (359, 1, 8, 8)
    assert split.y_train.shape == (1079,) and split.y_train.dtype == torch.int64
    assert split.x_train.dtype == torch.float32
    assert split.x_train.min() == 0.0 and split.x_train.max() == 1.0
    # Stratified: every class holds its share (178-183 images each in digits) to within one image.
    counts = torch.bincount(split.y_test, minlength=10)
    expected = np.bincount(load_digits().target) * 359 / 1797
    assert np.abs(counts.numpy() - expected).max() <= 1


def test_digits_split_is_disjoint_complete_and_matches_the_source(split):
    train, val, test = (set(i.tolist()) for i in (split.train_index, split.val_index, split.test_index))
    assert not (train & val) and not (train & test) and not (val & test)
    assert train | val | test == set(range(1797))
    source = load_digits()
    np.testing.assert_array_equal(split.x_val[:, 0].numpy(), source.images[split.val_index.numpy()] / 16)
    np.testing.assert_array_equal(split.y_test.numpy(), source.target[split.test_index.numpy()])


def test_digits_split_is_seeded(split):
    again, other = load_digits_split(seed=0), load_digits_split(seed=1)
    assert torch.equal(again.test_index, split.test_index) and torch.equal(again.x_train, split.x_train)
    assert not torch.equal(other.test_index, split.test_index)


def test_digits_split_rejects_bad_fractions():
    with pytest.raises(ValueError, match="val_fraction"):
        load_digits_split(val_fraction=0.5, test_fraction=0.5)


def test_keep_labels_keeps_exactly_per_class_true_labels(split):
    y = split.y_train
    kept = keep_labels(y, per_class=5, seed=3)
    labelled = kept != -1
    assert labelled.sum() == 50
    assert torch.equal(torch.bincount(kept[labelled], minlength=10), torch.full((10,), 5))
    assert torch.equal(kept[labelled], y[labelled])
    assert torch.equal(keep_labels(y, 5, seed=3), kept)
    assert not torch.equal(keep_labels(y, 5, seed=4), kept)
    with pytest.raises(ValueError, match="per_class"):
        keep_labels(y, per_class=1000, seed=0)


def test_tensor_batches_cover_every_sample_once_and_reshuffle_reproducibly():
    x, y = torch.arange(10.0).unsqueeze(1), torch.arange(10)
    batches = TensorBatches(x, y, batch_size=4, shuffle=True, seed=0)
    assert len(batches) == 3
    epoch1 = [b for _, b in batches]
    epoch2 = [b for _, b in batches]
    assert [len(b) for b in epoch1] == [4, 4, 2]
    assert sorted(torch.cat(epoch1).tolist()) == list(range(10))
    assert not torch.equal(torch.cat(epoch1), torch.cat(epoch2))  # a new order each epoch
    same = TensorBatches(x, y, batch_size=4, shuffle=True, seed=0)
    assert torch.equal(torch.cat([b for _, b in same]), torch.cat(epoch1))
    in_order = TensorBatches(x, y, batch_size=4)
    assert torch.cat([b for _, b in in_order]).tolist() == list(range(10))


@pytest.mark.parametrize("model, expected", [
    (DigitsCNN(width=16), 24_058),   # the default teacher
    (DigitsCNN(width=4), 1_702),     # the default student
    (DigitsCNN(width=1), 163),       # 90 + 63 + 10
    (DigitsMLP(hidden=128), 26_122),
    (DigitsMLP(hidden=32), 3_466),
])
def test_digits_models_have_exact_parameter_counts(model, expected):
    assert count_parameters(model) == expected
    assert model(torch.zeros(3, 1, 8, 8)).shape == (3, 10)


def test_count_parameters_trainable_only():
    model = DigitsCNN(width=4)
    model.classifier.requires_grad_(False)
    assert count_parameters(model, trainable_only=True) == 1_702 - (16 * 10 + 10)


def test_digits_cnn_named_features_for_hooks():
    model = DigitsCNN(width=4)
    with FeatureHooks(model, ["block1", "block2", "block3.conv", "embedding"]) as hooks:
        model(torch.randn(2, 1, 8, 8))
        shapes = {name: tuple(hooks[name].shape) for name in hooks}
    assert shapes == {"block1": (2, 4, 8, 8), "block2": (2, 8, 4, 4), "block3.conv": (2, 16, 4, 4),
                      "embedding": (2, 16)}


def test_digits_models_reject_bad_sizes():
    with pytest.raises(ValueError, match="width"):
        DigitsCNN(width=0)
    with pytest.raises(ValueError, match="hidden"):
        DigitsMLP(hidden=0)
