"""The sharpness and curvature columns of a row: which estimators run, on which data, with which seed."""
from __future__ import annotations

from typing import Any, Callable

from torch import nn

from raystudy.geometry import (HessianOperator, fisher_rao_norm, hessian_density, hessian_eigenvalues,
                               hessian_trace, relative_flatness_result, sam_sharpness_sweep)
from raystudy.seeding import derive_seed
from raystudy.spec import Trial
from raystudy.tasks.base import Task

OnDevice = Callable[..., list]  # (x, y) -> un-augmented, normalised batches on the measuring device


def geometry_columns(trial: Trial, task: Task, model: nn.Module, loss_fn, on: OnDevice) -> dict[str, Any]:
    """Every requested geometry metric on the first ``measure.max_samples`` rows of ``measure.split``.

    One estimator seed per trial seed: every regime of a seed sees the same probes, so the paired
    comparisons with base are not blurred by probe noise."""
    x, y = (task.x_train, task.y_train) if trial.measure["split"] == "train" else (task.x_test, task.y_test)
    n = min(len(x), trial.measure["max_samples"] or len(x))
    data = on(x[:n], y[:n])
    seed = derive_seed("estimators", trial.seed)
    out: dict[str, Any] = {"measured_on": trial.measure["split"], "measure_n": n, "estimator_seed": seed}
    if "fisher_rao" in trial.metrics:
        out["fisher_rao"] = fisher_rao_norm(model, data)
    if "relative_flatness" in trial.metrics:
        flat = relative_flatness_result(model, loss_fn, data)
        out.update(relative_flatness=flat.kappa, relative_flatness_n_constant=flat.n_constant)
    if "sam_sharpness" in trial.metrics:
        cfg = trial.sharpness
        sweep = sam_sharpness_sweep(model, loss_fn, data, cfg["rhos"], n_draws=cfg["draws"], seed=seed)
        out.update(sam_sharpness=sweep[0].mean, sam_sharpness_std=sweep[0].std, sam_sharpness_rho=sweep[0].rho,
                   sharpness_draws=cfg["draws"], sam_sharpness_precision=sweep[0].precision,
                   sam_sharpness_by_rho=[{"rho": s.rho, "mean": s.mean, "std": s.std, "median": s.median,
                                          "min": s.min, "max": s.max} for s in sweep])
    if "hessian" in trial.metrics:
        m = min(n, trial.hessian["max_samples"] or n)
        out.update(hessian_columns(trial.hessian, model, loss_fn, on(x[:m], y[:m]), seed), hessian_n=m)
    return out


def hessian_columns(cfg: dict[str, Any], model: nn.Module, loss_fn, data, seed: int) -> dict[str, Any]:
    """Curvature of the loss at the checkpoint: both ends of the spectrum (Lanczos), the trace
    (with its standard error) and the spectral density (SLQ). One operator serves all three, so the
    Hv backend is chosen once. Cost: about ``2 * top_k * 10 + trace_hvp + density_runs *
    density_steps`` Hessian-vector products (``hessian_n_hvp`` records the truth)."""
    op = HessianOperator(model, loss_fn, data)
    k = cfg["top_k"]
    eig = hessian_eigenvalues(op, k=k, which="both", seed=seed)
    tr = hessian_trace(op, n_hvp=cfg["trace_hvp"], seed=seed)
    dens = hessian_density(op, n_runs=cfg["density_runs"], n_steps=cfg["density_steps"], seed=seed)
    return {"hessian_lambda_max": eig.lambda_max, "hessian_lambda_min": eig.lambda_min,
            "hessian_topk": eig.eigenvalues[-k:].flip(0).tolist(),
            "hessian_trace": tr.estimate, "hessian_trace_se": tr.stderr, "hessian_trace_sketch_rank": tr.sketch_rank,
            "hessian_density_grid": dens.grid.tolist(), "hessian_density": dens.density.tolist(),
            "hessian_n_hvp": eig.n_hvp + tr.n_hvp + dens.n_hvp}
