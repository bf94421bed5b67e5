"""The training loop's CIFAR features: SGD schedule, atomic checkpoints, exact resume, bf16 on the CPU."""
from functools import partial

import pytest
import torch

from kd_ref.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from kd_ref.data.device_pipeline import DeviceBatches
from kd_ref.distillers import AttentionKD, Scratch
from kd_ref.models.resnet_cifar import cifar_resnet
from kd_ref.train import ClassifierScores, fit, scaled_milestones, step_decay


pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py

STATS = dict(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


def data(n=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g), torch.arange(n) % 10


def batches(seed=0):
    images, labels = data()
    return DeviceBatches(images, labels, 16, augment=True, shuffle=True, seed=seed, drop_last=True, **STATS)


def val_batches():
    images, labels = data(20, seed=1)
    return DeviceBatches(images, labels, 20, **STATS)


class Killed(Exception):
    pass


class KilledAt(Scratch):
    """Scratch training that dies at the first step of epoch ``at`` (after the previous checkpoint)."""

    def __init__(self, student, at):
        super().__init__(student)
        self.at, self.progress = at, []

    def set_progress(self, progress):
        self.progress.append(progress)
        if progress > self.at - 1:
            raise Killed


SGD = partial(torch.optim.SGD, momentum=0.9, nesterov=True, weight_decay=5e-4)


def without_time(history):
    """The history without its timings (which differ between any two runs)."""
    return [{k: v for k, v in h.items() if k != "train_seconds"} for h in history]


def test_sgd_schedule_is_the_benchmark_step_decay():
    assert scaled_milestones(240) == (150, 180, 210)
    crd = step_decay(1.0, steps_per_epoch=10, milestones=scaled_milestones(240))
    assert [crd(10 * e) for e in (0, 149, 150, 179, 180, 210, 239)] == pytest.approx(
        [1, 1, 0.1, 0.1, 0.01, 0.001, 0.001])
    assert [crd(s) for s in (1499, 1500)] == pytest.approx([1, 0.1])            # decays when the epoch is done
    assert scaled_milestones(15) == (9, 11, 13) and scaled_milestones(2) == (1, 2)


def test_fit_with_sgd_follows_the_schedule_and_logs_the_learning_rate():
    torch.manual_seed(0)
    b = batches()
    history = fit(Scratch(cifar_resnet("resnet8_tiny")), b, epochs=4, lr=step_decay(0.1, len(b), (2, 3)),
                  optimizer=SGD)
    assert [h["lr"] for h in history] == pytest.approx([0.1, 0.1, 0.01, 0.001])


def test_a_killed_run_resumes_to_exactly_the_uninterrupted_result(tmp_path):
    kwargs = dict(epochs=4, lr=step_decay(0.05, 3, (2, 3)), optimizer=SGD, validate=ClassifierScores(val_batches()),
                  run_info={"run": "a"})
    torch.manual_seed(0)
    uninterrupted = cifar_resnet("resnet8_tiny")
    expected = fit(Scratch(uninterrupted), batches(), **kwargs)

    path = tmp_path / "run.pt"
    torch.manual_seed(0)
    killed = KilledAt(cifar_resnet("resnet8_tiny"), at=3)
    with pytest.raises(Killed):
        fit(killed, batches(), checkpoint=path, **kwargs)
    assert load_checkpoint(path)["epoch"] == 2                     # two epochs were saved, the third lost
    assert killed.progress == pytest.approx([1 / 3, 2 / 3, 1, 4 / 3, 5 / 3, 2, 7 / 3])   # 3 steps per epoch

    torch.manual_seed(123)                                          # other initial weights: they are replaced
    resumed = cifar_resnet("resnet8_tiny")
    history = fit(Scratch(resumed), batches(), checkpoint=path, resume=True, **kwargs)
    assert without_time(history) == without_time(expected)        # the same log, to the last bit
    for name, value in uninterrupted.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], value), name
    state = torch.load(path, weights_only=True)                     # plain tensors and values only
    assert state["epoch"] == 4 and state["step"] == 12 and state["resumes"] == [6]   # resumed after step 6
    assert set(state) == {"run_info", "epoch", "skip", "step", "history", "resumes", "model", "optimizer",
                          "batches", "rng"}

    again = cifar_resnet("resnet8_tiny")                              # a finished run is only loaded
    assert fit(Scratch(again), batches(), checkpoint=path, resume=True, **kwargs) == history
    assert all(torch.equal(again.state_dict()[k], v) for k, v in uninterrupted.state_dict().items())


def test_resuming_another_run_is_refused(tmp_path):
    path = tmp_path / "run.pt"
    fit(Scratch(cifar_resnet("resnet8_tiny")), batches(), epochs=1, optimizer=SGD, checkpoint=path,
        run_info={"profile": "smoke", "seed": 0})
    with pytest.raises(ValueError, match="belongs to another run"):
        fit(Scratch(cifar_resnet("resnet8_tiny")), batches(), epochs=1, optimizer=SGD, checkpoint=path, resume=True,
            run_info={"profile": "smoke", "seed": 1})


def test_checkpoints_are_written_atomically(tmp_path, monkeypatch):
    path = tmp_path / "state.pt"
    save_checkpoint(path, {"epoch": 1, "weights": torch.ones(3)})

    def dies_half_way(obj, f):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"epoch": 2, "weights": torch.zeros(3)})
    monkeypatch.undo()
    state = load_checkpoint(path)                                  # the previous checkpoint is intact
    assert state["epoch"] == 1 and torch.equal(state["weights"], torch.ones(3))


def test_checkpoints_refuse_arbitrary_objects(tmp_path):
    path = tmp_path / "unsafe.pt"
    torch.save({"epoch": 1, "config": Killed("not a tensor")}, path)
    with pytest.raises(ValueError, match="cannot be loaded"):
        load_checkpoint(path)                                      # weights_only=True refuses the object
    (tmp_path / "broken.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="delete it"):
        load_checkpoint(tmp_path / "broken.pt")


def test_rng_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    import random

    import numpy as np
    save_checkpoint(tmp_path / "rng.pt", {"rng": rng_state()})
    first = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(load_checkpoint(tmp_path / "rng.pt")["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == first


def test_bf16_autocast_trains_a_feature_distiller_on_the_cpu():
    torch.manual_seed(0)
    student, teacher = cifar_resnet("resnet8_tiny"), cifar_resnet("resnet8_w8")
    stages = ["layer1", "layer2", "layer3"]
    distiller = AttentionKD(student, teacher, stages, stages, kd_weight=0.9).to(memory_format=torch.channels_last)
    history = fit(distiller, batches(), epochs=2, lr=0.05, optimizer=SGD, autocast_dtype=torch.bfloat16,
                  validate=ClassifierScores(val_batches(), teacher=teacher))
    assert all(torch.isfinite(torch.tensor([h["at"], h["kd"], h["ce"]])).all() for h in history)
    assert student.classifier.weight.dtype == torch.float32          # weights stay full precision
    assert 0.0 <= history[-1]["val_fidelity"] <= 1.0
