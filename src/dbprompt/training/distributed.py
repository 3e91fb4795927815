"""Training on several processes (torchrun): each rank encodes its share of every batch, the contrastive
loss sees the whole batch (features gathered across ranks with their gradients, as open_clip's ClipLoss
does), gradients are averaged, and rank 0 alone validates and writes.

With one process every function here is the identity, so a single-process run is unchanged.
"""

from __future__ import annotations

import os
from typing import Any, Iterable

import torch
import torch.distributed as dist

from ..runtime import Runtime


def launched() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) without it."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def join(runtime: Runtime) -> Runtime:
    """Join torchrun's process group (gloo on CPUs, NCCL on GPUs) and put this rank on its own GPU."""
    rank, world, local = launched()
    if world == 1:
        return runtime
    if runtime.device_type == "cuda":
        runtime = runtime.replace(device=f"cuda:{local}")
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if runtime.device_type == "cuda" else "gloo")
    return runtime.replace(rank=rank, world=world)


def share(runtime: Runtime, start: int, stop: int) -> tuple[int, int]:
    """This rank's contiguous part of the batch start..stop (whose size the world divides)."""
    part = (stop - start) // runtime.world
    return start + runtime.rank * part, start + (runtime.rank + 1) * part


def usable(runtime: Runtime, size: int) -> int:
    """The largest batch size up to `size` that splits evenly over the ranks (all ranks gather equal parts)."""
    return size - size % runtime.world


def average_gradients(runtime: Runtime, params: Iterable[torch.nn.Parameter]) -> None:
    """Mean of each gradient over the ranks, as DistributedDataParallel makes it. A parameter this rank's
    step did not reach (its share of the batch drew no image to backpropagate) counts as a zero gradient:
    every rank joins every all-reduce."""
    if runtime.world == 1:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad)
        p.grad /= runtime.world


def from_main(runtime: Runtime, value: Any) -> Any:
    """Rank 0's `value` on every rank (a validation's scores, a calibrated temperature)."""
    if runtime.world == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(runtime: Runtime) -> None:
    if runtime.world > 1:
        dist.barrier()


def leave() -> None:
    """Leave the process group at the end of a torchrun run (no-op otherwise)."""
    if dist.is_initialized():
        dist.destroy_process_group()
