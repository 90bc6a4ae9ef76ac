"""Charts of the Hessian measurements: spectral density per regime and curvature vs generalisation gap.
(Family A/B curvature uses the family charts with metric="hessian_lambda_max".)"""
from __future__ import annotations

import altair as alt
import numpy as np
import polars as pl

from raystudy.analysis.aggregate import comparison_keys, condition_label, config_label
from raystudy.analysis.charts import HEIGHT, WIDTH, images_vs_gap
from raystudy.analysis.labels import chart_title
from raystudy.analysis.results import final_rows, ok_rows, present

DENSITY_COLUMNS = ("hessian_density_grid", "hessian_density")


def common_grid(grids: list[np.ndarray], max_points: int = 300) -> np.ndarray:
    """One eigenvalue grid for several densities: the trials' own grid when they all share it (and it has
    at most max_points nodes), else an even grid over the union of their ranges. Shape (n,)."""
    if all(g.shape == grids[0].shape and np.allclose(g, grids[0]) for g in grids) and grids[0].size <= max_points:
        return np.sort(grids[0])
    lo, hi = min(g.min() for g in grids), max(g.max() for g in grids)
    return np.linspace(lo, hi, min(max_points, max(g.size for g in grids)))


def on_grid(grid: np.ndarray, nodes: np.ndarray, density: np.ndarray) -> np.ndarray:
    """A density given at `nodes`, linearly interpolated onto `grid` (zero outside its nodes). Shape of grid."""
    order = np.argsort(nodes)
    return np.interp(grid, nodes[order], density[order], left=0.0, right=0.0)


def density_frame(df: pl.DataFrame, floor: float = 1e-8) -> pl.DataFrame:
    """Mean spectral density over seeds per (configuration panel, regime) at the final checkpoint.

    A panel is one configuration (block / task / model and varying hyperparameters such as factor), so
    only seeds of one setting are averaged. Columns: panel, regime (with sam_rho etc. when they vary),
    n_trials, eigenvalue, density (clipped below at `floor` so a log axis works). Regimes of one panel
    share one grid. Empty frame when no trial stored a density.
    """
    rows = ok_rows(final_rows(df))
    if len(present(rows, DENSITY_COLUMNS)) < 2:
        return pl.DataFrame()
    config, condition = comparison_keys(df)
    rows = rows.drop_nulls(list(DENSITY_COLUMNS))
    rows = rows.with_columns(panel=config_label(config), regime=condition_label(rows, config, condition))
    out = []
    for (panel,), trials in rows.group_by("panel", maintain_order=True):
        nodes = [np.asarray(g, dtype=float) for g in trials[DENSITY_COLUMNS[0]]]
        values = [np.asarray(d, dtype=float) for d in trials[DENSITY_COLUMNS[1]]]
        grid = common_grid(nodes)  # regimes of a panel share it, so their curves overlay exactly
        regimes = trials["regime"].to_list()
        for regime in dict.fromkeys(regimes):
            mine = [on_grid(grid, g, d) for g, d, r in zip(nodes, values, regimes) if r == regime]
            out.append(pl.DataFrame({"panel": panel, "regime": regime, "n_trials": len(mine), "eigenvalue": grid,
                                     "density": np.maximum(np.mean(mine, axis=0), floor)}))
    return pl.concat(out).sort("panel", maintain_order=True) if out else pl.DataFrame()


def spectral_density(df: pl.DataFrame, floor: float = 1e-8) -> alt.Chart | None:
    """Hessian spectral density (SLQ) at the final checkpoint, mean over seeds, one line per regime overlaid,
    log density axis (floor `floor`); one panel per task / model. None when no density was stored."""
    frame = density_frame(df, floor)
    if frame.is_empty():
        return None
    chart = alt.Chart(frame).mark_line().encode(
        x=alt.X("eigenvalue:Q", title="Hessian eigenvalue"),
        y=alt.Y("density:Q", scale=alt.Scale(type="log"), axis=alt.Axis(tickCount=5, format="~e"),
                title=f"spectral density (log; floor {floor:g})"),
        color=alt.Color("regime:N"),
        tooltip=["panel", "regime", "n_trials", alt.Tooltip("eigenvalue:Q", format=".4g"),
                 alt.Tooltip("density:Q", format=".3g")],
    ).properties(width=WIDTH + 60, height=HEIGHT)
    title = chart_title(ok_rows(final_rows(df)),
                        "Hessian spectral density at the final checkpoint (SLQ, mean over seeds)", "hessian_n")
    return chart.facet(facet=alt.Facet("panel:N", title=None), columns=3).resolve_scale(
        x="independent", y="independent").properties(title=title)


def curvature_vs_gap(df: pl.DataFrame) -> alt.Chart | None:
    """Family C: Hessian lambda_max and trace against the generalisation gap, one point per trial,
    coloured by regime. None when neither was measured."""
    return images_vs_gap(df, ("hessian_lambda_max", "hessian_trace"))
