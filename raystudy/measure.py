"""Measure one checkpoint: performance, calibration and sharpness -> one result row. No Ray.

Everything is measured on the model in eval mode (BatchNorm uses its running statistics) on
*un-augmented* data in a fixed order; geometry metrics see ``trial.measure.split`` (the training
set by default, with the labels the model was trained on, noisy or not), limited to its first
``max_samples`` rows. The row records all of this, so the numbers say how they were obtained.
"""
from __future__ import annotations

import io
import json
import math
import time
from functools import lru_cache
from importlib.metadata import version
from typing import Any

import polars as pl
import torch

import raystudy
from raystudy import tasks
from raystudy.checkpoints import load_checkpoint
from raystudy.geometry import (HessianOperator, fisher_rao_norm, hessian_density, hessian_eigenvalues,
                               hessian_trace, relative_flatness, sam_sharpness_sweep)
from raystudy.safety import evaluate, expected_calibration_error
from raystudy.seeding import derive_seed
from raystudy.spec import Trial
from raystudy.storage import Store
from raystudy.tasks.base import Task, batches
from raystudy.train.loop import build_model, loss_fn_for

_RHO = pl.Struct({"rho": pl.Float64, "mean": pl.Float64, "std": pl.Float64, "median": pl.Float64,
                  "min": pl.Float64, "max": pl.Float64})
F, I, S, B = pl.Float64, pl.Int64, pl.String, pl.Boolean
# The row contract (DESIGN.md): one row per (trial, checkpoint); a metric not measured is null.
SCHEMA: dict[str, pl.DataType] = {
    "study": S, "block": S, "family": S, "task": S, "model": S, "regime": S, "seed": I, "trial_id": S,
    "step": I, "epoch": I, "final": B, "status": S,
    "lr": F, "batch_size": I, "weight_decay": F, "sam_rho": F, "augment": B, "factor": F, "label_noise": F,
    "momentum": F, "optimizer": S, "schedule": S, "epochs": I,
    "train_loss": F, "train_acc": F, "test_loss": F, "test_acc": F, "gen_gap": F, "ece": F,
    "fisher_rao": F, "relative_flatness": F, "sam_sharpness": F, "sam_sharpness_std": F, "sam_sharpness_rho": F,
    "sam_sharpness_by_rho": pl.List(_RHO), "sharpness_draws": I, "target_complexity": F,
    "hessian_lambda_max": F, "hessian_lambda_min": F, "hessian_trace": F, "hessian_trace_se": F,
    "hessian_topk": pl.List(F), "hessian_density_grid": pl.List(F), "hessian_density": pl.List(F),
    "hessian_n_hvp": I, "hessian_n": I,
    "train_loss_running": F, "train_wall_s": F, "measured_on": S, "measure_n": I, "bn_mode": S,
    "augmented": B, "estimator_seed": I, "raystudy_version": S, "torch_version": S, "ray_version": S,
    "device": S, "wall_s": F,
}


