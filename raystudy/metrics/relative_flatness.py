"""Relative flatness of the classifier layer (Petzka et al. 2021)."""
from __future__ import annotations

from typing import Any

import polars as pl

from raystudy.metrics.registry import CLASSIFICATION, Column, Context, Metric, register_metric


def compute(ctx: Context) -> dict[str, Any]:
    """Cost: one pass over the measured data plus a C x C Hessian per sample."""
    from raystudy.geometry import relative_flatness_result
    flat = relative_flatness_result(ctx.model, ctx.loss_fn, ctx.data)
    return {"relative_flatness": flat.kappa, "relative_flatness_n_constant": flat.n_constant}


register_metric(Metric(
    name="relative_flatness", families=CLASSIFICATION, compute=compute,
    columns=(
        Column("relative_flatness", pl.Float64, "sharpness",
               "relative flatness kappa of the classifier layer (features normalised, dead features excluded), "
               "full-set value", label="relative flatness", role="sharpness", verdict=True),
        Column("relative_flatness_n_constant", pl.Int64, "sharpness",
               "features constant over the measured data (dead units) left out of relative flatness"),
    )))
