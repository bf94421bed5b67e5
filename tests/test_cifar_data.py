"""CIFAR on disk (reader, generated set, errors) and the device-resident pipeline."""
import pickle
import pickletools
from unittest import mock

import numpy as np
import pytest
import torch
import torchvision.datasets.cifar as tv_cifar
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision import transforms

from kd_ref.data.cifar import (CifarFormatError, channel_stats, has_cifar, load_cifar, read_batch,
                               write_fake_cifar)
from kd_ref.data.device_pipeline import DeviceBatches, crop_flip, normalize, pad_channels_last


pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


@pytest.fixture(scope="module")
def cifar10(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    write_fake_cifar(root, "cifar10", train_size=203, test_size=31, seed=0)
    return root


# -- the on-disk format ----------------------------------------------------------------------

def test_generated_cifar10_round_trips_through_the_reader(cifar10):
    data = load_cifar(cifar10, "cifar10")
    assert data.train_images.shape == (203, 3, 32, 32) and data.train_images.dtype == torch.uint8
    assert data.train_labels.shape == (203,) and data.train_labels.dtype == torch.int64
    assert data.test_images.shape == (31, 3, 32, 32) and data.generated
    assert data.classes[:3] == ("airplane", "automobile", "bird") and len(data.classes) == 10
    # Independent read of one file with pickle alone, as the data set's page describes.
    with open(cifar10 / "cifar-10-batches-py" / "data_batch_2", "rb") as f:
        raw = pickle.load(f, encoding="bytes")
    assert sorted(raw) == [b"batch_label", b"data", b"filenames", b"labels"]
    assert raw[b"data"].dtype == np.uint8 and raw[b"data"].shape == (41, 3072)   # 203 = 41 * 5 - 2
    first = len(read_batch(cifar10 / "cifar-10-batches-py" / "data_batch_1")[1])
    start = first
    np.testing.assert_array_equal(data.train_images[start:start + 41].reshape(41, 3072).numpy(), raw[b"data"])
    assert data.train_labels[start:start + 41].tolist() == raw[b"labels"]
    # Row-major RGB planes: value k of a row is channel k // 1024, row (k % 1024) // 32, column k % 32.
    assert data.train_images[start, 1, 5, 7] == raw[b"data"][0][1024 + 5 * 32 + 7]


def test_files_are_python2_pickles_of_protocol_2_like_the_real_ones(cifar10):
    blob = (cifar10 / "cifar-10-batches-py" / "data_batch_1").read_bytes()
    ops = [op.name for op, _, _ in pickletools.genops(blob)]
    assert ops[0] == "PROTO" and blob[:2] == b"\x80\x02"
    assert "SHORT_BINSTRING" in ops and "BINBYTES" not in ops and "SHORT_BINBYTES" not in ops
    as_text = pickle.loads(blob, encoding="latin1")                 # torchvision's way: str keys
    assert {"data", "labels", "filenames", "batch_label"} == set(as_text)
    assert as_text["batch_label"] == "training batch 1 of 5"


def test_torchvision_reads_the_generated_files_too(cifar10):
    data = load_cifar(cifar10, "cifar10")
    # torchvision also checks the official MD5 sums, which generated files cannot have;
    # everything else (paths, pickle, keys, layout) is its own code.
    with mock.patch.object(tv_cifar, "check_integrity", lambda *args, **kwargs: True):
        train, test = tv_cifar.CIFAR10(str(cifar10), train=True), tv_cifar.CIFAR10(str(cifar10), train=False)
    np.testing.assert_array_equal(train.data, data.train_images.permute(0, 2, 3, 1).numpy())   # HWC there
    assert train.targets == data.train_labels.tolist() and test.targets == data.test_labels.tolist()
    assert train.classes == list(data.classes)


def test_generated_cifar100_round_trips_and_torchvision_agrees(tmp_path):
    write_fake_cifar(tmp_path, "cifar100", train_size=120, test_size=20, seed=3)
    data = load_cifar(tmp_path, "cifar100")
    assert data.train_images.shape == (120, 3, 32, 32) and len(data.classes) == 100
    assert sorted(data.train_labels.tolist()) == sorted(list(range(100)) + list(range(20)))
    with mock.patch.object(tv_cifar, "check_integrity", lambda *args, **kwargs: True):
        ref = tv_cifar.CIFAR100(str(tmp_path), train=True)
    assert ref.targets == data.train_labels.tolist()                 # read from "fine_labels"
    np.testing.assert_array_equal(ref.data, data.train_images.permute(0, 2, 3, 1).numpy())


def test_generated_sets_are_seeded(tmp_path):
    a, b = write_fake_cifar(tmp_path / "a", seed=1), write_fake_cifar(tmp_path / "b", seed=1)
    c = write_fake_cifar(tmp_path / "c", seed=2)
    assert (a / "test_batch").read_bytes() == (b / "test_batch").read_bytes()
    assert (a / "test_batch").read_bytes() != (c / "test_batch").read_bytes()


def test_missing_files_say_what_to_do(tmp_path):
    assert not has_cifar(tmp_path)
    with pytest.raises(FileNotFoundError) as err:
        load_cifar(tmp_path, "cifar10")
    message = str(err.value)
    assert f"expected {tmp_path}/cifar-10-batches-py/data_batch_1" in message and "--download" in message
    with pytest.raises(FileNotFoundError, match="cifar-100-python/train"):
        load_cifar(tmp_path, "cifar100")
    with pytest.raises(ValueError, match="dataset must be one of cifar10, cifar100"):
        load_cifar(tmp_path, "cifar20")


@pytest.mark.parametrize("damage, reason", [
    (lambda blob: blob[: len(blob) // 2], "corrupt"),                                   # truncated download
    (lambda blob: b"<html>404</html>", "corrupt"),                                     # an error page
    (lambda blob: pickle.dumps({b"data": np.zeros((2, 3072), np.uint8)}), "no 'labels' entry"),
    (lambda blob: pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}), "shape \\(N, 3072\\)"),
    (lambda blob: pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}), "0..9"),
])
def test_corrupt_files_are_refused_with_a_clear_message(tmp_path, damage, reason):
    folder = write_fake_cifar(tmp_path, "cifar10", train_size=10, test_size=4)
    path = folder / "data_batch_3"
    path.write_bytes(damage(path.read_bytes()))
    assert has_cifar(tmp_path)                    # present, but not usable
    with pytest.raises(CifarFormatError, match=reason) as err:
        load_cifar(tmp_path, "cifar10")
    assert str(path) in str(err.value) and "--download" in str(err.value)


