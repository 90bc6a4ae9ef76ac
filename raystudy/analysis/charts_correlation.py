"""Charts of the rank correlations of ``correlation``: every sharpness metric's tau (and Psi) with each target
side by side, and sharpness against the complexity of the learned function. Each returns an alt.Chart, or None
when the rows it needs are absent. Pass the table already computed to skip computing it a second time."""
from __future__ import annotations

import altair as alt
import polars as pl

from raystudy.analysis.charts import HEIGHT, ROOM, panel_width, sample_points, scale_for, with_note
from raystudy.analysis.correlation import (COMPLEXITY_LABELS, complexity_rows, complexity_table, correlation_table,
                                           format_interval)
from raystudy.analysis.labels import chart_title, metric_label
from raystudy.analysis.results import final_rows, ok_rows

MAX_PANEL = 1000  # trials the complexity chart draws (in each of its dozen or more panels)
TAU = "tau: median over seeds of the within-seed tau (distribution-free 95% interval from 6 seeds)"
PSI = "Psi (granulated over hyperparameter axes)"


def _psi_parts(parts: list[dict] | None) -> str:
    """'lr +0.50 (6 groups); regime -1.00 (4 groups)' for a tooltip."""
    return "; ".join(f"{a['axis']} {format_interval(a['psi'], None, None)} ({a['n_groups']} groups)"
                     for a in parts or ())


def correlation_frame(table: pl.DataFrame) -> pl.DataFrame:
    """``correlation_table`` in long form for the chart: one row per block x metric x target x statistic (tau,
    Psi), with value, ci_low/ci_high (tau only), n_points, n_seeds and the per-axis psi as text."""
    keys = ("block", "metric", "target", "n_points", "n_seeds")
    parts = pl.Series([_psi_parts(p) for p in table["psi_axes"].to_list()], dtype=pl.String)
    taus = table.select(*keys, "ci_low", "ci_high", statistic=pl.lit(TAU), value="tau", psi_axes=pl.lit(""))
    psis = table.select(*keys, ci_low=pl.lit(None, pl.Float64), ci_high=pl.lit(None, pl.Float64),
                        statistic=pl.lit(PSI), value="psi", psi_axes=parts)
    long = pl.concat([taus, psis])
    # Blocks with some defined value, each with every target: Vega's facet grid fills cells in order, so a
    # missing (block, target) cell would shift the later ones (undefined values are simply not drawn).
    shown = long.filter(pl.col("value").is_not_null().any().over("block"))
    grid = shown.select("block").unique(maintain_order=True).join(long.select("target").unique(maintain_order=True),
                                                                  how="cross")
    long = grid.join(shown, on=["block", "target"], how="left", maintain_order="left").with_columns(
        metric=pl.col("metric").fill_null(pl.col("metric").drop_nulls().first().over("block")),
        statistic=pl.col("statistic").fill_null(TAU))
    return long.with_columns(target=pl.col("target").replace_strict({t: metric_label(t) for t in table["target"]}),
                             interval=pl.Series([format_interval(v, lo, hi) for v, lo, hi in
                                                 long.select("value", "ci_low", "ci_high").iter_rows()],
                                                dtype=pl.String))


def correlation_chart(df: pl.DataFrame, table: pl.DataFrame | None = None) -> alt.Chart | None:
    """Kendall tau (filled dot: median over seeds of the within-seed tau, its distribution-free 95% interval as a
    bar where there are 6 seeds or more) and Jiang's Psi (open diamond) of every sharpness metric (y) with every
    target (one column each), one row of panels per block; x in [-1, 1]. ``table``: the
    ``correlation_table(df)`` already computed (else computed here)."""
    table = correlation_table(df) if table is None else table
    if table.is_empty():
        return None
    long = correlation_frame(table)
    if long.is_empty() or long["value"].null_count() == long.height:
        return None
    x = alt.X("value:Q", scale=alt.Scale(domain=[-1, 1]), title="Kendall tau  (> 0: sharper = larger target)")
    y = alt.Y("metric:N", title=None, sort=list(dict.fromkeys(table["metric"])))
    tooltip = ["block", "metric", "target", "statistic", alt.Tooltip("value:Q", format=".3f"), "interval",
               "n_points", "n_seeds", alt.Tooltip("psi_axes:N", title="psi per axis")]
    shape = alt.Shape("statistic:N", title=None, scale=alt.Scale(domain=[TAU, PSI], range=["circle", "diamond"]),
                      legend=alt.Legend(orient="bottom", labelLimit=400))
    bars = alt.Chart().mark_rule(strokeWidth=2, color="#4c78a8").encode(x="ci_low:Q", x2="ci_high:Q", y=y)
    fill = alt.Fill("statistic:N", scale=alt.Scale(domain=[TAU, PSI], range=["#4c78a8", "white"]), legend=None)
    dots = alt.Chart().mark_point(size=70, color="#4c78a8").encode(x=x, y=y, shape=shape, fill=fill,
                                                                   tooltip=tooltip)
    zero = alt.Chart().mark_rule(color="#999", strokeDash=[4, 3]).encode(x=alt.datum(0))
    # One row of panels per block, each sharing its metric axis across its targets, so the metric names (up to
    # ~230 px) are drawn once at the left and the targets share what is left of the column.
    n_targets = long["target"].n_unique()
    width = int(max(90, (ROOM - 240) / n_targets - 12))
    targets = [metric_label(t) for t in dict.fromkeys(table["target"])]
    header = alt.Header(labelLimit=width, labelFontWeight="bold")
    blocks = []
    for block in long["block"].unique(maintain_order=True).to_list():
        mine = long.filter(pl.col("block") == block)
        panel = alt.layer(zero, bars, dots, data=mine).properties(width=width, height=18 * mine["metric"].n_unique())
        blocks.append(panel.facet(column=alt.Column("target:N", title=None, sort=targets, header=header),
                                  spacing=10).properties(title=alt.Title(f"block {block}", anchor="start",
                                                                         fontSize=12)))
    chart = alt.vconcat(*blocks, spacing=25) if len(blocks) > 1 else blocks[0]
    rows = ok_rows(final_rows(df))
    return chart.properties(
        title=chart_title(rows, "Does sharpness predict generalisation and safety? Kendall tau and Psi at the "
                                "final checkpoint, per block"))


