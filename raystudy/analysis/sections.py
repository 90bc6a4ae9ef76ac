"""The report's sections as HTML fragments, each from the result rows alone: the verdicts with the charts that
carry them, the correlation analysis, provenance and counts, and the per-block tables (collapsed)."""
from __future__ import annotations

from html import escape
from pathlib import Path

import polars as pl

from raystudy.analysis.aggregate import format_summary, summary_table
from raystudy.analysis.charts_correlation import complexity_chart, correlation_chart
from raystudy.analysis.charts_verdicts import verdict_charts
from raystudy.analysis.correlation import complexity_table, correlation_table, format_correlation_table
from raystudy.analysis.html import definition_list, table
from raystudy.analysis.labels import measurement_note
from raystudy.analysis.results import HYPERPARAMETERS, final_rows
from raystudy.analysis.stats import compare_to_base
from raystudy.analysis.judge import Judgement
from raystudy.analysis.verdicts import Verdict, functions_fit_table
from raystudy.study import Verdicts

STALE_BN_PP = 5.0  # train accuracy with batch statistics this many points above eval mode: stale running stats


def _distinct(df: pl.DataFrame, column: str) -> str:
    """Distinct non-null values of a column as text ("not recorded" when absent)."""
    if column not in df.columns or df[column].null_count() == df.height:
        return "not recorded"
    return ", ".join(str(v) for v in sorted(df[column].drop_nulls().unique().to_list()))


def overview(df: pl.DataFrame, study_dir: str | Path) -> str:
    """Provenance (versions, devices, how geometry was measured) and counts (trials, checkpoints, failures)."""
    status = df.group_by("status").len().sort("status") if "status" in df.columns else pl.DataFrame()
    not_ok = ", ".join(f"{s}: {n}" for s, n in status.iter_rows() if s != "ok") or "none"
    devices = (", ".join(f"{d} ({n} rows)" for d, n in df.group_by("device").len().sort("device").iter_rows())
               if "device" in df.columns else "not recorded")
    provenance = {
        "study directory": str(study_dir),
        "raystudy / torch / ray": " / ".join(_distinct(df, c) for c in ("raystudy_version", "torch_version",
                                                                           "ray_version")),
        "devices": devices,
        "geometry measured on": measurement_note(df) or "not recorded",
        "split / BN mode / augmented / samples": " / ".join(
            _distinct(df, c) for c in ("measured_on", "bn_mode", "augmented", "measure_n")),
        "Hessian sample": hessian_sample_note(df) or "the same samples as the other geometry metrics",
    }
    counts = {
        "blocks": _distinct(df, "block"),
        "trials": str(df["trial_id"].n_unique()) if "trial_id" in df.columns else "0",
        "trials finished (final checkpoint measured)": str(final_rows(df)["trial_id"].n_unique())
        if "trial_id" in df.columns else "0",
        "checkpoints measured (rows)": str(df.height),
        "rows not ok (failed / nonfinite)": not_ok,
        "wall time summed over rows": f"{df['wall_s'].sum():.1f} s" if "wall_s" in df.columns else "not recorded",
    }
    return (f"<h2>Provenance</h2>{definition_list(provenance)}<h2>Counts</h2>{definition_list(counts)}")


def hessian_sample_note(df: pl.DataFrame) -> str:
    """Where the Hessian metrics saw fewer samples than the other geometry metrics (a study's choice of
    ``hessian.max_samples``): 'block digits_cnn: Hessian on n=128, other geometry metrics on n=256'; empty when
    every block measured the Hessian on the same sample."""
    if not {"hessian_n", "measure_n"} <= set(df.columns):
        return ""
    rows = df.drop_nulls(["hessian_n", "measure_n"]).filter(pl.col("hessian_n") < pl.col("measure_n"))
    if rows.is_empty():
        return ""
    by = rows.group_by("block" if "block" in rows.columns else pl.lit("all").alias("block")).agg(
        pl.col("hessian_n").unique().sort(), pl.col("measure_n").unique().sort()).sort("block")
    return "; ".join(f"block {b}: Hessian on n={'/'.join(map(str, h))}, other geometry metrics on "
                     f"n={'/'.join(map(str, m))}" for b, h, m in by.iter_rows())


def _drop_constant(frame: pl.DataFrame) -> pl.DataFrame:
    """Drop the block column and hyperparameter columns that take a single value in this frame."""
    constant = [c for c in frame.columns if c == "block" or (c in HYPERPARAMETERS and frame[c].n_unique() == 1)]
    return frame.drop(constant)


