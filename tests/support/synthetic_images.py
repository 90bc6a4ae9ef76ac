"""Small image data and a small conv net for the training-loop tests (torch only)."""
from __future__ import annotations

import torch
from torch import nn

from raystudy.tasks.base import Task


def uint8_task(n: int = 96, size: int = 8) -> Task:
    """CIFAR-like: raw uint8 pixels with per-channel statistics and a crop+flip recipe."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)
    y = torch.randint(0, 10, (n,), generator=g)
    return Task("synthetic", "images", "classification", x, y, x[:8], y[:8], (3, size, size), 10,
                augment_recipe="crop2+flip", mean=(125.3, 123.0, 113.9), std=(63.0, 62.1, 66.7), pad_fill=128.0)


def small_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))
