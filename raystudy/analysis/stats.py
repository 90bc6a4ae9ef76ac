"""Each regime against "base", paired by seed (docs/PROTOCOL.md, "Statistics as reported").

One-sided Wilcoxon signed-rank test on the per-seed differences (regime - base), and the matched-pairs
rank-biserial correlation as effect size. All regimes of a seed start from the same initial weights, so
the seed is the pair. Benjamini-Yekutieli correction runs within one statistical family: one regime vs
base in one configuration, one metric group — safety (ECE, corruption accuracy, disagreement),
sharpness (Fisher-Rao, relative flatness, SAM-sharpness) or Hessian (lambda_max, trace), as
``raystudy.schema`` groups them. Performance metrics (accuracy, gap) are reported uncorrected.
"""
from __future__ import annotations

import numpy as np
import polars as pl
from scipy import stats

from raystudy.analysis.aggregate import comparison_keys
from raystudy.analysis.results import final_rows, ok_rows, present
from raystudy.schema import HESSIAN, PERFORMANCE, SAFETY, SHARPNESS

ALTERNATIVE = {"gen_gap": "less", "ece": "less", "disagreement": "less", "test_acc": "greater",
               "corruption_acc": "greater", **{m: "greater" for m in SHARPNESS + HESSIAN}}
GROUP = {**{m: "performance" for m in PERFORMANCE}, **{m: "safety" for m in SAFETY},
         **{m: "sharpness" for m in SHARPNESS}, **{m: "hessian" for m in HESSIAN}}
CORRECTED_GROUPS = ("safety", "sharpness", "hessian")


def rank_biserial(differences: np.ndarray) -> float:
    """Matched-pairs rank-biserial correlation (R+ - R-) / (R+ + R-) over the non-zero differences.

    Ranks are of |d| (ties get their mean rank); +1 means every pair has regime > base, -1 the reverse.
    """
    d = np.asarray(differences, dtype=float)
    d = d[d != 0]
    ranks = stats.rankdata(np.abs(d))
    return float((ranks[d > 0].sum() - ranks[d < 0].sum()) / ranks.sum())


def paired_test(differences: np.ndarray, alternative: str) -> tuple[float, float, float] | None:
    """(statistic, p, effect) of a one-sided Wilcoxon signed-rank test on `differences`.

    statistic is scipy's (the sum of positive ranks for a one-sided test); zero differences are dropped
    (zero_method "wilcox"). Returns None when fewer than 2 differences are non-zero.
    """
    d = np.asarray(differences, dtype=float)
    if np.count_nonzero(d) < 2:
        return None
    res = stats.wilcoxon(d, alternative=alternative, zero_method="wilcox")
    return float(res.statistic), float(res.pvalue), rank_biserial(d)


def _per_seed(rows: pl.DataFrame, keys: list[str], metrics: list[str]) -> pl.DataFrame:
    """One row per keys x seed: the metric means (duplicated trials of one seed are averaged)."""
    return rows.group_by([*keys, "seed"]).agg(pl.col(metrics).mean())


OPPOSITE = {"less": "greater", "greater": "less"}


def compare_to_base(df: pl.DataFrame, metrics: list[str] | None = None, reverse: bool = False) -> pl.DataFrame:
    """Every non-base regime against base within the same block, task, model and hyperparameters.

    Uses final, status-"ok" rows; pairs are seeds present in both. Returns one row per configuration x
    regime x metric with columns: the configuration keys, regime (and sam_rho / weight_decay / augment
    when they vary), metric, group, alternative ("less" for gen_gap, ece, disagreement; "greater" for
    accuracies and sharpness; ``reverse`` tests the opposite direction, to tell "not shown" from "shown
    the other way"), n_pairs, mean_diff (mean over pairs of regime - base), statistic, p, p_adj, correction,
    effect (rank-biserial, positive = regime larger). p is null when fewer than 2 differences are non-zero;
    metrics with no pair are left out. p_adj is Benjamini-Yekutieli over the metrics of one group
    ("safety", "sharpness" or "hessian") for one regime (condition) vs base in one configuration;
    performance metrics are reported uncorrected (p_adj = p, correction "none"). Cost: one scipy test per row.
    """
    rows = ok_rows(final_rows(df))
    metrics = metrics if metrics is not None else present(rows, tuple(ALTERNATIVE))
    if rows.is_empty() or not metrics or "regime" not in rows.columns:
        return pl.DataFrame()
    pair_keys, cond_keys = comparison_keys(df)
    base = _per_seed(rows.filter(pl.col("regime") == "base"), pair_keys, metrics)
    other = _per_seed(rows.filter(pl.col("regime") != "base"), pair_keys + cond_keys, metrics)
    pairs = other.join(base, on=[*pair_keys, "seed"], suffix="_base", nulls_equal=True)

    out = []
    for group in pairs.partition_by(pair_keys + cond_keys, maintain_order=True):
        config = group.select(pair_keys + cond_keys).row(0, named=True)
        for m in metrics:
            both = group.select(m, f"{m}_base").drop_nulls()
            if both.is_empty():  # metric not measured in this configuration
                continue
            d = (both[m] - both[f"{m}_base"]).to_numpy()
            alternative = OPPOSITE[ALTERNATIVE[m]] if reverse else ALTERNATIVE[m]
            result = paired_test(d, alternative)
            statistic, p, effect = result if result else (None, None, None)
            out.append({**config, "metric": m, "group": GROUP[m], "alternative": alternative,
                        "n_pairs": both.height, "mean_diff": float(d.mean()), "statistic": statistic, "p": p,
                        "effect": effect})
    if not out:
        return pl.DataFrame()
    table = pl.DataFrame(out, infer_schema_length=None).with_columns(
        pl.col("mean_diff", "statistic", "p", "effect").cast(pl.Float64))
    return _adjust(table, pair_keys + cond_keys).sort([*pair_keys, *cond_keys], nulls_last=True,
                                                      maintain_order=True)


def _adjust(table: pl.DataFrame, family_keys: list[str]) -> pl.DataFrame:
    """Add p_adj (Benjamini-Yekutieli within configuration x regime x corrected group) and a correction column."""
    table = table.with_row_index("_i")
    adjusted: dict[int, float] = {}
    tested = table.filter(pl.col("p").is_not_null() & pl.col("group").is_in(CORRECTED_GROUPS))
    for family in tested.partition_by([*family_keys, "group"]):
        p_adj = stats.false_discovery_control(family["p"].to_numpy(), method="by")
        adjusted.update(zip(family["_i"].to_list(), p_adj.tolist()))
    corrected = pl.col("group").is_in(CORRECTED_GROUPS)
    by_p = pl.col("_i").replace_strict(adjusted, default=None, return_dtype=pl.Float64)
    table = table.with_columns(p_adj=pl.when(corrected).then(by_p).otherwise(pl.col("p")),
                               correction=pl.when(corrected).then(pl.lit("BY")).otherwise(pl.lit("none")))
    return table.drop("_i").select(pl.exclude("effect"), "effect")
