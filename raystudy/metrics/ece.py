"""ECE: expected calibration error of the test-set predictions (15 equal-width bins, top label, L1). Measured on
every classification checkpoint, listed or not: it costs nothing beyond the clean test pass."""
from __future__ import annotations

from typing import Any

import polars as pl

from raystudy.metrics.registry import CLASSIFICATION, Column, Context, Metric, register_metric


def compute(ctx: Context) -> dict[str, Any]:
    import torch

    from raystudy.safety import expected_calibration_error
    return {"ece": expected_calibration_error(torch.softmax(ctx.test.outputs, dim=1), ctx.test.targets)}


register_metric(Metric(
    name="ece", families=CLASSIFICATION, always=True, compute=compute,
    columns=(Column("ece", pl.Float64, "safety", "expected calibration error on the test set: 15 equal-width bins, "
                    "top label, L1", label="ECE (15 bins, L1)"),)))
