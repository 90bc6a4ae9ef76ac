"""Charts of the three families (altair, from polars frames). Each returns an alt.Chart, or None when the
rows it needs are absent. Values are plotted on a log axis when every plotted value is positive.

Every chart fits the page's 1,200 px column (panel widths computed from the number of panels side by side) and
draws at most a few thousand marks whatever the size of the study: rows are aggregated in polars first, curves
thinned and per-point charts sampled, which the chart's ``usermeta["note"]`` says (the page adds it to the
caption)."""
from __future__ import annotations

import altair as alt
import polars as pl

from raystudy.analysis.labels import axis_title, chart_title, metric_label
from raystudy.analysis.radii import BY_RHO, sam_long
from raystudy.analysis.results import GEOMETRY, final_rows, ok_rows, present
from raystudy.schema import SHARPNESS

WIDTH, HEIGHT = 260, 180
CLASSIFIER_SHARPNESS = SHARPNESS  # every registered sharpness metric (those a study measured are plotted)
ROOM = 1080  # px a chart may take of the page's 1,200 px column: Vega pads it, and facet headers need room
AXIS = 75  # px a panel's own y axis (labels and title) takes beside it
LEGEND = 170  # px a legend on the right takes
MAX_MARKS = 2000  # points a per-point chart draws at most; beyond, a seeded random sample of them
CURVE_POINTS = 150  # points a curve keeps at most (evenly spaced in rank along x)


def panel_width(columns: int, legend: bool = True, axis: int = AXIS, most: int = WIDTH, least: int = 110) -> int:
    """Width in px of each of ``columns`` panels side by side, each with its own y axis (``axis`` px), with a
    legend on the right or not, so that the whole chart fits in ROOM."""
    return int(max(least, min(most, (ROOM - (LEGEND if legend else 0)) / max(columns, 1) - axis)))


def sample_points(rows: pl.DataFrame, what: str = "points", limit: int | None = None) -> tuple[pl.DataFrame, str]:
    """At most ``limit`` (default MAX_MARKS) of ``rows`` (a random sample, seed 0, in their original order) and the
    note saying so ("" when every row is kept). Statistics are computed elsewhere, from every row."""
    limit = MAX_MARKS if limit is None else limit
    if rows.height <= limit:
        return rows, ""
    kept = rows.with_row_index("_i").sample(limit, seed=0).sort("_i").drop("_i")
    return kept, (f"Drawn: a random sample of {limit:,} of the {rows.height:,} {what} (seed 0), to keep the page "
                  "light; every statistic uses them all.")


def thin(frame: pl.DataFrame, x: str, by: list[str], most: int = CURVE_POINTS) -> pl.DataFrame:
    """Each ``by`` group's rows at no more than ``most`` values of ``x``, evenly spaced in rank (first and last
    kept), so a curve keeps its shape at a bounded number of points. Cost: one sort and a window pass."""
    if frame.is_empty():
        return frame
    rank = pl.col(x).rank("dense").over(by) - 1
    count = pl.col(x).n_unique().over(by)
    step = pl.max_horizontal(count / most, pl.lit(1.0))
    # rank i is kept when it is the first rank at or after a multiple of step, or the last one
    keep = ((rank / step).floor() != ((rank - 1) / step).floor()) | (rank == count - 1) | (rank == 0)
    return frame.filter(keep)


