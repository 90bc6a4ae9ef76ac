"""Safety and performance of a trained model: accuracy, calibration, consistency, function complexity.
Plain torch, no Ray."""
from raystudy.safety.calibration import expected_calibration_error
from raystudy.safety.complexity import (
    InputGradientNorm, LinearRegionDensity, input_gradient_norm, linear_region_density, pattern_changes,
)
from raystudy.safety.consistency import disagreement, js_divergence, pairwise_consistency
from raystudy.safety.evaluate import Evaluation, evaluate

__all__ = [
    "Evaluation",
    "InputGradientNorm",
    "LinearRegionDensity",
    "disagreement",
    "evaluate",
    "expected_calibration_error",
    "input_gradient_norm",
    "js_divergence",
    "linear_region_density",
    "pairwise_consistency",
    "pattern_changes",
]
