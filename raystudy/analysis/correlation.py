"""Does sharpness predict generalisation, safety or the complexity of the learned function? Rank correlations at
the final checkpoint, as the generalisation-measure literature measures them.

Two statistics per (block, sharpness metric, target):

- tau: Kendall's tau-b within each seed (over the block's trials of that seed, which share their initial
  weights), summarised by its median over seeds, with a distribution-free 95% interval for that median from the
  order statistics of the per-seed taus (``inference.median_interval``: coverage at least 95% for any
  distribution of per-seed taus; it needs 6 seeds, so fewer get none). A bootstrap over 3-5 seeds has no
  coverage worth the name, and the mean over seeds has no exact interval; the verdicts test means with exact
  permutation tests instead (``analysis.verdicts``).
- The granulated Kendall coefficient Psi of Jiang, Neyshabur, Mobahi, Krishnan & Bengio, "Fantastic
  generalization measures and where to find them" (ICLR 2020, arXiv:1912.02178, subsection "Granulated Kendall's
  coefficient"): with hyperparameter axes Theta_1..Theta_n,
  psi_i = (1/m_i) sum over the values of every axis but i of tau({(mu(theta), g(theta)) : theta_i in Theta_i}),
  m_i = |Theta_1 x .. x Theta_{i-1} x Theta_{i+1} x .. x Theta_n|, and Psi = (1/n) sum_i psi_i. Tau inside a
  group thus sees trials that differ in axis i only, so a measure cannot score by tracking one hyperparameter
  that happens to move the gap. As the paper, seeds are not an axis; unlike it, each group also holds the seed
  fixed (replicates are not pooled into one group). Departures, all forced by grids that are not full
  factorials: psi_i averages the groups that exist (not m_i), skipping groups with fewer than 2 values of axis i
  and groups where tau is undefined (a constant metric or target); Psi averages the axes whose psi is defined.
  Tau is tau-b (equal to the paper's pairwise-sign tau without ties, and the same tau as the pooled one).

Axes of a block: its varying hyperparameters (``aggregate.varying_hyperparameters``), plus ``regime``, ``task``
and ``model`` when the block has several. Along the regime axis the hyperparameters a regime sets
(weight_decay, sam_rho, augment) move with it; along one of those, the regime is held fixed.
"""
from __future__ import annotations

import math

import numpy as np
import polars as pl
from scipy import stats

from raystudy.analysis.aggregate import varying_hyperparameters
from raystudy.analysis.inference import median_interval
from raystudy.analysis.labels import metric_label
from raystudy.analysis.results import REGIME_HYPERPARAMETERS, final_rows, ok_rows, present
from raystudy.analysis.radii import BY_RHO, column_radius, radius_columns, radius_label, with_rho_columns
from raystudy.schema import HESSIAN, SHARPNESS

PAIRWISE_UP_TO = 500  # points up to which tau_b counts all pairs itself (n^2/2 pairs: 1 MB of signs at 500)
TARGETS = ("gen_gap", "test_acc", "ece", "corruption_acc", "disagreement")
COMPLEXITY = ("input_grad_norm", "linear_region_density", "target_shape_complexity", "target_complexity")
COMPLEXITY_LABELS = {"input_grad_norm": "input-gradient norm (mean ||J||_F)",
                     "linear_region_density": "linear-region density (changes per unit length)",
                     "target_shape_complexity": "target shape complexity (mean ||grad f||^2 / Var f)",
                     "target_complexity": "target complexity (mean ||grad f||^2, raw)"}
AXIS_SCHEMA = pl.Struct({"axis": pl.String, "psi": pl.Float64, "n_groups": pl.Int64, "n_skipped": pl.Int64})
TABLE_SCHEMA = {"block": pl.String, "metric": pl.String, "column": pl.String, "target": pl.String,
                "n_points": pl.Int64, "n_seeds": pl.Int64, "tau": pl.Float64, "ci_low": pl.Float64,
                "ci_high": pl.Float64, "psi": pl.Float64, "psi_axes": pl.List(AXIS_SCHEMA)}
