"""Training-time augmentation of image batches, vectorised, driven by the caller's generator.

Recipes are ``+``-joined parts: ``shift{p}`` / ``crop{p}`` (synonyms: zero-pad by p pixels, then
crop back to H x W at a random offset per sample, i.e. a random translation of up to p pixels on
each axis, as torchvision's ``RandomCrop(size, padding=p)``) and ``flip`` (horizontal flip with
probability 0.5 per sample). Examples: ``"shift1"`` (digits), ``"crop4+flip"`` (CIFAR).
Padding is with zeros in whatever space ``x`` lives in (apply before normalising for CIFAR).
"""
from __future__ import annotations

import re

import torch
from torch import Tensor

_PART = re.compile(r"^(shift|crop)(\d+)$|^flip$")


def parse_recipe(recipe: str | None) -> list[tuple[str, int]]:
    """``recipe`` as a list of ``("shift", p)`` / ``("flip", 0)`` steps in application order.

    ``None`` or ``""`` -> ``[]`` (identity). Raises ``ValueError`` on anything else it cannot read,
    so a study file can be checked before any trial starts.
    """
    if not recipe:
        return []
    steps: list[tuple[str, int]] = []
    for part in recipe.split("+"):
        m = _PART.match(part.strip())
        if m is None:
            raise ValueError(
                f"unknown augmentation {part!r} in recipe {recipe!r}; expected shift<p>, crop<p> or flip"
            )
        steps.append(("flip", 0) if m.group(1) is None else ("shift", int(m.group(2))))
    return steps


def random_shift(x: Tensor, pad: int, generator: torch.Generator) -> Tensor:
    """Translate each image of ``x`` (N, C, H, W) by its own offset in [-pad, pad] per axis,
    filling with zeros. Draws 2N integers (row offsets, then column offsets) from ``generator``.
    Cost: one padded copy and one gather of the batch.
    """
    if pad == 0:
        return x
    n, _, h, w = x.shape
    top = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=generator.device)
    left = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=generator.device)
    top, left = top.to(x.device), left.to(x.device)
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    rows = top[:, None] + torch.arange(h, device=x.device)  # (N, H)
    cols = left[:, None] + torch.arange(w, device=x.device)  # (N, W)
    idx = torch.arange(n, device=x.device)[:, None, None]
    # Channels-last so the advanced indices are adjacent: result (N, H, W, C).
    out = padded.permute(0, 2, 3, 1)[idx, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()


def random_flip(x: Tensor, generator: torch.Generator) -> Tensor:
    """Mirror each image of ``x`` (N, C, H, W) left-right with probability 0.5 (N draws)."""
    coin = torch.rand(len(x), generator=generator, device=generator.device).to(x.device) < 0.5
    return torch.where(coin[:, None, None, None], x.flip(-1), x)


def augment(x: Tensor, recipe: str | None, generator: torch.Generator) -> Tensor:
    """Apply ``recipe`` to the batch ``x`` (N, C, H, W); returns a new (N, C, H, W) tensor
    (``x`` itself for the identity). Randomness comes only from ``generator``, so the same
    generator state gives the same batch.
    """
    steps = parse_recipe(recipe)
    if steps and x.dim() != 4:
        raise ValueError(f"augment expects a (N, C, H, W) batch, got shape {tuple(x.shape)}")
    for op, p in steps:
        x = random_shift(x, p, generator) if op == "shift" else random_flip(x, generator)
    return x