def _complexity_panel(data: pl.DataFrame, names: dict[str, str], label: str, column: str, measure: str,
                      stats: pl.DataFrame, width: int) -> alt.Chart:
    """One sharpness metric against one complexity measure, one point per drawn trial (``data``, shared by every
    panel, its columns renamed by ``names`` to plain field names), coloured by block; the title gives each
    block's tau (``stats``: the complexity_table rows of this metric and measure)."""
    x, y = names[measure], names[column]
    present_xy = data.drop_nulls([x, y])
    title = "tau " + "; ".join(f"{r['block']} {format_interval(r['tau'], r['ci_low'], r['ci_high'])}"
                               for r in stats.iter_rows(named=True))
    return alt.Chart().mark_point(filled=True, size=40, opacity=0.8).encode(
        x=alt.X(f"{x}:Q", scale=scale_for(present_xy[x]), title=COMPLEXITY_LABELS.get(measure, measure)),
        y=alt.Y(f"{y}:Q", scale=scale_for(present_xy[y]), title=label),
        color=alt.Color("group:N", title="family / block"),
        tooltip=["trial_id", "seed", "regime", alt.Tooltip("group:N", title="family / block"),
                 alt.Tooltip(f"{x}:Q", title=measure, format=".4g"), alt.Tooltip(f"{y}:Q", title=label, format=".4g")],
    ).transform_filter(f"isValid(datum.{x}) && isValid(datum.{y})").properties(
        width=width, height=HEIGHT * 0.8, title=alt.Title(title, fontSize=11, fontWeight="normal", limit=width + 60))


def complexity_chart(df: pl.DataFrame, table: pl.DataFrame | None = None) -> alt.Chart | None:
    """Every sharpness metric (one row of panels each) against each complexity measure present (one column
    each: input-gradient norm, linear-region density, target complexity), one point per final status-ok trial,
    coloured by family / block, log axes where every value is positive; each panel's title states each block's
    Kendall tau (median within-seed tau, with its interval from 6 seeds): blocks are never pooled into one tau.
    ``table``: ``complexity_table(df)`` if computed. None when no complexity measure (or no sharpness metric
    beside it) is present."""
    table = complexity_table(df) if table is None else table
    if table.is_empty():
        return None
    rows, metrics, _ = complexity_rows(df)
    rows = rows.with_columns(pl.col(c).cast(pl.String) if c in rows.columns else pl.lit(None, pl.String).alias(c)
                             for c in ("trial_id", "regime", "family", "block"))
    # One dataset for every panel: the drawn trials with each metric and measure as a plain field (f0, f1, ...:
    # column names such as "_sam_0.005" would read as nested fields in Vega).
    used = list(dict.fromkeys([*table["measure"], *table["column"]]))
    names = {c: f"f{i}" for i, c in enumerate(used)}
    group = pl.concat_str([pl.col("family"), pl.col("block")], separator=" / ", ignore_nulls=True)
    data = rows.filter(pl.any_horizontal(pl.col(used).is_not_null())).select(
        "trial_id", "seed", "regime", group=group, **{names[c]: pl.col(c) for c in used})
    drawn, note = sample_points(data, "trials", limit=MAX_PANEL)
    lines = []
    width = panel_width(table["measure"].n_unique())
    for label, column in metrics:
        mine = table.filter(pl.col("column") == column)
        panels = [_complexity_panel(drawn, names, label, column, measure, part, width)
                  for (measure,), part in mine.group_by("measure", maintain_order=True)]
        if panels:
            lines.append(panels)
    chart = (alt.vconcat(*(alt.hconcat(*p) for p in lines), data=drawn) if len(lines) > 1
             else alt.hconcat(*lines[0], data=drawn))
    return with_note(chart, note).properties(title=chart_title(
        rows, "Sharpness against the complexity of the learned function (final checkpoints; tau per block)"))
