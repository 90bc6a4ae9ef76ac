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
from raystudy.analysis.verdicts import MIN_SEEDS, functions_fit_table, verdicts

VERDICT_CAPTIONS = {
    "A": "Family A: final SAM-sharpness of each target function's fit against the measured complexity of the "
         "target, one point per function x seed, per radius (log axes).",
    "B": "Family B: sharpness and test accuracy against the circles' radius ratio (tighter boundary to the right), "
         "mean +- SEM over seeds.",
    "C": "Family C: each regime minus base for every sharpness and safety metric, paired by seed (dots) with "
         "their mean (tick); right of the dashed line, the regime is larger.",
}
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


def _drop_constant(frame: pl.DataFrame) -> pl.DataFrame:
    """Drop the block column and hyperparameter columns that take a single value in this frame."""
    constant = [c for c in frame.columns if c == "block" or (c in HYPERPARAMETERS and frame[c].n_unique() == 1)]
    return frame.drop(constant)


def block_sections(df: pl.DataFrame) -> list[str]:
    """Per block, collapsed: the mean (SEM) table, and the Wilcoxon table when base meets other regimes over
    >= 2 seeds."""
    summary, tests = summary_table(df), compare_to_base(df)
    sections = ["<h2>Results per block</h2>",
                '<p class="note">Cells: mean (standard error of the mean) over seeds at each trial\'s final '
                "checkpoint, rows with status ok only; SEM = sample standard deviation (ddof = 1) / sqrt(n "
                "seeds); n_nonfinite counts diverged trials.</p>"]
    for block in sorted(df["block"].drop_nulls().unique().to_list()):
        rows = df.filter(pl.col("block") == block)
        part = [f"<p>family {_distinct(rows, 'family')}; tasks {_distinct(rows, 'task')}; models "
                f"{_distinct(rows, 'model')}; regimes {_distinct(rows, 'regime')}; seeds {_distinct(rows, 'seed')}</p>"]
        mine = summary.filter(pl.col("block") == block) if not summary.is_empty() else summary
        if mine.is_empty():
            part.append("<p>No trial of this block has reached its final checkpoint yet.</p>")
        else:
            part.append(table(format_summary(_drop_constant(mine)), "mean (SEM) over seeds"))
        t = tests.filter(pl.col("block") == block) if not tests.is_empty() else tests
        if not mine.is_empty() and not t.is_empty() and t["n_pairs"].max() >= 2:
            part.append(table(_drop_constant(t), "each regime vs base, paired by seed: one-sided Wilcoxon "
                                  "signed-rank; p_adj = Benjamini-Yekutieli within one family = one regime vs "
                                  "base x one group (safety: ECE, corruption accuracy, disagreement; sharpness: "
                                  "Fisher-Rao, relative flatness, SAM-sharpness; hessian: lambda_max, trace); "
                                  "performance uncorrected; effect = rank-biserial correlation (positive = "
                                  "regime larger)"))
        sections.append(f"<details><summary>Block {escape(block)}</summary>{''.join(part)}</details>")
    return sections


def verdict_section(df: pl.DataFrame, figures) -> list[str]:
    """The claims of the paper as the rows answer them: outcome, the reason in words with its numbers, the
    chart that carries it, and the numbers as a table (docs/PROTOCOL.md; ``analysis.verdicts``). ``figures``
    turns (name, chart, caption) into an embedded figure (``page.Figures``)."""
    found = verdicts(df)
    charts = verdict_charts(df)
    if not found:
        return []
    out = ["<h2>Verdicts</h2>",
           f'<p class="note">Kendall tau with a 95% bootstrap interval over seeds (families A, B; at least '
           f"{MIN_SEEDS} seeds); paired one-sided Wilcoxon tests vs base with Benjamini-Yekutieli correction "
           "(family C). A claim is supported or contradicted only when the evidence says so; otherwise it is "
           "inconclusive, with the reason.</p>"]
    for v in found:
        out.append(f'<h3>Family {v.family}: <span class="verdict {v.outcome}">{v.outcome}</span></h3>'
                   f"<p><b>Claim:</b> {escape(v.claim)}.</p><p>{escape(v.why)}</p>")
        if v.family in charts:
            name, chart = charts[v.family]
            out.append(figures(name, chart, VERDICT_CAPTIONS[v.family]))
        details = []
        if not v.table.is_empty():
            details.append(table(v.table, "the numbers behind the verdict"))
        if v.family == "A" and not (fit := functions_fit_table(df)).is_empty():
            details.append(table(fit, "each target function at the final checkpoint, mean over seeds: complexity, "
                                      "relative train MSE (train MSE / target variance) and sharpness"))
        if details:
            out.append(f"<details><summary>Family {v.family}: the numbers</summary>{''.join(details)}</details>")
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
                        "Kendall tau (dot, 95% bootstrap interval over seeds) and granulated Psi (diamond) of each "
                        "sharpness metric with each target at the final checkpoint, per block; tau > 0: the sharper "
                        "trial has the larger target (larger gap, higher accuracy, larger ECE).")]
        for block in corr["block"].unique(maintain_order=True).to_list():
            mine = format_correlation_table(corr.filter(pl.col("block") == block))
            out.append(f"<details><summary>Block {escape(block)}: tau and Psi</summary>"
                       f"{table(mine.drop('block'), 'tau [95% interval] per target; Psi and its parts per axis')}"
                       "</details>")
    cx = complexity_table(df)
    if not cx.is_empty():
        out += ["<h2>Sharpness against the complexity of the learned function</h2>",
                figures("sharpness_vs_complexity", complexity_chart(df, table=cx),
                        "Each sharpness metric against each measured complexity of the function (input-gradient "
                        "norm, linear-region density, target complexity), every family pooled; each panel states "
                        "Kendall tau with its bootstrap interval over seeds."),
                f"<details><summary>tau of sharpness with complexity</summary>{table(cx)}</details>"]
    return out
