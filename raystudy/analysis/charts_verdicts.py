"""The charts that carry the verdicts, shown beside them at the top of the report: family A's sharpness against
target complexity, family B's sharpness against the boundary's tightness, family C's paired differences."""
from __future__ import annotations

import altair as alt
import polars as pl

from raystudy.analysis.aggregate import comparison_keys
from raystudy.analysis.charts import WIDTH, circles_sweep, functions_complexity_vs_sharpness
from raystudy.analysis.labels import chart_title, metric_label
from raystudy.analysis.results import final_rows, ok_rows, present
from raystudy.schema import SAFETY, SHARPNESS


def paired_differences(df: pl.DataFrame) -> pl.DataFrame:
    """Family C at the final checkpoint: for every non-base trial with a base partner of the same seed and
    configuration, regime - base of each sharpness and safety metric. Columns: block, regime, seed, trial_id,
    metric, group, difference. Empty without such pairs."""
    rows = ok_rows(final_rows(df))
    rows = rows.filter(pl.col("family") == "images") if "family" in rows.columns else rows.clear()
    metrics = present(rows, SHARPNESS + SAFETY)
    if rows.is_empty() or not metrics or "base" not in rows["regime"].to_list():
        return pl.DataFrame()
    config, _ = comparison_keys(df)
    base = rows.filter(pl.col("regime") == "base").select(*config, "seed", *metrics)
    other = rows.filter(pl.col("regime") != "base").select(*config, "seed", "regime", "trial_id", *metrics)
    pairs = other.join(base, on=[*config, "seed"], suffix="_base", nulls_equal=True)
    long = [pairs.select("block", "regime", "seed", "trial_id", metric=pl.lit(m),
                         group=pl.lit("sharpness" if m in SHARPNESS else "safety"),
                         difference=pl.col(m) - pl.col(f"{m}_base")) for m in metrics]
    return pl.concat(long).drop_nulls("difference") if long else pl.DataFrame()


def images_paired_chart(df: pl.DataFrame) -> alt.Chart | None:
    """One panel per sharpness and safety metric: each seed's regime - base difference (dots) and their mean
    (bar tick), one row per block x regime; right of the zero line = the regime is larger. Tooltips name the
    trial, seed and difference."""
    diffs = paired_differences(df)
    if diffs.is_empty():
        return None
    diffs = diffs.with_columns(label=pl.col("metric").replace_strict({m: metric_label(m) for m in
                                                                       diffs["metric"].unique()}),
                               comparison=pl.col("block") + ": " + pl.col("regime"))
    base = alt.Chart(diffs).encode(y=alt.Y("comparison:N", title=None))
    dots = base.mark_point(filled=True, size=40, opacity=0.7).encode(
        x=alt.X("difference:Q", title="regime - base (same seed)"), color=alt.Color("block:N"),
        tooltip=["trial_id", "block", "regime", "seed", "label", alt.Tooltip("difference:Q", format=".4g")])
    mean = base.mark_tick(thickness=2, size=14, color="black").encode(x="mean(difference):Q")
    zero = alt.Chart().mark_rule(strokeDash=[3, 3], color="grey").encode(x=alt.datum(0))
    layered = alt.layer(dots, mean, zero, data=diffs).properties(width=WIDTH - 60)
    return layered.facet(facet=alt.Facet("label:N", title=None), columns=3).resolve_scale(x="independent").properties(
        title=chart_title(ok_rows(final_rows(df)).filter(pl.col("family") == "images"),
                          "Family C: each regime minus base, paired by seed (dots: seeds; tick: mean)"))


def verdict_charts(df: pl.DataFrame) -> dict[str, tuple[str, alt.Chart]]:
    """Family letter -> (file stem, chart) for the families whose verdict chart the rows support."""
    found = {"A": ("verdict_a_sharpness_vs_complexity", functions_complexity_vs_sharpness(df, "sam_sharpness")),
             "B": ("verdict_b_sharpness_vs_factor", circles_sweep(df, "factor")),
             "C": ("verdict_c_paired_differences", images_paired_chart(df))}
    return {k: v for k, v in found.items() if v[1] is not None}
