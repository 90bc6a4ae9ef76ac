"""The report: self-contained offline HTML page that draws every chart itself, a PNG per chart only when asked
for (and what the freshness record says about them), and the CLI's exit codes."""
from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from support.fake_results import write_study
from support.studies import run_cli
from raystudy.analysis.freshness import built_from, report_is_current
from raystudy.report import build_report
from raystudy.storage import Store

REPO = Path(__file__).resolve().parents[1]
CHARTS = {"functions_sam_sharpness_vs_step", "circles_vs_label_noise", "images_sharpness_vs_gap", "images_curvature_vs_gap",
          "hessian_spectral_density",
          # beside the verdicts, and the correlation analysis
          "verdict_a_sharpness_vs_complexity", "verdict_b_sharpness_vs_factor", "verdict_c_paired_differences",
          "correlation_tau", "sharpness_vs_complexity"}


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    return build_report(write_study(tmp_path_factory.mktemp("study")))  # the default: no PNGs


@pytest.fixture(scope="module")
def drawn(report, tmp_path_factory) -> Path:
    """The same study (a copy: file times kept, so the copied report is current) rebuilt with a PNG per chart."""
    study = shutil.copytree(report.parent.parent, tmp_path_factory.mktemp("drawn") / "toy")
    return build_report(study, pngs=True)


def _cli(*args: str) -> tuple[int, str, str]:
    return run_cli(*args, module="raystudy.report", cwd=REPO)


def test_page_is_offline_and_complete(report):
    assert report.name == "index.html" and report.parent.name == "report"
    html = report.read_text()
    # Offline: nothing loads from elsewhere. The only scripts are inline: the chart specs (JSON) and the Vega
    # runtime; tests/test_report_browser.py renders the page with every host unreachable.
    assert html.count("<script") == html.count('<script type="application/json" class="vl-spec">') + 1
    assert re.search(r"<script[^>]*\bsrc=", html) is None
    outside = re.sub(r"<script.*?</script>", "", html, flags=re.S)
    assert "src=" not in outside  # no PNG asked for: nothing stands in for a chart but the chart (see `drawn`)
    assert "<link" not in outside and "@import" not in outside
    assert "http" not in outside.lower()  # no external URL outside the runtime, not even an XML namespace
    assert "raystudy report: toy" in html
    assert "eval mode (BN stats stored), train set, un-augmented, n=500" in html  # what was measured
    assert "0.1.0 / 2.15.0 / 2.60.0" in html and "nonfinite: 1" in html
    for block in ("circles", "circles_noise", "digits", "functions"):  # collapsed, one each
        assert f"<details><summary>Block {block}</summary>" in html
    assert html.count("<caption>mean (SEM) over seeds</caption>") == 4
    assert html.count("each regime vs base, paired by seed") == 1  # only digits has base + other regimes
    assert "93 (1.3)" in html  # digits base test accuracy, mean (SEM)
    # The page opens with the verdicts. The fake functions' sharpness is proportional to the target variance, so
    # the scale-free verdict finds no relation with the shape of the target: A is inconclusive.
    assert html.index("<h2>Verdicts</h2>") < html.index("<h2>Provenance</h2>")
    assert html.index('id="verdict_a_sharpness_vs_complexity"') < html.index("<h2>Provenance</h2>")
    assert "<h2>Does sharpness track generalisation and safety?</h2>" in html
    assert "Family A (block functions): <span class=\"verdict inconclusive\">inconclusive</span>" in html
    assert "Family B (block circles): <span class=\"verdict supported\">supported</span>" in html
    assert "sharpness relative to the target variance" in html and "Settings (the defaults: no study.yaml" in html
    assert '<a href="verdicts.json">verdicts.json</a>' in html
    assert len(CHARTS) == html.count("<figcaption>") == html.count('class="vl-spec"')  # every chart, drawn by the page
    assert set(re.findall(r'<div class="chart" id="(\w+)">', html)) == CHARTS  # index.html#<name> links to each
    assert "<svg" not in outside  # each chart's data once: in its spec, not again as a static drawing
    assert len(html.encode()) < 2_000_000


def test_the_default_draws_no_png_and_its_record_says_so(report):
    outside = re.sub(r"<script.*?</script>", "", report.read_text(), flags=re.S)  # (the runtime can export PNGs)
    assert not list(report.parent.glob("*.png")) and ".png" not in outside and "<img" not in outside
    assert built_from(Store(report.parent.parent))["pngs"] is None
    store = Store(report.parent.parent)
    assert report_is_current(store)  # a run that asks for no PNGs: nothing to rebuild
    assert not report_is_current(store, pngs=True)  # one that asks for them draws them


