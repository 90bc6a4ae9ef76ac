"""Data-parallel training that computes what one process computes. Plain torch (``torch.distributed``),
no Ray: Ray Train starts the processes and the process group, ``raystudy.cluster.trials`` hands the
loop a :class:`DataParallel` with its rank, world size and DDP wrapper.

How N workers reproduce the single-process run, up to floating-point reduction order:
- every worker draws the same epoch order and augmentation from the same seeds (``BatchSchedule``),
  builds the whole batch, then keeps its :class:`Shard` of it, a contiguous slice; the union of the
  shards is exactly the single-process batch;
- each worker's mean loss is scaled by ``world * n_local / n_batch``, so DDP's gradient average
  (an all-reduce mean over workers) is the full batch's mean gradient, whatever the shard sizes (an
  unequal last batch, or a worker with no rows of a batch smaller than the world);
- SAM's two passes both go through DDP, so the ascent direction ``rho * g / ||g||`` uses the
  all-reduced (full-batch) gradient and is the same on every worker;
- BatchNorm becomes synchronised BatchNorm (``batchnorm.sync_batchnorm``): batch statistics and
  running statistics are the whole batch's, as in one process; it keeps BatchNorm's state-dict keys,
  and the loop saves the unwrapped module, so checkpoints load into the plain model;
- the epoch's running loss is summed over workers once per epoch (one all-reduce), and rank 0 alone
  writes checkpoints and resume points.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.distributed as dist
from torch import Tensor, nn

from raystudy.train.batchnorm import sync_batchnorm


@dataclass(frozen=True)
class Shard:
    """Rank ``rank``'s part of every batch among ``world`` workers: rows ``[rank*n//world,
    (rank+1)*n//world)`` of an ``n``-row batch (sizes differ by at most one; empty when n < world)."""

    rank: int
    world: int

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world:
            raise ValueError(f"rank must be in [0, world), got rank={self.rank}, world={self.world}")

    def bounds(self, n: int) -> tuple[int, int]:
        return self.rank * n // self.world, (self.rank + 1) * n // self.world

    def take(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """This rank's rows of the batch ``(x, y)`` (views, no copy)."""
        lo, hi = self.bounds(len(x))
        return x[lo:hi], y[lo:hi]

    def weight(self, n: int) -> float:
        """Factor on this rank's mean loss over its rows of an ``n``-row batch that makes DDP's
        gradient average the batch's mean gradient: ``world * n_local / n``."""
        lo, hi = self.bounds(n)
        return self.world * (hi - lo) / n


def _ddp(model: nn.Module) -> nn.Module:
    return nn.parallel.DistributedDataParallel(model)


@dataclass
class DataParallel:
    """This worker's place in data-parallel training: ``rank`` of ``world`` processes in the default
    process group (already initialised), and ``wrap``, which turns the model into its gradient-averaging
    forward (``DistributedDataParallel`` by default; Ray passes ``ray.train.torch.prepare_model``)."""

    rank: int
    world: int
    wrap: Callable[[nn.Module], nn.Module] = field(default=_ddp)

    @property
    def shard(self) -> Shard:
        return Shard(self.rank, self.world)

    @property
    def writes(self) -> bool:
        """Whether this worker writes files (rank 0 alone)."""
        return self.rank == 0

    def prepare(self, model: nn.Module, device: torch.device) -> nn.Module:
        """``model`` with synchronised BatchNorm (see ``batchnorm.sync_batchnorm``), before the optimiser is built."""
        return sync_batchnorm(model, device)

    def sum(self, value: Tensor) -> Tensor:
        """``value`` summed over every worker (in place; returned)."""
        dist.all_reduce(value)
        return value

    def barrier(self) -> None:
        dist.barrier()
