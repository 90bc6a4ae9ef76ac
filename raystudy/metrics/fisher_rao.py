"""Fisher-Rao norm of a classifier (Liang et al. 2019), closed form for cross-entropy."""
from __future__ import annotations

from typing import Any

import polars as pl

from raystudy.metrics.registry import CLASSIFICATION, Column, Context, Metric, register_metric


def compute(ctx: Context) -> dict[str, Any]:
    """Cost: one forward and backward pass over the measured data."""
    from raystudy.geometry import fisher_rao_norm
    return {"fisher_rao": fisher_rao_norm(ctx.model, ctx.data)}


register_metric(Metric(
    name="fisher_rao", families=CLASSIFICATION, compute=compute,
    columns=(Column("fisher_rao", pl.Float64, "sharpness", "Fisher-Rao norm, closed form for cross-entropy, factor (L+1)",
                    label="Fisher-Rao norm", role="sharpness", verdict=True),)))
