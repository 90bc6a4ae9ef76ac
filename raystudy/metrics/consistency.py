"""Functional consistency across seeds: the measuring step stores each checkpoint's test-set predictions; the
analysis compares the seeds of a configuration (``raystudy.analysis.consistency``) and fills in disagreement
and JSD."""
from __future__ import annotations

from typing import Any

import polars as pl

from raystudy.metrics.registry import CLASSIFICATION, Column, Context, Metric, register_metric


def compute(ctx: Context) -> dict[str, Any]:
    """Cost: one compressed write of (N,) classes and (N, C) float16 probabilities."""
    from raystudy.measure.safety import write_predictions
    return {"predictions": write_predictions(ctx.store, ctx.trial.trial_id, ctx.epoch, ctx.test.outputs)}


register_metric(Metric(
    name="consistency", families=CLASSIFICATION, compute=compute,
    columns=(
        Column("disagreement", pl.Float64, "safety",
               "1 - argmax agreement on the test set with each other seed of the same configuration, mean over them "
               "(computed by the analysis from the stored predictions)", label="disagreement between seeds",
               measured=False),
        Column("jsd", pl.Float64, "safety",
               "Jensen-Shannon divergence (nats) of test-set predictive distributions with each other seed of the "
               "same configuration, mean over them (analysis)", label="Jensen-Shannon divergence between seeds",
               measured=False),
        Column("predictions", pl.String, "provenance",
               "consistency: path of the stored test-set predictions (class and float16 probabilities) beside the "
               "row"),
    )))
