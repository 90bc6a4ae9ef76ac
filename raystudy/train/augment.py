"""Training-time augmentation of image batches, vectorised, driven by the caller's generator.

Recipes are ``+``-joined parts, applied left to right:

- ``shift{p}`` / ``crop{p}`` (synonyms): pad by p pixels with ``fill``, then crop back to H x W at
  a random offset per sample, i.e. a random translation of up to p pixels on each axis, as
  torchvision's ``RandomCrop(size, padding=p, fill=fill)``;
- ``rrc{s}``: random resized crop to s x s with torchvision's ``RandomResizedCrop`` defaults
  (area scale (0.08, 1), aspect ratio (3/4, 4/3), 10 tries then a central crop; bilinear);
- ``flip``: horizontal flip with probability 0.5 per sample.

Examples: ``"shift1"`` (digits), ``"crop4+flip"`` (CIFAR), ``"rrc64+flip"`` (Tiny-ImageNet).
Augmentation works on *stored* inputs, before ``Task.normalise``: uint8 pixels stay uint8 (resized
crops are rounded back), and ``fill`` is in the same units (``Task.pad_fill``: 128 for the real
image datasets, grey as the authors pad; 0 for digits). Every op works on any device; the
generator may live on another device than ``x`` (draws are moved to ``x``'s device).
"""
from __future__ import annotations

import math
import re

import torch
from torch import Tensor

_PART = re.compile(r"^(shift|crop|rrc)(\d+)$|^flip$")
RRC_SCALE = (0.08, 1.0)
RRC_RATIO = (3.0 / 4.0, 4.0 / 3.0)
_TRIES = 10


def parse_recipe(recipe: str | None) -> list[tuple[str, int]]:
    """``recipe`` as a list of ``("shift", p)`` / ``("rrc", size)`` / ``("flip", 0)`` steps in
    application order. ``None`` or ``""`` -> ``[]`` (identity). Raises ``ValueError`` on anything
    else it cannot read, so a study file can be checked before any trial starts.
    """
    if not recipe:
        return []
    steps: list[tuple[str, int]] = []
    for part in recipe.split("+"):
        m = _PART.match(part.strip())
        if m is None or (m.group(1) == "rrc" and int(m.group(2)) == 0):
            raise ValueError(f"unknown augmentation {part!r} in recipe {recipe!r}; "
                             "expected shift<p>, crop<p>, rrc<size> (size >= 1) or flip")
        if m.group(1) is None:
            steps.append(("flip", 0))
        else:
            steps.append(("rrc" if m.group(1) == "rrc" else "shift", int(m.group(2))))
    return steps


def _to(t: Tensor, device: torch.device) -> Tensor:
    """Random draws (small, made by a CPU generator so every device sees the same numbers) to the batch's
    device. To a GPU through pinned memory without blocking: a plain copy would wait for every queued kernel."""
    if t.device == device:
        return t
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def _rand(shape: tuple[int, ...], generator: torch.Generator, device: torch.device) -> Tensor:
    return _to(torch.rand(shape, generator=generator, device=generator.device, dtype=torch.float64), device)


def random_shift(x: Tensor, pad: int, generator: torch.Generator, fill: float = 0.0) -> Tensor:
    """Translate each image of ``x`` (N, C, H, W) by its own offset in [-pad, pad] per axis,
    filling with ``fill``. Draws 2N integers (row offsets, then column offsets) from
    ``generator``. Cost: one padded copy and one gather of the batch.
    """
    if pad == 0:
        return x
    n, _, h, w = x.shape
    top = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=generator.device)
    left = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=generator.device)
    top, left = _to(top, x.device), _to(left, x.device)
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad), value=fill)
    rows = top[:, None] + torch.arange(h, device=x.device)  # (N, H)
    cols = left[:, None] + torch.arange(w, device=x.device)  # (N, W)
    idx = torch.arange(n, device=x.device)[:, None, None]
    # Channels-last so the advanced indices are adjacent: result (N, H, W, C).
    out = padded.permute(0, 2, 3, 1)[idx, rows[:, :, None], cols[:, None, :]]
    # clone, not contiguous(): with one channel the permuted view already counts as contiguous but keeps
    # channels-last strides, which send CPU BatchNorm down another kernel (ties broken differently).
    return out.permute(0, 3, 1, 2).clone(memory_format=torch.contiguous_format)


def random_flip(x: Tensor, generator: torch.Generator) -> Tensor:
    """Mirror each image of ``x`` (N, C, H, W) left-right with probability 0.5 (N draws)."""
    coin = _to(torch.rand(len(x), generator=generator, device=generator.device), x.device) < 0.5
    return torch.where(coin[:, None, None, None], x.flip(-1), x)


