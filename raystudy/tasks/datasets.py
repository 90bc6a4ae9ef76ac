"""The image datasets of family C as data: what each task is, which releases it reads, and the
cheap checks the planner runs before any trial starts.

``describe(name)`` needs no files; ``check_available(name, data_root, corruptions)`` looks at
file existence, sizes and headers only (no hashing, no decoding) and raises ``DatasetError``.
Releases are the units ``python -m raystudy.data`` fetches: ``RELEASES`` maps each to its folder
under the data root and its layout check.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import cifar, corruptions, tinyimagenet
from .files import DatasetError, resolve_root


@dataclass(frozen=True)
class ImageDataset:
    """One image task: its input shape ``(C, H, W)``, number of classes, the release it loads, its
    -C release (None when there is none), its training-set size (for cost estimates), and whether its
    loader generates a corruption set in memory instead (digits-c: no files to check)."""

    name: str
    in_shape: tuple[int, int, int]
    out_dim: int
    release: str | None
    corruptions_release: str | None
    n_train: int
    generated_corruptions: bool = False


DATASETS: dict[str, ImageDataset] = {
    # Ships with scikit-learn (75% split); digits-c is made from its test split (tasks.digits_c).
    "digits": ImageDataset("digits", (1, 8, 8), 10, None, None, 1347, generated_corruptions=True),
    "cifar10": ImageDataset("cifar10", cifar.IN_SHAPE, 10, "cifar10", "cifar10-c", 50_000),
    "cifar100": ImageDataset("cifar100", cifar.IN_SHAPE, 100, "cifar100", "cifar100-c", 50_000),
    "tinyimagenet": ImageDataset("tinyimagenet", tinyimagenet.IN_SHAPE, tinyimagenet.N_CLASSES,
                                 "tinyimagenet", "tinyimagenet-c", 100_000),
}


@dataclass(frozen=True)
class ReleaseLayout:
    """Where a release lives under the data root and how to check it cheaply (``check(root)``
    raises ``DatasetError``)."""

    name: str
    folder: str
    check: Callable[[Path], object]


def _tiny_c(root: Path) -> None:
    corruptions.check_tiny_c("tinyimagenet-c", root / tinyimagenet.C_FOLDER, root)


RELEASES: dict[str, ReleaseLayout] = {
    "cifar10": ReleaseLayout("cifar10", cifar.RELEASES["cifar10"].folder,
                             lambda root: cifar.check_files("cifar10", root)),
    "cifar100": ReleaseLayout("cifar100", cifar.RELEASES["cifar100"].folder,
                              lambda root: cifar.check_files("cifar100", root)),
    "tinyimagenet": ReleaseLayout("tinyimagenet", tinyimagenet.FOLDER, tinyimagenet.check_files),
    "cifar10-c": ReleaseLayout("cifar10-c", "CIFAR-10-C", lambda root: corruptions.check_cifar_c(
        "cifar10-c", root / "CIFAR-10-C", root)),
    "cifar100-c": ReleaseLayout("cifar100-c", "CIFAR-100-C", lambda root: corruptions.check_cifar_c(
        "cifar100-c", root / "CIFAR-100-C", root)),
    "tinyimagenet-c": ReleaseLayout("tinyimagenet-c", tinyimagenet.C_FOLDER, _tiny_c),
}


def _dataset(name: str) -> ImageDataset:
    if name not in DATASETS:
        raise KeyError(f"unknown images task {name!r}; known: {', '.join(DATASETS)}")
    return DATASETS[name]


def describe(name: str) -> tuple[tuple[int, int, int], int]:
    """``(in_shape, out_dim)`` of images task ``name`` without touching any file (for the
    planner's model/task fit check). ``KeyError`` listing the known names if unknown."""
    ds = _dataset(name)
    return ds.in_shape, ds.out_dim


def check_release(release: str, data_root: str | None = None) -> Path:
    """Cheap layout check of one release under the data root; returns its folder, or raises
    ``DatasetError`` (one line naming the first bad path and, if missing, the fetch command)."""
    if release not in RELEASES:
        raise KeyError(f"unknown dataset release {release!r}; known: {', '.join(RELEASES)}")
    layout = RELEASES[release]
    root = resolve_root(data_root)
    layout.check(root)
    return root / layout.folder


def check_available(name: str, data_root: str | None = None, corruptions: bool = False) -> Path | None:
    """Plan-time check that images task ``name`` can load from ``data_root`` (None ->
    ``$RAYSTUDY_DATA`` -> ``~/.cache/raystudy/data``), and with ``corruptions=True`` that its -C
    release is there too (call it so when a study asks for the ``corruption`` metric).

    Looks at existence, sizes and headers only: milliseconds for CIFAR, ~200 ``stat`` calls for
    Tiny-ImageNet. Returns the release folder (None for ``digits``, which needs no files). Raises
    ``DatasetError`` naming the path, e.g. ``/data/cifar-10-batches-py/data_batch_3: missing; run:
    python -m raystudy.data fetch cifar10 --root /data``; ``KeyError`` for an unknown name;
    ``ValueError`` when ``corruptions`` is asked of a task without a -C set. A generated set
    (digits-c) needs no check.
    """
    ds = _dataset(name)
    folder = check_release(ds.release, data_root) if ds.release else None
    if corruptions and not ds.generated_corruptions:
        if ds.corruptions_release is None:
            raise ValueError(f"images task {name!r} has no corruption (-C) test set")
        check_release(ds.corruptions_release, data_root)
    return folder


__all__ = ["DATASETS", "RELEASES", "DatasetError", "check_available", "check_release", "describe"]
