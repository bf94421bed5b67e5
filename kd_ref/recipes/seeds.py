"""Run the seeds of a CPU study side by side, one process per core.

The digits models are so small that a second thread does not speed a run up, so a
2-core machine would idle half the time; seeds are independent, so they can run in
parallel processes instead. Each process uses one thread and starts with a fresh
interpreter (the ``spawn`` start method, safe with PyTorch's thread pools), and a seed's
result does not depend on which process ran it or what ran before: the numbers are
those of a sequential run (tested).
"""
from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor


def _one_thread() -> None:
    import torch
    torch.set_num_threads(1)


def default_workers(n_seeds: int) -> int:
    """One process per available core, at most one per seed."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(n_seeds, cores))


def map_seeds(run_seed: Callable, seeds: Sequence[int], *args, workers: int | None = None) -> list:
    """``[run_seed(seed, *args) for seed in seeds]``, computed in up to ``workers`` processes.

    ``run_seed`` must be a module-level function and its arguments and result picklable.
    ``workers=1`` (or a single seed) runs everything in this process.
    """
    seeds = list(seeds)
    workers = default_workers(len(seeds)) if workers is None else workers
    if workers <= 1 or len(seeds) <= 1:
        return [run_seed(seed, *args) for seed in seeds]
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_one_thread) as pool:
        futures = [pool.submit(run_seed, seed, *args) for seed in seeds]
        return [future.result() for future in futures]
