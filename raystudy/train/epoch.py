"""The per-epoch core of training: where the training split lives, which batches an epoch sees, and
one optimiser step. ``train_trial`` (loop.py) and ``benchmarks/train_throughput.py`` call these same
functions; they need only torch (no study spec, storage or Ray), so a bare GPU box can run them.

Fast on a GPU without changing what is computed:
- the training split is copied to the GPU once when it fits (uint8 images stay uint8) and each batch
  is indexed, augmented and normalised there; otherwise it is gathered on the host into pinned
  memory and copied asynchronously;
- nothing is read back to the host inside an epoch: the running loss stays a device tensor;
- conv nets run channels_last on CUDA; ``precision="bf16"`` autocasts the forward passes;
  ``compile=True`` runs the model through ``torch.compile`` (eager, with a warning, if that fails).
The random draws (batch order, augmentation) come from CPU generators seeded per epoch, so every
device sees the same batches with the same augmentation; on the CPU in fp32 the arithmetic is the
plain loop's, bit for bit.
"""
from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import torch
from torch import Tensor, nn

from raystudy.seeding import derive_seed
from raystudy.tasks.base import Task
from raystudy.train.augment import augment
from raystudy.train.ddp import DataParallel
from raystudy.train.sam import SAM, bn_stats_frozen

PRECISIONS = ("fp32", "bf16")


def fits_on_device(data_bytes: int, free_bytes: int, total_bytes: int, share: float = 1.0,
                   max_fraction: float = 0.25) -> bool:
    """Whether a training split of ``data_bytes`` should live on the device: it may take at most
    ``max_fraction`` of the memory this trial can use there, the smaller of what is free now and its
    ``share`` of the total (a fractional ``resources.gpus`` caps the process at ``share * total``).
    The rest is left for weights, optimiser state and activations. All sizes in bytes."""
    if not 0 < share <= 1:
        raise ValueError(f"share must be in (0, 1], got {share}")
    return data_bytes <= max_fraction * min(free_bytes, share * total_bytes)


@dataclass(frozen=True)
class BatchSchedule:
    """Which samples each step of an epoch sees, and how they are augmented.

    ``batch_size``: samples per step (None = the whole split in one step); ``shuffle_seed`` and
    ``augment_seed`` seed the per-epoch order and augmentation draws; ``recipe``: the augmentation
    (see ``raystudy.train.augment``), None for none; ``fill``: what padding fills with, in the units of
    the stored inputs (the task's ``pad_fill``: grey 128 for the real image sets).
    """

    batch_size: int | None
    shuffle_seed: int
    augment_seed: int
    recipe: str | None = None
    fill: float = 0.0

    def steps(self, n: int) -> int:
        """Optimiser steps per epoch over ``n`` samples (the last batch may be smaller)."""
        return math.ceil(n / (self.batch_size or n))

    def order(self, n: int, epoch: int) -> Tensor:
        """The ``n`` sample indices of ``epoch`` in visiting order (int64, CPU): a permutation drawn
        from ``derive_seed("order", shuffle_seed, epoch)``, or ``arange(n)`` if one batch holds all."""
        if self.batch_size is None or self.batch_size >= n:
            return torch.arange(n)
        gen = torch.Generator().manual_seed(derive_seed("order", self.shuffle_seed, epoch))
        return torch.randperm(n, generator=gen)

    def augment_generator(self, epoch: int) -> torch.Generator:
        """The CPU generator every augmentation draw of ``epoch`` comes from, whatever the device."""
        return torch.Generator().manual_seed(derive_seed("augment", self.augment_seed, epoch))