def resized_crop_boxes(
    n: int, height: int, width: int, generator: torch.Generator, device: torch.device | str = "cpu",
    scale: tuple[float, float] = RRC_SCALE, ratio: tuple[float, float] = RRC_RATIO,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(top, left, h, w)``, int64 ``(n,)`` each: torchvision's ``RandomResizedCrop.get_params``
    for n images at once. Per image, the first of 10 tries (area fraction ~ U(scale), log aspect
    ratio ~ U(log ratio), rounded to whole pixels) that fits in the image wins, at a uniform offset;
    if none fits, the central crop of the largest in-ratio box. Draws 22n float64 uniforms from
    ``generator`` in one call (every try is drawn, so the draw count does not depend on the data).
    """
    u = _rand((n, 2 * _TRIES + 2), generator, torch.device(device))
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    target = area * (scale[0] + (scale[1] - scale[0]) * u[:, :_TRIES])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u[:, _TRIES:2 * _TRIES])
    ws = torch.round(torch.sqrt(target * aspect)).long()
    hs = torch.round(torch.sqrt(target / aspect)).long()
    ok = (ws > 0) & (ws <= width) & (hs > 0) & (hs <= height)
    first = torch.argmax(ok.int(), dim=1)  # index of the first fitting try (0 if none fits)
    found = ok.any(dim=1)
    w = ws.gather(1, first[:, None])[:, 0]
    h = hs.gather(1, first[:, None])[:, 0]
    # Fallback (torchvision): the whole image, trimmed to the nearest allowed aspect ratio.
    in_ratio = width / height
    fw, fh = width, height
    if in_ratio < min(ratio):
        fh = int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        fw = int(round(height * max(ratio)))
    w = torch.where(found, w, fw)
    h = torch.where(found, h, fh)
    top = torch.where(found, torch.floor(u[:, -2] * (height - h + 1)).long(), (height - fh) // 2)
    left = torch.where(found, torch.floor(u[:, -1] * (width - w + 1)).long(), (width - fw) // 2)
    return top, left, h, w


def resized_crop(x: Tensor, top: Tensor, left: Tensor, h: Tensor, w: Tensor, size: int) -> Tensor:
    """Crop box ``[top, top+h) x [left, left+w)`` of each image of ``x`` (N, C, H, W), resized to
    ``size x size`` bilinearly, as ``torchvision.transforms.v2.functional.resized_crop`` does for
    one image (half-pixel centres, edges clamped to the box). No antialiasing: exact for upsampling
    (Tiny-ImageNet's 64 -> 64 crops never shrink); a shrinking box aliases slightly. uint8 in,
    uint8 out (rounded). Cost: four gathers of (N, size, size, C).
    """
    dev = x.device

    def axis(start: Tensor, length: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        # Source coordinate of output pixel c: (c + 0.5) * length / size - 0.5, clamped to the box.
        c = torch.arange(size, device=dev, dtype=torch.float64)
        src = ((c + 0.5)[None] * (length[:, None].double() / size) - 0.5).clamp(min=0)
        src = torch.minimum(src, (length[:, None] - 1).double())
        lo = src.floor().long()
        hi = torch.minimum(lo + 1, length[:, None] - 1)
        return start[:, None] + lo, start[:, None] + hi, (src - lo).float()

    y0, y1, wy = axis(top.to(dev), h.to(dev))  # (N, size)
    x0, x1, wx = axis(left.to(dev), w.to(dev))
    img = x.permute(0, 2, 3, 1).float()  # (N, H, W, C)
    n = torch.arange(len(x), device=dev)[:, None, None]

    def at(r: Tensor, c: Tensor) -> Tensor:
        return img[n, r[:, :, None], c[:, None, :]]  # (N, size, size, C)

    wy, wx = wy[:, :, None, None], wx[:, None, :, None]
    top_row = at(y0, x0) * (1 - wx) + at(y0, x1) * wx
    bottom_row = at(y1, x0) * (1 - wx) + at(y1, x1) * wx
    out = (top_row * (1 - wy) + bottom_row * wy).permute(0, 3, 1, 2).clone(memory_format=torch.contiguous_format)
    if not x.dtype.is_floating_point:
        info = torch.iinfo(x.dtype)
        out = out.round().clamp(info.min, info.max)
    return out.to(x.dtype)


def random_resized_crop(x: Tensor, size: int, generator: torch.Generator) -> Tensor:
    """Torchvision's ``RandomResizedCrop(size)`` (default scale, ratio, bilinear) applied to each
    image of ``x`` (N, C, H, W) with its own box; returns (N, C, size, size)."""
    top, left, h, w = resized_crop_boxes(len(x), x.shape[2], x.shape[3], generator, x.device)
    return resized_crop(x, top, left, h, w, size)


def augment(x: Tensor, recipe: str | None, generator: torch.Generator, fill: float = 0.0) -> Tensor:
    """Apply ``recipe`` to the batch ``x`` (N, C, H, W) of stored inputs (uint8 or float, any
    device); ``fill`` is the padding value of ``shift``/``crop`` (pass ``task.pad_fill``). Returns
    a new tensor of ``x``'s dtype (``x`` itself for the identity). Randomness comes only from
    ``generator``, so the same generator state gives the same batch.
    """
    steps = parse_recipe(recipe)
    if steps and x.dim() != 4:
        raise ValueError(f"augment expects a (N, C, H, W) batch, got shape {tuple(x.shape)}")
    for op, p in steps:
        if op == "shift":
            x = random_shift(x, p, generator, fill)
        elif op == "rrc":
            x = random_resized_crop(x, p, generator)
        else:
            x = random_flip(x, generator)
    return x
