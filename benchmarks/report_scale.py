"""Does the report scale with the study? Builds study folders by replicating realistic result rows (the three
families of tests/support/fake_results.py, 124 rows with learning curves, about the smoke study's 141) 1x, 10x, 100x,
700x with new trial ids, then times ``write_report`` on each in a fresh child process and prints its seconds (wall
and CPU, the drawing process's included), peak RSS (the report's process, and beside it the drawing process's, "-"
when none was started) and the size of index.html. The report is built with its defaults (no PNGs, as the README
documents); ``--png`` also draws a PNG per chart, as ``raystudy report --png`` does. It prints numbers, it asserts
none: on a shared machine the wall time follows the other programs' load, the CPU seconds much less.

Replica r of a trial gets the trial id suffix "-rN", the seed + 100 * (r // 10) and the learning rate x (1 + r % 10
/ 100): more seeds and a ten-valued learning-rate axis, as a real study grows (regime pairs stay paired by seed).
Rows are written one Parquet file per trial, as fake_results does. Goals (issue 15): 100k rows in <= 60 s and
<= 2 GB on 2 cores, index.html <= 5 MB at any size, < 2 MB at the smoke study's size.

    uv run python benchmarks/report_scale.py [--sizes 1 10 100 700] [--root /tmp/report_scale] [--png]
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl

from raystudy.schema import CURVE_POINT

REPO = Path(__file__).resolve().parents[1]
CHILD = """
import json, resource, sys, time
from pathlib import Path
from raystudy.analysis import drawing
from raystudy.analysis.page import write_report
close, peaks = drawing.DrawingProcess.close, []
def noted(self):  # the drawing process's own peak (the RUSAGE_CHILDREN one starts at this process's size)
    if self.proc.poll() is None and not self.proc.stdin.closed:  # not closed already
        peaks.append(self.peak_rss_mb())
    close(self)
drawing.DrawingProcess.close = noted
t0 = time.perf_counter()
index = Path(write_report(sys.argv[1], pngs=sys.argv[2] == "png"))
use, drawn = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"seconds": time.perf_counter() - t0, "rss_mb": use.ru_maxrss / 1024,
                  "cpu_s": use.ru_utime + use.ru_stime + drawn.ru_utime + drawn.ru_stime,
                  "draw_cpu_s": drawn.ru_utime + drawn.ru_stime, "draw_rss_mb": max(peaks, default=None),
                  "html_mb": index.stat().st_size / 1e6,
                  "folder_mb": sum(p.stat().st_size for p in index.parent.iterdir()) / 1e6}))
"""


def base_rows(tmp: Path) -> pl.DataFrame:
    """The fabricated rows of tests/support/fake_results.py, as the report reads them (re-measured rows resolved), with
    the learning curve a real final checkpoint stores (train_loss_curve: every epoch, as the smoke study's)."""
    sys.path.insert(0, str(REPO / "tests"))
    from support.fake_results import write_study

    from raystudy.analysis.results import load_results
    rows = load_results(write_study(tmp))
    curves = [[{"epoch": e, "loss": 2.0 / (1 + e) * (1 + 0.1 * seed)} for e in range(1, int(epochs) + 1)]
              if final else None for epochs, seed, final in rows.select("epochs", "seed", "final").iter_rows()]
    return rows.with_columns(pl.Series("train_loss_curve", curves, dtype=pl.List(CURVE_POINT)))


def replicate(rows: pl.DataFrame, times: int, study: Path) -> int:
    """Write ``times`` replicas of ``rows`` under study/results, one file per trial. Returns the row count."""
    shutil.rmtree(study, ignore_errors=True)
    parts = []
    for r in range(times):
        parts.append(rows.with_columns(trial_id=pl.col("trial_id") + f"-r{r}", seed=pl.col("seed") + 100 * (r // 10),
                                       lr=pl.col("lr") * (1 + (r % 10) / 100)))
    everything = pl.concat(parts)
    for (trial,), part in everything.group_by("trial_id"):
        path = study / "results" / trial / "rows.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        part.write_parquet(path)
    return everything.height


def measure(study: Path, pngs: bool = False) -> dict:
    """write_report(study, pngs) in a fresh Python process: wall seconds, CPU seconds of the process (imports included;
    less sensitive than the wall to other programs on a shared machine), peak RSS (MB), index.html and folder
    size (MB)."""
    done = subprocess.run([sys.executable, "-c", CHILD, str(study), "png" if pngs else "-"], capture_output=True, text=True, cwd=REPO)
    if done.returncode:
        raise RuntimeError(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 10, 100, 700])
    parser.add_argument("--root", type=Path, help="where the study folders go (default: a temporary folder)")
    parser.add_argument("--png", action="store_true", help="also draw a PNG per chart (raystudy report --png)")
    args = parser.parse_args()
    root = args.root or Path(tempfile.mkdtemp(prefix="report_scale-"))
    rows = base_rows(root / "seed")
    print(f"{'x':>5} {'rows':>7} {'trials':>7} {'build s':>8} {'report s':>9} {'CPU s':>6} {'of it drawing':>13} "
          f"{'peak RSS MB':>12} {'drawing MB':>11} {'index.html MB':>14} {'report/ MB':>11}", flush=True)
    for times in args.sizes:
        t0 = time.perf_counter()
        n = replicate(rows, times, root / f"x{times}")
        built = time.perf_counter() - t0
        m = measure(root / f"x{times}", args.png)
        drawing_mb = "-" if m["draw_rss_mb"] is None else f"{m['draw_rss_mb']:.0f}"
        print(f"{times:>5} {n:>7} {rows['trial_id'].n_unique() * times:>7} {built:>8.1f} {m['seconds']:>9.1f} "
              f"{m['cpu_s']:>6.1f} {m['draw_cpu_s']:>13.1f} "
              f"{m['rss_mb']:>12.0f} {drawing_mb:>11} {m['html_mb']:>14.2f} {m['folder_mb']:>11.2f}",
              flush=True)


if __name__ == "__main__":
    main()
