"""``kd-ref bench cifar-pipeline``: images/s of the device-resident pipeline vs a DataLoader.

(``kd-ref bench gpu``, the check of the gpu profiles on a CUDA device, is in
``kd_ref.recipes.gpu_check``; this module only dispatches to it.)

Both pipelines do the same work: shuffle, random crop 32 with 4-pixel zero padding,
horizontal flip, conversion to float and per-channel normalisation, in batches of 64,
then the batch on the device.

- baseline: ``torch.utils.data.DataLoader`` over a dataset that returns a PIL image per
  index (what ``torchvision.datasets.CIFAR10.__getitem__`` does) with torchvision's
  ``Compose([RandomCrop(32, padding=4), RandomHorizontalFlip(), ToTensor(),
  Normalize(mean, std)])``, with 0 worker processes and with one per CPU core;
- ``kd_ref.data.device_pipeline.DeviceBatches``: uint8 images on the device, each batch
  a few tensor operations.

Two figures each: **loader only** (iterate one epoch, nothing else) and **end to end**
(the same student network takes an SGD step on every batch, as in ``kd-ref cifar``).
End to end, the network's cost is the same for all, so the gap narrows wherever the
network, not the loader, is the bottleneck (small CPUs). Numbers are measured, never
asserted in tests; they depend on the machine and on what else runs on it.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from ..data.cifar import channel_stats, cifar_or_generated
from ..data.device_pipeline import DeviceBatches
from ..models import count_parameters
from ..models.resnet_cifar import cifar_resnet
from ..report import text_table
from .cifar import CONFIGS
from .options import CommandError, start_study

# profile -> (images, end-to-end batches per pipeline)
SIZES = {"smoke": (512, 3), "cpu": (10_000, 20), "gpu": (50_000, 300)}
BATCH = 64


class PILImages(torch.utils.data.Dataset):
    """uint8 ``(N, 3, 32, 32)`` images served one PIL image at a time through ``transform``."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform):
        self.hwc = images.permute(0, 2, 3, 1).numpy()            # (N, 32, 32, 3), as torchvision stores CIFAR
        self.labels = labels.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        from PIL import Image
        return self.transform(Image.fromarray(self.hwc[i])), self.labels[i]


def dataloader(images, labels, mean, std, workers: int, pin: bool):
    from torchvision import transforms
    transform = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
                                    transforms.ToTensor(), transforms.Normalize(mean, std)])
    return torch.utils.data.DataLoader(PILImages(images, labels, transform), batch_size=BATCH, shuffle=True,
                                       num_workers=workers, pin_memory=pin, drop_last=True,
                                       persistent_workers=workers > 0)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def loader_rate(batches, device: torch.device) -> float:
    """Images per second over one epoch (after a first batch that starts any workers)."""
    iterator = iter(batches)
    next(iterator)
    n, start = 0, time.perf_counter()
    for x, _ in iterator:
        x = x.to(device, non_blocking=True)
        n += len(x)
    _sync(device)
    return n / (time.perf_counter() - start)


