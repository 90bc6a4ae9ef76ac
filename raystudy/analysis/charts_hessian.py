"""Charts of the Hessian measurements: spectral density per regime and curvature vs generalisation gap.
(Family A/B curvature uses the family charts with metric="hessian_lambda_max".)"""
from __future__ import annotations

import altair as alt
import numpy as np
import polars as pl

from raystudy.analysis.aggregate import comparison_keys, condition_label, config_label
from raystudy.analysis.charts import HEIGHT, curve_points, images_vs_gap, panel_width, thin, with_note
from raystudy.analysis.labels import chart_title
from raystudy.analysis.results import final_rows, ok_rows, present

DENSITY_COLUMNS = ("hessian_density_grid", "hessian_density")
MAX_PANELS = 9  # configurations the spectral-density chart draws at most (three rows of three); beyond, a spread


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


def _arrays(lists: pl.Series) -> list[np.ndarray]:
    """A list column as one float array per row, from one flat copy (not a Series built per row: seconds for
    tens of thousands of trials)."""
    flat = np.asarray(lists.cast(pl.List(pl.Float64)).rechunk().to_arrow().flatten(), dtype=float)  # every value
    lengths = lists.list.len().to_numpy()
    ends = np.cumsum(lengths)
    return [flat[end - n:end] for end, n in zip(ends, lengths)]


def _panel_rows(df: pl.DataFrame) -> pl.DataFrame:
    """The final ok rows with a stored density, with their panel (configuration) and regime labels; empty frame
    when no trial stored one."""
    rows = ok_rows(final_rows(df))
    if len(present(rows, DENSITY_COLUMNS)) < 2:
        return pl.DataFrame()
    config, condition = comparison_keys(df)
    rows = rows.drop_nulls(list(DENSITY_COLUMNS))
    return rows.with_columns(panel=config_label(config), regime=condition_label(rows, config, condition))


def _densities(rows: pl.DataFrame, floor: float) -> pl.DataFrame:
    """density_frame of ``_panel_rows``' rows."""
    out = []
    for (panel,), trials in rows.group_by("panel", maintain_order=True):
        nodes, values = (_arrays(trials[c]) for c in DENSITY_COLUMNS)
        grid = common_grid(nodes)  # regimes of a panel share it, so their curves overlay exactly
        regimes = trials["regime"].to_list()
        for regime in dict.fromkeys(regimes):
            mine = [on_grid(grid, g, d) for g, d, r in zip(nodes, values, regimes) if r == regime]
            out.append(pl.DataFrame({"panel": panel, "regime": regime, "n_trials": len(mine), "eigenvalue": grid,
                                     "density": np.maximum(np.mean(mine, axis=0), floor)}))
    return pl.concat(out).sort("panel", maintain_order=True) if out else pl.DataFrame()


def density_frame(df: pl.DataFrame, floor: float = 1e-8) -> pl.DataFrame:
    """Mean spectral density over seeds per (configuration panel, regime) at the final checkpoint.

    A panel is one configuration (block / task / model and varying hyperparameters such as factor), so
    only seeds of one setting are averaged. Columns: panel, regime (with sam_rho etc. when they vary),
    n_trials, eigenvalue, density (clipped below at `floor` so a log axis works). Regimes of one panel
    share one grid. Empty frame when no trial stored a density.
    """
    rows = _panel_rows(df)
    return rows if rows.is_empty() else _densities(rows, floor)


def spread_panels(panels: list[str], most: int | None = None) -> tuple[list[str], str]:
    """At most ``most`` (default MAX_PANELS) of ``panels``, evenly spaced in their sorted order (first and last
    kept, so every block and hyperparameter range is represented), and the note saying so ("" when every panel is
    kept). A larger study's chart would otherwise be a tall wall of panels: 60 panels at 12,400 rows drew a 5.7 MB
    PNG in 8 s."""
    most = MAX_PANELS if most is None else most
    panels = sorted(panels)
    if len(panels) <= most:
        return panels, ""
    kept = [panels[i] for i in np.unique(np.linspace(0, len(panels) - 1, most).round().astype(int))]
    return kept, (f"Drawn: {len(kept)} of the {len(panels):,} configurations, evenly spaced in the order of their "
                  "names, to keep the chart within the page; results.parquet holds every trial's density.")


