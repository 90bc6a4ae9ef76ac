"""The report opened in a real headless browser (Debian's chromium), offline: every chart renders through the
inlined Vega runtime, the console shows no error, every chart fits its column in a 1,200 px window, and a
screenshot is saved."""
import html as htmllib
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from support.fake_results import write_study
from raystudy.report import build_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed "
                                "(apt-get install chromium); .ci/run installs it")
# No network at all: every host resolves to nothing, so anything the page tried to fetch would fail.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--host-resolver-rules=MAP * ~NOTFOUND", "--enable-logging=stderr", "--v=0",
         "--virtual-time-budget=20000"]


def _chromium(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp / f"profile-{len(list(tmp.glob('profile-*')))}"
    return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True,
                          text=True, timeout=180)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("browser")
    index = build_report(write_study(tmp / "study"))
    dom = _chromium(tmp, "--dump-dom", index.as_uri())
    shot = index.parent / "screenshot.png"
    _chromium(tmp, f"--screenshot={shot}", "--window-size=1280,4000", index.as_uri())
    return index, dom, shot


def test_every_chart_renders_offline(rendered):
    index, dom, _ = rendered
    html = index.read_text()
    n_charts = html.count('class="vl-spec"')
    assert n_charts >= 5 and n_charts == html.count("<figure>")
    assert {p.name for p in index.parent.glob("*.png")} <= {"screenshot.png"}  # no PNG asked for (but ours):
    assert '<img class="fallback"' not in html  # the page draws every chart itself
    assert dom.returncode == 0, dom.stderr[-2000:]
    # vega-embed marks each container it rendered into; each holds exactly one chart.
    containers = re.findall(r'<div class="chart vega-embed"[^>]*>(.*?)</figure>', dom.stdout, flags=re.S)
    assert len(containers) == n_charts
    assert all(c.count("<svg") == 1 for c in containers)


def test_console_shows_no_errors(rendered):
    _, dom, _ = rendered
    console = [line for line in dom.stderr.splitlines() if "CONSOLE" in line]
    errors = [line for line in console if ":ERROR:" in line or "not rendered" in line or "Uncaught" in line]
    assert not errors, "\n".join(errors)


# Appended to a copy of the page: once every chart is drawn, measure each one in the laid-out page and leave the
# numbers in an attribute that --dump-dom prints.
MEASURE = """<script>
function measure() {
  const charts = [...document.querySelectorAll('figure > .chart')];
  if (charts.some((el) => !el.querySelector('svg'))) { setTimeout(measure, 100); return; }
  const out = charts.map((el) => { const svg = el.querySelector('svg');
    return {column: el.parentElement.clientWidth, box: el.clientWidth, scroll: el.scrollWidth,
            svg: svg.getBoundingClientRect().width, marks: svg.querySelectorAll('g.role-mark > *').length}; });
  document.body.setAttribute('data-layout', JSON.stringify(out));
}
window.addEventListener('load', () => setTimeout(measure, 100));
</script></body>"""


def test_every_chart_fits_its_column_at_1200px(rendered, tmp_path):
    index, _, _ = rendered
    measured = index.parent / "measured.html"
    head, _, tail = index.read_text().rpartition("</body>")  # the page's own end (the runtime may spell it too)
    measured.write_text(head + MEASURE + tail)
    dom = _chromium(tmp_path, "--window-size=1200,3000", "--dump-dom", measured.as_uri())
    found = re.search(r'data-layout="([^"]*)"', dom.stdout)
    assert found, dom.stderr[-2000:]
    charts = json.loads(htmllib.unescape(found.group(1)))
    assert len(charts) == index.read_text().count('class="vl-spec"')
    for c in charts:
        assert 1100 <= c["column"] <= 1200  # the page's column in a 1,200 px window
        assert c["svg"] <= c["column"] and c["scroll"] <= c["box"], c  # no chart wider than it, nothing cut
        assert c["marks"] > 0, c  # drawn: data marks, not only axes


def test_screenshot_is_a_png(rendered):
    _, _, shot = rendered
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
