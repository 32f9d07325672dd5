"""The training job's place in torchrun (on :mod:`dpseg.distributed`) and the deterministic sharded sampler.

``torchrun --nproc_per_node=G -m dpseg train CONFIG`` sets RANK / WORLD_SIZE / LOCAL_RANK; :func:`init_distributed`
reads them and starts the process group (NCCL on GPUs, gloo on CPU). Without them everything runs in one process.

Data order is a pure function of (seed, sample position): global batch ``s`` holds sample positions
``[s * B, (s + 1) * B)``; position ``p`` is image ``perm_e[p mod N]`` of epoch ``e = p div N``, and rank ``r`` of
``W`` takes the ``r``-th contiguous slice of ``B / W`` positions. So a run on W ranks sees exactly the images of a
one-process run with the same global batch, and resuming at step ``s`` is starting at position ``s * B``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Optional

import numpy as np
import torch

from dpseg import distributed
from dpseg.distributed import launched
from dpseg.errors import ConfigError
from dpseg.evaluation.runtime import resolve_device


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False  # this context started the process group, so it ends it

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def pick_device(request: str, local_rank: int = 0) -> torch.device:
    """``auto`` = this rank's GPU if CUDA is available, else CPU; or an explicit ``cpu`` / ``cuda`` / ``cuda:N``."""
    return resolve_device(request, local_rank, what="config key 'train.device'")


def init_distributed(device_request: str = "auto", timeout_min: float = 30.0) -> DistContext:
    """The process's place in the job; starts the process group when launched by torchrun (WORLD_SIZE > 1)."""
    rank, world, local = launched()
    if distributed.initialized():  # started by the caller (tests, notebooks)
        rank, world = distributed.rank_world()
        return DistContext(rank, world, local, pick_device(device_request, local), owns_group=False)
    if world <= 1:
        return DistContext(device=pick_device(device_request, 0))
    device = pick_device(device_request, local)
    owns = distributed.start(device, timeout_min)
    return DistContext(rank, world, local, device, owns_group=owns)


def shutdown(ctx: DistContext) -> None:
    if ctx.owns_group:
        distributed.stop()


def local_batch_size(global_batch: int, world_size: int) -> int:
    if global_batch % world_size:
        raise ConfigError(
            f"train.batch_size={global_batch} is the global batch and must be divisible by the number of processes "
            f"({world_size}); use e.g. --set train.batch_size={max(1, global_batch // world_size) * world_size}"
        )
    return global_batch // world_size


def mix_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integers (numpy SeedSequence), stable across platforms and processes."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, dtype=np.uint64)[0] >> 1)


class ShardedInfiniteSampler(torch.utils.data.Sampler):
    """Infinite stream of this rank's ``(index, position)`` keys, ``B / W`` per global batch (module docstring).

    Epoch permutations are seeded by ``(seed, epoch)``; ``start`` is the first global sample position (resume).
    """

    def __init__(self, size: int, global_batch: int, rank: int = 0, world_size: int = 1, seed: int = 0, start: int = 0):
        if size < 1:
            raise ConfigError("the training dataset is empty")
        self.size, self.global_batch, self.rank, self.world_size = size, global_batch, rank, world_size
        self.local = local_batch_size(global_batch, world_size)
        self.seed, self.start = seed, start
        self._epoch: int = -1
        self._perm: Optional[torch.Tensor] = None

    def permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(mix_seed(self.seed, 0x5A3E, epoch))
            self._epoch, self._perm = epoch, torch.randperm(self.size, generator=g)
        assert self._perm is not None, "epochs count from 0"
        return self._perm

    def key(self, position: int) -> tuple[int, int]:
        return int(self.permutation(position // self.size)[position % self.size]), position

    def __iter__(self) -> Iterator[tuple[int, int]]:
        base = self.start
        while True:
            first = base + self.rank * self.local
            for p in range(first, first + self.local):
                yield self.key(p)
            base += self.global_batch
