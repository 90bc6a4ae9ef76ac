"""BatchNorm running statistics of a model: find the layers that keep them, freeze them across forward
passes, recompute them from data, and read the accuracy a model has with batch statistics. Shared by
training (SAM's perturbed pass) and measuring (stale statistics, recalibration). Plain torch, no Ray."""
from __future__ import annotations

import contextlib
from typing import Iterable, Iterator

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

Batch = tuple[Tensor, Tensor]


def _copy_all(dst: list[Tensor], src: list[Tensor]) -> None:
    """``d.copy_(s)`` for every pair, in one fused launch per (device, dtype) group."""
    groups: dict[tuple[torch.device, torch.dtype], tuple[list[Tensor], list[Tensor]]] = {}
    for d, s in zip(dst, src):
        ds, ss = groups.setdefault((d.device, d.dtype), ([], []))
        ds.append(d)
        ss.append(s)
    for ds, ss in groups.values():
        torch._foreach_copy_(ds, ss)


@contextlib.contextmanager
def bn_stats_frozen(model: nn.Module) -> Iterator[nn.Module]:
    """Snapshot every BatchNorm's ``running_mean``, ``running_var`` and ``num_batches_tracked`` and
    restore them on exit, so forward passes inside the block leave them unchanged.

    Snapshot-and-restore (rather than momentum 0) also covers ``momentum=None`` (cumulative
    averages) and the batch counter. BatchNorm still normalises with batch statistics in train mode.
    Cost: two copies of the BatchNorm buffers, a few fused launches on a GPU.
    """
    bufs = [buf for m in model.modules() if isinstance(m, _BatchNorm)
            for buf in (m.running_mean, m.running_var, m.num_batches_tracked) if buf is not None]
    saved = [torch.empty_like(buf) for buf in bufs]
    with torch.no_grad():
        _copy_all(saved, bufs)
    try:
        yield model
    finally:
        with torch.no_grad():
            _copy_all(bufs, saved)


def batchnorm_layers(model: nn.Module) -> list[_BatchNorm]:
    """Every BatchNorm1d/2d/3d (and SyncBatchNorm) module of ``model`` that tracks running statistics."""
    return [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, data: Iterable[Batch]) -> int:
    """Recompute every BatchNorm's running mean and variance from ``data`` (the un-augmented training
    split), as ``torch.optim.swa_utils.update_bn`` does: statistics reset, momentum None (an equal-weight
    average over batches of each batch's mean and unbiased variance), one forward pass with BatchNorm in
train mode (every other module, e.g. dropout, in eval mode).
    Parameters are untouched; momenta and the model's train/eval flags are restored; returns the number
    of BatchNorm layers recalibrated (0: nothing to do, no forward pass). Cost: one forward pass over ``data``.
    """
    layers = batchnorm_layers(model)
    if not layers:
        return 0
    momenta = [m.momentum for m in layers]
    modes = [(m, m.training) for m in model.modules()]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None
    try:
        _only_batchnorm_training(model, layers)
        for x, _ in data:
            model(x)
    finally:
        for m, momentum in zip(layers, momenta):
            m.momentum = momentum
        for m, training in modes:
            m.training = training
    return len(layers)


@torch.no_grad()
def train_mode_accuracy(model: nn.Module, data: Iterable[Batch]) -> float:
    """Fraction of ``data`` classified correctly with BatchNorm using each batch's own statistics (train
    mode, as during training; dropout and the like stay in eval mode), without changing any running statistic. Batch composition matters: pass
    batches of the training batch size. Cost: one forward pass over ``data``; modes restored."""
    modes = [(m, m.training) for m in model.modules()]
    correct = total = 0
    try:
        with bn_stats_frozen(model):
            _only_batchnorm_training(model, batchnorm_layers(model))
            for x, y in data:
                correct += int((model(x).argmax(dim=1) == y).sum())
                total += len(y)
    finally:
        for m, training in modes:
            m.training = training
    return correct / total


def _only_batchnorm_training(model: nn.Module, layers: list[_BatchNorm]) -> None:
    model.eval()
    for m in layers:
        m.train()
