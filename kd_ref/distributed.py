"""Several GPUs (or CPU processes) with PyTorch's own DistributedDataParallel.

The same command runs on one device or, under ``torchrun --nproc_per_node=N``, on N:
torchrun starts N processes and sets ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``;
``setup()`` joins them into a process group (NCCL on GPUs, gloo on CPUs). Then

- each rank trains on its shard of every batch (``DeviceBatches(rank=, world_size=)``);
- ``DistributedDataParallel`` averages the gradients over ranks after every backward,
  so all replicas take the same optimizer step and keep identical weights (it also
  broadcasts rank 0's weights and BatchNorm buffers at the start);
- only rank 0 writes checkpoints, JSON and the printed table (``is_main()``).

BatchNorm statistics are computed per rank, over that rank's shard of the batch (use
``torch.nn.SyncBatchNorm.convert_sync_batchnorm`` for whole-batch statistics); the
running statistics of rank 0 are given to all ranks after every epoch
(``broadcast_buffers``), as DDP itself does before every forward pass.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    """This process's place: ``rank`` of ``world_size``, and its device."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device: torch.device) -> DistInfo:
    """Join the process group when launched by torchrun (``WORLD_SIZE`` > 1); else a single process.

    ``device`` is the device the run would use alone; under torchrun with CUDA each rank
    takes ``cuda:LOCAL_RANK``.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo(device=device)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistInfo(rank=rank, world_size=world_size, device=device)


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def world() -> tuple[int, int]:
    """``(rank, world_size)`` of the current process group, ``(0, 1)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    return world()[0] == 0


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` itself on one process; a ``DistributedDataParallel`` wrapper on several."""
    if world()[1] == 1:
        return model
    return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def broadcast_buffers(model: nn.Module) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics).

    Each rank updates its running statistics from its own shard; DDP copies rank 0's
    at the start of every forward pass, so after the last step of an epoch they
    differ until this is called. Called before evaluating and checkpointing.
    """
    if world()[1] == 1:
        return
    for buffer in model.buffers():
        dist.broadcast(buffer, src=0)


def mean_over_ranks(values: torch.Tensor) -> torch.Tensor:
    """Average a tensor over ranks (the identity on one process)."""
    if world()[1] == 1:
        return values
    values = values.clone()
    dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values / world()[1]


def replicas_agree(model: nn.Module) -> bool:
    """True when every rank holds exactly the same parameters and buffers as rank 0."""
    if world()[1] == 1:
        return True
    with torch.no_grad():
        flat = torch.cat([t.detach().float().flatten() for t in model.state_dict().values()
                          if t.is_floating_point()])
        reference = flat.clone()
        dist.broadcast(reference, src=0)
        differs = torch.tensor([float(not torch.equal(flat, reference))], device=flat.device)
        dist.all_reduce(differs, op=dist.ReduceOp.MAX)
    return differs.item() == 0.0
