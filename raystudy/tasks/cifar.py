"""Family C: CIFAR-10 and CIFAR-100 from their Python releases, read as torchvision reads them.

On disk (as extracted from ``cifar-10-python.tar.gz`` / ``cifar-100-python.tar.gz``)::

    <root>/cifar-10-batches-py/data_batch_1 .. data_batch_5, test_batch, batches.meta
    <root>/cifar-100-python/train, test, meta

Each batch is a pickled dict: ``data`` a uint8 array (N, 3072), each row an image stored
channel-major (the 1024 red values row by row, then green, then blue, of a 32x32 image), and
``labels`` (CIFAR-10) or ``fine_labels`` (CIFAR-100) a list of N ints. The releases were pickled by
Python 2, so keys come back as ``bytes`` under ``encoding="bytes"`` and as ``str`` under
``encoding="latin1"`` (torchvision's choice, which also decodes the arrays correctly); both are
accepted. Training data is the batches in order (data_batch_1..5 / train); the test set is
``test_batch`` / ``test``. No file is re-hashed here (``python -m raystudy.data check --verify``).
"""
from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import corruptions
from .base import Task, apply_label_noise
from .files import DatasetError, check_pickle, require_dir, resolve_root

NAMES = ("cifar10", "cifar100")
IN_SHAPE = (3, 32, 32)
AUGMENT = "crop4+flip"  # docs/PROTOCOL.md: random crop 32 with 4-pixel padding + horizontal flip
PAD_FILL = 128.0  # docs/PROTOCOL.md: the authors pad CIFAR crops with grey 128 in pixel space


@dataclass(frozen=True)
class CifarRelease:
    folder: str
    train_files: tuple[str, ...]
    test_file: str
    meta_file: str
    label_key: str
    n_classes: int
    # Per-channel training-set statistics in pixel units (0-255), as published in the code of
    # Zagoruyko & Komodakis' wide-resnet and Hendrycks' robustness/outlier-exposure repositories:
    # mean = [x / 255 for x in [125.3, 123.0, 113.9]], std = [x / 255 for x in [63.0, 62.1, 66.7]]
    # (CIFAR-10) and [129.3, 124.1, 112.4] / [68.2, 65.4, 70.4] (CIFAR-100).
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    corruptions_release: str
    corruptions_folder: str


RELEASES = {
    "cifar10": CifarRelease(
        "cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch",
        "batches.meta", "labels", 10, (125.3, 123.0, 113.9), (63.0, 62.1, 66.7),
        "cifar10-c", "CIFAR-10-C"),
    "cifar100": CifarRelease(
        "cifar-100-python", ("train",), "test", "meta", "fine_labels", 100,
        (129.3, 124.1, 112.4), (68.2, 65.4, 70.4), "cifar100-c", "CIFAR-100-C"),
}