COMPLEXITY_SCHEMA = {"family": pl.String, "block": pl.String, "metric": pl.String, "column": pl.String,
                     "measure": pl.String, "n_points": pl.Int64, "n_seeds": pl.Int64, "tau": pl.Float64,
                     "ci_low": pl.Float64, "ci_high": pl.Float64}


def _finite(v: float) -> float | None:
    return float(v) if v is not None and math.isfinite(v) else None


def tau_b(x: np.ndarray, y: np.ndarray) -> float:
    """Kendall's tau-b of two 1-D arrays from all n(n-1)/2 pairs: (concordant - discordant) / sqrt((pairs - pairs
    tied in x) (pairs - pairs tied in y)); NaN when x or y is constant. Same value as scipy.stats.kendalltau, at
    O(n^2) memory without scipy's per-call overhead (~0.2 ms): for the small groups of Psi, many per table. From
    PAIRWISE_UP_TO points on, scipy's O(n log n) count, so memory stays linear in a study of any size."""
    if len(x) > PAIRWISE_UP_TO:
        tau = stats.kendalltau(x, y, variant="b").statistic
        return float(tau) if np.isfinite(tau) else float("nan")
    i, j = np.triu_indices(len(x), k=1)
    sx, sy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
    untied = float((sx != 0).sum()) * float((sy != 0).sum())
    return float((sx * sy).sum() / np.sqrt(untied)) if untied > 0 else float("nan")


def grouped_tau_b(x: np.ndarray, y: np.ndarray, group: np.ndarray, n_groups: int) -> np.ndarray:
    """(n_groups,) ``tau_b`` of x and y within each group (``group``: each point's group, 0..n_groups-1), the same
    bits as one ``tau_b`` call per group: every within-group pair at once, summed per group with bincount (integer
    sums, exact in float64). Groups above PAIRWISE_UP_TO points go to ``tau_b`` (scipy) one by one, as they would
    alone. Cost: O(sum of the groups' squared sizes) time and memory; ~1 ms for thousands of small Psi groups,
    against ~0.1 ms of overhead per ``tau_b`` call."""
    x, y, group = np.asarray(x, dtype=float), np.asarray(y, dtype=float), np.asarray(group, dtype=np.int64)
    sizes = np.bincount(group, minlength=n_groups)
    big = np.flatnonzero(sizes > PAIRWISE_UP_TO)
    small = sizes[group] <= PAIRWISE_UP_TO
    order = np.flatnonzero(small)[np.argsort(group[small], kind="stable")]
    g, xs, ys = group[order], x[order], y[order]
    first = np.r_[0, np.cumsum(sizes)][g] - np.r_[0, np.cumsum(sizes[big])][np.searchsorted(big, g)]  # group start
    later = sizes[g] - 1 - (np.arange(len(g)) - first)  # partners after each point in its group
    a = np.repeat(np.arange(len(g)), later)
    b = a + 1 + np.arange(len(a)) - np.repeat(np.cumsum(later) - later, later)
    sx, sy = np.sign(xs[a] - xs[b]), np.sign(ys[a] - ys[b])
    concordance = np.bincount(g[a], sx * sy, minlength=n_groups)
    untied = (np.bincount(g[a], sx != 0, minlength=n_groups).astype(float)
              * np.bincount(g[a], sy != 0, minlength=n_groups).astype(float))
    with np.errstate(invalid="ignore", divide="ignore"):
        tau = np.where(untied > 0, concordance / np.sqrt(untied), np.nan)
    for k in big:
        tau[k] = tau_b(x[group == k], y[group == k])
    return tau


def _sharpness_metrics(rows: pl.DataFrame) -> list[tuple[str, str]]:
    """(label, column) of every sharpness metric in ``rows``; SAM-sharpness once per radius column."""
    radii = [(radius_label(c), c) for c in radius_columns(rows)]
    if not radii and "sam_sharpness" in present(rows, ("sam_sharpness",)):
        radii = [(metric_label("sam_sharpness"), "sam_sharpness")]
    others = present(rows, [m for m in SHARPNESS + HESSIAN if m != "sam_sharpness"])
    return radii + [(metric_label(m), m) for m in others]


