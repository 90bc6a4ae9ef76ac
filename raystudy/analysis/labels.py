"""Human-readable names for metrics and for how they were measured (chart titles, table headers)."""
from __future__ import annotations

import altair as alt
import polars as pl

from raystudy import metrics
from raystudy.analysis.radii import BY_RHO, sam_long

# Labels of the columns that no metric owns; every metric's own come from its registry entry.
METRIC_LABELS = {
    "train_loss": "train loss", "test_loss": "test loss", "train_acc": "train accuracy",
    "test_acc": "test accuracy", "gen_gap": "generalisation gap",
    "target_complexity": "target complexity", "target_shape_complexity": "target shape complexity (scale-free)",
    **metrics.labels(),
}


def metric_label(metric: str) -> str:
    """Readable name of a metric column (the column name itself when unknown)."""
    return METRIC_LABELS.get(metric, metric)


def _values(df: pl.DataFrame, column: str) -> list:
    return sorted(df[column].drop_nulls().unique().to_list()) if column in df.columns else []


def measurement_note(df: pl.DataFrame, n_column: str = "measure_n") -> str:
    """How the geometry was measured, from the provenance columns, e.g. "eval mode (BN stats stored), train set,
    un-augmented, n=500".

    Empty string when the rows carry no provenance. Several values are listed with "/". ``n_column``
    says which sample count applies: ``hessian_n`` for curvature, which may see fewer samples.
    """
    parts = []
    if bn := _values(df, "bn_mode"):
        names = {"stored": "stored", "recalibrate": "recalibrated", "eval": "stored"}  # "eval": rows before 0.2
        parts.append("eval mode (BN stats " + "/".join(dict.fromkeys(names.get(b, b) for b in bn)) + ")")
    if on := _values(df, "measured_on"):
        parts.append("/".join(map(str, on)) + " set")
    augmented = _values(df, "augmented")
    if augmented == [False]:
        parts.append("un-augmented")
    elif True in augmented:
        parts.append("AUGMENTED data")
    if n := _values(df, n_column):
        parts.append(f"n={n[0]}" if len(n) == 1 else f"n={n[0]}-{n[-1]}")
    return ", ".join(parts)


def sam_rhos(df: pl.DataFrame) -> list[float]:
    """The perturbation radii behind the scalar `sam_sharpness` column.

    Read from a `sam_sharpness_rho` column when the rows have one, else inferred from the
    `sam_sharpness_by_rho` entry whose mean equals `sam_sharpness`; empty when unknown.
    """
    if "sam_sharpness_rho" in df.columns:
        return _values(df, "sam_sharpness_rho")
    if not {BY_RHO, "sam_sharpness"} <= set(df.columns):
        return []
    long = sam_long(df.drop_nulls("sam_sharpness"), ["sam_sharpness"])
    match = (pl.col("value") - pl.col("sam_sharpness")).abs() <= 1e-9 * pl.col("sam_sharpness").abs() + 1e-15
    return _values(long.filter(match), "rho")


def axis_title(df: pl.DataFrame, metric: str, rho: bool = True) -> str:
    """Metric name with its unit or radius, e.g. "SAM-sharpness (rho=0.005)", "test accuracy (%)".

    rho=False leaves the radius out (for charts that facet by rho). Accuracy gets its unit (% or fraction)
    from the data; the gap of a classification task is in percentage points, of a regression in MSE.
    How the geometry was measured goes in the chart's subtitle (chart_title), not on the axis.
    """
    label = metric_label(metric)
    if metric in ("test_acc", "train_acc") and metric in df.columns:
        top = df[metric].max()
        return f"{label} ({'%' if top is not None and top > 1.0 else 'fraction'})"
    if metric == "gen_gap":
        regression = "train_acc" not in df.columns or df["train_acc"].null_count() == df.height
        return f"{label} ({'test - train MSE' if regression else 'train - test accuracy, pp'})"
    if metric == "sam_sharpness" and rho and (rhos := sam_rhos(df)):
        return f"{label} (rho=" + "/".join(f"{r:g}" for r in rhos) + ")"
    return label


def chart_title(df: pl.DataFrame, text: str, n_column: str = "measure_n") -> alt.Title:
    """A chart title with the measuring mode as subtitle, e.g. "geometry measured with eval mode (BN stats stored), train set, ..."."""
    note = measurement_note(df, n_column)
    return alt.Title(text, subtitle=f"geometry measured with {note}" if note else "", anchor="start")


# One-line definitions, shown under the first chart of the page that shows the metric: (the text a chart or caption
# shows, what it means). Sign conventions matter here: average-case sharpness can be negative.
DEFINITIONS = {
    "SAM-sharpness": "mean over random draws of |L(w + delta) - L(w)| / rho, delta uniform on the sphere of radius "
                     "rho around the weights w (loss per unit of radius; training loss, eval mode)",
    "Fisher-Rao norm": "(L + 1)^2 E[<w, grad_w log p(y|x)>^2] over the training inputs, L = number of layers "
                       "(Liang et al. 2019); grows with the size and alignment of the weights",
    "relative flatness": "trace of the loss Hessian with respect to the classifier layer's weights, times their "
                         "squared norm (Petzka et al. 2021): invariant to rescaling the layers",
    "adaptive sharpness": "(Andriushchenko et al. 2023): L(w + |w| * u) - L(w) in loss units, worst case "
                "= max over ||u|| <= rho, average case = mean over u ~ N(0, rho^2 I); the average case is "
                "negative when random perturbations lower the loss (a saddle or a minimum not yet reached)",
    "Hessian lambda_max": "largest eigenvalue of the training-loss Hessian (Lanczos); lambda_min the smallest",
    "Hessian trace": "sum of the Hessian's eigenvalues (Hutchinson / Hutch++ estimate)",
    "Kendall tau": "rank correlation in [-1, 1]: (concordant - discordant pairs) / pairs, tau-b with ties; taken "
                   "within each seed, then the median (correlations) or mean (verdicts) over seeds",
    "Psi": "Jiang et al.'s granulated Kendall coefficient: for each hyperparameter axis, the mean tau over groups "
           "of trials that differ only along that axis, averaged over the axes; it credits a measure only for "
           "changes that the hyperparameters cause",
    "ECE": "expected calibration error: |accuracy - confidence| of the top label in 15 equal-width confidence "
           "bins, weighted by the bins' sizes",
    "generalisation gap": "train - test accuracy in percentage points (classification), test - train MSE "
                          "(regression)",
    "disagreement between seeds": "fraction of test inputs on which two seeds' models predict different labels",
    "Jensen-Shannon divergence between seeds": "mean JSD between two seeds' predicted class distributions",
    "corruption accuracy": "test accuracy on the corrupted test set (every corruption x severity), mean",
    "target shape complexity": "mean ||grad f||^2 / Var f of the target function over its domain "
                               "(1 / input unit^2): the same at every amplitude",
    "spectral density": "the Hessian's eigenvalue density from stochastic Lanczos quadrature, Gaussian-broadened",
}


def definitions_in(text: str, seen: set[str]) -> list[tuple[str, str]]:
    """(name, definition) of every DEFINITIONS name that occurs in ``text`` and is not in ``seen`` (added to it)."""
    needle = {"adaptive sharpness": "adaptive "}  # also "adaptive worst-case sharpness (l2, rho=0.1)"
    found = [(name, meaning) for name, meaning in DEFINITIONS.items()
             if name not in seen and needle.get(name, name) in text]
    seen.update(name for name, _ in found)
    return found
