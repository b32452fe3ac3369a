"""How many torch CPU threads each of a worker's units trains with.

Several processes training small models on a few cores oversubscribe them unless each pins
its threads: a worker's units each take the cores it may use divided by its concurrency, or
what ``--threads`` / ``LRTUNE_TORCH_THREADS`` say.
"""

from __future__ import annotations

import os


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def threads_per_unit(concurrency: int, threads: int | None = None) -> tuple[int, str]:
    """Torch CPU threads for each unit of a worker running ``concurrency`` units, and why.

    ``threads`` (``--threads``) wins, then ``LRTUNE_TORCH_THREADS``; otherwise the available
    cores divided among the units, at least 1. That default assumes the worker has the machine
    to itself: several workers on one machine should each be given ``--threads``.

    Example:
        >>> threads_per_unit(2, threads=3)
        (3, '--threads')
    """
    if threads is not None:
        return threads, "--threads"
    env = os.environ.get("LRTUNE_TORCH_THREADS")
    if env:
        return int(env), "LRTUNE_TORCH_THREADS"
    cores = available_cores()
    chosen = max(1, cores // concurrency)
    why = (
        f"{cores} cores / concurrency {concurrency}; several workers on one machine: "
        "give each --threads"
    )
    return chosen, why


def torch_threads() -> int:
    """The torch CPU threads this process uses now."""
    import torch

    return torch.get_num_threads()
