"""Safety and performance of a trained model: accuracy, calibration, consistency, function complexity.
Plain torch, no Ray.

Names are imported on first use (PEP 562): the report reads ``raystudy.safety.consistency`` (numpy only)
without loading torch through the other modules."""
from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "expected_calibration_error": "calibration",
    "InputGradientNorm": "complexity",
    "LinearRegionDensity": "complexity",
    "input_gradient_norm": "complexity",
    "linear_region_density": "complexity",
    "pattern_changes": "complexity",
    "disagreement": "consistency",
    "js_divergence": "consistency",
    "pairwise_consistency": "consistency",
    "Evaluation": "evaluation",
    "evaluate": "evaluation",  # not evaluate.py: a submodule would shadow the function
}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    globals()[name] = value  # looked up once
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