def curve_points(n_curves: int) -> int:
    """Points each of ``n_curves`` curves of one chart keeps: MAX_MARKS in all (each point is a record of the page's
    data), at least 20 a curve, at most CURVE_POINTS."""
    return max(20, min(CURVE_POINTS, MAX_MARKS // max(n_curves, 1)))


def with_note(chart: alt.TopLevelMixin, *notes: str) -> alt.TopLevelMixin:
    """``chart`` carrying what it drew instead of every row (usermeta "note"; the page adds it to the caption)."""
    text = " ".join(n for n in notes if n)
    return chart.properties(usermeta={"note": text}) if text else chart


def family_rows(df: pl.DataFrame, family: str, final: bool = True) -> pl.DataFrame:
    """Status-"ok" rows of one family (only final checkpoints unless final=False)."""
    if "family" not in df.columns:
        return df.clear()
    rows = ok_rows(final_rows(df) if final else df)
    return rows.filter(pl.col("family") == family)


def scale_for(values: pl.Series) -> alt.Scale:
    """Log scale when every value is positive, else linear."""
    return alt.Scale(type="log") if values.len() and values.min() > 0 else alt.Scale(type="linear", zero=False)


def series(rows: pl.DataFrame, extra: tuple[str, ...] = ()) -> pl.Expr:
    """Line/colour label: the regime, prefixed by the block when there are several, plus `extra` columns that
    vary (e.g. "factor=0.5"), so settings that differ are never averaged together."""
    parts = [pl.col("block")] if "block" in rows.columns and rows["block"].n_unique() > 1 else []
    parts += [pl.col("regime")]
    parts += [pl.lit(f"{c}=") + pl.col(c).cast(pl.String)
              for c in extra if c in rows.columns and rows[c].n_unique() > 1]
    return pl.concat_str(parts, separator=", ", ignore_nulls=True)


def series_title(rows: pl.DataFrame, extra: tuple[str, ...] = ()) -> str:
    """What a ``series`` label is made of, for its legend: "block, regime, lr" (the parts that vary)."""
    parts = ["block"] if "block" in rows.columns and rows["block"].n_unique() > 1 else []
    return ", ".join([*parts, "regime", *(c for c in extra if c in rows.columns and rows[c].n_unique() > 1)])


def _long_metric(rows: pl.DataFrame, metric: str, index: list[str]) -> pl.DataFrame:
    """rows -> index + rho + value; SAM-sharpness is spread over its radii when sam_sharpness_by_rho exists."""
    if metric == "sam_sharpness" and BY_RHO in present(rows, (BY_RHO,)):
        return sam_long(rows, index)
    if metric not in present(rows, (metric,)):
        return pl.DataFrame()
    return rows.select(*index, rho=pl.lit(None, pl.Float64), value=pl.col(metric)).drop_nulls("value")


def _facet_by_rho(chart: alt.Chart, long: pl.DataFrame) -> alt.Chart:
    """Facet by SAM radius when there are several, each with its own y scale, two panels a row (the page
    is ~1100 px wide)."""
    if long["rho"].n_unique() > 1:
        facet = alt.Facet("rho:O", title="perturbation radius rho")
        return chart.facet(facet=facet, columns=2).resolve_scale(y="independent")
    return chart


def functions_sharpness_vs_step(df: pl.DataFrame, metric: str = "sam_sharpness") -> alt.Chart | None:
    """Family A: mean over seeds of `metric` against training step (log x, step 0 left out), one line per
    target function; faceted by radius for SAM-sharpness measured at several rhos."""
    rows = family_rows(df, "functions", final=False)
    if rows.is_empty() or "step" not in rows.columns:
        return None
    rows = rows.filter(pl.col("step") >= 1).with_columns(regime=series(rows))
    long = _long_metric(rows, metric, ["task", "regime", "seed", "step"])
    if long.is_empty():
        return None
    mean = long.group_by("task", "regime", "step", "rho").agg(pl.col("value").mean()).sort("step")
    mean = thin(mean, "step", ["task", "regime", "rho"], most=60)
    faceted = mean["rho"].n_unique() > 1
    encoding = dict(
        x=alt.X("step:Q", scale=alt.Scale(type="log"), title="training step (log)"),
        y=alt.Y("value:Q", scale=scale_for(mean["value"]), title=axis_title(rows, metric, rho=not faceted)),
        color=alt.Color("task:N", title="target function"),
        tooltip=["task", "regime", "step", "rho", alt.Tooltip("value:Q", format=".4g")])
    if mean["regime"].n_unique() > 1:
        encoding["strokeDash"] = alt.StrokeDash("regime:N")
    width = panel_width(2 if faceted else 1)
    chart = alt.Chart(mean).mark_line(point=True).encode(**encoding).properties(width=width, height=HEIGHT)
    title = chart_title(rows, f"Family A: {metric_label(metric)} during training (mean over seeds)", _n_column(metric))
    return _facet_by_rho(chart, mean).properties(title=title)


def functions_complexity_vs_sharpness(df: pl.DataFrame, metric: str = "sam_sharpness") -> alt.Chart | None:
    """Family A: final `metric` against the target's measured complexity (log axes), one point per
    target function x seed; faceted by radius for SAM-sharpness measured at several rhos."""
    rows = family_rows(df, "functions")
    if "target_complexity" not in present(rows, ("target_complexity",)):
        return None
    long = _long_metric(rows, metric, ["trial_id", "task", "regime", "seed", "target_complexity"])
    if long.is_empty() or (long := long.drop_nulls("target_complexity")).is_empty():
        return None
    faceted = long["rho"].n_unique() > 1
    drawn, note = sample_points(long, "trial x radius points")
    chart = alt.Chart(drawn).mark_point(filled=True, size=60).encode(
        x=alt.X("target_complexity:Q", scale=scale_for(long["target_complexity"]),
                title=axis_title(rows, "target_complexity")),
        y=alt.Y("value:Q", scale=scale_for(long["value"]), title=axis_title(rows, metric, rho=not faceted)),
        color=alt.Color("task:N", title="target function"),
        tooltip=["trial_id", "task", "regime", "seed", "rho", alt.Tooltip("target_complexity:Q", format=".4g"),
                 alt.Tooltip("value:Q", format=".4g")],
    ).properties(width=panel_width(2 if faceted else 1), height=HEIGHT).interactive()
    return with_note(_facet_by_rho(chart, long), note).properties(
        title=chart_title(rows, f"Family A: final {metric_label(metric)} vs complexity of the target function",
                          _n_column(metric)))


def _mean_sem(long: pl.DataFrame, keys: list[str]) -> pl.DataFrame:
    """Mean over seeds with lo/hi = mean -/+ SEM (SEM = std(ddof=1)/sqrt(n); 0 width when n < 2)."""
    sem = (pl.col("value").std(ddof=1) / pl.len().sqrt()).fill_null(0.0)
    return (long.group_by(keys).agg(mean=pl.col("value").mean(), sem=sem, n=pl.len())
            .with_columns(lo=pl.col("mean") - pl.col("sem"), hi=pl.col("mean") + pl.col("sem")).sort(keys))


def _sweep_panel(data: pl.DataFrame, x: str, x_title: str) -> alt.LayerChart:
    """Mean line with points and mean +- SEM rules against x, one colour per series."""
    base = alt.Chart(data).encode(x=alt.X(f"{x}:Q", title=x_title, scale=alt.Scale(zero=False)),
                                  color=alt.Color("regime:N"))
    line = base.mark_line(point=True).encode(
        y=alt.Y("mean:Q", title=None, scale=alt.Scale(zero=False)),
        tooltip=[x, "regime", "label", alt.Tooltip("mean:Q", format=".4g"), alt.Tooltip("sem:Q", format=".2g"),
                 "n"])
    return alt.layer(line, base.mark_rule().encode(y="lo:Q", y2="hi:Q")).properties(width=panel_width(2), height=140)


def circles_sweep(df: pl.DataFrame, x: str = "factor") -> alt.Chart | None:
    """Family B: each sharpness metric (one row of panels each) and test accuracy (alongside) against
    `x` ("factor", or "label_noise" for the random-label variant): mean over seeds with SEM error bars.
    The factor sweep uses rows without label noise; None when `x` takes fewer than 2 values."""
    rows = family_rows(df, "circles")
    if x not in present(rows, (x,)):
        return None
    if x == "factor" and "label_noise" in rows.columns:
        rows = rows.filter(pl.col("label_noise").fill_null(0.0) == 0.0)
    rows = rows.drop_nulls(x).filter(pl.col(x).n_unique().over("block") > 1)  # blocks that sweep x
    metrics = present(rows, GEOMETRY)
    if rows.is_empty() or not metrics:
        return None
    rows = rows.with_columns(regime=series(rows, ("label_noise" if x == "factor" else "factor",)))
    long = rows.unpivot(on=present(rows, (*metrics, "test_acc")), index=[x, "regime", "seed"],
                        variable_name="metric", value_name="value").drop_nulls("value")
    long = long.with_columns(label=pl.col("metric").replace_strict(
        {m: axis_title(rows, m) for m in long["metric"].unique()}))
    stats = _mean_sem(long, [x, "regime", "metric", "label"])
    x_title = "factor (inner/outer radius; 1 = tightest)" if x == "factor" else "label noise p"
    header = alt.Header(labelAngle=0, labelAlign="left", labelLimit=260)
    sharp = _sweep_panel(stats.filter(pl.col("metric") != "test_acc"), x, x_title).facet(
        row=alt.Row("label:N", title=None, header=header)).resolve_scale(y="independent")
    acc = stats.filter(pl.col("metric") == "test_acc")
    if acc.is_empty():
        chart = sharp
    else:
        chart = alt.hconcat(sharp, _sweep_panel(acc, x, x_title).properties(title=axis_title(rows, "test_acc")))
    return chart.properties(
        title=chart_title(rows, f"Family B: sharpness and test accuracy vs {x} (mean +- SEM over seeds)"))


def images_vs_gap(df: pl.DataFrame, metrics: tuple[str, ...] = CLASSIFIER_SHARPNESS) -> alt.Chart | None:
    """Family C: each of `metrics` against the generalisation gap at the final checkpoint, one point per
    trial, coloured by regime (shape = model); one panel per metric (x task when several tasks)."""
    rows = family_rows(df, "images")
    metrics = present(rows, metrics)
    if not metrics or "gen_gap" not in present(rows, ("gen_gap",)):
        return None
    long = rows.unpivot(on=metrics, index=["trial_id", "task", "model", "regime", "seed", "gen_gap"],
                        variable_name="metric", value_name="value").drop_nulls(["value", "gen_gap"])
    titles = {m: axis_title(rows, m) for m in metrics}
    several = long["task"].n_unique() > 1
    long = long.with_columns(panel=pl.col("metric").replace_strict(titles)
                             + (pl.lit(" - ") + pl.col("task") if several else pl.lit("")))
    columns = min(3, long["panel"].n_unique())
    width = panel_width(columns)
    drawn, note = sample_points(long, "trial x metric points")
    chart = alt.Chart(drawn).mark_point(filled=True, size=50).encode(
        x=alt.X("gen_gap:Q", title=axis_title(rows, "gen_gap"), scale=alt.Scale(zero=False)),
        y=alt.Y("value:Q", title=None, scale=scale_for(long["value"])),
        color=alt.Color("regime:N"), shape=alt.Shape("model:N"),
        tooltip=["trial_id", "task", "model", "regime", "seed", alt.Tooltip("gen_gap:Q", format=".3g"),
                 alt.Tooltip("value:Q", format=".4g")],
    ).properties(width=width, height=HEIGHT).interactive()
    header = alt.Header(labelLimit=width + AXIS)
    names = ", ".join(metric_label(m) for m in metrics)
    faceted = chart.facet(facet=alt.Facet("panel:N", title=None, header=header), columns=columns)
    return with_note(faceted.resolve_scale(y="independent"), note).properties(title=chart_title(
        rows, f"Family C: {names} vs generalisation gap, by regime", _n_column(metrics[0])))


def _n_column(metric: str) -> str:
    """Curvature may be measured on fewer samples than the other geometry metrics."""
    return "hessian_n" if metric.startswith("hessian") else "measure_n"


def learning_curves(df: pl.DataFrame) -> alt.Chart | None:
    """Running training loss per epoch (the curve each trial's final checkpoint stores), mean over seeds,
    one line per regime (and varying setting), one panel per block with its own axes; log axes where the
    values allow. None when no row carries a curve."""
    rows = ok_rows(final_rows(df))
    if "train_loss_curve" not in present(rows, ("train_loss_curve",)):
        return None
    rows = rows.drop_nulls("train_loss_curve").with_columns(regime=series(rows, ("factor", "lr", "task")))
    legend_title = series_title(rows, ("factor", "lr", "task"))
    # One integer per line before exploding: a large study's curves hold millions of points, and each exploded
    # point carrying its block and regime strings cost ~2 GB at 13M points.
    lines = (rows.group_by("block", "regime", maintain_order=True).agg("train_loss_curve")
             .with_row_index("_line"))
    points = (lines.lazy().select("_line", "train_loss_curve").explode("train_loss_curve")
              .explode("train_loss_curve").unnest("train_loss_curve").drop_nulls("loss"))
    per_epoch = (points.group_by("_line", "epoch").agg(loss=pl.col("loss").mean(), n_seeds=pl.len())
                 .collect(engine="streaming"))  # in batches: the exploded points are never all held at once
    if per_epoch.is_empty():
        return None
    mean = (per_epoch.join(lines.select("_line", "block", "regime"), on="_line")
            .select("block", "regime", "epoch", "loss", "n_seeds").sort("block", "regime", "epoch"))
    n_lines = mean.select("block", "regime").n_unique()
    mean = thin(mean, "epoch", ["block", "regime"], most=curve_points(n_lines))
    log_x = mean["epoch"].max() > 100 and mean["epoch"].min() >= 1
    columns = min(2, mean["block"].n_unique())
    # Legends below each panel: labels such as "circles, base, factor=0.3, lr=0.01" get the panel's full width.
    legend = alt.Legend(orient="bottom", direction="vertical", columns=2 if columns == 1 else 1, labelLimit=0,
                        titleLimit=0)
    chart = alt.Chart(mean).mark_line().encode(
        x=alt.X("epoch:Q", scale=alt.Scale(type="log") if log_x else alt.Scale(zero=False), title="epoch"),
        y=alt.Y("loss:Q", scale=scale_for(mean["loss"]), title="training loss (running, train mode)"),
        color=alt.Color("regime:N", title=legend_title, legend=legend),
        tooltip=["block", alt.Tooltip("regime:N", title=legend_title), "epoch", alt.Tooltip("loss:Q", format=".4g"),
                 "n_seeds"],
    ).properties(width=panel_width(columns, legend=False), height=HEIGHT).interactive()
    note = ("Curves thinned for drawing to at most "
            f"{mean.group_by('block', 'regime').len()['len'].max()} evenly spaced epochs each."
            if mean.height < per_epoch.height else "")
    faceted = chart.facet(facet=alt.Facet("block:N", title=None), columns=columns).resolve_scale(
        x="independent", y="independent", color="independent")
    return with_note(faceted, note).properties(
        title=alt.Title("Learning curves: running training loss per epoch, mean over seeds", anchor="start"))
