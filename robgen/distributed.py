"""One process-group setup for every command that runs under torchrun (training and sampling).

Under `torchrun --nproc_per_node N`, each process takes the GPU of its LOCAL_RANK (cuda:LOCAL_RANK, made the current
device so NCCL's collectives land on it), or the CPU with gloo. ROBGEN_DIST_BACKEND overrides the backend (gloo lets
several ranks share one GPU, which NCCL refuses; benchmarks/gpu_check.py uses it). An error on one rank ends that
process at once, with no final barrier: torchrun then stops the other ranks instead of leaving them waiting in a
collective for the timeout.
"""
from __future__ import annotations

import datetime
import functools
import os
from typing import Callable, TypeVar

import torch
import torch.distributed as dist

from .errors import RobgenError
from .utils import resolve_device

# Rank 0 evaluates (training) or merges the chunks (sampling) alone while the others wait: allow for a long one.
TIMEOUT = datetime.timedelta(hours=1)
_owned = False  # whether robgen started the process group (it never ends one its caller started)

F = TypeVar("F", bound=Callable)


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def setup(device: str | None) -> tuple[int, int, torch.device]:
    """(rank, world size, device). Under torchrun: the per-rank device, then joins (or reuses) the process group."""
    global _owned
    dev = resolve_device(device)
    world = world_size()
    if world == 1:
        return 0, 1, dev
    if dev.type == "cuda":
        if dev.index is not None:
            raise RobgenError(f"under torchrun each process takes the GPU of its LOCAL_RANK; pass --device cuda "
                              f"or auto, not {device}")
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if local >= torch.cuda.device_count():
            raise RobgenError(f"process LOCAL_RANK={local} has no GPU: {torch.cuda.device_count()} visible; start "
                              f"at most that many processes per node")
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        backend = os.environ.get("ROBGEN_DIST_BACKEND") or ("nccl" if dev.type == "cuda" else "gloo")
        dist.init_process_group(backend, timeout=TIMEOUT)
        _owned = True
    return dist.get_rank(), dist.get_world_size(), dev


def teardown() -> None:
    """After a successful run: wait for every rank, then end the process group robgen started."""
    global _owned
    if _owned and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
        _owned = False


def ends_group(fn: F) -> F:
    """Call teardown when fn returns; an exception propagates at once (no barrier that a failed rank never joins)."""
    @functools.wraps(fn)
    def run(*args, **kwargs):
        result = fn(*args, **kwargs)
        teardown()
        return result

    return run  # type: ignore[return-value]
