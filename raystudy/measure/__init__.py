"""Measure one checkpoint: performance, calibration and sharpness -> one result row. No Ray.

Everything is measured on the model in eval mode on *un-augmented* data in a fixed order; geometry
metrics see ``trial.measure.split`` (the training set by default, with the labels the model was
trained on, noisy or not), limited to its first ``max_samples`` rows. BatchNorm uses the running
statistics stored in the checkpoint (``measure.bn: stored``, the paper's protocol) or statistics
recomputed on the un-augmented training split (``recalibrate``; the checkpoint file is never
touched). The row records all of this (``raystudy.schema``), so the numbers say how they were obtained.
"""
from __future__ import annotations

import json
import math
import time
from functools import lru_cache
from importlib.metadata import version
from typing import Any

import torch

import raystudy
from raystudy import tasks
from raystudy.checkpoints import load_checkpoint
from raystudy.measure.geometry import metric_columns
from raystudy.layout import measured, result_path
from raystudy.measure.rows import row_frame, write_row
from raystudy.safety import evaluate
from raystudy.schema import SCHEMA
from raystudy.trial import Trial
from raystudy.storage import Store
from raystudy.tasks.base import Task, batches
from raystudy.models.batchnorm import batchnorm_layers, recalibrate_batchnorm, train_mode_accuracy
from raystudy.build import build_model, loss_fn_for

__all__ = ["SCHEMA", "measure_checkpoint", "measured", "result_path", "row_frame", "write_row"]


def measure_checkpoint(store: Store, path: str, device: str | torch.device = "cpu",
                       trial: Trial | None = None) -> dict[str, Any]:
    """Load the checkpoint at ``path`` and return its result row (keys = ``SCHEMA``).

    ``trial``: the trial as the study file says now (its measurement settings and data root); default
    the trial stored in the checkpoint, as trained. Training settings are the same either way: they
    name the trial.

    Raises ``CheckpointError`` (one line naming the file) if it cannot be read. With the ``consistency``
    metric it also writes the test-set predictions beside the row (``measure.safety``). Cost: one eval pass
    over train and test sets (plus, for BatchNorm models, one train-mode pass over the training set,
    and one more to recalibrate when asked), plus the requested metrics (each registry entry's compute
    function says its cost, e.g. SAM-sharpness: ``draws * len(rhos)`` forward passes over the measured data).
    """
    t0, cpu0 = time.perf_counter(), time.process_time()
    device = torch.device(device)
    state = load_checkpoint(store, path, map_location=device)
    trial = trial or Trial.from_dict(state["trial"])
    task = _task(trial)
    model = build_model(trial, task).to(device)
    model.load_state_dict(state["model"])
    model.eval()
    loss_fn = loss_fn_for(task)
    row: dict[str, Any] = {k: None for k in SCHEMA}
    row.update(_identity(trial, state), measure_hash=trial.measure_hash)

    def on(x: torch.Tensor, y: torch.Tensor, size: int | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Un-augmented, normalised, fixed-order batches on the measuring device."""
        return [(task.normalise(a.to(device)), b.to(device))
                for a, b in batches(x, y, size or trial.measure.batch_size)]

    bn_mode = trial.measure.bn
    has_bn = bool(batchnorm_layers(model))
    train_batches = on(task.x_train, task.y_train, trial.batch_size or len(task.x_train)) if has_bn else None
    if has_bn and bn_mode == "recalibrate":
        recalibrate_batchnorm(model, train_batches)
    train, test = evaluate(model, loss_fn, on(task.x_train, task.y_train)), evaluate(model, loss_fn, on(task.x_test, task.y_test))
    finite = all(torch.isfinite(p).all() for p in model.parameters()) and math.isfinite(train.loss) and math.isfinite(test.loss)
    row.update(status="ok" if finite else "nonfinite", bn_mode=bn_mode)
    if finite:
        row.update(train_loss=train.loss, test_loss=test.loss)
        if task.kind == "classification":
            row.update(train_acc=train.accuracy, test_acc=test.accuracy,
                       gen_gap=100.0 * (train.accuracy - test.accuracy))
            if has_bn:
                row["train_acc_train_mode"] = train_mode_accuracy(model, train_batches)
        else:
            row["gen_gap"] = test.loss - train.loss
        row.update(metric_columns(trial, task, model, loss_fn, on, test=test, store=store, epoch=row["epoch"],
                                  device=device))
    if trial.family == "functions":
        # The raw complexity of the target as trained (scale^2 x the protocol's: the number the paper would
        # report) beside the scale-free one, so an analysis can tell amplitude from shape.
        row.update(target_complexity=trial.target_scale**2 * _complexity(trial.task),
                   target_shape_complexity=_shape_complexity(trial.task),
                   target_variance=float(task.y_train.double().var()))
    row["wall_s"], row["cpu_s"] = time.perf_counter() - t0, time.process_time() - cpu0
    return row


def _identity(trial: Trial, state: dict[str, Any]) -> dict[str, Any]:
    keys = ("study", "block", "family", "task", "model", "regime", "seed", "trial_id", "lr", "batch_size",
            "weight_decay", "sam_rho", "augment", "factor", "label_noise", "momentum", "optimizer", "schedule",
            "epochs")
    row = {k: getattr(trial, k) for k in keys}
    row["target_scale"] = trial.target_scale if trial.family == "functions" else None  # no target elsewhere
    row.update(step=int(state["step"]), epoch=int(state["epoch"]), final=state["epoch"] == trial.epochs,
               train_loss_running=_finite_or_none(state.get("train_loss_running")),
               train_loss_curve=[{"epoch": int(e), "loss": _finite_or_none(v)} for e, v in state.get("train_loss_curve", [])],
               resumed_from=state.get("resumed_from"), world_size=state.get("world_size", 1),
               diverged_at=state.get("diverged_at"), train_wall_s=state.get("train_wall_s"),
               precision=state.get("precision", "fp32"), compiled=state.get("compiled", False),
               augmented=False, raystudy_version=raystudy.__version__, torch_version=torch.__version__,
               ray_version=_ray_version(), device=_device_name(state))
    return row


def _finite_or_none(x: float | None) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


def _device_name(state: dict[str, Any]) -> str:
    t = next(iter(state["model"].values()))
    return torch.cuda.get_device_name(t.device) if t.is_cuda else str(t.device)


@lru_cache(maxsize=1)
def _ray_version() -> str | None:
    try:
        return version("ray")
    except Exception:
        return None


@lru_cache(maxsize=16)
def _task_cached(family: str, name: str, seed: int, params_json: str) -> Task:
    return tasks.load_task(family, name, seed=seed, **json.loads(params_json))


def _task(trial: Trial) -> Task:
    """Tasks are cached per (family, task, seed, params): a measuring actor sees the same few often."""
    return _task_cached(trial.family, trial.task, trial.seed, json.dumps(trial.task_params, sort_keys=True))


@lru_cache(maxsize=None)
def _complexity(name: str) -> float:
    from raystudy.tasks.functions import target_complexity
    return target_complexity(name)


@lru_cache(maxsize=None)
def _shape_complexity(name: str) -> float:
    from raystudy.tasks.functions import target_shape_complexity
    return target_shape_complexity(name)