class _ArraysOnly(pickle.Unpickler):
    """Unpickles dicts, lists, strings, numbers and numpy arrays, nothing else: a data root may be
    shared, and a pickle can otherwise run arbitrary code when loaded."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        # Protocol 5 (pickle.HIGHEST_PROTOCOL; the default from Python 3.14) stores an array as its raw buffer.
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def read_pickle(path: Path) -> dict[str, object]:
    """One release pickle as a dict with ``str`` keys (``DatasetError`` if it does not unpickle)."""
    try:
        with open(path, "rb") as f:
            entry = _ArraysOnly(f, encoding="latin1").load()
    except Exception as exc:  # a damaged pickle can fail in many ways; all are one line here
        raise DatasetError(path, f"cannot read pickle ({type(exc).__name__}: {exc})") from None
    if not isinstance(entry, dict):
        raise DatasetError(path, f"expected a pickled dict, got {type(entry).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in entry.items()}


def read_batch(path: Path, label_key: str, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Images ``(N, 3, 32, 32)`` uint8 and labels ``(N,)`` int64 of one batch file.

    Row ``k`` of ``data`` holds channel ``k // 1024``, row ``(k % 1024) // 32``, column ``k % 32``,
    so a C-order reshape to (N, 3, 32, 32) is exact (torchvision reshapes the same way, then
    transposes to HWC for PIL; we keep CHW, the model's layout)."""
    entry = read_pickle(path)
    for key in ("data", label_key):
        if key not in entry:
            raise DatasetError(path, f"no {key!r} entry (keys: {', '.join(map(str, entry))})")
    data = entry["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        shape = getattr(data, "shape", None)
        raise DatasetError(path, f"'data' must be a uint8 array (N, 3072), got {type(data).__name__} {shape}")
    labels = np.asarray(entry[label_key], dtype=np.int64)
    if labels.shape != (len(data),):
        raise DatasetError(path, f"{len(data)} images but {labels.size} {label_key}")
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        raise DatasetError(path, f"{label_key} outside [0, {n_classes})")
    return data.reshape(-1, *IN_SHAPE), labels


def check_files(name: str, root: Path) -> Path:
    """Cheap plan-time check of a CIFAR release under ``root`` (existence and pickle framing of
    every file; no unpickling). Returns the release folder; raises ``DatasetError``."""
    rel = RELEASES[name]
    folder = require_dir(root / rel.folder, name, root)
    for f in (*rel.train_files, rel.test_file, rel.meta_file):
        check_pickle(folder / f, name, root)
    return folder


def load(
    name: str, *, seed: int, data_root: str | None = None, label_noise: float = 0.0, data_seed: int = 0
) -> Task:
    """CIFAR-10 or CIFAR-100 as raw uint8 pixels ``(N, 3, 32, 32)``, labels int64 (fine labels for
    CIFAR-100), the official 50,000/10,000 split in release order.

    ``data_root``: None -> ``$RAYSTUDY_DATA`` -> ``~/.cache/raystudy/data``. ``label_noise`` p
    replaces each *training* label with a uniformly random class with probability p, seeded by
    ``data_seed``. ``seed`` is accepted for a uniform signature and ignored (the split is fixed).
    ``corruptions`` is the CIFAR-10-C / CIFAR-100-C set when ``<root>/CIFAR-10(0)-C`` exists
    (read lazily), else None. Cost: reads ~180 MB of pickles, ~0.5 s.
    """
    del seed
    if name not in RELEASES:
        raise KeyError(f"unknown CIFAR task {name!r}; known: {', '.join(NAMES)}")
    rel = RELEASES[name]
    root = resolve_root(data_root)
    folder = check_files(name, root)
    parts = [read_batch(folder / f, rel.label_key, rel.n_classes) for f in rel.train_files]
    x_train = np.concatenate([p[0] for p in parts])
    y_train = torch.from_numpy(np.concatenate([p[1] for p in parts]))
    x_test, y_test = read_batch(folder / rel.test_file, rel.label_key, rel.n_classes)
    y_train, n_changed = apply_label_noise(y_train, label_noise, rel.n_classes, data_seed)
    c_folder = root / rel.corruptions_folder
    return Task(
        name=name,
        family="images",
        kind="classification",
        x_train=torch.from_numpy(x_train),
        y_train=y_train,
        x_test=torch.from_numpy(np.ascontiguousarray(x_test)),
        y_test=torch.from_numpy(y_test),
        in_shape=IN_SHAPE,
        out_dim=rel.n_classes,
        augment_recipe=AUGMENT,
        info={
            "n_train": len(x_train),
            "n_test": len(x_test),
            "label_noise": label_noise,
            "n_labels_changed": n_changed,
            "data_seed": data_seed,
            "data_root": str(root),
            "release": rel.folder,
        },
        mean=rel.mean,
        std=rel.std,
        pad_fill=PAD_FILL,
        corruptions=(corruptions.cifar_c(rel.corruptions_release, c_folder, root)
                     if c_folder.is_dir() else None),
    )
