"""Sharing a conversion between torch.distributed ranks (torchrun), or running it alone.

Coordination only moves small Python objects, so it always uses a gloo group, also when the numerics run on
CUDA. Shards are dealt to ranks largest first, each to the least loaded rank, the same way on every rank.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import TypeVar

import torch
import torch.distributed as dist

from qtools.errors import QtoolsError

T = TypeVar("T")
# A conversion of a 960 GB checkpoint runs for hours between collectives.
_TIMEOUT = timedelta(hours=72)


def assign_shards(sizes: dict[str, int], world: int) -> list[list[str]]:
    """Deal shards (name -> bytes) to `world` ranks, largest first to the least loaded; deterministic."""
    loads = [0] * world
    shares: list[list[str]] = [[] for _ in range(world)]
    for name in sorted(sizes, key=lambda n: (-sizes[n], n)):
        rank = min(range(world), key=lambda r: (loads[r], r))
        shares[rank].append(name)
        loads[rank] += sizes[name]
    return [sorted(share) for share in shares]


class Group:
    """This process's place among the ranks: `rank`, `world`, and the collective steps a conversion needs."""

    def __init__(self, rank: int = 0, world: int = 1):
        self.rank, self.world = rank, world

    def my_shards(self, sizes: dict[str, int]) -> list[str]:
        return assign_shards(sizes, self.world)[self.rank]

    def run_on_rank0_then_share(self, step: Callable[[], T]) -> T:
        """Run `step` on rank 0 only; every rank gets its result, or raises when it failed."""
        result, error = _attempt(step) if self.rank == 0 else (None, None)
        if self.world > 1:
            box = [(result, _describe(error))]
            dist.broadcast_object_list(box, src=0)
            result, message = box[0]
            if self.rank != 0 and message is not None:
                raise QtoolsError(f"rank 0 failed: {message}")
        if error is not None:
            raise error
        return result

    def run_and_gather(self, step: Callable[[], T]) -> list[T]:
        """Run `step` on every rank; every rank gets all results, in rank order, or raises (naming the ranks
        that failed) when any rank failed."""
        result, error = _attempt(step)
        if self.world == 1:
            if error is not None:
                raise error
            return [result]
        gathered: list = [None] * self.world
        dist.all_gather_object(gathered, (result, _describe(error)))
        failures = [f"rank {rank} failed: {m}" for rank, (_, m) in enumerate(gathered) if m is not None]
        if error is not None:
            raise error
        if failures:
            raise QtoolsError("; ".join(failures))
        return [value for value, _ in gathered]

    def run_everywhere(self, step: Callable[[], T]) -> T:
        """Run `step` on every rank; if any rank fails, every rank raises, naming the ranks that failed."""
        result, error = _attempt(step)
        if self.world > 1:
            gathered: list = [None] * self.world
            dist.all_gather_object(gathered, _describe(error))
            if error is None:
                failures = [f"rank {rank} failed: {m}" for rank, m in enumerate(gathered) if m is not None]
                if failures:
                    raise QtoolsError("; ".join(failures))
        if error is not None:
            raise error
        return result


def _attempt(step: Callable[[], T]) -> tuple[T | None, Exception | None]:
    try:
        return step(), None
    except Exception as error:
        return None, error


def _describe(error: Exception | None) -> str | None:
    if error is None:
        return None
    return str(error) if isinstance(error, QtoolsError) else f"{type(error).__name__}: {error}"


@contextmanager
def session(device: str = "cpu") -> Iterator[Group]:
    """A Group for this process: from torchrun's environment when WORLD_SIZE > 1, else a group of one."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        yield Group()
        return
    created = not dist.is_initialized()
    if created:
        dist.init_process_group("gloo", timeout=_TIMEOUT)
    if device.startswith("cuda"):
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    try:
        yield Group(dist.get_rank(), dist.get_world_size())
    finally:
        if created:
            dist.destroy_process_group()
