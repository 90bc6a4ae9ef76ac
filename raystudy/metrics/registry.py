"""A timm-style metric registry: one :class:`Metric` entry per metric, ``register_metric``, ``get_metric``,
``list_metrics``.

An entry says everything the rest of raystudy needs to know about a metric: its name (what a study lists
under ``metrics:``), its settings (a pydantic model, validated where the study file is read, under the
block key ``settings_key``), the families it applies to, its result columns (type, group, label, one-line
definition), its compute function ``(ctx) -> {column: value}`` and an optional preflight ``check``. Study
validation, preflight, the measuring dispatch, the row schema, the report's labels and the sharpness sets of
the analysis are read from here, so adding a metric is one file in this package plus one import line in its
``__init__``.

This module imports only pydantic and polars: the schema, the study and the CLI read the registry without
loading torch. Compute functions import their numerical code (``raystudy.geometry``, ``raystudy.safety``)
when they run.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Callable

import polars as pl
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    import torch
    from torch import nn

    from raystudy.safety import Evaluation
    from raystudy.storage import Store
    from raystudy.tasks.base import Task

FAMILIES = ("functions", "circles", "images")
CLASSIFICATION = ("circles", "images")  # the families whose tasks are classifiers


class Settings(BaseModel):
    """Base of every metric's settings. Strict like the rest of the study file: ``draws: true`` is not 1,
    ``"0.1"`` is not 0.1 (ints pass as floats), no NaN or infinity, unknown keys refused."""
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class SettingError(ValueError):
    """A settings check that names a field inside the settings (``adaptive.m``), not the settings as a whole;
    the study loader's error formatting (``raystudy.study.load``) appends ``loc`` to the location pydantic reports."""

    def __init__(self, field_name: str | tuple[str | int, ...], msg: str):
        super().__init__(msg)
        self.loc = (field_name,) if isinstance(field_name, str) else tuple(field_name)


@dataclass(frozen=True)
class Column:
    """One result column. ``group``: what kind of thing it is (``raystudy.schema.GROUPS``); ``meaning``: one
    line with its unit; ``label``: its name in charts and tables (None: not plotted by name). ``role``:
    ``"sharpness"`` or ``"hessian"`` when it is a scalar curvature metric that the paired tests and the
    correlation analysis compare (larger = sharper); ``verdict``: in the verdicts' default sharpness group
    (a study-file default, so a new metric joins it only by this explicit choice). ``measured``: False when
    the analysis fills it in from stored data rather than the measuring step."""
    name: str
    dtype: pl.DataType
    group: str
    meaning: str
    label: str | None = None
    role: str | None = None
    verdict: bool = False
    measured: bool = True


@dataclass(frozen=True)
class Problem:
    """What a metric's preflight check found wrong with a block: ``field``, the block field to name
    (``hessian.top_k``, ``metrics``), and ``message``, the rest of the one line the user sees. ``release``: a
    dataset release whose absence is the whole problem, which ``--dry-run`` lists to fetch instead of refusing."""
    field: str
    message: str
    release: str | None = None


@dataclass
class Context:
    """What a compute function sees for one checkpoint, already on the measuring device, model in eval mode.

    ``data``: the measured sample, un-augmented ``(inputs, targets)`` batches of ``measure.split``'s first
    ``measure.max_samples`` rows; ``x, y``: the same sample as tensors on the CPU (for metrics that batch it
    otherwise, e.g. the Hessian's own ``max_samples``); ``on(x, y, size=None)``: any tensors as measuring
    batches. ``seed``: the estimator seed (one per trial seed, shared by every regime of it, so paired
    comparisons see the same probes). ``test``: the clean test-set evaluation (outputs included).
    ``settings``: the metric's own validated settings (None for a metric without any)."""
    trial: Any
    task: "Task"
    model: "nn.Module"
    loss_fn: Callable
    data: list
    x: "torch.Tensor"
    y: "torch.Tensor"
    on: Callable[..., list]
    seed: int
    device: "torch.device"
    store: "Store"
    epoch: int
    test: "Evaluation"
    settings: BaseModel | None = None


