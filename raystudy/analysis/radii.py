"""SAM-sharpness per perturbation radius, defined once for every analysis module: the radii a study measured
(read from the ``sam_sharpness_by_rho`` lists the metric writes, raystudy/metrics/sam_sharpness.py), the column the
analysis adds for each (``_sam_<rho>``), its radius and its label."""
from __future__ import annotations

import polars as pl

BY_RHO = "sam_sharpness_by_rho"  # list of {rho, mean, std, median, min, max}, one entry per measured radius
PREFIX = "_sam_"


def sam_radii(rows: pl.DataFrame) -> list[float]:
    """The distinct radii in ``rows``' ``sam_sharpness_by_rho`` lists, ascending; empty when the column is absent
    or all null. Cost: one pass over the lists (vectorised)."""
    if BY_RHO not in rows.columns or rows[BY_RHO].null_count() == rows.height:
        return []
    return rows[BY_RHO].explode().struct.field("rho").drop_nulls().unique().sort().to_list()


def radius_column(rho: float) -> str:
    """The column holding SAM-sharpness at radius ``rho``: ``_sam_0.005`` (6 significant digits)."""
    return f"{PREFIX}{rho:g}"


def radius_columns(rows: pl.DataFrame) -> list[str]:
    """The per-radius columns ``with_rho_columns`` added to ``rows`` (derived columns such as rel__sam_* are not)."""
    return [c for c in rows.columns if c.startswith(PREFIX)]


def column_radius(column: str) -> float:
    """The radius of a ``radius_column`` name."""
    return float(column.removeprefix(PREFIX))


def radius_label(column: str) -> str:
    """How a page names a radius column: "SAM-sharpness rho=0.005"."""
    return f"SAM-sharpness rho={column.removeprefix(PREFIX)}"


def with_rho_columns(rows: pl.DataFrame) -> pl.DataFrame:
    """``rows`` with SAM-sharpness (the mean over draws) at each measured radius as its own column
    (``radius_column``); null where a row did not measure that radius."""
    entry = pl.element().struct.field
    return rows.with_columns(
        pl.col(BY_RHO).list.eval(pl.element().filter(entry("rho") == r).struct.field("mean")).list.first()
        .alias(radius_column(r)) for r in sam_radii(rows))


def sam_long(rows: pl.DataFrame, index: list[str]) -> pl.DataFrame:
    """``index`` + rho + value: one row per (row, measured radius) with SAM-sharpness (mean over draws) as value,
    rows without the lists left out."""
    return (rows.select(*index, BY_RHO).drop_nulls(BY_RHO).explode(BY_RHO).unnest(BY_RHO)
            .select(*index, "rho", value=pl.col("mean")).drop_nulls("value"))
