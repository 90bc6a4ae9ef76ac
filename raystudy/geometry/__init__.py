"""Sharpness of a trained model's loss landscape. Plain torch, no Ray.

Every function takes ``(model, loss_fn, data, ...)`` with ``data`` an iterable of
``(inputs, targets)`` batches; losses are sample-weighted means over all batches and the model is
measured in eval mode (see :mod:`raystudy.geometry.data`). The curvature estimators
(``lanczos_eigenvalues``, ``trace_estimate``, ``slq_density``) take any square ``LinearOperator``
(:mod:`raystudy.geometry.operator`): the loss Hessian, a ``DenseOperator`` or a torch matrix.
"""
from raystudy.geometry.adaptive import AdaptiveSharpness, adaptive_sharpness
from raystudy.geometry.fisher_rao import count_weight_layers, fisher_rao_norm
from raystudy.geometry.flatness import (FlatnessResult, default_classifier, relative_flatness,
                                        relative_flatness_result)
from raystudy.geometry.density import DensityResult, hessian_density, slq_density
from raystudy.geometry.hvp import HessianOperator
from raystudy.geometry.operator import DenseOperator, LinearOperator
from raystudy.geometry.lanczos import EigenResult, hessian_eigenvalues, lanczos_eigenvalues
from raystudy.geometry.trace import TraceResult, hessian_trace, trace_estimate
from raystudy.geometry.sharpness import SharpnessEstimate, sam_sharpness, sam_sharpness_sweep

__all__ = [
    "count_weight_layers", "default_classifier", "fisher_rao_norm", "relative_flatness",
    "FlatnessResult", "relative_flatness_result",
    "SharpnessEstimate", "sam_sharpness", "sam_sharpness_sweep", "AdaptiveSharpness", "adaptive_sharpness",
    "LinearOperator", "DenseOperator", "HessianOperator", "EigenResult", "hessian_eigenvalues", "lanczos_eigenvalues",
    "TraceResult", "hessian_trace", "trace_estimate", "DensityResult", "hessian_density", "slq_density",
]