@dataclass(frozen=True)
class Metric:
    """A registered metric. ``settings``/``settings_key``: its settings model and the block key they live
    under (both None for a metric without settings); ``families``: where a study may list it; ``always``:
    measured on every checkpoint it applies to, listed or not (cheap by-products of the clean test pass);
    ``compute``: ``(Context) -> {column: value}``, keys among ``columns``' measured names. ``check``: an optional
    preflight hook ``(block, task, model, n_params) -> Problem | None``, run before anything starts for every
    (task, model) of a block that lists the metric, once the model was built on the meta device (``n_params``
    parameters) and the task's dataset found; it must be cheap (no allocation that grows with the model, a few
    file stats) and import its heavy dependencies inside."""
    name: str
    columns: tuple[Column, ...]
    compute: Callable[[Context], dict[str, Any]]
    families: tuple[str, ...] = FAMILIES
    settings: type[Settings] | None = None
    settings_key: str | None = None
    always: bool = False
    requires: str = ""  # what a block needs for it, as the refusal says; default from families
    check: Callable[[Any, str, str, int], Problem | None] | None = None

    def __post_init__(self) -> None:
        if (self.settings is None) != (self.settings_key is None):
            raise ValueError(f"metric {self.name!r}: give both settings and settings_key, or neither")
        unknown = set(self.families) - set(FAMILIES)
        if unknown or not self.families:
            raise ValueError(f"metric {self.name!r}: families must be among {FAMILIES}, got {self.families}")


_METRICS: dict[str, Metric] = {}


def register_metric(metric: Metric) -> Metric:
    """Add ``metric`` to the registry (in registration order: the order metrics are measured and their
    columns listed). A name, settings key or column already registered raises ``ValueError``."""
    if metric.name in _METRICS:
        raise ValueError(f"metric {metric.name!r} is already registered")
    keys = {m.settings_key for m in _METRICS.values()} - {None}
    if metric.settings_key in keys:
        raise ValueError(f"settings key {metric.settings_key!r} is already taken")
    taken = {c.name for m in _METRICS.values() for c in m.columns}
    clash = [c.name for c in metric.columns if c.name in taken]
    if clash:
        raise ValueError(f"metric {metric.name!r}: columns {clash} are already registered")
    _METRICS[metric.name] = metric
    return metric


def list_metrics() -> list[str]:
    """Names of every registered metric, in registration order."""
    return list(_METRICS)


def get_metric(name: str) -> Metric:
    """The entry of metric ``name``; ``KeyError`` listing the known ones when there is none."""
    if name not in _METRICS:
        raise KeyError(f"unknown metric {name!r}; known: {', '.join(_METRICS)}")
    return _METRICS[name]


def metrics() -> list[Metric]:
    """Every registered entry, in registration order."""
    return list(_METRICS.values())


def metric_columns() -> list[Column]:
    """Every metric's columns, metric by metric in registration order."""
    return [c for m in _METRICS.values() for c in m.columns]


def role_columns(role: str) -> tuple[str, ...]:
    """Names of the columns with ``role`` (``"sharpness"``, ``"hessian"``), in registration order."""
    return tuple(c.name for c in metric_columns() if c.role == role)


def labels() -> dict[str, str]:
    """Column name -> readable label, for every metric column that has one."""
    return {c.name: c.label for c in metric_columns() if c.label}


def _all_positive(v: list[float]) -> list[float]:
    if any(r <= 0 for r in v):
        raise ValueError("every rho must be > 0")
    return v


Radii = Annotated[list[float], Field(min_length=1), AfterValidator(_all_positive)]  # perturbation radii


def trial_settings(trial: Any, metric: Metric) -> Settings | None:
    """``metric``'s settings for ``trial`` (typed, validated when the trial was built): the Trial field named
    after its settings key (the metrics that had one before the registry) or ``trial.metric_settings``'s
    entry; the defaults when the trial has neither."""
    if metric.settings is None:
        return None
    own = getattr(trial, metric.settings_key, None)
    if own is not None:
        return own
    return trial.metric_settings.get(metric.settings_key) or metric.settings()
