"""The paper's three claims, judged per block from the stored rows under settings the study file declared before
any result existed (``study.Verdicts``: alpha, family A's fit tolerance, the metrics of each group and how they
combine). Each test is exact for the design (``analysis.inference``), so a false "supported" and a false
"contradicted" each have probability at most alpha whatever the number of seeds.

A (functions): sharpness rises with the complexity of the target, among equally well-fit solutions. Both sides
  are scale-free (invariant to f -> c f + b): the target's shape complexity (mean ||grad f||^2 / Var f) against
  sharpness divided by the variance of the training targets. Kendall tau within each seed, averaged; null: the
  targets' complexities assigned to a seed's fits at random (``inference.tau_test``). A target whose worst seed
  misses the fit tolerance is left out with all its seeds.
B (circles): a tighter decision boundary (larger factor) gives a sharper minimum, at 100% test accuracy. The
  factor sweep of each block without label noise; the same within-seed tau test with factor as x.
C (images): regularised models sit in sharper minima than base, yet are safer. Per regime vs base (paired by
  seed): exact Wilcoxon signed-rank tests per metric, the swap test for disagreement and JSD
  (``analysis.stats``, ``analysis.consistency``); "sharper" and "safer" are each shown when the group's metrics
  are (all of them at level alpha, or a majority after Holm's correction); a regime supports the claim when
  both are shown and contradicts it when either is shown the other way (each of those at alpha / 2).

A block's outcome is "supported" or "contradicted" only when every metric (or comparison) it rests on says so;
otherwise "inconclusive", with the reason, every observed direction and the tests that could not reach alpha.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from raystudy.analysis.inference import N_PERM, PermutationTest, holm, smallest_p, tau_test
from raystudy.analysis.labels import metric_label
from raystudy.analysis.radii import radius_column, radius_columns, radius_label, sam_radii, with_rho_columns
from raystudy.analysis.results import REGIME_HYPERPARAMETERS, final_rows, ok_rows, present
from raystudy.analysis.stats import compare_to_base
from raystudy.study import Verdicts

CLAIMS = {
    "A": "sharpness rises with the complexity of the target function, among equally well-fit solutions",
    "B": "a tighter decision boundary (larger factor) gives a sharper minimum, at 100% test accuracy",
    "C": "regularised models (SAM, weight decay, augmentation) sit in sharper minima than base, yet are safer",
}
TAU_METHOD = ("Kendall tau-b within each seed, mean over seeds; one-sided exact permutation test permuting {x} "
              "among each seed's points ({n} permutations{exact})")
C_METHOD = ("per regime vs base, paired by seed: exact Wilcoxon signed-rank (per-seed metrics) and exact swap "
            "test (disagreement, JSD); groups combine by '{sharpness}' (sharpness) and '{safety}' (safety); "
            "a regime contradicts the claim when either group is shown the other way at alpha/2")
STAT_SCHEMA = {"metric": pl.String, "column": pl.String, "n_points": pl.Int64, "n_seeds": pl.Int64,
               "tau": pl.Float64, "p": pl.Float64, "p_reverse": pl.Float64, "reading": pl.String}


@dataclass(frozen=True)
class Verdict:
    """One claim in one block: ``outcome`` is supported | contradicted | inconclusive; ``why`` says it in words
    with the numbers; ``table`` holds the per-metric statistics (A, B: one row per metric; C: one row per
    regime x metric); ``method`` names the test; ``excluded`` lists what was left out and why."""
    family: str
    block: str | None
    claim: str
    outcome: str
    why: str
    n_seeds: int
    method: str
    table: pl.DataFrame
    settings: dict = field(default_factory=dict)
    excluded: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        """JSON-able: every field, the table as ``statistics`` (a list of objects; NaN as null)."""
        stats = [{k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
                 for row in self.table.to_dicts()]
        return {"family": self.family, "block": self.block, "claim": self.claim, "outcome": self.outcome,
                "why": self.why, "n_seeds": self.n_seeds, "method": self.method, "settings": self.settings,
                "excluded": list(self.excluded), "statistics": stats}


def decide(p: np.ndarray, p_reverse: np.ndarray, combine: str, alpha: float, alpha_reverse: float | None = None
           ) -> np.ndarray:
    """Combine the one-sided p-values of a group's m metrics, shape (..., m) (NaN: untestable, never shown),
    into (...) +1 (shown in the claimed direction), -1 (shown the other way) or 0.

    ``all``: every metric's p <= alpha (intersection-union test: level alpha with no correction). ``majority``:
    more than m / 2 metrics with Holm-adjusted p <= alpha (family-wise error at most alpha over the group, so
    a false majority needs a false rejection). The reverse direction uses ``alpha_reverse`` (default alpha)."""
    p, p_reverse = np.asarray(p, dtype=float), np.asarray(p_reverse, dtype=float)
    m = p.shape[-1]
    alpha_reverse = alpha if alpha_reverse is None else alpha_reverse
    if combine == "majority":
        p, p_reverse, need = holm(p), holm(p_reverse), m // 2 + 1
    else:
        need = m
    shown = (p <= alpha).sum(-1) >= need
    refuted = (p_reverse <= alpha_reverse).sum(-1) >= need
    return np.where(shown & ~refuted, 1, np.where(refuted & ~shown, -1, 0)) * (m > 0)


def group_metrics(rows: pl.DataFrame, names: list[str]) -> tuple[list[tuple[str, str]], list[str]]:
    """The declared metrics of a group that ``rows`` measured, as (label, column) pairs (``sam_sharpness``:
    one column per measured radius, ``sam_sharpness@R`` the radius R), and the declared names not measured.
    Radius columns come from ``radii.with_rho_columns``."""
    found, missing = [], []
    radii = sam_radii(rows)
    for name in names:
        metric, _, rho = name.partition("@")
        if metric == "sam_sharpness" and radii:
            wanted = [r for r in radii if not rho or math.isclose(r, float(rho), rel_tol=1e-6)]
            found += [(radius_label(radius_column(r)), radius_column(r)) for r in wanted]
            if not wanted:
                missing.append(name)
        elif metric in present(rows, (metric,)) and not rho:
            found.append((metric_label(metric), metric))
        else:
            missing.append(name)
    return found, missing


def _settings(s: Verdicts) -> dict:
    return s.model_dump()


def _p(v: float | None) -> str:
    return "-" if v is None or not math.isfinite(v) else f"{v:.2g}" if v < 0.001 else f"{v:.3f}"


def _tau_tests(rows: pl.DataFrame, x: str, columns: list[str]) -> dict[str, PermutationTest]:
    """``tau_test`` of x against each column over the rows where both are present, one call per set of rows:
    metrics measured on the same points share the permutations' cost (the test of a batch is the test of each
    of its rows, the permutations depend on the design alone). Cost: one tau_test per distinct set of rows."""
    present_x = rows[x].is_not_null()
    groups: dict[bytes, list[str]] = {}
    for column in columns:
        mask = (present_x & rows[column].is_not_null()).to_numpy()
        groups.setdefault(mask.tobytes(), []).append(column)
    out = {}
    for mine in groups.values():
        r = rows.drop_nulls([x, mine[0]])
        test = tau_test(r[x].to_numpy(), r.select(pl.col(mine).cast(pl.Float64)).to_numpy().T, r["seed"].to_numpy())
        for i, column in enumerate(mine):
            out[column] = PermutationTest(test.statistic[i:i + 1], test.p_greater[i:i + 1], test.p_less[i:i + 1],
                                          test.n_perm, test.exact)
    return out


def _tau_verdict(family: str, block: str, rows: pl.DataFrame, x: str, what: str,
                 metrics: list[tuple[str, str]], s: Verdicts, notes: list[str], excluded: tuple[str, ...] = ()
                 ) -> Verdict:
    """Families A and B: one ``tau_test`` per metric of x (fixed per point) against it, combined by the group
    rule. ``what`` names x in the method ("target complexity", "factor")."""
    table, n_perm, exact = [], N_PERM + 1, False
    tests = _tau_tests(rows, x, [column for _, column in metrics])
    for label, column in metrics:
        r = rows.drop_nulls([x, column])
        test = tests[column]
        n_perm, exact = test.n_perm, test.exact
        tau, p, p_rev = (float(v[0]) for v in (test.statistic, test.p_greater, test.p_less))
        reading = "supported" if p <= s.alpha else "contradicted" if p_rev <= s.alpha else "inconclusive"
        table.append({"metric": label, "column": column, "n_points": r.height, "n_seeds": r["seed"].n_unique(),
                      "tau": tau, "p": p, "p_reverse": p_rev, "reading": reading})
    table = pl.DataFrame(table, schema=STAT_SCHEMA)
    method = TAU_METHOD.format(x=what, n=n_perm, exact=", all of them" if exact else "")
    seeds = rows["seed"].n_unique() if "seed" in rows.columns else 0
    make = lambda outcome, why: Verdict(family, block, CLAIMS[family], outcome, why, seeds, method,  # noqa: E731
                                        table, _settings(s), excluded)
    tail = "".join(f"; {n}" for n in notes)
    if table.is_empty():
        return make("inconclusive", f"no declared sharpness metric was measured{tail}")
    cells = "; ".join(f"{r['metric']}: tau {r['tau']:+.2f} (p {_p(r['p'])}, reverse p {_p(r['p_reverse'])})"
                      if math.isfinite(r["tau"]) else f"{r['metric']}: tau undefined (constant values)"
                      for r in table.iter_rows(named=True))
    outcome = int(decide(table["p"].to_numpy(), table["p_reverse"].to_numpy(), s.sharpness.combine, s.alpha))
    rule = (f"{'all' if s.sharpness.combine == 'all' else 'a Holm-corrected majority'} of {table.height} "
            f"sharpness metric{'s' * (table.height > 1)}")
    if outcome == 1:
        return make("supported", f"{rule} rise with {what} at p <= {s.alpha:g}: {cells}{tail}")
    if outcome == -1:
        return make("contradicted", f"{rule} fall with {what} at p <= {s.alpha:g}: {cells}{tail}")
    # The smallest attainable p (x against itself): as costly as the test itself, so only when it is read.
    floor = tau_test(rows[x].to_numpy(), rows[x].to_numpy(), rows["seed"].to_numpy()).p_greater[0]
    if not floor <= s.alpha:
        return make("inconclusive", f"no test can reach p <= {s.alpha:g} here: the smallest attainable p with "
                                    f"these seeds and points is {_p(floor)}: {cells}{tail}")
    return make("inconclusive", f"not {rule} move together with {what} at p <= {s.alpha:g}: {cells}{tail}")


def _blocks(df: pl.DataFrame, family: str) -> list[tuple[str, pl.DataFrame]]:
    """Final status-ok rows of one family, per block, in order of trial id (blocks in order of appearance)."""
    if "family" not in df.columns:
        return []
    rows = ok_rows(final_rows(df)).filter(pl.col("family") == family)
    if rows.is_empty():
        return []
    if "trial_id" in rows.columns:
        # Rows load in the order their files were written, which is the order checkpoints happened to be
        # measured in; a Monte Carlo permutation test draws its permutations over the rows in order, so the
        # same rows could give p 0.125 one run and 0.128 the next. One row per trial: sorting costs nothing.
        rows = rows.sort("trial_id")
    if "block" not in rows.columns:
        return [(family, rows)]
    return [(b, part) for (b,), part in rows.group_by("block", maintain_order=True)]


def _targets(rows: pl.DataFrame) -> pl.Expr:
    """A target of family A: the function at its amplitude ('rosenbrock', 'sphere x10')."""
    if "target_scale" not in rows.columns:
        return pl.col("task")
    scale = pl.col("target_scale").fill_null(1.0)
    return pl.when(scale == 1.0).then(pl.col("task")).otherwise(
        pl.col("task") + pl.lit(" x") + scale.map_elements(lambda v: f"{v:g}", return_dtype=pl.String))


def functions_points(rows: pl.DataFrame, s: Verdicts) -> tuple[pl.DataFrame, list[str], list[str]]:
    """Family A's final rows with ``target``, ``shape_complexity`` (scale-free x), ``rel_train_mse``, every
    sharpness column divided by the target variance (``rel_<column>``; SAM radii as ``rel__sam_<rho>``) and
    ``fitted`` (the target's worst seed within ``s.fit_tolerance``); the excluded targets as text; notes."""
    notes: list[str] = []
    rows = with_rho_columns(rows).with_columns(target=_targets(rows))
    has_var = "target_variance" in present(rows, ("target_variance",))
    if "target_shape_complexity" in present(rows, ("target_shape_complexity",)):
        x = pl.col("target_shape_complexity")
    elif has_var:  # rows written before the scale-free column: the same ratio, from the training targets
        x = pl.col("target_complexity") / pl.col("target_variance")
        notes.append("shape complexity from target_complexity / target_variance (rows predate its column)")
    else:
        x = pl.lit(None, dtype=pl.Float64)
        notes.append("no target_variance: neither side can be made scale-free")
    variance = pl.col("target_variance") if has_var else pl.lit(None, dtype=pl.Float64)
    columns = radius_columns(rows) + present(
        rows, ("sam_sharpness", "adaptive_sharpness", "hessian_lambda_max", "hessian_trace"))
    rows = rows.with_columns(shape_complexity=x, rel_train_mse=pl.col("train_loss") / variance,
                             **{f"rel_{c}": pl.col(c) / variance for c in columns})
    worst = rows.group_by("target").agg(
        pl.col("rel_train_mse").max().alias("worst"), pl.col("rel_train_mse").null_count().alias("unknown"))
    bad = worst.filter((pl.col("worst") > s.fit_tolerance) | (pl.col("unknown") > 0)).sort("target")
    excluded = [f"{t} (worst seed relative train MSE {'unknown' if u else f'{w:.3g}'} > fit_tolerance "
                f"{s.fit_tolerance:g})" for t, w, u in bad.iter_rows()]
    rows = rows.with_columns(fitted=~pl.col("target").is_in(bad["target"].to_list()))
    return rows, excluded, notes


def _inconclusive(family: str, block: str, why: str, rows: pl.DataFrame, what: str, s: Verdicts,
                  excluded: list[str] = ()) -> Verdict:
    """A family A or B verdict that no test could decide, saying why."""
    method = TAU_METHOD.format(x=what, n=N_PERM + 1, exact="")
    seeds = rows["seed"].n_unique() if "seed" in rows.columns else 0
    return Verdict(family, block, CLAIMS[family], "inconclusive", why, seeds, method,
                   pl.DataFrame(schema=STAT_SCHEMA), _settings(s), tuple(excluded))


def verdict_functions(df: pl.DataFrame, s: Verdicts | None = None) -> list[Verdict]:
    """Family A, one verdict per functions block with a measured target complexity (see the module doc)."""
    s = s or Verdicts()
    out = []
    what = "target shape complexity"
    for block, rows in _blocks(df, "functions"):
        if "target_complexity" not in present(rows, ("target_complexity",)):
            continue
        if "target_variance" not in present(rows, ("target_variance",)):
            out.append(_inconclusive("A", block, "the rows carry no target_variance: neither the fit nor the "
                                     "target's amplitude can be factored out", rows, what, s))
            continue
        points, excluded, notes = functions_points(rows, s)
        fit = points.filter(pl.col("fitted"))
        found, missing = group_metrics(fit, s.sharpness.metrics)
        found = [(f"{label} / target variance", f"rel_{column}") for label, column in found]
        notes = [f"{fit['target'].n_unique()} targets x {fit['seed'].n_unique()} seeds, sharpness relative to the "
                 "target variance"] + notes
        if excluded:
            notes.append("excluded as not fitted: " + ", ".join(excluded))
        if missing:
            notes.append("declared but not measured: " + ", ".join(missing))
        distinct = fit["shape_complexity"].drop_nulls().n_unique()
        if distinct < 3:
            out.append(_inconclusive("A", block, f"{distinct} distinct target shape complexit"
                                     f"{'y' if distinct == 1 else 'ies'} among the fitted targets: tau needs at "
                                     "least 3" + "".join(f"; {n}" for n in notes), fit, what, s, excluded))
            continue
        out.append(_tau_verdict("A", block, fit, "shape_complexity", what, found, s, notes, tuple(excluded)))
    return out


def functions_fit_table(df: pl.DataFrame, s: Verdicts | None = None) -> pl.DataFrame:
    """Family A at the final checkpoint, one row per target and block (mean over seeds): amplitude, raw and
    shape complexity, relative train MSE, whether the verdict kept it, and every sharpness metric raw (as the
    paper reports it) and relative to the target variance, by increasing shape complexity."""
    parts = []
    for block, rows in _blocks(df, "functions"):
        if "target_complexity" not in present(rows, ("target_complexity",)):
            continue
        points, _, _ = functions_points(rows, s or Verdicts())
        raw = radius_columns(points) + present(
            points, ("adaptive_sharpness", "hessian_lambda_max", "hessian_trace"))
        cols = ["target_complexity", "shape_complexity", "rel_train_mse", *raw, *(f"rel_{c}" for c in raw)]
        named = {c: radius_label(c) if c in radius_columns(points) else metric_label(c) for c in raw}
        named.update({f"rel_{c}": f"{label} / target variance" for c, label in named.items()})
        scale = [pl.col("target_scale").first()] if "target_scale" in points.columns else []
        parts.append(points.group_by("target").agg(
            pl.lit(block).alias("block"), *scale, pl.len().alias("n_seeds"), pl.col("fitted").first().alias("kept"),
            *(pl.col(c).mean() for c in cols)).rename(named).sort("shape_complexity"))
    return pl.concat(parts, how="diagonal_relaxed") if parts else pl.DataFrame()


def verdict_circles(df: pl.DataFrame, s: Verdicts | None = None) -> list[Verdict]:
    """Family B, one verdict per circles block that sweeps factor without label noise (a random-label block is
    another experiment), over its runs at 100% test accuracy."""
    s = s or Verdicts()
    out = []
    for block, rows in _blocks(df, "circles"):
        if "factor" not in present(rows, ("factor",)) or rows["factor"].n_unique() < 2:
            continue
        if "label_noise" in rows.columns and rows["label_noise"].fill_null(0.0).max() > 0:
            continue
        perfect = with_rho_columns(rows.filter(pl.col("test_acc") >= 1.0))
        found, missing = group_metrics(perfect, s.sharpness.metrics)
        dropped = rows.height - perfect.height
        notes = [f"factors {sorted(perfect['factor'].unique().to_list())} x {perfect['seed'].n_unique()} seeds"]
        if dropped:
            notes.append(f"{dropped} of {rows.height} runs below 100% test accuracy left out")
        if missing:
            notes.append("declared but not measured: " + ", ".join(missing))
        if perfect["factor"].n_unique() < 2:
            out.append(_inconclusive("B", block, f"{perfect['factor'].n_unique()} factor(s) reach 100% test "
                                     "accuracy: tau needs 2" + "".join(f"; {n}" for n in notes[1:]), perfect,
                                     "factor", s))
            continue
        out.append(_tau_verdict("B", block, perfect, "factor", "factor", found, s, notes))
    return out


def _directions(rows: pl.DataFrame) -> str:
    """'SAM-sharpness higher (+0.12, p 0.031)' per metric, marking those against the claim."""
    parts = []
    for r in rows.iter_rows(named=True):
        if r["mean_diff"] is None or not math.isfinite(r["mean_diff"]):
            continue
        up = r["mean_diff"] > 0
        claimed = (r["alternative"] == "greater") == up
        against = "" if claimed or r["mean_diff"] == 0 else ", against the claim"
        seeds = (f"{r['n_higher'] if up else r['n_lower']} of {r['n_pairs']} seeds, "
                 if r.get("n_higher") is not None else "")
        parts.append(f"{metric_label(r['metric'])} {'higher' if up else 'lower'} ({seeds}mean {r['mean_diff']:+.3g}, "
                     f"p {_p(r['p'])}{against})")
    return "; ".join(parts)


def _group_reading(table: pl.DataFrame, declared: list[str], combine: str, word: str, s: Verdicts
                   ) -> tuple[int, str]:
    """(+1 / -1 / 0, words) for one group of one regime-vs-base comparison."""
    measured = [m.partition("@")[0] for m in declared]
    g = table.filter(pl.col("metric").is_in(measured))
    if g.is_empty():
        return 0, f"{word}: not measured (declared {', '.join(declared)})"
    missing = [m for m in declared if m.partition("@")[0] not in g["metric"].to_list()]
    p, p_rev = g["p"].fill_null(float("nan")).to_numpy(), g["p_reverse"].fill_null(float("nan")).to_numpy()
    sign = int(decide(p, p_rev, combine, s.alpha, s.alpha / 2))
    n = int(g["n_pairs"].min())
    attainable = int(decide(np.full(len(p), smallest_p(n)), np.ones(len(p)), combine, s.alpha))
    what = f"{word} {('shown' if sign == 1 else 'shown the other way' if sign == -1 else 'not shown')}"
    if sign == 0 and attainable != 1:
        what += f" (not testable with {n} paired seeds: smallest attainable p {smallest_p(n):.3g} > {s.alpha:g})"
    measured_note = f"measured {', '.join(metric_label(m) for m in g['metric'].to_list())}"
    if missing:
        measured_note += f"; not measured {', '.join(missing)}"
    return sign, f"{what} [{measured_note}: {_directions(g)}]"


def verdict_images(df: pl.DataFrame, s: Verdicts | None = None, pair_tests: pl.DataFrame | None = None
                   ) -> list[Verdict]:
    """Family C, one verdict per images block with base and another regime (see the module doc). ``pair_tests``:
    ``consistency.consistency_tests`` of the rows (disagreement and JSD are tested only through it)."""
    s = s or Verdicts()
    out = []
    declared = {"sharpness": s.sharpness.metrics, "safety": s.safety.metrics}
    columns = list(dict.fromkeys(m.partition("@")[0] for m in declared["sharpness"] + declared["safety"]))
    for block, rows in _blocks(df, "images"):
        if "base" not in rows["regime"].to_list() or rows["regime"].n_unique() < 2:
            continue
        mine = None
        if pair_tests is not None and not pair_tests.is_empty() and "block" in pair_tests.columns:
            mine = pair_tests.filter(pl.col("block") == block)
        table = compare_to_base(rows, present(rows, [c for c in columns if c not in ("disagreement", "jsd")])
                                + [c for c in columns if c in ("disagreement", "jsd")], pair_tests=mine)
        method = C_METHOD.format(sharpness=s.sharpness.combine, safety=s.safety.combine)
        if table.is_empty():
            out.append(Verdict("C", block, CLAIMS["C"], "inconclusive", "no regime shares a seed with base", 0,
                               method, pl.DataFrame(), _settings(s)))
            continue
        keys = [c for c in table.columns if c not in ("metric", "group", "alternative", "n_pairs", "n_higher",
                                                      "n_lower", "mean_diff",
                                                      "effect", "p", "p_reverse", "method", "p_adj", "correction")]
        readings, lines = [], []
        # weight_decay, sam_rho and augment follow from the regime: name them only where they vary within one
        # (a SAM-radius sweep), so "sam" reads "sam", not "sam, weight_decay=0.0, sam_rho=0.05".
        named_keys = [k for k in keys if k not in ("block", "task", "model", "regime") and (
            k not in REGIME_HYPERPARAMETERS or table.group_by("regime").agg(pl.col(k).n_unique())[k].max() > 1)]
        for values, comparison in table.group_by(keys, maintain_order=True):
            named = dict(zip(keys, values))
            name = named["regime"] + "".join(f", {k}={named[k]}" for k in named_keys if named[k] is not None)
            head = f"{named.get('model', '')} {name} vs base ({int(comparison['n_pairs'].max())} seeds)".strip()
            sharper, why_sharp = _group_reading(comparison, declared["sharpness"], s.sharpness.combine, "sharper", s)
            safer, why_safe = _group_reading(comparison, declared["safety"], s.safety.combine, "safer", s)
            reading = ("supported" if (sharper, safer) == (1, 1) else
                       "contradicted" if -1 in (sharper, safer) else "inconclusive")
            readings.append(reading)
            lines.append(f"{head}: {reading} - {why_sharp}; {why_safe}")
        counts = {r: readings.count(r) for r in ("supported", "contradicted", "inconclusive")}
        outcome = ("supported" if counts["supported"] == len(readings) else
                   "contradicted" if counts["contradicted"] == len(readings) else "inconclusive")
        summary = (f"{counts['supported']} of {len(readings)} regime comparisons support the claim, "
                   f"{counts['contradicted']} contradict it, {counts['inconclusive']} are inconclusive")
        out.append(Verdict("C", block, CLAIMS["C"], outcome, summary + " | " + " | ".join(lines),
                           int(table["n_pairs"].max()), method, table, _settings(s)))
    return out


def verdicts(df: pl.DataFrame, settings: Verdicts | None = None, pair_tests: pl.DataFrame | None = None
             ) -> list[Verdict]:
    """Every verdict the rows allow, in family order, one per block (a family without rows gives none).
    ``settings``: the study's declared ``verdicts`` (defaults when None); ``pair_tests``: see verdict_images."""
    if df.is_empty():
        return []
    s = settings or Verdicts()
    return verdict_functions(df, s) + verdict_circles(df, s) + verdict_images(df, s, pair_tests)
