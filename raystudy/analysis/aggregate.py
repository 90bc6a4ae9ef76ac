"""Mean and standard error over seeds of every metric at the final checkpoint (docs/PROTOCOL.md)."""
from __future__ import annotations

import math

import polars as pl

from raystudy.analysis.results import (HYPERPARAMETERS, REGIME_HYPERPARAMETERS, SCALAR_METRICS, final_rows, ok_rows,
                                       present)

CONFIG_KEYS = ("block", "task", "model", "regime")


def varying_hyperparameters(df: pl.DataFrame) -> list[str]:
    """Hyperparameter columns taking more than one value (null counts as one) within some block."""
    cols = [c for c in HYPERPARAMETERS if c in df.columns]
    if not cols or df.is_empty():
        return []
    by = ["block"] if "block" in df.columns else []
    counts = df.group_by(by).agg(pl.col(cols).n_unique()) if by else df.select(pl.col(cols).n_unique())
    return [c for c in cols if counts[c].max() > 1]


def comparison_keys(df: pl.DataFrame) -> tuple[list[str], list[str]]:
    """(configuration keys, condition keys) for comparing regimes.

    A configuration is block x task x model x every varying hyperparameter the regime does not set (lr,
    factor, ...); a condition is the regime plus the varying hyperparameters it sets (sam_rho, weight_decay,
    augment). Regimes are compared with base within one configuration.
    """
    varying = varying_hyperparameters(df)
    config = [c for c in ("block", "task", "model") if c in df.columns]
    config += [c for c in varying if c not in REGIME_HYPERPARAMETERS]
    return config, ["regime", *(c for c in varying if c in REGIME_HYPERPARAMETERS)]


def config_label(keys: list[str]) -> pl.Expr:
    """'block / task / model, lr=0.01, factor=0.3' from the configuration keys (null hyperparameters left out)."""
    names = [pl.col(c).cast(pl.String) for c in keys if c in ("block", "task", "model")]
    hps = [pl.lit(f"{c}=") + pl.col(c).cast(pl.String) for c in keys if c not in ("block", "task", "model")]
    return pl.concat_str([pl.concat_str(names, separator=" / "), *hps], separator=", ", ignore_nulls=True)


def condition_label(rows: pl.DataFrame, config: list[str], condition: list[str]) -> pl.Expr:
    """'sam' or 'sam, sam_rho=0.05': the regime plus the condition keys that vary within one regime of one
    configuration (a SAM-rho sweep), so different settings are never merged under one name."""
    counts = rows.group_by([*config, "regime"]).agg(pl.col(c).n_unique() for c in condition if c != "regime")
    extra = [c for c in condition if c != "regime" and counts[c].max() > 1]
    parts = [pl.lit(f"{c}=") + pl.col(c).cast(pl.String) for c in extra]
    return pl.concat_str([pl.col("regime"), *parts], separator=", ", ignore_nulls=True)


def per_seed_means(rows: pl.DataFrame, keys: list[str], metrics: list[str]) -> pl.DataFrame:
    """One row per keys x seed: the metric means (duplicated trials of one seed are averaged)."""
    return rows.group_by([*keys, "seed"]).agg(pl.col(metrics).mean())


def summary_table(df: pl.DataFrame, metrics: list[str] | None = None) -> pl.DataFrame:
    """Per configuration at the final checkpoint: n_seeds, and `<metric>_mean`, `<metric>_sem` per metric.

    A configuration is block x task x model x regime x every hyperparameter that varies within a block.
    Only rows with status "ok" count; `n_nonfinite` counts final rows that diverged. A seed counts once: two
    trials of one seed in a configuration (a setting that is not a hyperparameter column) are averaged first.
    SEM is std(ddof=1) / sqrt(n) over the seeds that have the metric, null when fewer than 2 do.
    `metrics` defaults to every scalar metric present. Cost: three group-bys (counts, per seed, per configuration).
    """
    final = final_rows(df)
    if final.is_empty():
        return pl.DataFrame()
    metrics = metrics if metrics is not None else present(ok_rows(final), SCALAR_METRICS)
    keys = [c for c in CONFIG_KEYS if c in final.columns] + varying_hyperparameters(df)
    ok = pl.col("status") == "ok" if "status" in final.columns else pl.lit(True)
    counts = final.group_by(keys).agg(pl.col("seed").filter(ok).n_unique().alias("n_seeds"),
                                      (~ok).sum().alias("n_nonfinite"))
    aggs = []
    for m in metrics:
        values = pl.col(m).drop_nulls()
        aggs += [values.mean().alias(f"{m}_mean"),
                 pl.when(values.count() >= 2).then(values.std(ddof=1) / values.count().sqrt())
                 .alias(f"{m}_sem")]
    stats = per_seed_means(final.filter(ok), keys, metrics).group_by(keys).agg(aggs)
    return counts.join(stats, on=keys, how="left", nulls_equal=True).sort(keys, nulls_last=True)


def format_mean_sem(mean: float | None, sem: float | None) -> str:
    """'mean (sem)' with 4 and 2 significant digits; 'mean' alone without a SEM; '-' without a mean."""
    if mean is None or not math.isfinite(mean):
        return "-"
    if sem is None or not math.isfinite(sem):
        return f"{mean:.4g}"
    return f"{mean:.4g} ({sem:.2g})"


def format_summary(table: pl.DataFrame) -> pl.DataFrame:
    """The summary table with each metric's mean/sem pair merged into one 'mean (sem)' string column.

    Metric columns whose mean is null everywhere are dropped, so a block's table shows only what it measured.
    """
    metrics = [c.removesuffix("_mean") for c in table.columns
               if c.endswith("_mean") and table[c].null_count() < table.height]
    keys = [c for c in table.columns if not c.endswith(("_mean", "_sem"))]
    return table.select(keys).with_columns(
        pl.Series(m, [format_mean_sem(a, b) for a, b in zip(table[f"{m}_mean"], table[f"{m}_sem"])],
                  dtype=pl.String)
        for m in metrics)
