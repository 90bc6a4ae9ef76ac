"""The report page: provenance and counts, per-block mean (SEM) and Wilcoxon tables, and the charts
(inline SVG, PNG next to the page). `write_report` is what `python -m raystudy.report` runs."""
from __future__ import annotations

from html import escape
from pathlib import Path

import polars as pl

from raystudy.analysis.aggregate import format_summary, summary_table
from raystudy.analysis.catalogue import report_charts
from raystudy.analysis.consistency import add_consistency
from raystudy.analysis.html import chart_spec, definition_list, figure, inline_svg, page, png_bytes, table
from raystudy.analysis.labels import measurement_note
from raystudy.analysis.results import HYPERPARAMETERS, final_rows, load_results
from raystudy.analysis.stats import compare_to_base
from raystudy.analysis.verdicts import MIN_SEEDS, functions_fit_table, verdicts
from raystudy.measure.safety import read_predictions
from raystudy.storage import Store

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
    """Per block: the mean (SEM) table, and the Wilcoxon table when base meets other regimes over >= 2 seeds."""
    summary, tests = summary_table(df), compare_to_base(df)
    sections = ["<h2>Results per block</h2>",
                '<p class="note">Cells: mean (standard error of the mean) over seeds at each trial\'s final '
                "checkpoint, rows with status ok only; SEM = sample standard deviation (ddof = 1) / sqrt(n "
                "seeds); n_nonfinite counts diverged trials.</p>"]
    for block in sorted(df["block"].drop_nulls().unique().to_list()):
        rows = df.filter(pl.col("block") == block)
        sections.append(f"<h3>Block {block}</h3><p>family {_distinct(rows, 'family')}; tasks "
                        f"{_distinct(rows, 'task')}; models {_distinct(rows, 'model')}; regimes "
                        f"{_distinct(rows, 'regime')}; seeds {_distinct(rows, 'seed')}</p>")
        mine = summary.filter(pl.col("block") == block) if not summary.is_empty() else summary
        if mine.is_empty():
            sections.append("<p>No trial of this block has reached its final checkpoint yet.</p>")
            continue
        sections.append(table(format_summary(_drop_constant(mine)), "mean (SEM) over seeds"))
        t = tests.filter(pl.col("block") == block) if not tests.is_empty() else tests
        if not t.is_empty() and t["n_pairs"].max() >= 2:
            sections.append(table(_drop_constant(t), "each regime vs base, paired by seed: one-sided Wilcoxon "
                                  "signed-rank; p_adj = Benjamini-Yekutieli within one family = one regime vs "
                                  "base x one group (safety: ECE, corruption accuracy, disagreement; sharpness: "
                                  "Fisher-Rao, relative flatness, SAM-sharpness; hessian: lambda_max, trace); "
                                  "performance uncorrected; effect = rank-biserial correlation (positive = "
                                  "regime larger)"))
    return sections


def chart_sections(df: pl.DataFrame, store: Store, out: str) -> list[str]:
    """Each chart as inline SVG with its caption; its PNG (scale 2) is written to `out`/<name>.png in `store`."""
    sections = ["<h2>Charts</h2>"]
    for i, entry in enumerate(report_charts(df)):
        spec = chart_spec(entry.chart)
        store.write_bytes(f"{out}/{entry.name}.png", png_bytes(spec, scale=2))
        sections.append(figure(inline_svg(spec, prefix=f"c{i}"), entry.caption, f"{entry.name}.png", spec))
    if len(sections) == 1:
        sections.append("<p>No chart: the rows hold none of the metrics the charts need.</p>")
    return sections


def verdict_section(df: pl.DataFrame) -> list[str]:
    """The claims of the paper as the rows answer them: outcome, the reason in words with its numbers, and
    the numbers as a table (PROTOCOL.md; ``analysis.verdicts``)."""
    found = verdicts(df)
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
        if not v.table.is_empty():
            out.append(table(v.table, "the numbers behind the verdict"))
        if v.family == "A" and not (fit := functions_fit_table(df)).is_empty():
            out.append(table(fit, "each target function at the final checkpoint, mean over seeds: complexity, "
                                  "relative train MSE (train MSE / target variance) and sharpness"))
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


def write_report(study: str | Path) -> Path | str:
    """Write STUDY/report/index.html (self-contained, offline) and a PNG per chart into the study's storage
    (a local folder, or an s3:// or gs:// URI); return the page's location: a Path for a local study, else
    its URI.

    Raises NotAStudyError when STUDY has no results/ directory. An empty results/ gives a page that says so.
    Cost: reads every result file; about 0.1-1 s of rendering per chart.
    """
    store = Store(study)
    df = add_consistency(load_results(store), lambda relative: read_predictions(store, relative))
    out = store.path("report")
    name = df["study"].drop_nulls().first() if "study" in df.columns else None
    body = [overview(df, store.uri)]
    if df.is_empty():
        body.append("<p>No results yet: results/ holds no readable result rows.</p>")
    else:
        body = verdict_section(df) + stale_batchnorm(df) + body + block_sections(df) + chart_sections(df, store, out)
    store.write_text(f"{out}/index.html", page(f"raystudy report: {name or store.name}", body))
    return Path(f"{out}/index.html") if store.local else store.uri_of(f"{out}/index.html")
