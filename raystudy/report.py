"""python -m raystudy.report STUDY_DIR: rebuild STUDY_DIR/report/index.html and one PNG per chart from the
stored result rows alone (aggregate -> statistics -> charts -> HTML). The page is self-contained (offline)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def build_report(study_dir: str | Path) -> Path:
    """Write STUDY_DIR/report/index.html (self-contained, offline) and a PNG per chart; return the page's path.

    Raises raystudy.analysis.results.NotAStudyError when STUDY_DIR has no results/ directory; an empty
    results/ gives a page that says so. Cost: reads every result file; about 0.1-1 s of rendering per chart.
    """
    from raystudy.analysis.page import write_report  # polars, altair, scipy: seconds to import

    return write_report(study_dir)


def main(argv: list[str] | None = None) -> int:
    """CLI: print the report's path (exit 0), or one line on stderr and exit 2 when STUDY_DIR is no study."""
    parser = argparse.ArgumentParser(prog="python -m raystudy.report", description=__doc__)
    parser.add_argument("study_dir", help="a study directory (<storage>/<study name>) holding results/")
    args = parser.parse_args(argv)
    if not (Path(args.study_dir) / "results").is_dir():  # checked before the slow imports
        print(f"{args.study_dir}: no results/ directory (not a study directory?)", file=sys.stderr)
        return 2
    print(build_report(args.study_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
