"""The sharpness and curvature columns of a row: which estimators run, on which data, with which seed."""
from __future__ import annotations

import itertools
from typing import Any, Callable

import torch
from torch import nn

from raystudy.geometry import (HessianOperator, adaptive_sharpness, fisher_rao_norm, hessian_density, hessian_eigenvalues,
                               hessian_trace, relative_flatness_result, sam_sharpness_sweep)
from raystudy.safety import input_gradient_norm, linear_region_density
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
    if "adaptive_sharpness" in trial.metrics:
        by = adaptive_columns(trial.adaptive, model, loss_fn, data, seed)
        first = by[0]
        out.update(adaptive_sharpness=first["value"], adaptive_sharpness_by=by,
                   adaptive_sharpness_setting=f"{first['kind']} {first['norm']} rho={first['rho']:g}"
                   + (" adaptive" if first["adaptive"] else "") + (f" m={first['m']}" if first["m"] else ""))
    if "complexity" in trial.metrics:
        out.update(complexity_columns(trial.complexity, model, data, seed))
    if "hessian" in trial.metrics:
        m = min(n, trial.hessian["max_samples"] or n)
        out.update(hessian_columns(trial.hessian, model, loss_fn, on(x[:m], y[:m]), seed), hessian_n=m)
    return out


def adaptive_columns(cfg: dict[str, Any], model: nn.Module, loss_fn, data, seed: int) -> list[dict[str, Any]]:
    """Adaptive sharpness at every kind x norm x rho of the block's ``adaptive`` settings, one struct each.
    Cost per worst-case entry: n_restarts x n_iter forward and backward passes over the data; per
    average-case entry: 1 + n_draws forward passes."""
    out = []
    for kind, norm, rho in itertools.product(cfg["kind"], cfg["norm"], cfg["rho"]):
        r = adaptive_sharpness(model, loss_fn, data, rho, kind=kind, norm=norm, adaptive=cfg["adaptive"],
                               m=cfg["m"] if kind == "worst" else None, n_iter=cfg["n_iter"],
                               n_restarts=cfg["n_restarts"], n_draws=cfg["n_draws"], seed=seed)
        out.append({"kind": kind, "norm": norm, "rho": rho, "adaptive": cfg["adaptive"], "m": r.m, "value": r.mean,
                    "std": r.std, "n_forward": r.n_forward, "n_backward": r.n_backward})
    return out


def complexity_columns(cfg: dict[str, Any], model: nn.Module, data, seed: int) -> dict[str, Any]:
    """How complex the learned function is around the measured data: the mean input-gradient norm (C
    backward passes per batch) and, for ReLU networks, the linear-region density along ``lines`` random
    lines of ``points`` samples (lines x points forward samples); null for networks without ReLU."""
    grad = input_gradient_norm(model, data)
    out: dict[str, Any] = {"input_grad_norm": grad.mean, "input_grad_norm_se": grad.stderr}
    x = torch.cat([a for a, _ in data]).flatten(1).double()
    length = cfg["length"] or float((x - x.mean(0)).pow(2).sum(1).mean().sqrt()) or 1.0
    if not any(isinstance(m, nn.ReLU) for m in model.modules()):  # e.g. the ViT (GELU): no linear regions
        return out
    regions = linear_region_density(model, data, n_lines=cfg["lines"], n_points=cfg["points"], length=length,
                                    seed=seed)
    out.update(linear_region_density=regions.mean, linear_region_density_se=regions.stderr,
               linear_region_length=length)
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
