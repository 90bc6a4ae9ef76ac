"""Self-contained HTML: tables from polars frames, charts as Vega-Lite specs drawn by the Vega runtime inlined
into the page (vl-convert's bundle of Vega, Vega-Lite and Vega-Embed), one page with plain CSS. Nothing on the
page loads from a network address, so it opens offline. Each chart's data is embedded once, in its spec; without
JavaScript the chart's PNG beside the page, when one was drawn, stands in (an <img>, not a second copy of the
data)."""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import os
import struct
from html import escape
from pathlib import Path

import altair as alt
import polars as pl
import vl_convert

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 1200px;
       padding: 0 1rem; color: #222; line-height: 1.45; }
h1 { font-size: 1.6rem; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2rem; margin-top: 2.5rem; }
h3 { margin-top: 1.8rem; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-size: .85rem; margin: .5rem 0 1rem; }
table { max-width: 100%; } th { overflow-wrap: anywhere; }
th, td { border: 1px solid #ddd; padding: .2rem .4rem; text-align: right; }
th { background: #f3f3f3; } td.text { text-align: left; }
caption { caption-side: top; text-align: left; font-weight: 600; padding: .3rem 0; }
figure { margin: 1.5rem 0; } figcaption { font-size: .9rem; color: #444; max-width: 900px; }
dl { display: grid; grid-template-columns: max-content auto; gap: .2rem 1rem; } dt { font-weight: 600; }
.note { color: #555; font-size: .9rem; }
details { margin: .6rem 0; } summary { cursor: pointer; font-weight: 600; }
.chart { max-width: 100%; overflow-x: auto; } .vg-tooltip { font-size: .8rem; }
.chart img.fallback { max-width: 100%; height: auto; }
.warn { background: #fff4e0; border-left: 4px solid #e8a33d; padding: .4rem .8rem; }
.verdict { padding: 0 .4rem; border-radius: 3px; } .supported { background: #d9f2dd; }
.contradicted { background: #f8d7d7; } .inconclusive { background: #eee; }
"""
# Left-aligned identity columns; numbers and "mean (sem)" cells stay right-aligned for comparison.
TEXT_COLUMNS = ("block", "family", "task", "model", "regime", "metric", "group", "alternative", "correction",
                "optimizer")
DIGITS = 5  # significant digits of floats in embedded chart data: tooltips show 4, pixels need far fewer


def _round(value: object) -> object:
    if isinstance(value, float) and math.isfinite(value) and value != 0.0:
        return float(f"{value:.{DIGITS}g}")
    return value


def chart_spec(chart: alt.TopLevelMixin) -> dict:
    """The chart's Vega-Lite spec with its data inlined once (altair's top-level ``datasets``; no row limit: the
    charts aggregate or sample before drawing) and floats cut to DIGITS significant digits, which roughly halves
    the JSON. Cost: linear in the data values."""
    with alt.data_transformers.disable_max_rows():
        spec = chart.to_dict()
    for name, records in spec.get("datasets", {}).items():
        spec["datasets"][name] = [{k: _round(v) for k, v in r.items()} for r in records]
    return spec


def png_bytes(spec: dict, scale: float = 2.0) -> bytes:
    """PNG image of a Vega-Lite spec at `scale` times its CSS pixel size."""
    return vl_convert.vegalite_to_png(spec, scale=scale)


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) in pixels from a PNG's IHDR header."""
    return struct.unpack(">II", data[16:24])


def cell(value: object) -> str:
    """Table cell text: '-' for null/NaN, 4 significant digits for floats, str() otherwise."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def table(frame: pl.DataFrame, caption: str | None = None) -> str:
    """An HTML table of every row and column of `frame` (header = column names), escaped."""
    text_cols = set(TEXT_COLUMNS) & set(frame.columns)
    head = "".join(f"<th>{escape(c)}</th>" for c in frame.columns)
    body = []
    for row in frame.iter_rows():
        tds = "".join(f'<td{" class=text" if c in text_cols else ""}>{escape(cell(v))}</td>'
                      for c, v in zip(frame.columns, row))
        body.append(f"<tr>{tds}</tr>")
    cap = f"<caption>{escape(caption)}</caption>" if caption else ""
    return (f'<div class="scroll"><table>{cap}<thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>')


def definition_list(items: dict[str, str]) -> str:
    """An HTML <dl> of label -> value pairs, escaped."""
    return "<dl>" + "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in items.items()) + "</dl>"


def figure(spec: dict, caption: str, png_name: str | None = None, png_width: int | None = None,
           definitions: list[tuple[str, str]] = (), name: str | None = None) -> str:
    """A <figure> with the chart's Vega-Lite spec (JSON in a script block, drawn by the page's runtime with
    tooltips, and zoom where the chart allows it), its caption and, with ``png_name``, a relative link to the PNG
    next to the page. That PNG also stands in for the chart (``png_width`` CSS pixels wide) until JavaScript draws
    it, or when it cannot: a picture of the data rather than a second copy of it. ``definitions``: (name, meaning)
    pairs listed under the caption. ``name``: the chart's id on the page (``index.html#<name>`` links to it)."""
    text = json.dumps(spec, separators=(",", ":")).replace("</", "<\\/")  # "</" would end the block early
    data = f'<script type="application/json" class="vl-spec">{text}</script>'
    fallback = link = ""
    if png_name:
        size = f' width="{png_width}"' if png_width else ""
        fallback = f'<img class="fallback" src="{escape(png_name)}" alt="{escape(caption)}"{size}>'
        link = f' (<a href="{escape(png_name)}">{escape(png_name)}</a>)'
    defined = "".join(f"<br><b>{escape(term)}</b>: {escape(meaning)}." for term, meaning in definitions)
    anchor = f' id="{escape(name)}"' if name else ""
    return (f'<figure><div class="chart"{anchor}>{fallback}</div>{data}<figcaption>{escape(caption)}{link}{defined}'
            "</figcaption></figure>")


# The loop that renders every figure's spec into its chart div (bundled with vegaEmbed in scope).
RENDER = ("for (const fig of document.querySelectorAll('figure')) {"
          " const el = fig.querySelector('.chart'), data = fig.querySelector('script.vl-spec');"
          " if (!el || !data) continue;"
          " el.replaceChildren();"  # the PNG stand-in goes; the interactive chart takes its place
          " vegaEmbed(el, JSON.parse(data.textContent), {actions: false, renderer: 'svg'})"
          ".catch((err) => console.error('chart not rendered: ' + err)); }")


@functools.lru_cache(maxsize=1)
def vega_runtime() -> str:
    """Vega, Vega-Lite and Vega-Embed bundled into one script (~0.9 MB), plus RENDER. Cost: ~2 s to bundle, once
    per process, holding the GIL (the report bundles it in its drawing process once, then reads ``cached_runtime``)."""
    return vl_convert.javascript_bundle(snippet=RENDER)


def runtime_cache() -> Path:
    """Where the bundled runtime is kept between reports: ~/.cache/raystudy/vega/runtime-<key>.js, the key a hash of
    vl_convert's version (its Vega, Vega-Lite and Vega-Embed) and RENDER, so that either changing bundles anew."""
    key = hashlib.sha256(f"{vl_convert.__version__}\0{RENDER}".encode()).hexdigest()[:16]
    return Path("~/.cache/raystudy/vega").expanduser() / f"runtime-{key}.js"


def cached_runtime() -> str | None:
    """The runtime an earlier report bundled (``vega_runtime()``'s text), or None when there is none to read."""
    try:
        text = runtime_cache().read_text()
    except (OSError, UnicodeDecodeError, RuntimeError):  # RuntimeError: no home folder to expand ~ to
        return None
    return text if len(text) > 100_000 else None  # the bundle is ~0.9 MB: anything short is not it


def keep_runtime(text: str) -> None:
    """Keep a bundled runtime for later reports (written atomically; not at all where the cache cannot be
    written: the next report bundles it again)."""
    try:
        path = runtime_cache()
    except RuntimeError:  # no home folder
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def page(title: str, body: list[str], interactive: bool = True, runtime: str | None = None) -> str:
    """A complete HTML document: `title` as <title> and <h1>, then the body fragments in order; with
    ``interactive`` and any chart spec on the page, the inlined Vega runtime that renders them (``runtime`` when
    given, else ``vega_runtime()``)."""
    content = "\n".join(body)
    script = ""
    if interactive and 'class="vl-spec"' in content:
        runtime = (vega_runtime() if runtime is None else runtime).replace("</script", "<\\/script")
        script = f'<script type="module">{runtime}</script>\n'
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{escape(title)}</title><style>{CSS}</style></head>\n<body>\n"
            f"<h1>{escape(title)}</h1>\n{content}\n{script}</body></html>\n")