def test_channel_stats_match_numpy(cifar10):
    images = load_cifar(cifar10).train_images
    mean, std = channel_stats(images)
    x = images.numpy().astype(np.float64) / 255
    np.testing.assert_allclose(mean, x.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(std, x.std(axis=(0, 2, 3)), rtol=1e-9)


# -- the device pipeline -----------------------------------------------------------------------

def reference_augment(image_chw: torch.Tensor, top: int, left: int, flip: bool) -> torch.Tensor:
    """One image through torchvision's PIL functions: pad 4 (black), crop 32x32 at (top, left), mirror."""
    pil = Image.fromarray(image_chw.permute(1, 2, 0).numpy())
    out = TF.crop(TF.pad(pil, 4), top, left, 32, 32)
    if flip:
        out = TF.hflip(out)
    return torch.from_numpy(np.array(out)).permute(2, 0, 1)       # (3, 32, 32) uint8


def test_crop_flip_matches_torchvision_one_image_at_a_time(cifar10):
    images = load_cifar(cifar10).train_images[:12]
    g = torch.Generator().manual_seed(0)
    index = torch.randperm(12, generator=g)[:8]
    top, left = torch.randint(0, 9, (8,), generator=g), torch.randint(0, 9, (8,), generator=g)
    flip = torch.tensor([0, 1, 0, 1, 1, 0, 1, 0]).bool()
    top[0], left[0], top[1], left[1] = 0, 0, 8, 8                   # the extreme corners too
    out = crop_flip(pad_channels_last(images, 4), index, top, left, flip)
    assert out.shape == (8, 3, 32, 32) and out.dtype == torch.uint8
    assert out.is_contiguous(memory_format=torch.channels_last)
    for b in range(8):
        expected = reference_augment(images[index[b]], int(top[b]), int(left[b]), bool(flip[b]))
        assert torch.equal(out[b], expected), f"image {b}: top {int(top[b])}, left {int(left[b])}, flip {bool(flip[b])}"
    assert (out[0, :, :4, :] == 0).all() and (out[0, :, :, :4] == 0).all()   # the padding is black
    assert (out[1, :, 28:, :] == 0).all() and (out[1, :, :, :4] == 0).all()  # (image 1 is mirrored)


def test_device_batches_equal_the_torchvision_transform_with_the_same_offsets(cifar10):
    images, labels = load_cifar(cifar10).train_images[:40], torch.arange(40)
    mean, std = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
    batches = DeviceBatches(images, labels, 16, mean=mean, std=std, augment=True, shuffle=True, seed=7)
    twin = DeviceBatches(images, labels, 16, mean=mean, std=std, augment=True, shuffle=True, seed=7)
    order, top, left, flip = twin.draw_epoch()                      # what the first epoch will draw
    x, y = next(iter(batches))
    assert torch.equal(y, order[:16])                               # the labels here are image numbers
    to_tensor = transforms.Compose([transforms.ToTensor(), transforms.Normalize(mean, std)])
    for b in range(16):
        pil = Image.fromarray(reference_augment(images[order[b]], int(top[b]), int(left[b]), bool(flip[b]))
                              .permute(1, 2, 0).numpy())
        torch.testing.assert_close(x[b], to_tensor(pil), rtol=0, atol=1e-5)


def test_normalize_is_the_plain_formula_and_keeps_channels_last():
    x = torch.randint(0, 256, (4, 3, 5, 5), dtype=torch.uint8).contiguous(memory_format=torch.channels_last)
    mean, std = (0.1, 0.5, 0.9), (0.2, 0.3, 0.4)
    out = normalize(x, mean, std)
    expected = (x.double() / 255 - torch.tensor(mean).double().view(1, 3, 1, 1)) / torch.tensor(std).double().view(1, 3, 1, 1)
    torch.testing.assert_close(out.double(), expected, rtol=0, atol=1e-6)
    assert out.dtype == torch.float32 and out.is_contiguous(memory_format=torch.channels_last)


def test_normalised_training_images_have_zero_mean_and_unit_std(cifar10):
    images, labels = load_cifar(cifar10).train_images, load_cifar(cifar10).train_labels
    mean, std = channel_stats(images)
    x = torch.cat([x for x, _ in DeviceBatches(images, labels, 64, mean=mean, std=std)])
    torch.testing.assert_close(x.mean(dim=(0, 2, 3)), torch.zeros(3), rtol=0, atol=1e-5)
    torch.testing.assert_close(x.std(dim=(0, 2, 3), correction=0), torch.ones(3), rtol=0, atol=1e-4)


def test_shuffling_is_seeded_and_every_epoch_is_a_permutation():
    images = torch.zeros(50, 3, 32, 32, dtype=torch.uint8)
    ids = torch.arange(50)

    def epochs(seed, n=3):
        batches = DeviceBatches(images, ids, 8, mean=(0,) * 3, std=(1,) * 3, shuffle=True, seed=seed)
        return [torch.cat([y for _, y in batches]) for _ in range(n)]

    first = epochs(0)
    assert all(sorted(e.tolist()) == list(range(50)) for e in first)           # each image once
    assert not torch.equal(first[0], first[1])                                   # a new order each epoch
    assert all(torch.equal(a, b) for a, b in zip(first, epochs(0)))            # same seed, same epochs
    assert not torch.equal(first[0], epochs(1)[0])
    in_order = DeviceBatches(images, ids, 8, mean=(0,) * 3, std=(1,) * 3)
    assert torch.cat([y for _, y in in_order]).tolist() == list(range(50))


def test_batches_shapes_dtypes_drop_last_and_data_kept_as_uint8():
    images, labels = torch.randint(0, 256, (50, 3, 32, 32), dtype=torch.uint8), torch.arange(50)
    batches = DeviceBatches(images, labels, 16, mean=(0.5,) * 3, std=(0.25,) * 3, augment=True, drop_last=True)
    assert len(batches) == 3 and [len(y) for _, y in batches] == [16, 16, 16]
    assert len(DeviceBatches(images, labels, 16, mean=(0.5,) * 3, std=(0.25,) * 3)) == 4
    assert batches.images.dtype == torch.uint8 and batches.images.shape == (50, 40, 40, 3)   # padded once
    assert batches.images.device.type == "cpu"
    x, y = next(iter(batches))
    assert x.shape == (16, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.is_contiguous(memory_format=torch.channels_last)


def test_rank_shards_partition_each_global_batch():
    images, ids = torch.zeros(40, 3, 32, 32, dtype=torch.uint8), torch.arange(40)
    kwargs = dict(mean=(0,) * 3, std=(1,) * 3, augment=True, shuffle=True, seed=3, drop_last=True)
    whole = [y for _, y in DeviceBatches(images, ids, 16, **kwargs)]
    shards = [[y for _, y in DeviceBatches(images, ids, 16, rank=r, world_size=2, **kwargs)] for r in (0, 1)]
    for b, batch in enumerate(whole):
        assert len(shards[0][b]) == len(shards[1][b]) == 8
        assert sorted(torch.cat([shards[0][b], shards[1][b]]).tolist()) == sorted(batch.tolist())
    with pytest.raises(ValueError, match="multiple of world_size=3"):
        DeviceBatches(images, ids, 16, world_size=3, **kwargs)


def test_generator_state_resumes_the_same_epochs():
    images, ids = torch.zeros(30, 3, 32, 32, dtype=torch.uint8), torch.arange(30)
    kwargs = dict(mean=(0,) * 3, std=(1,) * 3, augment=True, shuffle=True, seed=5)
    run = DeviceBatches(images, ids, 10, **kwargs)
    list(run)
    state = run.state_dict()
    expected = torch.cat([y for _, y in run])
    resumed = DeviceBatches(images, ids, 10, **kwargs)
    resumed.load_state_dict(state)
    assert torch.equal(torch.cat([y for _, y in resumed]), expected)


def test_pipeline_guard_rails():
    images = torch.zeros(4, 3, 32, 32, dtype=torch.uint8)
    with pytest.raises(ValueError, match="uint8"):
        DeviceBatches(images.float(), torch.arange(4), 2, mean=(0,) * 3, std=(1,) * 3)
    with pytest.raises(ValueError, match="labels must have shape \\(4,\\)"):
        DeviceBatches(images, torch.arange(3), 2, mean=(0,) * 3, std=(1,) * 3)
    with pytest.raises(ValueError, match="mean and std need 3 values"):
        DeviceBatches(images, torch.arange(4), 2, mean=(0,) * 2, std=(1,) * 3)
