"""SAM-sharpness: mean |L(w + delta) - L(w)| / rho over random perturbations of norm rho (the paper's own)."""
from __future__ import annotations

from typing import Any

import polars as pl
from pydantic import Field

from raystudy.metrics.registry import Column, Context, Metric, Radii, Settings, register_metric

F = pl.Float64
RHO_STATS = pl.Struct({"rho": F, "mean": F, "std": F, "median": F, "min": F, "max": F})


class Sharpness(Settings):
    """The ``sam_sharpness`` metric: ``draws`` random perturbations at each radius of ``rhos``; the first
    radius is the scalar column's."""
    rhos: Radii = Field(default_factory=lambda: [0.005])
    draws: int = Field(100, ge=1)


def compute(ctx: Context) -> dict[str, Any]:
    """Cost: ``draws * len(rhos)`` forward passes over the measured data."""
    from raystudy.geometry import sam_sharpness_sweep
    cfg = ctx.settings
    sweep = sam_sharpness_sweep(ctx.model, ctx.loss_fn, ctx.data, cfg.rhos, n_draws=cfg.draws, seed=ctx.seed)
    return {"sam_sharpness": sweep[0].mean, "sam_sharpness_std": sweep[0].std, "sam_sharpness_rho": sweep[0].rho,
            "sam_sharpness_by_rho": [{"rho": s.rho, "mean": s.mean, "std": s.std, "median": s.median,
                                      "min": s.min, "max": s.max} for s in sweep],
            "sam_sharpness_precision": sweep[0].precision, "sharpness_draws": cfg.draws}


register_metric(Metric(
    name="sam_sharpness", settings=Sharpness, settings_key="sharpness", compute=compute,
    columns=(
        Column("sam_sharpness", F, "sharpness", "mean |L(w+delta) - L(w)| / rho over random draws, at sam_sharpness_rho",
               label="SAM-sharpness", role="sharpness", verdict=True),
        Column("sam_sharpness_std", F, "sharpness", "std over draws of the SAM-sharpness values at sam_sharpness_rho"),
        Column("sam_sharpness_rho", F, "sharpness", "the radius behind sam_sharpness (the first of sharpness.rhos)"),
        Column("sam_sharpness_by_rho", pl.List(RHO_STATS), "sharpness",
               "SAM-sharpness at every radius: rho, mean, std, median, min, max over draws"),
        Column("sam_sharpness_precision", pl.String, "sharpness",
               "float32 | float64: precision the perturbed and unperturbed losses were evaluated in"),
        Column("sharpness_draws", pl.Int64, "sharpness", "random perturbations per radius"),
    )))
