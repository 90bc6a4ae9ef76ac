"""The paper's three claims, each judged from the stored rows and stated in words with its numbers.

A (functions): sharpness rises with the complexity of the target, among equally well-fit solutions.
B (circles): a tighter decision boundary (larger factor) gives a sharper minimum at 100% test accuracy.
C (images): regularised models sit in sharper minima than base yet are safer (paired by seed).

Each verdict is "supported", "contradicted" or "inconclusive (why)". A and B use Kendall's tau with a
95% bootstrap interval over seeds (seeds are resampled whole, since the points of one seed share its
initialisation); C uses the paired Wilcoxon tests of ``stats.compare_to_base`` with Benjamini-Yekutieli
correction, and the test in the opposite direction to tell "not shown" from "shown the other way".
A verdict never claims more than the seeds allow: with fewer than ``MIN_SEEDS`` seeds no interval is
drawn, and a paired test whose smallest attainable p cannot reach ``ALPHA`` says so.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl
from scipy import stats

from raystudy.analysis.labels import metric_label
from raystudy.analysis.results import REGIME_HYPERPARAMETERS, final_rows, ok_rows, present
from raystudy.analysis.stats import compare_to_base
from raystudy.schema import HESSIAN, SAFETY, SHARPNESS

ALPHA = 0.05
MIN_SEEDS = 3  # a bootstrap over 2 seeds has 3 distinct resamples: no interval worth the name
FIT_TOLERANCE = 0.05  # family A: train MSE / target variance above this = the target was not fitted
N_BOOT = 2000


@dataclass(frozen=True)
class Verdict:
    """One claim: ``outcome`` is supported | contradicted | inconclusive; ``why`` says it in words with
    the numbers; ``table`` holds the numbers behind it (one row per metric, or per regime x metric)."""
    family: str
    claim: str
    outcome: str
    why: str
    table: pl.DataFrame


def kendall_bootstrap(rows: pl.DataFrame, x: str, y: str, n_boot: int = N_BOOT, seed: int = 0
                      ) -> tuple[float, float, float]:
    """Kendall's tau-b between columns x and y of ``rows``, and a 95% percentile interval from ``n_boot``
    resamples of whole seeds (all rows of a drawn seed enter together; see ``resampled_taus``). (nan, nan,
    nan) when tau is undefined (fewer than 2 distinct values). Deterministic for a given ``seed``; numpy's
    own generator. Cost: O(n^2) for n rows, then O(n_boot k^2) for k seeds."""
    tau = float(stats.kendalltau(rows[x].to_numpy(), rows[y].to_numpy()).statistic)
    if not np.isfinite(tau) or n_boot < 1:
        return tau if np.isfinite(tau) else float("nan"), float("nan"), float("nan")
    k = rows["seed"].n_unique()
    drawn = np.random.default_rng(seed).integers(0, k, size=(n_boot, k))
    taus = resampled_taus(rows, x, y, np.stack([np.bincount(d, minlength=k) for d in drawn]))
    taus = taus[np.isfinite(taus)]
    lo, hi = (np.percentile(taus, [2.5, 97.5]) if taus.size else (float("nan"),) * 2)
    return tau, float(lo), float(hi)


def resampled_taus(rows: pl.DataFrame, x: str, y: str, counts: np.ndarray) -> np.ndarray:
    """Tau-b of each resample of whole seeds: ``counts[b, s]`` copies of the rows of the s-th seed (seeds in
    sorted order) in resample b. Exact: a resample's tau-b is sum(sgn dx sgn dy) / sqrt(#(dx != 0)
    #(dy != 0)) over its pairs, and each pair joins rows of two drawn seeds, so three k x k tables of
    per-seed-pair sums give it as w^T C w / sqrt(w^T X w w^T Y w) for counts w. NaN where undefined."""
    xv, yv = rows[x].to_numpy().astype(float), rows[y].to_numpy().astype(float)
    _, group = np.unique(rows["seed"].to_numpy(), return_inverse=True)
    one_hot = np.eye(counts.shape[1])[group]  # (n, k)
    sx, sy = np.sign(xv[:, None] - xv[None, :]), np.sign(yv[:, None] - yv[None, :])
    w = np.asarray(counts, dtype=float)
    c, nx, ny = (np.einsum("bs,st,bt->b", w, one_hot.T @ m @ one_hot, w)
                 for m in (sx * sy, (sx != 0).astype(float), (sy != 0).astype(float)))
    with np.errstate(invalid="ignore", divide="ignore"):
        return c / np.sqrt(nx * ny)


def _tau_table(rows: pl.DataFrame, x: str, metrics: list[tuple[str, str]]) -> pl.DataFrame:
    """One row per (label, column) metric: n points, n seeds, tau and its interval, and the reading."""
    out = []
    for label, column in metrics:
        r = rows.drop_nulls(column)
        n_seeds = r["seed"].n_unique()
        tau, lo, hi = kendall_bootstrap(r, x, column) if r.height >= 3 else (float("nan"),) * 3
        if n_seeds < MIN_SEEDS or not np.isfinite(lo):
            reading = "inconclusive"
        else:
            reading = "supported" if lo > 0 else "contradicted" if hi < 0 else "inconclusive"
        out.append({"metric": label, "n_points": r.height, "n_seeds": n_seeds, "tau": tau, "ci_low": lo,
                    "ci_high": hi, "reading": reading})
    return pl.DataFrame(out, schema={"metric": pl.String, "n_points": pl.Int64, "n_seeds": pl.Int64,
                                     "tau": pl.Float64, "ci_low": pl.Float64, "ci_high": pl.Float64,
                                     "reading": pl.String})


def _combine(table: pl.DataFrame, what: str) -> tuple[str, str]:
    """Outcome over metrics: supported / contradicted when every metric reads so, else inconclusive."""
    if table.is_empty():
        return "inconclusive", f"no {what} was measured"
    cells = [f"{r['metric']}: tau {r['tau']:.2f} [{r['ci_low']:.2f}, {r['ci_high']:.2f}]"
             if np.isfinite(r["tau"]) else f"{r['metric']}: tau undefined" for r in table.iter_rows(named=True)]
    numbers = "; ".join(cells)
    seeds = int(table["n_seeds"].min())
    readings = set(table["reading"])
    if seeds < MIN_SEEDS:
        return "inconclusive", (f"{seeds} seed(s): a bootstrap interval over seeds needs at least {MIN_SEEDS} "
                                f"({numbers})")
    if readings == {"supported"}:
        return "supported", f"every interval lies above 0 ({numbers})"
    if readings == {"contradicted"}:
        return "contradicted", f"every interval lies below 0 ({numbers})"
    return "inconclusive", f"not every {what} agrees or an interval includes 0 ({numbers})"


def _sharpness_metrics(rows: pl.DataFrame) -> list[tuple[str, str]]:
    """(label, column) of every sharpness metric in ``rows``; SAM-sharpness once per measured radius."""
    out = []
    if "sam_sharpness_by_rho" in present(rows, ("sam_sharpness_by_rho",)):
        rhos = sorted({e["rho"] for lst in rows["sam_sharpness_by_rho"].drop_nulls() for e in lst})
        out += [(f"SAM-sharpness rho={r:g}", f"_sam_{r:g}") for r in rhos]
    elif "sam_sharpness" in present(rows, ("sam_sharpness",)):
        out.append((metric_label("sam_sharpness"), "sam_sharpness"))
    return out + [(metric_label(m), m) for m in present(rows, [m for m in SHARPNESS + HESSIAN if m != "sam_sharpness"])]


def _with_rho_columns(rows: pl.DataFrame) -> pl.DataFrame:
    """SAM-sharpness at each radius as its own column ``_sam_<rho>``."""
    if "sam_sharpness_by_rho" not in present(rows, ("sam_sharpness_by_rho",)):
        return rows
    rhos = sorted({e["rho"] for lst in rows["sam_sharpness_by_rho"].drop_nulls() for e in lst})
    return rows.with_columns(
        pl.col("sam_sharpness_by_rho").list.eval(pl.element().filter(pl.element().struct.field("rho") == r)
                                                 .struct.field("mean")).list.first().alias(f"_sam_{r:g}")
        for r in rhos)


def verdict_functions(df: pl.DataFrame) -> Verdict | None:
    """Family A at the final checkpoint: tau(target complexity, each sharpness metric) over the (function,
    seed) points whose relative train MSE is at most FIT_TOLERANCE. None without family A rows."""
    rows = ok_rows(final_rows(df)).filter(pl.col("family") == "functions") if "family" in df.columns else df.clear()
    if rows.is_empty() or "target_complexity" not in present(rows, ("target_complexity",)):
        return None
    claim = "sharpness rises with the complexity of the target function, among equally well-fit solutions"
    excluded = ""
    if "target_variance" in present(rows, ("target_variance",)):
        rows = rows.with_columns(rel_mse=pl.col("train_loss") / pl.col("target_variance"))
    else:  # rows written before target_variance existed: the fit cannot be judged, so nothing is left out
        rows = rows.with_columns(rel_mse=pl.lit(0.0))
        excluded = "; fit not recorded (no target_variance): every target kept"
    unfit = rows.filter(pl.col("rel_mse").is_null() | (pl.col("rel_mse") > FIT_TOLERANCE))
    fit = _with_rho_columns(rows.filter(pl.col("rel_mse") <= FIT_TOLERANCE))
    table = _tau_table(fit, "target_complexity", _sharpness_metrics(fit))
    if not unfit.is_empty():
        worst = unfit.group_by("task").agg(pl.col("rel_mse").max()).sort("task")
        excluded += "; excluded as not fitted (relative train MSE > %g): %s" % (FIT_TOLERANCE, ", ".join(
            f"{t} ({'unknown' if v is None else f'worst seed {v:.3g}'})" for t, v in worst.iter_rows()))
    if fit["task"].n_unique() < 3:
        return Verdict("A", claim, "inconclusive",
                       f"only {fit['task'].n_unique()} target function(s) fitted: tau needs at least 3" + excluded,
                       table)
    outcome, why = _combine(table, "sharpness metric")
    return Verdict("A", claim, outcome, f"{why}; {fit['task'].n_unique()} functions{excluded}", table)


def functions_fit_table(df: pl.DataFrame) -> pl.DataFrame:
    """Family A at the final checkpoint, one row per target function (mean over seeds): its complexity, the
    relative train MSE (train MSE / target variance) and every sharpness metric, by increasing complexity."""
    rows = ok_rows(final_rows(df)).filter(pl.col("family") == "functions") if "family" in df.columns else df.clear()
    if rows.is_empty() or "target_complexity" not in present(rows, ("target_complexity",)):
        return pl.DataFrame()
    rows = _with_rho_columns(rows)
    if "target_variance" in present(rows, ("target_variance",)):
        rows = rows.with_columns(rel_train_mse=pl.col("train_loss") / pl.col("target_variance"))
    metrics = _sharpness_metrics(rows)
    cols = ["target_complexity", *present(rows, ("rel_train_mse",)), *(c for _, c in metrics)]
    out = rows.group_by("task").agg(pl.len().alias("n_seeds"), *(pl.col(c).mean() for c in cols))
    return out.rename({c: label for label, c in metrics}).sort("target_complexity")


def verdict_circles(df: pl.DataFrame) -> Verdict | None:
    """Family B at the final checkpoint: tau(factor, each sharpness metric) over runs at 100% test accuracy
    without label noise. None without a circles block that sweeps factor."""
    rows = ok_rows(final_rows(df)).filter(pl.col("family") == "circles") if "family" in df.columns else df.clear()
    if rows.is_empty() or "factor" not in present(rows, ("factor",)) or rows["factor"].n_unique() < 2:
        return None
    if "label_noise" in rows.columns:
        rows = rows.filter(pl.col("label_noise").fill_null(0.0) == 0.0)
    claim = "a tighter decision boundary (larger factor) gives a sharper minimum, at 100% test accuracy"
    perfect = _with_rho_columns(rows.filter(pl.col("test_acc") >= 1.0))
    dropped = rows.height - perfect.height
    table = _tau_table(perfect, "factor", _sharpness_metrics(perfect))
    note = f"; {dropped} of {rows.height} runs below 100% test accuracy left out" if dropped else ""
    factors = perfect["factor"].n_unique()
    if factors < 2:
        return Verdict("B", claim, "inconclusive", f"{factors} factor(s) reach 100% test accuracy: tau needs 2"
                       + note, table)
    outcome, why = _combine(table, "sharpness metric")
    return Verdict("B", claim, outcome, f"{why}; factors {sorted(perfect['factor'].unique().to_list())}{note}", table)


def _smallest_p(n_pairs: int, m: int) -> float:
    """Smallest attainable BY-adjusted p of a one-sided exact Wilcoxon test on n pairs in a family of m."""
    return min(1.0, 0.5 ** n_pairs * m * sum(1.0 / i for i in range(1, m + 1)))


def verdict_images(df: pl.DataFrame) -> Verdict | None:
    """Family C: each regime vs base, paired by seed, over the sharpness and safety metrics. Per regime:
    "sharper" and "safer" are each shown (some metric significant in the claimed direction, none the other
    way), refuted (the reverse), or not shown; the regime supports the claim when both are shown."""
    rows = df.filter(pl.col("family") == "images") if "family" in df.columns else df.clear()
    metrics = present(ok_rows(final_rows(rows)), SHARPNESS + SAFETY)
    claim = "regularised models (SAM, weight decay, augmentation) sit in sharper minima than base, yet are safer"
    if rows.is_empty() or not metrics or "base" not in rows["regime"].to_list():
        return None
    ahead, behind = compare_to_base(rows, metrics), compare_to_base(rows, metrics, reverse=True)
    if ahead.is_empty():
        return Verdict("C", claim, "inconclusive", "no regime shares seeds with base", pl.DataFrame())
    keys = [c for c in ahead.columns if c not in ("alternative", "statistic", "p", "p_adj", "correction", "effect",
                                                  "mean_diff", "n_pairs", "group")]
    table = ahead.join(behind.select(*keys, p_adj_reverse="p_adj"), on=keys, nulls_equal=True).select(
        "regime", *(k for k in keys if k not in ("regime", "metric")), "metric", "group", "n_pairs", "mean_diff",
        "p_adj", "p_adj_reverse")
    by_reason: dict[str, list[str]] = {}
    readings = []
    config = [k for k in keys if k != "metric"]
    # weight_decay, sam_rho and augment follow from the regime: name them only when they vary within one
    # (a SAM-radius sweep), so "sam" reads "sam", not "sam, weight_decay=0.0, sam_rho=0.05, augment=False".
    varies = [k for k in config if k in REGIME_HYPERPARAMETERS
              and table.group_by("regime").agg(pl.col(k).n_unique()).get_column(k).max() > 1]
    for values, mine in table.group_by(config, maintain_order=True):
        named = dict(zip(config, values))
        regime = named["block"] + ": " + named["regime"] + "".join(
            f", {k}={named[k]}" for k in config if k not in ("block", "task", "model", "regime")
            and (k not in REGIME_HYPERPARAMETERS or k in varies) and named[k] is not None)
        parts = []
        for group, word in (("sharpness", "sharper"), ("safety", "safer")):
            g = mine.filter(pl.col("group") == group)
            if g.is_empty():
                parts.append((word, "not measured", None))
                continue
            shown = g.filter(pl.col("p_adj") < ALPHA)
            refuted = g.filter(pl.col("p_adj_reverse") < ALPHA)
            floor = _smallest_p(int(g["n_pairs"].max()), g.height)
            if not shown.is_empty() and refuted.is_empty():
                parts.append((word, "shown (" + ", ".join(f"{metric_label(r['metric'])} p_adj={r['p_adj']:.3g}"
                                                           for r in shown.iter_rows(named=True)) + ")", True))
            elif not refuted.is_empty() and shown.is_empty():
                parts.append((word, "shown the other way (" + ", ".join(
                    f"{metric_label(r['metric'])} p_adj={r['p_adj_reverse']:.3g}"
                    for r in refuted.iter_rows(named=True)) + ")", False))
            elif floor >= ALPHA:
                parts.append((word, f"not testable with {int(g['n_pairs'].max())} paired seeds (smallest "
                                    f"attainable p_adj {floor:.3g} >= {ALPHA})", None))
            else:
                parts.append((word, "not shown (no p_adj < %g)" % ALPHA, None))
        signs = [s for _, _, s in parts]
        reading = ("supported" if signs == [True, True] else
                   "contradicted" if False in signs and True not in signs else "inconclusive")
        readings.append(reading)
        by_reason.setdefault(f"{reading}: " + "; ".join(f"{w} {t}" for w, t, _ in parts), []).append(regime)
    if set(readings) == {"supported"}:
        outcome = "supported"
    elif set(readings) == {"contradicted"}:
        outcome = "contradicted"
    else:
        outcome = "inconclusive"
    why = " | ".join(f"{', '.join(names)} vs base - {reason}" for reason, names in by_reason.items())
    return Verdict("C", claim, outcome, why, table)


def verdicts(df: pl.DataFrame) -> list[Verdict]:
    """The verdicts the rows allow, in family order (a family without rows gives none)."""
    found = (verdict_functions(df), verdict_circles(df), verdict_images(df)) if not df.is_empty() else ()
    return [v for v in found if v is not None]