def sharpness_columns(rows: pl.DataFrame) -> tuple[pl.DataFrame, list[tuple[str, str]]]:
    """``rows`` with one column per sharpness metric, and its (label, column) pairs: SAM-sharpness once per radius
    of ``sam_sharpness_by_rho`` (as the verdicts do), the scalar sharpness and Hessian metrics present, and
    ``adaptive_sharpness_by`` (a list of {rho, kind, norm, value}) once per (kind, norm, rho) when present
    (in place of its scalar ``adaptive_sharpness``, the first of them)."""
    rows = with_rho_columns(rows)
    metrics = _sharpness_metrics(rows)
    if {BY_RHO, "sam_sharpness_rho", "sam_sharpness"} <= set(rows.columns):
        # Rows with the scalar only (an older writer) join the radius column their sam_sharpness_rho names.
        alone = pl.col(BY_RHO).is_null()
        for column in radius_columns(rows):
            r = column_radius(column)
            near = (pl.col("sam_sharpness_rho") - r).abs() <= 1e-5 * r  # the column name keeps 6 digits of rho
            rows = rows.with_columns(pl.when(alone & near).then("sam_sharpness").otherwise(column).alias(column))
    if "adaptive_sharpness_by" in present(rows, ("adaptive_sharpness_by",)):
        metrics = [(label, c) for label, c in metrics if c != "adaptive_sharpness"]
        keys = sorted({(e["kind"], e["norm"], e["rho"]) for lst in rows["adaptive_sharpness_by"].drop_nulls()
                       for e in lst})
        field = pl.element().struct.field
        for kind, norm, rho in keys:
            name = f"_adaptive_{kind}_{norm}_{rho:g}"
            match = (field("kind") == kind) & (field("norm") == norm) & (field("rho") == rho)
            rows = rows.with_columns(pl.col("adaptive_sharpness_by").list.eval(
                pl.element().filter(match).struct.field("value")).list.first().alias(name))
            metrics.append((f"adaptive {kind}-case sharpness ({norm}, rho={rho:g})", name))
    return rows, metrics


def psi_axes(rows: pl.DataFrame) -> list[str]:
    """The hyperparameter axes of one block's rows: varying hyperparameters, then regime, task and model when
    they take several values. Seed is never an axis."""
    named = [c for c in ("regime", "task", "model") if c in rows.columns and rows[c].n_unique() > 1]
    return varying_hyperparameters(rows) + named


def _moving(axis: str, axes: list[str]) -> list[str]:
    """Columns that change along ``axis``: the regime carries the hyperparameters it sets."""
    if axis == "regime":
        return ["regime", *(a for a in axes if a in REGIME_HYPERPARAMETERS)]
    return [axis]


def granulated_kendall(rows: pl.DataFrame, x: str, y: str, axes: list[str] | None = None
                       ) -> tuple[float | None, pl.DataFrame]:
    """(Psi, per-axis parts) of columns x (measure) and y (target) over ``rows`` (one block's final rows).

    Per axis: ``psi`` (mean tau-b over its groups; null when no group has a defined tau), ``n_groups`` (groups
    averaged) and ``n_skipped`` (groups left out: one value of the axis, or tau undefined). A group is every trial
    sharing the seed and the value of every other axis. Axes along which no group has 2 values are left out
    (they are set by another axis, e.g. weight_decay by the regime). Psi: mean of the defined psi, null when none.
    ``axes`` defaults to ``psi_axes(rows)``. Rows with x or y null are dropped first. Cost: one ``tau_b`` per
    group (groups ~ trials / values of the axis), a few ms per axis for a few hundred trials.
    """
    rows = rows.drop_nulls([x, y])
    axes = psi_axes(rows) if axes is None else axes
    parts = []
    for axis in axes:
        moving = _moving(axis, axes)
        fixed = [a for a in axes if a not in moving] + ["seed"]
        sized = rows.with_columns(_values=pl.struct(moving).n_unique().over(fixed))
        single = sized.filter(pl.col("_values") < 2).select(fixed).n_unique()
        grouped = (sized.filter(pl.col("_values") >= 2).group_by(fixed, maintain_order=True).agg(x, y)
                   .with_row_index("_group").select("_group", x, y))  # groups in order of appearance
        both = grouped_tau_b(*(grouped.explode(x, y)[c].to_numpy() for c in (x, y, "_group")), grouped.height)
        taus = [float(t) for t in both if np.isfinite(t)]
        undefined = len(both) - len(taus)
        if len(both):
            parts.append({"axis": axis, "psi": float(np.mean(taus)) if taus else None, "n_groups": len(taus),
                          "n_skipped": single + undefined})
    table = pl.DataFrame(parts, schema=dict(AXIS_SCHEMA.to_schema()))
    defined = table["psi"].drop_nulls()
    return (float(defined.mean()) if defined.len() else None), table


