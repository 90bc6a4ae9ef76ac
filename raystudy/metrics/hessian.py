"""Curvature of the loss at the checkpoint: both ends of the Hessian spectrum (Lanczos), its trace
(Hutchinson / adaptive Hutch++) and its spectral density (SLQ)."""
from __future__ import annotations

from typing import Any

import polars as pl
from pydantic import Field

from raystudy.metrics.registry import Column, Context, Metric, Problem, Settings, register_metric

F, I = pl.Float64, pl.Int64


class Hessian(Settings):
    """Curvature measured per checkpoint: top-k/bottom eigenvalues, trace, spectral density; over the first
    ``max_samples`` of the measured data (None: all of it)."""
    top_k: int = Field(1, ge=1)
    trace_hvp: int = Field(30, ge=3)
    density_runs: int = Field(2, ge=1)
    density_steps: int = Field(30, ge=2)
    max_samples: int | None = Field(None, ge=1)


def hessian_columns(cfg: Hessian, model, loss_fn, data, seed: int) -> dict[str, Any]:
    """One operator serves all three estimators, so the Hv backend is chosen once. Cost: about
    ``2 * top_k * 10 + trace_hvp + density_runs * density_steps`` Hessian-vector products
    (``hessian_n_hvp`` records the truth)."""
    from raystudy.geometry import HessianOperator, hessian_density, hessian_eigenvalues, hessian_trace
    op = HessianOperator(model, loss_fn, data)
    k = cfg.top_k
    eig = hessian_eigenvalues(op, k=k, which="both", seed=seed)
    tr = hessian_trace(op, n_hvp=cfg.trace_hvp, seed=seed)
    dens = hessian_density(op, n_runs=cfg.density_runs, n_steps=cfg.density_steps, seed=seed)
    return {"hessian_lambda_max": eig.lambda_max, "hessian_lambda_min": eig.lambda_min,
            "hessian_topk": eig.eigenvalues[-k:].flip(0).tolist(),
            "hessian_trace": tr.estimate, "hessian_trace_se": tr.stderr, "hessian_trace_sketch_rank": tr.sketch_rank,
            "hessian_density_grid": dens.grid.tolist(), "hessian_density": dens.density.tolist(),
            "hessian_n_hvp": eig.n_hvp + tr.n_hvp + dens.n_hvp}


def compute(ctx: Context) -> dict[str, Any]:
    n = len(ctx.x)
    m = min(n, ctx.settings.max_samples or n)
    return {**hessian_columns(ctx.settings, ctx.model, ctx.loss_fn, ctx.on(ctx.x[:m], ctx.y[:m]), ctx.seed),
            "hessian_n": m}


def check(block: Any, task: str, model: str, n_params: int) -> Problem | None:
    """Preflight: Lanczos finds ``top_k`` eigenvalues at each end of the spectrum, so the model needs at least
    ``2 * top_k`` parameters. Cost: one comparison."""
    top_k = block.hessian.top_k
    if 2 * top_k > n_params:
        return Problem("hessian.top_k", f"{top_k} eigenvalues at each end need 2 x top_k <= the parameter count "
                       f"of {model} ({n_params})")
    return None


register_metric(Metric(
    name="hessian", settings=Hessian, settings_key="hessian", compute=compute, check=check,
    columns=(
        Column("hessian_lambda_max", F, "hessian", "largest Hessian eigenvalue (Lanczos)", label="Hessian lambda_max",
               role="hessian", verdict=True),
        Column("hessian_lambda_min", F, "hessian", "smallest (most negative) Hessian eigenvalue (Lanczos)",
               label="Hessian lambda_min"),
        Column("hessian_trace", F, "hessian", "Hessian trace (Hutchinson / adaptive Hutch++)", label="Hessian trace",
               role="hessian", verdict=True),
        Column("hessian_trace_se", F, "hessian", "standard error of hessian_trace"),
        Column("hessian_trace_sketch_rank", I, "hessian",
               "directions the trace captured exactly before sampling the rest (0 = plain Hutchinson)"),
        Column("hessian_topk", pl.List(F), "hessian", "top-k eigenvalues, largest first"),
        Column("hessian_density_grid", pl.List(F), "hessian", "eigenvalue grid of the SLQ spectral density"),
        Column("hessian_density", pl.List(F), "hessian", "SLQ spectral density on hessian_density_grid"),
        Column("hessian_n_hvp", I, "hessian", "Hessian-vector products spent on this checkpoint"),
        Column("hessian_n", I, "hessian", "samples the Hessian was taken over"),
    )))
