"""raystudy: Ray-distributed studies of loss-landscape geometry.

The public API, for notebooks and scripts (each function imports what it needs when called, so
``import raystudy`` is instant)::

    import raystudy
    study = raystudy.load_study("studies/smoke.yaml")        # validated study (pydantic model)
    run = raystudy.run_study("studies/smoke.yaml", num_cpus=2)  # train, measure, report; like the CLI
    rows = raystudy.load_results(run.study_dir)               # polars DataFrame, one row per checkpoint
    page = raystudy.build_report(run.study_dir)               # report/index.html (a Path, or a URI)

The command line does the same: ``raystudy run|report|data|schema`` (``raystudy --help``).
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["StudyRun", "__version__", "build_report", "load_results", "load_study", "run_study"]

if TYPE_CHECKING:
    import polars as pl

    from raystudy.study import Study


@dataclass(frozen=True)
class StudyRun:
    """What :func:`run_study` did: the CLI's exit code (0 all finished, 1 some failed, 2 bad input,
    130 interrupted) and the study's folder or URI in its storage (``None`` when the study file was bad)."""

    exit_code: int
    study_dir: str | None

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


def load_study(path: str | Path) -> "Study":
    """Read and validate a study YAML file. Raises ``raystudy.study.StudyError`` (one line naming the file
    and field) when it is not a valid study."""
    from raystudy.study import load_study as _load

    return _load(path)


def run_study(study: "str | Path | Study | dict[str, Any]", *, storage: str | None = None, fresh: bool = False,
              remeasure: bool = False, address: str | None = None, num_cpus: int | None = None,
              report: bool = True, pngs: bool = False) -> StudyRun:
    """Run or resume a study, exactly as ``raystudy run`` does (same options, same output, same exit codes).

    ``study`` is a YAML file, or a study given as data (a validated ``Study`` or a plain dict as the YAML
    would hold it), which is written to a temporary YAML file first; a relative ``storage`` then still
    means relative to the current directory. ``pngs`` also draws a PNG per chart beside the report page (``--png``).
    Blocks until the study is done; Ctrl-C stops it (a rerun resumes).
    """
    import yaml

    from raystudy.run import main
    from raystudy.study import Study as _Study, StudyError
    from raystudy.storage import StorageError, study_store

    with tempfile.TemporaryDirectory(prefix="raystudy-") as tmp:
        if isinstance(study, (_Study, dict)):
            data = study.model_dump(mode="json", exclude_unset=True) if isinstance(study, _Study) else dict(study)
            path = Path(tmp) / f"{data.get('name', 'study')}.yaml"
            path.write_text(yaml.safe_dump(data, sort_keys=False))
        else:
            path = Path(study)
        argv = [str(path)] + (["--storage", storage] if storage else []) + (["--fresh"] if fresh else []) \
            + (["--remeasure"] if remeasure else []) + (["--address", address] if address else []) \
            + (["--num-cpus", str(num_cpus)] if num_cpus else []) + ([] if report else ["--no-report"]) \
            + (["--png"] if pngs else [])
        code = main(argv)
        try:
            spec = load_study(path)  # bad input was already reported by main (exit 2): no folder then
            where = study_store(storage or spec.storage, spec.name).uri
        except (StudyError, StorageError):
            where = None
    return StudyRun(code, where)


def load_results(study_dir: "str | Path") -> "pl.DataFrame":
    """Every result row of a study (its folder, or an s3:// / gs:// URI) as one polars DataFrame: one row per
    measured checkpoint, columns as ``raystudy.schema`` defines them, missing values null. A re-measured
    checkpoint counts once (the latest row)."""
    from raystudy.analysis.results import load_results as _load

    return _load(study_dir)


def build_report(study_dir: "str | Path", out: "str | Path | None" = None, pngs: bool = False) -> "Path | str":
    """Rebuild ``<study_dir>/report/`` (index.html with every chart, verdicts.json, results.parquet, summary.csv)
    from the stored rows alone and return the page's location (a Path, or a URI for a study in object storage).
    ``pngs`` also draws a PNG per chart beside the page (seconds per chart). With ``out``, also copy the report
    into that local folder and return the copied page's Path."""
    from raystudy.layout import report_path
    from raystudy.report import build_report as _build
    from raystudy.storage import Store

    page = _build(study_dir, pngs=pngs)
    if out is None:
        return page
    store = Store(study_dir)
    return store.copy_dir_to_local(report_path(store), out) / "index.html"
