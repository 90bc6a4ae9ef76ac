"""Expected calibration error (top-label, L1, equal-width bins)."""
from __future__ import annotations

import torch
from torch import Tensor


def expected_calibration_error(probs: Tensor, targets: Tensor, n_bins: int = 15) -> float:
    """Top-label L1 expected calibration error, ``sum_b (n_b / N) * |acc_b - conf_b|``.

    The confidence of a sample is its largest probability, bin b holds confidences in ``(b/n_bins, (b+1)/n_bins]``,
    ``acc_b`` / ``conf_b`` are the bin's accuracy and mean confidence, empty bins count 0.
    A confidence of exactly 1.0 lands in the last bin (torchmetrics' ``MulticlassCalibrationError``
    drops it, its issue #3510; on data without bin-edge confidences the two agree).

    Args:
        probs: (N, C) predicted probabilities (any device; read in float64 on the CPU).
        targets: (N,) class indices.
        n_bins: equal-width confidence bins.

    Returns:
        ECE, a float fraction in [0, 1].

    Raises:
        ValueError: mismatched or empty shapes, or values outside [0, 1] (logits passed).

    Cost: O(N * C), no model call.
    """
    if probs.ndim != 2 or len(probs) != len(targets) or len(probs) == 0:
        raise ValueError(f"expected probs (N, C) and targets (N,), got {tuple(probs.shape)}, {tuple(targets.shape)}")
    probs = probs.detach().double().cpu()
    if probs.min() < 0 or probs.max() > 1:
        raise ValueError("probs must be probabilities in [0, 1] (apply softmax to logits first)")
    conf, pred = probs.max(dim=1)
    correct = (pred == targets.detach().cpu()).double()
    edges = torch.linspace(0, 1, n_bins + 1, dtype=torch.float64)
    # right=False: edges[i-1] < conf <= edges[i], i.e. right-closed bins; clamp puts conf 0 in bin 0.
    bins = (torch.bucketize(conf, edges, right=False) - 1).clamp(0, n_bins - 1)
    count = torch.zeros(n_bins, dtype=torch.float64).scatter_add_(0, bins, torch.ones_like(conf))
    sum_conf = torch.zeros(n_bins, dtype=torch.float64).scatter_add_(0, bins, conf)
    sum_correct = torch.zeros(n_bins, dtype=torch.float64).scatter_add_(0, bins, correct)
    # n_b/N * |acc_b - conf_b| = |sum_correct_b - sum_conf_b| / N; empty bins contribute 0.
    return float((sum_correct - sum_conf).abs().sum() / len(conf))
