"""What is learned: the task registry.

``load_task(family, name, seed=..., **params)`` returns a materialised :class:`Task`. Families:
``functions`` (family A, seven 2-D regression targets), ``circles`` (family B), ``images``
(family C; ``digits`` is the offline stand-in).
"""
from __future__ import annotations

from typing import Any, Callable

from . import circles, digits, functions
from .base import Task, apply_label_noise, batches, derive_seed
from .functions import FUNCTIONS, target_complexity

FAMILIES: tuple[str, ...] = ("functions", "circles", "images")

# family -> task name -> loader(name, *, seed, **params)
_LOADERS: dict[str, dict[str, Callable[..., Task]]] = {
    "functions": {name: functions.load for name in FUNCTIONS},
    "circles": {name: circles.load for name in circles.NAMES},
    "images": {name: digits.load for name in digits.NAMES},
}


def list_tasks(family: str) -> list[str]:
    """Names of the tasks in ``family`` (``KeyError`` listing the families if unknown)."""
    if family not in _LOADERS:
        raise KeyError(f"unknown task family {family!r}; known: {', '.join(FAMILIES)}")
    return list(_LOADERS[family])


def load_task(family: str, name: str, *, seed: int, **params: Any) -> Task:
    """Build task ``name`` of ``family`` for trial ``seed`` with family-specific ``params``.

    ``functions``: ``n_train``, ``n_test`` (the points depend on ``seed``).
    ``circles``: ``factor``, ``label_noise``, ``data_seed``, ``n_samples`` (``seed`` ignored).
    ``images``/``digits``: ``label_noise``, ``data_seed`` (``seed`` ignored).
    Unknown family or name -> ``KeyError`` listing the known ones; unknown params -> ``TypeError``;
    out-of-range values -> ``ValueError``.
    """
    names = list_tasks(family)
    if name not in names:
        raise KeyError(f"unknown {family} task {name!r}; known: {', '.join(names)}")
    return _LOADERS[family][name](name, seed=seed, **params)


__all__ = [
    "FAMILIES",
    "FUNCTIONS",
    "Task",
    "apply_label_noise",
    "batches",
    "derive_seed",
    "list_tasks",
    "load_task",
    "target_complexity",
]
