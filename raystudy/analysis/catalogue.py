"""The list of charts a report shows, each with a file name and a one-line caption."""
from __future__ import annotations

from dataclasses import dataclass

import altair as alt
import polars as pl

from raystudy.analysis.charts import (circles_sweep, learning_curves, family_rows, functions_complexity_vs_sharpness,
                                      functions_sharpness_vs_step, images_vs_gap)
from raystudy.analysis.charts_hessian import curvature_vs_gap, spectral_density
from raystudy.analysis.labels import metric_label
from raystudy.analysis.results import GEOMETRY, present


@dataclass(frozen=True)
class ReportChart:
    """A chart to embed: `name` (file stem of its PNG), the altair chart, and a one-line caption."""
    name: str
    chart: alt.TopLevelMixin
    caption: str


def report_charts(df: pl.DataFrame) -> list[ReportChart]:
    """Every chart the rows support beyond those beside the verdicts (family A's SAM-sharpness against
    complexity, family B's factor sweep), in report order; charts whose data is absent are left out."""
    entries: list[tuple[str, alt.TopLevelMixin | None, str]] = []
    for metric in present(family_rows(df, "functions", final=False), GEOMETRY):
        label = metric_label(metric)
        entries.append((f"functions_{metric}_vs_step", functions_sharpness_vs_step(df, metric),
                        f"Family A: {label} of each target function's fit during training, mean over seeds "
                        "(log step axis, step 0 not shown)."))
        if metric != "sam_sharpness":  # SAM-sharpness is the verdict's own chart
            entries.append((f"functions_{metric}_vs_complexity", functions_complexity_vs_sharpness(df, metric),
                            f"Family A, raw numbers as the paper reports them: final {label} against the target's "
                            "raw complexity (mean ||grad f||^2), one point per function x seed; both grow with the "
                            "target's amplitude, so the verdict uses the scale-free chart at the top."))
    entries += [
        ("learning_curves", learning_curves(df),
         "Learning curves: each block's running training loss per epoch, mean over seeds, one line per regime "
         "(every epoch up to 100, then about 1,000 evenly spaced)."),
        ("circles_vs_label_noise", circles_sweep(df, "label_noise"),
         "Family B, random labels: sharpness and test accuracy against the fraction of training labels "
         "replaced at random, mean +- SEM over seeds."),
        ("images_sharpness_vs_gap", images_vs_gap(df),
         "Family C: each sharpness metric against the generalisation gap, one point per trial, by regime - "
         "do sharper minima generalise worse?"),
        ("images_curvature_vs_gap", curvature_vs_gap(df),
         "Family C: Hessian largest eigenvalue and trace against the generalisation gap, one point per trial, "
         "by regime."),
        ("hessian_spectral_density", spectral_density(df),
         "Hessian eigenvalue density (stochastic Lanczos quadrature) at the final checkpoint, mean over seeds, "
         "regimes overlaid on a log density axis."),
    ]
    return [ReportChart(name, chart, caption) for name, chart, caption in entries if chart is not None]
