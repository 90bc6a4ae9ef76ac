"""Family C, offline stand-in: scikit-learn's bundled 8x8 digits (1,797 images, 10 classes).

No download: the data ship inside scikit-learn. The train/test split is fixed (random_state 0,
stratified) whatever the trial seed, so every trial of a study sees the same split. Its corruption
set, digits-c, is generated from the test split in memory (``digits_c``).
"""
from __future__ import annotations

import torch

from .base import Task, apply_label_noise
from .digits_c import digits_c

NAMES = ("digits",)


def load(
    name: str = "digits", *, seed: int, label_noise: float = 0.0, data_seed: int = 0,
    data_root: str | None = None,
) -> Task:
    """Digits as images: inputs float32 ``(N, 1, 8, 8)`` in [0, 1] (pixel / 16), labels int64.

    75/25 stratified split with ``random_state=0``. ``label_noise`` p replaces each train label with
    a uniformly random class with probability p, seeded by ``data_seed`` (test labels stay clean).
    Augmentation recipe ``"shift1"``: 1-pixel random shifts; no flips (digits are not
    mirror-symmetric). ``corruptions``: digits-c (``digits_c``: 11 corruptions x 5 severities of
    the test images, made on demand). ``seed`` and ``data_root`` are accepted for the signature every images
    loader shares and ignored (the data ship with scikit-learn).
    """
    # sklearn is imported here, not at module level: validating a study file should not pay for it.
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    del seed, data_root  # the split is fixed by the protocol; only initialisation varies across seeds
    if name not in NAMES:
        raise KeyError(f"unknown images task {name!r}; known: {', '.join(NAMES)}")
    bunch = load_digits()
    x = bunch.images.astype("float32") / 16.0
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, bunch.target, test_size=0.25, random_state=0, stratify=bunch.target
    )
    y_train = torch.as_tensor(y_tr, dtype=torch.int64)
    y_train, n_changed = apply_label_noise(y_train, label_noise, 10, data_seed)
    x_test, y_test = torch.as_tensor(x_te)[:, None], torch.as_tensor(y_te, dtype=torch.int64)
    return Task(
        name=name,
        family="images",
        kind="classification",
        x_train=torch.as_tensor(x_tr)[:, None],
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        in_shape=(1, 8, 8),
        out_dim=10,
        augment_recipe="shift1",
        corruptions=digits_c(x_test, y_test),
        info={
            "n_train": len(y_tr),
            "n_test": len(y_te),
            "label_noise": label_noise,
            "n_labels_changed": n_changed,
            "data_seed": data_seed,
            "split_seed": 0,
        },
    )
