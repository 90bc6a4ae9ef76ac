"""The `Task` record every family returns, plus helpers the families share.

A task is fully materialised in memory: tensors on the CPU, regression targets float32 ``(N, 1)``,
classification targets int64 ``(N,)``. Inputs are float32, except for the real image datasets, which
keep their raw uint8 pixels ``(N, C, H, W)`` (CIFAR-10's training set: 150 MiB instead of 600 MiB
as float32, so a whole dataset can live on the training GPU). Whatever the stored type, the model
always sees ``task.normalise(x)``; augmentation works on stored inputs, before normalising.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import torch
from torch import Tensor

from raystudy.seeding import derive_seed

Family = Literal["functions", "circles", "images"]
Kind = Literal["regression", "classification"]


# eq=False: dataclass equality would compare tensors elementwise and fail on bool(); identity is
# the only meaningful equality for a bag of tensors.
@dataclass(frozen=True, eq=False)
class Task:
    """What one trial learns: a fixed train/test split and how to read it.

    ``in_shape`` is the shape of one sample (``(2,)`` or ``(C, H, W)``); ``out_dim`` is the number
    of classes (classification) or 1 (regression). ``augment_recipe`` names the training-time
    augmentation that suits the data (see ``raystudy.train.augment``), ``None`` when none does.
    ``info`` records what was generated (sizes, seeds, noise, labels changed) for provenance.

    ``mean``/``std``: per-channel normalisation in the units of the stored inputs (pixels 0-255 for
    uint8 images), None when the inputs are used as stored. ``pad_fill``: the value padding-based
    augmentation fills with, in the same units. ``corruptions``: the task's -C test sets, or None.
    """

    name: str
    family: Family
    kind: Kind
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    in_shape: tuple[int, ...]
    out_dim: int
    augment_recipe: str | None = None
    info: dict[str, Any] = field(default_factory=dict)
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    pad_fill: float = 0.0
    corruptions: "CorruptionSet | None" = None

    def normalise(self, x: Tensor) -> Tensor:
        """Model inputs from stored inputs ``x`` (any device, any batch shape ``(N, *in_shape)``):
        float32, and ``(x - mean) / std`` per channel (dim 1) when the task has statistics.
        Cost: one elementwise pass; a float32 ``x`` without statistics is returned as is."""
        x = x.float()
        if self.mean is None:
            return x
        shape = (1, -1) + (1,) * (x.ndim - 2)
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(shape)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(shape)
        return (x - mean) / std


@dataclass(frozen=True)
class CorruptionSet:
    """A task's corrupted test sets (CIFAR-10-C, CIFAR-100-C, Tiny-ImageNet-C), read lazily.

    ``items``: every (corruption, severity) pair, in release order. ``load(corruption, severity,
    max_samples)`` returns ``(x, y)``: inputs in the same stored format as the task's ``x_test`` (so
    ``task.normalise`` applies) and int64 labels, the first ``max_samples`` (None = all) images.
    """

    name: str
    items: tuple[tuple[str, int], ...]
    load: Callable[[str, int, int | None], tuple[Tensor, Tensor]]


def batches(x: Tensor, y: Tensor, batch_size: int | None) -> list[tuple[Tensor, Tensor]]:
    """Split ``(x, y)`` into consecutive batches in their stored order.

    Returns a list of ``(x_b, y_b)`` views (no copies); the last batch holds the remainder and may
    be smaller. ``batch_size=None`` returns one full batch. Shuffling is the caller's business
    (it needs the caller's generator).
    """
    if len(x) != len(y):
        raise ValueError(f"{len(x)} inputs for {len(y)} targets")
    if batch_size is None:
        return [(x, y)]
    if batch_size <= 0:
        raise ValueError(f"batch_size must be a positive int or None, got {batch_size}")
    return [(x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, len(x), batch_size)]


def apply_label_noise(
    y: Tensor, p: float, n_classes: int, data_seed: int
) -> tuple[Tensor, int]:
    """Replace each label, with probability ``p``, by a class drawn uniformly from ``n_classes``.

    The replacement may equal the true label (the random-label protocol), so the expected fraction
    changed is ``p * (1 - 1/n_classes)``. Returns ``(noisy_labels, n_changed)``; ``y`` is untouched.
    Draws come from a private generator seeded by ``derive_seed(data_seed, "labels")``; both the
    coin flips and the replacement classes are always drawn for every sample, so the set of
    replaced labels grows monotonically with ``p`` under one ``data_seed`` (nested noise levels).
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"label_noise must be in [0, 1], got {p}")
    gen = torch.Generator().manual_seed(derive_seed(data_seed, "labels"))
    coin = torch.rand(len(y), generator=gen)
    random_class = torch.randint(0, n_classes, (len(y),), generator=gen, dtype=y.dtype)
    noisy = torch.where(coin < p, random_class, y)
    return noisy, int((noisy != y).sum())