def measure_checkpoint(store: Store, path: str, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Load the checkpoint at ``path`` and return its result row (keys = ``SCHEMA``).

    Raises ``CheckpointError`` (one line naming the file) if it cannot be read. Cost: one eval pass
    over train and test sets, plus the requested metrics (SAM-sharpness: ``draws * len(rhos)``
    forward passes over the measured data; relative flatness: one pass + per-sample C x C Hessians).
    """
    t0 = time.perf_counter()
    device = torch.device(device)
    state = load_checkpoint(store, path, map_location=device)
    trial = Trial.from_dict(state["trial"])
    task = _task(trial)
    model = build_model(trial, task).to(device)
    model.load_state_dict(state["model"])
    model.eval()
    loss_fn = loss_fn_for(task)
    row: dict[str, Any] = {k: None for k in SCHEMA}
    row.update(_identity(trial, state))

    def on(x: torch.Tensor, y: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Un-augmented, fixed-order batches on the measuring device."""
        return [(task.normalise(a.to(device)), b.to(device)) for a, b in batches(x, y, trial.measure["batch_size"])]
    train, test = evaluate(model, loss_fn, on(task.x_train, task.y_train)), evaluate(model, loss_fn, on(task.x_test, task.y_test))
    finite = all(torch.isfinite(p).all() for p in model.parameters()) and math.isfinite(train.loss) and math.isfinite(test.loss)
    row["status"] = "ok" if finite else "nonfinite"
    if finite:
        row.update(train_loss=train.loss, test_loss=test.loss)
        if task.kind == "classification":
            row.update(train_acc=train.accuracy, test_acc=test.accuracy,
                       gen_gap=100.0 * (train.accuracy - test.accuracy),
                       ece=expected_calibration_error(torch.softmax(test.outputs, dim=1), test.targets))
        else:
            row["gen_gap"] = test.loss - train.loss
        row.update(_geometry(trial, task, model, loss_fn, on))
    if trial.family == "functions":
        row["target_complexity"] = _complexity(trial.task)
    row["wall_s"] = time.perf_counter() - t0
    return row


def _geometry(trial: Trial, task: Task, model, loss_fn, on) -> dict[str, Any]:
    x, y = (task.x_train, task.y_train) if trial.measure["split"] == "train" else (task.x_test, task.y_test)
    n = min(len(x), trial.measure["max_samples"] or len(x))
    data = on(x[:n], y[:n])
    # One estimator seed per (trial seed): every regime of a seed sees the same probes, so the
    # paired comparisons with base are not blurred by probe noise.
    seed = derive_seed("estimators", trial.seed)
    out: dict[str, Any] = {"measured_on": trial.measure["split"], "measure_n": n, "estimator_seed": seed}
    if "fisher_rao" in trial.metrics:
        out["fisher_rao"] = fisher_rao_norm(model, data)
    if "relative_flatness" in trial.metrics:
        out["relative_flatness"] = relative_flatness(model, loss_fn, data)
    if "sam_sharpness" in trial.metrics:
        cfg = trial.sharpness
        sweep = sam_sharpness_sweep(model, loss_fn, data, cfg["rhos"], n_draws=cfg["draws"], seed=seed)
        out.update(sam_sharpness=sweep[0].mean, sam_sharpness_std=sweep[0].std, sam_sharpness_rho=sweep[0].rho,
                   sharpness_draws=cfg["draws"],
                   sam_sharpness_by_rho=[{"rho": s.rho, "mean": s.mean, "std": s.std, "median": s.median,
                                          "min": s.min, "max": s.max} for s in sweep])
    if "hessian" in trial.metrics:
        m = min(n, trial.hessian["max_samples"] or n)
        out.update(_hessian(trial.hessian, model, loss_fn, on(x[:m], y[:m]), seed), hessian_n=m)
    return out


def _hessian(cfg: dict[str, Any], model, loss_fn, data, seed: int) -> dict[str, Any]:
    """Curvature of the loss at the checkpoint: both ends of the spectrum (Lanczos), the trace
    (Hutch++, with its standard error) and the spectral density (SLQ). One operator serves all three,
    so the Hv backend is chosen once. Cost: about ``2 * top_k * 10 + trace_hvp +
    density_runs * density_steps`` Hessian-vector products (``hessian_n_hvp`` records the truth)."""
    op = HessianOperator(model, loss_fn, data)
    k = cfg["top_k"]
    eig = hessian_eigenvalues(op, k=k, which="both", seed=seed)
    tr = hessian_trace(op, n_hvp=cfg["trace_hvp"], seed=seed)
    dens = hessian_density(op, n_runs=cfg["density_runs"], n_steps=cfg["density_steps"], seed=seed)
    return {"hessian_lambda_max": eig.lambda_max, "hessian_lambda_min": eig.lambda_min,
            "hessian_topk": eig.eigenvalues[-k:].flip(0).tolist(),
            "hessian_trace": tr.estimate, "hessian_trace_se": tr.stderr,
            "hessian_density_grid": dens.grid.tolist(), "hessian_density": dens.density.tolist(),
            "hessian_n_hvp": eig.n_hvp + tr.n_hvp + dens.n_hvp}


def _identity(trial: Trial, state: dict[str, Any]) -> dict[str, Any]:
    keys = ("study", "block", "family", "task", "model", "regime", "seed", "trial_id", "lr", "batch_size",
            "weight_decay", "sam_rho", "augment", "factor", "label_noise", "momentum", "optimizer", "schedule",
            "epochs")
    row = {k: getattr(trial, k) for k in keys}
    row.update(step=int(state["step"]), epoch=int(state["epoch"]), final=state["epoch"] == trial.epochs,
               train_loss_running=state.get("train_loss_running"), train_wall_s=state.get("train_wall_s"),
               bn_mode="eval", augmented=False, raystudy_version=raystudy.__version__,
               torch_version=torch.__version__, ray_version=_ray_version(), device=_device_name(state))
    return row


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


def row_frame(rows: list[dict[str, Any]]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=SCHEMA)


def result_path(store: Store, trial_id: str, epoch: int) -> str:
    return store.path("results", trial_id, f"epoch_{epoch:06d}.parquet")


def write_row(store: Store, row: dict[str, Any]) -> str:
    """Atomically write one row as its own Parquet file; returns its path."""
    buf = io.BytesIO()
    row_frame([row]).write_parquet(buf)
    path = result_path(store, row["trial_id"], row["epoch"])
    store.write_bytes(path, buf.getvalue())
    return path


def measured(store: Store) -> set[tuple[str, int]]:
    """``(trial_id, epoch)`` pairs that already have a result file."""
    done = set()
    for trial_id in store.list_dirs(store.path("results")):
        for p in store.list(store.path("results", trial_id), suffix=".parquet"):
            done.add((trial_id, int(p.rsplit("epoch_", 1)[1].split(".")[0])))
    return done
