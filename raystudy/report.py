"""python -m raystudy.report STUDY [--out DIR] [--png] [--verdicts-only]: rebuild STUDY/report/index.html,
results.parquet, summary.csv, report/verdicts.json and, with --png, a PNG per chart beside the page, from the
stored result rows alone (aggregate -> statistics -> charts -> HTML).
STUDY is a study folder or its s3:// / gs:// URI (<storage>/<study name>); the page is written into the study's
own storage and is self-contained (offline). --out DIR also copies the page (and any PNGs) into a local folder,
e.g. to open one from a bucket. --verdicts-only writes just verdicts.json and prints the verdicts, drawing
nothing (seconds)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from raystudy.layout import report_path, results_dir
from raystudy.storage import Store, StorageError


def build_report(study: str | Path, pngs: bool = False) -> Path | str:
    """Write STUDY/report/index.html (self-contained, offline: the page draws every chart itself), results.parquet,
    summary.csv and, with ``pngs``, a PNG per chart beside the page into the study's storage; return the page's
    location: a Path for a local study, its URI for one in object storage. PNGs of an earlier build that this one
    did not draw are removed.

    Raises raystudy.analysis.results.NotAStudyError when STUDY has no results/ directory; an empty
    results/ gives a page that says so. Cost: reads every result file; with ``pngs``, about 0.3-3 s of rendering
    per chart (most of a large report's time), drawn while the statistics run.
    """
    from raystudy.analysis.page import write_report  # polars, altair, scipy: seconds to import

    return write_report(study, pngs=pngs)


def main(argv: list[str] | None = None) -> int:
    """CLI: print the report's location (exit 0), or one line on stderr and exit 2 when STUDY is no study
    or its storage cannot be used, exit 1 when the storage fails while the report is written (every file
    is written atomically: the previous report, if any, stays whole)."""
    parser = argparse.ArgumentParser(prog="python -m raystudy.report", description=__doc__)
    parser.add_argument("study", help="a study folder or URI (<storage>/<study name>) holding results/")
    parser.add_argument("--out", metavar="DIR", help="also copy the page (and its PNGs) into this local folder")
    png = parser.add_mutually_exclusive_group()
    png.add_argument("--png", dest="pngs", action="store_true",
                     help="also draw a PNG beside the page for each chart (for slides and papers; the page draws its "
                          "charts itself; PNGs are most of the time of a large report)")
    png.add_argument("--no-png", dest="pngs", action="store_false",
                     help="no PNGs (the default; kept for scripts that pass it)")
    parser.add_argument("--verdicts-only", action="store_true",
                        help="write only report/verdicts.json and print the verdicts (no charts, no page)")
    args = parser.parse_args(argv)
    try:  # checked before the slow imports
        store = Store(args.study)
        store.check_usable()
        if not store.is_dir(results_dir(store)):
            print(f"{args.study}: no results/ directory (not a study directory?)", file=sys.stderr)
            return 2
    except StorageError as err:
        print(err, file=sys.stderr)
        return 2
    try:
        return _write(store, args)
    except Exception as err:  # the storage failing mid-way (disk full, bucket gone): one line, exit 1
        from raystudy.faults import storage_fault
        line = storage_fault(err, store)
        if line is None:
            raise
        print(line, file=sys.stderr)
        return 1


def _write(store: Store, args: argparse.Namespace) -> int:
    if args.verdicts_only:
        from raystudy.analysis.judge import judge, verdict_lines, write_verdicts
        judgement = judge(store)
        for line in verdict_lines(judgement.verdicts):
            print(line)
        print(write_verdicts(store, judgement))
        return 0
    print(build_report(args.study, pngs=args.pngs))
    if args.out:
        print(store.copy_dir_to_local(report_path(store), args.out) / "index.html")
    return 0


if __name__ == "__main__":
    from raystudy.cli import exit_fast
    exit_fast(main())
