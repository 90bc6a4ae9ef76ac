"""The -C test sets of Hendrycks & Dietterich (ICLR 2019), read lazily as ``CorruptionSet``s.

CIFAR-10-C / CIFAR-100-C (Zenodo records 2535967 / 3555552)::

    <root>/CIFAR-10-C/<corruption>.npy   uint8 (50000, 32, 32, 3): severities 1..5 stacked, each
                                         the 10,000 test images in test-set order
    <root>/CIFAR-10-C/labels.npy         (50000,) the test labels, repeated for each severity

19 corruptions: the 15 of the benchmark plus 4 extra (speckle_noise, gaussian_blur, spatter,
saturate), as the release holds them (file names as in robustbench's loaders and TFDS).

Tiny-ImageNet-C (Zenodo record 2536630)::

    <root>/Tiny-ImageNet-C/<corruption>/<severity>/<wnid>/*.JPEG   64x64, 50 per class

15 corruptions x 5 severities. Its images are re-generated from ImageNet (Hendrycks,
hendrycks/robustness#39), so they do not correspond one-to-one to Tiny-ImageNet's validation
images; labels come from the wnid folders with Tiny-ImageNet's class indices.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .base import CorruptionSet
from .files import (
    DatasetError, cache_dir, cached_arrays, decode_images, npy_header, require_dir, sources_key,
)

BENCHMARK = (
    "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
    "zoom_blur", "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate",
    "jpeg_compression",
)
CIFAR_CORRUPTIONS = BENCHMARK + ("speckle_noise", "gaussian_blur", "spatter", "saturate")
TINY_CORRUPTIONS = BENCHMARK
SEVERITIES = (1, 2, 3, 4, 5)


def _check_severity(corruption: str, severity: int, names: tuple[str, ...]) -> None:
    if corruption not in names:
        raise KeyError(f"unknown corruption {corruption!r}; known: {', '.join(names)}")
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be one of 1..5, got {severity}")


def check_cifar_c(release: str, folder: Path, root: Path) -> int:
    """Plan-time check of a CIFAR-10-C/100-C folder from the ``.npy`` headers and file sizes alone
    (~20 header reads). Returns the images per severity (10,000 in the release); raises
    ``DatasetError`` naming the first missing, truncated or misshapen file."""
    require_dir(folder, release, root)
    shape, dtype = npy_header(folder / "labels.npy", release, root)
    if len(shape) != 1 or shape[0] == 0 or shape[0] % len(SEVERITIES):
        raise DatasetError(folder / "labels.npy", f"expected (5 * n,) labels, got shape {shape}")
    n = shape[0] // len(SEVERITIES)
    for c in CIFAR_CORRUPTIONS:
        path = folder / f"{c}.npy"
        shape, dtype = npy_header(path, release, root)
        if shape != (5 * n, 32, 32, 3) or dtype != np.uint8:
            raise DatasetError(path, f"expected uint8 {(5 * n, 32, 32, 3)}, got {dtype} {shape}")
    return n


def cifar_c(release: str, folder: Path, root: Path) -> CorruptionSet:
    """CIFAR-10-C / CIFAR-100-C as a ``CorruptionSet``; nothing is read until ``load``.

    ``load(c, s, max_samples)`` maps ``<c>.npy`` (``np.load(mmap_mode="r")``), reads rows
    ``[(s-1) n, (s-1) n + k)`` with ``n = rows / 5`` and ``k = min(max_samples, n)``, and returns
    uint8 ``(k, 3, 32, 32)`` (HWC transposed to CHW) and int64 labels. Cost: k * 3 KiB read.
    """

    def load(corruption: str, severity: int, max_samples: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        _check_severity(corruption, severity, CIFAR_CORRUPTIONS)
        n = check_cifar_c_file(folder, corruption, release, root)
        k = n if max_samples is None else min(max_samples, n)
        lo = (severity - 1) * n
        x = np.load(folder / f"{corruption}.npy", mmap_mode="r")[lo:lo + k]
        y = np.load(folder / "labels.npy", mmap_mode="r")[lo:lo + k]
        x = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
        return x, torch.from_numpy(np.asarray(y, dtype=np.int64))

    return CorruptionSet(
        name=release,
        items=tuple((c, s) for c in CIFAR_CORRUPTIONS for s in SEVERITIES),
        load=load,
    )


def check_cifar_c_file(folder: Path, corruption: str, release: str, root: Path) -> int:
    """Header check of one corruption file and ``labels.npy``; returns images per severity."""
    shape, _ = npy_header(folder / "labels.npy", release, root)
    path = folder / f"{corruption}.npy"
    x_shape, dtype = npy_header(path, release, root)
    if len(shape) != 1 or shape[0] % 5 or x_shape != (shape[0], 32, 32, 3) or dtype != np.uint8:
        raise DatasetError(path, f"expected uint8 ({shape[0]}, 32, 32, 3) to match labels.npy "
                                 f"{shape}, got {dtype} {x_shape}")
    return shape[0] // 5


def check_tiny_c(release: str, folder: Path, root: Path) -> None:
    """Plan-time check of Tiny-ImageNet-C: every ``<corruption>/<severity>`` folder exists and
    holds class folders (75 directory listings, no decoding)."""
    require_dir(folder, release, root)
    for c in TINY_CORRUPTIONS:
        for s in SEVERITIES:
            d = folder / c / str(s)
            require_dir(d, release, root)
            if not any(p.is_dir() for p in d.iterdir()):
                raise DatasetError(d, "no class folders")


def tiny_c_files(folder: Path, class_index: dict[str, int]) -> tuple[list[Path], np.ndarray]:
    """Image files of one ``<corruption>/<severity>`` folder and their labels, interleaved across
    classes (image 0 of every class in class order, then image 1, ...), so that any prefix, e.g.
    the first ``max_samples``, is class-balanced. Unknown wnid folders raise ``DatasetError``."""
    per_class: list[tuple[int, list[Path]]] = []
    for d in sorted(p for p in folder.iterdir() if p.is_dir()):
        if d.name not in class_index:
            raise DatasetError(d, "class folder is not a Tiny-ImageNet wnid")
        files = sorted(p for p in d.iterdir() if p.suffix.upper() in (".JPEG", ".JPG", ".PNG"))
        per_class.append((class_index[d.name], files))
    per_class.sort()
    paths, labels = [], []
    for j in range(max((len(f) for _, f in per_class), default=0)):
        for label, files in per_class:
            if j < len(files):
                paths.append(files[j])
                labels.append(label)
    return paths, np.asarray(labels, dtype=np.int64)


def tiny_c(release: str, folder: Path, root: Path, class_index: dict[str, int]) -> CorruptionSet:
    """Tiny-ImageNet-C as a ``CorruptionSet``. ``load(c, s, max_samples)`` decodes the 10,000
    JPEGs of ``<c>/<s>`` once (~5 s on a few cores) and caches them (see ``files.cache_dir``), keyed
    by the mtimes of its class folders (``files.sources_key``); later loads map one 120 MiB array.
    Returns uint8 ``(k, 3, 64, 64)`` and int64 labels in the interleaved order of ``tiny_c_files``.
    """

    def load(corruption: str, severity: int, max_samples: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        _check_severity(corruption, severity, TINY_CORRUPTIONS)
        d = require_dir(folder / corruption / str(severity), release, root)
        key = sources_key([d, *sorted(p for p in d.iterdir() if p.is_dir())], folder)

        def build() -> dict[str, np.ndarray]:
            paths, labels = tiny_c_files(d, class_index)
            if not paths:
                raise DatasetError(d, "no images")
            return {"x": decode_images(paths, 64).transpose(0, 3, 1, 2).copy(), "y": labels}

        arrays = cached_arrays(cache_dir(root), f"tinyimagenet-c-{corruption}-{severity}", key, build)
        n = len(arrays["y"])
        k = n if max_samples is None else min(max_samples, n)
        return torch.from_numpy(np.array(arrays["x"][:k])), torch.from_numpy(arrays["y"][:k].astype(np.int64))

    return CorruptionSet(
        name=release,
        items=tuple((c, s) for c in TINY_CORRUPTIONS for s in SEVERITIES),
        load=load,
    )
