"""The metric columns of a row: every metric the trial lists (and every ``always`` one) that applies to its
family, in registry order, on which data and with which seed. The metrics themselves are the registry's
(``raystudy.metrics``); this module only builds their context."""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from raystudy import metrics
from raystudy.safety import Evaluation
from raystudy.seeding import derive_seed
from raystudy.trial import Trial
from raystudy.storage import Store
from raystudy.tasks.base import Task

OnDevice = Callable[..., list]  # (x, y) -> un-augmented, normalised batches on the measuring device


def selected(trial: Trial) -> list[metrics.Metric]:
    """The metrics a checkpoint of ``trial`` gets, in registry order: those listed or ``always`` measured,
    that apply to its family."""
    return [m for m in metrics.metrics() if (m.always or m.name in trial.metrics) and trial.family in m.families]


def metric_columns(trial: Trial, task: Task, model: nn.Module, loss_fn, on: OnDevice, *, test: Evaluation,
                   store: Store, epoch: int, device: torch.device) -> dict[str, Any]:
    """Every selected metric on the first ``measure.max_samples`` rows of ``measure.split``, with the
    provenance of that sample. Cost: the metrics' own (see each entry's compute function).

    One estimator seed per trial seed: every regime of a seed sees the same probes, so the paired
    comparisons with base are not blurred by probe noise."""
    x, y = (task.x_train, task.y_train) if trial.measure.split == "train" else (task.x_test, task.y_test)
    n = min(len(x), trial.measure.max_samples or len(x))
    seed = derive_seed("estimators", trial.seed)
    out: dict[str, Any] = {"measured_on": trial.measure.split, "measure_n": n, "estimator_seed": seed}
    ctx = metrics.Context(trial=trial, task=task, model=model, loss_fn=loss_fn, data=on(x[:n], y[:n]), x=x[:n],
                          y=y[:n], on=on, seed=seed, device=device, store=store, epoch=epoch, test=test)
    for metric in selected(trial):
        ctx.settings = metrics.trial_settings(trial, metric)
        values = metric.compute(ctx)
        allowed = {c.name for c in metric.columns if c.measured}
        if not set(values) <= allowed:  # a column outside the entry would be dropped by the schema, silently
            raise RuntimeError(f"metric {metric.name!r} returned undeclared columns {sorted(set(values) - allowed)}")
        out.update(values)
    return out