def seed_taus(rows: pl.DataFrame, x: str, y: str) -> np.ndarray:
    """Kendall tau-b of x and y within each seed (seeds in sorted order; NaN where a seed has fewer than 2 points
    or a constant column). Cost: one ``grouped_tau_b`` pass (the bits of one ``tau_b`` per seed, without a frame
    and a call per seed: ~3 s less at 86,800 rows)."""
    r = rows.drop_nulls([x, y]).sort("seed")
    seed = r["seed"].rle_id().to_numpy()  # 0, 1, ... in sorted seed order (a null seed is one group, first)
    return grouped_tau_b(r[x].to_numpy().astype(float), r[y].to_numpy().astype(float), seed,
                         int(seed[-1]) + 1 if len(seed) else 0)


def _tau(rows: pl.DataFrame, x: str, y: str) -> dict:
    """n_points, n_seeds, tau (median over seeds of the within-seed tau-b; null when no seed defines it) and the
    distribution-free 95% interval for that median (null below 6 seeds with a defined tau)."""
    r = rows.drop_nulls([x, y])
    taus = seed_taus(r, x, y)
    taus = taus[np.isfinite(taus)]
    interval = median_interval(taus) if len(taus) else None
    lo, hi = interval if interval else (None, None)
    return {"n_points": r.height, "n_seeds": r["seed"].n_unique(), "tau": _finite(np.median(taus)) if len(taus)
            else None, "ci_low": lo, "ci_high": hi}


def _blocks(df: pl.DataFrame) -> list[tuple[str, pl.DataFrame]]:
    """Final status-ok rows, one frame per block (in order of appearance)."""
    rows = ok_rows(final_rows(df)) if "final" in df.columns else df
    if rows.is_empty():
        return []
    if "block" not in rows.columns:
        return [("all", rows)]
    return [(b, part) for (b,), part in rows.group_by("block", maintain_order=True)]


def correlation_table(df: pl.DataFrame) -> pl.DataFrame:
    """Long table, one row per block x sharpness metric x target present (TARGETS), at the final checkpoint
    (status ok): n_points, n_seeds, tau (median over seeds of the within-seed tau-b) with ci_low/ci_high (its
    distribution-free 95% interval; null below 6 seeds or when tau is undefined), psi (Jiang's Psi) and psi_axes
    (list of {axis, psi, n_groups, n_skipped}).

    ``metric`` is the readable label, ``column`` the column it came from. Sign: tau > 0 means the sharper trial
    has the larger target (larger gap, higher accuracy, larger ECE). Cost: per row, one tau-b per seed and one
    per Psi group; empty table (the schema above) when no block has a sharpness metric and a target.
    """
    out = []
    for block, rows in _blocks(df):
        rows, metrics = sharpness_columns(rows)
        axes = psi_axes(rows)
        for label, column in metrics:
            for target in present(rows, TARGETS):
                psi, parts = granulated_kendall(rows, column, target, axes)
                out.append({"block": block, "metric": label, "column": column, "target": target,
                            **_tau(rows, column, target), "psi": psi, "psi_axes": parts.to_dicts()})
    return pl.DataFrame(out, schema=TABLE_SCHEMA)