def test_one_valid_png_per_chart_when_asked(drawn):
    html = drawn.read_text()
    pngs = {p.stem: p for p in drawn.parent.glob("*.png")}
    assert set(pngs) == CHARTS
    for path in pngs.values():
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
        width, height = struct.unpack(">II", data[16:24])
        assert width > 400 and height > 200
        assert f'href="{path.name}"' in html
    # Each chart's PNG stands in for it until the runtime draws the chart: the page's only sources.
    outside = re.sub(r"<script.*?</script>", "", html, flags=re.S)
    assert sorted(re.findall(r'src="([^"]*)"', outside)) == sorted(f"{name}.png" for name in CHARTS)
    assert outside.count('<img class="fallback"') == html.count('class="vl-spec"') == len(CHARTS)
    assert not [p for p in drawn.parent.iterdir() if p.name.startswith(".")]  # no temporary files left
    store = Store(drawn.parent.parent)
    assert sorted(built_from(store)["pngs"]) == sorted(f"{name}.png" for name in CHARTS)
    assert report_is_current(store, pngs=True)  # the run that asked for them: nothing to rebuild
    assert report_is_current(store)  # a plain run: the PNGs are only more than it asks for, no rebuild


def test_a_rebuild_without_pngs_removes_the_last_builds(drawn, tmp_path):
    # A report rebuilt (new rows, or `raystudy report` without --png) leaves no PNG of older rows beside the page;
    # files the report did not draw stay.
    study = shutil.copytree(drawn.parent.parent, tmp_path / "toy")
    (study / "report" / "screenshot.png").write_bytes(b"mine")
    page = build_report(study)
    assert sorted(p.name for p in page.parent.glob("*.png")) == ["screenshot.png"]
    assert '<img class="fallback"' not in page.read_text() and built_from(Store(study))["pngs"] is None


def test_verdicts_json_beside_the_page_and_verdicts_only(report, tmp_path):
    written = json.loads((report.parent / "verdicts.json").read_text())
    assert [(v["family"], v["block"], v["outcome"]) for v in written] == [
        ("A", "functions", "inconclusive"), ("B", "circles", "supported"), ("C", "digits", "inconclusive")]
    for v in written:
        assert v["method"] and v["why"] and v["claim"] and v["n_seeds"] >= 2 and v["statistics"]
        assert v["settings"]["alpha"] == 0.05 and v["settings_source"].startswith("the defaults")
    # --verdicts-only: the same verdicts, no page, no charts, settings from the study file as run.
    study = write_study(tmp_path)
    (study / "study.yaml").write_text("name: toy\nverdicts: {alpha: 0.01, sharpness: {metrics: [fisher_rao]}}\n")
    rc, out, err = _cli(str(study), "--verdicts-only")
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[:3] == ["verdict A (functions): inconclusive - " + written[0]["claim"],
                         "verdict B (circles): supported - " + written[1]["claim"],
                         "verdict C (digits): inconclusive - " + written[2]["claim"]]
    assert lines[3] == str(study / "report" / "verdicts.json")
    assert sorted(p.name for p in (study / "report").iterdir()) == ["verdicts.json"]
    again = json.loads((study / "report" / "verdicts.json").read_text())
    assert again[1]["settings"]["alpha"] == 0.01 and again[1]["settings_source"] == "declared in study.yaml"
    assert [s["metric"] for s in again[1]["statistics"]] == ["Fisher-Rao norm"]  # the declared metric alone


def test_empty_study_gives_a_page_that_says_so(tmp_path, capsys):
    (tmp_path / "results").mkdir()
    rc, out, err = _cli(str(tmp_path))
    assert rc == 0, err
    page = Path(out.strip())
    assert page == tmp_path / "report" / "index.html"
    assert "No results yet" in page.read_text() and not list(page.parent.glob("*.png"))
    from raystudy.report import main  # in this process: a second interpreter would take seconds
    assert main([str(tmp_path), "--no-png"]) == 0  # the default now; scripts that pass it still work
    assert capsys.readouterr().out.strip() == str(page)


@pytest.mark.parametrize("make_dir", [False, True])
def test_cli_not_a_study_directory(tmp_path, make_dir):
    target = tmp_path / "somewhere"
    if make_dir:
        target.mkdir()
    rc, out, err = _cli(str(target))
    assert rc == 2
    assert err == f"{target}: no results/ directory (not a study directory?)\n"
    assert out == "" and not (target / "report").exists()


