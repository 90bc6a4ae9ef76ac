"""Safety and performance of a trained model: accuracy, calibration, consistency. Plain torch, no Ray."""
from raystudy.safety.calibration import expected_calibration_error
from raystudy.safety.consistency import disagreement, js_divergence, pairwise_consistency
from raystudy.safety.evaluate import Evaluation, evaluate

__all__ = [
    "Evaluation",
    "disagreement",
    "evaluate",
    "expected_calibration_error",
    "js_divergence",
    "pairwise_consistency",
]
