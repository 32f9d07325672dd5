"""A process's place in a torchrun job, and the collective operations dpseg uses - one helper for every layer.

``torchrun --nproc_per_node=N -m dpseg ...`` sets ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK``: :func:`launched`
reads them (``(0, 1, 0)`` without torchrun), :func:`start` starts the process group (NCCL on CUDA, gloo on CPU),
:func:`rank_world` is the running group's place. The collectives are identities in a single process, so the same
code runs with and without torchrun: training (:mod:`dpseg.engine`), evaluation and calibration (confusion matrices
summed over ranks), prompt-bank building (each rank builds its share) and the commands.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist


def initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def launched() -> tuple[int, int, int]:
    """(rank, world size, local rank) as torchrun set them for this process; (0, 1, 0) when not under torchrun."""

    def env(key: str, default: int) -> int:
        return int(os.environ.get(key, default))

    return env("RANK", 0), env("WORLD_SIZE", 1), env("LOCAL_RANK", 0)


def rank_world() -> tuple[int, int]:
    """(rank, world size) of the running process group; (0, 1) without one."""
    if initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def start(device: torch.device, timeout_min: float = 30.0) -> bool:
    """Start the process group when launched by torchrun with several processes and no group runs yet (NCCL on a
    CUDA ``device``, gloo otherwise). True if this call started it (so the caller ends it: :func:`stop`)."""
    _, world, _ = launched()
    if world <= 1 or initialized():
        return False
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(minutes=timeout_min))
    return True


def stop() -> None:
    if initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if initialized() and dist.get_world_size() > 1:
        dist.barrier()


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """The sum over ranks of ``values`` (a copy, on the device ``values`` is on; NCCL reduces on the GPU)."""
    out = values.clone()
    if initialized() and dist.get_world_size() > 1:
        work = out.cuda() if dist.get_backend() == "nccl" and out.device.type != "cuda" else out
        dist.all_reduce(work, op=dist.ReduceOp.SUM)
        out = work.to(values.device)
    return out


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not initialized() or dist.get_world_size() == 1:
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not initialized() or dist.get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