def test_crafted_rows_cannot_inject_the_page_or_read_outside_the_study(tmp_path):
    """A Parquet file dropped into a shared bucket is data: its strings are escaped everywhere on the page, and a
    predictions path pointing outside the study is never followed (a warning names it)."""
    import polars as pl

    study = write_study(tmp_path)
    evil = "<script>alert(1)</script>"
    rows = [dict(study="toy", block="<img src=x onerror=alert(2)>", family="images", task=evil, model=evil,
                 regime=regime, seed=seed, trial_id=f"{evil}-{regime}-{seed}", step=10, epoch=10, final=True,
                 status="ok", test_acc=0.9, train_acc=0.95, gen_gap=5.0, ece=0.1, fisher_rao=1.0 + seed,
                 predictions="../../../../etc/passwd" if seed == 0 else f"results/x/../../../etc/{seed}.predictions.npz")
            for regime in ("base", "sam") for seed in range(3)]
    pl.DataFrame(rows).write_parquet(study / "results" / "crafted.parquet")
    with pytest.warns(UserWarning, match="not a predictions file inside the study"):
        page = build_report(study)
    html = page.read_text()
    blocks = re.findall(r'<script type="application/json" class="vl-spec">(.*?)</script>', html, flags=re.S)
    assert blocks and not any("</" in b for b in blocks)  # chart data is JSON that cannot close its block
    outside = re.sub(r'<script type="(application/json|module)"[^>]*>.*?</script>', "", html, flags=re.S)
    outside = re.sub(r'<img class="fallback" src="\w+\.png" alt="[^"<>]*" width="\d+">', "", outside)  # our own
    assert "<script" not in outside and "<img" not in outside  # every string from rows escaped as text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html  # shown, as text
    verdicts = json.loads((page.parent / "verdicts.json").read_text())
    assert any(v["block"] == "<img src=x onerror=alert(2)>" for v in verdicts)  # JSON keeps the data as data


def test_rows_summary_and_definitions_beside_the_charts(report):
    import polars as pl

    html = report.read_text()
    rows = pl.read_parquet(report.parent / "results.parquet")
    assert rows.height == 124 and {"trial_id", "step", "sam_sharpness_by_rho"} <= set(rows.columns)
    summary = pl.read_csv(report.parent / "summary.csv")
    digits = summary.filter((pl.col("block") == "digits") & (pl.col("regime") == "base"))
    assert digits["test_acc_mean"].item() == pytest.approx(93.0)
    assert '<a href="results.parquet">results.parquet</a>' in html and '<a href="summary.csv">summary.csv</a>' in html
    # Family C's paired chart shows what the regime did to accuracy beside sharpness and safety.
    spec = json.loads(re.search(r'id="verdict_c_paired_differences">.*?class="vl-spec">(.*?)</script>', html,
                                flags=re.S).group(1).replace("<\\/", "</"))
    labels = {r.get("label") for rows in spec["datasets"].values() for r in rows}
    assert {"test accuracy", "generalisation gap", "SAM-sharpness", "ECE (15 bins, L1)"} <= labels
    # Each metric defined once, under the first chart that shows it.
    for name in ("SAM-sharpness", "Psi", "Fisher-Rao norm", "ECE", "Kendall tau"):
        assert html.count(f"<br><b>{name}</b>: ") == 1, name
    assert html.index("<br><b>SAM-sharpness</b>: ") < html.index('id="verdict_b_sharpness_vs_factor"')


def test_figures_without_pngs_embed_the_spec_alone(tmp_path):
    import altair as alt
    import polars as pl

    from raystudy.analysis.page import Figures
    from raystudy.storage import Store

    chart = alt.Chart(pl.DataFrame({"x": [1.0, 2.0], "y": [3.0, 4.0]})).mark_point().encode(x="x:Q", y="y:Q")
    store = Store(tmp_path)
    html = Figures(store, store.path("report"))("tiny", chart.properties(usermeta={"note": "Drawn: all."}),
                                                          "A SAM-sharpness chart.")
    assert "<img" not in html and ".png" not in html and not list(tmp_path.rglob("*.png"))
    assert 'class="vl-spec"' in html and "A SAM-sharpness chart. Drawn: all." in html  # the note joins the caption
    assert html.count("<b>SAM-sharpness</b>") == 1


