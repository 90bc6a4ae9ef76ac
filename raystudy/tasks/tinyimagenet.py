"""Family C: Tiny-ImageNet-200 (64x64, 200 classes) from its release, ``tiny-imagenet-200.zip``::

    <root>/tiny-imagenet-200/wnids.txt                       the 200 wnids, one a line
    <root>/tiny-imagenet-200/words.txt                       wnid <tab> names (not needed here)
    <root>/tiny-imagenet-200/train/<wnid>/images/<wnid>_<i>.JPEG     500 per class
    <root>/tiny-imagenet-200/train/<wnid>/<wnid>_boxes.txt   (not needed here)
    <root>/tiny-imagenet-200/val/images/val_<i>.JPEG         10,000
    <root>/tiny-imagenet-200/val/val_annotations.txt         file <tab> wnid <tab> box (4 ints)
    <root>/tiny-imagenet-200/test/images/                    unlabelled: not used

The validation split is the test set (docs/PROTOCOL.md). Class index = position of the wnid in the
*sorted* wnid list, as torchvision's ``ImageFolder`` over ``train/`` assigns it (and as released
Tiny-ImageNet checkpoints expect). Some images are greyscale JPEGs; they are converted to RGB.

The 110,000 JPEGs are decoded once and cached as uint8 arrays (``files.cache_dir``:
``<root>/.raystudy/decoded/tinyimagenet@<key>/``, or under ``~/.cache/raystudy/decoded/`` when
the root is read-only), keyed by the names, sizes and mtimes of the index files and of the image
folders (``files.sources_key``; delete the cache folder after editing an image in place).
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from . import corruptions
from .base import Task, apply_label_noise
from .files import (
    DatasetError, cache_dir, cached_arrays, decode_images, require_dir, require_file, resolve_root,
    sources_key,
)

NAMES = ("tinyimagenet",)
FOLDER = "tiny-imagenet-200"
N_CLASSES = 200
SIZE = 64
IN_SHAPE = (3, SIZE, SIZE)
AUGMENT = "rrc64+flip"  # docs/PROTOCOL.md: random resized crop 64 + horizontal flip
# ImageNet channel statistics in pixel units: torchvision's (0.485, 0.456, 0.406) and
# (0.229, 0.224, 0.225) (the normalisation of its ImageNet-pretrained weights) times 255. The
# ImageNet-pretrained ResNet-18/VGG-19-BN variants of docs/PROTOCOL.md need exactly these.
MEAN = (123.675, 116.28, 103.53)
STD = (58.395, 57.12, 57.375)
PAD_FILL = 128.0
C_RELEASE, C_FOLDER = "tinyimagenet-c", "Tiny-ImageNet-C"
_INDEX = re.compile(r"_(\d+)$")


def read_wnids(folder: Path, root: Path) -> list[str]:
    """The release's wnids, sorted: class ``k`` is ``sorted_wnids[k]``. Raises ``DatasetError``
    unless ``wnids.txt`` lists 200 distinct ids."""
    path = folder / "wnids.txt"
    require_file(path, NAMES[0], root)
    wnids = [w.strip() for w in path.read_text().splitlines() if w.strip()]
    if len(wnids) != N_CLASSES or len(set(wnids)) != N_CLASSES:
        raise DatasetError(path, f"expected {N_CLASSES} distinct wnids, found {len(set(wnids))}")
    return sorted(wnids)


def _by_index(p: Path) -> tuple[int, str]:
    m = _INDEX.search(p.stem)
    return (int(m.group(1)) if m else -1, p.name)


def train_files(folder: Path, wnids: list[str], root: Path) -> tuple[list[Path], np.ndarray]:
    """Training images and labels, interleaved across classes (``<wnid>_0`` of every class in class
    order, then ``<wnid>_1``, ...), so that any prefix (e.g. the first ``max_samples`` rows a
    geometry metric sees) is class-balanced. Cost: 200 directory listings."""
    per_class = []
    for wnid in wnids:
        d = require_dir(folder / "train" / wnid / "images", NAMES[0], root)
        files = sorted((p for p in d.iterdir() if p.suffix.upper() == ".JPEG"), key=_by_index)
        if not files:
            raise DatasetError(d, "no JPEG images")
        per_class.append(files)
    paths, labels = [], []
    for j in range(max(len(f) for f in per_class)):
        for k, files in enumerate(per_class):
            if j < len(files):
                paths.append(files[j])
                labels.append(k)
    return paths, np.asarray(labels, dtype=np.int64)


def val_files(folder: Path, wnids: list[str], root: Path) -> tuple[list[Path], np.ndarray]:
    """Validation images (the test set) and labels in ``val_annotations.txt`` order."""
    path = folder / "val" / "val_annotations.txt"
    require_file(path, NAMES[0], root)
    index = {w: k for k, w in enumerate(wnids)}
    paths, labels = [], []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2 or fields[1] not in index:
            raise DatasetError(path, f"line {n}: expected 'file<TAB>wnid<TAB>box', with a known wnid")
        paths.append(folder / "val" / "images" / fields[0])
        labels.append(index[fields[1]])
    if not paths:
        raise DatasetError(path, "no annotations")
    return paths, np.asarray(labels, dtype=np.int64)


def check_files(root: Path) -> Path:
    """Cheap plan-time check: wnids, one ``train/<wnid>/images`` folder per class, the validation
    annotations and images folder (no listing of the 110,000 files, no decoding)."""
    folder = require_dir(root / FOLDER, NAMES[0], root)
    for wnid in read_wnids(folder, root):
        require_dir(folder / "train" / wnid / "images", NAMES[0], root)
    require_file(folder / "val" / "val_annotations.txt", NAMES[0], root)
    require_dir(folder / "val" / "images", NAMES[0], root)
    return folder


def decoded(folder: Path, root: Path, wnids: list[str]) -> dict[str, np.ndarray]:
    """``x_train, y_train, x_test, y_test`` as uint8 ``(N, 3, 64, 64)`` / int64, from the cache or
    decoded now (~110,000 JPEG decodes: about a minute on a few cores, once per data root). The
    cache key covers ``wnids.txt``, ``val_annotations.txt`` and the 201 image folders
    (``files.sources_key``), so a hit costs ~200 ``stat`` calls and maps 1.3 GB of arrays."""
    key = sources_key([folder / "wnids.txt", folder / "val" / "val_annotations.txt", folder / "val" / "images",
                       *(folder / "train" / w / "images" for w in wnids)], folder)

    def build() -> dict[str, np.ndarray]:
        tr_paths, y_tr = train_files(folder, wnids, root)
        te_paths, y_te = val_files(folder, wnids, root)
        chw = lambda a: np.ascontiguousarray(a.transpose(0, 3, 1, 2))  # noqa: E731
        return {"x_train": chw(decode_images(tr_paths, SIZE)), "y_train": y_tr,
                "x_test": chw(decode_images(te_paths, SIZE)), "y_test": y_te}

    return cached_arrays(cache_dir(root), "tinyimagenet", key, build)


def load(
    name: str = "tinyimagenet", *, seed: int, data_root: str | None = None, label_noise: float = 0.0,
    data_seed: int = 0,
) -> Task:
    """Tiny-ImageNet as raw uint8 pixels ``(N, 3, 64, 64)`` (100,000 train, 10,000 test = the
    validation split), labels int64 in [0, 200).

    ``data_root``: None -> ``$RAYSTUDY_DATA`` -> ``~/.cache/raystudy/data``. ``label_noise`` p
    replaces each *training* label with a uniformly random class with probability p, seeded by
    ``data_seed``; ``seed`` is ignored (the split is fixed). ``corruptions`` is Tiny-ImageNet-C when
    ``<root>/Tiny-ImageNet-C`` exists, else None. Cost: the first call decodes and caches (see
    ``decoded``); later calls stat ~200 folders and map the cached arrays (read on first use).
    """
    del seed
    if name not in NAMES:
        raise KeyError(f"unknown Tiny-ImageNet task {name!r}; known: {', '.join(NAMES)}")
    root = resolve_root(data_root)
    folder = require_dir(root / FOLDER, name, root)
    wnids = read_wnids(folder, root)
    arrays = decoded(folder, root, wnids)
    y_train, n_changed = apply_label_noise(torch.from_numpy(arrays["y_train"]), label_noise, N_CLASSES,
                                           data_seed)
    c_folder = root / C_FOLDER
    index = {w: k for k, w in enumerate(wnids)}
    return Task(
        name=name,
        family="images",
        kind="classification",
        x_train=torch.from_numpy(arrays["x_train"]),
        y_train=y_train,
        x_test=torch.from_numpy(arrays["x_test"]),
        y_test=torch.from_numpy(arrays["y_test"]),
        in_shape=IN_SHAPE,
        out_dim=N_CLASSES,
        augment_recipe=AUGMENT,
        info={
            "n_train": len(y_train),
            "n_test": len(arrays["y_test"]),
            "label_noise": label_noise,
            "n_labels_changed": n_changed,
            "data_seed": data_seed,
            "data_root": str(root),
            "release": FOLDER,
        },
        mean=MEAN,
        std=STD,
        pad_fill=PAD_FILL,
        corruptions=corruptions.tiny_c(C_RELEASE, c_folder, root, index) if c_folder.is_dir() else None,
    )