def format_interval(tau: float | None, lo: float | None, hi: float | None) -> str:
    """'0.42 [0.10, 0.70]', '0.42' without an interval, '-' without tau."""
    if tau is None:
        return "-"
    return f"{tau:.2f}" if lo is None or hi is None else f"{tau:.2f} [{lo:.2f}, {hi:.2f}]"


def format_correlation_table(table: pl.DataFrame, psi_target: str = "gen_gap") -> pl.DataFrame:
    """``correlation_table`` for an HTML table: one row per block x metric; 'n' as points / seeds (a range when
    targets differ); one 'tau: <target>' column per target ('0.42 [0.10, 0.70]'); 'Psi: <psi_target>' ('0.30
    (2 axes)') and one 'psi: <axis>' column per axis ('+0.50 (6 groups)'); '-' where undefined or absent."""
    if table.is_empty():
        return pl.DataFrame()
    rows, psi_columns = [], {}
    for (block, metric), part in table.group_by("block", "metric", maintain_order=True):
        lo_n, hi_n = part["n_points"].min(), part["n_points"].max()
        row = {"block": block, "metric": metric,
               "n": f"{lo_n if lo_n == hi_n else f'{lo_n}-{hi_n}'} / {part['n_seeds'].max()}"}
        for r in part.iter_rows(named=True):
            row[f"tau: {metric_label(r['target'])}"] = format_interval(r["tau"], r["ci_low"], r["ci_high"])
            if r["target"] != psi_target:
                continue
            n_axes = sum(a["psi"] is not None for a in r["psi_axes"])
            row["Psi"] = "-" if r["psi"] is None else f"{r['psi']:+.2f} ({n_axes} axis{'es' * (n_axes > 1)})"
            for a in r["psi_axes"]:
                psi_columns[f"psi: {a['axis']}"] = None
                row[f"psi: {a['axis']}"] = ("-" if a["psi"] is None else
                                            f"{a['psi']:+.2f} ({a['n_groups']} group{'s' * (a['n_groups'] > 1)})")
        rows.append(row)
    taus = [f"tau: {metric_label(t)}" for t in TARGETS]
    out = pl.DataFrame(rows, infer_schema_length=None)
    order = ["block", "metric", "n", *taus, "Psi", *psi_columns]
    return out.select(c for c in order if c in out.columns).fill_null("-").rename(
        {"Psi": f"Psi: {metric_label(psi_target)}"}, strict=False)


def complexity_rows(df: pl.DataFrame) -> tuple[pl.DataFrame, list[tuple[str, str]], list[str]]:
    """Final status-ok rows of every family with sharpness columns added, the (label, column) sharpness metrics
    and the complexity measures present (COMPLEXITY)."""
    rows = ok_rows(final_rows(df))
    if rows.is_empty():
        return rows, [], []
    rows, metrics = sharpness_columns(rows)
    return rows, metrics, present(rows, COMPLEXITY)


def complexity_table(df: pl.DataFrame) -> pl.DataFrame:
    """One row per block x sharpness metric x complexity measure the block has: tau (median over seeds of the
    within-seed tau-b) with its distribution-free 95% interval (null below 6 seeds), n_points, n_seeds, and the
    block's family. Per block: trials of different families differ in loss, model and units, so one pooled tau
    would rank unlike things. Tau > 0: the sharper trial has the more complex function. Empty table (schema
    above) when no complexity measure is present. Cost: one tau-b per seed per row."""
    rows, metrics, measures = complexity_rows(df)
    out = []
    for block, mine in _blocks(rows) if measures else []:
        family = mine["family"].drop_nulls().first() if "family" in mine.columns else None
        for label, column in metrics:
            for measure in measures:
                both = mine.drop_nulls([column, measure])
                if both.is_empty():
                    continue
                out.append({"family": family, "block": block, "metric": label, "column": column, "measure": measure,
                            **_tau(both, column, measure)})
    return pl.DataFrame(out, schema=COMPLEXITY_SCHEMA)