class TrainingData:
    """A task's training split, placed for training on ``device``.

    ``resident`` (None = decide): whether the split is copied to ``device`` once. On CUDA the
    default asks :func:`fits_on_device` with the free memory and ``memory_share`` (the trial's
    fractional GPU, 1.0 for a whole one); on the CPU the split is already where it is used.
    Cost: one copy of the split to the device when resident; none otherwise.
    """

    def __init__(self, task: Task, device: str | torch.device, memory_share: float = 1.0,
                 resident: bool | None = None) -> None:
        self.task, self.device = task, torch.device(device)
        x, y = task.x_train, task.y_train
        if self.device.type == "cpu":
            resident = True
        elif resident is None and self.device.type == "cuda":
            free, total = torch.cuda.mem_get_info(self.device)
            resident = fits_on_device(x.nbytes + y.nbytes, free, total, memory_share)
        elif resident is None:
            resident = True  # other accelerators cannot be asked for free memory: try
        self.resident = resident
        self.x, self.y = (x.to(self.device), y.to(self.device)) if resident else (x, y)
        # task.normalise builds its statistics per call (a blocking host-to-device copy on CUDA);
        # here they are built once, with the same values, shape and arithmetic.
        self._stats = None
        if task.mean is not None:
            shape = (1, -1) + (1,) * (x.ndim - 2)
            self._stats = tuple(torch.tensor(s, dtype=torch.float32).view(shape).to(self.device)
                                for s in (task.mean, task.std))

    def __len__(self) -> int:
        return len(self.y)

    def normalise(self, x: Tensor) -> Tensor:
        """``task.normalise(x)`` for a batch on ``device``, bit for bit, without a host round trip."""
        x = x.float()
        if self._stats is None:
            return x
        mean, std = self._stats
        return (x - mean) / std

    def batches(self, schedule: BatchSchedule, epoch: int) -> Iterator[tuple[Tensor, Tensor]]:
        """``epoch``'s ``(inputs, targets)`` batches on ``device``: stored inputs gathered in
        ``schedule.order``, augmented (training batches only) with ``schedule.augment_generator``,
        then normalised to float32. The same batches on every device."""
        n = len(self)
        order = schedule.order(n, epoch)
        gen = schedule.augment_generator(epoch)
        if self.resident and self.device.type == "cuda":  # once per epoch, pinned: no sync
            order = order.pin_memory().to(self.device, non_blocking=True)
        elif self.resident:
            order = order.to(self.device)
        size = schedule.batch_size or n
        for start in range(0, n, size):
            x, y = self._take(order[start:start + size])
            if schedule.recipe:
                x = augment(x, schedule.recipe, gen, fill=schedule.fill)
            yield self.normalise(x), y

    def _take(self, idx: Tensor) -> tuple[Tensor, Tensor]:
        if self.resident:
            return self.x.index_select(0, idx), self.y.index_select(0, idx)
        # Gather straight into pinned memory, then copy without blocking; the caching host allocator
        # keeps each buffer until its copy has finished, so a buffer is never overwritten in flight.
        out = []
        for src in (self.x, self.y):
            buf = torch.empty((len(idx), *src.shape[1:]), dtype=src.dtype, pin_memory=True)
            torch.index_select(src, 0, idx, out=buf)
            out.append(buf.to(self.device, non_blocking=True))
        return out[0], out[1]


