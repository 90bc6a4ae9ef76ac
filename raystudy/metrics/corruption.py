"""Corruption robustness: accuracy on every corruption x severity of the task's -C set (images only)."""
from __future__ import annotations

from typing import Any

import polars as pl
from pydantic import Field

from raystudy.metrics.registry import Column, Context, Metric, Problem, Settings, register_metric

CORRUPTION_ACC = pl.Struct({"corruption": pl.String, "severity": pl.Int64, "acc": pl.Float64, "n": pl.Int64})


class Corruption(Settings):
    """The ``corruption`` metric: accuracy on every corruption x severity of the task's -C set, each on its
    first ``max_samples`` images (None = all: 10,000 for CIFAR-10-C, 450 for digits-c)."""
    max_samples: int | None = Field(None, ge=1)


def compute(ctx: Context) -> dict[str, Any]:
    """Cost: one eval pass per (corruption, severity) set (95 for CIFAR-10-C)."""
    from raystudy.measure.safety import corruption_columns
    return corruption_columns(ctx.task, ctx.model, ctx.loss_fn, ctx.on, ctx.settings.max_samples)


def check(block: Any, task: str, model: str, n_params: int) -> Problem | None:
    """Preflight: the task's -C release is under the block's data root (a generated set such as digits-c needs
    no files). A release that is only not downloaded yet carries its name, for ``--dry-run`` to list. Cost: a
    few file stats."""
    from raystudy import tasks
    from raystudy.tasks.datasets import DATASETS
    try:
        tasks.check_available(task, block.data_root, corruptions=True)
    except ValueError as err:  # DatasetError, or a task that has no -C release at all
        release = DATASETS[task].corruptions_release if isinstance(err, tasks.DatasetError) else None
        return Problem("metrics", f"corruption: {err}", release=release or None)
    return None


register_metric(Metric(
    name="corruption", families=("images",), settings=Corruption, settings_key="corruption", compute=compute,
    check=check,
    requires="an images task with a corruption set",
    columns=(
        Column("corruption_acc", pl.Float64, "safety",
               "mean accuracy over every corruption x severity of the task's -C set", label="corruption accuracy"),
        Column("corruption_acc_by", pl.List(CORRUPTION_ACC), "safety",
               "accuracy on each corruption x severity: corruption, severity, acc, n (images)"),
        Column("corruption_set", pl.String, "provenance",
               "the corruption set behind corruption_acc, with its generator's version if made in memory "
               "(cifar10-c, digits-c-v1); null when not measured"),
    )))
