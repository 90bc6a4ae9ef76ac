"""Family B: concentric circles (scikit-learn ``make_circles``), the decision-boundary study.

The data depend only on ``factor``, ``label_noise`` and ``data_seed``; the trial seed varies the
initialisation alone (docs/PROTOCOL.md: 100 seeds, data order fixed).
"""
from __future__ import annotations

import torch

from .base import Task, apply_label_noise

NAMES = ("circles",)


def load(
    name: str = "circles",
    *,
    seed: int,
    factor: float = 0.8,
    label_noise: float = 0.0,
    data_seed: int = 0,
    n_samples: int = 100,
) -> Task:
    """Binary classification on two noise-free circles; first half train, second half test.

    The halves are taken after ``make_circles``' own shuffle (its default, ``random_state=data_seed``):
    unshuffled, it lists the outer circle first, and the first half would hold one class only
    (``data_seed=0``, 100 points: classes 0/1 are 26/24 in train, 24/26 in test).

    ``factor`` is the inner/outer radius ratio (closer to 1 = tighter boundary; default 0.8 is
    scikit-learn's). ``label_noise`` p replaces each *train* label with a uniformly random class
    with probability p (test labels stay clean). ``seed`` is accepted for a uniform signature and
    ignored. Inputs float32 ``(N, 2)``, labels int64 ``(N,)``.
    """
    # sklearn is imported here, not at module level: validating a study file should not pay for it.
    from sklearn.datasets import make_circles
    del seed  # the protocol varies only the initialisation across trial seeds
    if name not in NAMES:
        raise KeyError(f"unknown circles task {name!r}; known: {', '.join(NAMES)}")
    if not 0.0 < factor < 1.0:
        raise ValueError(f"factor must be in (0, 1), got {factor}")
    x, y = make_circles(
        n_samples=n_samples, noise=0.0, factor=factor, shuffle=True, random_state=data_seed
    )
    x = torch.as_tensor(x, dtype=torch.float32)
    y = torch.as_tensor(y, dtype=torch.int64)
    n_train = n_samples // 2
    y_train, n_changed = apply_label_noise(y[:n_train], label_noise, 2, data_seed)
    return Task(
        name=name,
        family="circles",
        kind="classification",
        x_train=x[:n_train],
        y_train=y_train,
        x_test=x[n_train:],
        y_test=y[n_train:],
        in_shape=(2,),
        out_dim=2,
        augment_recipe=None,
        info={
            "n_train": n_train,
            "n_test": n_samples - n_train,
            "factor": factor,
            "label_noise": label_noise,
            "n_labels_changed": n_changed,
            "data_seed": data_seed,
        },
    )