def _x_scale(panel: pl.DataFrame) -> alt.Scale | None:
    """The panel's own eigenvalue axis: symlog when the mass sits in a sliver of the range (an outlier eigenvalue
    far from the bulk would squeeze the bulk into a spike at 0), else None (linear)."""
    lam = panel["eigenvalue"].to_numpy()
    order = np.argsort(lam)
    lam, mass = lam[order], np.cumsum(panel["density"].to_numpy()[order])
    mass = mass / mass[-1] if mass[-1] > 0 else mass
    bulk = np.interp(0.95, mass, lam) - np.interp(0.05, mass, lam)
    span = lam[-1] - lam[0]
    if span > 0 and 0 < bulk < span / 50:
        return alt.Scale(type="symlog", constant=float(bulk / 4), zero=False)
    return None


def spectral_density(df: pl.DataFrame, floor: float = 1e-8) -> alt.Chart | None:
    """Hessian spectral density (SLQ) at the final checkpoint, mean over seeds, one line per regime overlaid,
    log density axis (floor `floor`); one panel per task / model, three a row, each on its own eigenvalue and
    density range (symlog eigenvalues where an outlier would hide the bulk). At most MAX_PANELS panels (an even
    spread of the configurations, ``spread_panels``), curves thinned to MAX_MARKS points in all
    (``charts.curve_points``); the caption says so. None when no density was stored."""
    rows = _panel_rows(df)
    if rows.is_empty():
        return None
    kept, spread = spread_panels(rows["panel"].unique().to_list())
    frame = _densities(rows.filter(pl.col("panel").is_in(kept)), floor)  # only the drawn panels' densities
    most = curve_points(frame.select("panel", "regime").n_unique())
    before = frame.height
    frame = thin(frame, "eigenvalue", ["panel", "regime"], most).sort("panel", "regime", "eigenvalue",
                                                                       maintain_order=True)
    panels = frame["panel"].unique(maintain_order=True).to_list()
    # Records carry the panel's number, not its name (the panel's title): 40% less data on the page.
    frame = frame.with_columns(pid=pl.col("panel").replace_strict({p: i for i, p in enumerate(panels)},
                                                                   return_dtype=pl.Int32)).drop("panel")
    columns = min(3, len(panels))
    width = panel_width(columns, legend=False)
    # Channels built once (altair validates each on construction: 0.1 s apiece); one dataset for every panel.
    base = alt.Chart().mark_line().encode(
        y=alt.Y("density:Q", scale=alt.Scale(type="log"), axis=alt.Axis(tickCount=5, format="~e"),
                title=f"spectral density (log; floor {floor:g})"),
        color=alt.Color("regime:N", legend=alt.Legend(orient="bottom", columns=4, labelLimit=0, title="regime"),
                        scale=alt.Scale(domain=frame["regime"].unique().sort().to_list())),
        tooltip=["regime", "n_trials", alt.Tooltip("eigenvalue:Q", format=".4g"),
                 alt.Tooltip("density:Q", format=".3g")])
    linear = alt.X("eigenvalue:Q", title="Hessian eigenvalue", scale=alt.Scale(zero=False))
    charts = []
    for pid, panel in enumerate(panels):
        scale = _x_scale(frame.filter(pl.col("pid") == pid))
        x = linear if scale is None else alt.X("eigenvalue:Q", title="Hessian eigenvalue (symlog)", scale=scale)
        charts.append(base.encode(x=x).transform_filter(alt.datum.pid == pid).properties(
            width=width, height=HEIGHT, title=alt.Title(panel, fontSize=11, limit=width + 60)))
    title = chart_title(ok_rows(final_rows(df)),
                        "Hessian spectral density at the final checkpoint (SLQ, mean over seeds)", "hessian_n")
    thinned = "Curves thinned for drawing to evenly spaced eigenvalues." if frame.height < before else ""
    return with_note(alt.concat(*charts, columns=columns, data=frame).resolve_scale(color="shared"), spread,
                     thinned).properties(
        title=title)


def curvature_vs_gap(df: pl.DataFrame) -> alt.Chart | None:
    """Family C: Hessian lambda_max and trace against the generalisation gap, one point per trial,
    coloured by regime. None when neither was measured."""
    return images_vs_gap(df, ("hessian_lambda_max", "hessian_trace"))
