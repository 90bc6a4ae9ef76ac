"""Each regime against "base", paired by seed (docs/PROTOCOL.md, "Statistics as reported").

Per-seed metrics: the exact Wilcoxon signed-rank test of the differences regime - base (``inference.
sign_flip_test``: every sign pattern enumerated, ties and zeros handled exactly), with the matched-pairs
rank-biserial correlation as effect size. All regimes of a seed start from the same initial weights, so the
seed is the pair. Disagreement and JSD are not per-seed quantities (each seed's value is a mean over pairs it
shares with the other seeds), so they are never tested per seed: ``analysis.consistency.consistency_tests``
tests them on the pairs themselves and hands the result in as ``pair_tests``.

Benjamini-Yekutieli correction (the protocol's) runs within one statistical family: one regime vs base in one
configuration, one metric group — safety (ECE, corruption accuracy, disagreement), sharpness (Fisher-Rao,
relative flatness, SAM-sharpness, adaptive sharpness) or Hessian (lambda_max, trace), as ``raystudy.schema``
groups them. Performance metrics (accuracy, gap) are reported uncorrected. The verdicts do not use p_adj: they
combine the raw p-values of the metrics a study declared (``analysis.verdicts``).
"""
from __future__ import annotations

import numpy as np
import polars as pl
from scipy import stats

from raystudy.analysis.aggregate import comparison_keys, per_seed_means
from raystudy.analysis.inference import sign_flip_test
from raystudy.analysis.results import final_rows, ok_rows, present
from raystudy.schema import HESSIAN, PERFORMANCE, SAFETY, SHARPNESS

ALTERNATIVE = {"gen_gap": "less", "ece": "less", "disagreement": "less", "jsd": "less", "test_acc": "greater",
               "corruption_acc": "greater", **{m: "greater" for m in SHARPNESS + HESSIAN}}
# The protocol's Benjamini-Yekutieli families: safety is ECE, corruption accuracy and disagreement. JSD, reported
# beside disagreement, is a second reading of the same consistency, not a fourth safety test: in the family it
# would tighten the other three's correction (BY over 4 p-values, not 3), so it stands apart, uncorrected.
GROUP = {**{m: "performance" for m in PERFORMANCE}, **{m: "safety" for m in SAFETY}, "jsd": "consistency",
         **{m: "sharpness" for m in SHARPNESS}, **{m: "hessian" for m in HESSIAN}}
CORRECTED_GROUPS = ("safety", "sharpness", "hessian")
PAIRWISE = ("disagreement", "jsd")  # tested on pairs of models (consistency_tests), never per seed
TABLE_SCHEMA = {"metric": pl.String, "group": pl.String, "alternative": pl.String, "n_pairs": pl.Int64,
                "n_higher": pl.Int64, "n_lower": pl.Int64, "mean_diff": pl.Float64, "effect": pl.Float64, "p": pl.Float64, "p_reverse": pl.Float64,
                "method": pl.String}


OPPOSITE = {"less": "greater", "greater": "less"}


def compare_to_base(df: pl.DataFrame, metrics: list[str] | None = None,
                    pair_tests: pl.DataFrame | None = None) -> pl.DataFrame:
    """Every non-base regime against base within the same block, task, model and hyperparameters.

    Uses final, status-"ok" rows; pairs are seeds present in both. Returns one row per configuration x regime
    x metric with columns: the configuration keys, regime (and sam_rho / weight_decay / augment when they
    vary), metric, group, alternative (the direction the protocol tests: "less" for gen_gap, ece, disagreement,
    jsd; "greater" for accuracies and sharpness), n_pairs, n_higher / n_lower (seeds where the regime is above /
    below base), mean_diff (mean over pairs of regime - base), effect
    (rank-biserial, positive = regime larger), p (exact one-sided Wilcoxon in the ``alternative`` direction),
    p_reverse (the other direction: tells "not shown" from "shown the other way"), method, p_adj and
    correction. p is null when no difference is non-zero; metrics with no pair are left out.

    Disagreement and JSD come from ``pair_tests`` (``consistency.consistency_tests``: same keys, metric, n_pairs
    = seeds, mean_diff = mean pairwise value of regime minus base, p, p_reverse) and are left out without it.
    p_adj is Benjamini-Yekutieli over the metrics of one group for one regime vs base in one configuration
    (safety: ece, corruption_acc, disagreement; sharpness; hessian); performance metrics and jsd (group
    "consistency") are reported uncorrected (p_adj = p, correction "none"). Cost: one exact test (2^n sign
    patterns for n seeds) per row.
    """
    rows = ok_rows(final_rows(df))
    metrics = metrics if metrics is not None else present(rows, tuple(ALTERNATIVE))
    per_seed = [m for m in metrics if m not in PAIRWISE]
    if rows.is_empty() or not metrics or "regime" not in rows.columns:
        return pl.DataFrame()
    pair_keys, cond_keys = comparison_keys(df)
    out = []
    if per_seed:
        base = per_seed_means(rows.filter(pl.col("regime") == "base"), pair_keys, per_seed)
        other = per_seed_means(rows.filter(pl.col("regime") != "base"), pair_keys + cond_keys, per_seed)
        # In seed order: past 14 seeds the sign-flip test is Monte Carlo, whose draws apply in row order.
        pairs = other.join(base, on=[*pair_keys, "seed"], suffix="_base", nulls_equal=True).sort("seed")
        for group in pairs.partition_by(pair_keys + cond_keys, maintain_order=True):
            config = group.select(pair_keys + cond_keys).row(0, named=True)
            for m in per_seed:
                both = group.select(m, f"{m}_base").drop_nulls()
                if both.is_empty():  # metric not measured in this configuration
                    continue
                d = (both[m] - both[f"{m}_base"]).to_numpy()
                test = sign_flip_test(d)
                ahead, behind = ((test.p_greater, test.p_less) if ALTERNATIVE[m] == "greater"
                                 else (test.p_less, test.p_greater))
                tested = np.count_nonzero(d) > 0
                out.append({**config, "metric": m, "group": GROUP[m], "alternative": ALTERNATIVE[m],
                            "n_pairs": both.height, "n_higher": int((d > 0).sum()), "n_lower": int((d < 0).sum()),
                            "mean_diff": float(d.mean()),
                            "effect": float(test.statistic[0]) if tested else None,
                            "p": float(ahead[0]) if tested else None,
                            "p_reverse": float(behind[0]) if tested else None,
                            "method": "exact Wilcoxon signed-rank over seeds"})
    if pair_tests is not None and not pair_tests.is_empty():
        wanted = pair_tests.filter(pl.col("metric").is_in([m for m in metrics if m in PAIRWISE]))
        for r in wanted.iter_rows(named=True):
            out.append({**{k: r.get(k) for k in pair_keys + cond_keys}, "metric": r["metric"],
                        "group": GROUP[r["metric"]], "alternative": ALTERNATIVE[r["metric"]],
                        "n_pairs": r["n_pairs"], "n_higher": None, "n_lower": None, "mean_diff": r["mean_diff"],
                        "effect": None, "p": r["p"],
                        "p_reverse": r["p_reverse"], "method": r["method"]})
    if not out:
        return pl.DataFrame()
    schema = {**{k: rows.schema[k] for k in pair_keys + cond_keys}, **TABLE_SCHEMA}
    table = pl.DataFrame(out, schema=schema)
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
    return table.drop("_i").select(pl.exclude("effect", "method"), "effect", "method")
