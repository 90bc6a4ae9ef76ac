"""The report page (``python -m raystudy.report``): verdicts first, with the charts that carry them; then
the correlation analysis, provenance and counts, per-block tables (collapsed) and every other chart. Each chart is
its Vega-Lite spec (its data embedded once) drawn offline by the inlined runtime (and, when asked for, a PNG next to
the page); the rows themselves are beside it too, as results.parquet and summary.csv."""
from __future__ import annotations

import io
import json
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import altair as alt
import polars as pl

from raystudy.analysis.aggregate import summary_table
from raystudy.analysis.catalogue import report_charts
from raystudy.analysis.consistency import add_consistency, read_predictions
from raystudy.analysis.drawing import DrawingProcess
from raystudy.analysis.freshness import built_from, fingerprint, record_built_from
from raystudy.analysis.html import (RENDER, cached_runtime, chart_spec, figure, keep_runtime, page, png_bytes,
                                   png_size, vega_runtime)
from raystudy.analysis.judge import judge, write_verdicts
from raystudy.analysis.labels import definitions_in
from raystudy.analysis.results import load_results
from raystudy.analysis.sections import (block_sections, correlation_section, overview, stale_batchnorm,
                                        verdict_section)
from raystudy.layout import report_path
from raystudy.storage import Store


PNG_SCALE = 2  # pixels per CSS pixel of the PNGs: sharp on high-density screens and in print
CURVES = ("train_loss_curve", "hessian_density", "hessian_density_grid")  # list columns only charts read


