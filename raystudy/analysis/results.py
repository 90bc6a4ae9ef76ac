"""Read a study's result rows (one per trial x checkpoint) from its Parquet dataset.

The measuring stage writes `STUDY_DIR/results/**/*.parquet`; files written by older versions may lack
columns that newer ones have, so files are read one by one and stacked diagonally (a missing column
becomes null, never 0).
"""
from __future__ import annotations

import warnings
from pathlib import Path

import polars as pl

from raystudy.schema import HESSIAN, PERFORMANCE, SAFETY, SCHEMA, SHARPNESS, columns

IDENTITY = columns("identity")
HYPERPARAMETERS = tuple(c for c in columns("hyperparameter") if c != "schedule")
# Set by the regime itself (base vs wd vs sam vs aug): never used to pair a regime with its base.
REGIME_HYPERPARAMETERS = ("weight_decay", "sam_rho", "augment")
GEOMETRY = SHARPNESS + HESSIAN  # every curvature-type metric a chart may plot
# Scalar numbers a summary table averages over seeds (list-valued and provenance columns are not).
SCALAR_METRICS = tuple(c for g in ("performance", "safety", "sharpness", "hessian", "complexity")
                       for c in columns(g) if SCHEMA[c] == pl.Float64 and c != "sam_sharpness_rho")


class NotAStudyError(FileNotFoundError):
    """Raised when a directory has no `results/` folder."""


def result_files(study_dir: str | Path) -> list[Path]:
    """Parquet files under STUDY_DIR/results, oldest first (by modification time, then path).

    Names starting with "." or "_" are skipped: that is how atomic writers name files in flight.
    Raises NotAStudyError when there is no results/ directory.
    """
    root = Path(study_dir) / "results"
    if not root.is_dir():
        raise NotAStudyError(f"{study_dir}: no results/ directory (not a study directory?)")
    files = [p for p in root.rglob("*.parquet")
             if p.is_file() and not any(part.startswith((".", "_")) for part in p.relative_to(root).parts)]
    return sorted(files, key=lambda p: (p.stat().st_mtime_ns, str(p)))


def load_results(study_dir: str | Path) -> pl.DataFrame:
    """All result rows of a study as one frame (empty frame, no columns, when nothing is written yet).

    Files are stacked with missing columns as null; when a (trial_id, step) pair appears more than once
    (a re-measured checkpoint) the row written last wins. NaN in float metrics is turned into null so
    means and tests skip it. An unreadable file is skipped with a warning naming it. Cost: reads every file.
    """
    frames = []
    for path in result_files(study_dir):
        try:
            frames.append(pl.read_parquet(path, hive_partitioning=False))
        except Exception as err:  # a damaged file must not hide every other result
            warnings.warn(f"{path}: unreadable Parquet file skipped ({err})", stacklevel=2)
    frames = [f for f in frames if f.width > 0]
    if not frames:
        return pl.DataFrame()
    df = pl.concat(frames, how="diagonal_relaxed")
    if "task" not in df.columns and "dataset" in df.columns:
        df = df.with_columns(task=pl.col("dataset"))
    if {"trial_id", "step"} <= set(df.columns):
        df = df.unique(subset=["trial_id", "step"], keep="last", maintain_order=True)
    floats = [c for c, t in df.schema.items() if t in (pl.Float32, pl.Float64)]
    return df.with_columns(pl.col(floats).fill_nan(None))


def final_rows(df: pl.DataFrame) -> pl.DataFrame:
    """Rows marking a trial's last checkpoint (final == true); empty when the column is absent."""
    if "final" not in df.columns:
        return df.clear()
    return df.filter(pl.col("final").fill_null(False))


def ok_rows(df: pl.DataFrame) -> pl.DataFrame:
    """Rows whose measurement finished with finite numbers (status == "ok", or no status column)."""
    if "status" not in df.columns:
        return df
    return df.filter(pl.col("status") == "ok")


def present(df: pl.DataFrame, columns: tuple[str, ...] | list[str]) -> list[str]:
    """The given columns that exist in df and hold at least one non-null value, in the given order."""
    return [c for c in columns if c in df.columns and df[c].null_count() < df.height]