def training_rate(batches, model: torch.nn.Module, device: torch.device, steps: int) -> float:
    """Images per second of ``steps`` SGD steps on ``model`` fed by ``batches`` (after one warm-up step)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    n, start = 0, None
    while True:
        for x, y in batches:
            x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            y = y.to(device, non_blocking=True)
            with autocast:
                loss = torch.nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if start is None:             # the first step warms up kernels and workers
                _sync(device)
                start = time.perf_counter()
                continue
            n += len(x)
            if n >= steps * BATCH:
                _sync(device)
                return n / (time.perf_counter() - start)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "bench", help="benchmarks: images/s of kd_ref's CIFAR pipeline vs a DataLoader; the gpu check",
        description="cifar-pipeline: measure images/s of the device-resident CIFAR pipeline and of a torchvision "
                    "DataLoader with the same augmentation, loader only and end to end (an SGD step of the "
                    "profile's student per batch). Uses real CIFAR from --data when present, else a generated set "
                    "in the real on-disk format (same image size, so the same speed). gpu: on a CUDA device, the "
                    "cost of the gpu profiles (CIFAR images/s and epoch time, bf16 vs fp32, torch.compile, peak "
                    "memory, text tokens/s) in a few minutes, no network; without CUDA it says so and exits 0.")
    parser.add_argument("which", choices=["cifar-pipeline", "gpu"], help="what to measure")
    parser.add_argument("--profile", help="smoke, cpu, gpu or auto (default: $KD_PROFILE, else auto)")
    parser.add_argument("--data", metavar="DIR", default="data", help="folder with real CIFAR (default: data)")
    parser.add_argument("--workers", type=int, default=None,
                        help="DataLoader worker processes for the second baseline row (default: CPU cores)")
    parser.add_argument("--steps", type=int, default=100, help="gpu: training steps timed per figure (default 100)")
    parser.add_argument("--max-seconds", type=float, default=270.0,
                        help="gpu: start no phase after this many seconds (default 270)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.which == "gpu":
        from .gpu_check import run_check
        if args.steps < 1 or not args.max_seconds > 0:
            raise CommandError(f"need --steps >= 1 and --max-seconds > 0, got {args.steps} and {args.max_seconds}")
        return run_check(steps=args.steps, budget=args.max_seconds)
    workers = args.workers if args.workers is not None else (os.cpu_count() or 1)
    if workers < 1:
        raise CommandError(f"--workers must be >= 1, got {workers}")
    # One thread for every pipeline (DataLoader workers use one each): a batch's tensor
    # operations are small, and on a busy machine multi-threaded ones stall badly.
    profile, device = start_study(args, one_thread_on_cpu=True)
    n_images, steps = SIZES[profile]
    student = CONFIGS[profile].student
    try:
        data = cifar_or_generated(args.data, "cifar10", generate=(n_images, 10))
    except (FileNotFoundError, ValueError) as err:
        raise CommandError(err) from None
    images, labels = data.train_images[:n_images], data.train_labels[:n_images]
    what = ("generated CIFAR-10-format images (same size as CIFAR, so the same cost)" if data.generated
            else f"real CIFAR-10 from {Path(args.data)}")
    mean, std = channel_stats(images)
    device_batches = DeviceBatches(images, labels, BATCH, mean=mean, std=std, device=device, augment=True,
                                   shuffle=True, drop_last=True)
    pin = device.type == "cuda"
    pipelines = [
        ("torchvision DataLoader, 0 workers", dataloader(images, labels, mean, std, 0, pin)),
        (f"torchvision DataLoader, {workers} workers", dataloader(images, labels, mean, std, workers, pin)),
        (f"kd_ref DeviceBatches on {device.type}", device_batches),
    ]
    torch.manual_seed(0)
    model = cifar_resnet(student).to(device, memory_format=torch.channels_last)
    print(f"kd-ref bench cifar-pipeline | profile {profile} | device {device} | torch threads "
          f"{torch.get_num_threads()} | CPU cores {os.cpu_count()}")
    print(f"data: {len(images):,} {what}; batch {BATCH}; augmentation: random crop 32, padding 4, "
          f"horizontal flip, normalise")
    print(f"end to end: SGD steps of {student} ({count_parameters(model):,} parameters), {steps} batches"
          + (", bf16 autocast" if device.type == "cuda" else ""))
    rows = []
    for name, batches in pipelines:
        rows.append((name, loader_rate(batches, device), training_rate(batches, model, device, steps)))
    lines = [[name, f"{loader:,.0f}", f"{e2e:,.0f}"] for name, loader, e2e in rows]
    lines += [[f"kd_ref vs DataLoader, {label}", f"{rows[-1][1] / base[1]:.1f}x", f"{rows[-1][2] / base[2]:.1f}x"]
              for label, base in (("0 workers", rows[0]), (f"{workers} workers", rows[1]))]
    print()
    print(text_table(["pipeline", "loader img/s", "end-to-end img/s"], lines))
    return 0