class Figures:
    """Turns charts into embedded figures; with ``pngs`` also writes ``out``/<name>.png (PNG_SCALE)
    into ``store``. A chart that drew a sample or an aggregate of its rows says so in its Vega-Lite ``usermeta``
    ("note"), which is added to the caption.

    ``draw`` (spec, scale) -> PNG bytes draws them: ``html.png_bytes`` in this process by default, or a
    ``DrawingProcess``'s ``png``. With a ``renderer`` (one worker thread) each PNG is requested there while the
    caller goes on with the statistics (the thread waits on the drawing process, which draws on the second core,
    ~0.5-3 s a PNG): a figure is then returned as a marker that ``resolve`` replaces in the finished page,
    re-raising any error of its drawing or writing."""

    def __init__(self, store: Store, out: str, pngs: bool = False, renderer: ThreadPoolExecutor | None = None,
                 draw: Callable[..., bytes] = png_bytes):
        self.store, self.out, self.pngs, self.renderer, self.draw = store, out, pngs, renderer, draw
        self.defined: set[str] = set()  # metrics already defined under an earlier figure
        self.pending: dict[str, Future[str]] = {}  # marker -> its figure's HTML
        self.drawn: list[str] = []  # file names of the PNGs written, in page order

    def __call__(self, name: str, chart: alt.TopLevelMixin | None, caption: str) -> str:
        if chart is None:
            return ""
        spec = chart_spec(chart)
        if note := spec.get("usermeta", {}).get("note"):
            caption = f"{caption} {note}"
        defs = definitions_in(caption + json.dumps(spec), self.defined)  # in page order, so not in the thread
        if not self.pngs:
            return figure(spec, caption, definitions=defs, name=name)
        if self.renderer is None:
            return self._with_png(name, spec, caption, defs)
        marker = f"<!--raystudy figure {len(self.pending)}-->"
        self.pending[marker] = self.renderer.submit(self._with_png, name, spec, caption, defs)
        return marker

    def _with_png(self, name: str, spec: dict, caption: str, defs: list[tuple[str, str]]) -> str:
        png = self.draw(spec, scale=PNG_SCALE)
        self.store.write_bytes(f"{self.out}/{name}.png", png)
        self.drawn.append(f"{name}.png")
        return figure(spec, caption, f"{name}.png", png_size(png)[0] // PNG_SCALE, defs, name)

    def resolve(self, html: str) -> str:
        """``html`` (the page's body, joined) with every marker replaced by its figure, once its PNG is written."""
        for marker, done in self.pending.items():
            html = html.replace(marker, done.result())
        self.pending.clear()
        return html


def chart_sections(df: pl.DataFrame, figures: Figures) -> list[str]:
    """Every other chart the rows support, with its caption."""
    shown = [figures(entry.name, entry.chart, entry.caption) for entry in report_charts(df)]
    return ["<h2>Charts</h2>", *shown] if shown else []


def write_tables(store: Store, out: str, rows: pl.DataFrame) -> str:
    """Write the result rows (with the consistency the analysis computed) as ``out``/results.parquet and the
    per-configuration mean and SEM at the final checkpoint as ``out``/summary.csv (both through ``store``); return
    the page's paragraph linking them."""
    buffer = io.BytesIO()
    rows.write_parquet(buffer)
    store.write_bytes(f"{out}/results.parquet", buffer.getvalue())
    store.write_text(f"{out}/summary.csv", summary_table(rows).write_csv())
    return ('<p class="note">The data behind this page, beside it: <a href="results.parquet">results.parquet</a> '
            "(every result row, one per trial x checkpoint; columns as in raystudy/schema.py) and "
            '<a href="summary.csv">summary.csv</a> (mean and SEM over seeds of every metric per configuration at '
            "the final checkpoint).</p>")


def write_report(study: str | Path, pngs: bool = False) -> Path | str:
    """Write STUDY/report/index.html (self-contained, offline), results.parquet, summary.csv, verdicts.json and,
    with ``pngs``, a PNG per chart beside the page, into the study's storage (a local folder, or an s3:// or gs://
    URI); return the page's location: a Path for a local study, else its URI. PNGs an earlier build drew that this
    one did not are removed (after the page is written): every file beside the page is from this build.

    Raises NotAStudyError when STUDY has no results/ directory. An empty results/ gives a page that says so.
    Cost: reads every result file (and the stored predictions, for consistency); charts draw at most a few
    thousand marks each (aggregated or sampled). A second process (``drawing.DrawingProcess``) draws the PNGs
    (about 0.3-3 s each, ~0.25-0.45 GB) while this one computes the statistics, and bundles the page's Vega runtime
    the first time (~2 s, ~0.1 GB; then kept in ``html.runtime_cache()``): without PNGs and with the runtime kept,
    no second process is started.
    """
    store = Store(study)
    runtime = cached_runtime()
    # vl_convert holds the GIL, even while it only bundles the runtime: it runs in a process of its own, started first
    # (while this one is small; it starts in the time the rows take to read).
    drawing = DrawingProcess() if pngs or runtime is None else None
    try:
        return _write_report(store, pngs, drawing, runtime)
    finally:
        if drawing:
            drawing.close()


def runtime_of(drawing: DrawingProcess, last: bool) -> str:
    """The page's Vega runtime, bundled in the drawing process (here, holding the GIL, if that process died: the
    page draws every chart with it); with ``last`` (no PNGs to draw) the process ends as soon as it has answered,
    so that its memory is freed before this one's peak (the charts)."""
    try:
        return drawing.bundle(RENDER)
    except RuntimeError:
        return vega_runtime()
    finally:
        if last:
            drawing.close()


def _write_report(store: Store, pngs: bool, drawing: DrawingProcess | None, runtime: str | None) -> Path | str:
    print_ = fingerprint(store)  # before reading: rows written meanwhile make the report stale
    before = [n for n in built_from(store).get("pngs") or [] if isinstance(n, str) and n.endswith(".png")
              and "/" not in n]  # the PNGs the previous build drew
    full = load_results(store)
    # Every stage but the charts that draw them works on the rows without the per-epoch and per-eigenvalue lists:
    # its many filters then copy a few hundred bytes per row instead of the curves (most of a large study's data).
    curves = [c for c in CURVES if c in full.columns] if {"trial_id", "step"} <= set(full.columns) else []
    rows = full.drop(curves)
    judgement = judge(store, rows)
    write_verdicts(store, judgement)
    df = add_consistency(rows, lambda relative: read_predictions(store, relative))
    whole = df  # with the curves again, for the charts that draw them and results.parquet
    if curves:  # (trial_id, step) is unique after load_results
        whole = df.join(full.select("trial_id", "step", *curves), on=["trial_id", "step"], how="left",
                        maintain_order="left")
    del full
    out = report_path(store)
    name = df["study"].drop_nulls().first() if "study" in df.columns else None
    with ThreadPoolExecutor(1, thread_name_prefix="png") as renderer:
        # The page's runtime is bundled (seconds) while the statistics run, then (in the same thread) the PNGs.
        bundled = renderer.submit(runtime_of, drawing, not pngs) if runtime is None else None
        figures = Figures(store, out, pngs, renderer, drawing.png if drawing else png_bytes)
        if df.is_empty():
            body = [overview(df, store.uri), "<p>No results yet: results/ holds no readable result rows.</p>"]
        else:
            body = ([write_tables(store, out, whole)] + verdict_section(judgement, df, figures) + stale_batchnorm(df)
                    + correlation_section(df, figures) + [overview(df, store.uri)]
                    + block_sections(df, judgement.pair_tests) + chart_sections(whole, figures))
        if bundled is not None:
            runtime = bundled.result()
            keep_runtime(runtime)
        html = page(f"raystudy report: {name or store.name}", [figures.resolve("\n".join(body))], runtime=runtime)
    store.write_text(f"{out}/index.html", html)
    for stale in sorted(set(before) - set(figures.drawn)):  # an earlier build's, not on this page
        store.delete_file(f"{out}/{stale}")
    record_built_from(store, print_, figures.drawn if pngs else None)
    return Path(f"{out}/index.html") if store.local else store.uri_of(f"{out}/index.html")
