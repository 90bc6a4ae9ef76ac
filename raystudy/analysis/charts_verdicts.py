"""The charts that carry the verdicts, shown beside them at the top of the report: family A's scale-free sharpness
against the target's shape complexity (and, where a study varies it, sharpness against the target's amplitude),
family B's sharpness against the boundary's tightness, family C's paired differences."""
from __future__ import annotations

import altair as alt
import polars as pl

from raystudy.analysis.aggregate import comparison_keys
from raystudy.analysis.charts import HEIGHT, circles_sweep, panel_width, sample_points, scale_for, with_note
from raystudy.analysis.labels import chart_title, metric_label
from raystudy.analysis.results import final_rows, ok_rows, present
from raystudy.analysis.radii import column_radius, radius_columns
from raystudy.analysis.verdicts import functions_points
from raystudy.schema import SAFETY, SHARPNESS

PERFORMANCE = ("test_acc", "gen_gap")  # beside the paired sharpness and safety: what the regime did to accuracy
from raystudy.study import Verdicts

Figure = tuple[str, alt.TopLevelMixin, str]  # (file stem, chart, caption)


def _functions_long(df: pl.DataFrame, settings: Verdicts) -> pl.DataFrame:
    """Family A's final points with SAM-sharpness per radius, raw and relative to the target variance: columns
    block, target, task, target_scale, seed, trial_id, shape_complexity, kept, rho, raw, relative."""
    rows = ok_rows(final_rows(df))
    if "family" not in rows.columns:
        return pl.DataFrame()
    rows = rows.filter(pl.col("family") == "functions")
    if rows.is_empty() or "target_complexity" not in present(rows, ("target_complexity",)):
        return pl.DataFrame()
    parts = []
    for (block,), mine in rows.group_by("block", maintain_order=True):
        points, _, _ = functions_points(mine, settings)
        scale = pl.col("target_scale").fill_null(1.0) if "target_scale" in points.columns else pl.lit(1.0)
        for column in radius_columns(points):
            parts.append(points.select(
                "block", "target", "task", "seed", "trial_id", "shape_complexity", target_scale=scale,
                kept=pl.when(pl.col("fitted")).then(pl.lit("kept")).otherwise(pl.lit("excluded: not fitted")),
                rho=pl.lit(column_radius(column)), raw=pl.col(column), relative=pl.col(f"rel_{column}")))
    long = pl.concat(parts) if parts else pl.DataFrame()
    return long.drop_nulls(["shape_complexity", "relative"]) if not long.is_empty() else long


def functions_verdict_chart(df: pl.DataFrame, settings: Verdicts) -> alt.Chart | None:
    """Family A's verdict chart: final SAM-sharpness / target variance against the target's shape complexity
    (log axes; both invariant to the target's amplitude), one point per target x seed, faceted by radius; a
    target the verdict left out (not fitted) is drawn as a cross."""
    long = _functions_long(df, settings)
    if long.is_empty():
        return None
    faceted = long["rho"].n_unique() > 1
    drawn, note = sample_points(long, "target x seed x radius points")
    chart = alt.Chart(drawn).mark_point(size=60, filled=True, opacity=0.85).encode(
        x=alt.X("shape_complexity:Q", scale=scale_for(long["shape_complexity"]),
                title="target shape complexity (mean ||grad f||^2 / Var f)"),
        y=alt.Y("relative:Q", scale=scale_for(long["relative"]), title="SAM-sharpness / target variance"),
        color=alt.Color("task:N", title="target function"),
        shape=alt.Shape("kept:N", title="verdict", scale=alt.Scale(domain=["kept", "excluded: not fitted"],
                                                                    range=["circle", "cross"])),
        tooltip=["trial_id", "target", "seed", "kept", alt.Tooltip("rho:Q", format="g"),
                 alt.Tooltip("shape_complexity:Q", format=".4g"), alt.Tooltip("relative:Q", format=".4g"),
                 alt.Tooltip("raw:Q", title="raw SAM-sharpness", format=".4g")],
    ).properties(width=panel_width(2 if faceted else 1), height=HEIGHT)
    if faceted:
        chart = chart.facet(facet=alt.Facet("rho:O", title="perturbation radius rho"), columns=2).resolve_scale(
            y="independent")
    rows = ok_rows(final_rows(df)).filter(pl.col("family") == "functions")
    return with_note(chart, note).properties(
        title=chart_title(rows, "Family A: scale-free sharpness vs the target's shape complexity"))


