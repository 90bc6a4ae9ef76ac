"""The metric registry and its entries: one module per metric, registered by importing it here (in this
order: the order metrics are measured and their columns listed). See ``registry`` for what an entry holds.

To add a metric: write ``raystudy/metrics/<name>.py`` ending in ``register_metric(Metric(...))`` and add
one import line below; study validation, preflight checks, measuring, the row schema and the report's labels follow."""
from raystudy.metrics.registry import (CLASSIFICATION, FAMILIES, Column, Context, Metric, Problem, Radii,
                                       SettingError, Settings, get_metric, labels, list_metrics, metric_columns,
                                       metrics, register_metric, role_columns, trial_settings)

from raystudy.metrics import ece, corruption, consistency  # noqa: E402,F401  (safety)
from raystudy.metrics import fisher_rao, relative_flatness, sam_sharpness, adaptive_sharpness  # noqa: E402,F401
from raystudy.metrics import complexity, hessian  # noqa: E402,F401
from raystudy.metrics import pac_bayes  # noqa: E402,F401

__all__ = ["CLASSIFICATION", "FAMILIES", "Column", "Context", "Metric", "Problem", "Radii", "SettingError", "Settings",
           "get_metric", "labels", "list_metrics", "metric_columns", "metrics", "register_metric", "role_columns",
           "trial_settings"]