class TrainStep:
    """One optimiser step on a batch: forward (autocast to bfloat16 if ``precision="bf16"``),
    backward, update; a SAM step (two passes) when ``sam`` wraps ``optimizer``. Calling it returns
    the detached mean loss at the weights before the update, as a device tensor (never read here).

    With ``parallel`` (data-parallel training, see ``ddp.py``) it is called with the whole batch on
    every worker, trains on this worker's shard through the DDP-wrapped forward, and returns this
    worker's weighted loss (their mean over workers is the batch's mean loss).

    Set up once per trial, in place on ``model`` (which must already be on its device): conv nets on
    CUDA switch to channels_last (parameters keep their identity, so an optimiser built over them
    stays valid); ``compile=True`` wraps the forward in ``torch.compile``. ``model`` stays the
    original module, so ``model.state_dict()`` keeps its keys. ``compiled`` says whether the
    compiled forward is in use (false after a fallback).
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: Callable[[Tensor, Tensor], Tensor],
                 sam: SAM | None = None, precision: str = "fp32", compile: bool = False,
                 parallel: DataParallel | None = None) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.model, self.optimizer, self.loss_fn, self.sam, self.precision = model, optimizer, loss_fn, sam, precision
        self.parallel = parallel
        self.device = next(model.parameters()).device
        self.channels_last = self.device.type == "cuda" and any(isinstance(m, nn.Conv2d) for m in model.modules())
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        self.net = parallel.wrap(model) if parallel else model  # the module whose forward trains (DDP or model)
        self._eager: Callable[[Tensor], Tensor] = self.net
        self._forward: Callable[[Tensor], Tensor] = torch.compile(self.net) if compile else self.net
        self._probed: set[tuple[int, ...]] = set()

    @property
    def compiled(self) -> bool:
        return self._forward is not self._eager

    def loss(self, x: Tensor, y: Tensor, weight: float = 1.0) -> Tensor:
        """The mean loss of the batch at the current weights, under the step's precision, times
        ``weight``; an empty batch (a worker's shard of a batch smaller than the world) gives a zero
        that still runs forward and backward, so the worker takes part in every collective."""
        bf16 = self.precision == "bf16"
        with torch.autocast(self.device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
            out = self._forward(x)
            if len(x) == 0:
                return out.sum() * 0.0
            loss = self.loss_fn(out, y)
            return loss * weight if weight != 1.0 else loss

    def __call__(self, x: Tensor, y: Tensor) -> Tensor:
        weight, shape = 1.0, tuple(x.shape)  # the whole batch's shape: every worker probes at the same step
        if self.parallel is not None:
            weight = self.parallel.shard.weight(len(x))
            x, y = self.parallel.shard.take(x, y)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.compiled and shape not in self._probed:
            self._probe(x, y, shape, weight)
        if self.sam is not None:
            return self.sam.step(lambda: self.loss(x, y, weight))
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss(x, y, weight)
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    def _probe(self, x: Tensor, y: Tensor, shape: tuple[int, ...], weight: float) -> None:
        """Compile for this batch shape on a throwaway forward and backward that leave no trace
        (BatchNorm statistics restored, gradients dropped, RNG state restored), so a compiler
        failure falls back to eager before any step has used the compiled model. Costs one extra
        forward and backward per new batch shape (usually two per trial)."""
        from torch._dynamo.exc import TorchDynamoException

        self._probed.add(shape)
        devices = [self.device] if self.device.type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=devices), bn_stats_frozen(self.model):
                self.loss(x, y, weight).backward()
        except TorchDynamoException as err:
            cause = getattr(err, "inner_exception", None) or err  # a backend's own error, if it raised one
            first = (str(cause).strip().splitlines() or [""])[0]
            warnings.warn(f"torch.compile failed, training eagerly instead ({type(cause).__name__}: {first})",
                          RuntimeWarning, stacklevel=3)
            self._forward = self._eager
        finally:
            self.model.zero_grad(set_to_none=True)


def train_epoch(step: TrainStep, batches: Iterable[tuple[Tensor, Tensor]]) -> float:
    """Run ``step`` over ``batches`` with the model in train mode. Returns the epoch's running loss:
    the sample-weighted mean of the per-batch losses, in the loss's units. The sum stays on the
    device in float64 (which reproduces a Python-float sum exactly) and is read once, at the end:
    the epoch's only host synchronisation (with data-parallel workers, after one all-reduce of it)."""
    step.net.train()
    total: Tensor | None = None
    seen = 0
    for x, y in batches:
        part = step(x, y).double() * len(x)
        total = part if total is None else total + part
        seen += len(x)
    if total is None:
        raise ValueError("an epoch with no batches")
    if step.parallel is not None:
        total = step.parallel.sum(total) / step.parallel.world
    return total.item() / seen