def functions_amplitude_chart(df: pl.DataFrame, settings: Verdicts) -> alt.Chart | None:
    """Where a study varies ``target_scale``: final SAM-sharpness against the target's amplitude, raw (rising
    with the amplitude squared) and relative to the target variance (what the verdict uses), mean over seeds per
    target and radius (log axes). None when no block varies the amplitude."""
    long = _functions_long(df, settings)
    if long.is_empty() or long["target_scale"].n_unique() < 2:
        return None
    both = pl.concat([long.select("task", "rho", "target_scale", "seed", value=pl.col(c), side=pl.lit(name))
                      for c, name in (("raw", "raw"), ("relative", "relative to the target variance"))])
    mean = both.group_by("task", "rho", "target_scale", "side").agg(pl.col("value").mean(), pl.len().alias("n"))
    chart = alt.Chart(mean.sort("target_scale")).mark_line(point=True).encode(
        x=alt.X("target_scale:Q", scale=alt.Scale(type="log"), title="target amplitude (target_scale)"),
        y=alt.Y("value:Q", scale=scale_for(mean["value"]), title="SAM-sharpness (mean over seeds)"),
        color=alt.Color("task:N", title="target function"), strokeDash=alt.StrokeDash("rho:O", title="rho"),
        tooltip=["task", "side", alt.Tooltip("rho:Q", format="g"), alt.Tooltip("target_scale:Q", format="g"),
                 alt.Tooltip("value:Q", format=".4g"), "n"],
    ).properties(width=panel_width(2), height=HEIGHT)
    return chart.facet(column=alt.Column("side:N", title=None)).resolve_scale(y="independent").properties(
        title=alt.Title("Family A: sharpness against the target's amplitude", anchor="start",
                        subtitle="raw sharpness grows with the amplitude; the verdict uses the relative one"))


def paired_differences(df: pl.DataFrame) -> pl.DataFrame:
    """Family C at the final checkpoint: for every non-base trial with a base partner of the same seed and
    configuration, regime - base of each sharpness and safety metric and of test accuracy and the generalisation
    gap. Columns: block, regime, seed, trial_id, metric, group (sharpness, safety, performance), difference. Empty
    without such pairs."""
    rows = ok_rows(final_rows(df))
    rows = rows.filter(pl.col("family") == "images") if "family" in rows.columns else rows.clear()
    metrics = present(rows, SHARPNESS + SAFETY + PERFORMANCE)
    if rows.is_empty() or not metrics or "base" not in rows["regime"].to_list():
        return pl.DataFrame()
    config, _ = comparison_keys(df)
    base = rows.filter(pl.col("regime") == "base").select(*config, "seed", *metrics)
    other = rows.filter(pl.col("regime") != "base").select(*config, "seed", "regime", "trial_id", *metrics)
    pairs = other.join(base, on=[*config, "seed"], suffix="_base", nulls_equal=True)
    long = [pairs.select("block", "regime", "seed", "trial_id", metric=pl.lit(m),
                         group=pl.lit("sharpness" if m in SHARPNESS else "safety" if m in SAFETY else "performance"),
                         difference=pl.col(m) - pl.col(f"{m}_base")) for m in metrics]
    return pl.concat(long).drop_nulls("difference") if long else pl.DataFrame()


