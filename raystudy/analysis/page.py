"""The report page (``python -m raystudy.report``): verdicts first, with the charts that carry them; then
the correlation analysis, provenance and counts, per-block tables (collapsed) and every other chart. Charts are
inline SVG made interactive offline, each with a PNG next to the page."""
from __future__ import annotations

from pathlib import Path

import altair as alt
import polars as pl

from raystudy.analysis.catalogue import report_charts
from raystudy.analysis.consistency import add_consistency, read_predictions
from raystudy.analysis.freshness import fingerprint, record_built_from
from raystudy.analysis.html import chart_spec, figure, inline_svg, page, png_bytes
from raystudy.analysis.judge import judge, write_verdicts
from raystudy.analysis.results import load_results
from raystudy.analysis.sections import (block_sections, correlation_section, overview, stale_batchnorm,
                                        verdict_section)
from raystudy.layout import report_path
from raystudy.storage import Store


class Figures:
    """Turns charts into embedded figures: the PNG (scale 2) is written to ``out``/<name>.png in ``store``;
    element ids are unique across the page."""

    def __init__(self, store: Store, out: str):
        self.store, self.out, self.count = store, out, 0

    def __call__(self, name: str, chart: alt.TopLevelMixin | None, caption: str) -> str:
        if chart is None:
            return ""
        spec = chart_spec(chart)
        self.store.write_bytes(f"{self.out}/{name}.png", png_bytes(spec, scale=2))
        self.count += 1
        return figure(inline_svg(spec, prefix=f"c{self.count}"), caption, f"{name}.png", spec)


def chart_sections(df: pl.DataFrame, figures: Figures) -> list[str]:
    """Every other chart the rows support, with its caption."""
    shown = [figures(entry.name, entry.chart, entry.caption) for entry in report_charts(df)]
    return ["<h2>Charts</h2>", *shown] if shown else []


def write_report(study: str | Path) -> Path | str:
    """Write STUDY/report/index.html (self-contained, offline), a PNG per chart and verdicts.json into the
    study's storage (a local folder, or an s3:// or gs:// URI); return the page's location: a Path for a local
    study, else its URI.

    Raises NotAStudyError when STUDY has no results/ directory. An empty results/ gives a page that says so.
    Cost: reads every result file (and the stored predictions, for consistency); about 0.1-1 s of rendering
    per chart.
    """
    store = Store(study)
    built_from = fingerprint(store)  # before reading: rows written meanwhile make the report stale
    rows = load_results(store)
    judgement = judge(store, rows)
    write_verdicts(store, judgement)
    df = add_consistency(rows, lambda relative: read_predictions(store, relative))
    out = report_path(store)
    name = df["study"].drop_nulls().first() if "study" in df.columns else None
    figures = Figures(store, out)
    if df.is_empty():
        body = [overview(df, store.uri), "<p>No results yet: results/ holds no readable result rows.</p>"]
    else:
        body = (verdict_section(judgement, df, figures) + stale_batchnorm(df) + correlation_section(df, figures)
                + [overview(df, store.uri)] + block_sections(df, judgement.pair_tests) + chart_sections(df, figures))
    store.write_text(f"{out}/index.html", page(f"raystudy report: {name or store.name}", body))
    record_built_from(store, built_from)
    return Path(f"{out}/index.html") if store.local else store.uri_of(f"{out}/index.html")