def block_sections(df: pl.DataFrame, pair_tests: pl.DataFrame | None = None) -> list[str]:
    """Per block, collapsed: the mean (SEM) table, and the paired tests when base meets other regimes over
    >= 2 seeds (``pair_tests``: the consistency tests, ``consistency.consistency_tests``)."""
    summary, tests = summary_table(df), compare_to_base(df, pair_tests=pair_tests)
    sections = ["<h2>Results per block</h2>",
                '<p class="note">Cells: mean (standard error of the mean) over seeds at each trial\'s final '
                "checkpoint, rows with status ok only; SEM = sample standard deviation (ddof = 1) / sqrt(n "
                "seeds); n_nonfinite counts diverged trials.</p>"]
    for block in sorted(df["block"].drop_nulls().unique().to_list()):
        rows = df.filter(pl.col("block") == block)
        part = ["<p>" + escape(f"family {_distinct(rows, 'family')}; tasks {_distinct(rows, 'task')}; models "
                               f"{_distinct(rows, 'model')}; regimes {_distinct(rows, 'regime')}; seeds "
                               f"{_distinct(rows, 'seed')}") + "</p>"]
        mine = summary.filter(pl.col("block") == block) if not summary.is_empty() else summary
        if mine.is_empty():
            part.append("<p>No trial of this block has reached its final checkpoint yet.</p>")
        else:
            part.append(table(format_summary(_drop_constant(mine)), "mean (SEM) over seeds"))
        t = tests.filter(pl.col("block") == block) if not tests.is_empty() else tests
        if not mine.is_empty() and not t.is_empty() and t["n_pairs"].max() >= 2:
            part.append(table(_drop_constant(t), "each regime vs base, paired by seed: exact one-sided Wilcoxon "
                                  "signed-rank in the protocol's direction (p) and the other (p_reverse); "
                                  "disagreement and JSD by the exact swap test on pairs of models; "
                                  "p_adj = Benjamini-Yekutieli within one family = one regime vs "
                                  "base x one group (safety: ECE, corruption accuracy, disagreement; sharpness: "
                                  "Fisher-Rao, relative flatness, SAM-sharpness; hessian: lambda_max, trace); "
                                  "performance uncorrected; effect = rank-biserial correlation (positive = "
                                  "regime larger)"))
        sections.append(f"<details><summary>Block {escape(block)}</summary>{''.join(part)}</details>")
    return sections


def settings_text(settings: Verdicts, note: str) -> str:
    """The verdict settings in one sentence, e.g. 'alpha 0.05; family A keeps a target whose worst seed ...'."""
    group = lambda g: f"{'all' if g.combine == 'all' else 'a Holm-corrected majority'} of {', '.join(g.metrics)}"  # noqa: E731
    return (f"Settings ({note}): alpha {settings.alpha:g} per test and direction; family A keeps a target only if "
            f"its worst seed has relative train MSE <= {settings.fit_tolerance:g}; 'sharper' = {group(settings.sharpness)}; "
            f"'safer' = {group(settings.safety)} (of those measured in the block).")


def _why(v: Verdict) -> str:
    """The reason as HTML: a list when it has several parts (family C: one per regime comparison)."""
    parts = v.why.split(" | ")
    if len(parts) == 1:
        return f"<p>{escape(v.why)}</p>"
    return f"<p>{escape(parts[0])}</p><ul>" + "".join(f"<li>{escape(p)}</li>" for p in parts[1:]) + "</ul>"


