"""What is learned: the task registry.

``load_task(family, name, seed=..., **params)`` returns a materialised :class:`Task`. Families:
``functions`` (family A, seven 2-D regression targets), ``circles`` (family B), ``images``
(family C: ``cifar10``, ``cifar100``, ``tinyimagenet`` read from a data root, and ``digits``, the
offline stand-in). ``describe`` and ``check_available`` answer plan-time questions about the image
datasets without loading them; ``python -m raystudy.data`` fetches and verifies their releases.
"""
from __future__ import annotations

from typing import Any, Callable

from . import cifar, circles, digits, functions, tinyimagenet
from .base import CorruptionSet, Task, apply_label_noise, batches, derive_seed
from .datasets import check_available, describe
from .files import DatasetError, resolve_root
from .functions import FUNCTIONS, target_complexity, target_shape_complexity

FAMILIES: tuple[str, ...] = ("functions", "circles", "images")

# family -> task name -> loader(name, *, seed, **params)
_LOADERS: dict[str, dict[str, Callable[..., Task]]] = {
    "functions": {name: functions.load for name in FUNCTIONS},
    "circles": {name: circles.load for name in circles.NAMES},
    "images": {
        **{name: digits.load for name in digits.NAMES},
        **{name: cifar.load for name in cifar.NAMES},
        **{name: tinyimagenet.load for name in tinyimagenet.NAMES},
    },
}


def list_tasks(family: str) -> list[str]:
    """Names of the tasks in ``family`` (``KeyError`` listing the families if unknown)."""
    if family not in _LOADERS:
        raise KeyError(f"unknown task family {family!r}; known: {', '.join(FAMILIES)}")
    return list(_LOADERS[family])


def task_shape(family: str, name: str) -> tuple[tuple[int, ...], int]:
    """``(in_shape, out_dim)`` of a task without loading it or touching a file (plan-time checks)."""
    if name not in list_tasks(family):
        raise KeyError(f"unknown {family} task {name!r}; known: {', '.join(list_tasks(family))}")
    if family == "functions":
        return (2,), 1
    if family == "circles":
        return (2,), 2
    return describe(name)


def reads_files(family: str, name: str) -> bool:
    """Whether task ``name`` reads dataset files from a data root (CIFAR, TinyImageNet); the functions,
    circles and the bundled digits are generated or shipped in memory, so a data root means nothing to them."""
    return family == "images" and name in (*cifar.NAMES, *tinyimagenet.NAMES)


def train_size(family: str, name: str, n_train: int | None = None) -> int:
    """Training-set size of a task without loading it (cost estimates): the block's ``n_train`` for
    functions (default 10,000), 50 for circles (half of make_circles' 100), the release's for images."""
    task_shape(family, name)  # KeyError for an unknown task
    if family == "functions":
        return n_train or 10_000
    if family == "circles":
        return 50
    from .datasets import DATASETS
    return DATASETS[name].n_train


def load_task(family: str, name: str, *, seed: int, **params: Any) -> Task:
    """Build task ``name`` of ``family`` for trial ``seed`` with family-specific ``params``.

    ``functions``: ``n_train``, ``n_test`` (the points depend on ``seed``), ``target_scale`` (targets
    are ``target_scale * f``; default 1, the protocol's).
    ``circles``: ``factor``, ``label_noise``, ``data_seed``, ``n_samples`` (``seed`` ignored).
    ``images``/``digits``: ``label_noise``, ``data_seed`` (``seed`` and ``data_root`` ignored).
    ``images``/``cifar10``, ``cifar100``, ``tinyimagenet``: ``data_root`` (None ->
    ``$RAYSTUDY_DATA`` -> ``~/.cache/raystudy/data``), ``label_noise``, ``data_seed`` (``seed``
    ignored: the split is the release's).
    Unknown family or name -> ``KeyError`` listing the known ones; unknown params -> ``TypeError``;
    out-of-range values -> ``ValueError``; missing or malformed dataset files -> ``DatasetError``
    (a ``ValueError`` whose message is one line naming the file).
    """
    names = list_tasks(family)
    if name not in names:
        raise KeyError(f"unknown {family} task {name!r}; known: {', '.join(names)}")
    return _LOADERS[family][name](name, seed=seed, **params)


__all__ = [
    "FAMILIES",
    "FUNCTIONS",
    "CorruptionSet",
    "DatasetError",
    "Task",
    "apply_label_noise",
    "batches",
    "check_available",
    "derive_seed",
    "describe",
    "list_tasks",
    "load_task",
    "reads_files",
    "task_shape",
    "train_size",
    "resolve_root",
    "target_complexity",
    "target_shape_complexity",
]