def test_pngs_drawn_beside_the_statistics_keep_page_order_and_errors(tmp_path):
    # The renderer thread draws PNGs while the caller goes on: the figures come back in page order, and a PNG that
    # cannot be written fails the build (as the storage failing would without the thread), writing no page.
    from concurrent.futures import ThreadPoolExecutor

    import altair as alt
    import polars as pl

    from raystudy.analysis.page import Figures
    from raystudy.storage import Store

    chart = alt.Chart(pl.DataFrame({"x": [1.0, 2.0], "y": [3.0, 4.0]})).mark_point().encode(x="x:Q", y="y:Q")
    store = Store(tmp_path)
    with ThreadPoolExecutor(1) as renderer:
        figures = Figures(store, store.path("report"), pngs=True, renderer=renderer)
        html = figures.resolve("".join([figures("one", chart, "First."), "<p>between</p>",
                                        figures("two", chart, "Second.")]))
    assert html.index("one.png") < html.index("between") < html.index("two.png") and "raystudy figure" not in html
    assert sorted(p.name for p in tmp_path.rglob("*.png")) == ["one.png", "two.png"] == figures.drawn

    real = Store.write_bytes

    def full_disk(self, path, data):
        if path.endswith(".png"):
            raise OSError(28, "No space left on device")
        real(self, path, data)

    with pytest.MonkeyPatch.context() as mp, ThreadPoolExecutor(1) as renderer:
        mp.setattr(Store, "write_bytes", full_disk)
        figures = Figures(store, store.path("report"), pngs=True, renderer=renderer)
        body = figures("three", chart, "Third.")
        with pytest.raises(OSError, match="No space left"):  # write_report writes index.html only after this
            figures.resolve(body)


def test_drawing_process_draws_what_vl_convert_draws_and_reports_errors():
    # The report's PNGs are drawn in a process of their own (vl_convert holds the GIL): the same image as in this
    # process, a spec vl_convert rejects raises here and the process serves the next one, a dead process is named.
    from raystudy.analysis.drawing import DrawingProcess
    from raystudy.analysis.html import RENDER, png_bytes, vega_runtime
    from raystudy.analysis.page import runtime_of

    spec = {"data": {"values": [{"x": 1, "y": 2}, {"x": 2, "y": 3}]}, "mark": "point",
            "encoding": {"x": {"field": "x", "type": "quantitative"}, "y": {"field": "y", "type": "quantitative"}}}
    with DrawingProcess() as drawing:
        assert drawing.png(spec, scale=2) == png_bytes(spec, scale=2)
        with pytest.raises(ValueError, match="vl_convert failed"):
            drawing.png({"mark": {"type": "no-such-mark"}}, scale=1)
        assert drawing.png(spec, scale=1)[:8] == b"\x89PNG\r\n\x1a\n"
        assert drawing.bundle(RENDER) == vega_runtime()  # the page's runtime, bundled there
        assert 20 < drawing.peak_rss_mb() < 2000  # its own peak, read from /proc
        drawing.proc.kill()
        drawing.proc.wait()
        with pytest.raises(RuntimeError, match="drawing process exited"):
            drawing.png(spec)
        assert runtime_of(drawing, last=True) == vega_runtime()  # the page's runtime all the same, bundled here


def test_the_runtime_is_bundled_once_then_kept(tmp_path, monkeypatch):
    # Without PNGs a report needs its drawing process only to bundle the page's runtime (vl_convert holds the GIL
    # meanwhile): the first report bundles it there and keeps it; later ones start no second process at all.
    from raystudy.analysis import drawing
    from raystudy.analysis.html import cached_runtime, runtime_cache

    started, start = [], drawing.DrawingProcess.__init__
    monkeypatch.setattr(drawing.DrawingProcess, "__init__", lambda self: (started.append(self), start(self))[1])
    (tmp_path / "study" / "results").mkdir(parents=True)
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("HOME", str(tmp_path / "a-file"))  # a cache that cannot be written: bundled each time
    assert build_report(tmp_path / "study").exists() and cached_runtime() is None and len(started) == 1
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    build_report(tmp_path / "study")
    assert len(started) == 2 and started[1].proc.poll() == 0  # ended, once the runtime was bundled
    assert runtime_cache().parent == tmp_path / "home" / ".cache" / "raystudy" / "vega"
    assert 'document.querySelectorAll("figure")' in cached_runtime()  # the runtime with the page's render loop
    build_report(tmp_path / "study")
    assert len(started) == 2  # kept: nothing started
    build_report(tmp_path / "study", pngs=True)
    assert len(started) == 3  # PNGs are drawn there


def test_the_report_never_imports_torch(tmp_path):
    """torch is ~0.4-0.7 GB of a report's memory and none of its work: a whole report (its verdict settings read
    from the study file, stored predictions compared by numpy) is built in a process that never loads it."""
    study = write_study(tmp_path)
    (study / "study.yaml").write_text("name: toy\nblocks: []\nverdicts: {alpha: 0.05}\n")
    code = ("import sys; from raystudy.analysis.page import write_report; "
            f"write_report({str(study)!r}, pngs=False); print('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "False"