def verdict_section(judgement: Judgement, df: pl.DataFrame, figures) -> list[str]:
    """The claims of the paper as the rows answer them, one per family and block: outcome, the reason in words
    with its numbers, the chart that carries it, and the numbers as a table (docs/PROTOCOL.md;
    ``analysis.verdicts``). ``figures`` turns (name, chart, caption) into an embedded figure (``page.Figures``)."""
    found = judgement.verdicts
    if not found:
        return []
    charts = verdict_charts(df, judgement.settings)
    out = ["<h2>Verdicts</h2>",
           '<p class="note">Families A and B: Kendall tau within each seed, averaged over seeds, with an exact '
           "permutation test that shuffles the target's complexity (A) or the factor (B) among each seed's points. "
           "Family C: each regime vs base paired by seed, exact Wilcoxon signed-rank tests (sign flips enumerated) "
           "and, for disagreement and JSD, an exact test that swaps a seed's regime and base models. Each test's "
           "false-positive rate is at most alpha for any number of seeds; a claim is supported or contradicted "
           f"only when the declared metrics say so, otherwise it is inconclusive, with the reason. "
           f"{escape(settings_text(judgement.settings, judgement.settings_note))} "
           'The same verdicts are in <a href="verdicts.json">verdicts.json</a>.</p>']
    if note := hessian_sample_note(df):
        out.append(f'<p class="warn">The Hessian metrics saw a smaller sample than the other geometry metrics, as '
                   f"the study chose (hessian.max_samples): {escape(note)}. Curvature on a subsample is biased "
                   "upwards for small n.</p>")
    drawn = set()
    for v in found:
        where = f" (block {escape(v.block)})" if v.block else ""
        out.append(f'<h3>Family {v.family}{where}: <span class="verdict {v.outcome}">{v.outcome}</span></h3>'
                   f"<p><b>Claim:</b> {escape(v.claim)}.</p>{_why(v)}<p class=\"note\">Method: {escape(v.method)}"
                   f"{'; excluded: ' + escape(', '.join(v.excluded)) if v.excluded else ''}.</p>")
        for name, chart, caption in charts.get(v.family, []):
            if name not in drawn:
                drawn.add(name)
                out.append(figures(name, chart, caption))
        details = []
        if not v.table.is_empty():
            details.append(table(v.table, "the numbers behind the verdict"))
        if v.family == "A" and not (fit := functions_fit_table(df, judgement.settings)).is_empty():
            fit = fit.filter(pl.col("block") == v.block) if v.block else fit
            details.append(table(fit, "each target at the final checkpoint, mean over seeds: amplitude, raw and "
                                      "shape complexity, relative train MSE (train MSE / target variance), whether "
                                      "the verdict kept it, and sharpness raw and relative to the target variance"))
        if details:
            out.append(f"<details><summary>Family {v.family}{where}: the numbers</summary>{''.join(details)}"
                       "</details>")
    return out


def stale_batchnorm(df: pl.DataFrame) -> list[str]:
    """A warning listing final checkpoints whose BatchNorm running statistics are stale: training accuracy
    with batch statistics exceeds the eval-mode one by more than STALE_BN_PP points."""
    if not {"train_acc_train_mode", "train_acc"} <= set(df.columns):
        return []
    rows = final_rows(df).drop_nulls(["train_acc_train_mode", "train_acc"]).with_columns(
        gap=100 * (pl.col("train_acc_train_mode") - pl.col("train_acc")))
    stale = rows.filter(pl.col("gap") > STALE_BN_PP).sort("gap", descending=True)
    if stale.is_empty():
        return []
    modes = ", ".join(sorted(stale["bn_mode"].drop_nulls().unique().to_list())) if "bn_mode" in stale.columns else "?"
    listed = ", ".join(f"{t} ({g:.1f} pp)" for t, g in stale.select("trial_id", "gap").head(10).iter_rows())
    return [f'<p class="warn">Stale BatchNorm statistics (bn_mode {escape(modes)}): {stale.height} final '
            f"checkpoint(s) classify the training set more than {STALE_BN_PP:g} points better with batch "
            f"statistics than in eval mode, so their eval-mode numbers describe the stored statistics rather "
            f"than the minimum; consider <code>measure: {{bn: recalibrate}}</code>. Largest: {escape(listed)}</p>"]




def correlation_section(df: pl.DataFrame, figures) -> list[str]:
    """Kendall tau and Jiang's granulated Psi of every sharpness metric with generalisation and safety, per
    block (chart, then a collapsed table per block), and sharpness against measured function complexity."""
    out = []
    corr = correlation_table(df)
    if not corr.is_empty():
        out += ["<h2>Does sharpness track generalisation and safety?</h2>",
                figures("correlation_tau", correlation_chart(df, table=corr),
                        "Kendall tau (dot: median over seeds of the tau within each seed; bar: its distribution-free "
                        "95% interval, drawn from 6 seeds on) and granulated Psi (diamond) of each sharpness metric "
                        "with each target at the final checkpoint, per block; tau > 0: the sharper trial has the "
                        "larger target (larger gap, higher accuracy, larger ECE).")]
        for block in corr["block"].unique(maintain_order=True).to_list():
            mine = format_correlation_table(corr.filter(pl.col("block") == block))
            out.append(f"<details><summary>Block {escape(block)}: tau and Psi</summary>"
                       f"{table(mine.drop('block'), 'tau (median within-seed) [95% interval, from 6 seeds] per target; Psi and its parts per axis')}"
                       "</details>")
    cx = complexity_table(df)
    if not cx.is_empty():
        out += ["<h2>Sharpness against the complexity of the learned function</h2>",
                figures("sharpness_vs_complexity", complexity_chart(df, table=cx),
                        "Each sharpness metric against each measured complexity of the function (input-gradient "
                        "norm, linear-region density, target complexity), one colour per block; each panel states "
                        "each block's Kendall tau (median within-seed tau, with its distribution-free 95% interval "
                        "from 6 seeds on); blocks are never pooled into one tau."),
                f"<details><summary>tau of sharpness with complexity</summary>{table(cx)}</details>"]
    return out