def images_paired_chart(df: pl.DataFrame) -> alt.Chart | None:
    """One panel per sharpness and safety metric, then test accuracy and the generalisation gap: each seed's
    regime - base difference (dots; a random MAX_MARKS at most) and their mean (tick, over every seed), one row
    per block x regime; right of the zero line = the regime is larger. Tooltips name the trial, seed and
    difference."""
    diffs = paired_differences(df)
    if diffs.is_empty():
        return None
    order = [m for m in (*SHARPNESS, *SAFETY, *PERFORMANCE) if m in set(diffs["metric"])]
    diffs = diffs.with_columns(label=pl.col("metric").replace_strict({m: metric_label(m) for m in
                                                                       diffs["metric"].unique()}),
                               comparison=pl.col("block") + ": " + pl.col("regime"))
    means = diffs.group_by("label", "comparison").agg(mean=pl.col("difference").mean(), n=pl.len())
    drawn, note = sample_points(diffs, "paired differences")
    data = pl.concat([drawn, means], how="diagonal_relaxed")  # one dataset: the dots, then one mean per row
    y = alt.Y("comparison:N", title=None, axis=alt.Axis(labelLimit=200))
    dots = alt.Chart().mark_point(filled=True, size=40, opacity=0.7).encode(
        x=alt.X("difference:Q", title="regime - base (same seed)"), y=y, color=alt.Color("block:N"),
        tooltip=["trial_id", "comparison", "seed", "label", alt.Tooltip("difference:Q", format=".4g")],
    ).transform_filter("isValid(datum.difference)")
    mean = alt.Chart().mark_tick(thickness=2, size=14, color="black").encode(
        x="mean:Q", y=y, tooltip=["comparison", "label", alt.Tooltip("mean:Q", title="mean difference", format=".4g"),
                                  alt.Tooltip("n:Q", title="seeds")]).transform_filter("isValid(datum.mean)")
    zero = alt.Chart().mark_rule(strokeDash=[3, 3], color="grey").encode(x=alt.datum(0))
    layered = alt.layer(dots, mean, zero, data=data).properties(width=panel_width(3, axis=40))
    labels = [metric_label(m) for m in order]
    faceted = layered.facet(facet=alt.Facet("label:N", title=None, sort=labels), columns=3)
    return with_note(faceted.resolve_scale(x="independent"), note).properties(
        title=chart_title(ok_rows(final_rows(df)).filter(pl.col("family") == "images"),
                          "Family C: each regime minus base, paired by seed (dots: seeds; tick: mean)"))


def verdict_charts(df: pl.DataFrame, settings: Verdicts | None = None) -> dict[str, list[Figure]]:
    """Family letter -> the figures that carry its verdict, for the families whose rows support them."""
    settings = settings or Verdicts()
    found = {
        "A": [("verdict_a_sharpness_vs_complexity", functions_verdict_chart(df, settings),
               "Family A: final SAM-sharpness divided by the variance of the training targets against the target's "
               "shape complexity (mean ||grad f||^2 / Var f over the domain), one point per target x seed, per "
               "radius (log axes); both sides are invariant to the target's amplitude. Crosses: targets the verdict "
               "left out as not fitted."),
              ("verdict_a_amplitude", functions_amplitude_chart(df, settings),
               "Family A: SAM-sharpness against the target's amplitude (target_scale), raw and relative to the "
               "target variance, mean over seeds.")],
        "B": [("verdict_b_sharpness_vs_factor", circles_sweep(df, "factor"),
               "Family B: sharpness and test accuracy against the circles' radius ratio (tighter boundary to the "
               "right), mean +- SEM over seeds.")],
        "C": [("verdict_c_paired_differences", images_paired_chart(df),
               "Family C: each regime minus base for every sharpness and safety metric, and for test accuracy and the "
               "generalisation gap, paired by seed (dots) with their mean (tick); right of the dashed line, the "
               "regime is larger.")],
    }
    return {k: [f for f in v if f[1] is not None] for k, v in found.items() if any(f[1] is not None for f in v)}
