"""Checks that need the model registry and the data root, run once before anything starts.

``load_study`` validates the study file on its own (fast, no torch). ``preflight`` then checks what only
the code can tell: that each model takes its task's input and gives its output (built on torch's meta
device: no memory, no weights, no download), that it fits this node's memory (``bounds.BYTES_PER_PARAM``
per parameter), that each real dataset is present under the data root, and then each listed metric's own
``check`` from the registry (``hessian.top_k`` against the parameter count, the -C release of ``corruption``).
Every problem is a ``StudyError`` naming the file and the field, so ``raystudy.run`` exits 2 before Ray
starts. Cost: one meta-device build per (model, model_args, task shape), ~0.1 s each after importing
timm; a few file ``stat`` calls per dataset.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from raystudy import metrics as registry, models, tasks
from raystudy.study import bounds
from raystudy.study.load import StudyError
from raystudy.study.schema import Study
from raystudy.tasks.datasets import DATASETS


LOGGER_PACKAGES = {"tensorboard": "tensorboardX", "mlflow": "mlflow", "wandb": "wandb"}


def preflight(study: Study, path: str | Path, missing: list[str] | None = None) -> None:
    """Raise ``StudyError`` ("file: blocks[i].field: problem") on the first block that cannot run. With a
    ``missing`` list (``--dry-run``: a plan may come before the download), a dataset release that is not
    under the data root (the task's own, or one a metric's check names) is appended to it by name instead
    of being an error. Per (task, model): the model, its size, the dataset, then the metrics' checks."""
    for name in study.loggers:
        if importlib.util.find_spec(LOGGER_PACKAGES[name]) is None:
            fix = "uv sync --frozen (it comes with ray[tune])" if name == "tensorboard" else \
                f"install the {name} extra: uv sync --frozen --extra {name}"
            raise StudyError(f"{path}: loggers: {name} needs the {LOGGER_PACKAGES[name]} package, which is not "
                             f"installed ({fix})")
    checked: dict[tuple, int] = {}
    for i, block in enumerate(study.blocks):
        where = f"{path}: blocks[{i}]"
        block_tasks = block.task if isinstance(block.task, list) else [block.task]
        block_models = block.model if isinstance(block.model, list) else [block.model]
        hooks = [m for m in map(registry.get_metric, block.metrics) if m.check is not None]
        for task in block_tasks:
            in_shape, out_dim = tasks.task_shape(block.family, task)
            sizes: dict[str, int] = {}
            for model in block_models:
                key = (model, repr(sorted(block.model_args.items())), in_shape, out_dim)
                if key not in checked:
                    checked[key] = _check_model(model, in_shape, out_dim, block.model_args, where, task)
                sizes[model] = checked[key]
                _check_size(model, sizes[model], f"{where}.{'model_args' if block.model_args else 'model'}", task)
            if block.family == "images":
                ds = DATASETS[task]
                try:
                    tasks.check_available(task, block.data_root)
                except tasks.DatasetError as err:
                    if missing is None or ds.release is None:
                        raise StudyError(f"{where}.{'data_root' if block.data_root else 'task'}: {err}") from None
                    missing.append(ds.release)
            for model, n_params in sizes.items():
                for metric in hooks:
                    problem = metric.check(block, task, model, n_params)
                    if problem is None:
                        continue
                    if missing is None or problem.release is None:
                        raise StudyError(f"{where}.{problem.field}: {problem.message}")
                    missing.append(problem.release)


def _check_model(model: str, in_shape: tuple, out_dim: int, model_args: dict, where: str, task: str) -> int:
    """The model's parameter count, after checking it fits the task; StudyError naming the field if not."""
    try:
        return models.check_model(model, in_shape, out_dim, **model_args)
    except (ValueError, TypeError) as err:
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        field = "model_args" if _about_arguments(message, model_args) else "model"
        raise StudyError(f"{where}.{field}: {message} (task {task!r})") from None


def memory_bytes() -> int | None:
    """This node's physical memory in bytes (None where the OS does not say). The driver's node stands
    for the workers': a cluster's nodes are alike, and a model that fits nowhere here fits nowhere."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _check_size(model: str, n_params: int, field: str, task: str) -> None:
    """StudyError naming ``field`` when training ``model`` (``n_params`` parameters, counted on the meta
    device: nothing allocated) needs more than this node's memory at ``bounds.BYTES_PER_PARAM`` bytes per
    parameter (weights, gradients, optimiser state, one working copy), activations not counted."""
    need, have = n_params * bounds.BYTES_PER_PARAM, memory_bytes()
    if have is not None and need > have:
        raise StudyError(f"{field}: {model} has {n_params:,} parameters on task {task!r}: training it needs "
                         f"{need / 2**30:,.1f} GiB ({bounds.BYTES_PER_PARAM} bytes a parameter: weights, "
                         f"gradients, optimiser state, a working copy), more than this node's "
                         f"{have / 2**30:,.1f} GiB of memory")


def _about_arguments(message: str, model_args: dict) -> bool:
    """Whether the builder rejected the block's model_args (an unknown key, a bad value) rather than the
    architecture rejecting the task's input (which check_model reports as a forward or shape failure)."""
    if "has no argument" in message:
        return True
    forward = ("does not go through" in message or "gives outputs" in message or "classifier must be" in message)
    return bool(model_args) and not forward and any(str(k) in message for k in model_args)
